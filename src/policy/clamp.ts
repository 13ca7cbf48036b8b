/**
 * Clamp a requested power limit into what the GPU accepts.
 */

/** Settable range of one GPU, milliwatts (from nvmlDeviceGetPowerManagementLimitConstraints). */
export interface ClampLimits {
  minMw: number;
  maxMw: number;
}

/** `up`: the request was below the minimum; `down`: above the maximum. */
export type ClampDirection = "none" | "up" | "down";

/** A request after clamping. */
export interface ClampResult {
  /** Limit to set, milliwatts. */
  mw: number;
  direction: ClampDirection;
}

/**
 * Clamp `requestMw` into `[minMw, maxMw]` (inclusive). Pure.
 *
 * @throws {RangeError} when the request or a bound is not finite, or `minMw > maxMw`.
 */
export function clampMw(requestMw: number, limits: ClampLimits): ClampResult {
  const { minMw, maxMw } = limits;
  if (!Number.isFinite(requestMw)) {
    throw new RangeError(`Cannot clamp power limit request ${requestMw} mW: not a finite number`);
  }
  if (!Number.isFinite(minMw) || !Number.isFinite(maxMw) || minMw > maxMw) {
    throw new RangeError(
      `Cannot clamp power limit: invalid GPU constraints ${minMw}..${maxMw} mW`,
    );
  }
  if (requestMw < minMw) return { mw: minMw, direction: "up" };
  if (requestMw > maxMw) return { mw: maxMw, direction: "down" };
  return { mw: requestMw, direction: "none" };
}
