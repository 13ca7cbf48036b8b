/**
 * Which cap a GPU gets from the pods that use it (Kubernetes mode). Pure: no I/O, no clock.
 *
 * - No pod on the GPU asks (no annotation) → no cap: the GPU is unmanaged.
 * - Every pod asks with a valid value and they agree → that value.
 * - Pods disagree, a pod's value is invalid, or a co-tenant has no annotation while another
 *   asks → the safe default (fail closed).
 * - Annotations of pods outside `allowedNamespaces` are ignored (treated as absent).
 * - `minMw`/`maxMw` (floor/ceiling) apply to the result, before the device clamp.
 */
import type { DesiredCap } from "../sources/cap_source.ts";
import { formatWatts, type PowerAnnotation } from "../sources/annotation.ts";

/** One pod using a GPU, with its parsed annotation. */
export interface GpuPod {
  namespace: string;
  name: string;
  uid: string;
  annotation: PowerAnnotation;
}

/** Options of `decideGpuCap`. */
export interface SharedGpuPolicyOptions {
  /** Cap when pods disagree or ask invalidly (milliwatts). */
  safeDefaultMw: number;
  /** Only annotations of pods in these namespaces count; undefined/empty = all namespaces. */
  allowedNamespaces?: readonly string[];
  /** Floor applied to every cap (milliwatts). */
  minMw?: number;
  /** Ceiling applied to every cap (milliwatts). */
  maxMw?: number;
  /** The GPU's settable range, to report device clamping in outcome events (optional). */
  deviceLimits?: { minMw: number; maxMw: number };
  /** GPU label for messages, e.g. `GPU 0 (GPU-8d5b…)`. */
  gpuLabel?: string;
}

/** Kubernetes Event reasons the agent emits on pods. */
export type OutcomeReason = "CapApplied" | "CapClamped" | "CapRejected" | "SafeDefaultApplied";

/** What a pod should be told about the decision for one GPU (a Kubernetes Event). */
export interface OutcomeEvent {
  pod: { namespace: string; name: string; uid: string };
  reason: OutcomeReason;
  type: "Normal" | "Warning";
  message: string;
}

/** A pod annotation that was ignored because its namespace is not allowed. */
export interface IgnoredAnnotation {
  pod: { namespace: string; name: string; uid: string };
  message: string;
}

/** The decision for one GPU. */
export interface GpuDecision {
  /** The cap, or null when no pod asks (unmanaged). */
  cap: DesiredCap | null;
  /** Events to emit on the pods (the caller deduplicates). */
  events: OutcomeEvent[];
  /** Annotations ignored because of `allowedNamespaces` (the caller logs them, deduplicated). */
  ignored: IgnoredAnnotation[];
}

function podRef(p: GpuPod): string {
  return `${p.namespace}/${p.name}`;
}

function bound(mw: number, options: SharedGpuPolicyOptions): { mw: number; note?: string } {
  if (options.minMw !== undefined && mw < options.minMw) {
    return {
      mw: options.minMw,
      note: `raised to the --min-watts floor ${formatWatts(options.minMw)}`,
    };
  }
  if (options.maxMw !== undefined && mw > options.maxMw) {
    return {
      mw: options.maxMw,
      note: `lowered to the --max-watts ceiling ${formatWatts(options.maxMw)}`,
    };
  }
  return { mw };
}

function deviceNote(mw: number, options: SharedGpuPolicyOptions): { mw: number; note?: string } {
  const limits = options.deviceLimits;
  if (!limits) return { mw };
  if (mw < limits.minMw) {
    return { mw: limits.minMw, note: `raised to the GPU minimum ${formatWatts(limits.minMw)}` };
  }
  if (mw > limits.maxMw) {
    return { mw: limits.maxMw, note: `lowered to the GPU maximum ${formatWatts(limits.maxMw)}` };
  }
  return { mw };
}

/**
 * Decide the cap of one GPU from the pods that use it (each pod once; duplicates by UID are
 * ignored). Pure; never throws.
 */
export function decideGpuCap(
  pods: readonly GpuPod[],
  options: SharedGpuPolicyOptions,
): GpuDecision {
  const gpu = options.gpuLabel ?? "the GPU";
  const allowed = options.allowedNamespaces?.length ? new Set(options.allowedNamespaces) : null;
  const ignored: IgnoredAnnotation[] = [];
  const seen = new Set<string>();
  const effective: GpuPod[] = [];
  for (const pod of pods) {
    if (seen.has(pod.uid)) continue;
    seen.add(pod.uid);
    if (allowed && pod.annotation.kind !== "absent" && !allowed.has(pod.namespace)) {
      ignored.push({
        pod: { namespace: pod.namespace, name: pod.name, uid: pod.uid },
        message: `power-limit annotation of pod ${podRef(pod)} ignored: namespace ` +
          `${pod.namespace} is not in --allowed-namespaces`,
      });
      effective.push({ ...pod, annotation: { kind: "absent" } });
    } else {
      effective.push(pod);
    }
  }
  const events: OutcomeEvent[] = ignored.map((i) => ({
    pod: i.pod,
    reason: "CapRejected" as const,
    type: "Warning" as const,
    message: `Power-limit annotation ignored for ${gpu}: namespace ${i.pod.namespace} is not ` +
      `in --allowed-namespaces`,
  }));
  const askers = effective.filter((p) => p.annotation.kind !== "absent");
  if (askers.length === 0) return { cap: null, events, ignored };

  const ref = (p: GpuPod) => ({ namespace: p.namespace, name: p.name, uid: p.uid });
  const invalid = askers.filter((p) => p.annotation.kind === "invalid");
  for (const p of invalid) {
    if (p.annotation.kind !== "invalid") continue;
    events.push({
      pod: ref(p),
      reason: "CapRejected",
      type: "Warning",
      message: `Power-limit annotation rejected for ${gpu}: ${p.annotation.message}`,
    });
  }

  let why: string | null = null;
  if (invalid.length > 0) {
    why = `invalid annotation on ${invalid.map(podRef).join(", ")}`;
  } else {
    const silent = effective.filter((p) => p.annotation.kind === "absent");
    if (silent.length > 0) {
      why = `${askers.map(podRef).join(", ")} ask for a cap but co-tenant ` +
        `${silent.map(podRef).join(", ")} has no annotation`;
    } else {
      const values = new Set(
        askers.map((p) => p.annotation.kind === "valid" ? p.annotation.mw : 0),
      );
      if (values.size > 1) {
        why = `pods disagree: ${
          askers.map((p) =>
            `${podRef(p)} ${p.annotation.kind === "valid" ? formatWatts(p.annotation.mw) : "?"}`
          ).join(", ")
        }`;
      }
    }
  }

  if (why !== null) {
    const { mw } = bound(options.safeDefaultMw, options);
    const reason = `safe default: ${why}`;
    for (const p of effective) {
      events.push({
        pod: ref(p),
        reason: "SafeDefaultApplied",
        type: "Warning",
        message: `Safe default ${formatWatts(mw)} applied to ${gpu}: ${why}`,
      });
    }
    return { cap: { mw, reason, kind: "safe-default" }, events, ignored };
  }

  // All askers valid and equal, and every pod on the GPU asks.
  const first = askers[0].annotation;
  const requestedMw = first.kind === "valid" ? first.mw : options.safeDefaultMw;
  const bounded = bound(requestedMw, options);
  const device = deviceNote(bounded.mw, options);
  const notes = [bounded.note, device.note].filter((n): n is string => n !== undefined);
  const reason = askers.length === 1
    ? `pod ${podRef(askers[0])}`
    : `pods ${askers.map(podRef).join(", ")}`;
  for (const p of askers) {
    if (notes.length > 0) {
      events.push({
        pod: ref(p),
        reason: "CapClamped",
        type: "Warning",
        message: `Requested ${formatWatts(requestedMw)} for ${gpu}, ${notes.join(", then ")}: ` +
          `${formatWatts(device.mw)} applied`,
      });
    } else {
      events.push({
        pod: ref(p),
        reason: "CapApplied",
        type: "Normal",
        message: `Power limit ${formatWatts(requestedMw)} applied to ${gpu}`,
      });
    }
  }
  return { cap: { mw: bounded.mw, reason, kind: "pod" }, events, ignored };
}
