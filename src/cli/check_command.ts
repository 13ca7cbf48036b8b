/**
 * `check`: validate a caps file and print the plan it gives on this host's GPUs — the same plan
 * (and the same text) `run --dry-run` prints and `run` carries out. Changes nothing.
 *
 * @module
 */
import type { CommandContext } from "./context.ts";
import { EXIT } from "./context.ts";
import { UsageError } from "./flags.ts";
import { readCapsFile } from "../sources/caps_file.ts";
import { resolveFileCaps } from "../policy/file_rules.ts";
import { planPass } from "../policy/plan.ts";
import { openNvmlGpuControl } from "../nvml/nvml_gpu_control.ts";
import { gpuViews } from "../sources/cap_source.ts";
import { observeGpus } from "../reconcile/observe.ts";
import { describeBudget, describePlan } from "../reconcile/report.ts";
import { loadJournal } from "../state/journal.ts";

/** Run `check`. Invalid file: exit 2 (thrown CapsFileError). */
export async function checkCommand(ctx: CommandContext): Promise<number> {
  const path = ctx.options.capsFile;
  if (!path) throw new UsageError("check needs --caps-file PATH");
  const spec = await readCapsFile(path);
  ctx.io.out(`${path}: valid`);
  const gpu = openNvmlGpuControl(ctx.nvmlLibraryPath);
  try {
    const observation = observeGpus(gpu);
    const journal = loadJournal(ctx.options.stateDir, { readOnly: true });
    const plan = planPass(
      observation,
      resolveFileCaps(spec, gpuViews(observation)),
      journal.entries(),
      { restoreTo: ctx.options.restoreTo, budgetMw: spec.budget?.mw ?? null },
    );
    for (const line of describePlan(plan)) ctx.io.out(line);
    if (plan.budget) ctx.io.out(describeBudget(plan.budget));
    const failed = plan.error !== undefined ||
      plan.gpus.some((g) => g.intent === "unreadable" || g.intent === "error");
    return failed ? EXIT.failure : EXIT.ok;
  } finally {
    gpu.close();
  }
}
