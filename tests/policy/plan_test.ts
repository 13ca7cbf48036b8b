import assert from "node:assert/strict";
import { planPass } from "../../src/policy/plan.ts";
import { outcomeOf, reasonWithClamp } from "../../src/reconcile/report.ts";
import type { JournalEntry } from "../../src/state/journal.ts";
import type { Observation, ObservedGpu } from "../../src/reconcile/observe.ts";
import type { DesiredCaps } from "../../src/policy/desired.ts";

function gpu(index: number, limitMw: number | null, extra: Partial<ObservedGpu> = {}): ObservedGpu {
  return {
    index,
    uuid: `GPU-${index}`,
    name: "NVIDIA H100 80GB HBM3",
    pciBusId: `00000000:1${index}:00.0`,
    limits: limitMw === null ? null : {
      limitMw,
      enforcedMw: limitMw,
      defaultMw: 700_000,
      minMw: 200_000,
      maxMw: 700_000,
    },
    pids: null,
    ...extra,
  };
}

function want(...entries: [number, number][]): DesiredCaps {
  return new Map(
    entries.map(([i, w]) => [`GPU-${i}`, { mw: w * 1000, reason: `r${i}`, kind: "file" }]),
  );
}

function entry(baselineMw: number, appliedMw: number): JournalEntry {
  return { baselineMw, appliedMw, name: "x", updatedAt: "2026-01-01T00:00:00.000Z" };
}

Deno.test("plan: apply, leave in sync, unmanaged, clamp with limitedBy", () => {
  const obs: Observation = {
    gpus: [gpu(0, 700_000), gpu(1, 250_000), gpu(2, 700_000), gpu(3, 700_000)],
  };
  const plan = planPass(obs, want([0, 250], [1, 250], [3, 900]), new Map());
  assert.deepEqual(plan.gpus.map((g) => [g.intent, g.targetMw, g.wanted]), [
    ["apply", 250_000, true],
    ["leave", 250_000, true],
    ["leave", 700_000, false],
    ["leave", 700_000, true],
  ]);
  assert.equal(plan.gpus[3].clamp, "down");
  assert.equal(plan.gpus[3].limitedBy, "device-max");
  assert.equal(plan.gpus[3].requestedMw, 900_000);
  const low = planPass({ gpus: [gpu(0, 700_000)] }, want([0, 100]), new Map());
  assert.deepEqual([low.gpus[0].targetMw, low.gpus[0].limitedBy], [200_000, "device-min"]);
  assert.equal(plan.desiredKnown, true);
});

Deno.test("plan: drift when the journal says we applied it; restore to baseline or default", () => {
  const journal = new Map([["GPU-0", entry(700_000, 250_000)], ["GPU-1", entry(600_000, 300_000)]]);
  const obs: Observation = { gpus: [gpu(0, 400_000), gpu(1, 300_000)] };
  const plan = planPass(obs, want([0, 250]), journal);
  assert.deepEqual(plan.gpus.map((g) => [g.intent, g.targetMw]), [["drift", 250_000], [
    "restore",
    600_000,
  ]]);
  assert.match(plan.gpus[1].reason, /^restore to baseline: no desired cap$/);
  const toDefault = planPass(obs, want([0, 250]), journal, {
    restoreTo: "default",
    restoreReason: "startup",
  });
  assert.equal(toDefault.gpus[1].targetMw, 700_000);
  assert.match(toDefault.gpus[1].reason, /default: no desired cap at startup/);
  assert.equal(journal.get("GPU-0")!.appliedMw, 250_000, "pure: the journal is not touched");
});

Deno.test("plan: skip when desired is unknown; unreadable and unsupported are never touched", () => {
  const journal = new Map([["GPU-9", entry(700_000, 250_000)]]);
  const obs: Observation = {
    gpus: [
      gpu(0, 700_000),
      gpu(1, null, { error: "Cannot read power limits of GPU GPU-1: NVML GPU_IS_LOST" }),
      gpu(2, null, {
        unsupported: true,
        error: "GPU GPU-2 does not support software power limits",
      }),
    ],
  };
  const unknown = planPass(obs, null, journal);
  assert.deepEqual(unknown.gpus.map((g) => g.intent), ["skip", "unreadable", "unsupported"]);
  assert.equal(unknown.desiredKnown, false);
  assert.deepEqual(unknown.absentUuids, ["GPU-9"]);
  const known = planPass(obs, want([0, 300], [1, 300], [2, 300]), journal);
  assert.deepEqual(known.gpus.map((g) => g.intent), ["apply", "unreadable", "unsupported"]);
  assert.match(known.gpus[1].error!, /GPU_IS_LOST/);
  const failed = planPass(
    { gpus: [], error: "Cannot list GPUs: NVML UNINITIALIZED" },
    want(),
    journal,
  );
  assert.deepEqual([failed.gpus, failed.error], [[], "Cannot list GPUs: NVML UNINITIALIZED"]);
});

Deno.test("plan: an impossible request is that GPU's error only", () => {
  const desired = want([1, 300]);
  desired.set("GPU-0", { mw: Number.NaN, reason: "broken", kind: "file" });
  const plan = planPass({ gpus: [gpu(0, 700_000), gpu(1, 700_000)] }, desired, new Map());
  assert.deepEqual(plan.gpus.map((g) => g.intent), ["error", "apply"]);
  assert.match(plan.gpus[0].error!, /^Cannot reconcile GPU GPU-0: /);
});

Deno.test("plan: a node power budget lowers wanted targets (limitedBy budget); fixed GPUs count at their limit", () => {
  // GPUs 0-2 want 700 W; GPU 3 is not capped and holds 350 W. Budget 1400 W: 1050 W left for
  // three GPUs with min 200 W → 350 W each.
  const obs: Observation = {
    gpus: [gpu(0, 700_000), gpu(1, 500_000), gpu(2, 350_000), gpu(3, 350_000)],
  };
  const plan = planPass(obs, want([0, 700], [1, 700], [2, 700]), new Map(), {
    budgetMw: 1_400_000,
  });
  assert.deepEqual(plan.gpus.map((g) => [g.intent, g.targetMw, g.limitedBy ?? null]), [
    ["apply", 350_000, "budget"],
    ["apply", 350_000, "budget"],
    ["leave", 350_000, "budget"],
    ["leave", 350_000, null],
  ]);
  assert.equal(plan.gpus[0].reducedFromMw, 700_000);
  assert.equal(plan.gpus[0].reason, "r0");
  assert.equal(
    reasonWithClamp(outcomeOf(plan.gpus[0])),
    "r0; reduced from 700 W to 350 W by the node power budget",
  );
  assert.equal(plan.budget?.allocatedMw, 1_400_000);
  assert.equal(plan.budget?.overBudget, false);
  // Enough budget: nothing is reduced, the allocation is still attached.
  const roomy = planPass(obs, want([0, 700]), new Map(), { budgetMw: 5_000_000 });
  assert.equal(roomy.gpus[0].limitedBy, undefined);
  assert.equal(roomy.budget?.reductions.length, 0);
  // No budget, or desired caps unknown: no allocation.
  assert.equal(planPass(obs, want([0, 700]), new Map()).budget, undefined);
  assert.equal(planPass(obs, null, new Map(), { budgetMw: 1000 }).budget, undefined);
});

Deno.test("plan: a restore the budget reduces stays managed (apply at the reduced value)", () => {
  const journal = new Map([["GPU-0", entry(700_000, 300_000)]]);
  const obs: Observation = { gpus: [gpu(0, 300_000), gpu(1, 700_000)] };
  // GPU 0 has no desired cap any more (restore to 700 W), GPU 1 is fixed at 700 W: 1000 W
  // budget leaves 300 W for GPU 0, which it already holds.
  const plan = planPass(obs, new Map(), journal, { budgetMw: 1_000_000 });
  assert.deepEqual([plan.gpus[0].intent, plan.gpus[0].targetMw], ["leave", 300_000]);
  assert.equal(plan.gpus[0].wanted, true);
  assert.match(
    reasonWithClamp(outcomeOf(plan.gpus[0])),
    /^restore to baseline: .*; reduced from 700 W to 300 W/,
  );
  const more = planPass(obs, new Map(), journal, { budgetMw: 1_200_000 });
  assert.deepEqual([more.gpus[0].intent, more.gpus[0].targetMw], ["apply", 500_000]);
  const all = planPass(obs, new Map(), journal, { budgetMw: 2_000_000 });
  assert.deepEqual([all.gpus[0].intent, all.gpus[0].targetMw], ["restore", 700_000]);
});
