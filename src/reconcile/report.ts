/**
 * Report: what a pass DID to each GPU (outcomes, never intentions). Outcomes are the one source
 * of Kubernetes Events, counters, `gpu_managed`/`gpu_enforced`, `status` and readiness. Also the
 * human text of plans and outcomes, and the one watts formatter.
 *
 * @module
 */
import type { DesiredCap, DesiredKind } from "../policy/desired.ts";
import type { GpuPlan, LimitedBy, PassPlan } from "../policy/plan.ts";
import type { BudgetAllocation, BudgetReduction } from "../policy/budget.ts";

/** What a pass did to one GPU (in dry run: would do). */
export type GpuAction =
  | "none"
  | "apply"
  | "drift"
  | "restore"
  | "error"
  | "skipped"
  | "unsupported";

/** Per-GPU outcome of a pass. */
export interface GpuOutcome {
  uuid: string;
  index: number;
  name: string;
  /**
   * none: in sync or unmanaged; apply: new cap set and verified; drift: cap re-applied after
   * someone changed it; restore: returned to baseline/default and forgotten; error: see `error`
   * (nothing verified); skipped: desired caps unknown; unsupported: no software power limits.
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
  /** Why the target differs from the request. */
  limitedBy?: LimitedBy;
  /** The target before the node power budget lowered it (`limitedBy: "budget"`). */
  reducedFromMw?: number;
  /** Why: source reason, restore reason, or empty for an unmanaged GPU. */
  reason: string;
  /** The source's desired cap (carries the pods to tell). */
  desired?: DesiredCap;
  desiredKind: DesiredKind | null;
  /**
   * The GPU holds what the plan wants after this pass: true/false; null when unknown (desired
   * caps unknown, or limits unreadable while nothing is wanted).
   */
  enforced: boolean | null;
  /** The plan wanted a specific limit (desired cap or restore). */
  wanted: boolean;
  /** A verified write changed the GPU's limit this pass. */
  changed: boolean;
  /** What failed and what to do (action `error`, `unsupported`). */
  error?: string;
  /** NVML code of the failure (e.g. `NO_PERMISSION`), when it was an NVML error. */
  nvmlCode?: string;
  /** A failing GPU is not retried before this time (epoch ms; per-GPU backoff). */
  retryAtMs?: number;
  /** One line for humans, e.g. `700 W → 250 W (caps file default)`. */
  summary: string;
}

/** Result of a pass (also of `restoreAll`). */
export interface PassReport {
  gpus: GpuOutcome[];
  /** Successful `setLimit` calls. */
  writes: number;
  /** Desired caps known, no GPU error and no pass-level error (unsupported GPUs are fine). */
  ok: boolean;
  /** Nothing was changed or written on purpose. */
  dryRun: boolean;
  /** False when the source could not say what it wants (desired null): nothing was changed. */
  desiredKnown: boolean;
  /** Journaled GPUs not present now (their entries are kept). */
  absentUuids: string[];
  /** Pass-level failure: listing GPUs, the source, or saving the journal. */
  error?: string;
  /** The node power budget and what this pass did under it; absent when no budget applied. */
  budget?: BudgetReport;
  startedMs: number;
  durationMs: number;
}

/** What a pass did under the node power budget. */
export interface BudgetReport {
  budgetMw: number;
  /**
   * Σ of every GPU's power limit after the pass (as read back; in dry run: as planned). GPUs
   * whose limits cannot be read are not counted.
   */
  allocatedMw: number;
  /** Even every capped GPU at its minimum does not fit. */
  overBudget: boolean;
  /** GPUs whose target the budget lowered, in UUID order. */
  reductions: { uuid: string; index: number; fromMw: number; toMw: number }[];
}

/**
 * Milliwatts as watts for humans: `250 W`, `262.5 W` (null → `-`); `unit: false` gives the bare
 * number for tables whose header says W. The one watts formatter.
 */
export function formatWatts(
  mw: number | null | undefined,
  options: { unit?: boolean } = {},
): string {
  if (mw === null || mw === undefined || !Number.isFinite(mw)) return "-";
  const n = String(Number((mw / 1000).toFixed(3)));
  return options.unit === false ? n : `${n} W`;
}

/** The outcome of a GPU whose plan was carried out as planned (or, in dry run, would be). */
export function outcomeOf(plan: GpuPlan, fields: Partial<GpuOutcome> = {}): GpuOutcome {
  const action: GpuAction = {
    leave: "none",
    apply: "apply",
    drift: "drift",
    restore: "restore",
    unsupported: "unsupported",
    skip: "skipped",
    unreadable: "error",
    error: "error",
  }[plan.intent] as GpuAction;
  const failed = action === "error";
  return {
    uuid: plan.uuid,
    index: plan.index,
    name: plan.name,
    action,
    fromMw: plan.fromMw,
    toMw: plan.targetMw,
    requestedMw: plan.requestedMw,
    clamp: plan.clamp,
    ...(plan.limitedBy ? { limitedBy: plan.limitedBy } : {}),
    ...(plan.reducedFromMw !== undefined ? { reducedFromMw: plan.reducedFromMw } : {}),
    reason: plan.reason,
    ...(plan.desired ? { desired: plan.desired } : {}),
    desiredKind: plan.desiredKind,
    enforced: plan.intent === "skip"
      ? null
      : failed || action === "unsupported"
      ? (plan.wanted || plan.journaled ? false : null)
      : true,
    wanted: plan.wanted,
    changed: false,
    ...(plan.error !== undefined ? { error: plan.error } : {}),
    summary: "",
    ...fields,
  };
}

/** A report with no outcomes yet. */
export function emptyReport(
  fields: Pick<PassReport, "dryRun" | "desiredKnown" | "startedMs">,
): PassReport {
  return { gpus: [], writes: 0, ok: true, absentUuids: [], durationMs: 0, ...fields };
}

/** Fill `summary` of every outcome of a report (one line for humans per GPU). */
export function summarize(report: PassReport): void {
  for (const g of report.gpus) g.summary = describeOutcome(g, report.dryRun);
}

/** One human line describing an outcome. */
export function describeOutcome(g: GpuOutcome, dryRun: boolean): string {
  const from = g.fromMw === null ? "?" : formatWatts(g.fromMw);
  const to = g.toMw === null ? "?" : formatWatts(g.toMw);
  const why = g.reason ? ` (${reasonWithClamp(g)})` : "";
  const would = dryRun ? "would set " : "";
  switch (g.action) {
    case "error":
    case "unsupported":
      return g.error ?? g.action;
    case "skipped":
      return `unchanged at ${from}${why}`;
    case "none":
      return g.wanted ? `in sync at ${to}${why}` : `unmanaged at ${from}`;
    case "apply":
      return `${would}${from} → ${to}${why}`;
    case "drift":
      return `${would}${from} → ${to} (drift corrected${
        g.reason ? `; ${reasonWithClamp(g)}` : ""
      })`;
    case "restore":
      return g.fromMw === g.toMw
        ? `${dryRun ? "would release, " : "released, "}already at ${to}${why}`
        : `${would}${from} → ${to}${why}`;
  }
}

/**
 * The plan as text, one line per GPU: what `check` and `run --dry-run` print. A real run of the
 * same plan does exactly what these lines say.
 */
export function describePlan(plan: PassPlan): string[] {
  if (plan.error !== undefined) return [`${plan.error}; changing nothing`];
  return plan.gpus.map((p) => {
    const head = `GPU ${p.index} (${p.uuid}, ${p.name})`;
    const outcome = outcomeOf(p);
    switch (p.intent) {
      case "leave":
        return p.wanted
          ? `${head}: keep ${formatWatts(p.targetMw)} (${
            reasonWithClamp(outcome)
          }; already in place)`
          : `${head}: unmanaged at ${formatWatts(p.fromMw)} (no cap wanted)`;
      case "apply":
      case "drift":
      case "restore":
        return `${head}: would set ${formatWatts(p.fromMw)} → ${formatWatts(p.targetMw)} (${
          p.intent === "drift" ? "drift corrected; " : ""
        }${reasonWithClamp(outcome)})`;
      case "skip":
        return `${head}: unchanged at ${formatWatts(p.fromMw)} (${p.reason})`;
      default:
        return `${head}: ${p.error ?? p.intent}`;
    }
  });
}

/**
 * One line about a planned node power budget, e.g. `node power budget 4000 W: 4000 W allocated,
 * 8 GPU(s) reduced by it`, or `… cannot be met: …` when even every minimum is too much.
 */
export function describeBudget(
  b: Pick<BudgetAllocation, "budgetMw" | "allocatedMw" | "overBudget" | "reductions">,
): string {
  const head = `node power budget ${formatWatts(b.budgetMw)}`;
  if (b.overBudget) {
    return `${head} cannot be met: ${formatWatts(b.allocatedMw)} allocated with every capped ` +
      "GPU at its minimum";
  }
  return `${head}: ${formatWatts(b.allocatedMw)} allocated, ${b.reductions.length} GPU(s) ` +
    "reduced by it";
}

/** The pod Event / log text of a reduced cap: `reduced from 700 W to 500 W by the node power budget`. */
export function describeBudgetReduction(
  reduction: Pick<BudgetReduction, "fromMw" | "toMw"> & { uuid?: string },
): string {
  return `reduced from ${formatWatts(reduction.fromMw)} to ${
    formatWatts(reduction.toMw)
  } by the node power budget`;
}

/** The reason, with the device clamp and the node power budget spelled out when they acted. */
export function reasonWithClamp(
  g: Pick<GpuOutcome, "reason" | "clamp" | "requestedMw" | "toMw" | "limitedBy" | "reducedFromMw">,
): string {
  const parts = g.reason ? [g.reason] : [];
  if (g.clamp !== "none" && g.requestedMw !== null) {
    const bound = g.clamp === "up" ? "the GPU minimum" : "the GPU maximum";
    parts.push(
      `requested ${formatWatts(g.requestedMw)} clamped ${g.clamp} to ${bound} ` +
        formatWatts(g.reducedFromMw ?? g.toMw),
    );
  }
  if (g.limitedBy === "budget" && g.reducedFromMw !== undefined && g.toMw !== null) {
    parts.push(describeBudgetReduction({ fromMw: g.reducedFromMw, toMw: g.toMw }));
  }
  return parts.join("; ");
}
