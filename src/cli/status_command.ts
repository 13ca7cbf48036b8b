/** `status`: one row per GPU (index, uuid, name, draw, limit, enforced, default, min–max, managed). */
import type { CommandContext } from "./context.ts";
import { EXIT } from "./context.ts";
import { formatWatts as watts } from "../reconcile/report.ts";
import { openNvmlGpuControl } from "../nvml/nvml_gpu_control.ts";
import { loadJournal } from "../state/journal.ts";
import { collectGpuStatus, type GpuStatus } from "../reconcile/gpu_status.ts";

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

/** Run `status`. */
export function statusCommand(ctx: CommandContext): number {
  const gpu = openNvmlGpuControl(ctx.nvmlLibraryPath);
  try {
    const journal = loadJournal(ctx.options.stateDir, { readOnly: true });
    const statuses = collectGpuStatus(gpu, { journal });
    if (ctx.options.json) {
      ctx.io.out(JSON.stringify(
        { driverVersion: gpu.driverVersion(), gpus: statuses.map(statusToJson) },
        null,
        2,
      ));
    } else {
      ctx.io.out(formatStatusTable(statuses));
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
