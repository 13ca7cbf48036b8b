/**
 * Signals that arrive while the CLI is still loading. `main.ts` installs these listeners as its
 * first statement, before it imports the CLI (whose module graph takes a few hundred ms to load):
 * without a listener, SIGTERM would end the process with 143 and SIGHUP with 129, and a GPU capped
 * by a crashed predecessor would stay capped. `run` takes the recorded signals over
 * (`signals.ts`); every other command ends as the signal would have ended it, before doing
 * anything. The only window left is the Deno runtime's own start (about 20 ms, before any of the
 * agent's code runs).
 *
 * This module imports nothing, so loading it is instant.
 *
 * @module
 */

/** The signals recorded during start-up. */
export type EarlySignal = "SIGTERM" | "SIGINT" | "SIGHUP";

/** Handle of {@linkcode captureEarlySignals}. */
export interface EarlySignals {
  /** The signals received so far, in order of arrival. */
  received(): readonly EarlySignal[];
  /** Remove the listeners (idempotent); install the next ones first. */
  dispose(): void;
}

const EARLY_SIGNALS: readonly EarlySignal[] = ["SIGTERM", "SIGINT", "SIGHUP"];
/** Signal numbers on Linux, for the exit code a signal's default action gives (128 + n). */
const SIGNAL_NUMBER: Readonly<Record<EarlySignal, number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

/** Start recording SIGTERM/SIGINT/SIGHUP now. */
export function captureEarlySignals(): EarlySignals {
  const received: EarlySignal[] = [];
  const listeners = EARLY_SIGNALS.map((signal) => {
    const listener = () => received.push(signal);
    Deno.addSignalListener(signal, listener);
    return { signal, listener };
  });
  let disposed = false;
  return {
    received: () => received,
    dispose() {
      if (disposed) return;
      disposed = true;
      for (const { signal, listener } of listeners) Deno.removeSignalListener(signal, listener);
    },
  };
}

/**
 * For commands other than `run`: stop recording; when a signal arrived while loading, the exit
 * code its default action would have given (128 + its number), else null.
 */
export function endEarlySignals(early: EarlySignals | undefined): number | null {
  if (!early) return null;
  early.dispose();
  const first = early.received()[0];
  return first === undefined ? null : 128 + SIGNAL_NUMBER[first];
}
