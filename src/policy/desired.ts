/**
 * What a source wants: the desired cap per GPU, before the device min/max clamp. Shared by the
 * sources (which produce it), the planner (which turns it into per-GPU intents) and the report
 * (which tells the pods what happened).
 *
 * @module
 */

/** Why a GPU is capped; drives logs, metrics and Kubernetes events. */
export type DesiredKind = "file" | "pod" | "safe-default";

/** A pod a cap is for (Kubernetes mode), to post its Events after the outcome. */
export interface PodRef {
  namespace: string;
  name: string;
  uid: string;
}

/** The cap a source wants on one GPU, before the device min/max clamp. */
export interface DesiredCap {
  /** Requested limit in milliwatts (source floor/ceiling already applied, device clamp not). */
  mw: number;
  /** Human reason, e.g. `caps file rule gpus[1]`, `pod ns/name`, `safe default: pods disagree`. */
  reason: string;
  kind: DesiredKind;
  /** Pods the cap is for (Kubernetes mode): they get the outcome as Events. */
  pods?: readonly PodRef[];
  /** What the pods asked for before the source's floor/ceiling (Kubernetes mode), milliwatts. */
  askedMw?: number;
  /** How the source's policy moved the request, e.g. `raised to the --min-watts floor 300 W`. */
  notes?: readonly string[];
}

/** Desired caps by GPU UUID. A GPU absent from the map is unmanaged (returns to its baseline). */
export type DesiredCaps = Map<string, DesiredCap>;
