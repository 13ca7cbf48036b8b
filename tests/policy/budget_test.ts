import assert from "node:assert/strict";
import { allocateBudget, type BudgetGpu } from "../../src/policy/budget.ts";
import { seededRandom } from "../helpers/seeded_random.ts";

const W = 1000;

function capped(uuid: string, wantW: number, minW = 200, maxW = 700): BudgetGpu {
  return { uuid, wantMw: wantW * W, fixedMw: 0, minMw: minW * W, maxMw: maxW * W };
}

function fixed(uuid: string, fixedW: number): BudgetGpu {
  return { uuid, wantMw: null, fixedMw: fixedW * W, minMw: 200 * W, maxMw: 700 * W };
}

function capsOf(result: ReturnType<typeof allocateBudget>): Record<string, number | null> {
  return Object.fromEntries(result.gpus.map((g) => [g.uuid, g.capMw]));
}

Deno.test("worked example 1: 8 × 700 W, min 200 W, budget 4000 W → 500 W each", () => {
  const gpus = Array.from({ length: 8 }, (_, i) => capped(`GPU-${i}`, 700));
  const result = allocateBudget(gpus, { budgetMw: 4000 * W });
  assert.deepEqual(result.gpus.map((g) => g.capMw), Array(8).fill(500 * W));
  assert.equal(result.allocatedMw, 4000 * W);
  assert.equal(result.budgetMw, 4000 * W);
  assert.equal(result.overBudget, false);
  assert.deepEqual(
    result.reductions,
    gpus.map((g) => ({ uuid: g.uuid, fromMw: 700 * W, toMw: 500 * W })),
  );
});

Deno.test("worked example 2: uneven wants and an uncapped GPU counted at its enforced limit", () => {
  const result = allocateBudget([
    capped("GPU-a", 700),
    capped("GPU-b", 500),
    capped("GPU-c", 300),
    fixed("GPU-d", 350),
  ], { budgetMw: 1400 * W });
  assert.deepEqual(capsOf(result), {
    "GPU-a": 450 * W,
    "GPU-b": 350 * W,
    "GPU-c": 250 * W,
    "GPU-d": null,
  });
  const d = result.gpus.find((g) => g.uuid === "GPU-d")!;
  assert.deepEqual(d, {
    uuid: "GPU-d",
    capped: false,
    wantMw: null,
    capMw: null,
    countedMw: 350 * W,
    reduced: false,
  });
  assert.equal(result.allocatedMw, 1400 * W);
  assert.equal(result.overBudget, false);
});

Deno.test("within budget nothing changes", () => {
  const result = allocateBudget([capped("GPU-a", 700), capped("GPU-b", 300), fixed("GPU-c", 500)], {
    budgetMw: 1500 * W,
  });
  assert.deepEqual(capsOf(result), { "GPU-a": 700 * W, "GPU-b": 300 * W, "GPU-c": null });
  assert.deepEqual(result.reductions, []);
  assert.equal(result.allocatedMw, 1500 * W);
  assert.ok(result.gpus.every((g) => !g.reduced));
});

Deno.test("a budget below Σ min: every capped GPU at its min, over budget", () => {
  const result = allocateBudget(
    [capped("GPU-a", 700), capped("GPU-b", 600, 100), fixed("GPU-c", 300)],
    { budgetMw: 500 * W },
  );
  assert.deepEqual(capsOf(result), { "GPU-a": 200 * W, "GPU-b": 100 * W, "GPU-c": null });
  assert.equal(result.overBudget, true);
  assert.equal(result.allocatedMw, 600 * W);
  assert.deepEqual(result.reductions.map((r) => r.toMw), [200 * W, 100 * W]);
});

Deno.test("Σ min exactly the budget: all at min, not over budget", () => {
  const result = allocateBudget([capped("GPU-a", 700), capped("GPU-b", 700)], {
    budgetMw: 400 * W,
  });
  assert.deepEqual(capsOf(result), { "GPU-a": 200 * W, "GPU-b": 200 * W });
  assert.equal(result.overBudget, false);
  assert.equal(result.allocatedMw, 400 * W);
});

Deno.test("fixed GPUs alone above the budget: capped ones at min, over budget", () => {
  const result = allocateBudget([capped("GPU-a", 700), fixed("GPU-b", 700)], {
    budgetMw: 600 * W,
  });
  assert.deepEqual(capsOf(result), { "GPU-a": 200 * W, "GPU-b": null });
  assert.equal(result.overBudget, true);
});

Deno.test("only uncapped GPUs: nothing to allocate, over budget reported truthfully", () => {
  const result = allocateBudget([fixed("GPU-a", 700), fixed("GPU-b", 700)], { budgetMw: 1000 * W });
  assert.deepEqual(result.reductions, []);
  assert.equal(result.allocatedMw, 1400 * W);
  assert.equal(result.overBudget, true);
  assert.equal(allocateBudget([], { budgetMw: 1 }).allocatedMw, 0);
});

Deno.test("wants are clamped into [min, max] before allocation", () => {
  const result = allocateBudget([capped("GPU-a", 900), capped("GPU-b", 50)], {
    budgetMw: 2000 * W,
  });
  assert.deepEqual(capsOf(result), { "GPU-a": 700 * W, "GPU-b": 200 * W });
  assert.equal(result.gpus[0].wantMw, 700 * W);
  assert.deepEqual(result.reductions, []);
});

Deno.test("rounding never overshoots; leftover milliwatts go out in UUID order", () => {
  // 3 × 700 W (min 200 W) into 1000.001 W: 400.001 W to share over 1500 W of headroom.
  const result = allocateBudget(
    [capped("GPU-c", 700), capped("GPU-a", 700), capped("GPU-b", 700)],
    { budgetMw: 1000_001 },
  );
  assert.deepEqual(result.gpus.map((g) => g.uuid), ["GPU-a", "GPU-b", "GPU-c"]);
  // floor(500000 × 400001 / 1500000) = 133333 each; 2 mW left over → GPU-a, GPU-b.
  assert.deepEqual(result.gpus.map((g) => g.capMw), [333_334, 333_334, 333_333]);
  assert.equal(result.allocatedMw, 1000_001);
});

Deno.test("the result does not depend on input order", () => {
  const gpus = [
    capped("GPU-z", 650),
    capped("GPU-m", 520, 150),
    fixed("GPU-a", 333),
    capped("GPU-q", 700),
  ];
  const expected = allocateBudget(gpus, { budgetMw: 1_234_567 });
  for (const order of [[3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]]) {
    assert.deepEqual(allocateBudget(order.map((i) => gpus[i]), { budgetMw: 1_234_567 }), expected);
  }
});

Deno.test("invalid input throws RangeError naming the problem", () => {
  assert.throws(() => allocateBudget([], { budgetMw: 0 }), RangeError);
  assert.throws(() => allocateBudget([], { budgetMw: 1.5 }), RangeError);
  assert.throws(
    () => allocateBudget([capped("GPU-a", 700), capped("GPU-a", 600)], { budgetMw: 1 }),
    /given twice/,
  );
  assert.throws(
    () => allocateBudget([{ ...capped("GPU-a", 700), wantMw: Number.NaN }], { budgetMw: 1 }),
    /wantMw NaN for GPU GPU-a/,
  );
  assert.throws(
    () => allocateBudget([{ ...capped("GPU-a", 700), minMw: 800 * W }], { budgetMw: 1 }),
    /constraints/,
  );
});

// ---------------------------------------------------------------------------------------------
// Properties over random inputs (seeded: failures reproduce).

function randomNode(random: () => number): BudgetGpu[] {
  const int = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  const n = int(0, 10);
  return Array.from({ length: n }, (_, i) => {
    const minMw = int(50_000, 400_000);
    const maxMw = int(minMw, 1_200_000);
    const uncapped = random() < 0.25;
    return {
      uuid: `GPU-${int(0, 1e9).toString(16)}-${i}`,
      wantMw: uncapped ? null : int(0, 1_300_000),
      fixedMw: int(minMw, maxMw),
      minMw,
      maxMw,
    };
  });
}

Deno.test("property: caps within [min, want], Σ ≤ budget whenever it can be, exact bookkeeping", () => {
  const random = seededRandom(12);
  for (let run = 0; run < 2000; run++) {
    const gpus = randomNode(random);
    const budgetMw = 1 + Math.floor(random() * 8_000_000);
    const result = allocateBudget(gpus, { budgetMw });
    const minSum = gpus.reduce((s, g) => s + (g.wantMw === null ? g.fixedMw : g.minMw), 0);
    const context = JSON.stringify({ gpus, budgetMw });
    assert.equal(result.overBudget, minSum > budgetMw, context);
    if (minSum <= budgetMw) assert.ok(result.allocatedMw <= budgetMw, context);
    let total = 0;
    for (const share of result.gpus) {
      const gpu = gpus.find((g) => g.uuid === share.uuid)!;
      total += share.countedMw;
      if (gpu.wantMw === null) {
        assert.equal(share.countedMw, gpu.fixedMw, context);
        continue;
      }
      const want = Math.min(Math.max(gpu.wantMw, gpu.minMw), gpu.maxMw);
      assert.equal(share.wantMw, want, context);
      assert.ok(Number.isInteger(share.capMw), context);
      assert.ok(share.capMw! >= gpu.minMw && share.capMw! <= want, context);
      assert.equal(share.reduced, share.capMw! < want, context);
    }
    assert.equal(result.allocatedMw, total, context);
    // Nothing is reduced while the wants fit.
    const wantSum = result.gpus.reduce((s, g) => s + (g.wantMw ?? g.countedMw), 0);
    if (wantSum <= budgetMw) assert.deepEqual(result.reductions, [], context);
    // When some reduction was needed and possible, the budget is used exactly.
    if (wantSum > budgetMw && minSum <= budgetMw) {
      assert.equal(result.allocatedMw, budgetMw, context);
    }
  }
});

Deno.test("property: monotone in the budget (total exactly, each cap up to 1 mW of rounding)", () => {
  const random = seededRandom(8);
  for (let run = 0; run < 500; run++) {
    const gpus = randomNode(random);
    let previous = allocateBudget(gpus, { budgetMw: 1 });
    for (let step = 0; step < 20; step++) {
      const budgetMw = previous.budgetMw + 1 + Math.floor(random() * 500_000);
      const next = allocateBudget(gpus, { budgetMw });
      const context = JSON.stringify({ gpus, from: previous.budgetMw, to: budgetMw });
      assert.ok(next.allocatedMw >= previous.allocatedMw, context);
      for (let i = 0; i < next.gpus.length; i++) {
        if (next.gpus[i].capMw === null) continue;
        assert.ok(next.gpus[i].capMw! >= previous.gpus[i].capMw! - 1, context);
      }
      previous = next;
    }
  }
});

Deno.test("property: raising the budget back restores the wanted caps", () => {
  const random = seededRandom(3);
  for (let run = 0; run < 300; run++) {
    const gpus = randomNode(random);
    const generous = allocateBudget(gpus, { budgetMw: 20_000_000 });
    const tight = allocateBudget(gpus, { budgetMw: 1_000_000 });
    const again = allocateBudget(gpus, { budgetMw: 20_000_000 });
    assert.deepEqual(again, generous);
    assert.ok(tight.allocatedMw <= generous.allocatedMw);
  }
});
