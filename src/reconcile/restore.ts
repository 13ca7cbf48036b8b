/**
 * Putting GPUs back: set each GPU the agent changed to its recorded baseline (or the vendor
 * default with `restoreTo: "default"`), verify, and forget it. One GPU's failure never blocks the
 * others, and a failed GPU keeps its journal entry so a later restore can retry.
 */
import { getLogger } from "@logtape/logtape";
import type { GpuControl, GpuIdentity, PowerLimits } from "../nvml/gpu_control.ts";
import type { RestoreReason, Telemetry } from "../metrics/telemetry.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";
import type { Journal } from "../state/journal.ts";
import type { Clock } from "./clock.ts";
import { systemClock } from "./clock.ts";
import type { GpuOutcome, PassReport } from "./pass.ts";

/** What to restore a GPU to: the journaled pre-agent value, or the vendor default. */
export type RestoreTarget = "baseline" | "default";

/** Options of `restoreAll`. */
export interface RestoreAllOptions {
  journal: Journal;
  /** Why we restore (metrics label, logs). */
  reason: RestoreReason;
  /** Default `baseline`. */
  restoreTo?: RestoreTarget;
  telemetry?: Telemetry;
  /** Log what would be restored; change nothing, write nothing. */
  dryRun?: boolean;
  clock?: Clock;
}

/** Options of `restoreGpu` (one GPU, limits already read). */
export interface RestoreGpuOptions {
  journal: Journal;
  reason: RestoreReason;
  restoreTo: RestoreTarget;
  telemetry: Telemetry;
  dryRun: boolean;
}

/** Result of `restoreGpu`. */
export interface RestoreGpuResult {
  outcome: GpuOutcome;
  /** Successful `setLimit` calls (0 or 1). */
  writes: number;
}

const RESTORE_REASON_TEXT: Readonly<Record<RestoreReason, string>> = Object.freeze({
  unmanaged: "no desired cap",
  startup: "no desired cap at startup",
  shutdown: "agent shutdown",
  command: "restore command",
});

/**
 * Restore every journaled GPU that is present now. GPUs in the journal but absent from the
 * driver keep their entries (listed in `absentUuids`). Saves the journal once at the end.
 * Never throws: failures are in the report.
 */
export function restoreAll(gpu: GpuControl, options: RestoreAllOptions): PassReport {
  const logger = getLogger(["gpu-power-agent", "reconcile"]);
  const clock = options.clock ?? systemClock;
  const telemetry = options.telemetry ?? noopTelemetry;
  const journal = options.journal;
  const dryRun = (options.dryRun ?? false) || journal.dryRun;
  const startedMs = clock.now();
  const report = emptyReport({ dryRun, desiredKnown: true, startedMs });
  if (journal.size === 0) return finish(report, clock);

  let identities: GpuIdentity[];
  try {
    identities = gpu.listGpus();
  } catch (err) {
    reportNvmlError(err, telemetry);
    report.ok = false;
    report.error = `Cannot list GPUs to restore them: ${errorText(err)}`;
    logger.error("{message}", { message: report.error });
    return finish(report, clock);
  }
  const byUuid = new Map(identities.map((id) => [id.uuid, id]));
  for (const uuid of journal.uuids()) {
    const identity = byUuid.get(uuid);
    if (!identity) {
      report.absentUuids.push(uuid);
      logger.warn(
        "GPU {uuid} is in the journal but not present now; keeping its entry so it can be " +
          "restored when it is back",
        { uuid },
      );
      continue;
    }
    let limits: PowerLimits;
    try {
      limits = gpu.readLimits(identity.index);
    } catch (err) {
      reportNvmlError(err, telemetry);
      const outcome = errorOutcome(identity, readFailureMessage(identity.uuid, err), {
        reason: RESTORE_REASON_TEXT[options.reason],
      });
      logger.warn("{message}", { message: outcome.error, uuid, index: identity.index });
      report.gpus.push(outcome);
      continue;
    }
    const result = restoreGpu(gpu, { identity, limits }, {
      journal,
      reason: options.reason,
      restoreTo: options.restoreTo ?? "baseline",
      telemetry,
      dryRun,
    });
    report.gpus.push(result.outcome);
    report.writes += result.writes;
  }
  saveJournal(journal, report);
  report.ok = report.ok && report.gpus.every((g) => g.action !== "error");
  return finish(report, clock);
}

/**
 * Restore one journaled GPU whose limits were just read. On success the journal entry is removed
 * (not saved: the caller saves once). On failure the entry stays and the outcome is `error`.
 */
export function restoreGpu(
  gpu: GpuControl,
  observed: { identity: GpuIdentity; limits: PowerLimits },
  options: RestoreGpuOptions,
): RestoreGpuResult {
  const logger = getLogger(["gpu-power-agent", "reconcile"]);
  const { identity, limits } = observed;
  const { journal, telemetry } = options;
  const entry = journal.get(identity.uuid);
  const reasonText = RESTORE_REASON_TEXT[options.reason];
  if (!entry) {
    return {
      outcome: {
        ...ids(identity),
        action: "none",
        fromMw: limits.limitMw,
        toMw: limits.limitMw,
        requestedMw: null,
        clamp: "none",
        reason: reasonText,
        summary: "",
      },
      writes: 0,
    };
  }
  const wanted = options.restoreTo === "default" ? limits.defaultMw : entry.baselineMw;
  const targetMw = Math.min(Math.max(wanted, limits.minMw), limits.maxMw);
  const reason = `restore to ${options.restoreTo}: ${reasonText}`;
  if (targetMw !== wanted) {
    logger.warn(
      "GPU {index} ({uuid}): {restoreTo} {wanted} is outside the settable range {min}–{max}; " +
        "restoring to {target} instead",
      {
        index: identity.index,
        uuid: identity.uuid,
        restoreTo: options.restoreTo,
        wanted: watts(wanted),
        min: watts(limits.minMw),
        max: watts(limits.maxMw),
        target: watts(targetMw),
      },
    );
  }
  const outcome: GpuOutcome = {
    ...ids(identity),
    action: "restore",
    fromMw: limits.limitMw,
    toMw: targetMw,
    requestedMw: wanted,
    clamp: "none",
    reason,
    summary: "",
  };
  const props = {
    index: identity.index,
    uuid: identity.uuid,
    from: watts(limits.limitMw),
    to: watts(targetMw),
    reason,
  };
  if (options.dryRun) {
    logger.info(
      limits.limitMw === targetMw
        ? "dry run: would release GPU {index} ({uuid}), already at {to} ({reason})"
        : "dry run: would set GPU {index} ({uuid}): {from} → {to} ({reason})",
      props,
    );
    return { outcome, writes: 0 };
  }
  if (limits.limitMw === targetMw) {
    journal.remove(identity.uuid);
    logger.info("GPU {index} ({uuid}): released, already at {to} ({reason})", props);
    return { outcome, writes: 0 };
  }
  const failure = setAndVerify(gpu, { identity, mw: targetMw }, { telemetry });
  if (failure.error) {
    logger.warn("{message}", {
      message: failure.error,
      uuid: identity.uuid,
      index: identity.index,
    });
    return {
      outcome: { ...outcome, action: "error", error: failure.error },
      writes: failure.wrote ? 1 : 0,
    };
  }
  journal.remove(identity.uuid);
  telemetry.capChanged({
    ...ids(identity),
    fromMw: limits.limitMw,
    toMw: targetMw,
    kind: "restore",
    reason,
    restoreReason: options.reason,
  });
  logger.info("GPU {index} ({uuid}): {from} → {to} ({reason})", props);
  return { outcome, writes: 1 };
}

/**
 * `setLimit` then read back and compare. Returns `{wrote, error?}`: `wrote` when setLimit
 * succeeded, `error` (a message for humans) when the set or the verification failed.
 */
export function setAndVerify(
  gpu: GpuControl,
  target: { identity: GpuIdentity; mw: number },
  options: { telemetry: Telemetry },
): { wrote: boolean; error?: string } {
  const { identity, mw: targetMw } = target;
  const { telemetry } = options;
  try {
    gpu.setLimit(identity.index, targetMw);
  } catch (err) {
    reportNvmlError(err, telemetry);
    return { wrote: false, error: setFailureMessage(identity.uuid, err) };
  }
  let after: PowerLimits;
  try {
    after = gpu.readLimits(identity.index);
  } catch (err) {
    reportNvmlError(err, telemetry);
    return {
      wrote: true,
      error: `Set power limit of GPU ${identity.uuid} to ${watts(targetMw)} but cannot read it ` +
        `back: ${nvmlDetail(err)}`,
    };
  }
  if (after.limitMw !== targetMw) {
    return {
      wrote: true,
      error: `Power limit of GPU ${identity.uuid} is ${watts(after.limitMw)} after setting ` +
        `${watts(targetMw)}: the driver did not apply it (another tool or a BMC may be ` +
        `overriding it); will retry on the next pass`,
    };
  }
  return { wrote: true };
}

/** `Cannot set power limit on GPU <uuid>: NVML <codeName> (<hint>)`. */
export function setFailureMessage(uuid: string, err: unknown): string {
  return `Cannot set power limit on GPU ${uuid}: ${nvmlDetail(err)}`;
}

/** `Cannot read power limits of GPU <uuid>: NVML <codeName> (<hint>); leaving it unchanged`. */
export function readFailureMessage(uuid: string, err: unknown): string {
  return `Cannot read power limits of GPU ${uuid}: ${nvmlDetail(err)}; leaving it unchanged`;
}

/** NVML facts of an `NvmlError`-shaped error (fn, codeName, hint), or null for other errors. */
export function nvmlFacts(err: unknown): { fn: string; codeName: string; hint?: string } | null {
  if (!(err instanceof Error)) return null;
  const e = err as Error & { fn?: unknown; codeName?: unknown; hint?: unknown };
  if (typeof e.fn !== "string" || typeof e.codeName !== "string") return null;
  return {
    fn: e.fn,
    codeName: e.codeName,
    hint: typeof e.hint === "string" && e.hint !== "" ? e.hint : undefined,
  };
}

/** Count an NVML error in telemetry (no-op for other errors). */
export function reportNvmlError(err: unknown, telemetry: Telemetry): void {
  const facts = nvmlFacts(err);
  if (facts) telemetry.nvmlError(facts.fn, facts.codeName);
}

/** Milliwatts as watts for humans: `700 W`, `262.5 W`. */
export function watts(mw: number): string {
  return `${Math.round(mw / 100) / 10} W`;
}

/** An `error` outcome for a GPU. */
export function errorOutcome(
  identity: GpuIdentity,
  error: string,
  options: { reason: string; fromMw?: number | null; requestedMw?: number | null },
): GpuOutcome {
  return {
    ...ids(identity),
    action: "error",
    fromMw: options.fromMw ?? null,
    toMw: null,
    requestedMw: options.requestedMw ?? null,
    clamp: "none",
    reason: options.reason,
    error,
    summary: "",
  };
}

/** Save the journal if dirty; a failure marks the report not ok (the change is kept in memory). */
export function saveJournal(journal: Journal, report: PassReport): void {
  try {
    journal.save();
  } catch (err) {
    report.ok = false;
    report.error = errorText(err);
    getLogger(["gpu-power-agent", "reconcile"]).error("{message}", { message: report.error });
  }
}

/** Fill `summary` of every outcome of a report (one line for humans per GPU). */
export function summarize(report: PassReport): void {
  for (const g of report.gpus) g.summary = describeOutcome(g, report.dryRun);
}

/** One human line describing an outcome. */
export function describeOutcome(g: GpuOutcome, dryRun: boolean): string {
  const from = g.fromMw === null ? "?" : watts(g.fromMw);
  const to = g.toMw === null ? "?" : watts(g.toMw);
  const why = g.reason ? ` (${g.reason})` : "";
  const would = dryRun ? "would set " : "";
  switch (g.action) {
    case "error":
      return g.error ?? "error";
    case "skipped":
      return `unchanged at ${from}${why}`;
    case "none":
      return g.reason ? `in sync at ${to}${why}` : `unmanaged at ${from}`;
    case "apply":
      return `${would}${from} → ${to}${why}`;
    case "drift":
      return `${would}${from} → ${to} (drift corrected${g.reason ? `; ${g.reason}` : ""})`;
    case "restore":
      return g.fromMw === g.toMw
        ? `${dryRun ? "would release, " : "released, "}already at ${to}${why}`
        : `${would}${from} → ${to}${why}`;
  }
}

function nvmlDetail(err: unknown): string {
  const facts = nvmlFacts(err);
  if (!facts) return errorText(err);
  return `NVML ${facts.codeName}${facts.hint ? ` (${facts.hint})` : ""}`;
}

function ids(identity: GpuIdentity): Pick<GpuOutcome, "uuid" | "index" | "name"> {
  return { uuid: identity.uuid, index: identity.index, name: identity.name };
}

function finish(report: PassReport, clock: Clock): PassReport {
  summarize(report);
  report.durationMs = Math.max(0, clock.now() - report.startedMs);
  return report;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A report with no outcomes yet; `pass.ts` and `restoreAll` fill it in. */
export function emptyReport(
  fields: Pick<PassReport, "dryRun" | "desiredKnown" | "startedMs">,
): PassReport {
  return { gpus: [], writes: 0, ok: true, absentUuids: [], durationMs: 0, ...fields };
}
