/**
 * What a source of desired caps (caps file, Kubernetes pods) offers the reconciler.
 */
import type { GpuIdentity } from "../nvml/gpu_control.ts";
import type { DesiredCaps } from "../policy/desired.ts";
import type { Observation } from "../reconcile/observe.ts";
import type { GpuOutcome } from "../reconcile/report.ts";
import type { EffectiveBudget } from "./budget_annotation.ts";
import type { PodResourcesHealth } from "./pod_resources_tracker.ts";

export type { DesiredCap, DesiredCaps, DesiredKind, PodRef } from "../policy/desired.ts";

/** What a source knows about one GPU when computing desired caps. */
export interface GpuView extends GpuIdentity {
  /** Vendor default limit in milliwatts (for percent rules). */
  defaultMw: number;
  /** Smallest and largest settable limit, milliwatts (already read this pass: no NVML call). */
  minMw: number;
  maxMw: number;
  /**
   * Compute PIDs on this GPU observed this pass (MIG rolled up), or null when they were not read
   * (the source does not need them) or could not be read (see `pidsError`).
   */
  pids: readonly number[] | null;
  /** Why the PIDs could not be read this pass. */
  pidsError?: string;
  /**
   * UUIDs of the GPU's MIG devices observed this pass (empty when MIG is off); absent when not
   * read (the source does not need them), null when unreadable.
   */
  migDeviceUuids?: readonly string[] | null;
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
  /** True when `desired()` needs the compute PIDs of each GPU (observed once per pass for it). */
  readonly needsPids?: boolean;
  /** True when `desired()` needs the MIG device UUIDs of each GPU (observed once per pass). */
  readonly needsMigDevices?: boolean;
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
  /**
   * What happened this pass, after actuation: the outcomes are the one source of what the source
   * tells others (Kubernetes Events). Not called in dry run.
   */
  report?(outcomes: readonly GpuOutcome[]): void;
  /**
   * The node power budget in force now (caps file `budget`, node annotation); absent or
   * `budgetMw: null`: no budget. Read once per pass, after `desired()`.
   */
  budget?(): EffectiveBudget;
  /** Current health. */
  health(): SourceHealth;
  /**
   * Freshness of the kubelet's PodResources when the source maps pods to GPUs through them
   * (metrics); absent or null otherwise. A source wrapping another forwards it.
   */
  podResourcesHealth?(): PodResourcesHealth | null;
  /** Stop watching. Idempotent. */
  stop(): Promise<void>;
}

/** What sources see: the GPUs whose limits could be read (unsupported ones too are left out). */
export function gpuViews(observation: Observation): GpuView[] {
  return observation.gpus.flatMap((g) =>
    g.limits
      ? [{
        index: g.index,
        uuid: g.uuid,
        name: g.name,
        pciBusId: g.pciBusId,
        defaultMw: g.limits.defaultMw,
        minMw: g.limits.minMw,
        maxMw: g.limits.maxMw,
        pids: g.pids,
        ...(g.migDeviceUuids !== undefined ? { migDeviceUuids: g.migDeviceUuids } : {}),
        ...(g.pidsError !== undefined ? { pidsError: g.pidsError } : {}),
      }]
      : []
  );
}
