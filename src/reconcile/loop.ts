/**
 * The reconcile loop: a pass at start (crash recovery included), on every source change
 * (`trigger()`, coalesced) and every `intervalMs` (drift correction), and a restore on stop.
 *
 * Passes are synchronous (NVML calls are), so at most one runs at a time; triggers that arrive
 * while a pass is scheduled or running coalesce into exactly one follow-up pass.
 *
 * The journal is group-committed: a pass that only changed what managed GPUs have applied
 * writes it at once when the file is at least {@linkcode JOURNAL_GROUP_COMMIT_MS} old, else
 * leaves it to a timer that fires that long after (and to `stop()`/`runOnce()`). Baselines and
 * removals are durable before any GPU is changed, as always (`Journal.ensureOnDisk`).
 */
import { getLogger } from "@logtape/logtape";
import type { GpuControl } from "../nvml/gpu_control.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";
import type { CapSource, DesiredCaps } from "../sources/cap_source.ts";
import { gpuViews } from "../sources/cap_source.ts";
import type { Journal } from "../state/journal.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { RestoreTarget } from "../policy/plan.ts";
import { Actuator, type BackoffPolicy } from "./actuate.ts";
import { observeGpus } from "./observe.ts";
import { reconcilePass } from "./pass.ts";
import {
  type BudgetReport,
  describeBudget,
  describePlan,
  type GpuOutcome,
  type PassReport,
} from "./report.ts";
import type { BudgetSource, EffectiveBudget } from "../sources/budget_annotation.ts";
import { restoreAll } from "./restore.ts";

/** Logger of this module (logtape keeps one per category; configuration applies later too). */
const log = getLogger(["gpu-power-agent", "reconcile"]);

/** A GPU whose wanted limit is not in place (for readiness). */
export interface Unenforced {
  uuid: string;
  index: number;
  /** Since when (epoch ms) the wanted limit has not been in place. */
  sinceMs: number;
  /** What failed. */
  error: string;
}

/** What the loop knows about enforcement, for readiness, metrics and status. */
export interface EnforcementState {
  /** End (epoch ms) of the first pass that planned with known desired caps; null before. */
  reconciledMs: number | null;
  /** GPUs whose wanted limit is not in place, oldest first (unsupported GPUs never listed). */
  unenforced: Unenforced[];
  /** Pass-level failure (GPUs not listable, journal not writable) and since when. */
  passError?: { sinceMs: number; error: string };
}

/** The node power budget of the last pass, and where it came from. */
export interface LoopBudget extends BudgetReport {
  source: BudgetSource | null;
}

const NO_BUDGET: EffectiveBudget = Object.freeze({ budgetMw: null, source: null });

/**
 * Longest a change of a managed GPU's applied limit waits in memory before the journal file
 * holds it (group commit; see the module doc).
 */
export const JOURNAL_GROUP_COMMIT_MS = 1000;

/** Options of `ReconcileLoop`. */
export interface ReconcileLoopOptions {
  journal: Journal;
  /** Period of the drift-correction pass, milliseconds. */
  intervalMs: number;
  telemetry?: Telemetry;
  clock?: Clock;
  /** Default `baseline`. */
  restoreTo?: RestoreTarget;
  /** Per-GPU retry backoff (default 1 s doubling to 5 min). */
  backoff?: BackoffPolicy;
  /** Where the plan is printed in dry run (a read-only journal; default: the log). */
  printPlan?: (lines: string[]) => void;
  /**
   * Called once the loop has run no pass for `afterMs` after a burst of at least `minPasses`
   * passes (the agent returns what the burst grew: a full V8 collection). A quiet node calls it at
   * most once every `minPasses` intervals.
   */
  afterBurst?: { afterMs: number; minPasses: number; run: () => void };
}

/** Options of `ReconcileLoop.stop`. */
export interface StopOptions {
  /** Restore every journaled GPU before returning (SIGTERM/SIGINT). Default false. */
  restore?: boolean;
}

/** Drives `reconcilePass` from a `CapSource`. The caller starts the source with `() => loop.trigger()`. */
export class ReconcileLoop {
  #gpu: GpuControl;
  #source: CapSource;
  #journal: Journal;
  #telemetry: Telemetry;
  #clock: Clock;
  #intervalMs: number;
  #restoreTo: RestoreTarget;
  #started = false;
  #stopped = false;
  #passing = false;
  #pending = false;
  #startupDone = false;
  #triggerAt: number | null = null;
  #triggerTimer: number | null = null;
  #intervalTimer: number | null = null;
  #journalTimer: number | null = null;
  #burstTimer: number | null = null;
  #burstPasses = 0;
  #afterBurst: ReconcileLoopOptions["afterBurst"];
  #passCount = 0;
  #lastSuccessMs: number | null = null;
  #lastReport: PassReport | null = null;
  #lastDesired: DesiredCaps | null = null;
  #actuator: Actuator;
  #printPlan: (lines: string[]) => void;
  #lastPlanText = "";
  #reconciledMs: number | null = null;
  #outcomes = new Map<string, GpuOutcome>();
  #unenforced = new Map<string, Unenforced>();
  #passError: { sinceMs: number; error: string } | undefined;
  #lastBudget: LoopBudget | null = null;
  #budgetState: string | undefined;
  #budgetWarning: string | undefined;

  constructor(gpu: GpuControl, source: CapSource, options: ReconcileLoopOptions) {
    if (!(options.intervalMs > 0)) {
      throw new Error(`Reconcile interval must be positive, got ${options.intervalMs} ms`);
    }
    this.#gpu = gpu;
    this.#source = source;
    this.#journal = options.journal;
    this.#telemetry = options.telemetry ?? noopTelemetry;
    this.#clock = options.clock ?? systemClock;
    this.#intervalMs = options.intervalMs;
    this.#restoreTo = options.restoreTo ?? "baseline";
    this.#afterBurst = options.afterBurst;
    this.#actuator = new Actuator(gpu, {
      journal: this.#journal,
      telemetry: this.#telemetry,
      clock: this.#clock,
      backoff: options.backoff,
      coalesceJournalMs: JOURNAL_GROUP_COMMIT_MS,
    });
    this.#printPlan = options.printPlan ?? ((lines) => {
      for (const line of lines) log.info("dry run: {line}", { line });
    });
  }

  /** Enforcement as of the last pass (readiness, metrics). */
  enforcement(): EnforcementState {
    return {
      reconciledMs: this.#reconciledMs,
      unenforced: [...this.#unenforced.values()].sort((a, b) => a.sinceMs - b.sinceMs),
      ...(this.#passError ? { passError: { ...this.#passError } } : {}),
    };
  }

  /** Last outcome of one GPU (null before it was seen). */
  outcomeOf(uuid: string): GpuOutcome | null {
    return this.#outcomes.get(uuid) ?? null;
  }

  /** True when the GPU does not support software power limits (read or set NOT_SUPPORTED). */
  isUnsupported(uuid: string): boolean {
    return this.#outcomes.get(uuid)?.action === "unsupported" ||
      this.#actuator.isUnsupported(uuid);
  }

  /** End time (ms since epoch) of the last pass that was ok with known desired caps; null if none. */
  get lastSuccessMs(): number | null {
    return this.#lastSuccessMs;
  }

  /** Report of the last pass; null before the first. */
  get lastReport(): PassReport | null {
    return this.#lastReport;
  }

  /** Desired caps the last pass used (null: unknown / not computed). */
  get lastDesired(): DesiredCaps | null {
    return this.#lastDesired;
  }

  /** The node power budget as of the last planned pass (null: none). */
  get lastBudget(): LoopBudget | null {
    return this.#lastBudget;
  }

  /** Passes run so far. */
  get passCount(): number {
    return this.#passCount;
  }

  /** Run the first pass now (journaled GPUs without a desired cap are restored: crash recovery) and arm the interval. */
  start(): PassReport {
    if (this.#started) throw new Error("ReconcileLoop.start() called twice");
    if (this.#stopped) throw new Error("ReconcileLoop was stopped; create a new one");
    this.#started = true;
    return this.#tick();
  }

  /**
   * Run one pass now without arming any timer (`run --once`). Like the first pass of `start()`,
   * journaled GPUs without a desired cap are restored with reason `startup`.
   */
  runOnce(): PassReport {
    if (this.#stopped) throw new Error("ReconcileLoop was stopped; create a new one");
    const report = this.#safePass();
    this.#flushJournal();
    return report;
  }

  /** Desired caps may have changed: run a pass as soon as possible (coalesced). */
  trigger(): void {
    if (this.#stopped) return;
    if (this.#triggerAt === null) this.#triggerAt = this.#clock.now();
    if (!this.#started) return;
    if (this.#passing) {
      this.#pending = true;
      return;
    }
    this.#scheduleTriggered();
  }

  /** Stop timers; with `restore`, put every journaled GPU back and return that report. */
  stop(options: StopOptions = {}): Promise<PassReport | null> {
    this.#stopped = true;
    this.#pending = false;
    this.#clearTimer("trigger");
    this.#clearTimer("interval");
    if (this.#burstTimer !== null) this.#clock.clearTimeout(this.#burstTimer);
    this.#burstTimer = null;
    this.#flushJournal();
    // A dry run (read-only journal) changed nothing: nothing to restore.
    if (!options.restore || this.#journal.readOnly) return Promise.resolve(null);
    return Promise.resolve(restoreAll(this.#gpu, {
      journal: this.#journal,
      reason: "shutdown",
      restoreTo: this.#restoreTo,
      telemetry: this.#telemetry,
      clock: this.#clock,
    }));
  }

  #scheduleTriggered(): void {
    if (this.#triggerTimer !== null) return;
    this.#triggerTimer = this.#clock.setTimeout(() => {
      this.#triggerTimer = null;
      if (!this.#stopped) this.#tick();
    }, 0);
  }

  /** After a pass: `afterBurst` runs once no pass came for its `afterMs`, after enough passes. */
  #armAfterBurst(): void {
    const after = this.#afterBurst;
    if (after === undefined || this.#stopped) return;
    this.#burstPasses++;
    if (this.#burstTimer !== null) this.#clock.clearTimeout(this.#burstTimer);
    this.#burstTimer = this.#clock.setTimeout(() => {
      this.#burstTimer = null;
      if (this.#burstPasses < after.minPasses) return;
      this.#burstPasses = 0;
      try {
        after.run();
      } catch (err) {
        log.warn("After a burst of passes: {error}", {
          error: err instanceof Error ? err.message : String(err),
        });
      }
    }, after.afterMs);
  }

  /** After a pass: a journal write the pass left waiting happens within the group commit time. */
  #armJournalFlush(): void {
    if (this.#journalTimer !== null || this.#stopped) return;
    if (this.#journal.readOnly || !this.#journal.dirty) return;
    this.#journalTimer = this.#clock.setTimeout(() => {
      this.#journalTimer = null;
      this.#flushJournal();
    }, JOURNAL_GROUP_COMMIT_MS);
  }

  /** Write what the journal holds in memory now (errors are logged; the next pass retries). */
  #flushJournal(): void {
    if (this.#journalTimer !== null) this.#clock.clearTimeout(this.#journalTimer);
    this.#journalTimer = null;
    try {
      this.#journal.save();
    } catch (err) {
      log.error("{message}", {
        message: err instanceof Error ? err.message : String(err),
      });
    }
  }

  #clearTimer(which: "trigger" | "interval"): void {
    const id = which === "trigger" ? this.#triggerTimer : this.#intervalTimer;
    if (id !== null) this.#clock.clearTimeout(id);
    if (which === "trigger") this.#triggerTimer = null;
    else this.#intervalTimer = null;
  }

  #tick(): PassReport {
    const report = this.#safePass();
    if (!this.#stopped) {
      this.#clearTimer("interval");
      this.#intervalTimer = this.#clock.setTimeout(() => {
        this.#intervalTimer = null;
        if (!this.#stopped) this.#tick();
      }, this.#intervalMs);
      if (this.#pending) {
        this.#pending = false;
        this.#scheduleTriggered();
      }
    }
    return report;
  }

  #safePass(): PassReport {
    let report: PassReport;
    try {
      report = this.#runPass();
    } catch (err) {
      // reconcilePass never throws; this guards timer callbacks against bugs.
      const message = `Reconcile pass failed unexpectedly: ${
        err instanceof Error ? err.stack ?? err.message : String(err)
      }`;
      log.error("{message}", { message });
      const now = this.#clock.now();
      report = {
        gpus: [],
        writes: 0,
        ok: false,
        dryRun: this.#journal.readOnly,
        desiredKnown: false,
        absentUuids: [],
        error: message,
        startedMs: now,
        durationMs: 0,
      };
      this.#lastReport = report;
    }
    return report;
  }

  #runPass(): PassReport {
    const triggerAt = this.#triggerAt;
    this.#triggerAt = null;
    this.#pending = false;
    this.#passing = true;
    let report: PassReport;
    try {
      const observation = observeGpus(this.#gpu, {
        telemetry: this.#telemetry,
        pids: this.#source.needsPids ?? false,
        migDevices: this.#source.needsMigDevices ?? false,
      });
      let desired: DesiredCaps | null = null;
      let sourceError: string | undefined;
      if (observation.error === undefined) {
        try {
          desired = this.#source.desired(gpuViews(observation));
        } catch (err) {
          sourceError = `Source ${this.#source.name} failed to compute desired caps: ${
            err instanceof Error ? err.message : String(err)
          }; changing nothing this pass`;
          log.error("{message}", { message: sourceError });
        }
      }
      this.#lastDesired = desired;
      const budget = this.#readBudget();
      report = reconcilePass(this.#gpu, desired, {
        budgetMw: budget.budgetMw,
        journal: this.#journal,
        telemetry: this.#telemetry,
        restoreTo: this.#restoreTo,
        restoreReason: this.#startupDone ? "unmanaged" : "startup",
        observation,
        actuator: this.#actuator,
        sourceError,
        clock: this.#clock,
        onPlan: (plan) => {
          if (!this.#journal.readOnly) return;
          const text = describePlan(plan).join("\n");
          if (text === this.#lastPlanText) return;
          this.#lastPlanText = text;
          this.#printPlan(text.split("\n"));
        },
      });
      if (desired !== null) this.#startupDone = true;
      this.#reportBudget(report, budget);
      if (!report.dryRun) {
        try {
          this.#source.report?.(report.gpus);
        } catch (err) {
          log.error("Source report failed: {error}", {
            error: err instanceof Error ? err.message : String(err),
          });
        }
      }
    } finally {
      this.#passing = false;
    }
    this.#passCount++;
    this.#armJournalFlush();
    this.#armAfterBurst();
    this.#lastReport = report;
    const endMs = this.#clock.now();
    if (report.ok) this.#lastSuccessMs = endMs;
    this.#track(report, endMs);
    const changed = report.gpus.some((g) => g.changed && g.fromMw !== g.toMw);
    if (changed && triggerAt !== null) {
      this.#telemetry.reactionLatency(Math.max(0, endMs - triggerAt) / 1000);
    }
    return report;
  }

  /** The source's node power budget now; a failing source means no budget this pass. */
  #readBudget(): EffectiveBudget {
    try {
      return this.#source.budget?.() ?? NO_BUDGET;
    } catch (err) {
      log.error(
        "Source {source} failed to give the node power budget: {error}",
        { source: this.#source.name, error: err instanceof Error ? err.message : String(err) },
      );
      return NO_BUDGET;
    }
  }

  /** Budget gauges after every pass; a log line when the budget or over-budget state changes. */
  #reportBudget(report: PassReport, budget: EffectiveBudget): void {
    if (budget.warning !== undefined && budget.warning !== this.#budgetWarning) {
      log.warn("{message}", { message: budget.warning });
    }
    this.#budgetWarning = budget.warning;
    if (!report.desiredKnown) return; // nothing was planned: keep the last figures
    const b = report.budget;
    this.#lastBudget = b ? { ...b, source: budget.source } : null;
    this.#telemetry.budgetAllocated(
      b
        ? { budgetMw: b.budgetMw, allocatedMw: b.allocatedMw, overBudget: b.overBudget }
        : { budgetMw: null, allocatedMw: 0, overBudget: false },
    );
    const state = b === undefined
      ? "none"
      : `${b.budgetMw}/${budget.source}/${b.overBudget ? "over" : "ok"}`;
    if (state === this.#budgetState) return;
    this.#budgetState = state;
    if (b === undefined) {
      log.info("No node power budget");
      return;
    }
    const fields = { message: describeBudget(b), source: budget.source };
    if (b.overBudget) log.warn("{message} (source: {source})", fields);
    else log.info("{message} (source: {source})", fields);
  }

  /** Update enforcement state from a pass's outcomes. */
  #track(report: PassReport, nowMs: number): void {
    if (report.error !== undefined && report.gpus.length === 0) {
      this.#passError = this.#passError?.error === report.error
        ? this.#passError
        : { sinceMs: this.#passError?.sinceMs ?? nowMs, error: report.error };
      return;
    }
    this.#passError = undefined;
    if (report.desiredKnown && this.#reconciledMs === null) this.#reconciledMs = nowMs;
    const present = new Set<string>();
    for (const g of report.gpus) {
      present.add(g.uuid);
      this.#outcomes.set(g.uuid, g);
      if (g.action === "skipped") continue;
      if (g.enforced === false && g.action !== "unsupported") {
        const known = this.#unenforced.get(g.uuid);
        this.#unenforced.set(g.uuid, {
          uuid: g.uuid,
          index: g.index,
          sinceMs: known?.sinceMs ?? nowMs,
          error: g.error ?? "the wanted power limit is not in place",
        });
      } else {
        this.#unenforced.delete(g.uuid);
      }
    }
    // A GPU that was wanted (or journaled) and is gone is not enforced either.
    const lost = new Set(report.absentUuids);
    for (const [uuid, g] of this.#outcomes) {
      if (present.has(uuid)) continue;
      if (g.wanted) lost.add(uuid);
      else this.#outcomes.delete(uuid);
    }
    for (const uuid of lost) {
      const known = this.#unenforced.get(uuid);
      this.#unenforced.set(uuid, {
        uuid,
        index: known?.index ?? this.#outcomes.get(uuid)?.index ?? -1,
        sinceMs: known?.sinceMs ?? nowMs,
        error: `GPU ${uuid} is lost: the driver no longer lists it`,
      });
    }
    for (const uuid of [...this.#unenforced.keys()]) {
      if (!present.has(uuid) && !lost.has(uuid)) this.#unenforced.delete(uuid);
    }
  }
}
