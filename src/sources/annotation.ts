/**
 * Parse the power-limit annotation a planner writes on a pod
 * (`dynamo.nvidia.com/gpu-power-limit: "250"`): watts as a positive integer or decimal.
 */

/** Default annotation key (`--annotation`). */
export const DEFAULT_POWER_ANNOTATION = "dynamo.nvidia.com/gpu-power-limit";

/** Largest accepted request; anything above is a typo or an attack, not a GPU. */
export const MAX_ANNOTATION_WATTS = 100_000;

/** Longest accepted annotation value, in characters. */
export const MAX_ANNOTATION_LENGTH = 16;

/** Why a present annotation value was rejected (low-cardinality: used as a metric label). */
export type InvalidAnnotationReason =
  | "empty"
  | "too_long"
  | "not_a_number"
  | "not_positive"
  | "too_large";

/** A pod's annotation, classified. */
export type PowerAnnotation =
  | { kind: "absent" }
  | { kind: "valid"; mw: number; value: string }
  | { kind: "invalid"; value: string; reason: InvalidAnnotationReason; message: string };

const ABSENT: PowerAnnotation = Object.freeze({ kind: "absent" });
const DECIMAL_WATTS = /^[0-9]+(?:\.[0-9]+)?$/;

/**
 * Classify an annotation value: `undefined`/`null` → absent; `"250"`/`"250.5"` → valid (mW,
 * rounded to the nearest milliwatt); anything else (`""`, `"-5"`, `"0"`, `"abc"`, `"250W"`,
 * `" 250"`, `"1e9"`, `"Infinity"`, more than 16 characters, above 100000 W) → invalid with a
 * reason. Pure; never throws.
 */
export function parsePowerAnnotation(value: string | null | undefined): PowerAnnotation {
  if (value === undefined || value === null) return ABSENT;
  const invalid = (reason: InvalidAnnotationReason, message: string): PowerAnnotation => ({
    kind: "invalid",
    value,
    reason,
    message,
  });
  if (value === "") return invalid("empty", 'value is empty; expected watts such as "250"');
  if (value.length > MAX_ANNOTATION_LENGTH) {
    return invalid(
      "too_long",
      `value is ${value.length} characters long (at most ${MAX_ANNOTATION_LENGTH})`,
    );
  }
  if (!DECIMAL_WATTS.test(value)) {
    return invalid(
      "not_a_number",
      `value ${JSON.stringify(value)} is not a positive number of watts such as "250" or "250.5"`,
    );
  }
  const watts = Number(value);
  const mw = Math.round(watts * 1000);
  if (!(mw > 0)) {
    return invalid("not_positive", `value ${JSON.stringify(value)} is not a positive wattage`);
  }
  if (watts > MAX_ANNOTATION_WATTS) {
    return invalid(
      "too_large",
      `value ${JSON.stringify(value)} W is above the ${MAX_ANNOTATION_WATTS} W sanity limit`,
    );
  }
  return { kind: "valid", mw, value };
}
