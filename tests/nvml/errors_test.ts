import assert from "node:assert/strict";
import { NvmlError, nvmlErrorHint, NvmlLibraryError } from "../../src/nvml/errors.ts";

Deno.test("NvmlError carries function, code, name, GPU and hint in its message", () => {
  const error = new NvmlError("nvmlDeviceSetPowerManagementLimit", 4, {
    gpu: "GPU-00000000-0000-0000-0000-000000000001",
  });
  assert.ok(error instanceof Error);
  assert.equal(error.name, "NvmlError");
  assert.equal(error.fn, "nvmlDeviceSetPowerManagementLimit");
  assert.equal(error.code, 4);
  assert.equal(error.codeName, "NO_PERMISSION");
  assert.equal(error.gpu, "GPU-00000000-0000-0000-0000-000000000001");
  assert.equal(error.hint, "run as root or with CAP_SYS_ADMIN");
  assert.equal(
    error.message,
    "NVML nvmlDeviceSetPowerManagementLimit failed on GPU " +
      "GPU-00000000-0000-0000-0000-000000000001: NO_PERMISSION (run as root or with CAP_SYS_ADMIN)",
  );
});

Deno.test("NvmlError without GPU omits it; unknown codes still get a name", () => {
  const error = new NvmlError("nvmlInit_v2", 9);
  assert.equal(error.gpu, undefined);
  assert.match(error.message, /^NVML nvmlInit_v2 failed: DRIVER_NOT_LOADED \(.*driver.*\)$/);
  const odd = new NvmlError("nvmlDeviceGetName", 77, { gpu: "3" });
  assert.equal(odd.codeName, "UNKNOWN_CODE_77");
  assert.equal(odd.hint, undefined);
  assert.equal(odd.message, "NVML nvmlDeviceGetName failed on GPU 3: UNKNOWN_CODE_77");
});

Deno.test("INVALID_ARGUMENT hint depends on the function", () => {
  assert.equal(
    nvmlErrorHint(2, "nvmlDeviceSetPowerManagementLimit"),
    "value outside the GPU's min/max constraints",
  );
  assert.notEqual(
    nvmlErrorHint(2, "nvmlDeviceGetHandleByIndex_v2"),
    nvmlErrorHint(2, "nvmlDeviceSetPowerManagementLimit"),
  );
  for (const code of [1, 3, 4, 9, 13, 15, 16, 18, 999]) {
    assert.ok(nvmlErrorHint(code), `hint for code ${code}`);
  }
});

Deno.test("NvmlError hint can be overridden", () => {
  const error = new NvmlError("nvmlDeviceGetPowerUsage", 1, { hint: "the GPU control was closed" });
  assert.match(error.message, /UNINITIALIZED \(the GPU control was closed\)$/);
});

Deno.test("NvmlLibraryError message says the driver is missing and what to do", () => {
  const cause = new Error("dlopen failed");
  const error = new NvmlLibraryError("libnvidia-ml.so.1: cannot open shared object file", {
    path: "/usr/lib/libnvidia-ml.so.1",
    cause,
  });
  assert.equal(error.name, "NvmlLibraryError");
  assert.equal(error.path, "/usr/lib/libnvidia-ml.so.1");
  assert.equal(error.cause, cause);
  assert.equal(
    error.message,
    "NVIDIA driver not found: cannot load libnvidia-ml.so.1 (libnvidia-ml.so.1: cannot open " +
      "shared object file). Install the NVIDIA driver or pass --nvml-library " +
      "/abs/path/libnvidia-ml.so.1",
  );
});
