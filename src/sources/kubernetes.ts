/**
 * Kubernetes mode: caps from pod annotations, on exactly the GPUs those pods use.
 *
 * Pods of this node come from an informer (LIST + WATCH with a `spec.nodeName` field selector);
 * GPUs are mapped to pods through the compute PIDs the reconciler observed this pass (the source
 * never calls NVML) and `/proc/<pid>/cgroup`; the per-GPU policy is `decideGpuCap` (fail closed
 * to the safe default). When the API server cannot be read, caps stay as they are: `desired()`
 * keeps answering from the last known pods. Events are posted from `report()`, after the
 * outcome is known, never in dry run.
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
import {
  type BackoffOptions,
  type InformerStats,
  type KubePod,
  type PodEventType,
  PodInformer,
} from "./kubernetes_informer.ts";
import { KubeEventRecorder } from "./kubernetes_events.ts";
import { PodIndex, type PodRecord } from "./kubernetes_pod_index.ts";

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
}

/** Counters for tests and `status`. */
export interface KubernetesSourceStats {
  informer: InformerStats;
  pods: number;
  cachedPids: number;
  eventsSent: number;
  /** Pods with an annotation and no GPU yet (probed). */
  pendingPods: number;
  probing: boolean;
}

/** The Kubernetes cap source. Create with `createKubernetesCapSource`. */
export class KubernetesCapSource implements CapSource {
  readonly name = "kubernetes";
  readonly needsPids = true;
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

  constructor(client: KubeClient, options: KubernetesSourceOptions) {
    this.#o = {
      ...options,
      annotation: options.annotation || DEFAULT_POWER_ANNOTATION,
      clock: options.clock ?? systemClock,
    };
    this.#client = client;
    this.#index = new PodIndex(this.#o.annotation);
    this.#probeDelay = options.probeIntervalMs ?? 2000;
    this.#informer = new PodInformer(client, {
      nodeName: options.nodeName,
      namespace: options.namespace,
      telemetry: options.telemetry,
      clock: this.#o.clock,
      random: options.random,
      backoff: options.backoff,
      watchTimeoutSeconds: options.watchTimeoutSeconds,
      watchIdleMs: options.watchIdleMs ?? Math.max(options.staleAfterMs, 90_000),
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
    const log = getLogger(["gpu-power-agent", "kubernetes"]);
    log.info(
      "Kubernetes source: watching pods on node {node}{scope} via {server}, annotation {key}",
      {
        node: this.#o.nodeName,
        scope: this.#o.namespace ? ` in namespace ${this.#o.namespace}` : "",
        server: this.#client.server,
        key: this.#o.annotation,
      },
    );
    await this.#informer.start();
  }

  /** Desired caps per GPU; null until the first LIST. Never throws. */
  desired(gpus: readonly GpuView[]): DesiredCaps | null {
    if (!this.#informer.synced) return null;
    const log = getLogger(["gpu-power-agent", "kubernetes"]);
    try {
      const scan = this.#index.scan(gpus, { procRoot: this.#o.procRoot });
      for (const failure of scan.failed) {
        if (this.#scanFailuresLogged.has(failure.uuid)) continue;
        this.#scanFailuresLogged.add(failure.uuid);
        log.warn(
          "Cannot list processes on GPU {uuid}; keeping its known pods: {error}",
          failure,
        );
      }
      if (scan.failed.length === 0) this.#scanFailuresLogged.clear();

      const byGpu = this.#index.podsByGpu();
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
  report(outcomes: readonly GpuOutcome[], info: { dryRun: boolean }): void {
    if (info.dryRun || !this.#recorder) return;
    for (const outcome of outcomes) {
      if (outcome.action === "skipped") continue;
      const label = `GPU ${outcome.index} (${outcome.uuid})`;
      this.#recorder.record(outcome.uuid, [
        ...(this.#rejected.get(outcome.uuid) ?? []),
        ...outcomeEvents(outcome, label),
      ]);
    }
  }

  /** Synced after the first LIST; problem while list/watch fails. */
  health(): SourceHealth {
    return this.#informer.health();
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
      getLogger(["gpu-power-agent", "kubernetes"]).warn(
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
    // First sync, or a relist after 410: always let the reconciler look.
    this.#notify();
  }

  #event(type: PodEventType, pod: KubePod): void {
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
        : after.annotationValue !== undefined || this.#index.hasProcess(uid);
    }
    if (relevant) this.#notify();
    this.#updateProbe();
  }

  #noteAnnotation(pod: PodRecord): void {
    if (pod.annotation.kind !== "invalid") {
      this.#invalidLogged.delete(pod.uid);
      return;
    }
    if (this.#invalidLogged.get(pod.uid) === pod.annotationValue) return;
    this.#invalidLogged.set(pod.uid, pod.annotationValue ?? "");
    this.#o.telemetry.invalidRequest(pod.annotation.reason);
    getLogger(["gpu-power-agent", "kubernetes"]).warn(
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
      getLogger(["gpu-power-agent", "kubernetes"]).error("onChange failed: {error}", {
        error: (error as Error).message,
      });
    }
  }

  /** Keep probing (calling onChange) while an annotated pod has no GPU association yet. */
  #updateProbe(): void {
    if (this.#stopped) return;
    const allowed = this.#o.allowedNamespaces?.length ? new Set(this.#o.allowedNamespaces) : null;
    const pending = new Set<string>();
    for (const pod of this.#index.pods()) {
      if (pod.annotationValue === undefined) continue;
      if (allowed && !allowed.has(pod.namespace)) continue;
      if (this.#index.gpusOf(pod.uid).size === 0) pending.add(pod.uid);
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
