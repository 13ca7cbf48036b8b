/**
 * End to end, pods mapped to GPUs through the kubelet's PodResources: `deno task agent run
 * --source kubernetes --pod-gpu-mapping pod-resources|auto` (permission-scoped) with the fake
 * libnvidia-ml.so.1, the in-test API server and the in-test kubelet (a Node child process).
 */
import assert from "node:assert/strict";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import {
  createFakeNvmlDir,
  type FakeNvmlDir,
  makeGpu,
  readFakeState,
} from "../helpers/fake_state.ts";
import {
  type AgentProcess,
  kubernetesRunArgs,
  spawnAgent,
  waitFor,
} from "../helpers/agent_process.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";
import { gpuPod, startKubeletPodResourcesServer } from "../helpers/kubelet_pod_resources_server.ts";
import { sampleValue } from "../metrics/exposition.ts";

const ANNOTATION = "dynamo.nvidia.com/gpu-power-limit";
const GPU = [0, 1, 2].map((i) => makeGpu(i).uuid);
const MIG = "MIG-5c3b0a1e-0000-4000-8000-000000000002";
const GPU_LIMITS = { "nvidia.com/gpu": "1" };

/** The scoped agent in Kubernetes mode with `mapping`, the fake NVML and metrics on `port`. */
async function spawnMappedAgent(options: {
  fake: FakeNvmlDir;
  kubeconfig: string;
  port: number;
  procRoot: string;
  mapping: "auto" | "pod-resources";
  socket: string;
  extra?: string[];
}): Promise<AgentProcess> {
  return spawnAgent([
    ...kubernetesRunArgs({
      kubeconfig: options.kubeconfig,
      nodeName: "gpu-node-1",
      procRoot: options.procRoot,
      podGpuMapping: options.mapping,
      podResourcesSocket: options.socket,
      nvmlLibrary: await buildFakeNvml(),
      stateDir: `${options.fake.dir}/state`,
      metricsAddress: `127.0.0.1:${options.port}`,
    }),
    ...options.extra ?? [],
  ], { env: options.fake.env });
}

Deno.test("pod-resources mapping: caps at allocation, time-slicing, MIG, unknown devices, kubelet restart", async () => {
  // No process on any GPU: only the kubelet's allocations tell which pod uses which GPU.
  const fake = createFakeNvmlDir({
    driverVersion: "580.159.04",
    gpus: [makeGpu(0), makeGpu(1), makeGpu(2, { migDevices: [{ uuid: MIG }] })],
  });
  const kubelet = await startKubeletPodResourcesServer([
    gpuPod("ml", "llm-a", [`${GPU[0]}::0`]),
    gpuPod("ml", "llm-m", [MIG], "nvidia.com/mig-1g.10gb"),
  ]);
  const api = await startFakeApiServer({ defaultNodeName: "gpu-node-1" });
  api.addPod({
    name: "llm-a",
    namespace: "ml",
    annotations: { [ANNOTATION]: "250" },
    limits: GPU_LIMITS,
  });
  api.addPod({
    name: "llm-m",
    namespace: "ml",
    annotations: { [ANNOTATION]: "300" },
    limits: { "nvidia.com/mig-1g.10gb": "1" },
  });
  const kubeconfig = await api.writeKubeconfig(fake.dir);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const limits = () => readFakeState(fake.statePath).gpus.map((g) => g.limitMw);
  const agent = await spawnMappedAgent({
    fake,
    kubeconfig,
    port,
    procRoot: `${fake.dir}/no-proc`,
    mapping: "pod-resources",
    socket: kubelet.socketPath,
    extra: ["--stale-after", "1"],
  });
  const readyz = async () => {
    const r = await fetch(`http://127.0.0.1:${port}/readyz`);
    return { status: r.status, body: await r.text() };
  };
  const metric = async (name: string) =>
    sampleValue(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), name);
  try {
    // Allocated, annotated, zero processes → capped; the MIG device's parent GPU too.
    await waitFor(() => limits().join() === "250000,700000,300000", "caps at allocation");
    await waitFor(async () => (await readyz()).status === 200, "ready");
    assert.equal(await metric("gpu_power_agent_pod_resources_up"), 1);
    assert.ok((await metric("gpu_power_agent_pod_resources_last_success_timestamp_seconds"))! > 0);

    // Time-slicing: a replica of GPU 0 goes to a pod without the annotation. Its pod event makes
    // the agent List; the GPU gets the safe default within 2 s (the bound).
    await kubelet.setPods([
      gpuPod("ml", "llm-a", [`${GPU[0]}::0`]),
      gpuPod("ml", "llm-m", [MIG], "nvidia.com/mig-1g.10gb"),
      gpuPod("batch", "job-b", [`${GPU[0]}::1`]),
    ]);
    api.addPod({ name: "job-b", namespace: "batch", limits: GPU_LIMITS });
    await waitFor(() => limits()[0] === 500000, "co-tenant → safe default within 2 s", 2000);

    // The device plugin reports a device NVML does not know: a warning, nothing applied.
    await kubelet.setPods([
      gpuPod("ml", "llm-a", [`${GPU[0]}::0`]),
      gpuPod("ml", "llm-m", [MIG], "nvidia.com/mig-1g.10gb"),
      gpuPod("batch", "job-b", [`${GPU[0]}::1`]),
      gpuPod("ml", "llm-x", ["GPU-ffffffff-not-on-this-node"]),
    ]);
    api.addPod({
      name: "llm-x",
      namespace: "ml",
      annotations: { [ANNOTATION]: "200" },
      limits: GPU_LIMITS,
    });
    await agent.waitForOutput(/llm-x.*GPU-ffffffff-not-on-this-node.*nothing is applied/);
    assert.deepEqual(limits(), [500000, 700000, 300000], "the unknown device changed nothing");

    // The kubelet goes down: nothing is written meanwhile, /readyz says why after --stale-after.
    const setsBefore = fake.readLog().length;
    await kubelet.stop();
    // While it is down the allocations change (GPU 0's co-tenant leaves, llm-a moves to GPU 1)
    // and a pod event makes the agent ask: the List fails, caps stay frozen.
    await kubelet.setPods([
      gpuPod("ml", "llm-a", [GPU[1]]),
      gpuPod("ml", "llm-m", [MIG], "nvidia.com/mig-1g.10gb"),
    ]);
    api.addPod({ name: "job-c", namespace: "batch", limits: GPU_LIMITS });
    await waitFor(
      async () => (await readyz()).status === 503,
      "readyz 503 while the kubelet is down",
    );
    assert.match((await readyz()).body, /stale.*kubelet PodResources/);
    assert.equal(await metric("gpu_power_agent_pod_resources_up"), 0);
    assert.deepEqual(limits(), [500000, 700000, 300000], "caps frozen");
    assert.equal(fake.readLog().length, setsBefore, "no NVML write while the kubelet is down");

    // It comes back: the agent asks again by itself (backing off from 1 s) and follows the answer.
    await kubelet.start();
    await waitFor(() => limits().join() === "700000,250000,300000", "resumed with the new answer");
    await waitFor(async () => (await readyz()).status === 200, "ready again");
    assert.equal(await metric("gpu_power_agent_pod_resources_up"), 1);

    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
    assert.deepEqual(limits(), [700000, 700000, 700000], "SIGTERM restores every GPU");
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
    await api.close();
    await kubelet.close();
    fake.cleanup();
  }
});

Deno.test("auto mapping: no PodResources socket → pods map through their processes", async () => {
  const fake = createFakeNvmlDir({
    driverVersion: "580.159.04",
    gpus: [makeGpu(0), makeGpu(1, { processes: [{ pid: 4343, usedGpuMemory: 1 << 30 }] })],
  });
  const uid = "0b0b0b0b-1111-2222-3333-444444444444";
  const proc = `${fake.dir}/proc`;
  await Deno.mkdir(`${proc}/4343`, { recursive: true });
  await Deno.writeTextFile(`${proc}/4343/cgroup`, `0::/kubepods/besteffort/pod${uid}/def\n`);
  const api = await startFakeApiServer({ defaultNodeName: "gpu-node-1" });
  api.addPod({ name: "llm-b", namespace: "ml", uid, annotations: { [ANNOTATION]: "275" } });
  const kubeconfig = await api.writeKubeconfig(fake.dir);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const socket = `${fake.dir}/pod-resources/kubelet.sock`;
  const agent = await spawnMappedAgent({
    fake,
    kubeconfig,
    port,
    procRoot: proc,
    mapping: "auto",
    socket,
  });
  try {
    await waitFor(
      () => readFakeState(fake.statePath).gpus.map((g) => g.limitMw).join() === "700000,275000",
      "cap through the pod's process",
    );
    await agent.waitForOutput(/PodResources socket .*kubelet\.sock is not usable.*processes only/);
    await waitFor(
      async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200,
      "ready",
    );
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.equal(sampleValue(metrics, "gpu_power_agent_pod_resources_up"), 0);
    assert.equal(agent.output().match(/is not usable/g)?.length, 1, "the hint is logged once");
    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
    await api.close();
    fake.cleanup();
  }
});
