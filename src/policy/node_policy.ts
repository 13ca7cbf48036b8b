/**
 * The node policy in Kubernetes mode: a caps file given together with `--source kubernetes`.
 *
 * - A GPU no pod asks for gets the file's `default` (instead of going back to its baseline).
 * - A rule's value is a CEILING for the GPUs it matches: a pod asking more gets the rule's value
 *   (reason `node ceiling …`); a pod asking less keeps its request. A GPU no pod asks for that a
 *   rule matches gets `min(default, rule)`, or the rule's value when there is no default (so an
 *   idle GPU never sits above its ceiling).
 * - Rule matching (last matching rule wins, percent of the default limit) is
 *   `resolveFileCaps`'s; this module only combines its answers with the pods'.
 *
 * Pure: no I/O, no clock. Milliwatts; the device min/max clamp comes later in the plan.
 */
import type { CapsSpec } from "../sources/caps_file.ts";
import type { DesiredCap, DesiredCaps, GpuView } from "../sources/cap_source.ts";
import { formatWatts } from "../reconcile/report.ts";
import { resolveFileCaps } from "./file_rules.ts";

/** Options of {@link applyNodePolicy}. */
export interface NodePolicyOptions {
  /** The GPUs present (this pass's views). */
  gpus: readonly GpuView[];
  /** What the pods ask for (`KubernetesCapSource.desired()`); null: the source cannot say. */
  podCaps: DesiredCaps | null;
}

/** A pod's request the node ceiling lowered. */
export interface NodeCeilingLimit {
  uuid: string;
  /** What the pod (or the safe default) asked for. */
  requestedMw: number;
  /** The rule's value, now the desired cap. */
  ceilingMw: number;
  /** The pod's reason (`pod ns/name`, `safe default: …`). */
  requestReason: string;
  /** The rule, e.g. `caps file rule gpus[0] (index 0)`. */
  rule: string;
}

/** Result of {@link applyNodePolicy}. */
export interface NodePolicyResult {
  /** Desired caps after the node policy; null when `podCaps` was null (change nothing). */
  desired: DesiredCaps | null;
  /** Pod requests lowered by a node ceiling, in GPU order. */
  ceilings: NodeCeilingLimit[];
}

/** Reason prefix of a cap lowered by, or taken from, a rule of the node policy. */
export const NODE_CEILING_REASON = "node ceiling";

/** Reason prefix of a cap taken from the node policy's default. */
export const NODE_DEFAULT_REASON = "node default";

/**
 * Apply the node policy `spec` to the pods' desired caps (see the module doc). Pod caps for
 * GPUs not in `options.gpus` pass through unchanged. Kinds are kept: a ceilinged pod cap is still
 * `pod` (its Events go to the pod); caps from the file alone are `file`.
 */
export function applyNodePolicy(spec: CapsSpec, options: NodePolicyOptions): NodePolicyResult {
  const { gpus, podCaps } = options;
  if (podCaps === null) return { desired: null, ceilings: [] };
  const ruleCaps = resolveFileCaps({ ...spec, default: undefined }, gpus);
  const defaultCaps = spec.default === undefined
    ? new Map<string, DesiredCap>()
    : resolveFileCaps({ ...spec, rules: [] }, gpus);
  const desired: DesiredCaps = new Map(podCaps);
  const ceilings: NodeCeilingLimit[] = [];
  for (const gpu of gpus) {
    const pod = podCaps.get(gpu.uuid);
    const rule = ruleCaps.get(gpu.uuid);
    const fallback = defaultCaps.get(gpu.uuid);
    if (pod !== undefined) {
      if (rule !== undefined && pod.mw > rule.mw) {
        // The pods keep being told (Events): what they asked, and that the ceiling lowered it.
        desired.set(gpu.uuid, {
          ...pod,
          mw: rule.mw,
          reason: `${NODE_CEILING_REASON} ${formatWatts(rule.mw)} (${rule.reason}); ` +
            `${pod.reason} asked ${formatWatts(pod.mw)}`,
          askedMw: pod.askedMw ?? pod.mw,
          notes: [...(pod.notes ?? []), `lowered to the node ceiling ${formatWatts(rule.mw)}`],
        });
        ceilings.push({
          uuid: gpu.uuid,
          requestedMw: pod.mw,
          ceilingMw: rule.mw,
          requestReason: pod.reason,
          rule: rule.reason,
        });
      }
      continue;
    }
    if (rule !== undefined && (fallback === undefined || rule.mw < fallback.mw)) {
      desired.set(gpu.uuid, {
        mw: rule.mw,
        reason: `${NODE_CEILING_REASON} ${formatWatts(rule.mw)} (${rule.reason}); no pod asks`,
        kind: "file",
      });
    } else if (fallback !== undefined) {
      desired.set(gpu.uuid, {
        mw: fallback.mw,
        reason: `${NODE_DEFAULT_REASON} ${formatWatts(fallback.mw)} (${fallback.reason})`,
        kind: "file",
      });
    }
  }
  return { desired, ceilings };
}
