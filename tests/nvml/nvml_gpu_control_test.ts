import assert from "node:assert/strict";
import { NvmlError, NvmlLibraryError } from "../../src/nvml/errors.ts";
import { type NvmlGpuControl, openNvmlGpuControl } from "../../src/nvml/nvml_gpu_control.ts";
import { buildFakeNvml, type FakeNvmlVariant } from "../fake_nvml/build.ts";
import {
  createFakeNvmlDir,
  type FakeNvmlDir,
  type FakeState,
  makeFakeState,
  makeGpu,
  readFakeState,
  updateFakeState,
} from "../helpers/fake_state.ts";

const UUID0 = "GPU-00000000-0000-0000-0000-000000000000";
const UUID1 = "GPU-00000000-0000-0000-0000-000000000001";

/** Opens the control in-process against a fresh fake state; always closes and cleans up. */
async function withControl(
  state: FakeState,
  fn: (control: NvmlGpuControl, fake: FakeNvmlDir) => void,
  options: { variant?: FakeNvmlVariant } = {},
): Promise<void> {
  const library = await buildFakeNvml({ variant: options.variant });
  const fake = createFakeNvmlDir(state);
  Deno.env.set("FAKE_NVML_STATE", fake.env.FAKE_NVML_STATE);
  Deno.env.set("FAKE_NVML_LOG", fake.env.FAKE_NVML_LOG);
  try {
    const control = openNvmlGpuControl(library);
    try {
      fn(control, fake);
    } finally {
      control.close();
    }
  } finally {
    Deno.env.delete("FAKE_NVML_STATE");
    Deno.env.delete("FAKE_NVML_LOG");
    fake.cleanup();
  }
}

function assertNvmlError(
  fn: () => unknown,
  expected: { fn: string; codeName: string; gpu?: string; message?: RegExp },
): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof NvmlError, `expected NvmlError, got ${error}`);
    assert.equal(error.fn, expected.fn);
    assert.equal(error.codeName, expected.codeName);
    if (expected.gpu !== undefined) assert.equal(error.gpu, expected.gpu);
    if (expected.message !== undefined) assert.match(error.message, expected.message);
    return true;
  });
}

Deno.test("enumerates GPUs with UUID, name, PCI bus id and the driver version", async () => {
  const state = makeFakeState(2, { driverVersion: "580.159.04" });
  state.gpus[1].name = "NVIDIA H200";
  await withControl(state, (control) => {
    assert.equal(control.driverVersion(), "580.159.04");
    assert.deepEqual(control.listGpus(), [
      { index: 0, uuid: UUID0, name: "NVIDIA H100 80GB HBM3", pciBusId: "00000000:10:00.0" },
      { index: 1, uuid: UUID1, name: "NVIDIA H200", pciBusId: "00000000:11:00.0" },
    ]);
  });
});

Deno.test("reads limits, constraints, enforced limit and samples", async () => {
  const state = makeFakeState(2);
  state.gpus[0] = makeGpu(0, { limitMw: 450000, powerUsageMw: 123456, energyMj: 987654321 });
  state.gpus[1] = makeGpu(1, {
    minLimitMw: 150000,
    maxLimitMw: 600000,
    defaultLimitMw: 550000,
    limitMw: 500000,
    enforcedLimitMw: 400000,
  });
  await withControl(state, (control) => {
    assert.deepEqual(control.readLimits(0), {
      limitMw: 450000,
      enforcedMw: 450000,
      defaultMw: 700000,
      minMw: 200000,
      maxMw: 700000,
    });
    assert.deepEqual(control.readLimits(1), {
      limitMw: 500000,
      enforcedMw: 400000,
      defaultMw: 550000,
      minMw: 150000,
      maxMw: 600000,
    });
    assert.deepEqual(control.readSample(0), { drawMw: 123456, energyMj: 987654321 });
  });
});

Deno.test("NOT_SUPPORTED samples and enforced limit read as null", async () => {
  const state = makeFakeState(2);
  delete state.gpus[0].powerUsageMw;
  delete state.gpus[0].energyMj;
  state.gpus[0].enforcedLimitMw = null;
  state.gpus[1].fail = { nvmlDeviceGetPowerUsage: 3, nvmlDeviceGetTotalEnergyConsumption: 3 };
  await withControl(state, (control) => {
    assert.deepEqual(control.readSample(0), { drawMw: null, energyMj: null });
    assert.equal(control.readLimits(0).enforcedMw, null);
    assert.deepEqual(control.readSample(1), { drawMw: null, energyMj: null });
  });
});

Deno.test("other sample errors are NvmlErrors, not nulls", async () => {
  const state = makeFakeState(1);
  state.gpus[0].fail = { nvmlDeviceGetPowerUsage: 15 };
  await withControl(state, (control) => {
    assertNvmlError(() => control.readSample(0), {
      fn: "nvmlDeviceGetPowerUsage",
      codeName: "GPU_IS_LOST",
      gpu: UUID0,
    });
  });
});

Deno.test("setLimit writes the fake state, reads back, and logs the set", async () => {
  await withControl(makeFakeState(2), (control, fake) => {
    const before = Date.now();
    control.setLimit(1, 300000);
    assert.equal(control.readLimits(1).limitMw, 300000);
    assert.equal(control.readLimits(0).limitMw, 700000);
    const saved = readFakeState(fake.statePath);
    assert.equal(saved.gpus[1].limitMw, 300000);
    assert.equal(saved.gpus[0].limitMw, 700000);
    assert.deepEqual(saved.gpus[1].processes, []);
    const log = fake.readLog();
    assert.equal(log.length, 1);
    const match = /^(\d+) set (\S+) (\d+)$/.exec(log[0]);
    assert.ok(match, `log line: ${log[0]}`);
    assert.ok(Number(match[1]) >= before - 1000);
    assert.equal(match[2], UUID1);
    assert.equal(match[3], "300000");
  });
});

Deno.test("out-of-range set → NvmlError INVALID_ARGUMENT with the min/max hint; nothing written", async () => {
  await withControl(makeFakeState(1), (control, fake) => {
    for (const mw of [199999, 700001]) {
      assertNvmlError(() => control.setLimit(0, mw), {
        fn: "nvmlDeviceSetPowerManagementLimit",
        codeName: "INVALID_ARGUMENT",
        gpu: UUID0,
        message: /value outside the GPU's min\/max constraints/,
      });
    }
    assert.equal(control.readLimits(0).limitMw, 700000);
    assert.equal(readFakeState(fake.statePath).gpus[0].limitMw, 700000);
    assert.deepEqual(fake.readLog(), []);
  });
});

Deno.test("setLimit rejects non-integer milliwatts before calling NVML", async () => {
  await withControl(makeFakeState(1), (control, fake) => {
    assert.throws(() => control.setLimit(0, 250000.5), RangeError);
    assert.throws(() => control.setLimit(0, -1), RangeError);
    assert.deepEqual(fake.readLog(), []);
  });
});

Deno.test("per-GPU failure injection: one GPU fails, the other still works", async () => {
  const state = makeFakeState(2);
  state.gpus[0].fail = { nvmlDeviceSetPowerManagementLimit: 4 };
  await withControl(state, (control, fake) => {
    assertNvmlError(() => control.setLimit(0, 300000), {
      fn: "nvmlDeviceSetPowerManagementLimit",
      codeName: "NO_PERMISSION",
      gpu: UUID0,
      message: new RegExp(
        `^NVML nvmlDeviceSetPowerManagementLimit failed on GPU ${UUID0}: NO_PERMISSION ` +
          "\\(run as root or with CAP_SYS_ADMIN\\)$",
      ),
    });
    control.setLimit(1, 300000);
    assert.equal(control.readLimits(1).limitMw, 300000);
    assert.equal(control.readLimits(0).limitMw, 700000);
    assert.deepEqual(fake.readLog().map((line) => line.split(" ").slice(1).join(" ")), [
      `set ${UUID1} 300000`,
    ]);
  });
});

Deno.test("errors name the GPU index when its UUID cannot be read", async () => {
  const state = makeFakeState(2);
  state.gpus[1].fail = { nvmlDeviceGetUUID: 15, nvmlDeviceGetPowerManagementLimit: 15 };
  await withControl(state, (control) => {
    assertNvmlError(() => control.readLimits(1), {
      fn: "nvmlDeviceGetPowerManagementLimit",
      codeName: "GPU_IS_LOST",
      gpu: "1",
      message: /failed on GPU 1: GPU_IS_LOST/,
    });
    assert.deepEqual(control.listGpus().map((gpu) => gpu.index), [0], "unreadable GPU left out");
    assertNvmlError(() => control.readLimits(7), {
      fn: "nvmlDeviceGetHandleByIndex_v2",
      codeName: "INVALID_ARGUMENT",
      gpu: "7",
    });
    assert.equal(control.readLimits(0).limitMw, 700000);
  });
});

Deno.test("computePids: none, some, deduplicated and sorted", async () => {
  const state = makeFakeState(2);
  state.gpus[1].processes = [{ pid: 4242 }, { pid: 17, usedGpuMemory: 1 << 30 }, { pid: 4242 }];
  await withControl(state, (control) => {
    assert.deepEqual(control.computePids(0), []);
    assert.deepEqual(control.computePids(1), [17, 4242]);
    assert.equal(control.capabilities().processFunction, "nvmlDeviceGetComputeRunningProcesses_v3");
  });
});

Deno.test("process list growth between the calls within the headroom", async () => {
  const state = makeFakeState(1);
  state.gpus[0].processes = [{ pid: 4242 }];
  state.gpus[0].growProcessesOnSecondCall = 3;
  await withControl(state, (control) => {
    assert.deepEqual(control.computePids(0), [4242, 90000, 90001, 90002]);
  });
});

Deno.test("process list growth beyond the headroom → grow and retry", async () => {
  const state = makeFakeState(1);
  state.gpus[0].processes = [{ pid: 4242 }];
  state.gpus[0].growProcessesOnSecondCall = 50; // sizing says 1 → 10 slots; then 51 are needed
  await withControl(state, (control) => {
    const pids = control.computePids(0);
    assert.equal(pids.length, 51);
    assert.equal(pids[0], 4242);
    assert.equal(pids.at(-1), 90049);
  });
});

Deno.test("a process list that never fits → bounded retries, then NvmlError", async () => {
  const state = makeFakeState(2);
  state.gpus[0].processes = [{ pid: 4242 }];
  state.gpus[0].processesAlwaysInsufficient = true;
  state.gpus[1].processes = [{ pid: 7 }];
  await withControl(state, (control) => {
    assertNvmlError(() => control.computePids(0), {
      fn: "nvmlDeviceGetComputeRunningProcesses_v3",
      codeName: "INSUFFICIENT_SIZE",
      gpu: UUID0,
      message: /kept growing after 5 attempts/,
    });
    assert.deepEqual(control.computePids(1), [7]);
  });
});

Deno.test("MIG: processes on MIG instances roll up into the parent GPU", async () => {
  const state = makeFakeState(2);
  state.gpus[0].processes = [{ pid: 10 }];
  state.gpus[0].migDevices = [
    { uuid: "MIG-11111111-1111-1111-1111-111111111111", processes: [{ pid: 30 }, { pid: 20 }] },
    null,
    { uuid: "MIG-22222222-2222-2222-2222-222222222222", processes: [{ pid: 20 }, { pid: 40 }] },
    { uuid: "MIG-33333333-3333-3333-3333-333333333333" },
  ];
  state.gpus[1].processes = [{ pid: 50 }];
  await withControl(state, (control) => {
    assert.equal(control.capabilities().mig, true);
    assert.deepEqual(control.computePids(0), [10, 20, 30, 40]);
    assert.deepEqual(control.computePids(1), [50]);
    assert.equal(control.listGpus().length, 2, "MIG devices are not GPUs");
  });
});

Deno.test("MIG: a parent that refuses the process query still rolls up its instances", async () => {
  const state = makeFakeState(1);
  state.gpus[0].fail = { nvmlDeviceGetComputeRunningProcesses_v3: 4 };
  state.gpus[0].migDevices = [{ uuid: "MIG-a", processes: [{ pid: 77 }] }];
  await withControl(state, (control) => {
    assert.deepEqual(control.computePids(0), [77]);
  });
});

Deno.test("MIG: a failing instance query is an NvmlError naming the GPU and MIG device", async () => {
  const state = makeFakeState(1);
  state.gpus[0].migDevices = [{
    uuid: "MIG-broken",
    processes: [{ pid: 1 }],
    fail: { nvmlDeviceGetComputeRunningProcesses_v3: 15 },
  }];
  await withControl(state, (control) => {
    assertNvmlError(() => control.computePids(0), {
      fn: "nvmlDeviceGetComputeRunningProcesses_v3",
      codeName: "GPU_IS_LOST",
      gpu: `${UUID0} (MIG MIG-broken)`,
    });
  });
});

Deno.test("MIG mode NOT_SUPPORTED means no MIG", async () => {
  const state = makeFakeState(1);
  state.gpus[0].processes = [{ pid: 5 }];
  state.gpus[0].fail = { nvmlDeviceGetMigMode: 3 };
  state.gpus[0].migDevices = [{ uuid: "MIG-a", processes: [{ pid: 6 }] }];
  await withControl(state, (control) => {
    assert.deepEqual(control.computePids(0), [5]);
  });
});

Deno.test("MIG device UUIDs: slot order, empty slots skipped, none without MIG", async () => {
  const state = makeFakeState(2);
  state.gpus[0].migDevices = [
    { uuid: "MIG-11111111-1111-1111-1111-111111111111" },
    null,
    { uuid: "MIG-22222222-2222-2222-2222-222222222222" },
  ];
  await withControl(state, (control) => {
    assert.deepEqual(control.migDeviceUuids(0), [
      "MIG-11111111-1111-1111-1111-111111111111",
      "MIG-22222222-2222-2222-2222-222222222222",
    ]);
    assert.deepEqual(control.migDeviceUuids(1), [], "MIG off");
  });
});

Deno.test("MIG device UUIDs: NOT_SUPPORTED is none, a failing MIG query names the GPU", async () => {
  const state = makeFakeState(2);
  state.gpus[0].fail = { nvmlDeviceGetMigMode: 3 };
  state.gpus[0].migDevices = [{ uuid: "MIG-a" }];
  state.gpus[1].migDevices = [{ uuid: "MIG-b", fail: { nvmlDeviceGetUUID: 15 } }];
  await withControl(state, (control) => {
    assert.deepEqual(control.migDeviceUuids(0), []);
    assertNvmlError(() => control.migDeviceUuids(1), {
      fn: "nvmlDeviceGetUUID",
      codeName: "GPU_IS_LOST",
      gpu: "GPU-00000000-0000-0000-0000-000000000001",
    });
  });
});

Deno.test("v1-only library: falls back to nvmlDeviceGetComputeRunningProcesses (16-byte structs)", async () => {
  const state = makeFakeState(1);
  state.gpus[0].processes = [{ pid: 101, usedGpuMemory: 2 ** 40 }, { pid: 102 }, { pid: 103 }];
  state.gpus[0].growProcessesOnSecondCall = 20;
  await withControl(state, (control) => {
    assert.equal(control.capabilities().processFunction, "nvmlDeviceGetComputeRunningProcesses");
    const pids = control.computePids(0);
    assert.deepEqual(pids.slice(0, 3), [101, 102, 103]);
    assert.equal(pids.length, 23);
    assert.equal(pids.at(-1), 90019);
  }, { variant: "v1-only" });
});

Deno.test("no-mig library: missing MIG symbols mean parent processes only", async () => {
  const state = makeFakeState(1);
  state.gpus[0].processes = [{ pid: 5 }];
  state.gpus[0].migDevices = [{ uuid: "MIG-a", processes: [{ pid: 6 }] }];
  await withControl(state, (control) => {
    const capabilities = control.capabilities();
    assert.equal(capabilities.mig, false);
    assert.equal(capabilities.processFunction, "nvmlDeviceGetComputeRunningProcesses_v3");
    assert.deepEqual(control.computePids(0), [5]);
    assert.deepEqual(control.migDeviceUuids(0), []);
    control.setLimit(0, 250000);
    assert.equal(control.readLimits(0).limitMw, 250000);
  }, { variant: "no-mig" });
});

Deno.test("state file changes are picked up while the control is open", async () => {
  await withControl(makeFakeState(1), (control, fake) => {
    assert.equal(control.listGpus().length, 1);
    assert.deepEqual(control.computePids(0), []);
    updateFakeState(fake.statePath, (state) => {
      state.gpus.push(makeGpu(1, { processes: [{ pid: 31 }] }));
      state.gpus[0].processes = [{ pid: 30 }];
    });
    assert.deepEqual(control.listGpus().map((gpu) => gpu.uuid), [UUID0, UUID1]);
    assert.deepEqual(control.computePids(0), [30]);
    assert.deepEqual(control.computePids(1), [31]);
    // Someone else (nvidia-smi -pl) changes the limit: the next read sees it.
    updateFakeState(fake.statePath, (state) => {
      state.gpus[1].limitMw = 222000;
      state.gpus[0].processes = [];
    });
    assert.equal(control.readLimits(1).limitMw, 222000);
    assert.deepEqual(control.computePids(0), []);
    // Our own set keeps the test's changes.
    control.setLimit(0, 333000);
    const saved = readFakeState(fake.statePath);
    assert.equal(saved.gpus[0].limitMw, 333000);
    assert.equal(saved.gpus[1].limitMw, 222000);
    updateFakeState(fake.statePath, (state) => {
      state.gpus.pop();
    });
    assert.equal(control.listGpus().length, 1);
  });
});

Deno.test("listGpus leaves out a lost GPU but a failing count throws", async () => {
  const state = makeFakeState(3);
  state.gpus[1].fail = { nvmlDeviceGetHandleByIndex_v2: 15 };
  state.gpus[2].fail = { nvmlDeviceGetPciInfo_v3: 15 };
  await withControl(state, (control, fake) => {
    assert.deepEqual(control.listGpus().map((gpu) => gpu.uuid), [UUID0]);
    updateFakeState(fake.statePath, (changed) => {
      changed.fail = { nvmlDeviceGetCount_v2: 999 };
    });
    assertNvmlError(() => control.listGpus(), { fn: "nvmlDeviceGetCount_v2", codeName: "UNKNOWN" });
  });
});

Deno.test("close is idempotent and later calls throw UNINITIALIZED", async () => {
  await withControl(makeFakeState(1), (control) => {
    control.close();
    control.close();
    assertNvmlError(() => control.listGpus(), {
      fn: "nvmlDeviceGetCount_v2",
      codeName: "UNINITIALIZED",
      message: /closed/,
    });
  });
});

Deno.test("missing library → NvmlLibraryError", () => {
  const path = "/nonexistent/dir/libnvidia-ml.so.1";
  assert.throws(() => openNvmlGpuControl(path), (error: unknown) => {
    assert.ok(error instanceof NvmlLibraryError);
    assert.equal(error.path, path);
    assert.match(error.message, /^NVIDIA driver not found: cannot load libnvidia-ml\.so\.1 \(/);
    assert.match(error.message, /--nvml-library/);
    return true;
  });
});

Deno.test("a library lacking required symbols → NvmlLibraryError", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "nvml-bad-lib-" });
  try {
    const source = `${dir}/empty.c`;
    Deno.writeTextFileSync(source, "int not_nvml(void) { return 0; }\n");
    const library = `${dir}/libnvidia-ml.so.1`;
    const cc = await new Deno.Command("cc", { args: ["-shared", "-fPIC", "-o", library, source] })
      .output();
    assert.ok(cc.success);
    assert.throws(() => openNvmlGpuControl(library), NvmlLibraryError);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("nvmlInit_v2 failure (driver not loaded) → NvmlError from nvmlInit_v2", async () => {
  const library = await buildFakeNvml();
  Deno.env.delete("FAKE_NVML_STATE");
  assertNvmlError(() => openNvmlGpuControl(library), {
    fn: "nvmlInit_v2",
    codeName: "DRIVER_NOT_LOADED",
    message: /^NVML nvmlInit_v2 failed: DRIVER_NOT_LOADED/,
  });
});

Deno.test("identity is read once per session; listGpus still asks for every handle", async () => {
  await withControl(makeFakeState(2), (control, fake) => {
    assert.deepEqual(control.listGpus().map((gpu) => gpu.uuid), [UUID0, UUID1]);
    // UUID, name and PCI info fail from now on: the session already knows them.
    updateFakeState(fake.statePath, (state) => {
      for (const gpu of state.gpus) {
        gpu.fail = { nvmlDeviceGetUUID: 999, nvmlDeviceGetName: 999, nvmlDeviceGetPciInfo_v3: 999 };
      }
    });
    const again = control.listGpus();
    assert.deepEqual(again.map((gpu) => [gpu.index, gpu.uuid]), [[0, UUID0], [1, UUID1]]);
    assert.equal(again[1].pciBusId, "00000000:11:00.0");
    // GPU 1 falls off the bus: it leaves the list at once (its handle is asked for each time).
    updateFakeState(fake.statePath, (state) => {
      state.gpus[1].fail = { nvmlDeviceGetHandleByIndex_v2: 15 };
    });
    assert.deepEqual(control.listGpus().map((gpu) => gpu.uuid), [UUID0]);
    assertNvmlError(() => control.readLimits(1), {
      fn: "nvmlDeviceGetHandleByIndex_v2",
      codeName: "GPU_IS_LOST",
    });
  });
});
