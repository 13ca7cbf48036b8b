/**
 * Kubernetes Events on pods (CapApplied, CapClamped, CapRejected, SafeDefaultApplied),
 * deduplicated so a steady state emits nothing. Emission is fire-and-forget: a failure is
 * logged and never affects capping.
 */
import { getLogger } from "@logtape/logtape";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import type { OutcomeEvent } from "../policy/shared_gpu.ts";
import type { KubeClient } from "./kubernetes_client.ts";

/** Logger of this module (logtape keeps one per category; configuration applies later too). */
const kubernetesLog = getLogger(["gpu-power-agent", "kubernetes"]);

/** Options of `KubeEventRecorder`. */
export interface KubeEventRecorderOptions {
  /** Reported as source host / reporting instance. */
  nodeName: string;
  telemetry: Telemetry;
  clock?: Clock;
  /** Events waiting to be sent beyond this are dropped (default 100). */
  maxQueue?: number;
}

/** Component name on emitted Events. */
export const EVENT_COMPONENT = "gpu-power-agent";

function eventKey(e: OutcomeEvent): string {
  return `${e.reason}\u0000${e.message}`;
}

/** Emits outcome events on pods, once per change of a pod's outcome on a GPU. */
export class KubeEventRecorder {
  #client: KubeClient;
  #o: Required<KubeEventRecorderOptions>;
  /** GPU UUID → pod uid → keys of the events last emitted for that pair. */
  #last = new Map<string, Map<string, Set<string>>>();
  #queue: Promise<void> = Promise.resolve();
  #pending = 0;
  #seq = 0;
  #stopped = false;
  #warned = false;
  #abort = new AbortController();
  /** Events sent successfully so far. */
  sent = 0;

  constructor(client: KubeClient, options: KubeEventRecorderOptions) {
    this.#client = client;
    this.#o = {
      ...options,
      clock: options.clock ?? systemClock,
      maxQueue: options.maxQueue ?? 100,
    };
  }

  /**
   * The full set of outcome events for one GPU now: emits those not emitted for the same
   * pod and GPU last time; forgets pods no longer on the GPU.
   */
  record(gpuUuid: string, events: readonly OutcomeEvent[]): void {
    const byPod = new Map<string, OutcomeEvent[]>();
    for (const e of events) {
      const list = byPod.get(e.pod.uid) ?? [];
      list.push(e);
      byPod.set(e.pod.uid, list);
    }
    let last = this.#last.get(gpuUuid);
    if (last === undefined) {
      if (byPod.size === 0) return;
      last = new Map();
      this.#last.set(gpuUuid, last);
    }
    for (const uid of last.keys()) {
      if (!byPod.has(uid)) last.delete(uid);
    }
    for (const [uid, list] of byPod) {
      const before = last.get(uid);
      const now = new Set<string>();
      for (const e of list) {
        const key = eventKey(e);
        now.add(key);
        if (!before?.has(key)) this.#enqueue(e);
      }
      last.set(uid, now);
    }
    if (last.size === 0) this.#last.delete(gpuUuid);
  }

  /** Forget a deleted pod. */
  forgetPod(uid: string): void {
    for (const [gpuUuid, last] of this.#last) {
      if (last.delete(uid) && last.size === 0) this.#last.delete(gpuUuid);
    }
  }

  /** Resolves when every queued event was sent or failed. */
  async flush(): Promise<void> {
    let queue: Promise<void>;
    do {
      queue = this.#queue;
      await queue;
    } while (queue !== this.#queue);
  }

  /** Drop queued events and abort the one in flight. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#abort.abort();
    await this.#queue;
  }

  #enqueue(event: OutcomeEvent): void {
    if (this.#stopped) return;
    if (this.#pending >= this.#o.maxQueue) {
      kubernetesLog.debug(
        "Kubernetes event queue full; dropping {reason} for pod {pod}",
        { reason: event.reason, pod: `${event.pod.namespace}/${event.pod.name}` },
      );
      return;
    }
    this.#pending++;
    this.#queue = this.#queue.then(() => this.#send(event)).finally(() => {
      this.#pending--;
    });
  }

  async #send(event: OutcomeEvent): Promise<void> {
    if (this.#stopped) return;
    const now = new Date(this.#o.clock.now());
    const stamp = now.toISOString().replace(/\.\d{3}Z$/, "Z");
    const seq = (this.#seq++).toString(16);
    const body = {
      apiVersion: "v1",
      kind: "Event",
      metadata: {
        name: `${event.pod.name}.${now.getTime().toString(16)}${seq}`,
        namespace: event.pod.namespace,
      },
      involvedObject: {
        apiVersion: "v1",
        kind: "Pod",
        namespace: event.pod.namespace,
        name: event.pod.name,
        uid: event.pod.uid,
      },
      reason: event.reason,
      message: event.message,
      type: event.type,
      source: { component: EVENT_COMPONENT, host: this.#o.nodeName },
      reportingComponent: EVENT_COMPONENT,
      reportingInstance: this.#o.nodeName,
      firstTimestamp: stamp,
      lastTimestamp: stamp,
      count: 1,
    };
    const log = kubernetesLog;
    try {
      await this.#client.postJson(
        `/api/v1/namespaces/${encodeURIComponent(event.pod.namespace)}/events`,
        body,
        this.#abort.signal,
      );
      this.sent++;
    } catch (error) {
      if (this.#stopped) return;
      this.#o.telemetry.sourceError("kubernetes", "event");
      const props = {
        reason: event.reason,
        pod: `${event.pod.namespace}/${event.pod.name}`,
        error: (error as Error).message,
      };
      if (!this.#warned) {
        this.#warned = true;
        log.warn(
          "Cannot create Kubernetes event {reason} on pod {pod} (capping is not affected; " +
            "RBAC needs events: create): {error}",
          props,
        );
      } else {
        log.debug("Cannot create Kubernetes event {reason} on pod {pod}: {error}", props);
      }
    }
  }
}
