import assert from "node:assert/strict";
import { NVML_SYMBOLS } from "../../src/nvml/ffi_symbols.ts";
import { buildFakeNvml, type FakeNvmlVariant } from "./build.ts";

const BUILD_SCRIPT = new URL("./build.ts", import.meta.url).pathname;
const REPO_ROOT = new URL("../../", import.meta.url).pathname;

function mtime(path: string): number {
  return Deno.statSync(path).mtime!.getTime();
}

const VARIANT_SYMBOLS = [
  "nvmlDeviceGetComputeRunningProcesses",
  "nvmlDeviceGetComputeRunningProcesses_v2",
  "nvmlDeviceGetComputeRunningProcesses_v3",
  "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
  "nvmlDeviceGetMaxMigDeviceCount",
  "nvmlDeviceGetMigDeviceHandleByIndex",
  "nvmlDeviceGetMigMode",
] as const;

/** Which of the symbols that differ between variants the library exports. */
function variantSymbols(path: string): string[] {
  const library = Deno.dlopen(path, NVML_SYMBOLS);
  try {
    return VARIANT_SYMBOLS.filter((name) => library.symbols[name] !== null);
  } finally {
    library.close();
  }
}

Deno.test("buildFakeNvml builds each variant at build/<variant>/libnvidia-ml.so.1", async () => {
  const processes = VARIANT_SYMBOLS.slice(0, 3);
  const mig = VARIANT_SYMBOLS.slice(3);
  const expected: Record<FakeNvmlVariant, string[]> = {
    "default": [...VARIANT_SYMBOLS],
    "v1-only": ["nvmlDeviceGetComputeRunningProcesses", ...mig],
    "no-mig": [...processes],
  };
  for (const variant of Object.keys(expected) as FakeNvmlVariant[]) {
    const path = await buildFakeNvml({ variant });
    assert.ok(path.startsWith("/"), path);
    assert.ok(path.endsWith(`/tests/fake_nvml/build/${variant}/libnvidia-ml.so.1`), path);
    assert.deepEqual(variantSymbols(path), expected[variant], variant);
  }
});

Deno.test("buildFakeNvml does not rebuild an up-to-date library", async () => {
  const path = await buildFakeNvml();
  const before = Deno.statSync(path);
  assert.equal(await buildFakeNvml(), path);
  const after = Deno.statSync(path);
  assert.equal(after.ino, before.ino);
  assert.equal(after.mtime!.getTime(), before.mtime!.getTime());
});

Deno.test("buildFakeNvml rebuilds a stale library, also when two builds race", async () => {
  const path = await buildFakeNvml({ variant: "no-mig" });
  const old = new Date(2000, 0, 1);
  Deno.utimeSync(path, old, old);
  const [a, b] = await Promise.all([
    buildFakeNvml({ variant: "no-mig" }),
    buildFakeNvml({ variant: "no-mig" }),
  ]);
  assert.equal(a, path);
  assert.equal(b, path);
  assert.ok(mtime(path) > old.getTime());
  const leftovers = [...Deno.readDirSync(path.replace(/\/[^/]+$/, ""))]
    .map((entry) => entry.name)
    .filter((name) => name !== "libnvidia-ml.so.1");
  assert.deepEqual(leftovers, []);
  assert.equal(variantSymbols(path).includes("nvmlDeviceGetMigMode"), false);
});

Deno.test("build.ts as a script prints the library path as the last stdout line", async () => {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-run=cc",
      BUILD_SCRIPT,
    ],
    cwd: REPO_ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
  const lines = new TextDecoder().decode(output.stdout).trimEnd().split("\n");
  assert.equal(lines.at(-1), await buildFakeNvml());
});

Deno.test("buildFakeNvml reports a missing compiler clearly", async () => {
  const path = await buildFakeNvml({ variant: "v1-only" });
  const old = new Date(2000, 0, 1);
  Deno.utimeSync(path, old, old);
  try {
    await assert.rejects(
      () => buildFakeNvml({ variant: "v1-only", cc: "/nonexistent/cc" }),
      /Cannot build the fake NVML library: running "\/nonexistent\/cc" failed/,
    );
  } finally {
    await buildFakeNvml({ variant: "v1-only" });
  }
});
