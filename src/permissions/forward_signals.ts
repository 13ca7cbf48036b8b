/**
 * The launcher's signal forwarding (`launch.ts`): listeners installed before the agent is spawned,
 * so SIGTERM/SIGINT/SIGHUP never end the launcher (exit 143/130/129, the agent orphaned with its
 * caps in place). A signal is passed on only once the agent catches it (Linux: its bit in `SigCgt`
 * of `/proc/<pid>/status`, set by `main.ts`'s first statement): sent earlier, while the child's
 * runtime starts, it would kill the child. Until then it is queued (polled every 10 ms, at most
 * 10 s, then sent anyway), and later signals wait behind it, in order.
 *
 * @module
 */

import type { EarlySignals } from "../cli/early_signals.ts";

/** Signal numbers on Linux (bit n-1 of `SigCgt`). */
const NUMBER: Readonly<Record<string, number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
const POLL_MS = 10;
const MAX_WAIT_MS = 10_000;

/** Handle of {@linkcode forwardSignals}. */
export interface SignalForwarder {
  /** The child now exists: deliver what is queued (once it catches it) and what comes next. */
  attach(child: Deno.ChildProcess): void;
  /** Remove the listeners and stop polling (idempotent). */
  dispose(): void;
}

/**
 * Whether process `pid` has a handler for `signal` (Linux `SigCgt`); true when that cannot be
 * found out (sending is then all there is to do). Deno reads `/proc/<pid>/` only with
 * `--allow-all`: without it, `cat` (the launcher may run programs) reads the file.
 */
export async function catchesSignal(pid: number, signal: Deno.Signal): Promise<boolean> {
  const bit = NUMBER[signal];
  if (bit === undefined) return true;
  const path = `/proc/${pid}/status`;
  let status: string;
  try {
    status = await Deno.readTextFile(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotCapable)) return true; // gone, or not Linux
    try {
      const out = await new Deno.Command("cat", { args: [path], stderr: "null" }).output();
      if (!out.success) return true;
      status = new TextDecoder().decode(out.stdout);
    } catch {
      return true;
    }
  }
  const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(status)?.[1];
  return mask === undefined || ((BigInt(`0x${mask}`) >> BigInt(bit - 1)) & 1n) === 1n;
}

/** Options of {@linkcode forwardSignals}. */
export interface ForwardSignalsOptions {
  /** Listeners installed earlier (`launch_main.ts`): replaced, what they caught is queued. */
  early?: EarlySignals;
}

/** Install listeners for `signals` now; they forward to the child once it is attached. */
export function forwardSignals(
  signals: readonly Deno.Signal[],
  options: ForwardSignalsOptions = {},
): SignalForwarder {
  let child: Deno.ChildProcess | undefined;
  const queued: Deno.Signal[] = [];
  /** Signals the child was seen to catch (it never stops catching them). */
  const caught = new Set<Deno.Signal>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let disposed = false;
  const send = (signal: Deno.Signal) => {
    try {
      child!.kill(signal);
    } catch {
      // already exited
    }
  };
  let flushing = false;
  // Sends what is queued, each signal once the child catches it; polls while any is waiting.
  const flush = async () => {
    if (!child || flushing) return;
    flushing = true;
    try {
      let waitedMs = 0;
      while (queued.length > 0 && !disposed) {
        const signal = queued[0];
        if (!caught.has(signal) && await catchesSignal(child.pid, signal)) caught.add(signal);
        if (!caught.has(signal) && waitedMs < MAX_WAIT_MS) {
          await new Promise((resolve) => timer = setTimeout(resolve, POLL_MS));
          waitedMs += POLL_MS;
          continue;
        }
        queued.shift();
        send(signal);
      }
    } finally {
      flushing = false;
    }
  };
  const listeners = signals.map((signal) => {
    const listener = () => {
      queued.push(signal);
      flush();
    };
    Deno.addSignalListener(signal, listener);
    return { signal, listener };
  });
  if (options.early) {
    options.early.dispose();
    queued.push(...options.early.received());
  }
  return {
    attach(c) {
      child = c;
      flush();
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      clearTimeout(timer);
      for (const { signal, listener } of listeners) Deno.removeSignalListener(signal, listener);
    },
  };
}
