/**
 * The reconcile loop: a pass at start (crash recovery included), on every source change
 * (`trigger()`, coalesced) and every `intervalMs` (drift correction), and a restore on stop.
 *
 * Passes are synchronous (NVML calls are), so at most one runs at a time; triggers that arrive
 * while a pass is scheduled or running coalesce into exactly one follow-up pass.
 */
import { getLogger } from "@logtape/logtape";
import type { GpuControl } from "../nvml/gpu_control.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";
import type { CapSource, DesiredCaps } from "../sources/cap_source.ts";
import type { Journal } from "../state/journal.ts";
import type { Clock } from "./clock.ts";
import { systemClock } from "./clock.ts";
import type { PassReport } from "./pass.ts";
import { gpuViews, observeGpus, reconcilePass } from "./pass.ts";
import type { RestoreTarget } from "./restore.ts";
import { restoreAll } from "./restore.ts";

/** Options of `ReconcileLoop`. */
export interface ReconcileLoopOptions {
  journal: Journal;
  /** Period of the drift-correction pass, milliseconds. */
  intervalMs: number;
  telemetry?: Telemetry;
  clock?: Clock;
  /** Default `baseline`. */
  restoreTo?: RestoreTarget;
  /** Log what would change; never set a limit or write the journal. */
  dryRun?: boolean;
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
  #dryRun: boolean;
  #started = false;
  #stopped = false;
  #passing = false;
  #pending = false;
  #startupDone = false;
  #triggerAt: number | null = null;
  #triggerTimer: number | null = null;
  #intervalTimer: number | null = null;
  #passCount = 0;
  #lastSuccessMs: number | null = null;
  #lastReport: PassReport | null = null;
  #lastDesired: DesiredCaps | null = null;

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
    this.#dryRun = options.dryRun ?? false;
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
    return this.#safePass();
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
    if (!options.restore) return Promise.resolve(null);
    return Promise.resolve(restoreAll(this.#gpu, {
      journal: this.#journal,
      reason: "shutdown",
      restoreTo: this.#restoreTo,
      telemetry: this.#telemetry,
      dryRun: this.#dryRun,
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
      getLogger(["gpu-power-agent", "reconcile"]).error("{message}", { message });
      const now = this.#clock.now();
      report = {
        gpus: [],
        writes: 0,
        ok: false,
        dryRun: this.#dryRun,
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
      const observation = observeGpus(this.#gpu, { telemetry: this.#telemetry });
      let desired: DesiredCaps | null = null;
      let sourceError: string | undefined;
      if (observation.error === undefined) {
        try {
          desired = this.#source.desired(gpuViews(observation));
        } catch (err) {
          sourceError = `Source ${this.#source.name} failed to compute desired caps: ${
            err instanceof Error ? err.message : String(err)
          }; changing nothing this pass`;
          getLogger(["gpu-power-agent", "reconcile"]).error("{message}", { message: sourceError });
        }
      }
      this.#lastDesired = desired;
      report = reconcilePass(this.#gpu, desired, {
        journal: this.#journal,
        telemetry: this.#telemetry,
        restoreTo: this.#restoreTo,
        dryRun: this.#dryRun,
        restoreReason: this.#startupDone ? "unmanaged" : "startup",
        observation,
        clock: this.#clock,
      });
      if (sourceError !== undefined) {
        report.ok = false;
        report.error ??= sourceError;
      }
      if (desired !== null) this.#startupDone = true;
    } finally {
      this.#passing = false;
    }
    this.#passCount++;
    this.#lastReport = report;
    const endMs = this.#clock.now();
    if (report.ok && report.desiredKnown) this.#lastSuccessMs = endMs;
    const changed = !report.dryRun &&
      report.gpus.some((g) =>
        (g.action === "apply" || g.action === "drift" || g.action === "restore") &&
        g.fromMw !== g.toMw
      );
    if (changed && triggerAt !== null) {
      this.#telemetry.reactionLatency(Math.max(0, endMs - triggerAt) / 1000);
    }
    return report;
  }
}
