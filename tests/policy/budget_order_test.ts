import assert from "node:assert/strict";
import { allocateBudget, type BudgetGpu } from "../../src/policy/budget.ts";
import { admitRaises, type LimitChange, orderLimitChanges } from "../../src/policy/budget_order.ts";
import { describeBudget, describeBudgetReduction } from "../../src/reconcile/report.ts";
import { seededRandom } from "../helpers/seeded_random.ts";

const W = 1000;

Deno.test("orderLimitChanges: lowerings first, then raises, each in UUID order; no-ops dropped", () => {
  const changes: LimitChange[] = [
    { uuid: "GPU-d", fromMw: 300 * W, toMw: 500 * W },
    { uuid: "GPU-c", fromMw: 700 * W, toMw: 500 * W },
    { uuid: "GPU-b", fromMw: 400 * W, toMw: 400 * W },
    { uuid: "GPU-a", fromMw: 200 * W, toMw: 450 * W },
    { uuid: "GPU-e", fromMw: 600 * W, toMw: 250 * W },
  ];
  const { lowers, raises } = orderLimitChanges(changes);
  assert.deepEqual(lowers.map((c) => c.uuid), ["GPU-c", "GPU-e"]);
  assert.deepEqual(raises.map((c) => c.uuid), ["GPU-a", "GPU-d"]);
});

Deno.test("admitRaises: a failed lowering defers the raise that would overshoot", () => {
  // Budget 1000 W over two GPUs: A 700 → 400 (fails: stays 700), B 300 → 600.
  const raises = [{ uuid: "GPU-b", fromMw: 300 * W, toMw: 600 * W }];
  const ok = admitRaises(raises, { budgetMw: 1000 * W, currentTotalMw: 700 * W });
  assert.deepEqual(ok.admitted.map((r) => r.uuid), ["GPU-b"]);
  const failed = admitRaises(raises, { budgetMw: 1000 * W, currentTotalMw: 1000 * W });
  assert.deepEqual(failed, { admitted: [], deferred: raises });
});

Deno.test("admitRaises: in UUID order, a later smaller raise may still fit", () => {
  const raises = [
    { uuid: "GPU-c", fromMw: 200 * W, toMw: 250 * W },
    { uuid: "GPU-a", fromMw: 200 * W, toMw: 400 * W },
    { uuid: "GPU-b", fromMw: 200 * W, toMw: 500 * W },
  ];
  const result = admitRaises(raises, { budgetMw: 1000 * W, currentTotalMw: 760 * W });
  assert.deepEqual(result.admitted.map((r) => r.uuid), ["GPU-a"]);
  assert.deepEqual(result.deferred.map((r) => r.uuid), ["GPU-b", "GPU-c"]);
  const smaller = admitRaises(raises, { budgetMw: 1000 * W, currentTotalMw: 600 * W });
  assert.deepEqual(smaller.admitted.map((r) => r.uuid), ["GPU-a", "GPU-c"]);
  assert.deepEqual(smaller.deferred.map((r) => r.uuid), ["GPU-b"]);
});

Deno.test("messages: reduction for the pod Event, over budget for the log", () => {
  assert.equal(
    describeBudgetReduction({ uuid: "GPU-a", fromMw: 700 * W, toMw: 500 * W }),
    "reduced from 700 W to 500 W by the node power budget",
  );
  const gpus: BudgetGpu[] = [0, 1].map((i) => ({
    uuid: `GPU-${i}`,
    wantMw: 700 * W,
    fixedMw: 0,
    minMw: 200 * W,
    maxMw: 700 * W,
  }));
  assert.equal(
    describeBudget(allocateBudget(gpus, { budgetMw: 1000 * W })),
    "node power budget 1000 W: 1000 W allocated, 2 GPU(s) reduced by it",
  );
  assert.equal(
    describeBudget(allocateBudget(gpus, { budgetMw: 300 * W })),
    "node power budget 300 W cannot be met: 400 W allocated with every capped GPU at its minimum",
  );
});

Deno.test("property: lower-then-admitted-raise never has Σ limits above the budget after a write", () => {
  const random = seededRandom(5);
  const int = (lo: number, hi: number) => lo + Math.floor(random() * (hi - lo + 1));
  for (let run = 0; run < 1000; run++) {
    const n = int(1, 8);
    const gpus: BudgetGpu[] = Array.from({ length: n }, (_, i) => ({
      uuid: `GPU-${int(0, 99)}-${i}`,
      wantMw: int(100, 800) * W,
      fixedMw: 0,
      minMw: 200 * W,
      maxMw: 700 * W,
    }));
    const budgetMw = int(n * 200, n * 700) * W;
    // Start where a previous, valid pass left the node: within the same budget.
    const before = allocateBudget(
      gpus.map((g) => ({ ...g, wantMw: int(200, 700) * W })),
      { budgetMw },
    );
    const limits = new Map(before.gpus.map((g) => [g.uuid, g.capMw!]));
    const after = allocateBudget(gpus, { budgetMw });
    const changes = after.gpus.map((g) => ({
      uuid: g.uuid,
      fromMw: limits.get(g.uuid)!,
      toMw: g.capMw!,
    }));
    const failing = new Set(changes.filter(() => random() < 0.2).map((c) => c.uuid));
    const total = () => [...limits.values()].reduce((s, v) => s + v, 0);
    const context = JSON.stringify({ gpus, budgetMw, changes, failing: [...failing] });
    assert.ok(total() <= budgetMw, context);
    const { lowers, raises } = orderLimitChanges(changes);
    for (const change of lowers) {
      if (!failing.has(change.uuid)) limits.set(change.uuid, change.toMw);
      assert.ok(total() <= budgetMw, context);
    }
    const { admitted } = admitRaises(raises, { budgetMw, currentTotalMw: total() });
    for (const change of admitted) {
      if (!failing.has(change.uuid)) limits.set(change.uuid, change.toMw);
      assert.ok(total() <= budgetMw, context);
    }
    if (failing.size === 0) assert.equal(admitted.length, raises.length, context);
  }
});
