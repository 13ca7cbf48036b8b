/**
 * Keeps the kubelet's pod → device allocations of this node current, and freezes them when the
 * kubelet cannot be asked.
 *
 * The PodResources v1 API has no watch, so the tracker calls `List`:
 * - on {@linkcode PodResourcesTracker.refresh} (the caller calls it on a pod event for this node),
 *   retrying after 100, 200, 400, 800, 1600 and 2000 ms until the pod's tracked devices appear
 *   (the kubelet allocates devices at admission, shortly after the pod is bound) — as long as the
 *   Lists succeed: a failed one ends the pod's retries, the failure schedule below asks again;
 * - every `resyncMs` (default 30 s) as a safety net; while Lists fail, sooner: after 1 s, doubling
 *   up to `resyncMs`, so that a restarted kubelet is asked again within seconds.
 * Concurrent refreshes share Lists: a refresh during a List waits for one List that starts after
 * it, never for one that might predate the allocation.
 *
 * A failed List (socket absent, refused, hang past the deadline, kubelet restart) never changes
 * what {@linkcode PodResourcesTracker.allocations} reports: the last good answer stays, like the
 * pod informer's cache during an API outage. {@linkcode PodResourcesTracker.health} says so, for
 * `/readyz` and a metric; the failure is logged once when it starts and once when it ends.
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import type { PodAllocation, PodResourcesClient } from "./pod_resources.ts";
import {
  DEFAULT_GPU_RESOURCE_NAMES,
  gpuResourceMatcher,
  type PodRef,
} from "./pod_resources_devices.ts";

/** Default delays between Lists while waiting for a pod's devices (about 5 s in all). */
export const DEFAULT_REFRESH_RETRY_DELAYS_MS: readonly number[] = Object.freeze([
  100,
  200,
  400,
  800,
  1600,
  2000,
]);

/** Default period of the safety-net List. */
export const DEFAULT_POD_RESOURCES_RESYNC_MS = 30_000;

/** What the tracker knows about its own freshness. */
export interface PodResourcesHealth {
  /** A List succeeded at least once, so the allocations mean something. */
  synced: boolean;
  /** When the last List succeeded (epoch ms), null before the first. */
  lastSuccessMs: number | null;
  /** Why the latest List failed (the allocations are frozen meanwhile); null when it worked. */
  problem: string | null;
  /** Lists failed in a row. */
  consecutiveFailures: number;
}

/** Options of {@linkcode PodResourcesTracker}. */
export interface PodResourcesTrackerOptions {
  /** Period of the safety-net List, ms (default 30 000; 0 turns it off). */
  resyncMs?: number;
  /** Delays between Lists while waiting for a pod's devices (default about 5 s in all). */
  retryDelaysMs?: readonly number[];
  /** Tracked resource names: a pod "has devices" when it holds one of these. */
  resourceNames?: readonly string[];
  /** Called after a List whose answer differs from the previous good one (the first included). */
  onChange?: (allocations: readonly PodAllocation[]) => void;
  /** Clock for `lastSuccessMs` (default `Date.now`). */
  now?: () => number;
  /** First delay of the safety-net List after a failed one, doubling up to `resyncMs` (1000). */
  failureRetryMs?: number;
  /**
   * Log failures that happen before the first successful List (default true). The `auto`
   * mapping turns this off and explains a socket that never answers itself.
   */
  logFailuresBeforeSync?: boolean;
}

function fingerprint(allocations: readonly PodAllocation[]): string {
  const key = (p: PodAllocation) => `${p.namespace}/${p.name}`;
  return JSON.stringify([...allocations].sort((a, b) => key(a) < key(b) ? -1 : 1));
}

/** The last good allocations of this node's pods, refreshed on demand and periodically. */
export class PodResourcesTracker {
  #client: Pick<PodResourcesClient, "list" | "socketPath">;
  #resyncMs: number;
  #retryDelaysMs: readonly number[];
  #tracked: (resourceName: string) => boolean;
  #onChange: (allocations: readonly PodAllocation[]) => void;
  #now: () => number;
  #failureRetryMs: number;
  #logBeforeSync: boolean;
  #logger = getLogger(["gpu-power-agent", "pod-resources"]);

  #allocations: readonly PodAllocation[] = [];
  #fingerprint: string | null = null;
  #health: PodResourcesHealth = {
    synced: false,
    lastSuccessMs: null,
    problem: null,
    consecutiveFailures: 0,
  };
  #current: Promise<boolean> | null = null;
  #next: Promise<boolean> | null = null;
  #resyncTimer: ReturnType<typeof setTimeout> | undefined;
  #sleeps = new Map<ReturnType<typeof setTimeout>, () => void>();
  #stopped = false;
  #started = false;

  constructor(
    client: Pick<PodResourcesClient, "list" | "socketPath">,
    options: PodResourcesTrackerOptions = {},
  ) {
    this.#client = client;
    this.#resyncMs = options.resyncMs ?? DEFAULT_POD_RESOURCES_RESYNC_MS;
    this.#retryDelaysMs = options.retryDelaysMs ?? DEFAULT_REFRESH_RETRY_DELAYS_MS;
    this.#tracked = gpuResourceMatcher(options.resourceNames ?? DEFAULT_GPU_RESOURCE_NAMES);
    this.#onChange = options.onChange ?? (() => {});
    this.#now = options.now ?? Date.now;
    this.#failureRetryMs = options.failureRetryMs ?? 1000;
    this.#logBeforeSync = options.logFailuresBeforeSync ?? true;
  }

  /** Lists once and starts the safety-net Lists; resolves with whether the first List worked. */
  async start(): Promise<boolean> {
    this.#started = true;
    const ok = await this.#list();
    this.#scheduleResync();
    return ok;
  }

  /** The pods and their devices as of the last successful List (empty before the first). */
  allocations(): readonly PodAllocation[] {
    return this.#allocations;
  }

  /** Freshness of {@linkcode allocations}. */
  health(): PodResourcesHealth {
    return { ...this.#health };
  }

  /**
   * Lists again (after any List already in flight). With `pod`, keeps listing with the retry
   * delays until the pod holds a tracked device; resolves true once it does (without `pod`:
   * once a List worked), false when the delays ran out, a List failed (the failure schedule asks
   * again), or `stop` was called.
   */
  async refresh(pod?: PodRef): Promise<boolean> {
    let ok = await this.#list();
    if (pod === undefined) return ok;
    for (const delay of this.#retryDelaysMs) {
      if (ok && this.#hasTrackedDevice(pod)) return true;
      // A failing kubelet (socket absent, refused, hanging) is asked again by the failure
      // schedule (1 s, doubling): every pod event's own retries would only repeat the failure.
      if (!ok) return false;
      if (this.#stopped) return false;
      await this.#sleep(delay);
      if (this.#stopped) return false;
      ok = await this.#list();
    }
    return ok && this.#hasTrackedDevice(pod);
  }

  /** Stops the safety-net Lists and pending retries; the allocations stay readable. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#resyncTimer);
    for (const [timer, wake] of this.#sleeps) {
      clearTimeout(timer);
      wake();
    }
    this.#sleeps.clear();
  }

  /** Whether the last good List shows `pod` holding a device of a tracked resource. */
  hasDevices(pod: PodRef): boolean {
    return this.#hasTrackedDevice(pod);
  }

  #hasTrackedDevice(pod: PodRef): boolean {
    const found = this.#allocations.find((p) =>
      p.namespace === pod.namespace && p.name === pod.name
    );
    return found?.containers.some((c) =>
      c.devices.some((d) => d.deviceIds.length > 0 && this.#tracked(d.resourceName))
    ) ?? false;
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#sleeps.delete(timer);
        resolve();
      }, ms);
      this.#sleeps.set(timer, resolve);
    });
  }

  #scheduleResync(): void {
    if (this.#stopped || this.#resyncMs <= 0) return;
    clearTimeout(this.#resyncTimer);
    const failures = this.#health.consecutiveFailures;
    const delay = failures === 0
      ? this.#resyncMs
      : Math.min(this.#resyncMs, this.#failureRetryMs * 2 ** Math.min(failures - 1, 16));
    this.#resyncTimer = setTimeout(() => {
      this.#list().finally(() => this.#scheduleResync());
    }, delay);
  }

  /** One List that starts now, or right after the one in flight. */
  #list(): Promise<boolean> {
    if (this.#current === null) {
      this.#current = this.#listNow().finally(() => {
        this.#current = null;
      });
      return this.#current;
    }
    this.#next ??= this.#current.then(() => {
      this.#next = null;
      return this.#list();
    });
    return this.#next;
  }

  async #listNow(): Promise<boolean> {
    let allocations: PodAllocation[];
    try {
      allocations = await this.#client.list();
    } catch (error) {
      const problem = error instanceof Error ? error.message : String(error);
      if (this.#health.problem === null && (this.#health.synced || this.#logBeforeSync)) {
        this.#logger.warn(
          "Cannot list the kubelet's pod resources; pod→GPU allocations stay as last listed " +
            "until it answers: {problem}",
          { problem, socket: this.#client.socketPath },
        );
      }
      this.#health = {
        ...this.#health,
        problem,
        consecutiveFailures: this.#health.consecutiveFailures + 1,
      };
      // Ask again soon (backing off), not only at the next safety-net List.
      if (this.#started) this.#scheduleResync();
      return false;
    }
    if (this.#health.problem !== null && (this.#health.synced || this.#logBeforeSync)) {
      this.#logger.info("The kubelet's pod resources answer again after {failures} failed Lists", {
        failures: this.#health.consecutiveFailures,
        socket: this.#client.socketPath,
      });
    }
    this.#health = {
      synced: true,
      lastSuccessMs: this.#now(),
      problem: null,
      consecutiveFailures: 0,
    };
    const next = fingerprint(allocations);
    if (next !== this.#fingerprint) {
      this.#fingerprint = next;
      this.#allocations = Object.freeze(allocations);
      try {
        this.#onChange(this.#allocations);
      } catch (error) {
        // A listener's bug must not stop the Lists (nor reject a refresh).
        this.#logger.error("Pod resources listener failed: {error}", { error });
      }
    }
    return true;
  }
}
