import assert from "node:assert/strict";
import { NVML_SYMBOLS, type NvmlSymbols } from "../../src/nvml/ffi_symbols.ts";
import {
  decodeCString,
  decodePciInfo,
  decodeProcessInfos,
  encodeCString,
} from "../../src/nvml/layouts.ts";
import { NvmlReturn } from "../../src/nvml/return_codes.ts";
import { buildFakeNvml } from "./build.ts";
import {
  createFakeNvmlDir,
  type FakeNvmlDir,
  type FakeState,
  makeFakeState,
  makeGpu,
  readFakeState,
  writeFakeState,
} from "../helpers/fake_state.ts";

type Symbols = Deno.DynamicLibrary<NvmlSymbols>["symbols"];

/** Loads the fake library directly (no init) with the state in FAKE_NVML_STATE. */
async function withFake(
  state: FakeState | null,
  fn: (s: Symbols, fake: FakeNvmlDir) => void,
): Promise<void> {
  const path = await buildFakeNvml();
  const fake = createFakeNvmlDir(state ?? makeFakeState(0));
  if (state !== null) {
    Deno.env.set("FAKE_NVML_STATE", fake.statePath);
    Deno.env.set("FAKE_NVML_LOG", fake.logPath);
  }
  const library = Deno.dlopen(path, NVML_SYMBOLS);
  try {
    fn(library.symbols, fake);
  } finally {
    // Undo any initialization the test left (nvmlInit_v2 is reference counted).
    while (library.symbols.nvmlShutdown() === NvmlReturn.SUCCESS);
    library.close();
    Deno.env.delete("FAKE_NVML_STATE");
    Deno.env.delete("FAKE_NVML_LOG");
    fake.cleanup();
  }
}

function handle(s: Symbols, index: number): bigint {
  const out = new BigUint64Array(1);
  assert.equal(s.nvmlDeviceGetHandleByIndex_v2(index, out), NvmlReturn.SUCCESS);
  return out[0];
}

function uuidOf(s: Symbols, device: bigint): string {
  const buffer = new Uint8Array(96);
  assert.equal(s.nvmlDeviceGetUUID(device, buffer, 96), NvmlReturn.SUCCESS);
  return decodeCString(buffer);
}

function count(s: Symbols): number {
  const out = new Uint32Array(1);
  assert.equal(s.nvmlDeviceGetCount_v2(out), NvmlReturn.SUCCESS);
  return out[0];
}

Deno.test("nvmlInit_v2 without a readable state → DRIVER_NOT_LOADED; calls before init → UNINITIALIZED", async () => {
  await withFake(null, (s, fake) => {
    Deno.env.delete("FAKE_NVML_STATE");
    assert.equal(s.nvmlInit_v2(), NvmlReturn.DRIVER_NOT_LOADED);
    Deno.env.set("FAKE_NVML_STATE", `${fake.dir}/missing.json`);
    assert.equal(s.nvmlInit_v2(), NvmlReturn.DRIVER_NOT_LOADED);
    Deno.writeTextFileSync(`${fake.dir}/broken.json`, '{"gpus": [');
    Deno.env.set("FAKE_NVML_STATE", `${fake.dir}/broken.json`);
    assert.equal(s.nvmlInit_v2(), NvmlReturn.DRIVER_NOT_LOADED);
    assert.equal(s.nvmlDeviceGetCount_v2(new Uint32Array(1)), NvmlReturn.UNINITIALIZED);
    assert.equal(s.nvmlShutdown(), NvmlReturn.UNINITIALIZED);
    Deno.env.set("FAKE_NVML_STATE", fake.statePath);
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    assert.equal(s.nvmlShutdown(), NvmlReturn.SUCCESS);
  });
});

Deno.test("top-level fail map injects codes into non-device functions", async () => {
  await withFake(makeFakeState(1, { fail: { nvmlDeviceGetCount_v2: 999 } }), (s) => {
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    assert.equal(s.nvmlDeviceGetCount_v2(new Uint32Array(1)), NvmlReturn.UNKNOWN);
  });
  await withFake(makeFakeState(1, { fail: { nvmlInit_v2: 18 } }), (s) => {
    assert.equal(s.nvmlInit_v2(), NvmlReturn.LIB_RM_VERSION_MISMATCH);
  });
});

Deno.test("strings: driver version, too-small buffers, escaped JSON names", async () => {
  const state = makeFakeState(1, { driverVersion: "535.104.12" });
  state.gpus[0].name = 'NVIDIA "Test" GPU \u00e9\u2603';
  await withFake(state, (s) => {
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    const buffer = new Uint8Array(80);
    assert.equal(s.nvmlSystemGetDriverVersion(buffer, 80), NvmlReturn.SUCCESS);
    assert.equal(decodeCString(buffer), "535.104.12");
    assert.equal(s.nvmlSystemGetDriverVersion(buffer, 10), NvmlReturn.INSUFFICIENT_SIZE);
    const name = new Uint8Array(96);
    assert.equal(s.nvmlDeviceGetName(handle(s, 0), name, 96), NvmlReturn.SUCCESS);
    assert.equal(decodeCString(name), 'NVIDIA "Test" GPU é☃');
  });
});

Deno.test("handles: bad index and bad handle → INVALID_ARGUMENT; lookup by UUID", async () => {
  const state = makeFakeState(2);
  state.gpus[1].migDevices = [null, { uuid: "MIG-x" }];
  await withFake(state, (s) => {
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    assert.equal(count(s), 2);
    assert.equal(
      s.nvmlDeviceGetHandleByIndex_v2(2, new BigUint64Array(1)),
      NvmlReturn.INVALID_ARGUMENT,
    );
    assert.equal(s.nvmlDeviceGetUUID(12345n, new Uint8Array(96), 96), NvmlReturn.INVALID_ARGUMENT);
    const h0 = handle(s, 0);
    const h1 = handle(s, 1);
    assert.notEqual(h0, 0n);
    assert.notEqual(h0, h1);
    assert.equal(uuidOf(s, h1), state.gpus[1].uuid);
    const out = new BigUint64Array(1);
    assert.equal(
      s.nvmlDeviceGetHandleByUUID!(encodeCString(state.gpus[1].uuid), out),
      NvmlReturn.SUCCESS,
    );
    assert.equal(out[0], h1);
    assert.equal(s.nvmlDeviceGetHandleByUUID!(encodeCString("MIG-x"), out), NvmlReturn.SUCCESS);
    assert.equal(uuidOf(s, out[0]), "MIG-x");
    assert.equal(
      s.nvmlDeviceGetHandleByUUID!(encodeCString("GPU-nope"), out),
      NvmlReturn.NOT_FOUND,
    );
  });
});

Deno.test("PCI info is filled in nvmlPciInfo_t layout", async () => {
  const state = makeFakeState(1);
  state.gpus[0].pciBusId = "00000001:AB:1f.0";
  await withFake(state, (s) => {
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    const buffer = new Uint8Array(68);
    assert.equal(s.nvmlDeviceGetPciInfo_v3(handle(s, 0), buffer), NvmlReturn.SUCCESS);
    assert.deepEqual(decodePciInfo(buffer), {
      busIdLegacy: "0001:ab:1f.0",
      domain: 1,
      bus: 0xab,
      device: 0x1f,
      pciDeviceId: 0x233010de,
      pciSubSystemId: 0x16c110de,
      busId: "00000001:AB:1f.0",
    });
  });
});

Deno.test("MIG: mode, max count, empty slots, distinct handles, parent lookup, instance ids", async () => {
  const state = makeFakeState(2);
  state.gpus[0].processes = [{ pid: 1 }];
  state.gpus[0].migDevices = [
    { uuid: "MIG-a", processes: [{ pid: 2, usedGpuMemory: 4096 }] },
    null,
  ];
  await withFake(state, (s) => {
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    const parent = handle(s, 0);
    const current = new Uint32Array(1);
    const pending = new Uint32Array(1);
    assert.equal(s.nvmlDeviceGetMigMode!(parent, current, pending), NvmlReturn.SUCCESS);
    assert.deepEqual([current[0], pending[0]], [1, 1]);
    assert.equal(s.nvmlDeviceGetMigMode!(handle(s, 1), current, pending), NvmlReturn.SUCCESS);
    assert.equal(current[0], 0);
    const max = new Uint32Array(1);
    assert.equal(s.nvmlDeviceGetMaxMigDeviceCount!(parent, max), NvmlReturn.SUCCESS);
    assert.equal(max[0], 7);
    const mig = new BigUint64Array(1);
    assert.equal(s.nvmlDeviceGetMigDeviceHandleByIndex!(parent, 1, mig), NvmlReturn.NOT_FOUND);
    assert.equal(s.nvmlDeviceGetMigDeviceHandleByIndex!(parent, 6, mig), NvmlReturn.NOT_FOUND);
    assert.equal(
      s.nvmlDeviceGetMigDeviceHandleByIndex!(parent, 7, mig),
      NvmlReturn.INVALID_ARGUMENT,
    );
    assert.equal(s.nvmlDeviceGetMigDeviceHandleByIndex!(parent, 0, mig), NvmlReturn.SUCCESS);
    assert.notEqual(mig[0], parent);
    assert.equal(uuidOf(s, mig[0]), "MIG-a");
    const back = new BigUint64Array(1);
    assert.equal(s.nvmlDeviceGetDeviceHandleFromMigDeviceHandle!(mig[0], back), NvmlReturn.SUCCESS);
    assert.equal(back[0], parent);
    // Power functions are per physical GPU.
    assert.equal(s.nvmlDeviceSetPowerManagementLimit(mig[0], 300000), NvmlReturn.NOT_SUPPORTED);
    const n = new Uint32Array([4]);
    const infos = new Uint8Array(4 * 24);
    assert.equal(s.nvmlDeviceGetComputeRunningProcesses_v3!(mig[0], n, infos), NvmlReturn.SUCCESS);
    assert.deepEqual(decodeProcessInfos(infos, { layout: 2, count: n[0] }), [
      { pid: 2, usedGpuMemory: 4096n, gpuInstanceId: 1, computeInstanceId: 0 },
    ]);
    n[0] = 4;
    assert.equal(s.nvmlDeviceGetComputeRunningProcesses_v2!(parent, n, infos), NvmlReturn.SUCCESS);
    assert.deepEqual(decodeProcessInfos(infos, { layout: 2, count: n[0] }), [
      { pid: 1, usedGpuMemory: 0n, gpuInstanceId: null, computeInstanceId: null },
    ]);
  });
});

Deno.test("process protocol: sizing call, growth once per state load, NULL buffer", async () => {
  const state = makeFakeState(1);
  state.gpus[0].processes = [{ pid: 10 }, { pid: 11 }];
  state.gpus[0].growProcessesOnSecondCall = 2;
  await withFake(state, (s, fake) => {
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    const device = handle(s, 0);
    const n = new Uint32Array([0]);
    assert.equal(
      s.nvmlDeviceGetComputeRunningProcesses!(device, n, null),
      NvmlReturn.INSUFFICIENT_SIZE,
    );
    assert.equal(n[0], 2);
    n[0] = 3;
    const infos = new Uint8Array(8 * 16);
    assert.equal(
      s.nvmlDeviceGetComputeRunningProcesses!(device, n, infos),
      NvmlReturn.INSUFFICIENT_SIZE,
    );
    assert.equal(n[0], 4, "grew after the sizing call");
    n[0] = 8;
    assert.equal(
      s.nvmlDeviceGetComputeRunningProcesses!(device, n, null),
      NvmlReturn.INVALID_ARGUMENT,
    );
    assert.equal(s.nvmlDeviceGetComputeRunningProcesses!(device, n, infos), NvmlReturn.SUCCESS);
    assert.deepEqual(
      decodeProcessInfos(infos, { layout: 1, count: n[0] }).map((p) => p.pid),
      [10, 11, 90000, 90001],
    );
    n[0] = 0;
    s.nvmlDeviceGetComputeRunningProcesses!(device, n, null);
    assert.equal(n[0], 4, "stays grown until the state is reloaded");
    writeFakeState(fake.statePath, state);
    n[0] = 0;
    s.nvmlDeviceGetComputeRunningProcesses!(device, n, null);
    assert.equal(n[0], 2, "reload resets the growth");
  });
});

Deno.test("set writes back every field of the state, unknown keys and number spellings included", async () => {
  await withFake(makeFakeState(1), (s, fake) => {
    const text = JSON.stringify({
      driverVersion: "580.159.04",
      comment: { nested: [1, 2.50, -3e2, true, false, null, "tab\there \u0001"] },
      gpus: [{ ...makeGpu(0), extra: { keep: "me" } }, makeGpu(1, { limitMw: 650000 })],
    }).replace('"nested":[1,2.5,', '"nested":[1,2.50,');
    Deno.writeTextFileSync(fake.statePath, text);
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    assert.equal(s.nvmlDeviceSetPowerManagementLimit(handle(s, 0), 250000), NvmlReturn.SUCCESS);
    const written = Deno.readTextFileSync(fake.statePath);
    assert.match(written, /2\.50/);
    const expected = JSON.parse(text);
    expected.gpus[0].limitMw = 250000;
    assert.deepEqual(JSON.parse(written), expected);
    assert.deepEqual([...Deno.readDirSync(fake.dir)].map((e) => e.name).sort(), [
      "set.log",
      "state.json",
    ]);
  });
});

Deno.test("set: range check, per-GPU fail codes, log lines, enforced limit", async () => {
  const state = makeFakeState(2);
  state.gpus[1].fail = {
    nvmlDeviceSetPowerManagementLimit: 4,
    nvmlDeviceGetPowerManagementLimit: 15,
  };
  state.gpus[0].enforcedLimitMw = 650000;
  await withFake(state, (s, fake) => {
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    const h0 = handle(s, 0);
    const h1 = handle(s, 1);
    assert.equal(s.nvmlDeviceSetPowerManagementLimit(h0, 199999), NvmlReturn.INVALID_ARGUMENT);
    assert.equal(s.nvmlDeviceSetPowerManagementLimit(h0, 700001), NvmlReturn.INVALID_ARGUMENT);
    assert.equal(s.nvmlDeviceSetPowerManagementLimit(h1, 300000), NvmlReturn.NO_PERMISSION);
    assert.deepEqual(fake.readLog(), []);
    assert.equal(s.nvmlDeviceSetPowerManagementLimit(h0, 200000), NvmlReturn.SUCCESS);
    assert.equal(s.nvmlDeviceSetPowerManagementLimit(h0, 700000), NvmlReturn.SUCCESS);
    const out = new Uint32Array(1);
    assert.equal(s.nvmlDeviceGetPowerManagementLimit(h0, out), NvmlReturn.SUCCESS);
    assert.equal(out[0], 700000);
    assert.equal(s.nvmlDeviceGetPowerManagementLimit(h1, out), NvmlReturn.GPU_IS_LOST);
    assert.equal(s.nvmlDeviceGetEnforcedPowerLimit!(h0, out), NvmlReturn.SUCCESS);
    assert.equal(out[0], 650000, "an explicit enforced limit is independent of the set");
    assert.equal(s.nvmlDeviceGetEnforcedPowerLimit!(h1, out), NvmlReturn.SUCCESS);
    assert.equal(out[0], 700000, "enforced defaults to limitMw");
    const log = fake.readLog();
    assert.equal(log.length, 2);
    assert.match(log[0], new RegExp(`^\\d{13} set ${state.gpus[0].uuid} 200000$`));
    assert.match(log[1], new RegExp(`^\\d{13} set ${state.gpus[0].uuid} 700000$`));
    assert.equal(readFakeState(fake.statePath).gpus[0].limitMw, 700000);
  });
});

Deno.test("state is re-read when the file changes between calls", async () => {
  await withFake(makeFakeState(1), (s, fake) => {
    assert.equal(s.nvmlInit_v2(), NvmlReturn.SUCCESS);
    assert.equal(count(s), 1);
    for (let n = 2; n <= 4; n++) {
      writeFakeState(fake.statePath, makeFakeState(n));
      assert.equal(count(s), n);
    }
    // A state file that vanishes keeps the last good state.
    Deno.removeSync(fake.statePath);
    assert.equal(count(s), 4);
    Deno.env.set("FAKE_NVML_STATE", `${fake.dir}/other.json`);
    writeFakeState(`${fake.dir}/other.json`, makeFakeState(1));
    assert.equal(count(s), 1, "FAKE_NVML_STATE pointing elsewhere is followed");
  });
});
