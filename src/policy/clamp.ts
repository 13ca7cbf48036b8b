/** Device min/max clamping of a requested power limit. */

/** Settable range of one GPU, milliwatts. */
export interface ClampLimits {
  minMw: number;
  maxMw: number;
}

/** A clamped request: the value to set and which way it was moved. */
export interface ClampResult {
  mw: number;
  /** `up`: raised to minMw; `down`: lowered to maxMw; `none`: within range. */
  direction: "none" | "up" | "down";
}

/** Clamp `requestMw` into `[minMw, maxMw]` (pure). */
export function clampMw(requestMw: number, limits: ClampLimits): ClampResult {
  if (requestMw < limits.minMw) return { mw: limits.minMw, direction: "up" };
  if (requestMw > limits.maxMw) return { mw: limits.maxMw, direction: "down" };
  return { mw: requestMw, direction: "none" };
}
