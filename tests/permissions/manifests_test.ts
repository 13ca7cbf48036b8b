import { deepStrictEqual, equal, match, ok, throws } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  chartCommandSpec,
  containerCommand,
  containerPermissionSet,
  dockerEntrypointBlock,
  GENERATED_FILES,
  KUBELET_API_SERVER,
  replaceGeneratedBlock,
} from "../../src/permissions/manifests.ts";
import { CONTAINER_LAYOUT } from "../../src/permissions/layouts.ts";
import { nvmlCandidatePaths } from "../../src/permissions/permission_set.ts";
import { AGENT_MALLOC_ENV, AGENT_RUNTIME_FLAGS } from "../../src/permissions/runtime.ts";

const DOCKERFILE = fileURLToPath(new URL("../../deploy/Dockerfile", import.meta.url));

Deno.test("the Dockerfile and the Helm chart carry the generator's current output", async () => {
  equal(GENERATED_FILES.length, 2);
  for (const { path, render } of GENERATED_FILES) {
    const text = await Deno.readTextFile(path);
    equal(render(text), text, `${path} is out of date: run deno task manifests`);
  }
});

Deno.test("the chart's command spec rebuilds the container command of the definition", () => {
  // What the chart's templates do (tests/deploy/helm_chart_test.ts checks the rendered chart):
  // the base grants, the metrics listener first in --allow-net, a feature's grants appended.
  const spec = chartCommandSpec();
  const build = (port: number, features: (keyof typeof spec.features)[]) => [
    ...spec.command,
    ...spec.grants.flatMap(({ flag, values }) => {
      const all = [
        ...(flag === "--allow-net" ? [`${spec.metricsHost}:${port}`] : []),
        ...values,
        ...features.flatMap((f) => spec.features[f].filter((g) => g.flag === flag))
          .flatMap((g) => g.values),
      ];
      return all.length > 0 ? [`${flag}=${all.join(",")}`] : [];
    }),
    ...spec.tail,
  ];
  deepStrictEqual(build(9402, []), containerCommand({ apiServer: KUBELET_API_SERVER }));
  const withPolicy = containerCommand({
    apiServer: KUBELET_API_SERVER,
    metricsAddress: "0.0.0.0:9500",
    capsFile: CONTAINER_LAYOUT.nodePolicyFile,
  });
  const sorted = (command: string[]) => command.map((a) => a.split(",").sort().join(","));
  deepStrictEqual(sorted(build(9500, ["nodePolicy"])), sorted(withPolicy));
  deepStrictEqual(spec.features.nodePolicy, [{
    flag: "--allow-read",
    values: [CONTAINER_LAYOUT.nodePolicyDir],
  }]);
});

Deno.test("a hand edit inside a generated block is detected", () => {
  const text = `FROM x\n${dockerEntrypointBlock()}\nCMD ["run"]\n`;
  const edited = text.replace("--allow-write=", "--allow-write=/etc,");
  ok(replaceGeneratedBlock(edited, dockerEntrypointBlock(), "Dockerfile") !== edited);
  const chart = GENERATED_FILES[1];
  const current = chart.render("");
  ok(
    chart.render(current.replace("--allow-write", "--allow-run")) !== current.replace(
      "--allow-write",
      "--allow-run",
    ),
  );
  throws(() => replaceGeneratedBlock("FROM x\n", "", "Dockerfile"), /no "BEGIN GENERATED/);
});

Deno.test("container command: deno run, cached, no config, kubernetes set, the bundle's main.js", () => {
  const command = containerCommand({ apiServer: KUBELET_API_SERVER });
  deepStrictEqual(command.slice(0, 5 + AGENT_RUNTIME_FLAGS.length), [
    "deno",
    "run",
    "--no-prompt",
    "--cached-only",
    ...AGENT_RUNTIME_FLAGS,
    "--no-config",
  ]);
  equal(command.at(-1), "/app/dist/agent/main.js");
  const set = containerPermissionSet({ apiServer: KUBELET_API_SERVER });
  deepStrictEqual(set.ffi, nvmlCandidatePaths());
  deepStrictEqual(set.write, ["/var/lib/gpu-power-agent"]);
  deepStrictEqual(set.net, ["0.0.0.0:9402", KUBELET_API_SERVER]);
  ok(set.read.includes("/proc"));
  ok(set.read.includes("/var/run/secrets/kubernetes.io/serviceaccount"));
  ok(!command.some((a) => a === "-A" || a.startsWith("--allow-run")));
});

Deno.test("the Dockerfile pins the official image to the Deno version under test", async () => {
  const text = await Deno.readTextFile(DOCKERFILE);
  const from = text.split("\n").filter((l) => l.startsWith("FROM "));
  deepStrictEqual(from, [`FROM denoland/deno:${Deno.version.deno}`]);
  match(text, /RUN deno install --frozen --entrypoint main\.ts/);
  match(text, /ENTRYPOINT \["\/bin\/sh", "-c", "exec deno run --no-prompt --cached-only/);
  match(text, /\$\{KUBERNETES_SERVICE_HOST\}:\$\{KUBERNETES_SERVICE_PORT\}/);
});

Deno.test("the image sets the malloc variables of runtime.ts", async () => {
  const text = await Deno.readTextFile(DOCKERFILE);
  const env = text.split("\n").filter((l) => l.startsWith("ENV MALLOC_"));
  deepStrictEqual(env, [
    `ENV ${Object.entries(AGENT_MALLOC_ENV).map(([k, v]) => `${k}=${v}`).join(" ")}`,
  ]);
});
