/**
 * Probe run by scoped_ffi_test.ts as a subprocess under a scoped `--allow-ffi=<abs .so path>`:
 * opens the control, reads everything, sets GPU 0 to the limit given as argument, reads it back
 * and prints one JSON line (plus whether `Deno.UnsafePointer.of` is refused, which is why the
 * binding avoids pointers). Usage: `deno run --allow-ffi=<so> probe.ts <so> <limitMw>`.
 *
 * @module
 */

import { openNvmlGpuControl } from "../../src/nvml/nvml_gpu_control.ts";

function unsafePointerError(): string | null {
  try {
    Deno.UnsafePointer.of(new Uint8Array(8));
    return null;
  } catch (error) {
    return error instanceof Error ? error.name : String(error);
  }
}

if (import.meta.main) {
  const [libraryPath, limit] = Deno.args;
  const control = openNvmlGpuControl(libraryPath);
  try {
    const gpus = control.listGpus();
    const before = control.readLimits(0);
    control.setLimit(0, Number(limit));
    console.log(JSON.stringify({
      driverVersion: control.driverVersion(),
      gpus,
      before,
      after: control.readLimits(0),
      sample: control.readSample(0),
      pids: control.computePids(0),
      migDeviceUuids: control.migDeviceUuids(0),
      capabilities: control.capabilities(),
      unsafePointerError: unsafePointerError(),
    }));
  } finally {
    control.close();
  }
}
