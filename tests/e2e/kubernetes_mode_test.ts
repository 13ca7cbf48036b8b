/**
 * End to end, Kubernetes mode: spawn `deno task agent run --source kubernetes` (permission-scoped)
 * with the fake libnvidia-ml.so.1, a fake proc root (pid → pod cgroup) and the in-test API server,
 * and follow a pod's annotation onto its GPU through the real client path.
 */
import assert from "node:assert/strict";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { makeGpu, readFakeState, writeFakeState } from "../helpers/fake_state.ts";
import { kubernetesRunArgs, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";

const ANNOTATION = "dynamo.nvidia.com/gpu-power-limit";
const UID_A = "cafe0001-dead-0002-beef-0003";
const UID_B = "0b0b0b0b-1111-2222-3333-444444444444";

Deno.test("kubernetes mode: annotate → cap, change → new cap, API down → kept, delete → baseline", async () => {
  const lib = await buildFakeNvml();
  const dir = await Deno.makeTempDir({ prefix: "gpa-e2e-k8s-" });
  const statePath = `${dir}/nvml.json`;
  writeFakeState(statePath, {
    driverVersion: "580.159.04",
    gpus: [
      makeGpu(0, { processes: [{ pid: 4242, usedGpuMemory: 1 << 30 }] }),
      makeGpu(1, { processes: [{ pid: 4343, usedGpuMemory: 1 << 30 }] }),
    ],
  });
  // The pods' processes as the host's /proc shows them (systemd and cgroupfs drivers).
  const proc = `${dir}/proc`;
  await Deno.mkdir(`${proc}/4242`, { recursive: true });
  await Deno.mkdir(`${proc}/4343`, { recursive: true });
  await Deno.writeTextFile(
    `${proc}/4242/cgroup`,
    `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${
      UID_A.replaceAll("-", "_")
    }.slice/cri-containerd-abc.scope\n`,
  );
  await Deno.writeTextFile(`${proc}/4343/cgroup`, `0::/kubepods/besteffort/pod${UID_B}/def\n`);

  const api = await startFakeApiServer({ defaultNodeName: "gpu-node-1" });
  api.addPod({
    name: "llm-a",
    namespace: "inference",
    uid: UID_A,
    annotations: { [ANNOTATION]: "250" },
  });
  api.addPod({ name: "llm-b", namespace: "inference", uid: UID_B });
  api.addPod({ name: "elsewhere", namespace: "inference", nodeName: "gpu-node-2" });
  const kubeconfig = await api.writeKubeconfig(dir);
  const port = 20000 + Math.floor(Math.random() * 20000);

  const limits = () => readFakeState(statePath).gpus.map((g) => g.limitMw);
  const agent = spawnAgent([
    ...kubernetesRunArgs({
      kubeconfig,
      nodeName: "gpu-node-1",
      procRoot: proc,
      nvmlLibrary: lib,
      stateDir: `${dir}/state`,
      metricsAddress: `127.0.0.1:${port}`,
    }),
    "--stale-after",
    "1",
  ], { env: { FAKE_NVML_STATE: statePath } });
  const readyz = async () => {
    const r = await fetch(`http://127.0.0.1:${port}/readyz`);
    return { status: r.status, body: await r.text() };
  };
  try {
    // The annotated pod's GPU is capped; the unannotated pod's GPU is left alone.
    await waitFor(() => limits().join() === "250000,700000", "annotation applied");
    await waitFor(async () => (await readyz()).status === 200, "ready");

    // Annotation change → new cap, through the same watch (no relist).
    api.setAnnotation("inference", "llm-a", ANNOTATION, "300");
    await waitFor(() => limits()[0] === 300000, "changed annotation applied");
    // An invalid value on a pod asks for the safe default (fail closed).
    api.setAnnotation("inference", "llm-b", ANNOTATION, "250W");
    await waitFor(() => limits()[1] === 500000, "invalid annotation → safe default");
    assert.equal(api.counters.lists, 1, "one LIST");
    assert.equal(api.counters.watches, 1, "one WATCH in steady state");

    // The API server goes away: caps stay, readiness turns false after --stale-after.
    await api.stop();
    await waitFor(async () => (await readyz()).status === 503, "readyz 503 while stale");
    assert.match((await readyz()).body, /stale/);
    assert.deepEqual(limits(), [300000, 500000], "caps kept while the API is down");

    // It comes back: the agent resumes and follows the next change.
    await api.start();
    await waitFor(async () => (await readyz()).status === 200, "ready again");
    api.deletePod("inference", "llm-a");
    await waitFor(() => limits()[0] === 700000, "deleted pod's GPU back at baseline");

    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(metrics, /gpu_power_agent_safe_default_applications_total [1-9]/);
    assert.match(metrics, /gpu_power_agent_invalid_requests_total\{[^}]*\} [1-9]/);

    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
    assert.deepEqual(limits(), [700000, 700000], "SIGTERM restores every GPU");
    assert.ok(
      api.events.some((e) => (e as { reason?: string }).reason === "CapApplied"),
      "a CapApplied Event was emitted on the pod",
    );
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
    await api.close();
  }
});
