/** `check`: validate a caps file and print the caps it would apply to this host's GPUs. */
import type { CommandContext } from "./context.ts";
import { EXIT } from "./context.ts";
import { UsageError } from "./flags.ts";
import { formatWatts } from "./units.ts";
import { readCapsFile } from "../sources/caps_file.ts";
import { resolveFileCaps } from "../policy/file_rules.ts";
import { clampMw } from "../policy/clamp.ts";
import { openNvmlGpuControl } from "../nvml/nvml_gpu_control.ts";
import type { GpuView } from "../sources/cap_source.ts";

/** Run `check`. Invalid file: exit 2 (thrown CapsFileError). */
export async function checkCommand(ctx: CommandContext): Promise<number> {
  const path = ctx.options.capsFile;
  if (!path) throw new UsageError("check needs --caps-file PATH");
  const spec = await readCapsFile(path);
  ctx.io.out(`${path}: valid`);
  const gpu = openNvmlGpuControl(ctx.nvmlLibraryPath);
  try {
    const views: (GpuView & { limitMw: number })[] = [];
    let failed = false;
    for (const g of gpu.listGpus()) {
      try {
        const l = gpu.readLimits(g.index);
        views.push({
          ...g,
          defaultMw: l.defaultMw,
          minMw: l.minMw,
          maxMw: l.maxMw,
          limitMw: l.limitMw,
        });
      } catch (err) {
        failed = true;
        ctx.io.out(`GPU ${g.index} (${g.uuid}): cannot read limits: ${(err as Error).message}`);
      }
    }
    const desired = resolveFileCaps(spec, views);
    for (const v of views) {
      const want = desired.get(v.uuid);
      const head = `GPU ${v.index} (${v.uuid}, ${v.name}): now ${formatWatts(v.limitMw)} W`;
      if (!want) {
        ctx.io.out(`${head} → unmanaged (no rule matches)`);
        continue;
      }
      const c = clampMw(want.mw, v);
      const clamp = c.direction === "none"
        ? ""
        : `, clamped ${c.direction} from ${formatWatts(want.mw)} W to the GPU's ${
          formatWatts(v.minMw)
        }-${formatWatts(v.maxMw)} W`;
      const change = c.mw === v.limitMw ? "already in place" : "would set";
      ctx.io.out(`${head} → ${formatWatts(c.mw)} W (${want.reason}${clamp}; ${change})`);
    }
    return failed ? EXIT.failure : EXIT.ok;
  } finally {
    gpu.close();
  }
}
