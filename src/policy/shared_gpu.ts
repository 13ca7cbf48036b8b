/**
 * Which cap a GPU gets from the pods that use it (Kubernetes mode). Pure: no I/O, no clock.
 *
 * - No pod on the GPU asks (no annotation) → no cap: the GPU is unmanaged.
 * - Every pod asks with a valid value and they agree → that value.
 * - Pods disagree, a pod's value is invalid, or a co-tenant has no annotation while another
 *   asks → the safe default (fail closed).
 * - Annotations of pods outside `allowedNamespaces` are ignored (treated as absent).
 * - `minMw`/`maxMw` (floor/ceiling) apply to the result, before the device clamp.
 *
 * The decision carries the pods it is for; what they are told (CapApplied, CapClamped,
 * SafeDefaultApplied, CapNotApplied) is decided from the pass's outcome by `outcomeEvents`,
 * after the set was attempted.
 */
import type { DesiredCap, PodRef } from "./desired.ts";
import type { PowerAnnotation } from "../sources/annotation.ts";
import { describeBudgetReduction, formatWatts, type GpuOutcome } from "../reconcile/report.ts";

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
  /** GPU label for messages, e.g. `GPU 0 (GPU-8d5b…)`. */
  gpuLabel?: string;
}

/** Kubernetes Event reasons the agent emits on pods. */
export type OutcomeReason =
  | "CapApplied"
  | "CapClamped"
  | "CapRejected"
  | "SafeDefaultApplied"
  | "CapNotApplied";

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
  /** CapRejected events about the annotations (the caller posts them with the outcome). */
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
    return {
      cap: { mw, reason: `safe default: ${why}`, kind: "safe-default", pods: effective.map(ref) },
      events,
      ignored,
    };
  }

  // All askers valid and equal, and every pod on the GPU asks.
  const first = askers[0].annotation;
  const askedMw = first.kind === "valid" ? first.mw : options.safeDefaultMw;
  const bounded = bound(askedMw, options);
  const reason = askers.length === 1
    ? `pod ${podRef(askers[0])}`
    : `pods ${askers.map(podRef).join(", ")}`;
  return {
    cap: {
      mw: bounded.mw,
      reason,
      kind: "pod",
      pods: askers.map(ref),
      askedMw,
      ...(bounded.note ? { notes: [bounded.note] } : {}),
    },
    events,
    ignored,
  };
}

/**
 * What the pods of a GPU are told about what happened to their cap this pass: CapApplied or
 * CapClamped (pod caps), SafeDefaultApplied, or CapNotApplied naming the failure. Nothing while
 * the outcome is unknown (skipped). Pure.
 */
export function outcomeEvents(outcome: GpuOutcome, gpuLabel: string): OutcomeEvent[] {
  const cap = outcome.desired;
  if (!cap?.pods?.length || outcome.action === "skipped") return [];
  const pods: readonly PodRef[] = cap.pods;
  const on = (reason: OutcomeReason, type: OutcomeEvent["type"], message: string) =>
    pods.map((pod) => ({ pod: { ...pod }, reason, type, message }));
  if (outcome.action === "error" || outcome.action === "unsupported") {
    return on(
      "CapNotApplied",
      "Warning",
      `Power limit ${formatWatts(outcome.toMw ?? cap.mw)} not applied to ${gpuLabel}: ` +
        (outcome.error ?? outcome.action),
    );
  }
  if (outcome.enforced !== true) return [];
  if (cap.kind === "safe-default") {
    const why = cap.reason.replace(/^safe default: /, "");
    return on(
      "SafeDefaultApplied",
      "Warning",
      `Safe default ${formatWatts(outcome.toMw)} applied to ${gpuLabel}: ${why}` +
        (outcome.limitedBy === "budget" && outcome.reducedFromMw !== undefined
          ? ` (${
            describeBudgetReduction({
              fromMw: outcome.reducedFromMw,
              toMw: outcome.toMw ?? outcome.reducedFromMw,
            })
          })`
          : ""),
    );
  }
  const notes = [...(cap.notes ?? [])];
  if (outcome.clamp === "up") {
    notes.push(`raised to the GPU minimum ${formatWatts(outcome.reducedFromMw ?? outcome.toMw)}`);
  }
  if (outcome.clamp === "down") {
    notes.push(`lowered to the GPU maximum ${formatWatts(outcome.reducedFromMw ?? outcome.toMw)}`);
  }
  if (outcome.limitedBy === "budget" && outcome.reducedFromMw !== undefined) {
    notes.push(describeBudgetReduction({
      fromMw: outcome.reducedFromMw,
      toMw: outcome.toMw ?? outcome.reducedFromMw,
    }));
  }
  const asked = cap.askedMw ?? cap.mw;
  if (notes.length > 0) {
    return on(
      "CapClamped",
      "Warning",
      `Requested ${formatWatts(asked)} for ${gpuLabel}, ${notes.join(", then ")}: ` +
        `${formatWatts(outcome.toMw)} applied`,
    );
  }
  return on("CapApplied", "Normal", `Power limit ${formatWatts(asked)} applied to ${gpuLabel}`);
}
