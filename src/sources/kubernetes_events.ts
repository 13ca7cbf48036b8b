/**
 * Kubernetes Events on pods (CapApplied, CapClamped, CapRejected, SafeDefaultApplied),
 * deduplicated so a steady state emits nothing. Emission is fire-and-forget: a failure is
 * logged and never affects capping.
 *
 * At most one Event batch per pod and GPU a second (`minIntervalMs`): what a pod's outcome on a
 * GPU becomes within a second of its last Event is held, the newest replacing the older, and
 * posted when the second is up (or at `flush()`), unless it is what was posted last. A planner
 * moving a cap 20 times a second thus costs the API server one Event a second per pod, each
 * telling the outcome as it is then, never an intermediate one after it; a change after a quiet
 * second is posted at once. (client-go's EventCorrelator goes further: after 25 Events on an
 * object it drops all but one per 5 minutes.)
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import type { OutcomeEvent } from "../policy/shared_gpu.ts";
import type { KubeClient } from "./kubernetes_client.ts";

/** Logger of this module (logtape keeps one per category; configuration applies later too). */
const log = getLogger(["gpu-power-agent", "kubernetes"]);

/** Options of `KubeEventRecorder`. */
export interface KubeEventRecorderOptions {
  /** Reported as source host / reporting instance. */
  nodeName: string;
  telemetry: Telemetry;
  clock?: Clock;
  /** Events waiting to be sent beyond this are dropped (default 100). */
  maxQueue?: number;
  /** Least time between two Event batches on one pod for one GPU (default 1000 ms). */
  minIntervalMs?: number;
}

/** Events held for one pod and GPU until its interval is up. */
interface Held {
  events: OutcomeEvent[];
  timer: number;
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
  /** `<gpu>\0<pod uid>` → when its last batch was queued, and the keys of that batch. */
  #sent = new Map<string, { atMs: number; keys: string }>();
  /** `<gpu>\0<pod uid>` → the newest batch waiting for the pair's interval to be up. */
  #held = new Map<string, Held>();
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
      minIntervalMs: options.minIntervalMs ?? 1000,
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
      if (!byPod.has(uid)) {
        last.delete(uid);
        this.#drop(`${gpuUuid}\u0000${uid}`);
        this.#sent.delete(`${gpuUuid}\u0000${uid}`);
      }
    }
    for (const [uid, list] of byPod) {
      const before = last.get(uid);
      const now = new Set<string>();
      const fresh: OutcomeEvent[] = [];
      for (const e of list) {
        const key = eventKey(e);
        now.add(key);
        if (!before?.has(key)) fresh.push(e);
      }
      last.set(uid, now);
      if (fresh.length > 0) this.#offer(`${gpuUuid}\u0000${uid}`, fresh);
    }
    if (last.size === 0) this.#last.delete(gpuUuid);
  }

  /** Forget a deleted pod. */
  forgetPod(uid: string): void {
    for (const [gpuUuid, last] of this.#last) {
      if (last.delete(uid) && last.size === 0) this.#last.delete(gpuUuid);
      this.#drop(`${gpuUuid}\u0000${uid}`);
      this.#sent.delete(`${gpuUuid}\u0000${uid}`);
    }
  }

  /** Resolves when every event was sent or failed, those held for their interval too. */
  async flush(): Promise<void> {
    for (const pair of [...this.#held.keys()]) this.#release(pair);
    let queue: Promise<void>;
    do {
      queue = this.#queue;
      await queue;
    } while (queue !== this.#queue);
  }

  /** Drop queued events and abort the one in flight. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const pair of [...this.#held.keys()]) this.#drop(pair);
    this.#abort.abort();
    await this.#queue;
  }

  /** New events of one pod and GPU: queued now, or held until the pair's interval is up. */
  #offer(pair: string, events: OutcomeEvent[]): void {
    if (this.#stopped) return;
    const sent = this.#sent.get(pair);
    const now = this.#o.clock.now();
    const dueMs = sent === undefined ? now : sent.atMs + this.#o.minIntervalMs;
    if (dueMs <= now && !this.#held.has(pair)) {
      this.#queueBatch(pair, events, now);
      return;
    }
    const held = this.#held.get(pair);
    if (held !== undefined) {
      held.events = events; // the newest outcome replaces the one held
      return;
    }
    const timer = this.#o.clock.setTimeout(() => this.#release(pair), Math.max(1, dueMs - now));
    this.#held.set(pair, { events, timer });
  }

  /** Queue what is held for `pair` (unless it is what was queued last for it). */
  #release(pair: string): void {
    const held = this.#held.get(pair);
    if (held === undefined) return;
    this.#drop(pair);
    this.#queueBatch(pair, held.events, this.#o.clock.now());
  }

  #queueBatch(pair: string, events: OutcomeEvent[], now: number): void {
    const keys = events.map(eventKey).join("\u0001");
    if (this.#sent.get(pair)?.keys === keys) return;
    this.#sent.set(pair, { atMs: now, keys });
    for (const event of events) this.#enqueue(event);
  }

  /** Forget what is held for `pair`. */
  #drop(pair: string): void {
    const held = this.#held.get(pair);
    if (held === undefined) return;
    this.#o.clock.clearTimeout(held.timer);
    this.#held.delete(pair);
  }

  #enqueue(event: OutcomeEvent): void {
    if (this.#stopped) return;
    if (this.#pending >= this.#o.maxQueue) {
      log.debug(
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
