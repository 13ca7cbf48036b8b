/**
 * `deno task compile`: builds `dist/gpu-power-agent-<target>` for x86_64 and aarch64 Linux with
 * the file-mode permission set of the systemd layout baked in (see {@linkcode bakedFlags}). It
 * compiles the agent's bundle (`bundle.ts`, built first into `<output-dir>/agent`), as the
 * container image runs it.
 *
 * `deno compile` builds on `denort` (Deno's runtime binary), which it downloads. Offline, point
 * `DENORT_BIN` at an unpacked denort (its architecture selects the target it is used for) or
 * `DENORT_BIN_<TARGET>` (e.g. `DENORT_BIN_AARCH64_UNKNOWN_LINUX_GNU`) at one per target.
 *
 * Usage: `deno task compile [--target T]... [--output-dir DIR] [--nvml-library PATH]
 * [--metrics-address HOST:PORT|off] [--no-jitless] [--no-check] [--bundle-dir DIR]`
 * (`--bundle-dir`: compile a bundle `deno task bundle` already built there instead of building
 * one).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { SYSTEMD_LAYOUT } from "./layouts.ts";
import {
  agentPermissions,
  nvmlCandidatePaths,
  type PermissionSet,
  toDenoFlags,
} from "./permission_set.ts";
import { AGENT_RUNTIME_FLAGS } from "./runtime.ts";
import { buildBundle, BUNDLE_ENTRY_FILE } from "./bundle.ts";

/** Targets `deno task compile` builds by default. */
export const COMPILE_TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
] as const;

/** A target of {@linkcode COMPILE_TARGETS}. */
export type CompileTarget = typeof COMPILE_TARGETS[number];

/**
 * V8 without its JIT: no writable+executable memory, so the systemd unit can set
 * MemoryDenyWriteExecute=yes (V8 with JIT aborts under it). `--lite-mode` of
 * {@linkcode AGENT_RUNTIME_FLAGS} implies it too; it stays explicit where it is required.
 */
export const JITLESS_V8_FLAG = "--v8-flags=--jitless";

const REPO = fileURLToPath(new URL("../../", import.meta.url)).replace(/\/$/, "");
/** Directory of the bundle compiled into the binaries of `outputDir` (unless given). */
export function compileBundleDir(outputDir = `${REPO}/dist`): string {
  return `${outputDir}/agent`;
}

/**
 * What is baked into the binary. Defaults are the systemd layout; tests override the paths only
 * to point at temporary directories and the fake NVML library.
 */
export interface BakedOptions {
  /** Default `/var/lib/gpu-power-agent`. */
  stateDir?: string;
  /** Default `/etc/gpu-power-agent/caps.yaml` (read on its directory). */
  capsFile?: string;
  /** Default `127.0.0.1:9402`. */
  metricsAddress?: string;
  /** Default: `libnvidia-ml.so.1` in each usual driver directory (the binary searches them). */
  nvmlLibraryPath?: string | readonly string[];
  /**
   * Bake {@linkcode JITLESS_V8_FLAG} (default true). Without it the binary is still jitless
   * through `--lite-mode` (src/permissions/runtime.ts).
   */
  jitless?: boolean;
}

/** The file-mode permission set baked into the binary. */
export function bakedPermissionSet(options: BakedOptions = {}): PermissionSet {
  return agentPermissions("file", {
    nvmlLibraryPath: options.nvmlLibraryPath ?? nvmlCandidatePaths(),
    stateDir: options.stateDir ?? SYSTEMD_LAYOUT.stateDir,
    capsFile: options.capsFile ?? SYSTEMD_LAYOUT.capsFile,
    metricsAddress: options.metricsAddress ?? SYSTEMD_LAYOUT.metricsAddress,
  });
}

/**
 * The runtime flags baked into the binary: `--no-prompt`, `--quiet` (under
 * MemoryDenyWriteExecute Deno cannot build its FFI fast-call trampolines and would log "Failed
 * to compile FFI turbocall" once per NVML symbol at every start; calls take the regular path),
 * the runtime flags of `runtime.ts` (V8 memory settings), the permission flags and (default)
 * `--v8-flags=--jitless`. `deno run <these> main.ts …` behaves like the binary. The malloc
 * variables of `runtime.ts` cannot be baked in: the systemd unit sets them (`Environment=`).
 */
export function bakedFlags(options: BakedOptions = {}): string[] {
  return [
    "--no-prompt",
    "--quiet",
    ...AGENT_RUNTIME_FLAGS,
    ...toDenoFlags(bakedPermissionSet(options)),
    ...(options.jitless === false ? [] : [JITLESS_V8_FLAG]),
  ];
}

/** Output path of the binary for `target`. */
export function binaryPath(target: string, outputDir = `${REPO}/dist`): string {
  return `${outputDir}/gpu-power-agent-${target}`;
}

/** Options of {@linkcode compileArgv}. */
export interface CompileArgvOptions {
  /** Directory of the binaries (default `<repo>/dist`). */
  outputDir?: string;
  /** What to bake in (default: systemd layout). */
  baked?: BakedOptions;
  /** Type-check the sources while bundling (default true; `deno task check` also does it). */
  check?: boolean;
  /** A bundle already built (default: build one in {@linkcode compileBundleDir}). */
  bundleDir?: string;
}

/**
 * The full `deno compile` argument list for one target: the bundle's entry point (in
 * {@linkcode compileBundleDir}), no config (the bundle imports only `node:` built-ins).
 */
export function compileArgv(target: string, options: CompileArgvOptions = {}): string[] {
  return [
    "compile",
    "--no-config",
    "--target",
    target,
    "--output",
    binaryPath(target, options.outputDir),
    ...bakedFlags(options.baked),
    `${options.bundleDir ?? compileBundleDir(options.outputDir)}/${BUNDLE_ENTRY_FILE}`,
  ];
}

/** ELF `e_machine` of each target. */
const ELF_MACHINE: Readonly<Record<CompileTarget, number>> = {
  "x86_64-unknown-linux-gnu": 0x3e,
  "aarch64-unknown-linux-gnu": 0xb7,
};

/** `DENORT_BIN_X86_64_UNKNOWN_LINUX_GNU` for `x86_64-unknown-linux-gnu`. */
export function denortEnvName(target: string): string {
  return `DENORT_BIN_${target.toUpperCase().replaceAll("-", "_")}`;
}

/** A denort binary that cannot be used; `deno task compile` exits 1 with its message. */
export class DenortError extends Error {
  override name = "DenortError";
}

function elfMachine(path: string): number | null {
  let bytes: Uint8Array;
  try {
    const file = Deno.openSync(path);
    try {
      bytes = new Uint8Array(20);
      const n = file.readSync(bytes);
      if (n === null || n < 20) return null;
    } finally {
      file.close();
    }
  } catch (error) {
    throw new DenortError(
      `Cannot read denort at ${path}: ${(error as Error).message}. Point DENORT_BIN at the ` +
        "'denort' executable unpacked from denort-<target>.zip of the same Deno version",
    );
  }
  if (bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) {
    return null;
  }
  return bytes[18] | (bytes[19] << 8);
}

/**
 * The denort binary to use for `target`: `DENORT_BIN_<TARGET>`, else `DENORT_BIN` when its ELF
 * architecture is the target's, else undefined (deno downloads one). Throws
 * {@linkcode DenortError} for a path that does not exist, is not an ELF file, or (per-target
 * variable) is built for another architecture.
 */
export function denortFor(
  target: CompileTarget,
  env: (name: string) => string | undefined,
): string | undefined {
  const perTarget = env(denortEnvName(target));
  const generic = env("DENORT_BIN");
  for (const [name, path] of [[denortEnvName(target), perTarget], ["DENORT_BIN", generic]]) {
    if (!path) continue;
    const machine = elfMachine(path);
    if (machine === null) {
      throw new DenortError(`${name}=${path} is not an ELF executable (expected denort)`);
    }
    if (machine === ELF_MACHINE[target]) return path;
    if (name !== "DENORT_BIN") {
      throw new DenortError(
        `${name}=${path} is built for another architecture than ${target}`,
      );
    }
  }
  return undefined;
}

/** Actionable explanation of a failed `deno compile` for `target`. */
export function compileFailureMessage(target: string, output: string): string {
  const download = /dl\.deno\.land|denort|base binary|error sending request|lookup|connect/i
    .test(output);
  const lines = [`deno compile failed for ${target}.`];
  if (download) {
    lines.push(
      `It could not get denort, the Deno runtime every compiled binary is built on ` +
        `(deno compile downloads denort-${target}.zip for Deno ${Deno.version.deno} ` +
        "from dl.deno.land).",
      `For an offline build, download that zip where there is network access, unzip it and ` +
        `run again with DENORT_BIN=/path/to/denort (used for the target of its architecture) ` +
        `or ${denortEnvName(target)}=/path/to/denort.`,
    );
  }
  lines.push("Output of deno compile:", output.trimEnd());
  return lines.join("\n");
}

/** Options of {@linkcode compileAll}. */
export interface CompileAllOptions extends CompileArgvOptions {
  targets?: readonly CompileTarget[];
  env?: (name: string) => string | undefined;
  /** Environment of `deno compile` (default: this process's, without DENORT_BIN). */
  baseEnv?: Record<string, string>;
  /** Where progress and errors go (default console). */
  log?: (line: string) => void;
  error?: (line: string) => void;
}

/** Compile every target; returns the exit code (0 all built, 1 any failed). */
export async function compileAll(options: CompileAllOptions = {}): Promise<number> {
  const env = options.env ?? ((name: string) => Deno.env.get(name));
  const log = options.log ?? ((line: string) => console.log(line));
  const error = options.error ?? ((line: string) => console.error(line));
  let failed = 0;
  let bundled: Promise<string> | undefined;
  for (const target of options.targets ?? COMPILE_TARGETS) {
    let denort: string | undefined;
    try {
      denort = denortFor(target, env);
      // Once, after the first usable denort: a wrong DENORT_BIN fails before any build.
      bundled ??= options.bundleDir === undefined
        ? buildBundle({ outDir: compileBundleDir(options.outputDir), check: options.check ?? true })
        : existingBundle(options.bundleDir);
      log(`Bundle ${await bundled}`);
    } catch (e) {
      error(`gpu-power-agent compile: ${(e as Error).message}`);
      failed++;
      continue;
    }
    const args = compileArgv(target, options);
    // DENORT_BIN (deno compile reads it) is set per target: one meant for another architecture
    // must not leak into this target's build.
    const childEnv: Record<string, string> = {
      ...(options.baseEnv ?? Deno.env.toObject()),
      NO_COLOR: "1",
    };
    delete childEnv.DENORT_BIN;
    if (denort) childEnv.DENORT_BIN = denort;
    log(`Compiling ${binaryPath(target, options.outputDir)}${denort ? ` (denort ${denort})` : ""}`);
    const result = await new Deno.Command(Deno.execPath(), {
      args,
      env: childEnv,
      clearEnv: true,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(result.stdout) +
      new TextDecoder().decode(result.stderr);
    if (result.success) {
      log(text.trimEnd());
    } else {
      error(compileFailureMessage(target, text));
      failed++;
    }
  }
  return failed === 0 ? 0 : 1;
}

async function existingBundle(dir: string): Promise<string> {
  const entry = `${dir}/${BUNDLE_ENTRY_FILE}`;
  try {
    if ((await Deno.stat(entry)).isFile) return entry;
  } catch {
    // explained below
  }
  throw new Error(`--bundle-dir ${dir}: no ${entry} (build it with deno task bundle --out-dir)`);
}

function parseTargets(values: string[] | undefined): CompileTarget[] {
  if (!values || values.length === 0) return [...COMPILE_TARGETS];
  for (const value of values) {
    if (!(COMPILE_TARGETS as readonly string[]).includes(value)) {
      throw new Error(`Unknown --target "${value}": one of ${COMPILE_TARGETS.join(", ")}`);
    }
  }
  return values as CompileTarget[];
}

if (import.meta.main) {
  let code: number;
  try {
    const { values } = parseArgs({
      args: Deno.args,
      options: {
        target: { type: "string", multiple: true },
        "output-dir": { type: "string" },
        "nvml-library": { type: "string" },
        "metrics-address": { type: "string" },
        jitless: { type: "boolean", default: true },
        check: { type: "boolean", default: true },
        "bundle-dir": { type: "string" },
      },
      allowNegative: true,
      strict: true,
    });
    code = await compileAll({
      targets: parseTargets(values.target),
      outputDir: values["output-dir"],
      check: values.check,
      bundleDir: values["bundle-dir"],
      baked: {
        nvmlLibraryPath: values["nvml-library"],
        metricsAddress: values["metrics-address"],
        jitless: values.jitless,
      },
    });
  } catch (error) {
    console.error(`gpu-power-agent compile: ${(error as Error).message}`);
    code = 2;
  }
  Deno.exit(code);
}
