/**
 * The list/watch loop (a reflector) shared by the pod informer and the node-annotation watch:
 * LIST one collection with a field selector, then WATCH from the list's resourceVersion with
 * bookmarks; re-watch from the last resourceVersion when a watch ends; relist on 410 Gone. In
 * steady state it holds exactly one watch and never polls.
 *
 * Backoff (like client-go's reflector): one failure count covers failed LISTs, failed or
 * dropped watches, 410 Gone relists and poison events; every retry after the first waits a
 * jittered, capped exponential delay (a successful LIST does not reset it, so a watch that
 * keeps answering 410 cannot cause a relist storm). The count is reset once a watch has stayed
 * open for `healthyResetMs` (30 s), so an old outage never slows down recovery from a later one.
 * While the API server cannot be reached at all (no HTTP answer), the delay is capped lower
 * (`unreachableMaxMs`, 3 s) so the first change after it returns is applied within seconds.
 *
 * Memory: objects are trimmed (`trim`) as they are parsed, the LIST is parsed item by item, and
 * no watch line or list item over `maxObjectBytes` is held whole: such an object is skipped
 * (logged, counted as `oversized`) and the loop relists past it.
 */
import { getLogger } from "@logtape/logtape";
import type { SourceHealth } from "./cap_source.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import { KubeApiError, type KubeClient } from "./kubernetes_client.ts";
import {
  type BoundedItem,
  boundedLines,
  DEFAULT_MAX_OBJECT_BYTES,
  HEALTHY_WATCH_MS,
  streamPodList,
} from "./kubernetes_stream.ts";

/** Logger of this module (logtape keeps one per category; configuration applies later too). */
const log = getLogger(["gpu-power-agent", "kubernetes"]);

/** Watch event types delivered to handlers. */
export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED";

/** Receivers of the loop's view of the collection. */
export interface ListWatchHandlers<T> {
  /** Full state after a LIST: replaces everything known before. */
  replace(items: T[]): void;
  /** One change from the watch. */
  event(type: WatchEventType, item: T): void;
}

/**
 * Reconnect backoff: delay doubles from `initialMs` up to `maxMs` (up to `unreachableMaxMs`
 * while the API server gives no answer at all), with jitter: each delay is uniform in
 * [base/2, base].
 */
export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** Cap while the server cannot be reached (refused, reset, DNS); default min(maxMs, 3 s). */
  unreachableMaxMs?: number;
}

/** Timing and size bounds of a list/watch loop (all optional). */
export interface ListWatchTuning {
  telemetry: Telemetry;
  clock?: Clock;
  /** Jitter source in [0, 1) (default Math.random). */
  random?: () => number;
  /** Default 500 ms → 30 s (3 s while unreachable). */
  backoff?: BackoffOptions;
  /** A watch open this long resets the failure count (default 30 s). */
  healthyResetMs?: number;
  /** Largest watch event or list item kept (default 4 MiB); larger ones are skipped. */
  maxObjectBytes?: number;
  /** A LIST must have been read completely within this long (default 120 s). */
  listTimeoutMs?: number;
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

/** Options of {@link ListWatch}. */
export interface ListWatchOptions<T> extends ListWatchTuning {
  /** The collection, e.g. `/api/v1/pods`. */
  path: string;
  fieldSelector: string;
  /** The parsed object reduced to what the user reads; null when it is not such an object. */
  trim: (value: unknown) => T | null;
  handlers: ListWatchHandlers<T>;
  /** What is listed, for logs ("pod", "node"). */
  noun: string;
  /** `source` of `sourceError` telemetry ("kubernetes", "kubernetes-node"). */
  source: string;
  /** What stays as it is while list/watch fails, for the failure log. */
  whileFailing: string;
  /** Put before "list failed: …" in `health().problem` (default none). */
  problemPrefix?: string;
  /** The text of a failure for health and logs (default: its message). */
  describeError?: (error: unknown) => string;
}

/** Counters for tests and debugging. */
export interface ListWatchStats {
  lists: number;
  watches: number;
  relists: number;
  failures: number;
  /** Watch events and list items skipped because they exceeded `maxObjectBytes`. */
  oversized: number;
  /** Current failure count (drives the backoff; 0 when healthy). */
  backoffFailures: number;
  resourceVersion: string | null;
  watching: boolean;
}

type WatchEnd =
  | { kind: "gone" }
  | { kind: "poison"; identity: string; bytes: number }
  | { kind: "closed"; events: number; durationMs: number };

const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000 };
/** Default cap of the backoff while the API server gives no answer at all. */
const DEFAULT_UNREACHABLE_MAX_MS = 3000;

/** No HTTP answer at all (refused, reset, DNS): not a timeout of a slow, overloaded server. */
function unreachable(error: unknown): boolean {
  return error instanceof KubeApiError && error.status === 0 && error.reason !== "Timeout";
}

function reasonOf(error: unknown, op: "list" | "watch"): string {
  if (error instanceof KubeApiError) {
    if (error.status === 401) return "unauthorized";
    if (error.status === 403) return "forbidden";
    if (error.status === 410) return "gone";
    if (error.reason === "Timeout") return "timeout";
  }
  return op;
}

/** List/watch of one collection. `start()` once, `stop()` to end. */
export class ListWatch<T> {
  #client: KubeClient;
  #o:
    & Required<Omit<ListWatchOptions<T>, "problemPrefix" | "describeError">>
    & Pick<ListWatchOptions<T>, "problemPrefix" | "describeError">;
  #stopped = false;
  #started = false;
  #synced = false;
  #lastSuccessMs: number | null = null;
  #problem: string | undefined;
  #rv: string | null = null;
  #failures = 0;
  #stats = { lists: 0, watches: 0, relists: 0, failures: 0, oversized: 0 };
  #lastError: unknown = null;
  #watching = false;
  #abort: AbortController | null = null;
  #sleepTimer: number | null = null;
  #wake: (() => void) | null = null;
  #loop: Promise<void> | null = null;
  #lastLogged: string | undefined;

  constructor(client: KubeClient, options: ListWatchOptions<T>) {
    this.#client = client;
    this.#o = {
      ...options,
      clock: options.clock ?? systemClock,
      random: options.random ?? Math.random,
      backoff: options.backoff ?? DEFAULT_BACKOFF,
      watchTimeoutSeconds: options.watchTimeoutSeconds ?? 300,
      watchGraceMs: options.watchGraceMs ?? 30_000,
      watchIdleMs: options.watchIdleMs ?? 120_000,
      healthyResetMs: options.healthyResetMs ?? HEALTHY_WATCH_MS,
      maxObjectBytes: options.maxObjectBytes ?? DEFAULT_MAX_OBJECT_BYTES,
      listTimeoutMs: options.listTimeoutMs ?? 120_000,
    };
  }

  /** The collection this loop reads. */
  get path(): string {
    return this.#o.path;
  }

  /** True once a LIST succeeded. */
  get synced(): boolean {
    return this.#synced;
  }

  /** Counters. */
  stats(): ListWatchStats {
    return {
      ...this.#stats,
      backoffFailures: this.#failures,
      resourceVersion: this.#rv,
      watching: this.#watching,
    };
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
      log.error(
        "Kubernetes {noun} list/watch stopped unexpectedly: {error}",
        { noun: this.#o.noun, error: (error as Error).message },
      );
    }).finally(resolve);
    return promise;
  }

  /** Stop: aborts the open request and waits for the loop to end. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#abort?.abort(new DOMException(`${this.#o.noun} list/watch stopped`, "AbortError"));
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
          // Not a reset of the failure count: only a healthy watch proves recovery.
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
      if (end.kind === "gone" || end.kind === "poison") {
        if (end.kind === "gone") {
          // Our resourceVersion is older than the server keeps: relist (a consistent read the
          // second time in a row, in case the server's cache lags behind).
          this.#o.telemetry.sourceError(this.#o.source, "gone");
          log.info(
            "Kubernetes watch expired (410 Gone at resourceVersion {rv}); relisting {noun}s",
            { rv: this.#rv, noun: this.#o.noun },
          );
          consistent = goneStreak++ > 0;
        } else {
          this.#poison(end);
          consistent = false;
        }
        this.#stats.relists++;
        relist = true;
        this.#lastError = null;
        // The first relist after a healthy period is immediate; repeated ones back off.
        if (this.#failures++ > 0) await this.#sleep(this.#nextBackoff());
        continue;
      }
      goneStreak = 0;
      consistent = false;
      if (end.events === 0 && end.durationMs < 1000) {
        // Closed at once without a word: do not hammer the server.
        this.#fail("watch", new Error("watch closed immediately by the API server"));
        await this.#sleep(this.#nextBackoff());
      }
    }
  }

  #poison(end: { identity: string; bytes: number }): void {
    this.#stats.oversized++;
    this.#o.telemetry.sourceError(this.#o.source, "oversized");
    log.warn(
      "Kubernetes watch event for {object} is {bytes} bytes, over the {limit}-byte limit: " +
        "skipped, relisting {noun}s (a {noun} that large is ignored until it shrinks)",
      { object: end.identity, bytes: end.bytes, limit: this.#o.maxObjectBytes, noun: this.#o.noun },
    );
  }

  async #list(consistent: boolean): Promise<void> {
    this.#stats.lists++;
    const abort = new AbortController();
    this.#abort = abort;
    const what = `LIST ${this.#o.path} on ${this.#client.server}`;
    let timedOut = false;
    const timer = this.#o.clock.setTimeout(() => {
      timedOut = true;
      abort.abort(new DOMException("list timed out", "TimeoutError"));
    }, this.#o.listTimeoutMs);
    const items: T[] = [];
    const skipped: string[] = [];
    let head;
    try {
      const stream = await this.#client.stream(this.#o.path, {
        fieldSelector: this.#o.fieldSelector,
        // "0": served from the API server's watch cache (cheap at scale); "" (consistent read)
        // only when a watch from the cached version expired twice in a row.
        resourceVersion: consistent ? undefined : "0",
      }, abort.signal);
      head = await streamPodList(stream, {
        maxItemBytes: this.#o.maxObjectBytes,
        signal: abort.signal,
        onItem: (item) => {
          const parsed = this.#parse(item);
          if (typeof parsed === "string") skipped.push(parsed);
          else if (parsed !== null) items.push(parsed);
        },
      });
    } catch (error) {
      if (error instanceof KubeApiError) throw error;
      throw new KubeApiError(
        timedOut
          ? `${what}: not read completely within ${this.#o.listTimeoutMs} ms`
          : `${what}: ${(error as Error).message}`,
        { status: error instanceof SyntaxError ? 200 : 0, cause: error },
      );
    } finally {
      this.#o.clock.clearTimeout(timer);
    }
    if (head.resourceVersion === undefined || !head.hasItems) {
      throw new KubeApiError(
        `GET ${this.#o.path} on ${this.#client.server}: not a list (no items or ` +
          "metadata.resourceVersion)",
        { status: 200 },
      );
    }
    for (const identity of skipped) {
      this.#stats.oversized++;
      this.#o.telemetry.sourceError(this.#o.source, "oversized");
      log.warn(
        "Kubernetes {noun} {object} is over the {limit}-byte limit: ignored until it shrinks",
        { noun: this.#o.noun, object: identity, limit: this.#o.maxObjectBytes },
      );
    }
    this.#rv = head.resourceVersion;
    this.#synced = true;
    this.#succeeded();
    this.#handle(() => this.#o.handlers.replace(items));
  }

  /** A trimmed object, null for something else, or the identity of an oversized object. */
  #parse(item: BoundedItem): T | null | string {
    if (item.kind === "oversized") return item.identity;
    return this.#o.trim(JSON.parse(item.text));
  }

  async #watchOnce(): Promise<WatchEnd> {
    const clock = this.#o.clock;
    const path = this.#o.path;
    const timeoutSeconds = Math.floor(
      this.#o.watchTimeoutSeconds * (1 + 0.5 * this.#o.random()),
    );
    const abort = new AbortController();
    this.#abort = abort;
    this.#stats.watches++;
    const started = clock.now();
    const stream = await this.#client.stream(path, {
      watch: true,
      fieldSelector: this.#o.fieldSelector,
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
    // One idle timer, not one per chunk: a chunk only notes its time; when the timer fires after
    // chunks came, it is armed again for what is left of idleMs after the last one.
    let idleTimer: number | null = null;
    let lastChunkAt = started;
    let chunksSinceArmed = 0;
    const armIdle = (ms: number) => {
      idleTimer = clock.setTimeout(() => {
        idleTimer = null;
        if (chunksSinceArmed === 0) {
          stalled = `no data for ${idleMs} ms`;
          abort.abort(new DOMException("watch idle", "TimeoutError"));
          return;
        }
        chunksSinceArmed = 0;
        armIdle(Math.max(1, idleMs - (clock.now() - lastChunkAt)));
      }, ms);
    };
    const onChunk = () => {
      lastChunkAt = clock.now();
      chunksSinceArmed++;
    };
    if (idleMs > 0) armIdle(idleMs);
    // A watch that stays open this long proves the server healthy: forget earlier failures.
    const healthyTimer = clock.setTimeout(() => {
      this.#failures = 0;
      this.#lastError = null;
    }, this.#o.healthyResetMs);
    let events = 0;
    try {
      // Every chunk counts as data for the idle timer, also while an oversized line is skipped.
      const lines = boundedLines(stream, this.#o.maxObjectBytes, {
        signal: abort.signal,
        onChunk,
      });
      for await (const item of lines) {
        events++;
        if (item.kind === "oversized") {
          return { kind: "poison", identity: item.identity, bytes: item.bytes };
        }
        if (this.#onWatchLine(item.text) === "gone") return { kind: "gone" };
      }
      if (stalled !== null) throw new Error("aborted");
      return { kind: "closed", events, durationMs: clock.now() - started };
    } catch (error) {
      if (stalled !== null) {
        throw new KubeApiError(
          `watch ${path} on ${this.#client.server} stalled: ${stalled}`,
          { status: 0, reason: "Timeout", cause: error },
        );
      }
      if (error instanceof KubeApiError) throw error;
      throw new KubeApiError(
        `watch ${path} on ${this.#client.server} broke: ${(error as Error).message}`,
        { status: 0, cause: error },
      );
    } finally {
      this.#watching = false;
      clock.clearTimeout(stallTimer);
      clock.clearTimeout(healthyTimer);
      if (idleTimer !== null) clock.clearTimeout(idleTimer);
      abort.abort();
    }
  }

  /** Handle one watch line; "gone" when the server says our resourceVersion expired. */
  #onWatchLine(line: string): "gone" | void {
    let event: { type?: unknown; object?: unknown };
    try {
      event = JSON.parse(line);
    } catch {
      throw new KubeApiError(`watch ${this.#o.path}: malformed event line`, { status: 200 });
    }
    const type = event.type;
    const object = event.object as
      | { metadata?: { resourceVersion?: unknown }; code?: unknown; message?: unknown }
      | undefined;
    if (type === "ERROR") {
      const code = typeof object?.code === "number" ? object.code : 0;
      if (code === 410) return "gone";
      throw new KubeApiError(
        `watch ${this.#o.path} on ${this.#client.server}: ERROR event ${code}: ${
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
    const item = this.#o.trim(object);
    if (item === null) return;
    if (typeof rv === "string") this.#rv = rv;
    this.#lastSuccessMs = this.#o.clock.now();
    this.#handle(() => this.#o.handlers.event(type, item));
  }

  /** Run a handler; its failure is logged, never ends the loop. */
  #handle(call: () => void): void {
    try {
      call();
    } catch (error) {
      log.error(
        "Handling a {noun} update failed: {error}",
        { noun: this.#o.noun, error: (error as Error).stack ?? String(error) },
      );
    }
  }

  #succeeded(): void {
    this.#lastSuccessMs = this.#o.clock.now();
    if (this.#problem !== undefined) {
      log.info(
        "Kubernetes {noun}s readable again ({server})",
        { noun: this.#o.noun, server: this.#client.server },
      );
    }
    this.#problem = undefined;
    this.#lastLogged = undefined;
  }

  #fail(op: "list" | "watch", error: unknown): void {
    this.#failures++;
    this.#lastError = error;
    this.#stats.failures++;
    const message = this.#o.describeError?.(error) ?? (error as Error).message ?? String(error);
    this.#problem = `${this.#o.problemPrefix ?? ""}${op} failed: ${message}`;
    this.#o.telemetry.sourceError(this.#o.source, reasonOf(error, op));
    const props = { noun: this.#o.noun, op, error: message, failures: this.#failures };
    if (this.#lastLogged !== message) {
      this.#lastLogged = message;
      const level = error instanceof KubeApiError && error.status === 403 ? "error" : "warn";
      log[level](
        `Kubernetes {noun} {op} failed (${this.#o.whileFailing}; retrying): {error}`,
        props,
      );
    } else {
      log.debug("Kubernetes {noun} {op} failed again ({failures}): {error}", props);
    }
  }

  #nextBackoff(): number {
    const { initialMs, maxMs } = this.#o.backoff;
    const cap = unreachable(this.#lastError)
      ? Math.min(maxMs, this.#o.backoff.unreachableMaxMs ?? DEFAULT_UNREACHABLE_MAX_MS)
      : maxMs;
    const exponent = Math.min(Math.max(this.#failures - 1, 0), 30);
    const base = Math.min(cap, initialMs * 2 ** exponent);
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
