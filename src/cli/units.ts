/** Conversions at the edges: milliwatts inside, watts in files, annotations, metrics and output. */

/** 250000 → "250", 250500 → "250.5"; null → "-". */
export function formatWatts(mw: number | null | undefined): string {
  if (mw === null || mw === undefined) return "-";
  return String(Math.round(mw) / 1000);
}

/** Watts (possibly fractional) → integer milliwatts. */
export function wattsToMw(watts: number): number {
  return Math.round(watts * 1000);
}

/** 12.345 → "12.3s". */
export function formatSeconds(seconds: number): string {
  return `${Math.round(seconds * 10) / 10}s`;
}
