/**
 * Readiness: ready once the agent has reconciled with known desired caps, while its caps source
 * is fresh and every wanted power limit has been in place within `--enforce-grace`. A GPU whose
 * cap cannot be enforced (set failing, read-back mismatch, GPU lost) makes the agent unready
 * after the grace, naming the GPU; it recovers by itself once the cap holds. Unsupported GPUs
 * (no software power limits) never affect readiness.
 *
 * @module
 */
import type { SourceHealth } from "../sources/cap_source.ts";
import type { Readiness } from "../metrics/server.ts";
import type { EnforcementState } from "../reconcile/loop.ts";
import { formatSeconds } from "./units.ts";

/** Inputs of {@linkcode readiness}. */
export interface ReadinessInput {
  health: SourceHealth;
  /** Enforcement as of the last pass (`ReconcileLoop.enforcement()`). */
  enforcement: EnforcementState;
  nowMs: number;
  staleAfterMs: number;
  /** `--enforce-grace` in ms: how long a wanted cap may be missing before readiness fails. */
  enforceGraceMs: number;
}

/**
 * Seconds the source has been failing (0 while healthy), or null before it first synced.
 * A healthy quiet source is never stale: only a failing read makes it so.
 */
export function sourceStalenessSeconds(health: SourceHealth, nowMs: number): number | null {
  if (!health.synced || health.lastSuccessMs === null) return null;
  if (!health.problem) return 0;
  return Math.max(0, (nowMs - health.lastSuccessMs) / 1000);
}

/** The readiness verdict, with the reason when not ready. */
export function readiness(input: ReadinessInput): Readiness {
  if (!input.health.synced) {
    return { ready: false, reason: `caps source has not synced yet${problem(input.health)}` };
  }
  const e = input.enforcement;
  const grace = formatSeconds(input.enforceGraceMs / 1000);
  if (e.passError && input.nowMs - e.passError.sinceMs > input.enforceGraceMs) {
    return {
      ready: false,
      reason:
        `reconcile failing for ${formatSeconds((input.nowMs - e.passError.sinceMs) / 1000)} ` +
        `(grace ${grace}): ${e.passError.error}`,
    };
  }
  if (e.reconciledMs === null) {
    return { ready: false, reason: "no reconcile pass with known desired caps yet" };
  }
  const stale = sourceStalenessSeconds(input.health, input.nowMs) ?? 0;
  if (stale * 1000 > input.staleAfterMs) {
    return {
      ready: false,
      reason: `caps source stale for ${formatSeconds(stale)} (limit ${
        formatSeconds(input.staleAfterMs / 1000)
      })${problem(input.health)}; caps are kept as they are`,
    };
  }
  const late = e.unenforced.filter((u) => input.nowMs - u.sinceMs > input.enforceGraceMs);
  if (late.length > 0) {
    return {
      ready: false,
      reason: `power limit not enforced for longer than ${grace} on ${late.length} GPU(s): ` +
        late.map((u) =>
          `GPU ${u.index} (${u.uuid}) for ${formatSeconds((input.nowMs - u.sinceMs) / 1000)}: ` +
          u.error
        ).join("; "),
    };
  }
  return { ready: true };
}

function problem(h: SourceHealth): string {
  return h.problem ? `: ${h.problem}` : "";
}
