/** `restore`: put every GPU in the journal back to its baseline now. */
import type { CommandContext } from "./context.ts";
import { EXIT } from "./context.ts";
import { openNvmlGpuControl } from "../nvml/nvml_gpu_control.ts";
import { loadJournal } from "../state/journal.ts";
import { restoreAll } from "../reconcile/restore.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";

/** Run `restore`. Exit 1 when any GPU could not be restored (its journal entry is kept). */
export function restoreCommand(ctx: CommandContext): number {
  const gpu = openNvmlGpuControl(ctx.nvmlLibraryPath);
  try {
    const journal = loadJournal(ctx.options.stateDir);
    if (journal.size === 0) {
      ctx.io.out("Nothing to restore: the journal records no GPU changed by the agent.");
      return EXIT.ok;
    }
    const report = restoreAll(gpu, {
      journal,
      restoreTo: ctx.options.restoreTo,
      telemetry: noopTelemetry,
      reason: "command",
    });
    for (const g of report.gpus) {
      ctx.io.out(g.error ? `GPU ${g.uuid}: ${g.error}` : `GPU ${g.uuid}: ${g.summary}`);
    }
    return report.ok ? EXIT.ok : EXIT.failure;
  } finally {
    gpu.close();
  }
}
