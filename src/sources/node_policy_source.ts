/**
 * Kubernetes mode with a node policy and a node power budget: a small composing source.
 *
 * - `pods`: the Kubernetes source (desired caps from pod annotations, Events).
 * - `policy` (optional, `--caps-file` with `--source kubernetes`): a {@link FileCapSource}
 *   whose file is the node's policy, applied to the pods' caps with `applyNodePolicy` (default
 *   for GPUs no pod asks for; rules are ceilings). Hot reload, SIGHUP and "an invalid reload
 *   keeps the last good file" are the file source's.
 * - `budgetWatch` (optional, `--node-budget-annotation`, on by default): follows this node's
 *   `gpu-power-agent.io/power-budget-watts` annotation with a {@link NodeAnnotationWatcher};
 *   a change of its value triggers a pass.
 *
 * The budget in force is `combineBudgets` of the caps file's `budget` and the annotation (the
 * smaller wins; an invalid annotation is ignored with a warning). Until the node was first read
 * (e.g. no RBAC on nodes) only the caps file's budget applies; the watch logs why and retries.
 *
 * start/stop/health/report delegate; the name stays the pods source's (`kubernetes`).
 */
import type { CapSource, DesiredCaps, GpuView, SourceHealth } from "./cap_source.ts";
import type { GpuOutcome } from "../reconcile/report.ts";
import type { FileCapSource } from "./file.ts";
import type { KubeClient } from "./kubernetes_client.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import { type Clock, systemClock } from "../clock.ts";
import { applyNodePolicy } from "../policy/node_policy.ts";
import {
  combineBudgets,
  type EffectiveBudget,
  parseBudgetAnnotation,
  POWER_BUDGET_ANNOTATION,
} from "./budget_annotation.ts";
import { NodeAnnotationWatcher } from "./kubernetes_node_watch.ts";
import type { PodResourcesHealth } from "./pod_resources_tracker.ts";

/** Where to watch the node's budget annotation. */
export interface BudgetWatchOptions {
  /** The client of the Kubernetes source (stopped before it). */
  client: KubeClient;
  nodeName: string;
  telemetry: Telemetry;
  /** Default: `gpu-power-agent.io/power-budget-watts`. */
  annotation?: string;
  clock?: Clock;
  /** Reconnect backoff of the node watch (default 500 ms → 30 s). */
  backoff?: { initialMs: number; maxMs: number };
}

/** Options of {@link NodePolicyCapSource}. */
export interface NodePolicySourceOptions {
  /** The pods' source (Kubernetes). */
  pods: CapSource & { flushEvents?: () => Promise<void> };
  /** The node policy file, when `--caps-file` is given in Kubernetes mode. */
  policy?: FileCapSource;
  /** Follow the node's budget annotation. */
  budgetWatch?: BudgetWatchOptions;
}

/** The pods' caps under the node policy, and the node power budget. */
export class NodePolicyCapSource implements CapSource {
  readonly name: string;
  #pods: NodePolicySourceOptions["pods"];
  #policy: FileCapSource | undefined;
  #watcher: NodeAnnotationWatcher | undefined;
  #onChange: (() => void) | undefined;
  #startedMs: number | null = null;
  #clock: Clock;

  constructor(options: NodePolicySourceOptions) {
    this.#pods = options.pods;
    this.#policy = options.policy;
    this.name = options.pods.name;
    const w = options.budgetWatch;
    this.#clock = w?.clock ?? systemClock;
    if (w) {
      this.#watcher = new NodeAnnotationWatcher(w.client, {
        nodeName: w.nodeName,
        annotation: w.annotation ?? POWER_BUDGET_ANNOTATION,
        telemetry: w.telemetry,
        clock: this.#clock,
        ...(w.backoff ? { backoff: w.backoff } : {}),
        onChange: () => this.#onChange?.(),
      });
    }
  }

  /**
   * Load the node policy (rejects when it is missing or invalid: nothing is touched), then start
   * the pods' source and the node watch (each resolves after its first LIST attempt).
   */
  async start(onChange: () => void): Promise<void> {
    this.#onChange = onChange;
    this.#startedMs = this.#clock.now();
    await this.#policy?.start(onChange);
    await this.#pods.start(onChange);
    await this.#watcher?.start();
  }

  /** Whatever the pods' source needs observed (read live: it can change while running). */
  get needsPids(): boolean | undefined {
    return this.#pods.needsPids;
  }

  get needsMigDevices(): boolean | undefined {
    return this.#pods.needsMigDevices;
  }

  /** The kubelet's PodResources freshness of the pods' source (metrics). */
  podResourcesHealth(): PodResourcesHealth | null {
    return this.#pods.podResourcesHealth?.() ?? null;
  }

  /** The pods' caps with the node policy applied; null while the pods' source cannot say. */
  desired(gpus: readonly GpuView[]): DesiredCaps | null {
    const podCaps = this.#pods.desired(gpus);
    const spec = this.#policy?.spec() ?? null;
    if (spec === null) return podCaps;
    return applyNodePolicy(spec, { gpus, podCaps }).desired;
  }

  /** The smaller of the caps file's budget and the node annotation's. */
  budget(): EffectiveBudget {
    const fileMw = this.#policy?.spec()?.budget?.mw;
    return combineBudgets({
      ...(fileMw !== undefined ? { fileMw } : {}),
      ...(this.#watcher ? { annotation: parseBudgetAnnotation(this.#watcher.value) } : {}),
    });
  }

  /** Events go to the pods (through the pods' source). */
  report(outcomes: readonly GpuOutcome[]): void {
    this.#pods.report?.(outcomes);
  }

  /**
   * Synced when the pods' source and the node policy are; a problem of either is the source's
   * problem, and counts from that part's last success. The node watch never affects health
   * (readiness): it logs its failures and the last known annotation value stays in force.
   */
  health(): SourceHealth {
    const pods = this.#pods.health();
    const parts: [string, SourceHealth][] = [["", pods]];
    if (this.#policy) parts.push(["node policy: ", this.#policy.health()]);
    const failing = parts.filter(([, h]) => h.problem !== undefined);
    const health: SourceHealth = {
      synced: pods.synced && (this.#policy?.health().synced ?? true),
      lastSuccessMs: pods.lastSuccessMs,
    };
    if (failing.length > 0) {
      health.problem = failing.map(([label, h]) => `${label}${h.problem}`).join("; ");
      const since = failing.map(([, h]) => h.lastSuccessMs ?? this.#startedMs ?? this.#clock.now());
      health.lastSuccessMs = Math.min(...since);
    }
    return health;
  }

  /** Re-read the node policy (SIGHUP). */
  async reload(): Promise<void> {
    await this.#policy?.reload();
  }

  /** Resolves when queued Kubernetes Events were sent. */
  async flushEvents(): Promise<void> {
    await this.#pods.flushEvents?.();
  }

  /** Stop the node watch and the node policy first (they share the pods' client), then the pods. */
  async stop(): Promise<void> {
    await this.#watcher?.stop();
    await this.#policy?.stop();
    await this.#pods.stop();
  }
}
