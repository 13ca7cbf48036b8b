/**
 * `status`: one row per GPU (index, uuid, name, draw, limit, enforced, default, min–max,
 * managed); with `--caps-file`, also its node power budget as the plan allocates it.
 */
import type { CommandContext } from "./context.ts";
import { EXIT } from "./context.ts";
import { formatWatts as watts } from "../reconcile/report.ts";
import { openNvmlGpuControl } from "../nvml/nvml_gpu_control.ts";
import { loadJournal } from "../state/journal.ts";
import { collectGpuStatus, type GpuStatus } from "../reconcile/gpu_status.ts";
import type { GpuControl } from "../nvml/gpu_control.ts";
import { type CapsSpec, readCapsFile } from "../sources/caps_file.ts";
import { resolveFileCaps } from "../policy/file_rules.ts";
import { planPass } from "../policy/plan.ts";
import { gpuViews } from "../sources/cap_source.ts";
import { observeGpus } from "../reconcile/observe.ts";
import type { Journal } from "../state/journal.ts";

const formatWatts = (mw: number | null | undefined) => watts(mw, { unit: false });

/** Render statuses as an aligned text table. */
export function formatStatusTable(statuses: readonly GpuStatus[]): string {
  const header = [
    "GPU",
    "UUID",
    "NAME",
    "DRAW W",
    "LIMIT W",
    "ENFORCED W",
    "DEFAULT W",
    "MIN-MAX W",
    "MANAGED",
  ];
  const rows = statuses.map((s) => [
    String(s.index),
    s.uuid,
    s.name,
    formatWatts(s.drawMw === null ? null : Math.round(s.drawMw / 100) * 100), // 0.1 W
    s.error ? "error" : formatWatts(s.limitMw),
    formatWatts(s.enforcedMw),
    formatWatts(s.defaultMw),
    s.error || !s.supported ? "-" : `${formatWatts(s.minMw)}-${formatWatts(s.maxMw)}`,
    !s.supported
      ? "unsupported"
      : s.managed
      ? `yes (baseline ${formatWatts(s.baselineMw)} W)`
      : "no",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd();
  const out = [line(header), ...rows.map(line)];
  for (const s of statuses) if (s.error) out.push(`GPU ${s.index} (${s.uuid}): ${s.error}`);
  return out.join("\n");
}

/**
 * The node power budget of a caps file on this node, read only: the budget, Σ of the limits
 * the GPUs hold now, and the plan's allocation (which GPUs the budget reduces, and to what).
 * `status` is a separate process: it sees the caps file it is given, not the running agent's
 * node annotation or pods; the running agent's live figures are its `node_power_*` metrics.
 */
export interface StatusBudget {
  budgetMw: number;
  /** Σ of the power limits the GPUs hold now (GPUs whose limits cannot be read: not counted). */
  limitsNowMw: number;
  /** Σ the plan allocates under the budget (caps file semantics: file mode). */
  allocatedMw: number;
  overBudget: boolean;
  reductions: { index: number; uuid: string; fromMw: number; toMw: number }[];
}

/** The caps file's budget as the plan allocates it on these GPUs; null when it has none. */
export function statusBudget(
  gpu: GpuControl,
  options: { spec: CapsSpec; journal: Journal },
): StatusBudget | null {
  const budgetMw = options.spec.budget?.mw;
  if (budgetMw === undefined) return null;
  const observation = observeGpus(gpu);
  const plan = planPass(
    observation,
    resolveFileCaps(options.spec, gpuViews(observation)),
    options.journal.entries(),
    { budgetMw },
  );
  const index = new Map(plan.gpus.map((p) => [p.uuid, p.index]));
  let limitsNowMw = 0;
  for (const g of observation.gpus) limitsNowMw += g.limits?.limitMw ?? 0;
  return {
    budgetMw,
    limitsNowMw,
    allocatedMw: plan.budget?.allocatedMw ?? limitsNowMw,
    overBudget: plan.budget?.overBudget ?? false,
    reductions: (plan.budget?.reductions ?? []).map((r) => ({
      index: index.get(r.uuid) ?? -1,
      ...r,
    })),
  };
}

/** The budget lines under the status table. */
export function formatStatusBudget(b: StatusBudget): string[] {
  return [
    `Node power budget ${formatWatts(b.budgetMw)} W (caps file): limits now ${
      formatWatts(b.limitsNowMw)
    } W; allocated ${formatWatts(b.allocatedMw)} W${
      b.overBudget ? " (over budget: every capped GPU at its minimum)" : ""
    }`,
    ...b.reductions.map((r) =>
      `  GPU ${r.index} (${r.uuid}): reduced from ${formatWatts(r.fromMw)} W to ${
        formatWatts(r.toMw)
      } W by the node power budget`
    ),
  ];
}

/** Run `status` (with `--caps-file`: also how its node power budget is allocated). */
export async function statusCommand(ctx: CommandContext): Promise<number> {
  const spec = ctx.options.capsFile ? await readCapsFile(ctx.options.capsFile) : null;
  const gpu = openNvmlGpuControl(ctx.nvmlLibraryPath);
  try {
    const journal = loadJournal(ctx.options.stateDir, { readOnly: true });
    const statuses = collectGpuStatus(gpu, { journal });
    const budget = spec ? statusBudget(gpu, { spec, journal }) : null;
    if (ctx.options.json) {
      ctx.io.out(JSON.stringify(
        {
          driverVersion: gpu.driverVersion(),
          gpus: statuses.map(statusToJson),
          ...(spec ? { budget: budget ? budgetToJson(budget) : null } : {}),
        },
        null,
        2,
      ));
    } else {
      ctx.io.out(formatStatusTable(statuses));
      if (budget) { for (const line of formatStatusBudget(budget)) ctx.io.out(line); }
    }
    return statuses.some((s) => s.error) ? EXIT.failure : EXIT.ok;
  } finally {
    gpu.close();
  }
}

/** JSON form of one GPU's status: watts at the edge, as in the metrics. */
export function statusToJson(s: GpuStatus): Record<string, unknown> {
  const w = (mw: number | null | undefined) => (mw === null || mw === undefined ? null : mw / 1000);
  return {
    index: s.index,
    uuid: s.uuid,
    name: s.name,
    pciBusId: s.pciBusId,
    powerDrawWatts: w(s.drawMw),
    powerLimitWatts: w(s.limitMw),
    enforcedPowerLimitWatts: w(s.enforcedMw),
    defaultPowerLimitWatts: w(s.defaultMw),
    minPowerLimitWatts: w(s.minMw),
    maxPowerLimitWatts: w(s.maxMw),
    energyJoules: s.energyMj === null || s.energyMj === undefined ? null : s.energyMj / 1000,
    managed: s.managed,
    powerLimitSupported: s.supported,
    ...(s.supported ? {} : { unsupported: true }),
    enforced: s.enforced,
    baselineWatts: w(s.baselineMw),
    desiredWatts: w(s.desiredMw),
    ...(s.error ? { error: s.error } : {}),
  };
}

/** JSON form of the budget: watts at the edge. */
function budgetToJson(b: StatusBudget): Record<string, unknown> {
  return {
    budgetWatts: b.budgetMw / 1000,
    source: "caps-file",
    limitsNowWatts: b.limitsNowMw / 1000,
    allocatedWatts: b.allocatedMw / 1000,
    overBudget: b.overBudget,
    reduced: b.reductions.map((r) => ({
      index: r.index,
      uuid: r.uuid,
      fromWatts: r.fromMw / 1000,
      toWatts: r.toMw / 1000,
    })),
  };
}
