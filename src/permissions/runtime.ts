/**
 * The runtime settings every launch path runs the agent with, next to its permissions: V8 flags
 * that keep memory flat under sustained load, and glibc malloc variables. The `deno task agent`
 * launcher, `deno task compile` (baked into the binary), the container entrypoint in
 * `deploy/Dockerfile`, the DaemonSet `command`/`env` and the systemd unit take them from here;
 * tests check the shipped files agree.
 *
 * Measured with `deno task bench` (fake NVML, 8 GPUs, metrics on; README "Performance"):
 * - `--max-semi-space-size=1`: V8's young generation stays at 1 MiB instead of growing to
 *   16 MiB under allocation pressure (the agent allocates little per pass; scavenges stay cheap);
 * - `--lite-mode`: no optimizing compilers, lazy feedback vectors, size-optimized heap. It implies
 *   `--jitless` (no writable+executable memory; `WebAssembly` is undefined), so every launch
 *   path runs without a JIT, not only the systemd unit (MemoryDenyWriteExecute=yes), which also
 *   keeps its explicit `--v8-flags=--jitless` (src/permissions/compile.ts). CPU per pass grows
 *   (×1.3–2) but stays far below a millisecond;
 * - `--expose-gc`: the agent runs a full collection once it is idle after a burst of passes
 *   ({@linkcode collectGarbage}, wired by `run`): without it V8 kept the old generation a burst had
 *   grown (no Mark-Compact ran during 90 s of pod churn), and VmRSS stayed 3–10 MiB above its start
 *   figure after the load; with it VmRSS is back at the start figure within a minute (measured:
 *   55.9 MiB at start, 57.7 at the end of 90 s of load, 55.5 45 s later; without: 56.4, 59.5,
 *   59.1);
 * - `--no-code-cache`: Deno does not map its V8 code-cache database (DENO_DIR), which added up
 *   to 5 MiB of RSS in some starts and not others (measured back to back: 67.6–68.0 MiB VmRSS
 *   without it, 67.9–73.2 MiB with it); start-up is no slower under `--lite-mode`;
 * - `MALLOC_ARENA_MAX=2`, `MALLOC_TRIM_THRESHOLD_=131072`: glibc keeps fewer per-thread arenas
 *   (Deno's tokio/V8 threads) and returns freed memory to the kernel sooner. glibc reads them at
 *   process start, not Deno: no `--allow-env` entry is needed.
 *
 * @module
 */

/** V8 flags of the agent (one `--v8-flags=` argument, see {@linkcode AGENT_RUNTIME_FLAGS}). */
export const AGENT_V8_FLAGS: readonly string[] = Object.freeze([
  "--max-semi-space-size=1",
  "--lite-mode",
  "--expose-gc",
]);

/**
 * A full V8 collection when the runtime exposes one (`--expose-gc`, one of
 * {@linkcode AGENT_V8_FLAGS}); nothing otherwise (tests, `deno run` without the flags).
 */
export function collectGarbage(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** Deno flags of `deno run` / `deno compile` for the agent, on top of its permission flags. */
export const AGENT_RUNTIME_FLAGS: readonly string[] = Object.freeze([
  `--v8-flags=${AGENT_V8_FLAGS.join(",")}`,
  "--no-code-cache",
]);

/** glibc malloc variables of the agent's process (set by whatever starts it). */
export const AGENT_MALLOC_ENV: Readonly<Record<string, string>> = Object.freeze({
  MALLOC_ARENA_MAX: "2",
  MALLOC_TRIM_THRESHOLD_: "131072",
});

/**
 * {@linkcode AGENT_MALLOC_ENV} minus the variables `env` already sets (an operator's own value
 * wins).
 */
export function agentMallocEnv(
  env: (name: string) => string | undefined,
): Record<string, string> {
  return Object.fromEntries(
    Object.entries(AGENT_MALLOC_ENV).filter(([name]) => env(name) === undefined),
  );
}
