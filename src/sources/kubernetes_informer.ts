/**
 * Informer for the pods of one node: LIST (`spec.nodeName=<node>`, optionally in one
 * namespace), then WATCH from the list's resourceVersion with bookmarks; re-watch from the last
 * resourceVersion when a watch ends; relist on 410 Gone; reconnect with capped exponential
 * backoff and jitter on errors. In steady state it holds exactly one watch and never polls.
 */
import { getLogger } from "@logtape/logtape";
import type { SourceHealth } from "./cap_source.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import { KubeApiError, type KubeClient } from "./kubernetes_client.ts";

/** The fields of a core/v1 Pod the agent reads. */
export interface KubePod {
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    resourceVersion?: string;
    annotations?: Record<string, string>;
    deletionTimestamp?: string;
  };
  spec?: { nodeName?: string };
  status?: { phase?: string };
}

/** Watch event types delivered to handlers. */
export type PodEventType = "ADDED" | "MODIFIED" | "DELETED";

/** Receivers of the informer's view of the pods. */
export interface PodInformerHandlers {
  /** Full state after a LIST: replaces everything known before. */
  replace(pods: KubePod[]): void;
  /** One change from the watch. */
  event(type: PodEventType, pod: KubePod): void;
}

/** Reconnect backoff: delay doubles from `initialMs` up to `maxMs`, with jitter. */
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

/** Options of `PodInformer`. */
export interface PodInformerOptions {
  nodeName: string;
  /** Watch only this namespace (matches namespace-scoped RBAC). */
  namespace?: string;
  handlers: PodInformerHandlers;
  telemetry: Telemetry;
  clock?: Clock;
  /** Jitter source in [0, 1) (default Math.random). */
  random?: () => number;
  /** Default 500 ms → 30 s. */
  backoff?: BackoffOptions;
  /**
   * Server-side watch timeout; each watch asks for a random value in [t, 1.5 t) (default
   * 300 s). The client gives up on a watch the server has not ended 30 s after that.
   */
  watchTimeoutSeconds?: number;
  /** Grace after the watch timeout before the client aborts a stalled watch (default 30 s). */
  watchGraceMs?: number;
  /**
   * Reopen a watch that delivered no bytes for this long (a half-open connection; API servers
   * send a bookmark about every minute). Default 120 s; 0 disables.
   */
  watchIdleMs?: number;
}

/** Counters for tests and debugging. */
export interface InformerStats {
  lists: number;
  watches: number;
  relists: number;
  failures: number;
  resourceVersion: string | null;
  watching: boolean;
}

type WatchEnd = { kind: "gone" } | { kind: "closed"; events: number; durationMs: number };

const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000 };
const MAX_LINE_CHARS = 16 * 1024 * 1024;

function reasonOf(error: unknown, op: "list" | "watch"): string {
  if (error instanceof KubeApiError) {
    if (error.status === 401) return "unauthorized";
    if (error.status === 403) return "forbidden";
    if (error.status === 410) return "gone";
    if (error.reason === "Timeout") return "timeout";
  }
  return op;
}

/** Pod informer for one node. `start()` once, `stop()` to end. */
export class PodInformer {
  #client: KubeClient;
  #o: Required<Omit<PodInformerOptions, "namespace">> & { namespace?: string };
  #stopped = false;
  #started = false;
  #synced = false;
  #lastSuccessMs: number | null = null;
  #problem: string | undefined;
  #rv: string | null = null;
  #failures = 0;
  #stats = { lists: 0, watches: 0, relists: 0, failures: 0 };
  #watching = false;
  #abort: AbortController | null = null;
  #sleepTimer: number | null = null;
  #wake: (() => void) | null = null;
  #loop: Promise<void> | null = null;
  #lastLogged: string | undefined;

  constructor(client: KubeClient, options: PodInformerOptions) {
    this.#client = client;
    this.#o = {
      ...options,
      clock: options.clock ?? systemClock,
      random: options.random ?? Math.random,
      backoff: options.backoff ?? DEFAULT_BACKOFF,
      watchTimeoutSeconds: options.watchTimeoutSeconds ?? 300,
      watchGraceMs: options.watchGraceMs ?? 30_000,
      watchIdleMs: options.watchIdleMs ?? 120_000,
    };
  }

  /** Path of the pods collection this informer reads. */
  get podsPath(): string {
    return this.#o.namespace
      ? `/api/v1/namespaces/${encodeURIComponent(this.#o.namespace)}/pods`
      : "/api/v1/pods";
  }

  /** True once a LIST succeeded. */
  get synced(): boolean {
    return this.#synced;
  }

  /** Counters. */
  stats(): InformerStats {
    return { ...this.#stats, resourceVersion: this.#rv, watching: this.#watching };
  }

  /** Freshness: synced after the first LIST; problem while list/watch fails. */
  health(): SourceHealth {
    const health: SourceHealth = { synced: this.#synced, lastSuccessMs: this.#lastSuccessMs };
    if (this.#problem !== undefined) health.problem = this.#problem;
    return health;
  }

  /**
   * Begin: resolves after the first LIST attempt, whether it succeeded or not (failures keep
   * being retried in the background; see `health()`).
   */
  start(): Promise<void> {
    if (this.#started) return Promise.resolve();
    this.#started = true;
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#loop = this.#run(resolve).catch((error) => {
      getLogger(["gpu-power-agent", "kubernetes"]).error(
        "Kubernetes pod informer stopped unexpectedly: {error}",
        { error: (error as Error).message },
      );
    }).finally(resolve);
    return promise;
  }

  /** Stop: aborts the open request and waits for the loop to end. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#abort?.abort(new DOMException("informer stopped", "AbortError"));
    if (this.#sleepTimer !== null) this.#o.clock.clearTimeout(this.#sleepTimer);
    this.#sleepTimer = null;
    this.#wake?.();
    await this.#loop;
  }

  async #run(firstAttemptDone: () => void): Promise<void> {
    let relist = true;
    let consistent = false;
    let goneStreak = 0;
    while (!this.#stopped) {
      if (relist) {
        try {
          await this.#list(consistent);
          relist = false;
          this.#failures = 0;
        } catch (error) {
          if (this.#stopped) break;
          this.#fail("list", error);
          firstAttemptDone();
          await this.#sleep(this.#nextBackoff());
          continue;
        }
        firstAttemptDone();
      }
      let end: WatchEnd;
      try {
        end = await this.#watchOnce();
      } catch (error) {
        if (this.#stopped) break;
        if (error instanceof KubeApiError && error.status === 410) {
          end = { kind: "gone" };
        } else {
          this.#fail("watch", error);
          await this.#sleep(this.#nextBackoff());
          continue;
        }
      }
      if (this.#stopped) break;
      if (end.kind === "gone") {
        // Our resourceVersion is older than the server keeps: relist (a consistent read the
        // second time in a row, in case the server's cache lags behind).
        this.#o.telemetry.sourceError("kubernetes", "gone");
        getLogger(["gpu-power-agent", "kubernetes"]).info(
          "Kubernetes watch expired (410 Gone at resourceVersion {rv}); relisting pods",
          { rv: this.#rv },
        );
        this.#stats.relists++;
        relist = true;
        consistent = goneStreak > 0;
        if (goneStreak++ > 0) await this.#sleep(this.#nextBackoff());
        continue;
      }
      goneStreak = 0;
      consistent = false;
      if (end.events > 0) this.#failures = 0;
      if (end.events === 0 && end.durationMs < 1000) {
        // Closed at once without a word: do not hammer the server.
        this.#fail("watch", new Error("watch closed immediately by the API server"));
        await this.#sleep(this.#nextBackoff());
      } else {
        this.#failures = 0;
      }
    }
  }

  async #list(consistent: boolean): Promise<void> {
    this.#stats.lists++;
    this.#abort = new AbortController();
    const body = await this.#client.getJson(this.podsPath, {
      fieldSelector: `spec.nodeName=${this.#o.nodeName}`,
      // "0": served from the API server's watch cache (cheap at scale); "" (consistent read)
      // only when a watch from the cached version expired twice in a row.
      resourceVersion: consistent ? undefined : "0",
    }, this.#abort.signal) as { metadata?: { resourceVersion?: unknown }; items?: unknown };
    const rv = body?.metadata?.resourceVersion;
    if (typeof rv !== "string" || !Array.isArray(body.items)) {
      throw new KubeApiError(
        `GET ${this.podsPath} on ${this.#client.server}: not a PodList (no items or ` +
          "metadata.resourceVersion)",
        { status: 200 },
      );
    }
    const pods = (body.items as unknown[]).filter(isPod);
    this.#rv = rv;
    this.#synced = true;
    this.#succeeded();
    try {
      this.#o.handlers.replace(pods);
    } catch (error) {
      this.#handlerError(error);
    }
  }

  async #watchOnce(): Promise<WatchEnd> {
    const clock = this.#o.clock;
    const timeoutSeconds = Math.floor(
      this.#o.watchTimeoutSeconds * (1 + 0.5 * this.#o.random()),
    );
    const abort = new AbortController();
    this.#abort = abort;
    this.#stats.watches++;
    const started = clock.now();
    const stream = await this.#client.stream(this.podsPath, {
      watch: true,
      fieldSelector: `spec.nodeName=${this.#o.nodeName}`,
      resourceVersion: this.#rv ?? undefined,
      allowWatchBookmarks: true,
      timeoutSeconds,
    }, abort.signal);
    this.#watching = true;
    this.#succeeded();
    let stalled: string | null = null;
    const stallTimer = clock.setTimeout(() => {
      stalled = `not ended by the server ${timeoutSeconds} s + ${this.#o.watchGraceMs} ms ` +
        "after it began";
      abort.abort(new DOMException("watch stalled", "TimeoutError"));
    }, timeoutSeconds * 1000 + this.#o.watchGraceMs);
    const idleMs = this.#o.watchIdleMs;
    let idleTimer: number | null = null;
    const armIdle = () => {
      if (idleMs <= 0) return;
      if (idleTimer !== null) clock.clearTimeout(idleTimer);
      idleTimer = clock.setTimeout(() => {
        stalled = `no data for ${idleMs} ms`;
        abort.abort(new DOMException("watch idle", "TimeoutError"));
      }, idleMs);
    };
    armIdle();
    let events = 0;
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    const cancel = () => reader.cancel().catch(() => {});
    abort.signal.addEventListener("abort", cancel, { once: true });
    let buffer = "";
    try {
      while (true) {
        const { value, done } = await reader.read();
        if (done) break;
        armIdle();
        buffer += value;
        let newline: number;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline).trim();
          buffer = buffer.slice(newline + 1);
          if (line === "") continue;
          events++;
          if (this.#onWatchLine(line) === "gone") return { kind: "gone" };
        }
        if (buffer.length > MAX_LINE_CHARS) {
          throw new KubeApiError(`watch ${this.podsPath}: event larger than 16 MiB`, {
            status: 200,
          });
        }
      }
      if (stalled !== null) throw new Error("aborted");
      if (buffer.trim() !== "" && this.#onWatchLine(buffer.trim()) === "gone") {
        return { kind: "gone" };
      }
      return { kind: "closed", events, durationMs: clock.now() - started };
    } catch (error) {
      if (stalled !== null) {
        throw new KubeApiError(
          `watch ${this.podsPath} on ${this.#client.server} stalled: ${stalled}`,
          { status: 0, reason: "Timeout", cause: error },
        );
      }
      if (error instanceof KubeApiError) throw error;
      throw new KubeApiError(
        `watch ${this.podsPath} on ${this.#client.server} broke: ${(error as Error).message}`,
        { status: 0, cause: error },
      );
    } finally {
      this.#watching = false;
      clock.clearTimeout(stallTimer);
      if (idleTimer !== null) clock.clearTimeout(idleTimer);
      abort.signal.removeEventListener("abort", cancel);
      abort.abort();
      cancel();
    }
  }

  /** Handle one watch line; "gone" when the server says our resourceVersion expired. */
  #onWatchLine(line: string): "gone" | void {
    let event: { type?: unknown; object?: unknown };
    try {
      event = JSON.parse(line);
    } catch {
      throw new KubeApiError(`watch ${this.podsPath}: malformed event line`, { status: 200 });
    }
    const type = event.type;
    const object = event.object as
      | { metadata?: { resourceVersion?: unknown }; code?: unknown; message?: unknown }
      | undefined;
    if (type === "ERROR") {
      const code = typeof object?.code === "number" ? object.code : 0;
      if (code === 410) return "gone";
      throw new KubeApiError(
        `watch ${this.podsPath} on ${this.#client.server}: ERROR event ${code}: ${
          typeof object?.message === "string" ? object.message : "(no message)"
        }`,
        { status: code },
      );
    }
    const rv = object?.metadata?.resourceVersion;
    if (type === "BOOKMARK") {
      if (typeof rv === "string") this.#rv = rv;
      this.#lastSuccessMs = this.#o.clock.now();
      return;
    }
    if (type !== "ADDED" && type !== "MODIFIED" && type !== "DELETED") return;
    if (!isPod(object)) return;
    if (typeof rv === "string") this.#rv = rv;
    this.#lastSuccessMs = this.#o.clock.now();
    try {
      this.#o.handlers.event(type, object);
    } catch (error) {
      this.#handlerError(error);
    }
  }

  #succeeded(): void {
    this.#lastSuccessMs = this.#o.clock.now();
    if (this.#problem !== undefined) {
      getLogger(["gpu-power-agent", "kubernetes"]).info(
        "Kubernetes API reachable again ({server})",
        { server: this.#client.server },
      );
    }
    this.#problem = undefined;
    this.#lastLogged = undefined;
  }

  #fail(op: "list" | "watch", error: unknown): void {
    this.#failures++;
    this.#stats.failures++;
    const message = (error as Error).message ?? String(error);
    this.#problem = `${op} failed: ${message}`;
    this.#o.telemetry.sourceError("kubernetes", reasonOf(error, op));
    const log = getLogger(["gpu-power-agent", "kubernetes"]);
    const props = { op, error: message, failures: this.#failures };
    if (this.#lastLogged !== message) {
      this.#lastLogged = message;
      const level = error instanceof KubeApiError && error.status === 403 ? "error" : "warn";
      log[level](
        "Kubernetes pod {op} failed (caps stay as they are; retrying): {error}",
        props,
      );
    } else {
      log.debug("Kubernetes pod {op} failed again ({failures}): {error}", props);
    }
  }

  #handlerError(error: unknown): void {
    getLogger(["gpu-power-agent", "kubernetes"]).error(
      "Handling a pod update failed: {error}",
      { error: (error as Error).stack ?? String(error) },
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

function isPod(value: unknown): value is KubePod {
  const m = (value as KubePod | null)?.metadata;
  return typeof m === "object" && m !== null && typeof m.uid === "string" &&
    typeof m.name === "string" && typeof m.namespace === "string";
}
