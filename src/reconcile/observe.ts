/**
 * Observe: one snapshot of every GPU per pass — identity, power limits (or why they cannot be
 * read), the compute PIDs and the MIG device UUIDs when the source needs them. Sources and the
 * planner work from this snapshot only; nothing else reads NVML during a pass.
 *
 * NVML cost: `listGpus()` + one `readLimits()` per GPU (+ one `computePids()` per GPU with
 * `pids: true`, + one `migDeviceUuids()` per GPU with `migDevices: true`).
 *
 * @module
 */
import type { GpuControl, GpuIdentity, PowerLimits } from "../nvml/gpu_control.ts";
import { describeNvmlError, isNotSupported, NvmlError } from "../nvml/errors.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import { noopTelemetry } from "../metrics/telemetry.ts";

/** One GPU as observed at the start of a pass. */
export interface ObservedGpu extends GpuIdentity {
  /** Limits, or null when reading them failed (see `error`) or is not supported. */
  limits: PowerLimits | null;
  /** Why the limits could not be read. */
  error?: string;
  /** The GPU does not support software power limits (NVML NOT_SUPPORTED): never touched. */
  unsupported?: boolean;
  /** Compute PIDs (MIG rolled up); null when not read this pass or unreadable (`pidsError`). */
  pids: readonly number[] | null;
  pidsError?: string;
  /**
   * UUIDs of the GPU's MIG devices (empty when MIG is off); absent when not read this pass, null
   * when unreadable (`migError`).
   */
  migDeviceUuids?: readonly string[] | null;
  migError?: string;
}

/** The GPUs as observed at the start of a pass. */
export interface Observation {
  gpus: ObservedGpu[];
  /** Set when the GPUs could not be listed at all. */
  error?: string;
}

/** Options of `observeGpus`. */
export interface ObserveOptions {
  telemetry?: Telemetry;
  /** Read each GPU's compute PIDs too (only when the source needs them: `CapSource.needsPids`). */
  pids?: boolean;
  /** Read each GPU's MIG device UUIDs too (`CapSource.needsMigDevices`). */
  migDevices?: boolean;
}

/** List GPUs and read each one once. Failures are recorded per GPU, never thrown. */
export function observeGpus(gpu: GpuControl, options: ObserveOptions = {}): Observation {
  const telemetry = options.telemetry ?? noopTelemetry;
  let identities: GpuIdentity[];
  try {
    identities = gpu.listGpus();
  } catch (err) {
    countNvmlError(err, telemetry);
    return { gpus: [], error: `Cannot list GPUs: ${errorText(err)}` };
  }
  return {
    gpus: identities.sort((a, b) => a.index - b.index).map((identity) => {
      const observed: ObservedGpu = { ...identity, limits: null, pids: null };
      try {
        observed.limits = gpu.readLimits(identity.index);
      } catch (err) {
        countNvmlError(err, telemetry);
        if (isNotSupported(err)) {
          observed.unsupported = true;
          observed.error = unsupportedMessage(identity.uuid);
        } else {
          observed.error = readFailureMessage(identity.uuid, err);
        }
      }
      if (options.pids) {
        try {
          observed.pids = gpu.computePids(identity.index);
        } catch (err) {
          countNvmlError(err, telemetry);
          observed.pidsError = errorText(err);
        }
      }
      if (options.migDevices) {
        try {
          observed.migDeviceUuids = gpu.migDeviceUuids(identity.index);
        } catch (err) {
          countNvmlError(err, telemetry);
          observed.migDeviceUuids = null;
          observed.migError = errorText(err);
        }
      }
      return observed;
    }),
  };
}

/** Count an NVML error in telemetry (no-op for other errors). */
export function countNvmlError(err: unknown, telemetry: Telemetry): void {
  if (err instanceof NvmlError) telemetry.nvmlError(err.fn, err.codeName);
}

/** `Cannot read power limits of GPU <uuid>: NVML <codeName> (<hint>); leaving it unchanged`. */
export function readFailureMessage(uuid: string, err: unknown): string {
  return `Cannot read power limits of GPU ${uuid}: ${describeNvmlError(err)}; leaving it unchanged`;
}

/** Why an unsupported GPU is left alone. */
export function unsupportedMessage(uuid: string): string {
  return `GPU ${uuid} does not support software power limits (NVML NOT_SUPPORTED); ` +
    `leaving it alone`;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
