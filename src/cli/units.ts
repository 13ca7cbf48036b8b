/**
 * Conversions at the edges: milliwatts inside, watts in files, annotations, metrics and output.
 * Watts are formatted by `formatWatts` in src/reconcile/report.ts (the one watts formatter).
 */

/** Watts (possibly fractional) → integer milliwatts. */
export function wattsToMw(watts: number): number {
  return Math.round(watts * 1000);
}

/** 12.345 → "12.3s". */
export function formatSeconds(seconds: number): string {
  return `${Math.round(seconds * 10) / 10}s`;
}
