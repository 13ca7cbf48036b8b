/**
 * Informer for the pods of one node: LIST (`spec.nodeName=<node>`, optionally in one
 * namespace), then WATCH from the list's resourceVersion with bookmarks; re-watch from the last
 * resourceVersion when a watch ends; relist on 410 Gone. In steady state it holds exactly one
 * watch and never polls.
 *
 * Backoff (like client-go's reflector): one failure count covers failed LISTs, failed or
 * dropped watches, 410 Gone relists and poison events; every retry after the first waits a
 * jittered, capped exponential delay (a successful LIST does not reset it, so a watch that
 * keeps answering 410 cannot cause a relist storm). The count is reset once a watch has stayed
 * open for `healthyResetMs` (30 s), so an old outage never slows down recovery from a later one.
 * While the API server cannot be reached at all (no HTTP answer), the delay is capped lower
 * (`unreachableMaxMs`, 3 s) so the first change after it returns is applied within seconds.
 *
 * Memory: pods are trimmed to the fields the agent reads as they are parsed (`KubePod`), the
 * LIST is parsed item by item, and no watch line or list item over `maxObjectBytes` is held
 * whole: such an object is skipped (logged, counted as `oversized`) and the informer relists
 * past it.
 */
import { getLogger } from "@logtape/logtape";
import type { SourceHealth } from "./cap_source.ts";
import type { Clock } from "../clock.ts";
import { systemClock } from "../clock.ts";
import type { Telemetry } from "../metrics/telemetry.ts";
import { KubeApiError, type KubeClient } from "./kubernetes_client.ts";
import type { ContainerResourceSpec } from "./pod_resources_devices.ts";
import {
  type BoundedItem,
  boundedLines,
  DEFAULT_MAX_OBJECT_BYTES,
  HEALTHY_WATCH_MS,
  streamPodList,
} from "./kubernetes_stream.ts";

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
  spec?: {
    nodeName?: string;
    /** Read for their GPU resource requests (PodResources mapping: which pods to wait for). */
    containers?: ContainerResourceSpec[];
    initContainers?: ContainerResourceSpec[];
  };
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
  /** Default 500 ms → 30 s (3 s while unreachable). */
  backoff?: BackoffOptions;
  /** A watch open this long resets the failure count (default 30 s). */
  healthyResetMs?: number;
  /** Largest watch event or list item kept (default 4 MiB); larger ones are skipped. */
  maxObjectBytes?: number;
  /**
   * Annotations kept on each pod (the rest are dropped as pods are parsed); default: all.
   */
  annotationKeys?: readonly string[];
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

/** Counters for tests and debugging. */
export interface InformerStats {
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

/** Pod informer for one node. `start()` once, `stop()` to end. */
export class PodInformer {
  #client: KubeClient;
  #o:
    & Required<Omit<PodInformerOptions, "namespace" | "annotationKeys">>
    & Pick<PodInformerOptions, "namespace" | "annotationKeys">;
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
      healthyResetMs: options.healthyResetMs ?? HEALTHY_WATCH_MS,
      maxObjectBytes: options.maxObjectBytes ?? DEFAULT_MAX_OBJECT_BYTES,
      listTimeoutMs: options.listTimeoutMs ?? 120_000,
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
        const log = getLogger(["gpu-power-agent", "kubernetes"]);
        if (end.kind === "gone") {
          // Our resourceVersion is older than the server keeps: relist (a consistent read the
          // second time in a row, in case the server's cache lags behind).
          this.#o.telemetry.sourceError("kubernetes", "gone");
          log.info(
            "Kubernetes watch expired (410 Gone at resourceVersion {rv}); relisting pods",
            { rv: this.#rv },
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
    this.#o.telemetry.sourceError("kubernetes", "oversized");
    getLogger(["gpu-power-agent", "kubernetes"]).warn(
      "Kubernetes watch event for {pod} is {bytes} bytes, over the {limit}-byte limit: " +
        "skipped, relisting pods (a pod that large is ignored until it shrinks)",
      { pod: end.identity, bytes: end.bytes, limit: this.#o.maxObjectBytes },
    );
  }

  async #list(consistent: boolean): Promise<void> {
    this.#stats.lists++;
    const abort = new AbortController();
    this.#abort = abort;
    const what = `LIST ${this.podsPath} on ${this.#client.server}`;
    let timedOut = false;
    const timer = this.#o.clock.setTimeout(() => {
      timedOut = true;
      abort.abort(new DOMException("list timed out", "TimeoutError"));
    }, this.#o.listTimeoutMs);
    const pods: KubePod[] = [];
    const skipped: string[] = [];
    let head;
    try {
      const stream = await this.#client.stream(this.podsPath, {
        fieldSelector: `spec.nodeName=${this.#o.nodeName}`,
        // "0": served from the API server's watch cache (cheap at scale); "" (consistent read)
        // only when a watch from the cached version expired twice in a row.
        resourceVersion: consistent ? undefined : "0",
      }, abort.signal);
      head = await streamPodList(stream, {
        maxItemBytes: this.#o.maxObjectBytes,
        signal: abort.signal,
        onItem: (item) => {
          const pod = this.#parse(item);
          if (typeof pod === "string") skipped.push(pod);
          else if (pod) pods.push(pod);
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
        `GET ${this.podsPath} on ${this.#client.server}: not a PodList (no items or ` +
          "metadata.resourceVersion)",
        { status: 200 },
      );
    }
    for (const identity of skipped) {
      this.#stats.oversized++;
      this.#o.telemetry.sourceError("kubernetes", "oversized");
      getLogger(["gpu-power-agent", "kubernetes"]).warn(
        "Pod {pod} is over the {limit}-byte limit: ignored until it shrinks",
        { pod: identity, limit: this.#o.maxObjectBytes },
      );
    }
    this.#rv = head.resourceVersion;
    this.#synced = true;
    this.#succeeded();
    try {
      this.#o.handlers.replace(pods);
    } catch (error) {
      this.#handlerError(error);
    }
  }

  /** A trimmed pod, null for something else, or the identity of an oversized object. */
  #parse(item: BoundedItem): KubePod | null | string {
    if (item.kind === "oversized") return item.identity;
    return trimPod(JSON.parse(item.text), this.#o.annotationKeys);
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
    // A watch that stays open this long proves the server healthy: forget earlier failures.
    const healthyTimer = clock.setTimeout(() => {
      this.#failures = 0;
      this.#lastError = null;
    }, this.#o.healthyResetMs);
    let events = 0;
    try {
      // Every chunk re-arms the idle timer, also while an oversized line is being skipped.
      const lines = boundedLines(stream, this.#o.maxObjectBytes, {
        signal: abort.signal,
        onChunk: armIdle,
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
    const pod = trimPod(object, this.#o.annotationKeys);
    if (!pod) return;
    if (typeof rv === "string") this.#rv = rv;
    this.#lastSuccessMs = this.#o.clock.now();
    try {
      this.#o.handlers.event(type, pod);
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
    this.#lastError = error;
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

/**
 * The fields of a Pod the agent reads, copied out of a parsed object so the rest can be
 * collected (`annotationKeys`: the annotations to keep; all when undefined). Null when the
 * object is not a pod (no uid, name or namespace).
 */
export function trimPod(value: unknown, annotationKeys?: readonly string[]): KubePod | null {
  const object = value as {
    metadata?: Record<string, unknown>;
    spec?: Record<string, unknown>;
    status?: Record<string, unknown>;
  } | null;
  const m = object?.metadata;
  if (
    typeof m !== "object" || m === null || typeof m.uid !== "string" ||
    typeof m.name !== "string" || typeof m.namespace !== "string"
  ) {
    return null;
  }
  const metadata: KubePod["metadata"] = { name: m.name, namespace: m.namespace, uid: m.uid };
  if (typeof m.resourceVersion === "string") metadata.resourceVersion = m.resourceVersion;
  if (typeof m.deletionTimestamp === "string") metadata.deletionTimestamp = m.deletionTimestamp;
  const annotations = m.annotations as Record<string, unknown> | undefined;
  if (typeof annotations === "object" && annotations !== null) {
    const kept: Record<string, string> = {};
    let any = false;
    for (const key of annotationKeys ?? Object.keys(annotations)) {
      const v = annotations[key];
      if (typeof v === "string") {
        kept[key] = v;
        any = true;
      }
    }
    if (any) metadata.annotations = kept;
  }
  const pod: KubePod = { metadata };
  const nodeName = object?.spec?.nodeName;
  if (typeof nodeName === "string") pod.spec = { nodeName };
  // Which extended resources (GPUs, MIG devices) the containers ask for: a GPU pod's event makes
  // the PodResources mapping ask the kubelet for its devices. cpu/memory are not kept.
  for (const field of ["containers", "initContainers"] as const) {
    const kept = trimContainers(object?.spec?.[field]);
    if (kept) pod.spec = { ...pod.spec, [field]: kept };
  }
  const phase = object?.status?.phase;
  if (typeof phase === "string") pod.status = { phase };
  return pod;
}

/** Containers reduced to their extended-resource (`vendor/name`) limits and requests; null if none. */
function trimContainers(value: unknown): ContainerResourceSpec[] | null {
  if (!Array.isArray(value)) return null;
  const out: ContainerResourceSpec[] = [];
  for (const container of value) {
    const resources = (container as { resources?: Record<string, unknown> } | null)?.resources;
    const limits = extendedResources(resources?.limits);
    const requests = extendedResources(resources?.requests);
    if (limits || requests) {
      out.push({ resources: { ...(limits ? { limits } : {}), ...(requests ? { requests } : {}) } });
    }
  }
  return out.length > 0 ? out : null;
}

function extendedResources(value: unknown): Record<string, string> | null {
  if (typeof value !== "object" || value === null) return null;
  let kept: Record<string, string> | null = null;
  for (const [name, quantity] of Object.entries(value)) {
    if (name.includes("/") && (typeof quantity === "string" || typeof quantity === "number")) {
      (kept ??= {})[name] = String(quantity);
    }
  }
  return kept;
}
