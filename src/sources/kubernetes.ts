/**
 * Kubernetes mode: caps from pod annotations, on exactly the GPUs those pods use.
 *
 * Pods of this node come from an informer (LIST + WATCH with a `spec.nodeName` field selector).
 * A GPU's pods are found two ways (`--pod-gpu-mapping`):
 * - processes: the compute PIDs the reconciler observed this pass (the source never calls NVML)
 *   → `/proc/<pid>/cgroup` → pod UID;
 * - pod-resources: the devices the kubelet allocated to each pod (PodResources `List`, kept by a
 *   {@linkcode PodResourcesTracker}: on a pod event of a pod requesting a GPU resource, on
 *   deletions, and periodically), mapped to GPUs by UUID (MIG devices to their parent GPU);
 * - auto: both (a GPU's pods = those allocated it ∪ those whose processes run on it) once the
 *   socket has answered, processes only while it never has.
 * Only pods the informer knows (live, non-terminal) count. The per-GPU policy is `decideGpuCap`
 * (fail closed to the safe default). When the API server or the kubelet cannot be read, caps
 * stay as they are: `desired()` keeps answering from the last known pods and allocations, and
 * `health()` says why (readiness turns stale after `--stale-after`). Events are posted from
 * `report()`, after the outcome is known, never in dry run.
 */
import { getLogger } from "@logtape/logtape";
import type { CapSource, DesiredCap, DesiredCaps, GpuView, SourceHealth } from "./cap_source.ts";
import type { GpuOutcome } from "../reconcile/report.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import { decideGpuCap, type OutcomeEvent, outcomeEvents } from "../policy/shared_gpu.ts";
import { DEFAULT_POWER_ANNOTATION } from "./annotation.ts";
import { type KubeClient, loadKubeClient } from "./kubernetes_client.ts";
import { type KubePod, PodInformer } from "./kubernetes_informer.ts";
import type { BackoffOptions, ListWatchStats, WatchEventType } from "./kubernetes_list_watch.ts";
import { KubeEventRecorder } from "./kubernetes_events.ts";
import { PodIndex, type PodRecord } from "./kubernetes_pod_index.ts";
import type { PodAllocation, PodResourcesClient } from "./pod_resources.ts";
import {
  DEFAULT_GPU_RESOURCE_NAMES,
  mapAllocationsToGpus,
  type PodRef,
  podRequestsGpuResource,
  UnknownDeviceWarnings,
} from "./pod_resources_devices.ts";
import { type PodResourcesHealth, PodResourcesTracker } from "./pod_resources_tracker.ts";

/** Logger of this module (logtape keeps one per category; configuration applies later too). */
const log = getLogger(["gpu-power-agent", "kubernetes"]);

/** How pods are mapped to GPUs (`--pod-gpu-mapping`). */
export type PodGpuMapping = "auto" | "pod-resources" | "processes";

/** Knobs of the PodResources mapping (tests shorten the delays or pass their own client). */
export interface PodResourcesOptions {
  /** A client to use instead of one on `podResourcesSocket`. */
  client?: Pick<PodResourcesClient, "list" | "socketPath">;
  /** Safety-net List period (default 30 s). */
  resyncMs?: number;
  /** Delays between Lists while waiting for a pod's devices (default about 5 s in all). */
  retryDelaysMs?: readonly number[];
  /** First retry after a failed List, doubling up to `resyncMs` (default 1 s). */
  failureRetryMs?: number;
}

/** Options of `createKubernetesCapSource` (the CLI maps flags to these). */
export interface KubernetesSourceOptions {
  /** `--node-name` / `NODE_NAME`: only pods with `spec.nodeName` = this are read. */
  nodeName: string;
  /** `--namespace`: read pods of this namespace only (namespace-scoped RBAC). */
  namespace?: string;
  /** `--annotation` (default `dynamo.nvidia.com/gpu-power-limit`). */
  annotation?: string;
  /** `--safe-default-watts` in milliwatts. */
  safeDefaultMw: number;
  /** `--allowed-namespaces`: annotations of pods elsewhere are ignored. */
  allowedNamespaces?: string[];
  /** `--min-watts` in milliwatts (floor before the device clamp). */
  minMw?: number;
  /** `--max-watts` in milliwatts (ceiling before the device clamp). */
  maxMw?: number;
  /** `--proc-root` (default /proc in the CLI). */
  procRoot: string;
  /** `--kubeconfig`; else in-cluster, else `KUBECONFIG` / `~/.kube/config`. */
  kubeconfigPath?: string;
  /** `--events` / `--no-events`. */
  events: boolean;
  telemetry: Telemetry;
  clock?: Clock;
  /** `--stale-after` in ms: a watch that received nothing for max(this, 90 s) is reopened. */
  staleAfterMs: number;
  /** Reconnect backoff (default 500 ms → 30 s). */
  backoff?: BackoffOptions;
  /** Server-side watch timeout base (default 300 s; each watch asks t..1.5 t). */
  watchTimeoutSeconds?: number;
  /** Client-side: reopen a watch that sent nothing for this long (default max(staleAfterMs, 90 s)). */
  watchIdleMs?: number;
  /** LIST / event POST / watch-headers timeout (default 30 s). */
  requestTimeoutMs?: number;
  /**
   * While an annotated pod has no GPU yet, `onChange` is called after this delay (doubling up
   * to `probeMaxMs`) so the mapping is found when its process starts (default 2 s → 30 s).
   */
  probeIntervalMs?: number;
  probeMaxMs?: number;
  /** Jitter source (default Math.random). */
  random?: () => number;
  /** `--pod-gpu-mapping` (default `processes` here; the CLI's default is `auto`). */
  podGpuMapping?: PodGpuMapping;
  /** `--pod-resources-socket` (default `/var/lib/kubelet/pod-resources/kubelet.sock`). */
  podResourcesSocket?: string;
  /** `--gpu-resource-names` (default `nvidia.com/gpu`, `nvidia.com/mig-*`). */
  gpuResourceNames?: readonly string[];
  podResources?: PodResourcesOptions;
}

/** Counters for tests and `status`. */
export interface KubernetesSourceStats {
  informer: ListWatchStats;
  pods: number;
  cachedPids: number;
  eventsSent: number;
  /** Pods with an annotation and no GPU yet (probed). */
  pendingPods: number;
  probing: boolean;
  /** The kubelet's PodResources, when the mapping uses them (null: `processes`). */
  podResources: (PodResourcesHealth & { pods: number }) | null;
}

/** The Kubernetes cap source. Create with `createKubernetesCapSource`. */
export class KubernetesCapSource implements CapSource {
  readonly name = "kubernetes";
  #o: KubernetesSourceOptions & { annotation: string; clock: Clock };
  #client: KubeClient;
  #informer: PodInformer;
  #index: PodIndex;
  #recorder: KubeEventRecorder | undefined;
  #onChange: (() => void) | undefined;
  #stopped = false;
  #lastCaps: DesiredCaps | null = null;
  #lastKind = new Map<string, DesiredCap["kind"]>();
  /** CapRejected events of the last decision per GPU UUID, posted with the outcome. */
  #rejected = new Map<string, OutcomeEvent[]>();
  #invalidLogged = new Map<string, string>();
  #ignoredLogged = new Set<string>();
  #scanFailuresLogged = new Set<string>();
  #probeTimer: number | null = null;
  #probeDelay: number;
  #pending = new Set<string>();
  #mapping: PodGpuMapping;
  #resourceNames: readonly string[];
  #tracker: PodResourcesTracker | null = null;
  #podResourcesAnswered = false;
  #announcedFallback = false;
  #unknownDevices = new UnknownDeviceWarnings();
  /** Last readable MIG device UUIDs per GPU UUID (a failed read keeps the mapping). */
  #migDevices = new Map<string, readonly string[]>();
  /** UIDs of the pods allocated a GPU of this node, as of the last `desired()`. */
  #allocatedUids = new Set<string>();
  #migCheckedFor: readonly PodAllocation[] | null = null;
  #migAllocated = false;

  constructor(client: KubeClient, options: KubernetesSourceOptions) {
    this.#o = {
      ...options,
      annotation: options.annotation || DEFAULT_POWER_ANNOTATION,
      clock: options.clock ?? systemClock,
    };
    this.#client = client;
    this.#index = new PodIndex(this.#o.annotation);
    this.#probeDelay = options.probeIntervalMs ?? 2000;
    this.#mapping = options.podGpuMapping ?? "processes";
    this.#resourceNames = options.gpuResourceNames ?? DEFAULT_GPU_RESOURCE_NAMES;
    this.#informer = new PodInformer(client, {
      nodeName: options.nodeName,
      namespace: options.namespace,
      telemetry: options.telemetry,
      clock: this.#o.clock,
      random: options.random,
      backoff: options.backoff,
      watchTimeoutSeconds: options.watchTimeoutSeconds,
      watchIdleMs: options.watchIdleMs ?? Math.max(options.staleAfterMs, 90_000),
      // Only the power annotation is read: drop the others (last-applied-configuration…).
      annotationKeys: [this.#o.annotation],
      handlers: {
        replace: (pods) => this.#replace(pods),
        event: (type, pod) => this.#event(type, pod),
      },
    });
    if (options.events) {
      this.#recorder = new KubeEventRecorder(client, {
        nodeName: options.nodeName,
        telemetry: options.telemetry,
        clock: this.#o.clock,
      });
    }
  }

  /** The client (the node budget watch shares it; stop it before this source). */
  get client(): KubeClient {
    return this.#client;
  }

  /** PIDs are needed unless only the kubelet's allocations map pods to GPUs. */
  get needsPids(): boolean {
    return this.#mapping !== "pod-resources";
  }

  /**
   * MIG device UUIDs are needed (read each pass) only while the kubelet reports a MIG device
   * (`MIG-…`): they map it to its GPU.
   */
  get needsMigDevices(): boolean {
    const allocations = this.#tracker?.allocations();
    if (!allocations) return false;
    if (this.#migCheckedFor !== allocations) {
      this.#migCheckedFor = allocations;
      this.#migAllocated = allocations.some((pod) =>
        pod.containers.some((c) => c.devices.some((d) => d.deviceIds.some(isMigDeviceId)))
      );
    }
    return this.#migAllocated;
  }

  /** How pods are mapped to GPUs. */
  get podGpuMapping(): PodGpuMapping {
    return this.#mapping;
  }

  /** API server this source reads. */
  get server(): string {
    return this.#client.server;
  }

  /**
   * LIST the node's pods and begin watching. Resolves after the first LIST attempt; when it
   * failed, it is retried in the background (`health().problem` says why) and `desired()`
   * answers null until a LIST succeeds.
   */
  async start(onChange: () => void): Promise<void> {
    this.#onChange = onChange;
    log.info(
      "Kubernetes source: watching pods on node {node}{scope} via {server}, annotation {key}",
      {
        node: this.#o.nodeName,
        scope: this.#o.namespace ? ` in namespace ${this.#o.namespace}` : "",
        server: this.#client.server,
        key: this.#o.annotation,
      },
    );
    await Promise.all([
      this.#informer.start(),
      this.#mapping === "processes" ? undefined : this.#startPodResources(),
    ]);
  }

  /** Desired caps per GPU; null until the first LIST. Never throws. */
  desired(gpus: readonly GpuView[]): DesiredCaps | null {
    if (!this.#informer.synced) return null;
    // Without a first answer from the kubelet nothing is known about allocations: change nothing.
    if (this.#mapping === "pod-resources" && !this.#tracker?.health().synced) return null;
    try {
      let byGpu = new Map<string, PodRecord[]>();
      if (this.needsPids) {
        const scan = this.#index.scan(gpus, {
          procRoot: this.#o.procRoot,
          nowMs: this.#o.clock.now(),
        });
        for (const failure of scan.failed) {
          if (this.#scanFailuresLogged.has(failure.uuid)) continue;
          this.#scanFailuresLogged.add(failure.uuid);
          log.warn(
            "Cannot list processes on GPU {uuid}; keeping its known pods: {error}",
            failure,
          );
        }
        if (scan.failed.length === 0) this.#scanFailuresLogged.clear();
        byGpu = this.#index.podsByGpu();
      }
      byGpu = this.#withAllocatedPods(byGpu, gpus);
      const caps: DesiredCaps = new Map();
      this.#rejected.clear();
      for (const view of gpus) {
        const pods = byGpu.get(view.uuid) ?? [];
        const decision = decideGpuCap(
          pods.map((p) => ({
            namespace: p.namespace,
            name: p.name,
            uid: p.uid,
            annotation: p.annotation,
          })),
          {
            safeDefaultMw: this.#o.safeDefaultMw,
            allowedNamespaces: this.#o.allowedNamespaces,
            minMw: this.#o.minMw,
            maxMw: this.#o.maxMw,
            gpuLabel: `GPU ${view.index} (${view.uuid})`,
          },
        );
        if (decision.cap) caps.set(view.uuid, decision.cap);
        this.#noteDecision(view, decision.cap);
        for (const ignored of decision.ignored) {
          const key = `${ignored.pod.uid}\u0000${view.uuid}`;
          if (this.#ignoredLogged.has(key)) continue;
          this.#ignoredLogged.add(key);
          log.warn(ignored.message);
        }
        if (decision.events.length > 0) this.#rejected.set(view.uuid, decision.events);
      }
      this.#updateProbe();
      this.#lastCaps = caps;
      return caps;
    } catch (error) {
      log.error("Computing desired caps from pods failed; keeping the last answer: {error}", {
        error: (error as Error).stack ?? String(error),
      });
      return this.#lastCaps;
    }
  }

  /**
   * Tell the pods what happened to their caps this pass (after actuation; nothing in dry run):
   * CapApplied/CapClamped/SafeDefaultApplied once the cap holds, CapNotApplied when it could not
   * be set, plus CapRejected for ignored/invalid annotations. Deduplicated per pod and GPU.
   */
  report(outcomes: readonly GpuOutcome[]): void {
    if (!this.#recorder) return;
    for (const outcome of outcomes) {
      if (outcome.action === "skipped") continue;
      const label = `GPU ${outcome.index} (${outcome.uuid})`;
      this.#recorder.record(outcome.uuid, [
        ...(this.#rejected.get(outcome.uuid) ?? []),
        ...outcomeEvents(outcome, label),
      ]);
    }
  }

  /**
   * Synced after the first LIST (and, with `pod-resources`, the first kubelet answer); a problem
   * while list/watch or the kubelet's List fails (caps are frozen meanwhile). With `auto`, a
   * kubelet that never answered is not a problem: pods map through their processes.
   */
  health(): SourceHealth {
    const informer = this.#informer.health();
    const kubelet = this.#tracker?.health();
    if (!kubelet || (this.#mapping === "auto" && !kubelet.synced)) return informer;
    const failing: Array<{ problem: string; lastSuccessMs: number | null }> = [];
    if (informer.problem !== undefined) {
      failing.push({ problem: informer.problem, lastSuccessMs: informer.lastSuccessMs });
    }
    if (kubelet.problem !== null) {
      failing.push({
        problem: `kubelet PodResources: ${kubelet.problem}`,
        lastSuccessMs: kubelet.lastSuccessMs,
      });
    }
    const health: SourceHealth = {
      synced: informer.synced && kubelet.synced,
      lastSuccessMs: informer.lastSuccessMs,
    };
    if (failing.length > 0) {
      health.problem = failing.map((f) => f.problem).join("; ");
      const since = failing.map((f) => f.lastSuccessMs).filter((ms) => ms !== null);
      if (since.length > 0) health.lastSuccessMs = Math.min(...since);
    }
    return health;
  }

  /** Freshness of the kubelet's allocations; null when the mapping does not use them. */
  podResourcesHealth(): PodResourcesHealth | null {
    return this.#tracker?.health() ?? null;
  }

  /** Counters. */
  stats(): KubernetesSourceStats {
    return {
      informer: this.#informer.stats(),
      pods: this.#index.size,
      cachedPids: this.#index.cachedPids,
      eventsSent: this.#recorder?.sent ?? 0,
      pendingPods: this.#pending.size,
      probing: this.#probeTimer !== null,
      podResources: this.#tracker
        ? { ...this.#tracker.health(), pods: this.#tracker.allocations().length }
        : null,
    };
  }

  /** Resolves when queued Kubernetes events were sent (tests). */
  async flushEvents(): Promise<void> {
    await this.#recorder?.flush();
  }

  /** Stop watching and emitting. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#clearProbe();
    this.#tracker?.stop();
    await this.#informer.stop();
    await this.#recorder?.stop();
    this.#client.close();
  }

  #noteDecision(view: GpuView, cap: DesiredCap | null): void {
    const before = this.#lastKind.get(view.uuid);
    const after = cap?.kind;
    if (before === after) return;
    if (after === undefined) this.#lastKind.delete(view.uuid);
    else this.#lastKind.set(view.uuid, after);
    if (after === "safe-default") {
      log.warn(
        "GPU {index} ({uuid}): {reason}",
        { index: view.index, uuid: view.uuid, reason: cap!.reason },
      );
    }
  }

  #replace(pods: KubePod[]): void {
    this.#index.replace(pods);
    for (const uid of [...this.#invalidLogged.keys()]) {
      if (!this.#index.get(uid)) this.#invalidLogged.delete(uid);
    }
    for (const pod of this.#index.pods()) this.#noteAnnotation(pod);
    // Pods may have come and gone meanwhile: ask the kubelet again too.
    if (this.#tracker?.health().synced) void this.#tracker.refresh();
    // First sync, or a relist after 410: always let the reconciler look.
    this.#notify();
  }

  #event(type: WatchEventType, pod: KubePod): void {
    const { before, after, hadGpus } = this.#index.apply(type, pod);
    const uid = pod.metadata.uid;
    let relevant: boolean;
    if (!after) {
      this.#recorder?.forgetPod(uid);
      this.#invalidLogged.delete(uid);
      relevant = hadGpus || before?.annotationValue !== undefined;
    } else {
      this.#noteAnnotation(after);
      relevant = before
        ? before.annotationValue !== after.annotationValue
        : after.annotationValue !== undefined || this.#index.hasProcess(uid) ||
          (this.#tracker?.hasDevices(after) ?? false);
    }
    if (this.#tracker) this.#askKubelet(pod, after !== undefined);
    if (relevant) this.#notify();
    // Only an annotated pod can start or stop waiting for its GPUs (churn of other pods is free).
    if (before?.annotationValue !== undefined || after?.annotationValue !== undefined) {
      this.#updateProbe();
    }
  }

  /**
   * A pod event for this node: a pod requesting a GPU resource whose devices the kubelet has not
   * reported yet → List until they appear; a GPU pod gone → List once (its devices are free).
   */
  #askKubelet(pod: KubePod, present: boolean): void {
    const tracker = this.#tracker!;
    const ref: PodRef = { namespace: pod.metadata.namespace, name: pod.metadata.name };
    const requests = podRequestsGpuResource(
      [...(pod.spec?.containers ?? []), ...(pod.spec?.initContainers ?? [])],
      this.#resourceNames,
    );
    if (present) {
      if (requests && !tracker.hasDevices(ref)) void tracker.refresh(ref);
    } else if (requests || this.#allocatedUids.has(pod.metadata.uid)) {
      void tracker.refresh();
    }
  }

  async #startPodResources(): Promise<void> {
    const o = this.#o.podResources ?? {};
    let client = o.client;
    if (!client) {
      // Loaded only when used: node:http2 costs about 13 MiB.
      const { createPodResourcesClient } = await import("./pod_resources.ts");
      client = createPodResourcesClient({ socketPath: this.#o.podResourcesSocket });
    }
    const auto = this.#mapping === "auto";
    const tracker = new PodResourcesTracker(client, {
      resourceNames: this.#resourceNames,
      resyncMs: o.resyncMs,
      retryDelaysMs: o.retryDelaysMs,
      failureRetryMs: o.failureRetryMs,
      now: () => this.#o.clock.now(),
      logFailuresBeforeSync: !auto,
      onChange: () => {
        if (!this.#podResourcesAnswered) {
          this.#podResourcesAnswered = true;
          if (auto && this.#announcedFallback) {
            log.info(
              "The kubelet's PodResources socket {socket} answers now: pods allocated a " +
                "GPU are mapped to it from now on",
              { socket: client.socketPath },
            );
          }
        }
        this.#notify();
      },
    });
    this.#tracker = tracker;
    log.info("Pods map to GPUs through {how}", {
      how: auto
        ? `the kubelet's PodResources (${client.socketPath}) and their processes`
        : `the kubelet's PodResources (${client.socketPath}) only`,
    });
    const ok = await tracker.start();
    if (!ok && auto && !this.#stopped) {
      this.#announcedFallback = true;
      log.warn(
        "The kubelet's PodResources socket {socket} is not usable ({problem}); pods map to GPUs " +
          "through their processes only, and a pod is capped once its process runs. Mount the " +
          "host's /var/lib/kubelet/pod-resources (Helm: podGpuMapping auto or pod-resources), or " +
          "pass --pod-gpu-mapping processes to stop asking",
        { socket: client.socketPath, problem: tracker.health().problem },
      );
    }
  }

  /** Adds the pods the kubelet allocated each GPU (live pods only) to `byGpu`. */
  #withAllocatedPods(
    byGpu: Map<string, PodRecord[]>,
    gpus: readonly GpuView[],
  ): Map<string, PodRecord[]> {
    if (!this.#tracker) return byGpu;
    let migKnown = true;
    const devices = gpus.map((view) => {
      // Absent: not observed (no MIG devices); null: unreadable this pass (keep the last ones).
      if (view.migDeviceUuids !== null) {
        this.#migDevices.set(view.uuid, view.migDeviceUuids ?? []);
      } else migKnown = false;
      return { uuid: view.uuid, migDeviceUuids: this.#migDevices.get(view.uuid) ?? [] };
    });
    const { podsByGpu, unknown } = mapAllocationsToGpus(this.#tracker.allocations(), {
      gpus: devices,
      resourceNames: this.#resourceNames,
    });
    // A device of an unreadable GPU's MIG devices is not "unknown": warn only on full knowledge.
    if (migKnown) {
      for (const device of this.#unknownDevices.fresh(unknown)) {
        log.warn(
          "Pod {pod} was allocated {resource} device {device}, which is none of the GPUs the " +
            "agent manages on this node (nor one of their MIG devices); nothing is applied for " +
            "it. The device plugin must report GPU or MIG UUIDs (DEVICE_ID_STRATEGY=uuid)",
          {
            pod: `${device.pod.namespace}/${device.pod.name}`,
            resource: device.resourceName,
            device: device.deviceId,
          },
        );
      }
    }
    const live = new Map<string, PodRecord>();
    for (const pod of this.#index.pods()) live.set(`${pod.namespace}/${pod.name}`, pod);
    const allocated = new Set<string>();
    const merged = new Map(byGpu);
    for (const [uuid, refs] of podsByGpu) {
      const pods = [...(merged.get(uuid) ?? [])];
      for (const ref of refs) {
        const pod = live.get(`${ref.namespace}/${ref.name}`);
        if (!pod) continue;
        allocated.add(pod.uid);
        if (!pods.some((p) => p.uid === pod.uid)) pods.push(pod);
      }
      if (pods.length > 0) merged.set(uuid, pods);
    }
    this.#allocatedUids = allocated;
    return merged;
  }

  #noteAnnotation(pod: PodRecord): void {
    if (pod.annotation.kind !== "invalid") {
      this.#invalidLogged.delete(pod.uid);
      return;
    }
    if (this.#invalidLogged.get(pod.uid) === pod.annotationValue) return;
    this.#invalidLogged.set(pod.uid, pod.annotationValue ?? "");
    this.#o.telemetry.invalidRequest(pod.annotation.reason);
    log.warn(
      "Pod {pod}: invalid {key} annotation {value}: {message}; its GPUs get the safe default",
      {
        pod: `${pod.namespace}/${pod.name}`,
        key: this.#o.annotation,
        value: JSON.stringify(pod.annotationValue),
        message: pod.annotation.message,
      },
    );
  }

  #notify(): void {
    if (this.#stopped || !this.#onChange) return;
    try {
      this.#onChange();
    } catch (error) {
      log.error("onChange failed: {error}", {
        error: (error as Error).message,
      });
    }
  }

  /** Keep probing (calling onChange) while an annotated pod has no GPU association yet. */
  #updateProbe(): void {
    if (this.#stopped) return;
    const allowed = this.#o.allowedNamespaces?.length ? new Set(this.#o.allowedNamespaces) : null;
    const pending = new Set<string>();
    // Without processes there is nothing to probe for: the kubelet's answers trigger passes.
    for (const pod of this.needsPids ? this.#index.annotatedPods() : []) {
      if (allowed && !allowed.has(pod.namespace)) continue;
      if (this.#allocatedUids.has(pod.uid)) continue;
      if (!this.#index.hasGpus(pod.uid)) pending.add(pod.uid);
    }
    const initial = this.#o.probeIntervalMs ?? 2000;
    if (pending.size === 0) {
      this.#pending = pending;
      this.#clearProbe();
      this.#probeDelay = initial;
      return;
    }
    const newcomer = [...pending].some((uid) => !this.#pending.has(uid));
    this.#pending = pending;
    if (newcomer) {
      this.#clearProbe();
      this.#probeDelay = initial;
    }
    if (this.#probeTimer !== null) return;
    const delay = this.#probeDelay;
    this.#probeTimer = this.#o.clock.setTimeout(() => {
      this.#probeTimer = null;
      this.#probeDelay = Math.min(this.#o.probeMaxMs ?? 30_000, delay * 2);
      this.#notify();
      this.#updateProbe();
    }, delay);
  }

  #clearProbe(): void {
    if (this.#probeTimer !== null) this.#o.clock.clearTimeout(this.#probeTimer);
    this.#probeTimer = null;
  }
}

/** MIG device UUIDs (`MIG-<uuid>`, and the pre-R470 `MIG-GPU-<uuid>/<gi>/<ci>`). */
function isMigDeviceId(id: string): boolean {
  return id.startsWith("MIG-");
}

/**
 * Create the Kubernetes cap source: loads the client library (lazily, only here) and the
 * Kubernetes configuration. Throws `KubeConfigError` when no usable configuration exists, and
 * `RangeError` for invalid options.
 */
export async function createKubernetesCapSource(
  options: KubernetesSourceOptions,
): Promise<KubernetesCapSource> {
  if (!options.nodeName) {
    throw new RangeError("Kubernetes mode needs the node name (--node-name or NODE_NAME)");
  }
  if (!(options.safeDefaultMw > 0) || !Number.isFinite(options.safeDefaultMw)) {
    throw new RangeError("Kubernetes mode needs --safe-default-watts > 0");
  }
  if (
    options.minMw !== undefined && options.maxMw !== undefined && options.minMw > options.maxMw
  ) {
    throw new RangeError("--min-watts must not be above --max-watts");
  }
  const client = await loadKubeClient({
    kubeconfigPath: options.kubeconfigPath,
    requestTimeoutMs: options.requestTimeoutMs,
  });
  return new KubernetesCapSource(client, options);
}
