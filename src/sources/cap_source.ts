/**
 * What a source of desired caps (caps file, Kubernetes pods) offers the reconciler.
 */
import type { GpuIdentity } from "../nvml/gpu_control.ts";

/** Why a GPU is capped; drives logs, metrics and Kubernetes events. */
export type DesiredKind = "file" | "pod" | "safe-default";

/** The cap a source wants on one GPU, before the device min/max clamp. */
export interface DesiredCap {
  /** Requested limit in milliwatts (source floor/ceiling already applied, device clamp not). */
  mw: number;
  /** Human reason, e.g. `caps file rule gpus[1]`, `pod ns/name`, `safe default: pods disagree`. */
  reason: string;
  kind: DesiredKind;
}

/** Desired caps by GPU UUID. A GPU absent from the map is unmanaged (returns to its baseline). */
export type DesiredCaps = Map<string, DesiredCap>;

/** What a source knows about one GPU when computing desired caps. */
export interface GpuView extends GpuIdentity {
  /** Vendor default limit in milliwatts (for percent rules). */
  defaultMw: number;
  /** Smallest and largest settable limit, milliwatts (already read this pass: no NVML call). */
  minMw: number;
  maxMw: number;
}

/** Freshness of a source, for readiness and metrics. */
export interface SourceHealth {
  /** True once the source has loaded/synced successfully at least once. */
  synced: boolean;
  /** Milliseconds since epoch of the last successful load/sync/watch event; null if never. */
  lastSuccessMs: number | null;
  /** Why the source is unhealthy now (e.g. `watch failed: 403 Forbidden`); undefined when healthy. */
  problem?: string;
}

/** A source of desired caps. */
export interface CapSource {
  /** `file` or `kubernetes`: used as a metric label. */
  readonly name: string;
  /**
   * Load/sync for the first time and begin watching. Calls `onChange` whenever the desired caps
   * may have changed (debounced by the source). Rejects on invalid configuration at start.
   */
  start(onChange: () => void): Promise<void>;
  /**
   * Desired caps for these GPUs now, or null when the source cannot say (not synced): the
   * reconciler then changes nothing.
   */
  desired(gpus: readonly GpuView[]): DesiredCaps | null;
  /** Current health. */
  health(): SourceHealth;
  /** Stop watching. Idempotent. */
  stop(): Promise<void>;
}
