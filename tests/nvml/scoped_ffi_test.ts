import assert from "node:assert/strict";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { createFakeNvmlDir, makeFakeState, readFakeState } from "../helpers/fake_state.ts";

const REPO_ROOT = new URL("../../", import.meta.url).pathname;
const PROBE = new URL("./scoped_ffi_probe.ts", import.meta.url).pathname;

Deno.test("works under scoped --allow-ffi=<abs .so path> with no other permission", async () => {
  const library = await buildFakeNvml();
  const state = makeFakeState(2);
  state.gpus[0].processes = [{ pid: 4242 }];
  state.gpus[0].migDevices = [{ uuid: "MIG-a", processes: [{ pid: 7 }] }];
  const fake = createFakeNvmlDir(state);
  try {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", `--allow-ffi=${library}`, PROBE, library, "300000"],
      cwd: REPO_ROOT,
      env: fake.env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 0, `probe failed:\n${stderr}`);
    const result = JSON.parse(new TextDecoder().decode(output.stdout).trim());
    assert.equal(result.driverVersion, "580.159.04");
    assert.deepEqual(result.gpus.map((gpu: { uuid: string }) => gpu.uuid), [
      state.gpus[0].uuid,
      state.gpus[1].uuid,
    ]);
    assert.equal(result.gpus[0].pciBusId, "00000000:10:00.0");
    assert.equal(result.before.limitMw, 700000);
    assert.equal(result.after.limitMw, 300000);
    assert.deepEqual(result.sample, { drawMw: 95000, energyMj: 0 });
    assert.deepEqual(result.pids, [7, 4242]);
    assert.deepEqual(result.migDeviceUuids, ["MIG-a"]);
    assert.equal(result.capabilities.processFunction, "nvmlDeviceGetComputeRunningProcesses_v3");
    // The reason the binding never touches pointers:
    assert.equal(result.unsafePointerError, "NotCapable");
    assert.equal(readFakeState(fake.statePath).gpus[0].limitMw, 300000);
    assert.equal(fake.readLog().length, 1);
  } finally {
    fake.cleanup();
  }
});

Deno.test("scoped --allow-ffi for another path refuses to load the library", async () => {
  const library = await buildFakeNvml();
  const fake = createFakeNvmlDir(makeFakeState(1));
  try {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", `--allow-ffi=${fake.dir}/other.so`, PROBE, library, "300000"],
      cwd: REPO_ROOT,
      env: fake.env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.notEqual(output.code, 0);
    assert.match(new TextDecoder().decode(output.stderr), /NotCapable|Requires ffi access/);
    assert.equal(readFakeState(fake.statePath).gpus[0].limitMw, 700000);
  } finally {
    fake.cleanup();
  }
});
