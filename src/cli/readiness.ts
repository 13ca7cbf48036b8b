/** Readiness and staleness, derived from the loop's last success and the source's health. */
import type { SourceHealth } from "../sources/cap_source.ts";
import { formatSeconds } from "./units.ts";

/** Inputs of {@linkcode readiness}. */
export interface ReadinessInput {
  /** End of the last successful reconcile pass, epoch ms; null before the first. */
  lastSuccessMs: number | null;
  health: SourceHealth;
  nowMs: number;
  staleAfterMs: number;
}

/** Readiness verdict with the reason when not ready. */
export interface Readiness {
  ready: boolean;
  reason?: string;
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

/** Ready after the first successful reconcile, unless the source has been failing too long. */
export function readiness(input: ReadinessInput): Readiness {
  if (!input.health.synced) {
    return { ready: false, reason: `caps source has not synced yet${problem(input.health)}` };
  }
  if (input.lastSuccessMs === null) {
    return { ready: false, reason: "no successful reconcile yet" };
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
  return { ready: true };
}

function problem(h: SourceHealth): string {
  return h.problem ? `: ${h.problem}` : "";
}
