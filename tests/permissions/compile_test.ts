import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  bakedFlags,
  bakedPermissionSet,
  binaryPath,
  COMPILE_TARGETS,
  compileArgv,
  compileBundleDir,
  denortEnvName,
  denortFor,
  JITLESS_V8_FLAG,
} from "../../src/permissions/compile.ts";
import { AGENT_RUNTIME_FLAGS } from "../../src/permissions/runtime.ts";
import { nvmlCandidatePaths } from "../../src/permissions/permission_set.ts";
import { SYSTEMD_LAYOUT } from "../../src/permissions/layouts.ts";

import { agentBundle } from "../helpers/agent_bundle.ts";

const COMPILE_SCRIPT = fileURLToPath(new URL("../../src/permissions/compile.ts", import.meta.url));

Deno.test("the baked set is file mode for the systemd layout", () => {
  const set = bakedPermissionSet();
  deepStrictEqual(set.ffi, nvmlCandidatePaths());
  deepStrictEqual(set.read, [
    ...nvmlCandidatePaths(),
    "/etc/ld.so.cache",
    SYSTEMD_LAYOUT.stateDir,
    SYSTEMD_LAYOUT.configDir,
  ]);
  deepStrictEqual(set.write, [SYSTEMD_LAYOUT.stateDir]);
  deepStrictEqual(set.net, [SYSTEMD_LAYOUT.metricsAddress]);
  ok(!set.env.includes("KUBERNETES_SERVICE_HOST"));
});

Deno.test("deno compile gets exactly the baked flags and the bundle, per target, into dist/", () => {
  deepStrictEqual([...COMPILE_TARGETS], ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"]);
  for (const target of COMPILE_TARGETS) {
    const argv = compileArgv(target);
    const flags = bakedFlags();
    equal(argv[0], "compile");
    equal(argv.at(-1), `${compileBundleDir()}/main.js`);
    match(compileBundleDir(), /\/dist\/agent$/);
    ok(argv.includes("--no-config"));
    deepStrictEqual(argv.slice(-1 - flags.length, -1), flags);
    equal(argv[argv.indexOf("--target") + 1], target);
    equal(argv[argv.indexOf("--output") + 1], binaryPath(target));
    match(binaryPath(target), new RegExp(`/dist/gpu-power-agent-${target}$`));
  }
  ok(bakedFlags().includes(JITLESS_V8_FLAG));
  ok(AGENT_RUNTIME_FLAGS.every((flag) => bakedFlags().includes(flag)));
  ok(bakedFlags().includes("--no-prompt"));
  ok(bakedFlags().includes("--quiet"));
  ok(!bakedFlags({ jitless: false }).includes(JITLESS_V8_FLAG));
  ok(!bakedFlags().some((f) => f === "-A" || f.startsWith("--allow-run")));
});

Deno.test("DENORT_BIN: per-target variable, or the generic one for the target of its arch", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const elf = (machine: number) => {
      const bytes = new Uint8Array(64);
      bytes.set([0x7f, 0x45, 0x4c, 0x46], 0);
      bytes[18] = machine;
      return bytes;
    };
    await Deno.writeFile(`${dir}/x86`, elf(0x3e));
    await Deno.writeFile(`${dir}/arm`, elf(0xb7));
    await Deno.writeTextFile(`${dir}/text`, "#!/bin/sh\n".padEnd(64, " "));
    const env = (vars: Record<string, string>) => (name: string) => vars[name];
    equal(denortEnvName("aarch64-unknown-linux-gnu"), "DENORT_BIN_AARCH64_UNKNOWN_LINUX_GNU");
    equal(denortFor("x86_64-unknown-linux-gnu", env({ DENORT_BIN: `${dir}/x86` })), `${dir}/x86`);
    equal(denortFor("aarch64-unknown-linux-gnu", env({ DENORT_BIN: `${dir}/x86` })), undefined);
    equal(
      denortFor(
        "aarch64-unknown-linux-gnu",
        env({ DENORT_BIN: `${dir}/x86`, DENORT_BIN_AARCH64_UNKNOWN_LINUX_GNU: `${dir}/arm` }),
      ),
      `${dir}/arm`,
    );
    let message = "";
    try {
      denortFor("x86_64-unknown-linux-gnu", env({ DENORT_BIN: `${dir}/text` }));
    } catch (error) {
      message = (error as Error).message;
    }
    match(message, /is not an ELF executable/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function compileScript(args: string[], env: Record<string, string>) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", COMPILE_SCRIPT, ...args],
    env: { NO_COLOR: "1", ...env },
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, text: dec.decode(out.stdout) + dec.decode(out.stderr) };
}

Deno.test("deno task compile: a missing DENORT_BIN fails before compiling, naming the path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const result = await compileScript(
      ["--target", "x86_64-unknown-linux-gnu", "--output-dir", dir],
      { DENORT_BIN: `${dir}/no-such-denort` },
    );
    equal(result.code, 1, result.text);
    match(result.text, /Cannot read denort at .*no-such-denort/);
    match(result.text, /DENORT_BIN/);
    deepStrictEqual([...Deno.readDirSync(dir)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task compile: denort that cannot be downloaded is explained", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // No denort cached (fresh DENO_DIR) and every download goes to a closed loopback port: the
    // same failure as an offline CI machine, without any traffic leaving the host.
    // The bundle is built beforehand: deno bundle too would have to download (esbuild).
    const bundle = await agentBundle();
    const result = await compileScript(
      [
        "--target",
        "aarch64-unknown-linux-gnu",
        "--output-dir",
        `${dir}/dist`,
        "--bundle-dir",
        bundle.dir,
      ],
      {
        DENO_DIR: `${dir}/deno-dir`,
        HTTPS_PROXY: "http://127.0.0.1:9",
        HTTP_PROXY: "http://127.0.0.1:9",
      },
    );
    equal(result.code, 1, result.text);
    match(result.text, /deno compile failed for aarch64-unknown-linux-gnu/);
    match(result.text, /could not get denort/);
    match(result.text, /DENORT_BIN_AARCH64_UNKNOWN_LINUX_GNU=\/path\/to\/denort/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task compile bundles first, then compiles the bundle (here: up to denort)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await agentBundle(); // esbuild in Deno's cache before the network is cut
    const result = await compileScript(
      ["--target", "aarch64-unknown-linux-gnu", "--output-dir", `${dir}/dist`, "--no-check"],
      { HTTPS_PROXY: "http://127.0.0.1:9", HTTP_PROXY: "http://127.0.0.1:9" },
    );
    match(result.text, new RegExp(`Bundle ${dir}/dist/agent/main\\.js`));
    ok(Deno.statSync(`${dir}/dist/agent/main.js`).isFile);
    // No denort here (and none can be fetched): the compile step of the bundle fails, explained.
    equal(result.code, 1, result.text);
    match(result.text, /deno compile failed for aarch64-unknown-linux-gnu/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
