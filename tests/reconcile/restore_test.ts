import assert from "node:assert/strict";
import { loadJournal } from "../../src/state/journal.ts";
import { reconcilePass } from "../../src/reconcile/pass.ts";
import { restoreAll } from "../../src/reconcile/restore.ts";
import { FakeGpuControl, fakeH100 } from "../helpers/fake_gpu_control.ts";
import { caps, captureLogs, RecordingTelemetry, tempStateDir } from "./fakes.ts";

const U = [0, 1, 2].map((i) => fakeH100(i).uuid);

function capped() {
  const gpu = new FakeGpuControl([0, 1, 2].map((i) => fakeH100(i, { limitMw: 600_000 + i })));
  const tmp = tempStateDir();
  const journal = loadJournal(tmp.dir);
  reconcilePass(gpu, caps([U[0], 250], [U[1], 260], [U[2], 270]), { journal });
  assert.deepEqual([0, 1, 2].map((i) => gpu.limitOf(i)), [250_000, 260_000, 270_000]);
  return { gpu, tmp, journal, [Symbol.dispose]: tmp[Symbol.dispose] };
}

Deno.test("restoreAll: one failure keeps its entry, the others are restored", () => {
  using t = capped();
  t.gpu.failOn(1, "setLimit", "NO_PERMISSION");
  const telemetry = new RecordingTelemetry();
  const report = restoreAll(t.gpu, { journal: t.journal, reason: "command", telemetry });
  assert.equal(report.ok, false);
  assert.deepEqual(report.gpus.map((g) => g.action), ["restore", "error", "restore"]);
  assert.equal(report.gpus[0].summary, "250 W → 600 W (restore to baseline: restore command)");
  assert.equal(report.gpus[1].summary, report.gpus[1].error);
  assert.equal(
    report.gpus[1].error,
    `Cannot set power limit on GPU ${U[1]}: NVML NO_PERMISSION (run as root or with CAP_SYS_ADMIN)`,
  );
  assert.deepEqual([0, 1, 2].map((i) => t.gpu.limitOf(i)), [600_000, 260_000, 600_002]);
  assert.deepEqual(loadJournal(t.tmp.dir).uuids(), [U[1]]);
  assert.deepEqual(telemetry.changes.map((c) => [c.kind, c.restoreReason]), [
    ["restore", "command"],
    ["restore", "command"],
  ]);
  // A later restore retries the one that failed.
  t.gpu.clearFailures();
  const retry = restoreAll(t.gpu, { journal: t.journal, reason: "command" });
  assert.equal(retry.ok, true);
  assert.equal(t.gpu.limitOf(1), 600_001);
  assert.equal(loadJournal(t.tmp.dir).size, 0);
});

Deno.test("restoreAll: absent GPU keeps its entry and is reported", async () => {
  using t = capped();
  t.gpu.removeGpu(2);
  let report: ReturnType<typeof restoreAll> | undefined;
  const logs = await captureLogs(() => {
    report = restoreAll(t.gpu, { journal: t.journal, reason: "shutdown" });
  });
  assert.deepEqual(report!.absentUuids, [U[2]]);
  assert.deepEqual(loadJournal(t.tmp.dir).uuids(), [U[2]]);
  assert.ok(logs.some((l) => l.level === "warning" && l.text.includes(`GPU ${U[2]} is in the`)));
});

Deno.test("restoreAll: restoreTo default uses the vendor default", () => {
  using t = capped();
  restoreAll(t.gpu, { journal: t.journal, reason: "command", restoreTo: "default" });
  assert.deepEqual([0, 1, 2].map((i) => t.gpu.limitOf(i)), [700_000, 700_000, 700_000]);
});

Deno.test("restoreAll: already at baseline is released without a write", () => {
  using t = capped();
  t.gpu.setExternalLimit(0, 600_000);
  const writes = t.gpu.writes.length;
  const report = restoreAll(t.gpu, { journal: t.journal, reason: "command" });
  assert.equal(report.ok, true);
  assert.equal(report.writes, 2);
  assert.equal(
    report.gpus[0].summary,
    "released, already at 600 W (restore to baseline: restore command)",
  );
  assert.deepEqual(t.gpu.writes.slice(writes).map((w) => w.index), [1, 2]);
  assert.equal(t.journal.size, 0);
});

Deno.test("restoreAll: baseline outside today's range is clamped into it", () => {
  using t = capped();
  t.gpu.removeGpu(0);
  t.gpu.addGpu(fakeH100(0, { limitMw: 250_000, maxMw: 550_000 }));
  const report = restoreAll(t.gpu, { journal: t.journal, reason: "command" });
  assert.equal(report.gpus[0].action, "restore");
  assert.equal(t.gpu.limitOf(0), 550_000);
});

Deno.test("restoreAll: read failure keeps the entry", () => {
  using t = capped();
  t.gpu.failOn(0, "readLimits", "GPU_IS_LOST");
  const report = restoreAll(t.gpu, { journal: t.journal, reason: "command" });
  assert.equal(report.gpus[0].action, "error");
  assert.equal(t.gpu.limitOf(0), 250_000);
  assert.deepEqual(t.journal.uuids(), [U[0]]);
});

Deno.test("restoreAll: dry run (read-only journal) changes and writes nothing", () => {
  using t = capped();
  const writes = t.gpu.writes.length;
  const onDisk = Deno.readTextFileSync(t.journal.path);
  const journal = loadJournal(t.tmp.dir, { readOnly: true });
  const report = restoreAll(t.gpu, { journal, reason: "command" });
  assert.equal(report.dryRun, true);
  assert.deepEqual(report.gpus.map((g) => g.action), ["restore", "restore", "restore"]);
  assert.match(report.gpus[0].summary, /^would set 250 W → 600 W/);
  assert.equal(t.gpu.writes.length, writes);
  assert.equal(journal.size, 3);
  assert.equal(journal.saveCount, 0);
  assert.equal(Deno.readTextFileSync(t.journal.path), onDisk);
});

Deno.test("restoreAll: empty journal makes no NVML calls", () => {
  using tmp = tempStateDir();
  const gpu = new FakeGpuControl([fakeH100(0)]);
  const report = restoreAll(gpu, { journal: loadJournal(tmp.dir), reason: "command" });
  assert.equal(report.ok, true);
  assert.equal(gpu.calls.listGpus + gpu.calls.readLimits, 0);
});
