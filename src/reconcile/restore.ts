/**
 * Putting GPUs back: plan a restore of every journaled GPU to its recorded baseline (or the
 * vendor default with `restoreTo: "default"`) and carry it out like any other plan. One GPU's
 * failure never blocks the others, and a failed GPU keeps its journal entry so a later restore
 * can retry. Over a read-only journal it only reports what would be restored.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { GpuControl } from "../nvml/gpu_control.ts";
import type { RestoreReason, Telemetry } from "../metrics/telemetry.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";
import { planPass, type RestoreTarget } from "../policy/plan.ts";
import type { Journal } from "../state/journal.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { Actuator } from "./actuate.ts";
import { observeGpus } from "./observe.ts";
import { emptyReport, outcomeOf, type PassReport, summarize } from "./report.ts";

/** Logger of this module (logtape keeps one per category; configuration applies later too). */
const logger = getLogger(["gpu-power-agent", "reconcile"]);

/** Options of `restoreAll`. */
export interface RestoreAllOptions {
  journal: Journal;
  /** Why we restore (metrics label, logs). */
  reason: RestoreReason;
  /** Default `baseline`. */
  restoreTo?: RestoreTarget;
  telemetry?: Telemetry;
  clock?: Clock;
}

/**
 * Restore every journaled GPU that is present now. GPUs in the journal but absent from the
 * driver keep their entries (listed in `absentUuids`). Never throws: failures are in the report.
 */
export function restoreAll(gpu: GpuControl, options: RestoreAllOptions): PassReport {
  const clock = options.clock ?? systemClock;
  const telemetry = options.telemetry ?? noopTelemetry;
  const journal = options.journal;
  const dryRun = journal.readOnly;
  const report = emptyReport({ dryRun, desiredKnown: true, startedMs: clock.now() });
  if (journal.size > 0) {
    const observation = observeGpus(gpu, { telemetry });
    const plan = planPass(observation, new Map(), journal.entries(), {
      restoreTo: options.restoreTo,
      restoreReason: options.reason,
    });
    plan.gpus = plan.gpus.filter((p) => p.journaled);
    report.absentUuids = plan.absentUuids;
    for (const uuid of plan.absentUuids) {
      logger.warn(
        "GPU {uuid} is in the journal but not present now; keeping its entry so it can be " +
          "restored when it is back",
        { uuid },
      );
    }
    if (plan.error !== undefined) {
      report.error = `Cannot list GPUs to restore them: ${
        plan.error.replace(/^Cannot list GPUs: /, "")
      }`;
      logger.error("{message}", { message: report.error });
    } else if (dryRun) {
      report.gpus = plan.gpus.map((p) => outcomeOf(p));
    } else {
      const result = new Actuator(gpu, { journal, telemetry, clock })
        .execute(plan, { restoreReason: options.reason });
      report.gpus = result.outcomes;
      report.writes = result.writes;
      if (result.error !== undefined) report.error = result.error;
    }
  }
  summarize(report);
  report.ok = report.error === undefined && report.gpus.every((g) => g.action !== "error");
  report.durationMs = Math.max(0, clock.now() - report.startedMs);
  return report;
}
