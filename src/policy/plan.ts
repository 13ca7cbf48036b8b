/**
 * Plan: a pure function of (observation, desired caps, journal) → what to do with each GPU.
 * `run`, `run --dry-run`, `check`, shutdown and `restore` all plan with it; only `run` then
 * actuates. No I/O, no clock, no NVML.
 *
 * The final target of a GPU is decided in one place, {@linkcode decideTarget}; a later step
 * (e.g. a node power budget) lowers targets there and records why in `limitedBy`.
 *
 * @module
 */
import type { GpuIdentity, PowerLimits } from "../nvml/gpu_control.ts";
import type { RestoreReason } from "../metrics/telemetry.ts";
import type { Observation } from "../reconcile/observe.ts";
import type { JournalEntry } from "../state/journal.ts";
import { type ClampDirection, clampMw } from "./clamp.ts";
import type { DesiredCap, DesiredCaps, DesiredKind } from "./desired.ts";
import { allocateBudget, type BudgetAllocation, type BudgetGpu } from "./budget.ts";

/** What to restore a GPU to: the journaled pre-agent value, or the vendor default. */
export type RestoreTarget = "baseline" | "default";

/**
 * What the plan wants for one GPU.
 * - `leave`: nothing to write (in sync, or unmanaged and never changed);
 * - `apply`: a new desired cap; `drift`: re-apply what the agent set after someone changed it;
 * - `restore`: no desired cap any more: back to baseline/default, then forget it;
 * - `unsupported`: the GPU has no software power limit (never touched);
 * - `skip`: desired caps unknown (source not ready): change nothing;
 * - `unreadable`: its limits could not be read: change nothing;
 * - `error`: the request cannot be planned (e.g. not a finite number): change nothing.
 */
export type GpuIntent =
  | "leave"
  | "apply"
  | "drift"
  | "restore"
  | "unsupported"
  | "skip"
  | "unreadable"
  | "error";

/** Why the final target differs from the request. */
export type LimitedBy = "device-min" | "device-max" | "budget";

/** The plan for one GPU. */
export interface GpuPlan extends GpuIdentity {
  intent: GpuIntent;
  /** Limit observed now (null when unreadable/unsupported). */
  fromMw: number | null;
  /** Limit the GPU should hold after the pass (unmanaged: its current limit); null when unknown. */
  targetMw: number | null;
  /** What was asked before the device clamp (restore: the baseline/default wanted). */
  requestedMw: number | null;
  /** `up`: raised to the device minimum; `down`: lowered to the device maximum. */
  clamp: ClampDirection;
  /** Why `targetMw` differs from `requestedMw`, when it does. */
  limitedBy?: LimitedBy;
  /** The target before the node power budget lowered it (`limitedBy: "budget"`). */
  reducedFromMw?: number;
  /** Source reason (file rule, pod), restore reason, or empty for an unmanaged GPU. */
  reason: string;
  /** The source's desired cap, when there is one (carries the pods to tell in Kubernetes mode). */
  desired?: DesiredCap;
  desiredKind: DesiredKind | null;
  /** True when the plan wants a specific limit on this GPU (a desired cap or a restore). */
  wanted: boolean;
  /** The GPU has a journal entry (the agent changed it and has not restored it). */
  journaled: boolean;
  /** Limits as observed (null when unreadable/unsupported). */
  limits: PowerLimits | null;
  /** Why the GPU cannot be handled (`unreadable`, `unsupported`, `error`). */
  error?: string;
}

/** The plan of one pass. */
export interface PassPlan {
  gpus: GpuPlan[];
  /** False when the source could not say what it wants: every GPU is `skip`. */
  desiredKnown: boolean;
  /** Journaled GPUs not present now (their entries are kept). */
  absentUuids: string[];
  /** Pass-level failure (GPUs could not be listed): nothing is planned. */
  error?: string;
  /** The node power budget's allocation, when a budget applied this pass. */
  budget?: BudgetAllocation;
}

/** Options of {@linkcode planPass}. */
export interface PlanOptions {
  /** Restore unmanaged GPUs to their baseline (default) or the vendor default. */
  restoreTo?: RestoreTarget;
  /** Why unmanaged journaled GPUs are restored (log text). Default `unmanaged`. */
  restoreReason?: RestoreReason;
  /**
   * The node power budget, milliwatts (null/absent: none). Applied after `decideTarget` to every
   * GPU with readable limits (see {@linkcode applyBudget}); ignored while desired caps are unknown.
   */
  budgetMw?: number | null;
}

const RESTORE_REASON_TEXT: Readonly<Record<RestoreReason, string>> = Object.freeze({
  unmanaged: "no desired cap",
  startup: "no desired cap at startup",
  shutdown: "agent shutdown",
  command: "restore command",
});

/** The final target of a request on a GPU: the one place targets are decided. */
export function decideTarget(
  requestedMw: number,
  limits: PowerLimits,
): { mw: number; clamp: ClampDirection; limitedBy?: LimitedBy } {
  const clamped = clampMw(requestedMw, limits);
  if (clamped.direction === "none") return { mw: clamped.mw, clamp: "none" };
  return {
    mw: clamped.mw,
    clamp: clamped.direction,
    limitedBy: clamped.direction === "up" ? "device-min" : "device-max",
  };
}

/**
 * Plan one pass. `desired === null` (source not ready) plans `skip` for every GPU; a GPU absent
 * from `desired` is restored when journaled, else left alone. Pure; never throws.
 */
export function planPass(
  observation: Observation,
  desired: DesiredCaps | null,
  journal: ReadonlyMap<string, JournalEntry>,
  options: PlanOptions = {},
): PassPlan {
  const present = new Set(observation.gpus.map((g) => g.uuid));
  const absentUuids = [...journal.keys()].filter((uuid) => !present.has(uuid));
  if (observation.error !== undefined) {
    return { gpus: [], desiredKnown: desired !== null, absentUuids, error: observation.error };
  }
  const gpus = observation.gpus.map((g): GpuPlan => {
    const want = desired?.get(g.uuid);
    const entry = journal.get(g.uuid);
    const base: GpuPlan = {
      index: g.index,
      uuid: g.uuid,
      name: g.name,
      pciBusId: g.pciBusId,
      intent: "leave",
      fromMw: g.limits?.limitMw ?? null,
      targetMw: g.limits?.limitMw ?? null,
      requestedMw: null,
      clamp: "none",
      reason: want?.reason ?? "",
      ...(want ? { desired: want } : {}),
      desiredKind: want?.kind ?? null,
      wanted: want !== undefined,
      journaled: entry !== undefined,
      limits: g.limits,
    };
    if (g.unsupported) {
      return { ...base, intent: "unsupported", targetMw: null, error: g.error };
    }
    if (!g.limits) {
      return { ...base, intent: "unreadable", targetMw: null, error: g.error };
    }
    if (desired === null) {
      return { ...base, intent: "skip", reason: "desired caps unknown (source not ready)" };
    }
    try {
      if (!want) {
        if (!entry) return base;
        return planRestore(base, g.limits, entry, options);
      }
      const requestedMw = Math.round(want.mw);
      const target = decideTarget(requestedMw, g.limits);
      return {
        ...base,
        intent: intentFor(g.limits, target.mw, entry),
        targetMw: target.mw,
        requestedMw,
        clamp: target.clamp,
        ...(target.limitedBy ? { limitedBy: target.limitedBy } : {}),
      };
    } catch (err) {
      // An impossible value (e.g. a non-finite request) for one GPU never stops the others.
      return {
        ...base,
        intent: "error",
        targetMw: null,
        error: `Cannot reconcile GPU ${g.uuid}: ${
          err instanceof Error ? err.message : String(err)
        }; leaving it unchanged`,
      };
    }
  });
  const plan: PassPlan = { gpus, desiredKnown: desired !== null, absentUuids };
  if (desired !== null && options.budgetMw !== undefined && options.budgetMw !== null) {
    applyBudget(plan, { budgetMw: options.budgetMw, journal });
  }
  return plan;
}

/** A wanted target: in place (`leave`), re-applied after someone changed it (`drift`), or new. */
function intentFor(limits: PowerLimits, targetMw: number, entry?: JournalEntry): GpuIntent {
  if (limits.limitMw === targetMw) return "leave";
  return entry && entry.appliedMw === targetMw ? "drift" : "apply";
}

/** GPUs the budget lowers a target of: those the plan sets a specific limit on. */
function budgeted(p: GpuPlan): boolean {
  return p.limits !== null && p.targetMw !== null &&
    (p.intent === "apply" || p.intent === "drift" || p.intent === "restore" ||
      (p.intent === "leave" && p.wanted));
}

/**
 * Share the node power budget (`allocateBudget`): GPUs with a wanted limit want their target;
 * every other GPU with readable limits counts at its current power limit and is not changed
 * (GPUs whose limits cannot be read are left out: nothing is known of them). A reduced target
 * gets `limitedBy: "budget"` and `reducedFromMw` (the text `reduced from A to B by the node
 * power budget` is `reasonWithClamp`'s); a
 * restore the budget reduces becomes an `apply` at the reduced value (the GPU stays managed
 * until its baseline fits). Mutates `plan`.
 */
function applyBudget(
  plan: PassPlan,
  ctx: { budgetMw: number; journal: ReadonlyMap<string, JournalEntry> },
): void {
  const inputs: BudgetGpu[] = [];
  for (const p of plan.gpus) {
    if (p.limits === null || p.intent === "error") continue;
    inputs.push({
      uuid: p.uuid,
      wantMw: budgeted(p) ? p.targetMw : null,
      fixedMw: p.limits.limitMw,
      minMw: p.limits.minMw,
      maxMw: p.limits.maxMw,
    });
  }
  const allocation = allocateBudget(inputs, { budgetMw: ctx.budgetMw });
  plan.budget = allocation;
  const reduced = new Map(allocation.reductions.map((r) => [r.uuid, r]));
  plan.gpus = plan.gpus.map((p) => {
    const r = reduced.get(p.uuid);
    if (r === undefined || p.limits === null) return p;
    return {
      ...p,
      intent: intentFor(p.limits, r.toMw, ctx.journal.get(p.uuid)),
      targetMw: r.toMw,
      limitedBy: "budget",
      reducedFromMw: r.fromMw,
      wanted: true,
    };
  });
}

function planRestore(
  base: GpuPlan,
  limits: PowerLimits,
  entry: JournalEntry,
  options: PlanOptions,
): GpuPlan {
  const restoreTo = options.restoreTo ?? "baseline";
  const wanted = restoreTo === "default" ? limits.defaultMw : entry.baselineMw;
  const target = decideTarget(wanted, limits);
  return {
    ...base,
    intent: "restore",
    targetMw: target.mw,
    requestedMw: wanted,
    clamp: target.clamp,
    ...(target.limitedBy ? { limitedBy: target.limitedBy } : {}),
    wanted: true,
    reason: `restore to ${restoreTo}: ${RESTORE_REASON_TEXT[options.restoreReason ?? "unmanaged"]}`,
  };
}

/** True when carrying out this plan writes to the GPU. */
export function writes(plan: GpuPlan): boolean {
  return (plan.intent === "apply" || plan.intent === "drift" || plan.intent === "restore") &&
    plan.fromMw !== plan.targetMw;
}
