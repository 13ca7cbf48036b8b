/**
 * `deno task bundle`: builds the agent as it ships — `dist/agent/main.js` and its chunks — with
 * `deno bundle` (code splitting: each command and each source stays a chunk loaded only when
 * used; minified; npm packages inlined, only `node:` built-ins imported). Built at packaging
 * time, never committed (`dist/` is ignored): the container image builds it
 * (`deploy/Dockerfile`), `deno task compile` compiles it, and `deno task agent` runs it when
 * `GPU_POWER_AGENT_BUNDLE` names its directory (benchmarks and the end-to-end tests' bundle run
 * do).
 *
 * Why ship a bundle: measured with the fake NVML (8 GPUs, file mode, metrics on, the runtime
 * settings of `runtime.ts`), the agent starts at ≈ 57 MiB VmRSS from the bundle against ≈ 67 MiB
 * from the sources — about 9 MiB less private memory: one module per chunk instead of one per
 * source file and npm package, no npm resolution and no `deno.json` at run time (the bundle runs
 * with `--no-config`). Not `--keep-names`: with it Deno 2.9.6's bundler drops the `require` it
 * gives CommonJS packages (prom-client, yaml) and the agent fails with "Dynamic require of
 * node:process is not supported".
 *
 * After building, the bundle is run once (`--help`), which also proves it loads, so that Deno's
 * cache holds its module analysis before the agent's first real start (see `warmBundle`).
 *
 * Usage: `deno task bundle [--out-dir DIR]` (default `dist/agent`).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { posix } from "node:path";

const REPO = fileURLToPath(new URL("../../", import.meta.url)).replace(/\/$/, "");

/** Default output directory of the bundle. */
export const BUNDLE_DIR = `${REPO}/dist/agent`;
/** The bundle's entry point inside its directory. */
export const BUNDLE_ENTRY_FILE = "main.js";

/** `deno bundle` arguments that build the agent from `main.ts` into `outDir`. */
export function bundleArgv(
  outDir: string = BUNDLE_DIR,
  options: { check?: boolean } = {},
): string[] {
  return [
    "bundle",
    "--quiet",
    ...(options.check ? ["--check"] : []),
    "--config",
    `${REPO}/deno.json`,
    "--frozen-lockfile",
    "--platform",
    "deno",
    "--code-splitting",
    "--minify",
    "--outdir",
    outDir,
    `${REPO}/main.ts`,
  ];
}

/** A bundle that could not be built; `deno task bundle` exits 1 with its message. */
export class BundleError extends Error {
  override name = "BundleError";
}

/** Options of {@linkcode buildBundle}. */
export interface BuildBundleOptions {
  /** Output directory (default {@linkcode BUNDLE_DIR}); emptied first. */
  outDir?: string;
  /** Deno executable (default `Deno.execPath()`). */
  deno?: string;
  /** Type-check the sources first (default false; `deno task check` does it). */
  check?: boolean;
  /** Run it once afterwards so Deno's cache holds its analysis (default true). */
  warm?: boolean;
}

/**
 * Build the bundle; returns the path of its entry point. Throws {@linkcode BundleError} with
 * `deno bundle`'s output when it fails or leaves no entry point.
 */
export async function buildBundle(options: BuildBundleOptions = {}): Promise<string> {
  const outDir = options.outDir ?? BUNDLE_DIR;
  // Chunk names carry content hashes: stale chunks of an earlier build must not linger.
  await Deno.remove(outDir, { recursive: true }).catch((error) => {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  });
  const result = await new Deno.Command(options.deno ?? Deno.execPath(), {
    args: bundleArgv(outDir, { check: options.check }),
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const output = new TextDecoder().decode(result.stdout) +
    new TextDecoder().decode(result.stderr);
  const entry = `${outDir}/${BUNDLE_ENTRY_FILE}`;
  if (!result.success) {
    throw new BundleError(`deno bundle failed (exit ${result.code}):\n${output.trimEnd()}`);
  }
  try {
    if (!Deno.statSync(entry).isFile) throw new Error("not a file");
  } catch {
    throw new BundleError(`deno bundle left no ${entry}:\n${output.trimEnd()}`);
  }
  if (options.warm ?? true) await warmBundle(entry, options.deno);
  return entry;
}

/**
 * Run the bundle once (`--help`): Deno analyses a module graph it has not seen (parsing every
 * chunk) and keeps the result in its cache (DENO_DIR). Done at packaging time, the agent's first
 * real start skips that work — measured, that first start otherwise peaks ≈ 11 MiB higher
 * (VmHWM 68 vs 57 MiB, file mode), and a long-running agent keeps its first start's peak.
 */
async function warmBundle(entry: string, deno?: string): Promise<void> {
  const result = await new Deno.Command(deno ?? Deno.execPath(), {
    args: ["run", "--no-prompt", "--no-config", "--cached-only", entry, "--help"],
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!result.success) {
    throw new BundleError(
      `the bundle ${entry} does not run (--help, exit ${result.code}):\n` +
        new TextDecoder().decode(result.stderr).trimEnd(),
    );
  }
}

if (import.meta.main) {
  let code = 0;
  try {
    const { values } = parseArgs({
      args: Deno.args,
      options: { "out-dir": { type: "string" } },
      strict: true,
    });
    // Relative to where `deno task` was started (INIT_CWD), like the agent's own paths.
    const cwd = Deno.env.get("INIT_CWD") || Deno.cwd();
    const outDir = values["out-dir"] === undefined
      ? undefined
      : posix.resolve(cwd, values["out-dir"]);
    console.log(`Bundled the agent: ${await buildBundle({ outDir })}`);
  } catch (error) {
    console.error(`gpu-power-agent bundle: ${(error as Error).message}`);
    code = error instanceof BundleError ? 1 : 2;
  }
  Deno.exit(code);
}
