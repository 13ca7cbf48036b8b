/** Injected time source so tests can drive timers; shared by the sources and the reconciler. */
export interface Clock {
  /** Milliseconds since epoch. */
  now(): number;
  setTimeout(fn: () => void, ms: number): number;
  clearTimeout(id: number): void;
}

/** The real clock. */
export const systemClock: Clock = Object.freeze({
  now: () => Date.now(),
  // Node typings (pulled in by npm deps) type setTimeout as Timeout; Deno returns a number.
  setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms) as unknown as number,
  clearTimeout: (id: number) => clearTimeout(id),
});
