/**
 * Actuate: carry out a `PassPlan` — record baselines durably before the first write, set, read
 * back, journal. Decreases are written before increases, so the node never draws more than the
 * old and the new plan allow, even for a moment.
 *
 * A GPU counts as managed (journaled) only after a verified change: a baseline recorded for a
 * set that did not happen is dropped again. Failing GPUs are retried with a per-GPU backoff
 * (reset when the target changes) and logged once per change of state; a GPU whose set is NOT
 * SUPPORTED is remembered as unsupported and never retried.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { GpuControl, PowerLimits } from "../nvml/gpu_control.ts";
import { describeNvmlError, isNotSupported, NvmlError } from "../nvml/errors.ts";
import type { RestoreReason, Telemetry } from "../metrics/telemetry.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";
import type { GpuPlan, PassPlan } from "../policy/plan.ts";
import { writes } from "../policy/plan.ts";
import type { BudgetAllocation } from "../policy/budget.ts";
import { admitRaises, orderLimitChanges } from "../policy/budget_order.ts";
import type { Journal } from "../state/journal.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { countNvmlError, unsupportedMessage } from "./observe.ts";
import { formatWatts, type GpuOutcome, outcomeOf, reasonWithClamp } from "./report.ts";

/** Logger of this module (logtape keeps one per category; configuration applies later too). */
const log = getLogger(["gpu-power-agent", "reconcile"]);

/** Per-GPU retry backoff: first retry after `initialMs`, doubling up to `maxMs`. */
export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
}

/** Default backoff: 1 s doubling to 5 min. */
export const DEFAULT_BACKOFF: BackoffPolicy = Object.freeze({ initialMs: 1000, maxMs: 300_000 });

/** Options of {@linkcode Actuator}. */
export interface ActuatorOptions {
  journal: Journal;
  telemetry?: Telemetry;
  clock?: Clock;
  backoff?: BackoffPolicy;
  /**
   * Group commit of the journal (`Journal.save`'s `coalesceAppliedMs`): a pass that only changed
   * what managed GPUs have applied may leave the write to its owner's next save (the reconcile
   * loop's timer). Default 0: every pass saves what it changed.
   */
  coalesceJournalMs?: number;
}

/** Options of {@linkcode Actuator.execute}. */
export interface ExecuteOptions {
  /** Metrics label of restores in this plan. */
  restoreReason: RestoreReason;
}

/** What carrying out a plan did. */
export interface ActuateResult {
  /** One per planned GPU, in index order. */
  outcomes: GpuOutcome[];
  /** Successful `setLimit` calls. */
  writes: number;
  /** Pass-level failure (the journal could not be saved). */
  error?: string;
}

interface Failing {
  targetMw: number | null;
  delayMs: number;
  retryAtMs: number;
  error: string;
  nvmlCode?: string;
}

/** Carries out plans against the GPUs; keeps the per-GPU backoff and unsupported state. */
export class Actuator {
  #gpu: GpuControl;
  #journal: Journal;
  #telemetry: Telemetry;
  #clock: Clock;
  #backoff: BackoffPolicy;
  #coalesceJournalMs: number;
  #failing = new Map<string, Failing>();
  #unsupported = new Map<string, string>();

  constructor(gpu: GpuControl, options: ActuatorOptions) {
    this.#gpu = gpu;
    this.#journal = options.journal;
    this.#telemetry = options.telemetry ?? noopTelemetry;
    this.#clock = options.clock ?? systemClock;
    this.#backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.#coalesceJournalMs = options.coalesceJournalMs ?? 0;
  }

  /** True when setting this GPU's limit failed NOT_SUPPORTED (it is never tried again). */
  isUnsupported(uuid: string): boolean {
    return this.#unsupported.has(uuid);
  }

  /** Carry out `plan`. Never throws: failures are in the outcomes. */
  execute(plan: PassPlan, options: ExecuteOptions): ActuateResult {
    const journal = this.#journal;
    const result: ActuateResult = { outcomes: [], writes: 0 };
    if (plan.error !== undefined) return result;
    const now = this.#clock.now();
    const outcomes = new Map<string, GpuOutcome>();
    const toWrite: GpuPlan[] = [];
    for (const p of plan.gpus) {
      const unsupported = this.#unsupported.get(p.uuid);
      if (p.intent === "unsupported" || (unsupported !== undefined && writes(p))) {
        outcomes.set(p.uuid, this.#markUnsupported(p, p.error ?? unsupported!));
        continue;
      }
      if (p.intent === "unreadable" || p.intent === "error") {
        outcomes.set(p.uuid, this.#failed(p, { error: p.error ?? "unknown error", now }));
        continue;
      }
      if (!writes(p)) {
        outcomes.set(p.uuid, this.#settle(p));
        continue;
      }
      const failing = this.#failing.get(p.uuid);
      if (failing && failing.targetMw === p.targetMw && now < failing.retryAtMs) {
        // Still backing off this GPU for the same target: no write, same outcome as last time.
        outcomes.set(p.uuid, {
          ...outcomeOf(p),
          action: "error",
          enforced: false,
          error: failing.error,
          ...(failing.nvmlCode ? { nvmlCode: failing.nvmlCode } : {}),
          retryAtMs: failing.retryAtMs,
        });
        continue;
      }
      toWrite.push(p);
    }

    // Baselines of GPUs about to be changed are durable on disk BEFORE the first write, even
    // when the file was emptied or replaced behind our back.
    const recorded = new Set<string>();
    for (const p of toWrite) {
      if (p.intent === "restore") continue;
      if (journal.recordBaseline(p.uuid, p.fromMw!, { name: p.name })) recorded.add(p.uuid);
    }
    let blocked: string | undefined;
    try {
      journal.ensureOnDisk();
    } catch (err) {
      blocked = err instanceof Error ? err.message : String(err);
      for (const uuid of recorded) journal.remove(uuid);
      result.error = blocked;
      log.error("{message}; not changing any GPU until the journal can be saved", {
        message: blocked,
      });
    }

    // Decreases first, then increases: the total never exceeds what either plan allows. Under a
    // node power budget a raise is written only while Σ limits (as read back) stays within it.
    const carry = (p: GpuPlan) => {
      if (blocked !== undefined && p.intent !== "restore") {
        outcomes.set(p.uuid, {
          ...outcomeOf(p),
          action: "error",
          enforced: false,
          error: `Not changing GPU ${p.uuid}: its baseline could not be saved (${blocked})`,
        });
        return;
      }
      try {
        const written = this.#write(p, { recorded: recorded.has(p.uuid), now, options });
        outcomes.set(p.uuid, written.outcome);
        if (written.wrote) result.writes++;
      } catch (err) {
        // A bug for one GPU never stops the others.
        const error = `Cannot reconcile GPU ${p.uuid}: ${
          err instanceof Error ? err.message : String(err)
        }`;
        log.error("{message}", { message: error, uuid: p.uuid, index: p.index });
        outcomes.set(p.uuid, { ...outcomeOf(p), action: "error", enforced: false, error });
      }
    };
    const { lowers, raises } = orderLimitChanges(
      toWrite.map((p) => ({ uuid: p.uuid, fromMw: p.fromMw!, toMw: p.targetMw!, plan: p })),
    );
    for (const c of lowers) carry(c.plan);
    let admitted = raises;
    if (plan.budget !== undefined) {
      const split = admitRaises(raises, {
        budgetMw: plan.budget.budgetMw,
        currentTotalMw: limitsNow(plan, outcomes),
      });
      admitted = split.admitted;
      for (const c of split.deferred) outcomes.set(c.uuid, this.#deferred(c.plan, plan.budget));
    }
    for (const c of admitted) carry(c.plan);

    try {
      journal.save({ coalesceAppliedMs: this.#coalesceJournalMs });
    } catch (err) {
      result.error ??= err instanceof Error ? err.message : String(err);
      log.error("{message}", { message: result.error });
    }
    result.outcomes = plan.gpus.map((p) => outcomes.get(p.uuid)!);
    return result;
  }

  /** Nothing to write: record what is in place (in-sync caps, released restores). */
  #settle(p: GpuPlan): GpuOutcome {
    const entry = this.#journal.get(p.uuid);
    if (p.intent === "leave" && p.wanted && entry && p.targetMw !== null) {
      this.#journal.setApplied(p.uuid, p.targetMw);
    }
    if (p.intent === "restore" && entry) {
      this.#journal.remove(p.uuid);
      log.info(
        "GPU {index} ({uuid}): released, already at {to} ({reason})",
        { index: p.index, uuid: p.uuid, to: formatWatts(p.targetMw), reason: p.reason },
      );
    }
    if (p.intent !== "skip") this.#recovered(p);
    return outcomeOf(p);
  }

  #write(
    p: GpuPlan,
    ctx: { recorded: boolean; now: number; options: ExecuteOptions },
  ): { outcome: GpuOutcome; wrote: boolean } {
    const targetMw = p.targetMw!;
    let after: PowerLimits;
    try {
      this.#gpu.setLimit(p.index, targetMw);
    } catch (err) {
      countNvmlError(err, this.#telemetry);
      this.#dropUnverified(p, ctx.recorded);
      if (isNotSupported(err)) {
        return { outcome: this.#markUnsupported(p, unsupportedMessage(p.uuid)), wrote: false };
      }
      return {
        outcome: this.#failed(p, {
          error: `Cannot set power limit on GPU ${p.uuid}: ${describeNvmlError(err)}`,
          nvmlCode: err instanceof NvmlError ? err.codeName : undefined,
          now: ctx.now,
        }),
        wrote: false,
      };
    }
    try {
      after = this.#gpu.readLimits(p.index);
    } catch (err) {
      countNvmlError(err, this.#telemetry);
      const error = `Set power limit of GPU ${p.uuid} to ${formatWatts(targetMw)} but cannot ` +
        `read it back: ${describeNvmlError(err)}`;
      const nvmlCode = err instanceof NvmlError ? err.codeName : undefined;
      return { outcome: this.#failed(p, { error, nvmlCode, now: ctx.now }), wrote: true };
    }
    if (after.limitMw !== targetMw) {
      if (after.limitMw === p.fromMw) this.#dropUnverified(p, ctx.recorded);
      const error = `Power limit of GPU ${p.uuid} is ${formatWatts(after.limitMw)} after ` +
        `setting ${formatWatts(targetMw)}: the driver did not apply it (another tool or a BMC ` +
        `may be overriding it); will retry`;
      return { outcome: this.#failed(p, { error, now: ctx.now }), wrote: true };
    }
    if (p.intent === "restore") this.#journal.remove(p.uuid);
    else this.#journal.setApplied(p.uuid, targetMw);
    const kind = p.intent as "apply" | "drift" | "restore";
    this.#telemetry.capChanged({
      uuid: p.uuid,
      index: p.index,
      name: p.name,
      fromMw: p.fromMw!,
      toMw: targetMw,
      kind,
      reason: p.reason,
      ...(kind === "restore" ? { restoreReason: ctx.options.restoreReason } : {}),
    });
    if (kind === "apply" && p.clamp !== "none") this.#telemetry.clamped(p.clamp);
    if (kind !== "restore" && p.desiredKind === "safe-default") {
      this.#telemetry.safeDefaultApplied();
    }
    const outcome = { ...outcomeOf(p), changed: true };
    log.info(
      kind === "drift"
        ? "GPU {index} ({uuid}): {from} → {to} (drift corrected; {reason})"
        : "GPU {index} ({uuid}): {from} → {to} ({reason})",
      {
        index: p.index,
        uuid: p.uuid,
        from: formatWatts(p.fromMw),
        to: formatWatts(targetMw),
        reason: reasonWithClamp(outcome),
      },
    );
    this.#recovered(p);
    return { outcome, wrote: true };
  }

  /** Forget a baseline recorded for a change that did not happen: the GPU is not managed. */
  #dropUnverified(p: GpuPlan, recorded: boolean): void {
    if (p.intent === "restore") return;
    const entry = this.#journal.get(p.uuid);
    if (recorded || (entry && entry.baselineMw === p.fromMw && entry.appliedMw === p.fromMw)) {
      this.#journal.remove(p.uuid);
    }
  }

  #failed(
    p: GpuPlan,
    f: { error: string; nvmlCode?: string; now: number },
  ): GpuOutcome {
    const before = this.#failing.get(p.uuid);
    const sameTarget = before !== undefined && before.targetMw === p.targetMw;
    const delayMs = sameTarget
      ? Math.min(this.#backoff.maxMs, before.delayMs * 2)
      : this.#backoff.initialMs;
    const state: Failing = {
      targetMw: p.targetMw,
      delayMs,
      retryAtMs: f.now + delayMs,
      error: f.error,
      ...(f.nvmlCode ? { nvmlCode: f.nvmlCode } : {}),
    };
    this.#failing.set(p.uuid, state);
    if (!sameTarget || before.error !== f.error) {
      log.warn(
        "{message} (retrying with backoff up to {max})",
        {
          message: f.error,
          uuid: p.uuid,
          index: p.index,
          max: `${Math.round(this.#backoff.maxMs / 1000)}s`,
        },
      );
    }
    return {
      ...outcomeOf(p),
      action: "error",
      enforced: p.wanted || p.journaled ? false : null,
      error: f.error,
      ...(f.nvmlCode ? { nvmlCode: f.nvmlCode } : {}),
      retryAtMs: state.retryAtMs,
    };
  }

  #recovered(p: GpuPlan): void {
    if (!this.#failing.delete(p.uuid)) return;
    log.info(
      "GPU {index} ({uuid}): {state} again",
      {
        index: p.index,
        uuid: p.uuid,
        state: p.wanted ? `holds ${formatWatts(p.targetMw)}` : "readable",
      },
    );
  }

  /** A raise held back because it would take Σ limits above the budget (retried next pass). */
  #deferred(p: GpuPlan, budget: BudgetAllocation): GpuOutcome {
    const error = `Raising GPU ${p.uuid} to ${formatWatts(p.targetMw)} deferred: the node's ` +
      `power limits would exceed the node power budget ${formatWatts(budget.budgetMw)} ` +
      "while another GPU has not been lowered yet; retrying next pass";
    log.warn("{message}", {
      message: error,
      uuid: p.uuid,
      index: p.index,
    });
    return { ...outcomeOf(p), action: "error", toMw: p.fromMw, enforced: false, error };
  }

  #markUnsupported(p: GpuPlan, message: string): GpuOutcome {
    if (this.#unsupported.get(p.uuid) !== message) {
      this.#unsupported.set(p.uuid, message);
      log.warn("{message}", {
        message,
        uuid: p.uuid,
        index: p.index,
      });
    }
    this.#failing.delete(p.uuid);
    return {
      ...outcomeOf(p),
      action: "unsupported",
      toMw: p.fromMw,
      enforced: p.wanted ? false : null,
      error: message,
    };
  }
}

/**
 * Σ of every GPU's power limit now: what a GPU written this pass read back (its old limit when
 * the write failed), else what it was observed at. GPUs whose limits are unknown count as 0.
 */
function limitsNow(plan: PassPlan, outcomes: ReadonlyMap<string, GpuOutcome>): number {
  let total = 0;
  for (const p of plan.gpus) {
    if (p.fromMw === null) continue;
    const o = outcomes.get(p.uuid);
    total += o?.changed && o.toMw !== null ? o.toMw : p.fromMw;
  }
  return total;
}
