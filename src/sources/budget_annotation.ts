/**
 * The node power budget from the node annotation `gpu-power-agent.io/power-budget-watts`, and
 * how it combines with the caps file's `budget`.
 *
 * The value is parsed like the pod power annotation (`parsePowerAnnotation`): a positive integer
 * or decimal number of watts, at most 100000, at most 16 characters. When both the caps file and
 * the annotation give a budget, the smaller wins; an invalid annotation is ignored (with a
 * warning) and the caps file's budget, if any, still applies. Pure.
 */
import { parsePowerAnnotation, type PowerAnnotation } from "./annotation.ts";
import { formatWatts } from "../reconcile/report.ts";

/** The node annotation that carries the node power budget in watts. */
export const POWER_BUDGET_ANNOTATION = "gpu-power-agent.io/power-budget-watts";

/**
 * Classify the budget annotation's value (`undefined`: absent). Invalid values carry a message
 * that names the annotation and says what is expected.
 */
export function parseBudgetAnnotation(value: string | null | undefined): PowerAnnotation {
  const parsed = parsePowerAnnotation(value);
  if (parsed.kind !== "invalid") return parsed;
  return {
    ...parsed,
    message: `node annotation ${POWER_BUDGET_ANNOTATION}: ${parsed.message}`,
  };
}

/** Where the budget in force comes from. */
export type BudgetSource = "caps-file" | "node-annotation";

/** The node power budget in force. */
export interface EffectiveBudget {
  /** Milliwatts; null: no budget. */
  budgetMw: number | null;
  /** Which one won; null when there is no budget. */
  source: BudgetSource | null;
  /** Set when the annotation is present but invalid (it is then ignored): log it, warn once. */
  warning?: string;
}

/** Options of {@link combineBudgets}. */
export interface CombineBudgetsOptions {
  /** The caps file's `budget.mw`, if any. */
  fileMw?: number;
  /** The parsed node annotation (absent when not watched or not set). */
  annotation?: PowerAnnotation;
}

/**
 * The budget in force: the smaller of the caps file's and the node annotation's (the caps file
 * wins a tie); an invalid annotation is ignored with `warning` set.
 */
export function combineBudgets(options: CombineBudgetsOptions): EffectiveBudget {
  const annotation = options.annotation ?? { kind: "absent" };
  const candidates: [BudgetSource, number][] = [];
  if (options.fileMw !== undefined) candidates.push(["caps-file", options.fileMw]);
  if (annotation.kind === "valid") candidates.push(["node-annotation", annotation.mw]);
  const result: EffectiveBudget = { budgetMw: null, source: null };
  for (const [source, mw] of candidates) {
    if (result.budgetMw === null || mw < result.budgetMw) {
      result.budgetMw = mw;
      result.source = source;
    }
  }
  if (annotation.kind === "invalid") {
    result.warning = `Ignoring ${annotation.message}` +
      (options.fileMw === undefined
        ? "; no node power budget applies"
        : `; the caps file budget ${formatWatts(options.fileMw)} applies`);
  }
  return result;
}
