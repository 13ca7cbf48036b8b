/**
 * What the Kubernetes source knows about the pods of its node and which GPUs they use.
 *
 * - Pods: the few fields the policy needs, from the informer (not whole Pod objects).
 * - PID → pod UID cache: a process never changes pod, so `/proc/<pid>/cgroup` is read once per
 *   process. Entries are keyed by PID and process start time (`/proc/<pid>/stat`), so a PID the
 *   kernel reused for a process of another pod is read again; only PIDs seen on some GPU in the
 *   latest scan are kept (even while another GPU's process query fails), so the cache never
 *   outgrows the processes on the GPUs. The start time of a PID seen in consecutive scans is
 *   checked again at most once a second ({@linkcode START_TIME_RECHECK_MS}): the kernel hands
 *   out PIDs in a cycle and gives one again only after the counter has wrapped past
 *   `kernel.pid_max` (32768 at the least, 4194304 by default on 64-bit systemd hosts), which no
 *   node does within a second; a PID that leaves every GPU's list for one scan is forgotten and
 *   read afresh. Under a burst of pod events (20/s) a pass thus makes no `/proc` reads at all.
 * - Pod → GPU associations: remembered while the pod exists and is not Succeeded/Failed, so a
 *   cap survives a process restart inside the pod.
 */
import { parsePowerAnnotation, type PowerAnnotation } from "./annotation.ts";
import { readPodUidOfPid } from "./cgroup.ts";
import { readProcessStartTime } from "./proc_stat.ts";
import type { KubePod } from "./kubernetes_informer.ts";

/** One pod on the node. */
export interface PodRecord {
  uid: string;
  namespace: string;
  name: string;
  /** Raw annotation value (undefined when absent). */
  annotationValue: string | undefined;
  annotation: PowerAnnotation;
}

/** Result of a process scan. */
export interface ScanResult {
  /** GPUs whose processes could not be listed (associations kept as they were). */
  failed: Array<{ uuid: string; error: string }>;
  /** Associations added by this scan. */
  added: number;
}

/** A GPU as the scan needs it: its compute PIDs observed this pass (null: not readable). */
export interface ScanGpu {
  index: number;
  uuid: string;
  pids: readonly number[] | null;
  /** Why the PIDs could not be read. */
  pidsError?: string;
}

function terminal(pod: KubePod): boolean {
  const phase = pod.status?.phase;
  return phase === "Succeeded" || phase === "Failed";
}

/**
 * How long (ms) the start time of a cached PID is trusted before `/proc/<pid>/stat` is read
 * again (see the module doc).
 */
export const START_TIME_RECHECK_MS = 1000;

/** What the cache knows of one process. */
interface PidEntry {
  /** Start time from /proc/<pid>/stat (null when that file cannot be read). */
  start: string | null;
  /** When `start` was last read (ms, the scan's clock). */
  checkedMs: number;
  /** Pod UID, or null for a process outside any pod. */
  uid: string | null;
}

/** Pods, PID cache and pod → GPU associations. */
export class PodIndex {
  #annotationKey: string;
  #pods = new Map<string, PodRecord>();
  /** The pods of `#pods` that carry the annotation (few, however many pods the node runs). */
  #annotated = new Map<string, PodRecord>();
  #pidUid = new Map<number, PidEntry>();
  #gpusOf = new Map<string, Set<string>>();

  constructor(annotationKey: string) {
    this.#annotationKey = annotationKey;
  }

  /** Number of pods known (non-terminal). */
  get size(): number {
    return this.#pods.size;
  }

  /** Number of cached PIDs. */
  get cachedPids(): number {
    return this.#pidUid.size;
  }

  /** A pod by UID. */
  get(uid: string): PodRecord | undefined {
    return this.#pods.get(uid);
  }

  /** All known pods. */
  pods(): IterableIterator<PodRecord> {
    return this.#pods.values();
  }

  /** The known pods that carry the annotation (valid or not). */
  annotatedPods(): IterableIterator<PodRecord> {
    return this.#annotated.values();
  }

  /** GPU UUIDs a pod is associated with. */
  gpusOf(uid: string): ReadonlySet<string> {
    return this.#gpusOf.get(uid) ?? new Set();
  }

  /** True when the pod is associated with some GPU. */
  hasGpus(uid: string): boolean {
    return (this.#gpusOf.get(uid)?.size ?? 0) > 0;
  }

  /** True when some cached PID runs in this pod. */
  hasProcess(uid: string): boolean {
    for (const entry of this.#pidUid.values()) if (entry.uid === uid) return true;
    return false;
  }

  /**
   * Replace every pod (after a LIST). Returns true when anything the policy sees changed.
   * Associations of pods that are gone are dropped.
   */
  replace(pods: readonly KubePod[]): boolean {
    const next = new Map<string, PodRecord>();
    for (const pod of pods) {
      if (terminal(pod)) continue;
      next.set(pod.metadata.uid, this.#record(pod));
    }
    let changed = next.size !== this.#pods.size;
    for (const [uid, record] of next) {
      const before = this.#pods.get(uid);
      if (!before || before.annotationValue !== record.annotationValue) changed = true;
    }
    for (const uid of this.#gpusOf.keys()) {
      if (!next.has(uid)) {
        this.#gpusOf.delete(uid);
        changed = true;
      }
    }
    this.#pods = next;
    this.#annotated = new Map([...next].filter(([, pod]) => pod.annotationValue !== undefined));
    return changed;
  }

  /**
   * Apply one watch event. Returns the previous and new record (undefined when absent/removed)
   * and whether the pod had GPU associations before.
   */
  apply(
    type: "ADDED" | "MODIFIED" | "DELETED",
    pod: KubePod,
  ): { before?: PodRecord; after?: PodRecord; hadGpus: boolean } {
    const uid = pod.metadata.uid;
    const before = this.#pods.get(uid);
    const hadGpus = (this.#gpusOf.get(uid)?.size ?? 0) > 0;
    if (type === "DELETED" || terminal(pod)) {
      this.#pods.delete(uid);
      this.#annotated.delete(uid);
      this.#gpusOf.delete(uid);
      return { before, hadGpus };
    }
    const after = this.#record(pod);
    this.#pods.set(uid, after);
    if (after.annotationValue !== undefined) this.#annotated.set(uid, after);
    else this.#annotated.delete(uid);
    return { before, after, hadGpus };
  }

  /**
   * Find the pods using each GPU now: observed PIDs → cgroup → pod UID, for pods in the index.
   * A GPU whose PIDs could not be read keeps its associations as they were. Never throws.
   * `nowMs` (the caller's clock) dates the start-time checks.
   */
  scan(gpus: readonly ScanGpu[], options: { procRoot: string; nowMs: number }): ScanResult {
    const { procRoot, nowMs } = options;
    const seen = new Set<number>();
    const failed: ScanResult["failed"] = [];
    let added = 0;
    for (const gpu of gpus) {
      const pids = gpu.pids;
      if (pids === null) {
        failed.push({ uuid: gpu.uuid, error: gpu.pidsError ?? "compute PIDs not observed" });
        continue;
      }
      for (const pid of pids) {
        seen.add(pid);
        let entry = this.#pidUid.get(pid);
        if (entry === undefined || nowMs - entry.checkedMs >= START_TIME_RECHECK_MS) {
          const start = readProcessStartTime(procRoot, pid) ?? null;
          // Another start time: the PID now names another process (maybe of another pod).
          if (entry !== undefined && entry.start !== start) entry = undefined;
          if (entry === undefined) {
            const read = readPodUidOfPid(procRoot, pid);
            if (read === undefined) {
              this.#pidUid.delete(pid);
              continue; // Vanished, or unreadable: try again next scan.
            }
            entry = { start, checkedMs: nowMs, uid: read };
            this.#pidUid.set(pid, entry);
          }
          entry.checkedMs = nowMs;
        }
        const uid = entry.uid;
        if (uid === null || !this.#pods.has(uid)) continue;
        let set = this.#gpusOf.get(uid);
        if (!set) {
          set = new Set();
          this.#gpusOf.set(uid, set);
        }
        if (!set.has(gpu.uuid)) {
          set.add(gpu.uuid);
          added++;
        }
      }
    }
    // Keep only processes seen now: a GPU whose query failed keeps its associations
    // (#gpusOf), not cache entries that may be stale by the time it answers again.
    for (const pid of [...this.#pidUid.keys()]) if (!seen.has(pid)) this.#pidUid.delete(pid);
    return { failed, added };
  }

  /** Pods associated with each GPU UUID. */
  podsByGpu(): Map<string, PodRecord[]> {
    const result = new Map<string, PodRecord[]>();
    for (const [uid, gpus] of this.#gpusOf) {
      const pod = this.#pods.get(uid);
      if (!pod) continue;
      for (const uuid of gpus) {
        const list = result.get(uuid) ?? [];
        list.push(pod);
        result.set(uuid, list);
      }
    }
    return result;
  }

  #record(pod: KubePod): PodRecord {
    const value = pod.metadata.annotations?.[this.#annotationKey];
    const previous = this.#pods.get(pod.metadata.uid);
    return {
      uid: pod.metadata.uid,
      namespace: pod.metadata.namespace,
      name: pod.metadata.name,
      annotationValue: value,
      annotation: previous && previous.annotationValue === value
        ? previous.annotation
        : parsePowerAnnotation(value),
    };
  }
}
