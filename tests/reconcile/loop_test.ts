import assert from "node:assert/strict";
import { loadJournal } from "../../src/state/journal.ts";
import {
  JOURNAL_GROUP_COMMIT_MS,
  ReconcileLoop,
  type ReconcileLoopOptions,
} from "../../src/reconcile/loop.ts";
import { FakeGpuControl, fakeH100 } from "../helpers/fake_gpu_control.ts";
import {
  caps,
  captureLogs,
  FakeCapSource,
  ManualClock,
  reconcileFixture,
  tempStateDir,
} from "./fakes.ts";

const U0 = fakeH100(0).uuid;
const U1 = fakeH100(1).uuid;
const INTERVAL = 30_000;

/** `dryRun`: the loop runs over a read-only journal, as `run --dry-run` does. */
function setup(
  { dryRun = false, ...options }: Partial<ReconcileLoopOptions> & { dryRun?: boolean } = {},
) {
  const f = reconcileFixture({ readOnly: dryRun });
  const source = new FakeCapSource(caps([U0, 250]));
  const loop = new ReconcileLoop(f.gpu, source, {
    journal: f.journal,
    clock: f.clock,
    telemetry: f.telemetry,
    intervalMs: INTERVAL,
    ...options,
  });
  return { ...f, source, loop };
}

Deno.test("start: first pass applies, arms the interval, exposes state", () => {
  using t = setup();
  const report = t.loop.start();
  assert.equal(report.gpus[0].action, "apply");
  assert.equal(t.gpu.limitOf(0), 250_000);
  assert.equal(t.loop.passCount, 1);
  assert.equal(t.loop.lastReport, report);
  assert.equal(t.loop.lastSuccessMs, t.clock.now());
  assert.equal(t.loop.lastDesired?.get(U0)?.mw, 250_000);
  // The baseline was written before the set; the applied limit follows within the group commit.
  assert.deepEqual(t.clock.delays(), [JOURNAL_GROUP_COMMIT_MS, INTERVAL]);
  assert.deepEqual(t.source.lastViews.map((v) => v.uuid), [U0, U1]);
  assert.equal(t.source.desiredCalls, 1);
});

Deno.test("start: journaled GPU without desired cap is restored as startup (crash recovery)", () => {
  using t = setup();
  // A previous run capped GPU 1 and crashed.
  t.journal.recordBaseline(U1, 700_000, { name: "x" });
  t.journal.setApplied(U1, 300_000);
  t.journal.save();
  t.gpu.setExternalLimit(1, 300_000);
  t.loop.start();
  assert.equal(t.gpu.limitOf(1), 700_000);
  assert.equal(t.journal.has(U1), false);
  const restore = t.telemetry.changes.find((c) => c.uuid === U1);
  assert.equal(restore?.restoreReason, "startup");
  // Later restores are "unmanaged".
  t.source.caps = new Map();
  t.loop.trigger();
  t.clock.advance(0);
  assert.equal(t.telemetry.changes.at(-1)?.restoreReason, "unmanaged");
});

Deno.test("trigger: coalesced into one pass scheduled with no delay", () => {
  using t = setup();
  t.loop.start();
  t.clock.advance(JOURNAL_GROUP_COMMIT_MS);
  t.loop.trigger();
  t.loop.trigger();
  t.loop.trigger();
  assert.deepEqual(t.clock.delays(), [0, INTERVAL - JOURNAL_GROUP_COMMIT_MS]);
  t.clock.advance(0);
  assert.equal(t.loop.passCount, 2);
  assert.equal(t.source.desiredCalls, 2);
  assert.deepEqual(t.clock.delays(), [INTERVAL], "interval re-armed, nothing else queued");
});

Deno.test("trigger during a pass queues exactly one follow-up pass", () => {
  using t = setup();
  let inPass = 0;
  const desired = t.source.desired.bind(t.source);
  t.source.desired = (gpus) => {
    inPass++;
    if (inPass === 2) {
      t.loop.trigger();
      t.loop.trigger();
    }
    return desired(gpus);
  };
  t.loop.start();
  t.loop.trigger();
  t.clock.advance(0);
  assert.equal(t.loop.passCount, 3, "start, triggered pass, one follow-up");
  assert.deepEqual(t.clock.delays(), [JOURNAL_GROUP_COMMIT_MS, INTERVAL]);
});

Deno.test("group commit: a burst of changes writes the journal once a second; stop writes what waits", () => {
  using t = setup();
  t.loop.start();
  t.clock.advance(JOURNAL_GROUP_COMMIT_MS);
  const saves = t.journal.saveCount;
  // 20 changes 50 ms apart (one second): each is set at once; the file, written by the first
  // change's flush just now, is written once more when the second is up.
  for (let i = 1; i <= 20; i++) {
    t.source.caps = caps([U0, 250 + i]);
    t.loop.trigger();
    t.clock.advance(i === 20 ? 0 : 50);
    assert.equal(t.gpu.limitOf(0), (250 + i) * 1000);
  }
  assert.equal(t.journal.saveCount - saves, 0, "nothing written within the second");
  assert.equal(t.journal.dirty, true);
  assert.equal(loadJournal(t.journal.stateDir).get(U0)?.appliedMw, 250_000);
  t.clock.advance(50);
  assert.equal(t.journal.saveCount - saves, 1, "one write for 20 changes");
  assert.equal(loadJournal(t.journal.stateDir).get(U0)?.appliedMw, 270_000);
  // Stop (no restore) writes what waits.
  t.source.caps = caps([U0, 300]);
  t.loop.trigger();
  t.clock.advance(0);
  assert.equal(t.journal.dirty, true);
  t.loop.stop();
  assert.equal(t.journal.dirty, false);
  assert.equal(loadJournal(t.journal.stateDir).get(U0)?.appliedMw, 300_000);
  assert.deepEqual(t.clock.delays(), [], "no timer left");
});

Deno.test("afterBurst: runs once the loop is idle after a burst of passes; a few passes do not", () => {
  let runs = 0;
  using t = setup({ afterBurst: { afterMs: 5000, minPasses: 10, run: () => runs++ } });
  t.loop.start();
  t.clock.advance(6000);
  assert.equal(runs, 0, "one pass is no burst");
  for (let i = 1; i <= 12; i++) {
    t.source.caps = caps([U0, 250 + i]);
    t.loop.trigger();
    t.clock.advance(100);
  }
  t.clock.advance(4899);
  assert.equal(runs, 0, "not before afterMs without a pass");
  t.clock.advance(1);
  assert.equal(runs, 1);
  t.clock.advance(60_000); // two interval passes: not a burst
  assert.equal(runs, 1);
  t.loop.stop();
  assert.deepEqual(t.clock.delays(), [], "stop clears the timer");
});

Deno.test("interval: drift corrected without a trigger; timer re-armed after each pass", () => {
  using t = setup();
  t.loop.start();
  t.clock.advance(10_000);
  t.loop.trigger();
  t.clock.advance(0);
  assert.deepEqual(t.clock.delays(), [INTERVAL], "re-armed from the triggered pass");
  t.gpu.setExternalLimit(0, 700_000);
  t.clock.advance(INTERVAL - 1);
  assert.equal(t.gpu.limitOf(0), 700_000);
  t.clock.advance(1);
  assert.equal(t.gpu.limitOf(0), 250_000);
  assert.equal(t.telemetry.changes.at(-1)?.kind, "drift");
  assert.deepEqual(t.telemetry.latencies, [], "no trigger, no reaction latency");
});

Deno.test("reaction latency: from the first trigger to the pass that applied a change", () => {
  using t = setup();
  t.loop.start();
  t.source.caps = caps([U0, 300]);
  t.loop.trigger();
  t.clock.advance(0);
  assert.deepEqual(t.telemetry.latencies, [0]);
  // A trigger whose pass changes nothing records nothing.
  t.loop.trigger();
  t.clock.advance(0);
  assert.deepEqual(t.telemetry.latencies, [0]);
  // Trigger before start: measured to the end of the first pass.
  using u = setup();
  u.loop.trigger();
  u.clock.advance(7);
  u.loop.start();
  assert.deepEqual(u.telemetry.latencies, [0.007]);
});

Deno.test("desired null: nothing changes and lastSuccessMs is not advanced", () => {
  using t = setup();
  t.loop.start();
  const success = t.loop.lastSuccessMs;
  t.source.caps = null;
  t.clock.advance(INTERVAL);
  assert.equal(t.loop.passCount, 2);
  assert.equal(t.loop.lastSuccessMs, success);
  assert.equal(t.loop.lastDesired, null);
  assert.equal(t.gpu.limitOf(0), 250_000);
});

Deno.test("a GPU whose limits cannot be read is hidden from the source and left alone", () => {
  using t = setup();
  t.loop.start();
  t.gpu.failOn(0, "readLimits", "GPU_IS_LOST");
  t.source.caps = new Map();
  t.loop.trigger();
  t.clock.advance(0);
  assert.deepEqual(t.source.lastViews.map((v) => v.uuid), [U1]);
  assert.equal(t.gpu.limitOf(0), 250_000);
  assert.equal(t.journal.has(U0), true);
  assert.equal(t.loop.lastReport?.ok, false);
});

Deno.test("source throwing: nothing changes, pass reported as failed", () => {
  using t = setup();
  t.loop.start();
  t.source.desired = () => {
    throw new Error("boom");
  };
  t.loop.trigger();
  t.clock.advance(0);
  assert.equal(t.loop.lastReport?.ok, false);
  assert.match(t.loop.lastReport?.error ?? "", /Source fake failed to compute desired caps: boom/);
  assert.equal(t.gpu.limitOf(0), 250_000);
});

Deno.test("stop with restore: timers cleared, every GPU back at baseline (shutdown)", async () => {
  using t = setup();
  t.source.caps = caps([U0, 250], [U1, 300]);
  t.loop.start();
  t.loop.trigger();
  const report = await t.loop.stop({ restore: true });
  assert.equal(report?.ok, true);
  assert.equal(t.clock.pending, 0);
  assert.deepEqual([t.gpu.limitOf(0), t.gpu.limitOf(1)], [700_000, 700_000]);
  assert.equal(loadJournal(t.tmp.dir).size, 0);
  assert.deepEqual(t.telemetry.changes.slice(-2).map((c) => c.restoreReason), [
    "shutdown",
    "shutdown",
  ]);
  t.loop.trigger();
  assert.equal(t.clock.pending, 0, "trigger after stop is a no-op");
});

Deno.test("stop without restore leaves caps and journal", async () => {
  using t = setup();
  t.loop.start();
  assert.equal(await t.loop.stop(), null);
  assert.equal(t.gpu.limitOf(0), 250_000);
  assert.equal(loadJournal(t.tmp.dir).has(U0), true);
  assert.equal(t.clock.pending, 0);
});

Deno.test("dry-run loop never sets or writes, even on stop", async () => {
  using t = setup({ dryRun: true });
  const report = t.loop.start();
  assert.equal(report.dryRun, true);
  t.clock.advance(INTERVAL);
  await t.loop.stop({ restore: true });
  assert.equal(t.gpu.calls.setLimit, 0);
  assert.throws(() => Deno.statSync(t.tmp.dir), Deno.errors.NotFound);
  assert.deepEqual(t.telemetry.latencies, []);
});

Deno.test("constructor rejects a non-positive interval; start twice is refused", () => {
  using t = setup();
  assert.throws(
    () => new ReconcileLoop(t.gpu, t.source, { journal: t.journal, intervalMs: 0 }),
    /interval must be positive/,
  );
  t.loop.start();
  assert.throws(() => t.loop.start(), /called twice/);
});

Deno.test("runOnce: one pass, no timers, startup restore reason", () => {
  using t = setup();
  t.journal.recordBaseline(U1, 700_000, { name: "x" });
  t.journal.save();
  t.gpu.setExternalLimit(1, 300_000);
  const report = t.loop.runOnce();
  assert.equal(report.ok, true);
  assert.equal(t.gpu.limitOf(0), 250_000);
  assert.equal(t.gpu.limitOf(1), 700_000);
  assert.equal(t.telemetry.changes.find((c) => c.uuid === U1)?.restoreReason, "startup");
  assert.equal(t.clock.pending, 0);
  assert.equal(t.loop.passCount, 1);
});

Deno.test("enforcement: a failing set is unenforced since its first failure, recovers by itself", () => {
  using t = setup({ backoff: { initialMs: 1000, maxMs: 1000 } });
  t.gpu.failOn(0, "setLimit", "NO_PERMISSION");
  const startMs = t.clock.now();
  t.loop.start();
  let e = t.loop.enforcement();
  assert.equal(e.reconciledMs, startMs);
  assert.equal(e.unenforced.length, 1);
  assert.equal(e.unenforced[0].uuid, U0);
  assert.equal(e.unenforced[0].sinceMs, startMs);
  assert.match(e.unenforced[0].error, /NO_PERMISSION/);
  assert.equal(t.loop.outcomeOf(U0)?.enforced, false);
  assert.equal(
    t.loop.outcomeOf(U1)?.enforced,
    true,
    "unmanaged GPU: nothing wanted, nothing missing",
  );
  assert.equal(t.loop.lastReport?.ok, false);
  assert.equal(t.loop.lastSuccessMs, null, "metrics' last success and readiness agree");
  t.clock.advance(INTERVAL);
  e = t.loop.enforcement();
  assert.equal(e.unenforced[0].sinceMs, startMs, "since the first failure, not the last");
  t.gpu.clearFailures();
  t.clock.advance(INTERVAL);
  assert.deepEqual(t.loop.enforcement().unenforced, []);
  assert.equal(t.loop.outcomeOf(U0)?.enforced, true);
  assert.ok(t.loop.lastSuccessMs !== null);
  t.loop.stop();
});

Deno.test("enforcement: unsupported GPUs are never unenforced; a wanted GPU that vanishes is", () => {
  using t = setup();
  t.source.caps = caps([U0, 250], [U1, 300]);
  t.gpu.failOn(1, "readLimits", "NOT_SUPPORTED");
  t.loop.start();
  assert.equal(t.loop.lastReport?.gpus[1].action, "unsupported");
  assert.equal(t.loop.lastReport?.ok, true, "an unsupported GPU does not fail the pass");
  assert.equal(t.loop.isUnsupported(U1), true);
  assert.deepEqual(t.loop.enforcement().unenforced, []);
  t.gpu.removeGpu(0);
  t.clock.advance(INTERVAL);
  const lost = t.loop.enforcement().unenforced;
  assert.deepEqual(lost.map((u) => u.uuid), [U0]);
  assert.match(lost[0].error, /lost/);
  t.loop.stop();
});

Deno.test("dry run: the plan is printed once per change, nothing written, the source hears nothing", () => {
  const printed: string[][] = [];
  using t = setup({ dryRun: true, printPlan: (lines) => printed.push(lines) });
  t.loop.start();
  t.clock.advance(INTERVAL * 3);
  assert.equal(printed.length, 1, "same plan: printed once");
  assert.match(printed[0][0], /GPU 0 .*: would set 700 W → 250 W \(test 250 W\)/);
  assert.equal(t.gpu.calls.setLimit, 0);
  assert.equal(t.journal.saveCount, 0);
  assert.deepEqual(t.source.reported, []);
  t.source.caps = caps([U0, 300]);
  t.loop.trigger();
  t.clock.advance(0);
  assert.equal(printed.length, 2);
  t.loop.stop();
});

Deno.test("source throwing: telemetry and the report agree the pass failed", () => {
  using t = setup();
  t.source.desired = () => {
    throw new Error("boom");
  };
  const report = t.loop.start();
  assert.equal(report.ok, false);
  assert.match(report.error!, /boom/);
  assert.deepEqual(t.telemetry.completed.map((c) => c.ok), [false]);
  t.loop.stop();
});

Deno.test("an unsupported GPU beside three normal ones: one log line in a minute at a 1 s interval", async () => {
  const gpu = new FakeGpuControl([0, 1, 2, 3].map((i) => fakeH100(i)));
  gpu.failOn(2, "readLimits", "NOT_SUPPORTED");
  using tmp = tempStateDir();
  const clock = new ManualClock();
  const uuids = [0, 1, 2, 3].map((i) => fakeH100(i).uuid);
  const loop = new ReconcileLoop(
    gpu,
    new FakeCapSource(caps(...uuids.map((u): [string, number] => [u, 300]))),
    { journal: loadJournal(tmp.dir), clock, intervalMs: 1000 },
  );
  const logs = await captureLogs(() => {
    loop.start();
    clock.advance(60_000);
  });
  assert.ok(loop.passCount >= 60);
  assert.deepEqual([0, 1, 2, 3].map((i) => gpu.limitOf(i)), [300_000, 300_000, 700_000, 300_000]);
  assert.equal(logs.filter((l) => l.text.includes("NOT_SUPPORTED")).length, 1);
  assert.deepEqual(loop.enforcement().unenforced, []);
  assert.equal(loop.lastReport?.ok, true);
  loop.stop();
});
