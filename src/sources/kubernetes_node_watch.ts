/**
 * Watch one annotation of this node (`gpu-power-agent.io/power-budget-watts`): LIST
 * `/api/v1/nodes?fieldSelector=metadata.name=<node>`, then WATCH from the list's
 * resourceVersion with bookmarks; re-watch when a watch ends, relist on 410 Gone, retry errors
 * with capped exponential backoff and jitter. `onChange` fires only when the annotation's value
 * changes (node status updates do not wake the agent). In steady state: one open watch, no polls.
 *
 * Written against `KubeClient` directly rather than on `PodInformer`, whose list/watch loop is
 * pod-specific (pod path, pod handlers, pod validation); generalising it is a later refactor.
 */
import { getLogger } from "@logtape/logtape";
import type { SourceHealth } from "./cap_source.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import { KubeApiError, type KubeClient } from "./kubernetes_client.ts";

/** The nodes collection. */
export const NODES_PATH = "/api/v1/nodes";

/** Options of {@link NodeAnnotationWatcher}. */
export interface NodeAnnotationWatcherOptions {
  /** This node's name (`spec.nodeName` of the agent's pod, `--node-name`). */
  nodeName: string;
  /** The annotation key to follow. */
  annotation: string;
  /** Called with the new value (undefined: absent, or the node is gone) when it changes. */
  onChange: (value: string | undefined) => void;
  telemetry: Telemetry;
  clock?: Clock;
  /** Jitter source in [0, 1) (default Math.random). */
  random?: () => number;
  /** Reconnect backoff: doubles from `initialMs` up to `maxMs`, with jitter (500 ms → 30 s). */
  backoff?: { initialMs: number; maxMs: number };
  /** Server-side watch timeout, seconds (default 300; each watch asks for [t, 1.5 t)). */
  watchTimeoutSeconds?: number;
  /** Grace after the watch timeout before a watch the server has not ended is aborted. */
  watchGraceMs?: number;
}

/** Counters for tests and debugging. */
export interface NodeWatchStats {
  lists: number;
  watches: number;
  failures: number;
  resourceVersion: string | null;
}

interface NodeObject {
  metadata?: { name?: unknown; resourceVersion?: unknown; annotations?: unknown };
}

const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30_000 };
const MAX_LINE_CHARS = 16 * 1024 * 1024;

/** Follows one annotation of one node. `start()` once, `stop()` to end. */
export class NodeAnnotationWatcher {
  #client: KubeClient;
  #o: Required<NodeAnnotationWatcherOptions>;
  #value: string | undefined;
  #synced = false;
  #lastSuccessMs: number | null = null;
  #problem: string | undefined;
  #lastLogged: string | undefined;
  #rv: string | null = null;
  #failures = 0;
  #stats = { lists: 0, watches: 0, failures: 0 };
  #stopped = false;
  #loop: Promise<void> | null = null;
  #abort: AbortController | null = null;
  #sleepTimer: number | null = null;
  #wake: (() => void) | null = null;

  constructor(client: KubeClient, options: NodeAnnotationWatcherOptions) {
    this.#client = client;
    this.#o = {
      ...options,
      clock: options.clock ?? systemClock,
      random: options.random ?? Math.random,
      backoff: options.backoff ?? DEFAULT_BACKOFF,
      watchTimeoutSeconds: options.watchTimeoutSeconds ?? 300,
      watchGraceMs: options.watchGraceMs ?? 30_000,
    };
  }

  /** The annotation's value now (undefined: absent, node unknown, or not listed yet). */
  get value(): string | undefined {
    return this.#value;
  }

  /** Freshness: synced after the first LIST; problem while list/watch fails. */
  health(): SourceHealth {
    const health: SourceHealth = { synced: this.#synced, lastSuccessMs: this.#lastSuccessMs };
    if (this.#problem !== undefined) health.problem = this.#problem;
    return health;
  }

  /** Counters. */
  stats(): NodeWatchStats {
    return { ...this.#stats, resourceVersion: this.#rv };
  }

  /** Begin; resolves after the first LIST attempt (failures are retried in the background). */
  start(): Promise<void> {
    if (this.#loop) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#loop = this.#run(resolve).catch((error) => {
      getLogger(["gpu-power-agent", "kubernetes"]).error(
        "Kubernetes node watch stopped unexpectedly: {error}",
        { error: (error as Error).message },
      );
    }).finally(resolve);
    return promise;
  }

  /** Stop: aborts the open request and waits for the loop to end. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#abort?.abort(new DOMException("node watch stopped", "AbortError"));
    if (this.#sleepTimer !== null) this.#o.clock.clearTimeout(this.#sleepTimer);
    this.#sleepTimer = null;
    this.#wake?.();
    await this.#loop;
  }

  get #selector(): string {
    return `metadata.name=${this.#o.nodeName}`;
  }

  async #run(firstAttemptDone: () => void): Promise<void> {
    let relist = true;
    let goneStreak = 0;
    while (!this.#stopped) {
      try {
        if (relist) {
          await this.#list();
          relist = false;
          firstAttemptDone();
        }
        const end = await this.#watchOnce();
        if (end === "gone") {
          relist = true;
          // Expired again right after a relist: do not hammer the server.
          if (goneStreak++ > 0) await this.#sleep(this.#nextBackoff());
          continue;
        }
        goneStreak = 0;
        if (end === "empty") throw new Error("watch closed immediately by the API server");
        this.#failures = 0;
      } catch (error) {
        if (this.#stopped) break;
        if (error instanceof KubeApiError && error.status === 410) {
          relist = true;
          continue;
        }
        this.#fail(relist ? "list" : "watch", error);
        firstAttemptDone();
        await this.#sleep(this.#nextBackoff());
      }
    }
  }

  async #list(): Promise<void> {
    this.#stats.lists++;
    this.#abort = new AbortController();
    const body = await this.#client.getJson(NODES_PATH, {
      fieldSelector: this.#selector,
      resourceVersion: "0",
    }, this.#abort.signal) as { metadata?: { resourceVersion?: unknown }; items?: unknown };
    const rv = body?.metadata?.resourceVersion;
    if (typeof rv !== "string" || !Array.isArray(body.items)) {
      throw new KubeApiError(
        `GET ${NODES_PATH} on ${this.#client.server}: not a NodeList (no items or ` +
          "metadata.resourceVersion)",
        { status: 200 },
      );
    }
    const node = (body.items as NodeObject[]).find((n) => n?.metadata?.name === this.#o.nodeName);
    this.#rv = rv;
    this.#synced = true;
    this.#succeeded();
    this.#update(node);
  }

  /** One watch: "gone" (relist), "empty" (closed at once without a word) or "closed". */
  async #watchOnce(): Promise<"gone" | "empty" | "closed"> {
    const clock = this.#o.clock;
    const timeoutSeconds = Math.floor(
      this.#o.watchTimeoutSeconds * (1 + 0.5 * this.#o.random()),
    );
    const abort = new AbortController();
    this.#abort = abort;
    this.#stats.watches++;
    const started = clock.now();
    const stream = await this.#client.stream(NODES_PATH, {
      watch: true,
      fieldSelector: this.#selector,
      resourceVersion: this.#rv ?? undefined,
      allowWatchBookmarks: true,
      timeoutSeconds,
    }, abort.signal);
    this.#succeeded();
    let stalled = false;
    const stallTimer = clock.setTimeout(() => {
      stalled = true;
      abort.abort(new DOMException("watch stalled", "TimeoutError"));
    }, timeoutSeconds * 1000 + this.#o.watchGraceMs);
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    const cancel = () => reader.cancel().catch(() => {});
    abort.signal.addEventListener("abort", cancel, { once: true });
    let buffer = "";
    let lines = 0;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let newline: number;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).trim();
          buffer = buffer.slice(newline + 1);
          if (line === "") continue;
          lines++;
          if (this.#onWatchLine(line) === "gone") return "gone";
        }
        if (buffer.length > MAX_LINE_CHARS) {
          throw new KubeApiError(`watch ${NODES_PATH}: event larger than 16 MiB`, { status: 200 });
        }
      }
      if (stalled) throw new Error("not ended by the server after its timeoutSeconds");
      if (buffer.trim() !== "" && this.#onWatchLine(buffer.trim()) === "gone") return "gone";
      return lines === 0 && clock.now() - started < 1000 ? "empty" : "closed";
    } catch (error) {
      if (error instanceof KubeApiError) throw error;
      throw new KubeApiError(
        `watch ${NODES_PATH} on ${this.#client.server} ${stalled ? "stalled" : "broke"}: ${
          (error as Error).message
        }`,
        { status: 0, reason: stalled ? "Timeout" : undefined, cause: error },
      );
    } finally {
      clock.clearTimeout(stallTimer);
      abort.signal.removeEventListener("abort", cancel);
      abort.abort();
      cancel();
    }
  }

  #onWatchLine(line: string): "gone" | void {
    let event: { type?: unknown; object?: unknown };
    try {
      event = JSON.parse(line);
    } catch {
      throw new KubeApiError(`watch ${NODES_PATH}: malformed event line`, { status: 200 });
    }
    const object = event.object as NodeObject & { code?: unknown; message?: unknown };
    if (event.type === "ERROR") {
      const code = typeof object?.code === "number" ? object.code : 0;
      if (code === 410) return "gone";
      throw new KubeApiError(
        `watch ${NODES_PATH} on ${this.#client.server}: ERROR event ${code}: ${
          typeof object?.message === "string" ? object.message : "(no message)"
        }`,
        { status: code },
      );
    }
    const rv = object?.metadata?.resourceVersion;
    if (typeof rv === "string") this.#rv = rv;
    this.#lastSuccessMs = this.#o.clock.now();
    if (object?.metadata?.name !== this.#o.nodeName) return;
    if (event.type === "ADDED" || event.type === "MODIFIED") this.#update(object);
    else if (event.type === "DELETED") this.#update(undefined);
  }

  /** Take the annotation from `node` (undefined: no such node) and report a change. */
  #update(node: NodeObject | undefined): void {
    const annotations = node?.metadata?.annotations as Record<string, unknown> | undefined;
    const raw = annotations?.[this.#o.annotation];
    const value = typeof raw === "string" ? raw : undefined;
    if (value === this.#value) return;
    this.#value = value;
    try {
      this.#o.onChange(value);
    } catch (error) {
      getLogger(["gpu-power-agent", "kubernetes"]).error(
        "Handling a change of node annotation {annotation} failed: {error}",
        { annotation: this.#o.annotation, error: (error as Error).stack ?? String(error) },
      );
    }
  }

  #succeeded(): void {
    this.#lastSuccessMs = this.#o.clock.now();
    if (this.#problem !== undefined) {
      getLogger(["gpu-power-agent", "kubernetes"]).info(
        "Kubernetes node {node} readable again",
        { node: this.#o.nodeName },
      );
    }
    this.#problem = undefined;
    this.#lastLogged = undefined;
  }

  #fail(op: "list" | "watch", error: unknown): void {
    this.#failures++;
    this.#stats.failures++;
    const forbidden = error instanceof KubeApiError && error.status === 403;
    const message = ((error as Error).message ?? String(error)).replace(
      / \(RBAC: .*\)$/,
      "",
    ) + (forbidden
      ? ` (RBAC: the service account needs get/list/watch on nodes; see the README's node ` +
        "power budget section, or turn the node budget annotation off)"
      : "");
    this.#problem = `node ${op} failed: ${message}`;
    this.#o.telemetry.sourceError("kubernetes-node", forbidden ? "forbidden" : op);
    if (this.#lastLogged === message) return;
    this.#lastLogged = message;
    getLogger(["gpu-power-agent", "kubernetes"])[forbidden ? "error" : "warn"](
      "Kubernetes node {op} failed (the node budget annotation keeps its last value; " +
        "retrying): {error}",
      { op, error: message },
    );
  }

  #nextBackoff(): number {
    const { initialMs, maxMs } = this.#o.backoff;
    const exponent = Math.min(Math.max(this.#failures - 1, 0), 30);
    const base = Math.min(maxMs, initialMs * 2 ** exponent);
    return Math.round(base / 2 + this.#o.random() * (base / 2));
  }

  #sleep(ms: number): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    return new Promise((resolve) => {
      this.#wake = () => {
        this.#wake = null;
        resolve();
      };
      this.#sleepTimer = this.#o.clock.setTimeout(() => {
        this.#sleepTimer = null;
        this.#wake?.();
      }, ms);
    });
  }
}
