/**
 * The bundle the image and the binary ship (`deno task bundle`, src/permissions/bundle.ts): what
 * it imports, that `deno task agent` runs it under `GPU_POWER_AGENT_BUNDLE`, and that every
 * end-to-end test passes against it (they run again, in a child `deno test`, with the variable
 * set: each agent they start is the bundle).
 *
 * @module
 */
import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { agentBundle } from "../helpers/agent_bundle.ts";
import { REPO_ROOT, spawnAgent } from "../helpers/agent_process.ts";
import { BUNDLE_ENV } from "../../src/permissions/launch.ts";
import { bundleArgv } from "../../src/permissions/bundle.ts";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { createFakeNvmlDir, makeFakeState } from "../helpers/fake_state.ts";

Deno.test("deno bundle: code-split, minified, for Deno, locked; never --keep-names", () => {
  const argv = bundleArgv("/out");
  equal(argv[0], "bundle");
  for (const flag of ["--code-splitting", "--minify", "--frozen-lockfile"]) ok(argv.includes(flag));
  equal(argv[argv.indexOf("--platform") + 1], "deno");
  equal(argv[argv.indexOf("--outdir") + 1], "/out");
  ok(argv.at(-1)!.endsWith("/main.ts"));
  // --keep-names makes Deno 2.9.6's bundler drop the require it gives CommonJS packages.
  ok(!argv.includes("--keep-names"));
  ok(bundleArgv("/out", { check: true }).includes("--check"));
});

Deno.test("the bundle imports only its own chunks and node: built-ins", async () => {
  const { dir } = await agentBundle();
  const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  ok(files.includes("main.js"), files.join(", "));
  ok(files.length > 5, `code-split into chunks: ${files.join(", ")}`);
  const foreign: string[] = [];
  for (const name of files) {
    const text = await Deno.readTextFile(`${dir}/${name}`);
    for (const m of text.matchAll(/(?:\bfrom\s*|\bimport\s*\(?\s*)"([^"]+)"/g)) {
      const spec = m[1];
      if (spec.startsWith("node:")) continue;
      if (spec.startsWith("./") && files.includes(spec.slice(2))) continue;
      foreign.push(`${name}: ${spec}`);
    }
  }
  deepStrictEqual(foreign, [], "no npm:, jsr:, remote or missing imports");
});

Deno.test("deno task agent runs the bundle named by GPU_POWER_AGENT_BUNDLE; a missing one exits 2", async () => {
  const { dir } = await agentBundle();
  const lib = await buildFakeNvml();
  const fake = createFakeNvmlDir(makeFakeState(2));
  try {
    const args = ["status", "--json", "--nvml-library", lib, "--state-dir", `${fake.dir}/state`];
    const agent = spawnAgent(args, { env: { ...fake.env, [BUNDLE_ENV]: dir } });
    equal((await agent.status()).code, 0, agent.output());
    equal(JSON.parse(agent.output()).gpus.length, 2);

    const nowhere = `${fake.dir}/nowhere`;
    const missing = spawnAgent(args, { env: { ...fake.env, [BUNDLE_ENV]: nowhere } });
    equal((await missing.status()).code, 2);
    match(missing.output(), /GPU_POWER_AGENT_BUNDLE=.*nowhere.*deno task bundle/);
  } finally {
    fake.cleanup();
  }
});

Deno.test("every end-to-end test passes against the bundle", async () => {
  const { dir } = await agentBundle();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "tests/e2e/"],
    cwd: REPO_ROOT,
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", [BUNDLE_ENV]: dir },
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  const summary = text.match(/^(?:ok|FAILED) \| (\d+) passed \| (\d+) failed/m);
  ok(summary, `no summary from the end-to-end run:\n${text.slice(-4000)}`);
  equal(Number(summary[2]), 0, `end-to-end tests failed against the bundle:\n${text.slice(-6000)}`);
  ok(Number(summary[1]) >= 30, `only ${summary[1]} end-to-end tests ran`);
  equal(out.code, 0, text.slice(-4000));
});
