import assert from "node:assert/strict";
import { NVML_RETURN_CODES, NvmlReturn, nvmlReturnName } from "../../src/nvml/return_codes.ts";

Deno.test("NVML_RETURN_CODES covers 0..30 and 999 with names from nvml.h", () => {
  const codes = Object.keys(NVML_RETURN_CODES).map(Number).sort((a, b) => a - b);
  assert.deepEqual(codes, [...Array.from({ length: 31 }, (_, i) => i), 999]);
  assert.equal(NVML_RETURN_CODES[0], "SUCCESS");
  assert.equal(NVML_RETURN_CODES[2], "INVALID_ARGUMENT");
  assert.equal(NVML_RETURN_CODES[3], "NOT_SUPPORTED");
  assert.equal(NVML_RETURN_CODES[4], "NO_PERMISSION");
  assert.equal(NVML_RETURN_CODES[7], "INSUFFICIENT_SIZE");
  assert.equal(NVML_RETURN_CODES[9], "DRIVER_NOT_LOADED");
  assert.equal(NVML_RETURN_CODES[15], "GPU_IS_LOST");
  assert.equal(NVML_RETURN_CODES[18], "LIB_RM_VERSION_MISMATCH");
  assert.equal(NVML_RETURN_CODES[30], "RESET_TYPE_NOT_SUPPORTED");
  assert.equal(NVML_RETURN_CODES[999], "UNKNOWN");
});

Deno.test("NvmlReturn and NVML_RETURN_CODES are inverse tables", () => {
  for (const [name, code] of Object.entries(NvmlReturn)) {
    assert.equal(NVML_RETURN_CODES[code], name);
  }
  assert.equal(Object.keys(NvmlReturn).length, Object.keys(NVML_RETURN_CODES).length);
});

Deno.test("nvmlReturnName names known codes and marks unknown ones", () => {
  assert.equal(nvmlReturnName(4), "NO_PERMISSION");
  assert.equal(nvmlReturnName(0), "SUCCESS");
  assert.equal(nvmlReturnName(31), "UNKNOWN_CODE_31");
  assert.equal(nvmlReturnName(-1), "UNKNOWN_CODE_-1");
  assert.equal(nvmlReturnName(998), "UNKNOWN_CODE_998");
});
