/**
 * Share a node power budget among the node's GPUs. Pure; milliwatts throughout.
 *
 * Every GPU on the node counts against the budget:
 * - a GPU the agent caps counts at its allocated cap (`wantMw`, clamped into `[minMw, maxMw]`,
 *   then possibly reduced here);
 * - a GPU the agent does not cap (`wantMw: null`) counts at `fixedMw`, its current enforced
 *   limit, and is never changed here.
 *
 * Rule (proportional to the headroom above min):
 * 1. `available = budgetMw − Σ fixedMw`.
 * 2. When `Σ wantMw ≤ available`, every capped GPU keeps its want: nothing is reduced.
 * 3. When `Σ minMw ≥ available`, every capped GPU goes to its min (the most the agent can do);
 *    `overBudget` is true when `Σ minMw + Σ fixedMw > budgetMw`.
 * 4. Otherwise each capped GPU keeps its min plus the same share of its headroom
 *    `wantMw − minMw`: `cap = minMw + floor(headroom × (available − Σ minMw) / Σ headroom)`.
 *    The milliwatts lost to rounding down (fewer than the number of GPUs) are handed out one
 *    each to reduced GPUs in UUID order, so the total is exactly `available` and never above.
 *
 * Worked example 1: 8 GPUs want 700 W, min 200 W, budget 4000 W. Σ want 5600 W > 4000 W;
 * Σ min 1600 W; the 2400 W above the mins are shared in proportion to the 8 × 500 W of headroom
 * (60 %): every GPU gets 200 + 0.6 × 500 = 500 W. Allocated 4000 W.
 *
 * Worked example 2: GPUs want 700, 500 and 300 W (min 200 W each), a fourth GPU the agent does
 * not cap is enforced at 350 W, budget 1400 W. Available 1400 − 350 = 1050 W; Σ min 600 W;
 * headroom 500 + 300 + 100 = 900 W; 450 W above the mins to share (50 %): caps 450, 350 and
 * 250 W. Allocated 1050 + 350 = 1400 W.
 *
 * The result depends only on the set of GPUs, not their order (GPUs are processed and returned
 * in UUID order). Each cap is monotone in the budget up to the 1 mW of rounding handed out in
 * step 4; the allocated total is monotone.
 */

/** One GPU as the budget sees it. */
export interface BudgetGpu {
  uuid: string;
  /** The cap the plan wants before the budget; null: the agent does not cap this GPU. */
  wantMw: number | null;
  /** What an uncapped GPU counts as: its current enforced limit (ignored when capped). */
  fixedMw: number;
  /** Smallest and largest settable limit. */
  minMw: number;
  maxMw: number;
}

/** Options of {@link allocateBudget}. */
export interface AllocateBudgetOptions {
  /** The node power budget, milliwatts (> 0). */
  budgetMw: number;
}

/** The budget's decision for one GPU. */
export interface GpuBudgetShare {
  uuid: string;
  /** False for GPUs the agent does not cap (they count at `countedMw = fixedMw`). */
  capped: boolean;
  /** The want clamped into [min, max]; null when not capped. */
  wantMw: number | null;
  /** The cap to enforce (≤ wantMw, ≥ minMw); null when not capped. */
  capMw: number | null;
  /** What this GPU counts against the budget: `capMw`, or `fixedMw` when not capped. */
  countedMw: number;
  /** True when the budget lowered the cap below the want. */
  reduced: boolean;
}

/** A cap the budget lowered. */
export interface BudgetReduction {
  uuid: string;
  fromMw: number;
  toMw: number;
}

/** Result of {@link allocateBudget}. */
export interface BudgetAllocation {
  budgetMw: number;
  /** Σ countedMw over every GPU (capped and fixed). */
  allocatedMw: number;
  /** Σ min of the capped GPUs + Σ fixed > budget: even all mins do not fit. */
  overBudget: boolean;
  /** Every GPU, in UUID order. */
  gpus: GpuBudgetShare[];
  /** The reduced GPUs, in UUID order. */
  reductions: BudgetReduction[];
}

/**
 * Allocate `options.budgetMw` among `gpus` (see the module doc for the rule).
 *
 * @throws {RangeError} on a non-integer or negative value, `minMw > maxMw`, a budget ≤ 0, or a
 *   UUID given twice.
 */
export function allocateBudget(
  gpus: readonly BudgetGpu[],
  options: AllocateBudgetOptions,
): BudgetAllocation {
  const budgetMw = options.budgetMw;
  if (!Number.isSafeInteger(budgetMw) || budgetMw <= 0) {
    throw new RangeError(`Invalid node power budget ${budgetMw} mW: expected an integer > 0`);
  }
  const sorted = [...gpus].sort(compareUuid);
  for (let i = 0; i < sorted.length; i++) {
    validate(sorted[i]);
    if (i > 0 && sorted[i].uuid === sorted[i - 1].uuid) {
      throw new RangeError(`GPU ${sorted[i].uuid} given twice to the power budget`);
    }
  }
  const capped = sorted.filter((g) => g.wantMw !== null).map((g) => ({
    uuid: g.uuid,
    minMw: g.minMw,
    wantMw: Math.min(Math.max(g.wantMw as number, g.minMw), g.maxMw),
  }));
  const fixedMw = sum(sorted.filter((g) => g.wantMw === null).map((g) => g.fixedMw));
  const wantMw = sum(capped.map((g) => g.wantMw));
  const minMw = sum(capped.map((g) => g.minMw));
  const available = budgetMw - fixedMw;

  const caps = new Map<string, number>();
  if (wantMw <= available) {
    for (const g of capped) caps.set(g.uuid, g.wantMw);
  } else if (minMw >= available) {
    for (const g of capped) caps.set(g.uuid, g.minMw);
  } else {
    const share = BigInt(available - minMw);
    const headroom = BigInt(wantMw - minMw);
    let handedOut = 0;
    for (const g of capped) {
      const extra = Number(BigInt(g.wantMw - g.minMw) * share / headroom);
      caps.set(g.uuid, g.minMw + extra);
      handedOut += extra;
    }
    let leftover = available - minMw - handedOut;
    for (const g of capped) {
      if (leftover === 0) break;
      const cap = caps.get(g.uuid) as number;
      if (cap < g.wantMw) {
        caps.set(g.uuid, cap + 1);
        leftover--;
      }
    }
  }

  const shares: GpuBudgetShare[] = sorted.map((g) => {
    const cap = caps.get(g.uuid);
    if (cap === undefined) {
      return {
        uuid: g.uuid,
        capped: false,
        wantMw: null,
        capMw: null,
        countedMw: g.fixedMw,
        reduced: false,
      };
    }
    const want = Math.min(Math.max(g.wantMw as number, g.minMw), g.maxMw);
    return {
      uuid: g.uuid,
      capped: true,
      wantMw: want,
      capMw: cap,
      countedMw: cap,
      reduced: cap < want,
    };
  });
  return {
    budgetMw,
    allocatedMw: sum(shares.map((s) => s.countedMw)),
    overBudget: minMw + fixedMw > budgetMw,
    gpus: shares,
    reductions: shares.filter((s) => s.reduced).map((s) => ({
      uuid: s.uuid,
      fromMw: s.wantMw as number,
      toMw: s.capMw as number,
    })),
  };
}

/** Order by UUID (code-unit order): the budget's one tie-breaker. */
export function compareUuid(a: { uuid: string }, b: { uuid: string }): number {
  return a.uuid < b.uuid ? -1 : a.uuid > b.uuid ? 1 : 0;
}

function validate(gpu: BudgetGpu): void {
  const fields: [string, number | null][] = [
    ["wantMw", gpu.wantMw],
    ["fixedMw", gpu.fixedMw],
    ["minMw", gpu.minMw],
    ["maxMw", gpu.maxMw],
  ];
  for (const [name, value] of fields) {
    if (value === null && name === "wantMw") continue;
    if (!Number.isSafeInteger(value) || (value as number) < 0) {
      throw new RangeError(
        `Invalid ${name} ${value} for GPU ${gpu.uuid}: expected an integer number of mW >= 0`,
      );
    }
  }
  if (gpu.minMw > gpu.maxMw) {
    throw new RangeError(
      `Invalid power limit constraints for GPU ${gpu.uuid}: ${gpu.minMw}..${gpu.maxMw} mW`,
    );
  }
}

function sum(values: readonly number[]): number {
  let total = 0;
  for (const v of values) total += v;
  return total;
}
