/**
 * Order power-limit writes so that the sum of the node's limits never exceeds the node power
 * budget, not even between two writes of one pass. Pure; milliwatts.
 *
 * 1. Every lowering first (`orderLimitChanges`): each one only makes the sum smaller.
 * 2. Then the raises, but only those that still fit (`admitRaises`), counted from the limits as
 *    they are after step 1, read back: a lowering that failed leaves its GPU at the old limit,
 *    and a raise that would then overshoot waits for a later pass instead of being written.
 */
import { compareUuid } from "./budget.ts";

/** One power-limit write a pass wants. */
export interface LimitChange {
  uuid: string;
  fromMw: number;
  toMw: number;
}

/** Changes split into lowerings (write first) and raises, each in UUID order. */
export interface OrderedLimitChanges<T extends LimitChange> {
  lowers: T[];
  raises: T[];
}

/** Split `changes` into lowerings and raises (unchanged limits are dropped), UUID order. */
export function orderLimitChanges<T extends LimitChange>(
  changes: readonly T[],
): OrderedLimitChanges<T> {
  const sorted = [...changes].sort(compareUuid);
  return {
    lowers: sorted.filter((c) => c.toMw < c.fromMw),
    raises: sorted.filter((c) => c.toMw > c.fromMw),
  };
}

/** Options of {@link admitRaises}. */
export interface AdmitRaisesOptions {
  /** The node power budget, milliwatts. */
  budgetMw: number;
  /**
   * Σ of every GPU's limit now, after the lowerings of this pass, as read back (a GPU whose
   * write failed counts at the limit it still has).
   */
  currentTotalMw: number;
}

/** Raises that may be written now, and those that must wait. */
export interface AdmittedRaises<T extends LimitChange> {
  admitted: T[];
  deferred: T[];
}

/**
 * The raises that keep `Σ ≤ budgetMw` after each write, taken in UUID order (a raise that does
 * not fit is deferred; later, smaller ones may still fit). Each raise adds `toMw − fromMw`.
 */
export function admitRaises<T extends LimitChange>(
  raises: readonly T[],
  options: AdmitRaisesOptions,
): AdmittedRaises<T> {
  let total = options.currentTotalMw;
  const admitted: T[] = [];
  const deferred: T[] = [];
  for (const raise of [...raises].sort(compareUuid)) {
    const delta = raise.toMw - raise.fromMw;
    if (total + delta <= options.budgetMw) {
      admitted.push(raise);
      total += delta;
    } else {
      deferred.push(raise);
    }
  }
  return { admitted, deferred };
}
