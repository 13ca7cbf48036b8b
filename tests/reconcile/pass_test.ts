import assert from "node:assert/strict";
import { type Journal, loadJournal } from "../../src/state/journal.ts";
import { reconcilePass, type ReconcilePassOptions } from "../../src/reconcile/pass.ts";
import { observeGpus } from "../../src/reconcile/observe.ts";
import { describePlan } from "../../src/reconcile/report.ts";
import { type DesiredCaps, gpuViews } from "../../src/sources/cap_source.ts";
import { FakeGpuControl, fakeH100 } from "../helpers/fake_gpu_control.ts";
import { caps, captureLogs, reconcileFixture, RecordingTelemetry, tempStateDir } from "./fakes.ts";

const U0 = fakeH100(0).uuid;
const U1 = fakeH100(1).uuid;

function setup(gpus = 2) {
  const f = reconcileFixture({ gpus });
  const pass = (desired: DesiredCaps | null, options: Partial<ReconcilePassOptions> = {}) =>
    reconcilePass(f.gpu, desired, {
      journal: f.journal,
      telemetry: f.telemetry,
      clock: f.clock,
      ...options,
    });
  return { ...f, pass };
}

function onDisk(journal: Journal) {
  return loadJournal(journal.stateDir).entries();
}

Deno.test("apply: sets the cap, journals baseline first, logs the change", async () => {
  using t = setup();
  let report: ReturnType<typeof t.pass> | undefined;
  const logs = await captureLogs(() => {
    report = t.pass(caps([U0, 250]));
  });
  assert.deepEqual(t.gpu.writes, [{ index: 0, mw: 250_000 }]);
  assert.equal(report!.ok, true);
  assert.equal(report!.writes, 1);
  assert.deepEqual(report!.gpus.map((g) => g.action), ["apply", "none"]);
  assert.deepEqual(report!.gpus[0], {
    uuid: U0,
    index: 0,
    name: "NVIDIA H100 80GB HBM3",
    action: "apply",
    fromMw: 700_000,
    toMw: 250_000,
    requestedMw: 250_000,
    clamp: "none",
    reason: "test 250 W",
    desired: { mw: 250_000, reason: "test 250 W", kind: "file" },
    desiredKind: "file",
    enforced: true,
    wanted: true,
    changed: true,
    summary: "700 W → 250 W (test 250 W)",
  });
  assert.equal(report!.gpus[1].summary, "unmanaged at 700 W");
  const entry = onDisk(t.journal).get(U0);
  assert.equal(entry?.baselineMw, 700_000);
  assert.equal(entry?.appliedMw, 250_000);
  assert.equal(t.journal.has(U1), false);
  assert.deepEqual(t.telemetry.changes.map((c) => [c.uuid, c.kind, c.fromMw, c.toMw]), [
    [U0, "apply", 700_000, 250_000],
  ]);
  assert.equal(t.telemetry.completed.length, 1);
  assert.equal(t.telemetry.completed[0].ok, true);
  assert.deepEqual(logs.map((l) => [l.level, l.text]), [
    ["info", `GPU 0 (${U0}): 700 W → 250 W (test 250 W)`],
  ]);
});

Deno.test("clamp up and down: counted once, not on later passes", async () => {
  using t = setup();
  t.gpu.setExternalLimit(1, 500_000);
  let first: ReturnType<typeof t.pass> | undefined;
  const logs = await captureLogs(() => {
    first = t.pass(caps([U0, 150], [U1, 800]));
  });
  assert.deepEqual(t.gpu.writes, [{ index: 0, mw: 200_000 }, { index: 1, mw: 700_000 }]);
  assert.deepEqual(first!.gpus.map((g) => [g.clamp, g.requestedMw, g.toMw]), [
    ["up", 150_000, 200_000],
    ["down", 800_000, 700_000],
  ]);
  assert.deepEqual(t.telemetry.clamps, ["up", "down"]);
  assert.match(logs[0].text, /requested 150 W clamped up to the GPU minimum 200 W/);
  assert.match(logs[1].text, /requested 800 W clamped down to the GPU maximum 700 W/);

  const second = t.pass(caps([U0, 150], [U1, 800]));
  assert.equal(second.writes, 0);
  assert.deepEqual(second.gpus.map((g) => [g.action, g.clamp]), [["none", "up"], [
    "none",
    "down",
  ]]);
  assert.deepEqual(t.telemetry.clamps, ["up", "down"]);
});

Deno.test("in sync: zero writes, zero journal writes, nothing logged, one read per GPU", async () => {
  using t = setup(8);
  const desired = caps(...Array.from({ length: 8 }, (_, i): [string, number] => [
    fakeH100(i).uuid,
    300 + i,
  ]));
  t.pass(desired);
  assert.equal(t.gpu.writes.length, 8);
  const saves = t.journal.saveCount;
  const mtime = Deno.statSync(t.journal.path).mtime;
  const calls = { ...t.gpu.calls };

  let report: ReturnType<typeof t.pass> | undefined;
  const logs = await captureLogs(() => {
    report = t.pass(desired);
  });
  assert.equal(report!.writes, 0);
  assert.equal(report!.ok, true);
  assert.ok(report!.gpus.every((g) => g.action === "none"));
  assert.equal(t.gpu.writes.length, 8);
  assert.equal(t.journal.saveCount, saves);
  assert.deepEqual(Deno.statSync(t.journal.path).mtime, mtime);
  assert.deepEqual(logs, []);
  assert.deepEqual(
    {
      listGpus: t.gpu.calls.listGpus - calls.listGpus,
      readLimits: t.gpu.calls.readLimits - calls.readLimits,
      setLimit: t.gpu.calls.setLimit - calls.setLimit,
      readSample: t.gpu.calls.readSample - calls.readSample,
    },
    { listGpus: 1, readLimits: 8, setLimit: 0, readSample: 0 },
  );
});

Deno.test("drift: a limit changed behind the agent's back is re-applied as drift", () => {
  using t = setup();
  t.pass(caps([U0, 250]));
  t.gpu.setExternalLimit(0, 700_000);
  const report = t.pass(caps([U0, 250]));
  assert.equal(report.gpus[0].action, "drift");
  assert.equal(report.gpus[0].summary, "700 W → 250 W (drift corrected; test 250 W)");
  assert.equal(t.gpu.limitOf(0), 250_000);
  assert.deepEqual(t.telemetry.changes.map((c) => c.kind), ["apply", "drift"]);
  assert.equal(t.journal.get(U0)?.baselineMw, 700_000, "baseline is not the drifted value");
});

Deno.test("new desired value is an apply, baseline unchanged", () => {
  using t = setup();
  t.pass(caps([U0, 250]));
  const report = t.pass(caps([U0, 300]));
  assert.equal(report.gpus[0].action, "apply");
  assert.deepEqual(onDisk(t.journal).get(U0)?.baselineMw, 700_000);
  assert.deepEqual(onDisk(t.journal).get(U0)?.appliedMw, 300_000);
});

Deno.test("desired removed: restored to baseline and forgotten", () => {
  using t = setup();
  t.gpu.setExternalLimit(0, 600_000); // pre-agent value differs from the vendor default
  t.pass(caps([U0, 250]));
  const report = t.pass(new Map());
  assert.equal(report.gpus[0].action, "restore");
  assert.equal(report.gpus[0].toMw, 600_000);
  assert.equal(report.gpus[0].summary, "250 W → 600 W (restore to baseline: no desired cap)");
  assert.equal(t.gpu.limitOf(0), 600_000);
  assert.equal(t.journal.has(U0), false);
  assert.equal(onDisk(t.journal).size, 0);
  const last = t.telemetry.changes.at(-1)!;
  assert.equal(last.kind, "restore");
  assert.equal(last.restoreReason, "unmanaged");
});

Deno.test("restoreTo default: restored to the vendor default, not the baseline", () => {
  using t = setup();
  t.gpu.setExternalLimit(0, 600_000);
  t.pass(caps([U0, 250]));
  const report = t.pass(new Map(), { restoreTo: "default" });
  assert.equal(report.gpus[0].action, "restore");
  assert.equal(t.gpu.limitOf(0), 700_000);
  assert.equal(t.journal.has(U0), false);
});

Deno.test("one GPU's set failure does not block others; error names GPU, code and fix", () => {
  using t = setup();
  t.gpu.failOn(0, "setLimit", "NO_PERMISSION");
  const report = t.pass(caps([U0, 250], [U1, 300]));
  assert.equal(report.ok, false);
  assert.equal(report.gpus[0].action, "error");
  assert.equal(
    report.gpus[0].error,
    `Cannot set power limit on GPU ${U0}: NVML NO_PERMISSION (run as root or with CAP_SYS_ADMIN)`,
  );
  assert.equal(report.gpus[1].action, "apply");
  assert.equal(t.gpu.limitOf(1), 300_000);
  assert.deepEqual(t.telemetry.nvmlErrors, [
    { fn: "nvmlDeviceSetPowerManagementLimit", code: "NO_PERMISSION" },
  ]);
  assert.equal(t.telemetry.completed.at(-1)?.ok, false);
});

Deno.test("baseline is durable before the set; a failed set drops it again (not managed)", () => {
  using t = setup();
  const onDiskAtSet: (number | undefined)[] = [];
  const setLimit = t.gpu.setLimit.bind(t.gpu);
  t.gpu.setLimit = (index, mw) => {
    onDiskAtSet.push(onDisk(t.journal).get(U0)?.baselineMw);
    setLimit(index, mw);
  };
  t.gpu.failOn(0, "setLimit", "GPU_IS_LOST");
  t.pass(caps([U0, 250]));
  assert.deepEqual(onDiskAtSet, [700_000], "baseline was on disk when setLimit ran");
  assert.equal(t.gpu.limitOf(0), 700_000);
  // Nothing was changed, so the GPU is not managed: its baseline is gone from memory and disk.
  assert.equal(t.journal.has(U0), false);
  assert.equal(onDisk(t.journal).has(U0), false);
  t.gpu.clearFailures();
  const retry = t.pass(caps([U0, 250]));
  assert.equal(retry.gpus[0].action, "apply");
  assert.equal(onDisk(t.journal).get(U0)?.appliedMw, 250_000);
});

Deno.test("baseline cannot be saved: GPU is not touched", () => {
  using tmp = tempStateDir();
  Deno.writeTextFileSync(tmp.dir, "not a directory");
  const gpu = new FakeGpuControl([fakeH100(0)]);
  const journal = loadJournal(`${tmp.dir}/sub`);
  const report = reconcilePass(gpu, caps([U0, 250]), { journal });
  assert.equal(gpu.calls.setLimit, 0);
  assert.equal(report.ok, false);
  assert.equal(report.gpus[0].action, "error");
  assert.match(report.gpus[0].error!, /baseline could not be saved \(Cannot write journal/);
  assert.equal(journal.has(U0), false);
});

Deno.test("read failure: GPU untouched, never restored, entry kept; others proceed", () => {
  using t = setup();
  t.pass(caps([U0, 250], [U1, 300]));
  t.gpu.failOn(0, "readLimits", "GPU_IS_LOST");
  const writes = t.gpu.writes.length;
  const report = t.pass(new Map());
  assert.equal(report.gpus[0].action, "error");
  assert.match(report.gpus[0].error!, new RegExp(`^Cannot read power limits of GPU ${U0}: NVML`));
  assert.match(report.gpus[0].error!, /leaving it unchanged$/);
  assert.equal(t.gpu.limitOf(0), 250_000);
  assert.equal(t.journal.has(U0), true);
  assert.equal(report.gpus[1].action, "restore");
  assert.equal(t.gpu.limitOf(1), 700_000);
  assert.deepEqual(t.gpu.writes.slice(writes), [{ index: 1, mw: 700_000 }]);
});

Deno.test("read-back mismatch is an error and the applied value is not recorded", () => {
  using t = setup();
  t.gpu.ignoreSets(0);
  const report = t.pass(caps([U0, 250]));
  assert.equal(report.gpus[0].action, "error");
  assert.match(report.gpus[0].error!, /is 700 W after setting 250 W/);
  assert.equal(report.gpus[0].enforced, false);
  // The limit never moved: the GPU is not managed, the baseline recorded for it is dropped.
  assert.equal(t.journal.has(U0), false);
  assert.equal(onDisk(t.journal).has(U0), false);
  assert.equal(t.telemetry.changes.length, 0);
});

Deno.test("restart keeps the original baseline; startup restore is crash recovery", () => {
  using t = setup();
  t.pass(caps([U0, 250]));
  // Agent restarts with the cap still applied, new desired value.
  const journal2 = loadJournal(t.tmp.dir);
  reconcilePass(t.gpu, caps([U0, 300]), { journal: journal2 });
  assert.equal(onDisk(journal2).get(U0)?.baselineMw, 700_000);
  assert.equal(onDisk(journal2).get(U0)?.appliedMw, 300_000);
  // Crash, then start with no desired cap for U0: restored to the pre-agent value.
  const journal3 = loadJournal(t.tmp.dir);
  const telemetry = new RecordingTelemetry();
  const report = reconcilePass(t.gpu, new Map(), {
    journal: journal3,
    telemetry,
    restoreReason: "startup",
  });
  assert.equal(report.gpus[0].action, "restore");
  assert.equal(t.gpu.limitOf(0), 700_000);
  assert.equal(telemetry.changes[0].restoreReason, "startup");
  assert.equal(onDisk(journal3).size, 0);
});

Deno.test("desired null: nothing changes, journaled GPUs are not restored", () => {
  using t = setup();
  t.pass(caps([U0, 250]));
  const writes = t.gpu.writes.length;
  const saves = t.journal.saveCount;
  const report = t.pass(null);
  assert.equal(report.desiredKnown, false);
  assert.deepEqual(report.gpus.map((g) => g.action), ["skipped", "skipped"]);
  assert.equal(t.gpu.writes.length, writes);
  assert.equal(t.gpu.limitOf(0), 250_000);
  assert.equal(t.journal.saveCount, saves);
});

Deno.test("GPU vanished: its journal entry is kept", () => {
  using t = setup();
  t.pass(caps([U1, 250]));
  t.gpu.removeGpu(1);
  const report = t.pass(new Map());
  assert.equal(report.ok, true);
  assert.deepEqual(report.absentUuids, [U1]);
  assert.equal(onDisk(t.journal).get(U1)?.baselineMw, 700_000);
  // It comes back without a desired cap: restored.
  t.gpu.addGpu(fakeH100(1, { limitMw: 250_000 }));
  t.pass(new Map());
  assert.equal(t.gpu.limitOf(1), 700_000);
  assert.equal(t.journal.has(U1), false);
});

Deno.test("dry run (read-only journal): plans what would change, never sets, never writes", () => {
  using t = setup();
  const printed: string[] = [];
  const journal = loadJournal(t.tmp.dir, { readOnly: true });
  const report = t.pass(caps([U0, 250]), {
    journal,
    onPlan: (plan) => printed.push(...describePlan(plan)),
  });
  assert.equal(report!.dryRun, true);
  assert.equal(report!.gpus[0].action, "apply");
  assert.equal(t.gpu.calls.setLimit, 0);
  assert.equal(journal.has(U0), false);
  assert.equal(journal.saveCount, 0);
  assert.throws(() => Deno.statSync(t.tmp.dir), Deno.errors.NotFound);
  assert.deepEqual(printed, [
    `GPU 0 (${U0}, NVIDIA H100 80GB HBM3): would set 700 W → 250 W (test 250 W)`,
    `GPU 1 (${U1}, NVIDIA H100 80GB HBM3): unmanaged at 700 W (no cap wanted)`,
  ]);
  assert.equal(report.gpus[0].summary, "would set 700 W → 250 W (test 250 W)");
});

Deno.test("listGpus failure: nothing changes, pass not ok", () => {
  using t = setup();
  t.gpu.failListGpus("UNINITIALIZED");
  const report = t.pass(caps([U0, 250]));
  assert.equal(report.ok, false);
  assert.match(report.error!, /^Cannot list GPUs: /);
  assert.equal(t.gpu.calls.setLimit, 0);
});

Deno.test("observation is reused: no second read per GPU; views omit unreadable GPUs", () => {
  using t = setup();
  t.gpu.failOn(1, "readLimits", "GPU_IS_LOST");
  const observation = observeGpus(t.gpu, { telemetry: t.telemetry });
  assert.deepEqual(gpuViews(observation).map((v) => [v.uuid, v.defaultMw]), [[U0, 700_000]]);
  const reads = t.gpu.readCount;
  t.pass(new Map(), { observation });
  assert.equal(t.gpu.readCount, reads);
  assert.deepEqual(t.telemetry.nvmlErrors.map((e) => e.code), ["GPU_IS_LOST"]);
});

Deno.test("an impossible request for one GPU is its error only; others still applied", () => {
  using t = setup();
  const desired = caps([U1, 300]);
  desired.set(U0, { mw: Number.NaN, reason: "broken", kind: "file" });
  const report = t.pass(desired);
  assert.equal(report.ok, false);
  assert.equal(report.gpus[0].action, "error");
  assert.match(report.gpus[0].error!, new RegExp(`^Cannot reconcile GPU ${U0}: `));
  assert.equal(t.gpu.limitOf(0), 700_000);
  assert.equal(report.gpus[1].action, "apply");
  assert.equal(t.gpu.limitOf(1), 300_000);
});

Deno.test("observation reads MIG device UUIDs only when asked; a failed read is null, counted", () => {
  using t = setup();
  t.gpu.setMigDeviceUuids(0, ["MIG-a", "MIG-b"]);
  const plain = observeGpus(t.gpu, { telemetry: t.telemetry });
  assert.equal(t.gpu.calls.migDeviceUuids, 0);
  assert.equal(gpuViews(plain)[0].migDeviceUuids, undefined, "not read: absent");

  t.gpu.failOn(1, "migDeviceUuids", "UNKNOWN");
  const observation = observeGpus(t.gpu, { telemetry: t.telemetry, migDevices: true });
  assert.equal(t.gpu.calls.migDeviceUuids, 2, "one read per GPU");
  assert.deepEqual(gpuViews(observation).map((v) => v.migDeviceUuids), [["MIG-a", "MIG-b"], null]);
  assert.match(observation.gpus[1].migError!, /UNKNOWN/);
  assert.deepEqual(t.telemetry.nvmlErrors.map((e) => e.code), ["UNKNOWN"]);
});
