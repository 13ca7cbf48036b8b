import assert from "node:assert/strict";
import { loadJournal } from "../../src/state/journal.ts";
import { collectGpuStatus } from "../../src/reconcile/gpu_status.ts";
import { reconcilePass } from "../../src/reconcile/pass.ts";
import { FakeGpuControl, fakeH100 } from "../helpers/fake_gpu_control.ts";
import { caps, tempStateDir } from "./fakes.ts";

const U0 = fakeH100(0).uuid;
const U1 = fakeH100(1).uuid;

Deno.test("collectGpuStatus: driver facts, journal and desired per GPU", () => {
  using tmp = tempStateDir();
  const gpu = new FakeGpuControl([
    fakeH100(0, { drawMw: 123_000, energyMj: 42, enforcedMw: 650_000 }),
    fakeH100(1, { drawMw: null, energyMj: null, enforcedMw: null }),
  ]);
  const journal = loadJournal(tmp.dir);
  const desired = caps([U0, 250]);
  reconcilePass(gpu, desired, { journal });
  const status = collectGpuStatus(gpu, { journal, desired });
  assert.deepEqual(status, [
    {
      index: 0,
      uuid: U0,
      name: "NVIDIA H100 80GB HBM3",
      pciBusId: "00000000:18:00.0",
      drawMw: 123_000,
      limitMw: 250_000,
      enforcedMw: 650_000,
      defaultMw: 700_000,
      minMw: 200_000,
      maxMw: 700_000,
      energyMj: 42,
      managed: true,
      baselineMw: 700_000,
      appliedMw: 250_000,
      desiredMw: 250_000,
      desiredReason: "test 250 W",
      desiredKind: "file",
      supported: true,
      enforced: true,
    },
    {
      index: 1,
      uuid: U1,
      name: "NVIDIA H100 80GB HBM3",
      pciBusId: "00000000:19:00.0",
      drawMw: null,
      limitMw: 700_000,
      enforcedMw: null,
      defaultMw: 700_000,
      minMw: 200_000,
      maxMw: 700_000,
      energyMj: null,
      managed: false,
      baselineMw: null,
      appliedMw: null,
      desiredMw: null,
      desiredReason: null,
      desiredKind: null,
      supported: true,
      enforced: null,
    },
  ]);
  // Without desired caps the desired fields are null.
  assert.equal(collectGpuStatus(gpu, { journal })[0].desiredMw, null);
});

Deno.test("collectGpuStatus: read failures become per-GPU errors, others unaffected", () => {
  using tmp = tempStateDir();
  const gpu = new FakeGpuControl([fakeH100(0), fakeH100(1)]);
  gpu.failOn(0, "readLimits", "GPU_IS_LOST");
  gpu.failOn(0, "readSample", "NOT_SUPPORTED");
  const status = collectGpuStatus(gpu, { journal: loadJournal(tmp.dir) });
  assert.equal(status[0].limitMw, null);
  assert.equal(status[0].drawMw, null);
  assert.match(status[0].error!, /^cannot read power limits: .*GPU_IS_LOST/);
  assert.match(status[0].error!, /; cannot read power draw: .*NOT_SUPPORTED/);
  assert.equal(status[1].error, undefined);
  assert.equal(status[1].limitMw, 700_000);
});

Deno.test("collectGpuStatus: listing failure throws", () => {
  using tmp = tempStateDir();
  const gpu = new FakeGpuControl([fakeH100(0)]);
  gpu.failListGpus("UNINITIALIZED");
  assert.throws(() => collectGpuStatus(gpu, { journal: loadJournal(tmp.dir) }), /UNINITIALIZED/);
});

Deno.test("collectGpuStatus: NOT_SUPPORTED limits → unsupported, not an error", () => {
  using tmp = tempStateDir();
  const gpu = new FakeGpuControl([fakeH100(0), fakeH100(1)]);
  gpu.failOn(1, "readLimits", "NOT_SUPPORTED");
  const status = collectGpuStatus(gpu, { journal: loadJournal(tmp.dir) });
  assert.equal(status[1].supported, false);
  assert.equal(status[1].error, undefined);
  assert.equal(status[1].limitMw, null);
  assert.equal(status[0].supported, true);
});
