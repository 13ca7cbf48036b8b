/**
 * `restore`: put every GPU in the journal back to its baseline now.
 *
 * Refused (exit 1, naming the holder's PID) while an agent holds the state directory: a running
 * agent restores every GPU itself when it stops, and a restore beside it would race its journal.
 * An unreadable or corrupt journal is exit 1 with the reason (never "Nothing to restore").
 */
import type { CommandContext } from "./context.ts";
import { EXIT } from "./context.ts";
import { openNvmlGpuControl } from "../nvml/nvml_gpu_control.ts";
import { loadJournal } from "../state/journal.ts";
import { acquireStateLock } from "../state/state_lock.ts";
import { restoreAll } from "../reconcile/restore.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";

/** Run `restore`. Exit 1 when any GPU could not be restored (its journal entry is kept). */
export function restoreCommand(ctx: CommandContext): number {
  const lock = acquireStateLock(ctx.options.stateDir, { command: "restore" });
  const gpu = openNvmlGpuControl(ctx.nvmlLibraryPath);
  try {
    const journal = loadJournal(ctx.options.stateDir, { strict: true });
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
    lock.release();
  }
}
