/**
 * One level-triggered reconcile pass: compare desired caps with what the GPUs have, change only
 * what differs, verify, and journal. Each GPU is handled on its own: one GPU's failure never
 * blocks the others, and a GPU whose state cannot be read is never touched.
 *
 * NVML cost of a steady-state pass: `listGpus()` + one `readLimits()` per GPU, no writes, no
 * journal write. A change adds `setLimit()` + one read-back `readLimits()` for that GPU.
 */
import { getLogger } from "@logtape/logtape";
import type { GpuControl, GpuIdentity, PowerLimits } from "../nvml/gpu_control.ts";
import type { RestoreReason, Telemetry } from "../metrics/telemetry.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";
import type { DesiredCaps, GpuView } from "../sources/cap_source.ts";
import type { Journal } from "../state/journal.ts";
import { clampMw } from "../policy/clamp.ts";
import type { Clock } from "./clock.ts";
import { systemClock } from "./clock.ts";
import type { RestoreTarget } from "./restore.ts";
import {
  emptyReport,
  errorOutcome,
  readFailureMessage,
  reportNvmlError,
  restoreGpu,
  saveJournal,
  setAndVerify,
  summarize,
  watts,
} from "./restore.ts";

/** What a pass did (or, in dry run, would do) to one GPU. */
export type GpuAction = "none" | "apply" | "drift" | "restore" | "error" | "skipped";

/** Per-GPU result of a pass. */
export interface GpuOutcome {
  uuid: string;
  index: number;
  name: string;
  /**
   * none: in sync or unmanaged; apply: new cap set; drift: cap re-applied after someone changed
   * it; restore: returned to baseline/default and forgotten; error: see `error`; skipped: desired
   * caps unknown (source not ready).
   */
  action: GpuAction;
  /** Limit observed before the pass (null when it could not be read). */
  fromMw: number | null;
  /** Limit set (or that would be set / is kept); null when unknown. */
  toMw: number | null;
  /** Desired cap before the device clamp (restore: the baseline/default wanted). */
  requestedMw: number | null;
  /** Whether the device min/max moved the request. */
  clamp: "none" | "up" | "down";
  /** Why: source reason, restore reason, or empty for an unmanaged GPU. */
  reason: string;
  /** What failed and what to do (action `error`). */
  error?: string;
  /** One line for humans, e.g. `700 W → 250 W (caps file default)` or `already at 700 W (…)`. */
  summary: string;
}

/** Result of a pass (also of `restoreAll`). */
export interface PassReport {
  gpus: GpuOutcome[];
  /** Successful `setLimit` calls. */
  writes: number;
  /** No GPU error and no pass-level error. */
  ok: boolean;
  /** Nothing was changed or written on purpose. */
  dryRun: boolean;
  /** False when the source could not say what it wants (desired null): nothing was changed. */
  desiredKnown: boolean;
  /** Journaled GPUs not present now (their entries are kept). */
  absentUuids: string[];
  /** Pass-level failure: listing GPUs, the source, or saving the journal. */
  error?: string;
  startedMs: number;
  durationMs: number;
}

/** One GPU as observed at the start of a pass. */
export interface ObservedGpu extends GpuIdentity {
  /** Limits, or null when reading them failed (see `error`). */
  limits: PowerLimits | null;
  error?: string;
}

/** The GPUs as observed at the start of a pass. */
export interface Observation {
  gpus: ObservedGpu[];
  /** Set when the GPUs could not be listed at all. */
  error?: string;
}

/** Options of `observeGpus`. */
export interface ObserveOptions {
  telemetry?: Telemetry;
}

/** Options of `reconcilePass`. */
export interface ReconcilePassOptions {
  journal: Journal;
  telemetry?: Telemetry;
  /** Restore unmanaged GPUs to their baseline (default) or the vendor default. */
  restoreTo?: RestoreTarget;
  /** Log what would change; never set a limit or write the journal. */
  dryRun?: boolean;
  /** Label for restores of GPUs without a desired cap: `startup` on the first pass, else `unmanaged`. */
  restoreReason?: RestoreReason;
  /** Observation already made this pass (avoids reading every GPU twice); read here if omitted. */
  observation?: Observation;
  clock?: Clock;
}

interface Plan {
  gpu: ObservedGpu;
  limits: PowerLimits;
  kind: "apply" | "drift";
  targetMw: number;
  requestedMw: number;
  clamp: "none" | "up" | "down";
  reason: string;
}

/** List GPUs and read each one's limits once. Read failures are recorded per GPU, never thrown. */
export function observeGpus(gpu: GpuControl, options: ObserveOptions = {}): Observation {
  const telemetry = options.telemetry ?? noopTelemetry;
  let identities: GpuIdentity[];
  try {
    identities = gpu.listGpus();
  } catch (err) {
    reportNvmlError(err, telemetry);
    return {
      gpus: [],
      error: `Cannot list GPUs: ${err instanceof Error ? err.message : String(err)}`,
    };
  }
  return {
    gpus: identities.map((identity) => {
      try {
        return { ...identity, limits: gpu.readLimits(identity.index) };
      } catch (err) {
        reportNvmlError(err, telemetry);
        return { ...identity, limits: null, error: readFailureMessage(identity.uuid, err) };
      }
    }),
  };
}

/** What sources see: the GPUs whose limits could be read, with their default limit. */
export function gpuViews(observation: Observation): GpuView[] {
  return observation.gpus.flatMap((g) =>
    g.limits
      ? [{
        index: g.index,
        uuid: g.uuid,
        name: g.name,
        pciBusId: g.pciBusId,
        defaultMw: g.limits.defaultMw,
        minMw: g.limits.minMw,
        maxMw: g.limits.maxMw,
      }]
      : []
  );
}

/**
 * Run one pass. `desired === null` changes nothing. Never throws: failures are in the report.
 * Emits `telemetry.reconcileCompleted` at the end.
 */
export function reconcilePass(
  gpu: GpuControl,
  desired: DesiredCaps | null,
  options: ReconcilePassOptions,
): PassReport {
  const logger = getLogger(["gpu-power-agent", "reconcile"]);
  const clock = options.clock ?? systemClock;
  const telemetry = options.telemetry ?? noopTelemetry;
  const journal = options.journal;
  const dryRun = (options.dryRun ?? false) || journal.dryRun;
  const restoreTo = options.restoreTo ?? "baseline";
  const restoreReason = options.restoreReason ?? "unmanaged";
  const startedMs = clock.now();
  const report = emptyReport({ dryRun, desiredKnown: desired !== null, startedMs });
  const finish = (): PassReport => {
    summarize(report);
    report.ok = report.ok && report.error === undefined &&
      report.gpus.every((g) => g.action !== "error");
    const endMs = clock.now();
    report.durationMs = Math.max(0, endMs - startedMs);
    telemetry.reconcileCompleted({
      durationSeconds: report.durationMs / 1000,
      ok: report.ok,
      atMs: endMs,
    });
    return report;
  };

  const observation = options.observation ?? observeGpus(gpu, { telemetry });
  if (observation.error !== undefined) {
    report.error = observation.error;
    logger.error("{message}; changing nothing this pass", { message: observation.error });
    return finish();
  }
  const present = new Set(observation.gpus.map((g) => g.uuid));
  report.absentUuids = journal.uuids().filter((uuid) => !present.has(uuid));
  if (report.absentUuids.length > 0) {
    logger.debug("Journaled GPUs not present, entries kept: {uuids}", {
      uuids: report.absentUuids,
    });
  }

  const plans: Plan[] = [];
  const restores: { gpu: ObservedGpu; limits: PowerLimits }[] = [];
  for (const g of observation.gpus) {
    try {
      const step = planGpu(g, desired, { journal, dryRun });
      if (step.plan) plans.push(step.plan);
      else if (step.restore) restores.push({ gpu: g, limits: step.restore });
      else if (step.outcome) report.gpus.push(step.outcome);
      if (step.outcome?.action === "error") {
        logger.warn("{message}", { message: step.outcome.error, uuid: g.uuid, index: g.index });
      }
    } catch (err) {
      // A bug or an impossible value (e.g. a non-finite request) for one GPU never stops the others.
      const error = `Cannot reconcile GPU ${g.uuid}: ${
        err instanceof Error ? err.message : String(err)
      }; leaving it unchanged`;
      logger.error("{message}", { message: error, uuid: g.uuid, index: g.index });
      report.gpus.push(errorOutcome(g, error, { reason: desired?.get(g.uuid)?.reason ?? "" }));
    }
  }

  // Record every missing baseline and make it durable BEFORE touching any GPU.
  let blocked = new Set<string>();
  if (!dryRun) blocked = recordBaselines(journal, plans, report);

  for (const plan of plans) {
    guard(
      plan.gpu,
      report,
      () => applyPlan(gpu, plan, { journal, telemetry, dryRun, report, blocked }),
    );
  }

  for (const r of restores) {
    guard(r.gpu, report, () => {
      const result = restoreGpu(gpu, { identity: r.gpu, limits: r.limits }, {
        journal,
        reason: restoreReason,
        restoreTo,
        telemetry,
        dryRun,
      });
      report.writes += result.writes;
      report.gpus.push(result.outcome);
    });
  }

  if (!dryRun) saveJournal(journal, report);
  report.gpus.sort((a, b) => a.index - b.index);
  return finish();
}

/** Set one planned cap (or log it in dry run) and record the outcome in the report. */
function applyPlan(
  gpu: GpuControl,
  plan: Plan,
  options: {
    journal: Journal;
    telemetry: Telemetry;
    dryRun: boolean;
    report: PassReport;
    blocked: Set<string>;
  },
): void {
  const logger = getLogger(["gpu-power-agent", "reconcile"]);
  const { journal, telemetry, dryRun, report, blocked } = options;
  const g = plan.gpu;
  const base = {
    fromMw: plan.limits.limitMw,
    toMw: plan.targetMw,
    requestedMw: plan.requestedMw,
    clamp: plan.clamp,
    reason: plan.reason,
  };
  const props = {
    index: g.index,
    uuid: g.uuid,
    from: watts(plan.limits.limitMw),
    to: watts(plan.targetMw),
    reason: describeReason(plan),
  };
  if (blocked.has(g.uuid)) {
    report.gpus.push(outcome(g, "error", {
      ...base,
      error: `Not changing GPU ${g.uuid}: its baseline could not be saved (${report.error})`,
    }));
    return;
  }
  if (dryRun) {
    logger.info("dry run: would set GPU {index} ({uuid}): {from} → {to} ({reason})", props);
    report.gpus.push(outcome(g, plan.kind, base));
    return;
  }
  const result = setAndVerify(gpu, { identity: g, mw: plan.targetMw }, { telemetry });
  if (result.wrote) report.writes++;
  if (result.error !== undefined) {
    logger.warn("{message}", { message: result.error, uuid: g.uuid, index: g.index });
    report.gpus.push(outcome(g, "error", { ...base, error: result.error }));
    return;
  }
  journal.setApplied(g.uuid, plan.targetMw);
  telemetry.capChanged({
    uuid: g.uuid,
    index: g.index,
    name: g.name,
    fromMw: plan.limits.limitMw,
    toMw: plan.targetMw,
    kind: plan.kind,
    reason: plan.reason,
  });
  if (plan.kind === "apply" && plan.clamp !== "none") telemetry.clamped(plan.clamp);
  logger.info(
    plan.kind === "drift"
      ? "GPU {index} ({uuid}): {from} → {to} (drift corrected; {reason})"
      : "GPU {index} ({uuid}): {from} → {to} ({reason})",
    props,
  );
  report.gpus.push(outcome(g, plan.kind, base));
}

/** Run one GPU's step; an unexpected exception becomes that GPU's error outcome. */
function guard(g: GpuIdentity, report: PassReport, step: () => void): void {
  try {
    step();
  } catch (err) {
    const error = `Cannot reconcile GPU ${g.uuid}: ${
      err instanceof Error ? err.message : String(err)
    }`;
    getLogger(["gpu-power-agent", "reconcile"]).error("{message}", {
      message: error,
      uuid: g.uuid,
      index: g.index,
    });
    report.gpus.push(errorOutcome(g, error, { reason: "" }));
  }
}

/** What to do with one observed GPU: a change plan, a restore, or a final outcome. */
function planGpu(
  g: ObservedGpu,
  desired: DesiredCaps | null,
  options: { journal: Journal; dryRun: boolean },
): { plan?: Plan; restore?: PowerLimits; outcome?: GpuOutcome } {
  const limits = g.limits;
  if (!limits) {
    const error = g.error ?? readFailureMessage(g.uuid, "unknown error");
    return { outcome: errorOutcome(g, error, { reason: desired?.get(g.uuid)?.reason ?? "" }) };
  }
  if (desired === null) {
    return {
      outcome: outcome(g, "skipped", {
        fromMw: limits.limitMw,
        toMw: limits.limitMw,
        reason: "desired caps unknown (source not ready)",
      }),
    };
  }
  const want = desired.get(g.uuid);
  const entry = options.journal.get(g.uuid);
  if (!want) {
    if (entry) return { restore: limits };
    return { outcome: outcome(g, "none", { fromMw: limits.limitMw, toMw: limits.limitMw }) };
  }
  const requestedMw = Math.round(want.mw);
  const clamped = clampMw(requestedMw, limits);
  if (limits.limitMw === clamped.mw) {
    if (entry && !options.dryRun) options.journal.setApplied(g.uuid, clamped.mw);
    return {
      outcome: outcome(g, "none", {
        fromMw: limits.limitMw,
        toMw: clamped.mw,
        requestedMw,
        clamp: clamped.direction,
        reason: want.reason,
      }),
    };
  }
  return {
    plan: {
      gpu: g,
      limits,
      kind: entry && entry.appliedMw === clamped.mw ? "drift" : "apply",
      targetMw: clamped.mw,
      requestedMw,
      clamp: clamped.direction,
      reason: want.reason,
    },
  };
}

/** Record baselines for plans without a journal entry and save; returns UUIDs that must not be changed. */
function recordBaselines(journal: Journal, plans: Plan[], report: PassReport): Set<string> {
  const recorded: string[] = [];
  for (const plan of plans) {
    if (journal.recordBaseline(plan.gpu.uuid, plan.limits.limitMw, { name: plan.gpu.name })) {
      recorded.push(plan.gpu.uuid);
    }
  }
  if (recorded.length === 0) return new Set();
  try {
    journal.save();
    return new Set();
  } catch (err) {
    for (const uuid of recorded) journal.remove(uuid);
    report.ok = false;
    report.error = err instanceof Error ? err.message : String(err);
    getLogger(["gpu-power-agent", "reconcile"]).error(
      "{message}; not changing GPUs {uuids} until their baseline can be saved",
      { message: report.error, uuids: recorded },
    );
    return new Set(recorded);
  }
}

function describeReason(plan: Plan): string {
  if (plan.clamp === "none") return plan.reason;
  const bound = plan.clamp === "up" ? "min" : "max";
  return `${plan.reason}; requested ${watts(plan.requestedMw)} clamped ${plan.clamp} to ` +
    `${bound} ${watts(plan.targetMw)}`;
}

function outcome(
  g: GpuIdentity,
  action: GpuAction,
  fields: Partial<Omit<GpuOutcome, "uuid" | "index" | "name" | "action" | "summary">>,
): GpuOutcome {
  return {
    uuid: g.uuid,
    index: g.index,
    name: g.name,
    action,
    fromMw: fields.fromMw ?? null,
    toMw: fields.toMw ?? null,
    requestedMw: fields.requestedMw ?? null,
    clamp: fields.clamp ?? "none",
    reason: fields.reason ?? "",
    ...(fields.error !== undefined ? { error: fields.error } : {}),
    summary: "",
  };
}
