/**
 * Events the agent reports for metrics. Core modules depend on this interface only, never on
 * prom-client; `src/metrics/prometheus.ts` implements it, `noopTelemetry` ignores everything.
 */

/** One cap change that reached a GPU. */
export interface CapChange {
  uuid: string;
  index: number;
  name: string;
  fromMw: number;
  toMw: number;
  /** apply: new desired cap; drift: re-applied after someone changed it; restore: back to baseline. */
  kind: "apply" | "drift" | "restore";
  /** Why, for logs: file rule, pod ns/name, safe default, restore reason. */
  reason: string;
  /** For restores: `unmanaged` (desired cap gone), `shutdown`, `startup` (crash recovery), `command`. */
  restoreReason?: RestoreReason;
}

/** Why a GPU was restored to its baseline. */
export type RestoreReason = "unmanaged" | "shutdown" | "startup" | "command";

/** The node power budget after a pass (see `src/policy/budget.ts`). */
export interface BudgetInfo {
  /** The budget in force, milliwatts; null: no budget (the budget series are removed). */
  budgetMw: number | null;
  /** Σ of what every GPU counts against the budget, milliwatts. */
  allocatedMw: number;
  /** Even every capped GPU at its min does not fit the budget. */
  overBudget: boolean;
}

/** Sink for agent events. Every method must be cheap and must never throw. */
export interface Telemetry {
  capChanged(change: CapChange): void;
  clamped(direction: "up" | "down"): void;
  nvmlError(fn: string, code: string): void;
  sourceError(source: string, reason: string): void;
  invalidRequest(reason: string): void;
  safeDefaultApplied(): void;
  configReload(result: "success" | "failure"): void;
  reconcileCompleted(info: { durationSeconds: number; ok: boolean; atMs: number }): void;
  /** Seconds from a desired change being observed to the cap being set. */
  reactionLatency(seconds: number): void;
  /** The node power budget and what the pass allocated under it. */
  budgetAllocated(info: BudgetInfo): void;
}

/** Telemetry that records nothing. */
export const noopTelemetry: Telemetry = Object.freeze({
  capChanged() {},
  clamped() {},
  nvmlError() {},
  sourceError() {},
  invalidRequest() {},
  safeDefaultApplied() {},
  configReload() {},
  reconcileCompleted() {},
  reactionLatency() {},
  budgetAllocated() {},
});
