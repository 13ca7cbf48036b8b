/**
 * Which GPUs of this node each pod was allocated, from the kubelet's PodResources answer (pure).
 *
 * - Only devices of tracked resources count: `nvidia.com/gpu` and the MIG resources
 *   `nvidia.com/mig-*` by default (`--gpu-resource-names`; a trailing `*` matches any suffix).
 * - A GPU UUID maps to itself. A time-slicing replica (`GPU-…::3`, NVIDIA device plugin) maps to
 *   its GPU. A MIG device UUID (`MIG-…`) maps to its parent GPU through a table built from NVML
 *   ({@linkcode migParentTable}); the pre-R470 form `MIG-GPU-<uuid>/<gi>/<ci>` names its parent.
 * - Any other ID (another node's GPU, an index from `DEVICE_ID_STRATEGY=index`, a MIG device NVML
 *   does not list) is returned as unknown: nothing is applied for it, and
 *   {@linkcode UnknownDeviceWarnings} lets the caller warn once per ID.
 *
 * @module
 */

import type { PodAllocation } from "./pod_resources.ts";

/** Resource names tracked by default: whole GPUs and MIG devices of the NVIDIA device plugin. */
export const DEFAULT_GPU_RESOURCE_NAMES: readonly string[] = Object.freeze([
  "nvidia.com/gpu",
  "nvidia.com/mig-*",
]);

/** `<domain>/<name>`, optionally ending in `*` (prefix match). */
const RESOURCE_NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?\/([A-Za-z0-9][-A-Za-z0-9_.]*)?\*?$/;

/**
 * Parses a comma-separated list of resource names (`--gpu-resource-names`). Throws an `Error`
 * naming the bad entry when one is not `<domain>/<name>` (with an optional trailing `*`).
 */
export function parseGpuResourceNames(text: string): string[] {
  const names = text.split(",").map((name) => name.trim()).filter((name) => name !== "");
  if (names.length === 0) throw new Error("expected at least one resource name");
  for (const name of names) {
    if (!RESOURCE_NAME.test(name) || name.endsWith("/")) {
      throw new Error(
        `"${name}" is not a resource name like nvidia.com/gpu or nvidia.com/mig-* ` +
          "(a trailing * matches any suffix)",
      );
    }
  }
  return [...new Set(names)];
}

/** A predicate for "this resource name is tracked" from patterns (trailing `*` = prefix). */
export function gpuResourceMatcher(
  patterns: readonly string[] = DEFAULT_GPU_RESOURCE_NAMES,
): (resourceName: string) => boolean {
  const exact = new Set(patterns.filter((p) => !p.endsWith("*")));
  const prefixes = patterns.filter((p) => p.endsWith("*")).map((p) => p.slice(0, -1));
  return (name) => exact.has(name) || prefixes.some((prefix) => name.startsWith(prefix));
}

/** A pod, by namespace and name. */
export interface PodRef {
  namespace: string;
  name: string;
}

/** A tracked device ID that maps to no GPU of this node. */
export interface UnknownDevice {
  deviceId: string;
  resourceName: string;
  pod: PodRef;
}

/** The GPUs of this node and their MIG devices, as the observation reports them. */
export interface GpuDevices {
  uuid: string;
  /** UUIDs of the GPU's MIG devices (empty when MIG is off). */
  migDeviceUuids: readonly string[];
}

/** MIG device UUID → parent GPU UUID. */
export function migParentTable(gpus: Iterable<GpuDevices>): Map<string, string> {
  const table = new Map<string, string>();
  for (const gpu of gpus) {
    for (const mig of gpu.migDeviceUuids) table.set(mig, gpu.uuid);
  }
  return table;
}

/** Options of {@linkcode mapAllocationsToGpus}. */
export interface MapAllocationsOptions {
  /** The GPUs of this node with their MIG devices. */
  gpus: Iterable<GpuDevices>;
  /** Tracked resource names (default {@linkcode DEFAULT_GPU_RESOURCE_NAMES}). */
  resourceNames?: readonly string[];
}

/** Which pods were allocated each GPU, and the device IDs that map to none. */
export interface GpuAllocations {
  /** GPU UUID → pods allocated it (or one of its MIG devices), sorted, without repeats. */
  podsByGpu: ReadonlyMap<string, readonly PodRef[]>;
  /** Tracked device IDs that map to no GPU of this node, in answer order. */
  unknown: readonly UnknownDevice[];
}

/** The GPU UUID a device ID stands for, or null when it is none of this node's GPUs. */
export function gpuOfDeviceId(
  deviceId: string,
  gpuUuids: ReadonlySet<string>,
  migParents: ReadonlyMap<string, string>,
): string | null {
  // Time-slicing replicas of the NVIDIA device plugin: `<uuid>::<replica>`.
  const id = deviceId.replace(/::\d+$/, "");
  if (gpuUuids.has(id)) return id;
  const parent = migParents.get(id);
  if (parent !== undefined) return parent;
  // Pre-R470 MIG UUIDs: `MIG-GPU-<parent uuid>/<GPU instance>/<compute instance>`.
  const legacy = /^MIG-(GPU-[^/]+)\/\d+\/\d+$/.exec(id);
  if (legacy && gpuUuids.has(legacy[1])) return legacy[1];
  return null;
}

function comparePods(a: PodRef, b: PodRef): number {
  return a.namespace === b.namespace
    ? (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
    : (a.namespace < b.namespace ? -1 : 1);
}

/** Maps the kubelet's allocations to this node's GPUs. */
export function mapAllocationsToGpus(
  allocations: readonly PodAllocation[],
  options: MapAllocationsOptions,
): GpuAllocations {
  const gpus = [...options.gpus];
  const gpuUuids = new Set(gpus.map((gpu) => gpu.uuid));
  const migParents = migParentTable(gpus);
  const tracked = gpuResourceMatcher(options.resourceNames ?? DEFAULT_GPU_RESOURCE_NAMES);
  const keys = new Map<string, Set<string>>();
  const pods = new Map<string, PodRef[]>();
  const unknown: UnknownDevice[] = [];
  for (const allocation of allocations) {
    const pod = { namespace: allocation.namespace, name: allocation.name };
    const podKey = `${pod.namespace}/${pod.name}`;
    for (const container of allocation.containers) {
      for (const devices of container.devices) {
        if (!tracked(devices.resourceName)) continue;
        for (const deviceId of devices.deviceIds) {
          const gpu = gpuOfDeviceId(deviceId, gpuUuids, migParents);
          if (gpu === null) {
            unknown.push({ deviceId, resourceName: devices.resourceName, pod });
            continue;
          }
          let seen = keys.get(gpu);
          if (seen === undefined) keys.set(gpu, seen = new Set());
          if (seen.has(podKey)) continue;
          seen.add(podKey);
          pods.set(gpu, [...(pods.get(gpu) ?? []), pod]);
        }
      }
    }
  }
  for (const list of pods.values()) list.sort(comparePods);
  return { podsByGpu: pods, unknown };
}

/**
 * Remembers which unknown device IDs were already reported, so that each is warned about once
 * (at most `limit` IDs are remembered; beyond that the memory starts over).
 */
export class UnknownDeviceWarnings {
  #reported = new Set<string>();
  #limit: number;

  constructor(limit = 4096) {
    this.#limit = limit;
  }

  /** The devices of `unknown` not reported before (each ID once), now marked reported. */
  fresh(unknown: readonly UnknownDevice[]): UnknownDevice[] {
    const out: UnknownDevice[] = [];
    for (const device of unknown) {
      if (this.#reported.has(device.deviceId)) continue;
      if (this.#reported.size >= this.#limit) this.#reported.clear();
      this.#reported.add(device.deviceId);
      out.push(device);
    }
    return out;
  }
}

/** The container resources of a pod spec, as far as {@linkcode podRequestsGpuResource} reads. */
export interface ContainerResourceSpec {
  resources?: {
    limits?: Record<string, unknown> | null;
    requests?: Record<string, unknown> | null;
  } | null;
}

/**
 * Whether a pod's containers (init containers included, when passed) request a tracked resource:
 * only such a pod's devices are worth waiting for after a pod event.
 */
export function podRequestsGpuResource(
  containers: readonly ContainerResourceSpec[],
  resourceNames: readonly string[] = DEFAULT_GPU_RESOURCE_NAMES,
): boolean {
  const tracked = gpuResourceMatcher(resourceNames);
  return containers.some((container) =>
    [container.resources?.limits, container.resources?.requests].some((list) =>
      Object.keys(list ?? {}).some(tracked)
    )
  );
}
