import assert from "node:assert/strict";
import { loadJournal } from "../../src/state/journal.ts";
import { Actuator } from "../../src/reconcile/actuate.ts";
import { observeGpus } from "../../src/reconcile/observe.ts";
import { planPass } from "../../src/policy/plan.ts";
import type { DesiredCaps } from "../../src/policy/desired.ts";
import { JOURNAL_GROUP_COMMIT_MS, ReconcileLoop } from "../../src/reconcile/loop.ts";
import { FakeGpuControl, fakeH100 } from "../helpers/fake_gpu_control.ts";
import {
  caps,
  captureLogs,
  FakeCapSource,
  ManualClock,
  reconcileFixture,
  tempStateDir,
} from "./fakes.ts";

const U = [0, 1, 2, 3].map((i) => fakeH100(i).uuid);

function setup(gpus = 2) {
  const f = reconcileFixture({ gpus });
  const actuator = new Actuator(f.gpu, {
    journal: f.journal,
    clock: f.clock,
    telemetry: f.telemetry,
    backoff: { initialMs: 1000, maxMs: 4000 },
  });
  const run = (desired: DesiredCaps) =>
    actuator.execute(planPass(observeGpus(f.gpu), desired, f.journal.entries()), {
      restoreReason: "unmanaged",
    });
  return { ...f, actuator, run };
}

Deno.test("actuate: every decrease is written before any increase", () => {
  using t = setup(4);
  t.run(caps([U[0], 500], [U[1], 300], [U[2], 600], [U[3], 400]));
  t.gpu.writes.length = 0;
  // 0: 500 → 650 (up), 1: 300 → 250 (down), 2: 600 → 700 (up), 3: 400 → 200 (down)
  t.run(caps([U[0], 650], [U[1], 250], [U[2], 700], [U[3], 200]));
  assert.deepEqual(t.gpu.writes.map((w) => w.index), [1, 3, 0, 2]);
});

Deno.test("actuate: a failing set backs off per GPU (doubling), logged once, reset on a new target", async () => {
  using t = setup();
  t.gpu.failOn(0, "setLimit", "NO_PERMISSION");
  const logs = await captureLogs(() => {
    const first = t.run(caps([U[0], 250], [U[1], 300]));
    assert.equal(first.outcomes[0].action, "error");
    assert.equal(first.outcomes[0].nvmlCode, "NO_PERMISSION");
    assert.equal(first.outcomes[0].retryAtMs, t.clock.now() + 1000);
    assert.equal(first.outcomes[1].action, "apply", "one GPU's failure never blocks another");
    assert.equal(t.gpu.calls.setLimit, 2);
    // Within the backoff: no attempt, same outcome.
    const second = t.run(caps([U[0], 250], [U[1], 300]));
    assert.equal(second.outcomes[0].action, "error");
    assert.equal(second.outcomes[0].error, first.outcomes[0].error);
    assert.equal(t.gpu.calls.setLimit, 2);
    t.clock.advance(1000);
    t.run(caps([U[0], 250], [U[1], 300]));
    assert.equal(t.gpu.calls.setLimit, 3, "retried after 1 s");
    t.clock.advance(1000);
    t.run(caps([U[0], 250], [U[1], 300]));
    assert.equal(t.gpu.calls.setLimit, 3, "then after 2 s");
    t.clock.advance(1000);
    t.run(caps([U[0], 250], [U[1], 300]));
    assert.equal(t.gpu.calls.setLimit, 4);
    // A new target resets the backoff: tried at once.
    t.run(caps([U[0], 260], [U[1], 300]));
    assert.equal(t.gpu.calls.setLimit, 5);
  });
  const warnings = logs.filter((l) => l.level === "warning");
  assert.equal(warnings.length, 2, "once per state change: " + JSON.stringify(warnings));
  assert.match(warnings[0].text, /NO_PERMISSION/);
  assert.equal(t.journal.has(U[0]), false, "never managed: nothing was changed");
  assert.equal(loadJournal(t.tmp.dir).has(U[0]), false);
  // Recovery.
  t.gpu.clearFailures();
  t.clock.advance(1000);
  const ok = t.run(caps([U[0], 260], [U[1], 300]));
  assert.equal(ok.outcomes[0].action, "apply");
  assert.equal(ok.outcomes[0].enforced, true);
  assert.equal(loadJournal(t.tmp.dir).get(U[0])?.appliedMw, 260_000);
});

Deno.test("actuate: set NOT_SUPPORTED → unsupported, not journaled, never retried", () => {
  using t = setup();
  t.gpu.failOn(1, "setLimit", "NOT_SUPPORTED");
  const first = t.run(caps([U[0], 250], [U[1], 300]));
  assert.equal(first.outcomes[1].action, "unsupported");
  assert.match(first.outcomes[1].error!, /does not support software power limits/);
  assert.equal(t.journal.has(U[1]), false);
  assert.equal(t.actuator.isUnsupported(U[1]), true);
  const calls = t.gpu.calls.setLimit;
  t.clock.advance(3_600_000);
  const later = t.run(caps([U[0], 250], [U[1], 300]));
  assert.equal(later.outcomes[1].action, "unsupported");
  assert.equal(t.gpu.calls.setLimit, calls);
});

Deno.test("actuate: limits NOT_SUPPORTED → unsupported outcome, logged once, never touched", async () => {
  using t = setup();
  t.gpu.failOn(1, "readLimits", "NOT_SUPPORTED");
  const logs = await captureLogs(() => {
    for (let i = 0; i < 5; i++) {
      const r = t.run(caps([U[0], 250], [U[1], 300]));
      assert.equal(r.outcomes[1].action, "unsupported");
      assert.equal(r.outcomes[0].action, i === 0 ? "apply" : "none");
    }
  });
  assert.equal(logs.filter((l) => /NOT_SUPPORTED/.test(l.text)).length, 1);
  assert.deepEqual(t.gpu.writes.map((w) => w.index), [0]);
});

Deno.test("journal emptied behind a running loop: the baseline is on disk again before a drift set", () => {
  using tmp = tempStateDir();
  const gpu = new FakeGpuControl([fakeH100(0), fakeH100(1)]);
  const journal = loadJournal(tmp.dir);
  const clock = new ManualClock();
  const loop = new ReconcileLoop(gpu, new FakeCapSource(caps([U[0], 250])), {
    journal,
    clock,
    intervalMs: 10_000,
  });
  loop.start();
  assert.equal(loadJournal(tmp.dir).get(U[0])?.baselineMw, 700_000);
  // Another process empties the file; then someone changes the limit behind the agent's back.
  Deno.writeTextFileSync(`${tmp.dir}/journal.json`, "{}");
  gpu.setExternalLimit(0, 400_000);
  const onDiskAtSet: (number | undefined)[] = [];
  const setLimit = gpu.setLimit.bind(gpu);
  gpu.setLimit = (index, mw) => {
    onDiskAtSet.push(loadJournal(tmp.dir, { readOnly: true }).get(U[0])?.baselineMw);
    setLimit(index, mw);
  };
  clock.advance(10_000);
  assert.equal(loop.lastReport?.gpus[0].action, "drift");
  assert.deepEqual(onDiskAtSet, [700_000], "the file held the baseline when setLimit ran");
  assert.equal(loadJournal(tmp.dir).get(U[0])?.appliedMw, 250_000);
  loop.stop();
});

Deno.test("in sync ⇒ zero NVML writes and no journal write across many loop passes", () => {
  using tmp = tempStateDir();
  const gpu = new FakeGpuControl([fakeH100(0), fakeH100(1)]);
  const journal = loadJournal(tmp.dir);
  const clock = new ManualClock();
  const source = new FakeCapSource(caps([U[0], 250], [U[1], 300]));
  const loop = new ReconcileLoop(gpu, source, { journal, clock, intervalMs: 1000 });
  loop.start();
  // The applied limits of the first change reach the file within the group commit time.
  clock.advance(JOURNAL_GROUP_COMMIT_MS);
  assert.equal(journal.dirty, false);
  const writes = gpu.calls.setLimit;
  const saves = journal.saveCount;
  clock.advance(60_000);
  assert.ok(loop.passCount >= 60);
  assert.equal(gpu.calls.setLimit, writes);
  assert.equal(journal.saveCount, saves);
  assert.equal(source.reported.length, loop.passCount, "the source hears every outcome");
  loop.stop();
});

Deno.test("actuate under a budget: a failed lowering defers the raise that would overshoot; retried next pass", () => {
  using t = setup();
  const run = (desired: DesiredCaps) =>
    t.actuator.execute(
      planPass(observeGpus(t.gpu), desired, t.journal.entries(), { budgetMw: 1_000_000 }),
      { restoreReason: "unmanaged" },
    );
  run(caps([U[0], 300], [U[1], 700])); // Σ 1000 W
  assert.deepEqual(t.gpu.writes.map((w) => [w.index, w.mw]), [[0, 300_000]]);
  t.gpu.writes.length = 0;
  // Swap: GPU 1 must come down before GPU 0 may go up; GPU 1's set fails.
  t.gpu.failOn(1, "setLimit", "NO_PERMISSION");
  const failed = run(caps([U[0], 700], [U[1], 300]));
  assert.deepEqual(failed.outcomes.map((o) => o.action), ["error", "error"]);
  assert.match(failed.outcomes[0].error!, /deferred: .*node power budget 1000 W/);
  assert.equal(failed.outcomes[0].toMw, 300_000, "GPU 0 still holds its old limit");
  assert.equal(failed.outcomes[0].enforced, false);
  assert.deepEqual(t.gpu.writes.length, 0, "no raise written while the lowering failed");
  // The driver allows it again: next pass (after GPU 1's backoff) lowers, then raises.
  t.gpu.clearFailures();
  t.clock.advance(1000);
  const ok = run(caps([U[0], 700], [U[1], 300]));
  assert.deepEqual(ok.outcomes.map((o) => o.action), ["apply", "apply"]);
  assert.deepEqual(t.gpu.writes.map((w) => [w.index, w.mw]), [[1, 300_000], [0, 700_000]]);
});
