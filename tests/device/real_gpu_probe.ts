/**
 * Read-only NVML probe for a real GPU machine (run by hand through the `device` tool, never in
 * CI): prints, as JSON, everything the agent reads through its FFI binding, so it can be compared
 * with `nvidia-smi`. It wraps the GpuControl so that any attempt to set a limit throws: this
 * script can never change a GPU.
 */
import { openNvmlGpuControl } from "../../src/nvml/nvml_gpu_control.ts";
import { resolveNvmlLibraryPath } from "../../src/nvml/library_path.ts";

if (import.meta.main) {
  const path = resolveNvmlLibraryPath(Deno.args[0]);
  const gpu = openNvmlGpuControl(path);
  const readOnly = new Proxy(gpu, {
    get(target, prop, receiver) {
      if (prop === "setLimit") throw new Error("read-only probe: setLimit is forbidden");
      const v = Reflect.get(target, prop, receiver);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  const t0 = performance.now();
  const gpus = readOnly.listGpus().map((g) => {
    const r: Record<string, unknown> = { ...g };
    for (
      const [k, f] of Object.entries({
        limits: () => readOnly.readLimits(g.index),
        sample: () => readOnly.readSample(g.index),
        pids: () => readOnly.computePids(g.index),
      })
    ) {
      try {
        r[k] = f();
      } catch (err) {
        r[k] = { error: (err as Error).message };
      }
    }
    return r;
  });
  const firstMs = performance.now() - t0;
  // Steady-state read cost: what a reconcile pass reads (list + limits per GPU).
  const n = 200;
  const t1 = performance.now();
  for (let i = 0; i < n; i++) {
    for (const g of readOnly.listGpus()) readOnly.readLimits(g.index);
  }
  const perPassMs = (performance.now() - t1) / n;
  console.log(JSON.stringify(
    {
      libraryPath: path,
      driverVersion: readOnly.driverVersion(),
      capabilities: gpu.capabilities(),
      gpus,
      firstReadMs: firstMs,
      listPlusLimitsPerPassMs: perPassMs,
    },
    null,
    2,
  ));
  readOnly.close();
}
