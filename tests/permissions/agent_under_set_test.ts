/**
 * The agent itself runs under each shipped permission set (see shipped_sets.ts): file mode
 * under the flags baked into the binary (incl. --v8-flags=--jitless), kubernetes mode under the
 * container's flags, against the fake NVML and, for kubernetes, the in-test API server.
 */
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { makeGpu, readFakeState, writeFakeState } from "../helpers/fake_state.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";
import { kubernetesRunArgs } from "../helpers/agent_process.ts";
import { runDeno, shippedSets } from "./shipped_sets.ts";

const W = 1000;

async function waitUntil(what: string, predicate: () => Promise<boolean>, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

Deno.test("file mode: status --json, run --once and restore under the baked permission set", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpa-agent-file-" });
  try {
    const set = (await shippedSets(dir)).file;
    const statePath = `${dir}/fake.json`;
    await writeFakeState(statePath, {
      driverVersion: "580.159.04",
      gpus: [makeGpu(0), makeGpu(1)],
    });
    const env = { FAKE_NVML_STATE: statePath };
    const common = ["--nvml-library", set.lib, "--state-dir", set.stateDir];

    const status = await runDeno([...set.runArgs, set.entry, "status", "--json", ...common], env);
    equal(status.code, 0, status.stderr);
    const report = JSON.parse(status.stdout);
    deepStrictEqual(report.gpus.map((g: { powerLimitWatts: number }) => g.powerLimitWatts), [
      700,
      700,
    ]);

    const once = await runDeno([
      ...set.runArgs,
      set.entry,
      "run",
      "--once",
      "--caps-file",
      set.capsFile,
      "--metrics-address",
      `127.0.0.1:${set.metricsPort}`,
      ...common,
    ], env);
    equal(once.code, 0, once.stderr);
    deepStrictEqual((await readFakeState(statePath)).gpus.map((g) => g.limitMw), [
      300 * W,
      300 * W,
    ]);
    ok(!/NotCapable|Requires .* access/.test(once.stdout + once.stderr), once.stderr);

    const restore = await runDeno([...set.runArgs, set.entry, "restore", ...common], env);
    equal(restore.code, 0, restore.stderr);
    deepStrictEqual((await readFakeState(statePath)).gpus.map((g) => g.limitMw), [
      700 * W,
      700 * W,
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kubernetes mode: a pod's cap is applied and restored under the container permission set", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpa-agent-k8s-" });
  const set = (await shippedSets(dir)).kubernetes;
  const api = await startFakeApiServer({ port: set.apiPort });
  let child: Deno.ChildProcess | undefined;
  try {
    // Test-only: the in-cluster service-account path is fixed in the client, so the kubeconfig
    // (pointing at the in-test API server) lives in the parameterised service-account dir.
    const kubeconfig = await api.writeKubeconfig(set.serviceAccountDir);
    const uid = "cafe0001-dead-0002-beef-0003";
    await Deno.mkdir(`${set.procRoot}/4242`);
    await Deno.writeTextFile(
      `${set.procRoot}/4242/cgroup`,
      `0::/kubepods/pod${uid}/cri-containerd-abc\n`,
    );
    const statePath = `${dir}/fake.json`;
    await writeFakeState(statePath, {
      driverVersion: "580.159.04",
      gpus: [makeGpu(0, { processes: [{ pid: 4242 }] }), makeGpu(1)],
    });
    api.addPod({
      name: "trainer",
      namespace: "default",
      uid,
      annotations: { "dynamo.nvidia.com/gpu-power-limit": "250" },
    });
    child = new Deno.Command(Deno.execPath(), {
      args: [
        ...set.runArgs,
        set.entry,
        ...kubernetesRunArgs({
          kubeconfig: kubeconfig,
          nodeName: "node-a",
          procRoot: set.procRoot,
        }),
        "--state-dir",
        set.stateDir,
        "--nvml-library",
        set.lib,
        "--metrics-address",
        `127.0.0.1:${set.metricsPort}`,
      ],
      env: { FAKE_NVML_STATE: statePath, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const output = Promise.all([
      new Response(child.stdout).text(),
      new Response(child.stderr).text(),
    ]).then(([a, b]) => a + b);
    const limit = async (i: number) => (await readFakeState(statePath)).gpus[i].limitMw;
    await waitUntil("pod cap on GPU 0", async () => (await limit(0)) === 250 * W);
    equal(await limit(1), 700 * W);
    await waitUntil("readyz 200", async () => {
      try {
        const r = await fetch(`http://127.0.0.1:${set.metricsPort}/readyz`);
        await r.body?.cancel();
        return r.status === 200;
      } catch {
        return false;
      }
    });
    api.deletePod("default", "trainer");
    await waitUntil("GPU 0 back at baseline", async () => (await limit(0)) === 700 * W);
    child.kill("SIGTERM");
    const status = await child.status;
    const text = await output;
    equal(status.code, 0, text);
    ok(!/NotCapable|Requires .* access/.test(text), text);
  } finally {
    try {
      child?.kill("SIGKILL");
    } catch {
      // exited
    }
    await child?.status;
    await api.close();
    await Deno.remove(dir, { recursive: true });
  }
});
