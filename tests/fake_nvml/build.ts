/**
 * Builds the fake `libnvidia-ml.so.1` from `fake_nvml.c` with the system C compiler.
 *
 * As a script (`deno task fake-nvml`): builds the default variant and prints its absolute path as
 * the last line of stdout.
 *
 * @module
 */

/** Build variants: `v1-only` lacks the `_v2`/`_v3` process symbols, `no-mig` the MIG symbols. */
export type FakeNvmlVariant = "default" | "v1-only" | "no-mig";

/** Options of {@linkcode buildFakeNvml}. */
export interface BuildFakeNvmlOptions {
  /** Which symbol set to build (default `"default"`). */
  variant?: FakeNvmlVariant;
  /** C compiler command (default `cc`). */
  cc?: string;
}

const VARIANT_FLAGS: Readonly<Record<FakeNvmlVariant, readonly string[]>> = {
  "default": [],
  "v1-only": ["-DFAKE_NVML_V1_ONLY"],
  "no-mig": ["-DFAKE_NVML_NO_MIG"],
};

const HERE = import.meta.dirname ?? new URL(".", import.meta.url).pathname;
const SOURCE = `${HERE}/fake_nvml.c`;
const BUILD_SCRIPT = `${HERE}/build.ts`;

function mtimeMs(path: string): number | null {
  try {
    return Deno.statSync(path).mtime?.getTime() ?? null;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

/**
 * Compiles the fake library into `tests/fake_nvml/build/<variant>/libnvidia-ml.so.1` when it is
 * missing or older than `fake_nvml.c` / `build.ts`, and returns its absolute path. Safe when
 * several processes build at once (each compiles to its own temp name, then renames).
 */
export async function buildFakeNvml(options: BuildFakeNvmlOptions = {}): Promise<string> {
  const variant = options.variant ?? "default";
  const flags = VARIANT_FLAGS[variant];
  if (flags === undefined) throw new TypeError(`unknown fake NVML variant "${variant}"`);
  const dir = `${HERE}/build/${variant}`;
  const output = `${dir}/libnvidia-ml.so.1`;
  const built = mtimeMs(output);
  const newestInput = Math.max(mtimeMs(SOURCE) ?? Infinity, mtimeMs(BUILD_SCRIPT) ?? 0);
  if (built !== null && built >= newestInput) return output;

  await Deno.mkdir(dir, { recursive: true });
  const temp = `${output}.${Deno.pid}.${crypto.randomUUID()}.partial`;
  const cc = options.cc ?? "cc";
  const args = [
    "-shared",
    "-fPIC",
    "-O2",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fvisibility=hidden",
    "-Wl,-soname,libnvidia-ml.so.1",
    ...flags,
    "-o",
    temp,
    SOURCE,
  ];
  let result: Deno.CommandOutput;
  try {
    result = await new Deno.Command(cc, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (error) {
    throw new Error(
      `Cannot build the fake NVML library: running "${cc}" failed (${
        error instanceof Error ? error.message : error
      }). Install a C compiler (e.g. apt-get install gcc).`,
      { cause: error },
    );
  }
  if (!result.success) {
    await Deno.remove(temp).catch(() => {});
    const stderr = new TextDecoder().decode(result.stderr);
    throw new Error(
      `Cannot build the fake NVML library: ${cc} ${
        args.join(" ")
      } exited with ${result.code}:\n${stderr}`,
    );
  }
  await Deno.rename(temp, output);
  return output;
}

if (import.meta.main) {
  const path = await buildFakeNvml();
  console.log(path);
}
