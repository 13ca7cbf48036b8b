/**
 * `deno bench`: a steady-state reconcile pass of 8 GPUs through the real FFI path (fake
 * libnvidia-ml.so.1), and the pieces it is made of. Target: ≤ 5 ms per pass.
 */
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { makeFakeState, writeFakeState } from "../helpers/fake_state.ts";
import { openNvmlGpuControl } from "../../src/nvml/nvml_gpu_control.ts";
import { loadJournal } from "../../src/state/journal.ts";
import { reconcilePass } from "../../src/reconcile/pass.ts";
import { observeGpus } from "../../src/reconcile/observe.ts";
import { gpuViews } from "../../src/sources/cap_source.ts";
import { parseCapsFile } from "../../src/sources/caps_file.ts";
import { resolveFileCaps } from "../../src/policy/file_rules.ts";

const lib = await buildFakeNvml();
const dir = Deno.makeTempDirSync({ prefix: "gpa-bench-" });
writeFakeState(`${dir}/state.json`, makeFakeState(8));
Deno.env.set("FAKE_NVML_STATE", `${dir}/state.json`);
const gpu = openNvmlGpuControl(lib);
const journal = loadJournal(`${dir}/journal`);
const spec = await parseCapsFile(
  "version: 1\ndefault: {watts: 300}\ngpus:\n  - index: 0\n    percent: 50\n",
  {
    path: "bench.yaml",
  },
);
// First pass applies the caps; every pass measured below is in sync (zero writes).
const first = reconcilePass(gpu, resolveFileCaps(spec, gpuViews(observeGpus(gpu))), { journal });
if (first.writes !== 8) throw new Error(`expected 8 writes in the first pass, got ${first.writes}`);

Deno.bench("steady-state pass, 8 GPUs (observe + desired + compare, real FFI)", () => {
  const observation = observeGpus(gpu);
  const desired = resolveFileCaps(spec, gpuViews(observation));
  const report = reconcilePass(gpu, desired, { journal, observation });
  if (report.writes !== 0) throw new Error("steady state must not write");
});

Deno.bench("observe only: listGpus + readLimits × 8 (FFI)", () => {
  observeGpus(gpu);
});

Deno.bench("readSample × 8 (draw + energy, metrics scrape)", () => {
  for (let i = 0; i < 8; i++) gpu.readSample(i);
});
