/**
 * One level-triggered reconcile pass: observe → plan → actuate → report. Each GPU is handled on
 * its own: one GPU's failure never blocks the others, and a GPU whose state cannot be read is
 * never touched. Over a read-only journal (`run --dry-run`) the pass stops after planning: the
 * plan is reported as outcomes and nothing is set or written.
 *
 * NVML cost of a steady-state pass: `listGpus()` + one `readLimits()` per GPU, no writes, no
 * journal write. A change adds `setLimit()` + one read-back `readLimits()` for that GPU.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { GpuControl } from "../nvml/gpu_control.ts";
import type { RestoreReason, Telemetry } from "../metrics/telemetry.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";
import type { DesiredCaps } from "../policy/desired.ts";
import { type PassPlan, planPass, type RestoreTarget } from "../policy/plan.ts";
import type { Journal } from "../state/journal.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { Actuator } from "./actuate.ts";
import { type Observation, observeGpus } from "./observe.ts";
import { type BudgetReport, emptyReport, outcomeOf, type PassReport, summarize } from "./report.ts";

/** Logger of this module (logtape keeps one per category; configuration applies later too). */
const logger = getLogger(["gpu-power-agent", "reconcile"]);

/** Options of `reconcilePass`. */
export interface ReconcilePassOptions {
  journal: Journal;
  telemetry?: Telemetry;
  /** Restore unmanaged GPUs to their baseline (default) or the vendor default. */
  restoreTo?: RestoreTarget;
  /** Label for restores of GPUs without a desired cap: `startup` on the first pass, else `unmanaged`. */
  restoreReason?: RestoreReason;
  /** Observation already made this pass (avoids reading every GPU twice); read here if omitted. */
  observation?: Observation;
  /** Carries out the plan; keeps per-GPU backoff across passes (a fresh one if omitted). */
  actuator?: Actuator;
  /** The source failed this pass (desired is then null): the pass is not ok. */
  sourceError?: string;
  /** The node power budget, milliwatts (null/absent: none). */
  budgetMw?: number | null;
  /** Called with the plan before anything is changed (dry run prints it). */
  onPlan?: (plan: PassPlan) => void;
  clock?: Clock;
}

/**
 * Run one pass. `desired === null` changes nothing. Never throws: failures are in the report.
 * Emits `telemetry.reconcileCompleted` at the end, with the same `ok` as the report.
 */
export function reconcilePass(
  gpu: GpuControl,
  desired: DesiredCaps | null,
  options: ReconcilePassOptions,
): PassReport {
  const clock = options.clock ?? systemClock;
  const telemetry = options.telemetry ?? noopTelemetry;
  const journal = options.journal;
  const dryRun = journal.readOnly;
  const startedMs = clock.now();
  const report = emptyReport({ dryRun, desiredKnown: desired !== null, startedMs });

  const observation = options.observation ?? observeGpus(gpu, { telemetry });
  const plan = planPass(observation, desired, journal.entries(), {
    restoreTo: options.restoreTo,
    restoreReason: options.restoreReason,
    budgetMw: options.budgetMw,
  });
  report.absentUuids = plan.absentUuids;
  if (plan.absentUuids.length > 0) {
    logger.debug("Journaled GPUs not present, entries kept: {uuids}", { uuids: plan.absentUuids });
  }
  options.onPlan?.(plan);
  if (plan.error !== undefined) {
    report.error = plan.error;
    logger.error("{message}; changing nothing this pass", { message: plan.error });
  } else if (dryRun) {
    report.gpus = plan.gpus.map((p) => outcomeOf(p));
  } else {
    const actuator = options.actuator ??
      new Actuator(gpu, { journal, telemetry, clock });
    const result = actuator.execute(plan, { restoreReason: options.restoreReason ?? "unmanaged" });
    report.gpus = result.outcomes;
    report.writes = result.writes;
    if (result.error !== undefined) report.error = result.error;
  }
  if (plan.budget !== undefined && plan.error === undefined) {
    report.budget = budgetReport(plan, report, dryRun);
  }
  if (options.sourceError !== undefined) report.error ??= options.sourceError;
  summarize(report);
  report.ok = report.error === undefined && report.desiredKnown &&
    report.gpus.every((g) => g.action !== "error");
  const endMs = clock.now();
  report.durationMs = Math.max(0, endMs - startedMs);
  telemetry.reconcileCompleted({
    durationSeconds: report.durationMs / 1000,
    ok: report.ok,
    atMs: endMs,
  });
  return report;
}

/** The budget part of a report: Σ limits in place after the pass (dry run: as planned). */
function budgetReport(plan: PassPlan, report: PassReport, dryRun: boolean): BudgetReport {
  const allocation = plan.budget!;
  const index = new Map(plan.gpus.map((p) => [p.uuid, p.index]));
  let allocatedMw = allocation.allocatedMw;
  if (!dryRun) {
    allocatedMw = 0;
    for (const g of report.gpus) {
      if (g.fromMw === null) continue;
      allocatedMw += g.changed && g.toMw !== null ? g.toMw : g.fromMw;
    }
  }
  return {
    budgetMw: allocation.budgetMw,
    allocatedMw,
    overBudget: allocation.overBudget,
    reductions: allocation.reductions.map((r) => ({ ...r, index: index.get(r.uuid) ?? -1 })),
  };
}
