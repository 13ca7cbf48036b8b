/**
 * Injected time source so tests can drive timers; shared by the sources and the reconciler.
 *
 * @module
 */

/** Time and timers. */
export interface Clock {
  /** Milliseconds since epoch. */
  now(): number;
  /**
   * Call `fn` after `ms` milliseconds. `ms <= 0`: as soon as the callbacks of the I/O that is
   * ready now have run (the system clock uses `setImmediate`: several triggers from one chunk
   * still coalesce, and no timer wakes the event loop again a millisecond later).
   */
  setTimeout(fn: () => void, ms: number): number;
  clearTimeout(id: number): void;
}

/**
 * Pending `setTimeout(fn, 0)` of the system clock, by the negative ids it hands out (a timer's
 * id is positive).
 */
const immediates = new Map<number, ReturnType<typeof setImmediate>>();
let nextImmediateId = -1;

/**
 * The real clock. A zero delay runs through `setImmediate`: measured under the agent's
 * `--lite-mode`, a `setTimeout(fn, 0)` costs 53 µs of CPU per call (the event loop sleeps and
 * wakes for it), `setImmediate` 4.5 µs — one of those per desired change (the reconcile loop's
 * coalescing trigger).
 */
export const systemClock: Clock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn: () => void, ms: number) => {
    if (ms > 0) {
      // Node typings (pulled in by npm deps) type setTimeout as Timeout; its id is a number.
      return setTimeout(fn, ms) as unknown as number;
    }
    const id = nextImmediateId--;
    immediates.set(
      id,
      setImmediate(() => {
        immediates.delete(id);
        fn();
      }),
    );
    return id;
  },
  clearTimeout: (id: number) => {
    if (id >= 0) return clearTimeout(id);
    const immediate = immediates.get(id);
    if (immediate === undefined) return;
    immediates.delete(id);
    clearImmediate(immediate);
  },
});
