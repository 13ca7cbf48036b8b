/**
 * Per-GPU facts for the `status` command and the metrics scrape: what the driver says now, what
 * the journal knows, and what the source wants. The one place those facts are gathered.
 */
import type { GpuControl, PowerLimits, PowerSample } from "../nvml/gpu_control.ts";
import { isNotSupported } from "../nvml/errors.ts";
import type { DesiredCaps, DesiredKind } from "../policy/desired.ts";
import type { Journal } from "../state/journal.ts";

/** Facts about one GPU; a field is null when it could not be read (see `error`) or is unsupported. */
export interface GpuStatus {
  index: number;
  uuid: string;
  name: string;
  pciBusId: string;
  drawMw: number | null;
  limitMw: number | null;
  enforcedMw: number | null;
  defaultMw: number | null;
  minMw: number | null;
  maxMw: number | null;
  energyMj: number | null;
  /** True when the agent changed this GPU and has not restored it (journal entry present). */
  managed: boolean;
  /** Pre-agent limit (journal), null when unmanaged. */
  baselineMw: number | null;
  /** What the agent last applied (journal), null when unmanaged. */
  appliedMw: number | null;
  /** Desired cap before the device clamp, null when none or unknown. */
  desiredMw: number | null;
  desiredReason: string | null;
  desiredKind: DesiredKind | null;
  /** False when the GPU does not support software power limits (NVML NOT_SUPPORTED). */
  supported: boolean;
  /**
   * True when the GPU holds what the agent wants on it, false when it does not, null when
   * unknown (nothing known to be wanted).
   */
  enforced: boolean | null;
  /** Read failures, `; `-joined. */
  error?: string;
}

/** Options of `collectGpuStatus`. */
export interface CollectGpuStatusOptions {
  journal: Journal;
  /** Desired caps (e.g. `loop.lastDesired`); omitted or null: desired fields are null. */
  desired?: DesiredCaps | null;
  /**
   * Whether the GPU holds what the agent wants (the running agent's last outcome). Default: a
   * journaled GPU is enforced when its limit equals what the agent applied; else unknown.
   */
  enforced?: (uuid: string) => boolean | null;
  /** GPUs known to be unsupported (e.g. their set failed NOT_SUPPORTED). */
  unsupported?: (uuid: string) => boolean;
}

/**
 * One `GpuStatus` per GPU, in index order. Per-GPU read failures are reported in `error`;
 * a failure to list GPUs throws (the caller decides: exit code or failed scrape).
 */
export function collectGpuStatus(gpu: GpuControl, options: CollectGpuStatusOptions): GpuStatus[] {
  return gpu.listGpus().sort((a, b) => a.index - b.index).map((id) => {
    const errors: string[] = [];
    let limits: PowerLimits | null = null;
    let sample: PowerSample | null = null;
    let supported = !(options.unsupported?.(id.uuid) ?? false);
    try {
      limits = gpu.readLimits(id.index);
    } catch (err) {
      if (isNotSupported(err)) supported = false;
      else errors.push(`cannot read power limits: ${errorText(err)}`);
    }
    try {
      sample = gpu.readSample(id.index);
    } catch (err) {
      errors.push(`cannot read power draw: ${errorText(err)}`);
    }
    const entry = options.journal.get(id.uuid);
    const want = options.desired?.get(id.uuid);
    return {
      index: id.index,
      uuid: id.uuid,
      name: id.name,
      pciBusId: id.pciBusId,
      drawMw: sample?.drawMw ?? null,
      limitMw: limits?.limitMw ?? null,
      enforcedMw: limits?.enforcedMw ?? null,
      defaultMw: limits?.defaultMw ?? null,
      minMw: limits?.minMw ?? null,
      maxMw: limits?.maxMw ?? null,
      energyMj: sample?.energyMj ?? null,
      managed: entry !== undefined,
      baselineMw: entry?.baselineMw ?? null,
      appliedMw: entry?.appliedMw ?? null,
      desiredMw: want?.mw ?? null,
      desiredReason: want?.reason ?? null,
      desiredKind: want?.kind ?? null,
      supported,
      enforced: options.enforced
        ? options.enforced(id.uuid)
        : entry && limits
        ? limits.limitMw === entry.appliedMw
        : null,
      ...(errors.length > 0 ? { error: errors.join("; ") } : {}),
    };
  });
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
