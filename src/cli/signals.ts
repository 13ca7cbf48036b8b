/**
 * Signal handling of `run`, installed first thing, before anything that can wait (the Kubernetes
 * source waits up to 30 s for its first LIST): without a listener, SIGTERM would end the process
 * with 143 and SIGHUP with 129, leaving caps a crashed predecessor applied in place.
 *
 * - SIGTERM/SIGINT: the first one resolves {@linkcode RunSignals.stopped}; later ones are
 *   ignored (Ctrl-C reaches both the launcher and the agent).
 * - SIGHUP: calls the reload handler once one is set; one that arrives before (during start-up)
 *   is queued and delivered when the handler is set.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";

/** The signals `run` handles. */
export type StopSignal = "SIGTERM" | "SIGINT";

/** Handle of {@linkcode installRunSignals}. */
export interface RunSignals {
  /** Resolves with the first SIGTERM/SIGINT. */
  readonly stopped: Promise<StopSignal>;
  /** The stop signal received so far, or null. */
  stopSignal(): StopSignal | null;
  /** Set the SIGHUP handler; a SIGHUP queued during start-up is delivered now. */
  onReload(handler: () => void): void;
  /** Remove the listeners (idempotent). */
  dispose(): void;
}

/** Install SIGTERM/SIGINT/SIGHUP listeners now. */
export function installRunSignals(): RunSignals {
  const log = getLogger(["gpu-power-agent", "run"]);
  const stopped = Promise.withResolvers<StopSignal>();
  let stopSignal: StopSignal | null = null;
  let reload: (() => void) | null = null;
  let queuedHup = false;
  let disposed = false;

  const onStop = (signal: StopSignal) => {
    if (stopSignal !== null) return;
    stopSignal = signal;
    stopped.resolve(signal);
  };
  const sigterm = () => onStop("SIGTERM");
  const sigint = () => onStop("SIGINT");
  const sighup = () => {
    if (reload) {
      reload();
    } else if (!queuedHup) {
      queuedHup = true;
      log.info("SIGHUP during start-up: the caps source is reloaded once it has started");
    }
  };
  Deno.addSignalListener("SIGTERM", sigterm);
  Deno.addSignalListener("SIGINT", sigint);
  Deno.addSignalListener("SIGHUP", sighup);
  return {
    stopped: stopped.promise,
    stopSignal: () => stopSignal,
    onReload(handler) {
      reload = handler;
      if (queuedHup) {
        queuedHup = false;
        handler();
      }
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      Deno.removeSignalListener("SIGTERM", sigterm);
      Deno.removeSignalListener("SIGINT", sigint);
      Deno.removeSignalListener("SIGHUP", sighup);
    },
  };
}

/** Marker returned by {@linkcode unlessStopped} when a stop signal won. */
export const STOPPED: unique symbol = Symbol("stopped");

/**
 * Wait for `work`, or for a stop signal, whichever comes first. When the signal wins, `work` is
 * left running (its rejection is swallowed) and {@linkcode STOPPED} is returned.
 */
export async function unlessStopped<T>(
  signals: RunSignals,
  work: Promise<T>,
): Promise<T | typeof STOPPED> {
  if (signals.stopSignal() !== null) {
    work.catch(() => {});
    return STOPPED;
  }
  const stop = signals.stopped.then((): typeof STOPPED => STOPPED);
  const result = await Promise.race([work, stop]);
  if (result === STOPPED) work.catch(() => {});
  return result;
}
