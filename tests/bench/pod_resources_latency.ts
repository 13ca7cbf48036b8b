/**
 * Benchmark of the PodResources mapping through the running agent (`deno task agent run
 * --source kubernetes`, fake NVML with 8 GPUs and no processes, in-test API server and kubelet):
 * - allocation → cap: the kubelet already reports the pod's GPU when its pod event arrives
 *   (event → List → pass → set), p50/p99 from the event to the fake NVML's set timestamp;
 * - late allocation → cap: the pod event comes first and the kubelet reports the GPU 300 ms later
 *   (the agent's retry Lists find it), p50/p99 from the moment the kubelet reports it;
 * - RSS (VmRSS / VmHWM) of the agent with `--pod-gpu-mapping processes` and `auto` under the same
 *   annotation churn (8 pods, each with a process and an allocation).
 * Prints figures; asserts nothing about time. Usage: deno run -A tests/bench/pod_resources_latency.ts
 */
import { createFakeNvmlDir, type FakeNvmlDir, makeFakeState } from "../helpers/fake_state.ts";
import { type AgentProcess, descendants, waitFor } from "../helpers/agent_process.ts";
import {
  kubernetesBenchNode,
  percentile,
  procStatus,
  spawnKubernetesBenchAgent,
} from "./agent_bench.ts";
import { type FakeApiServer, startFakeApiServer } from "../helpers/k8s_api_server.ts";
import type { PodAllocation } from "../../src/sources/pod_resources.ts";
import {
  gpuPod,
  type KubeletPodResourcesServer,
  startKubeletPodResourcesServer,
} from "../helpers/kubelet_pod_resources_server.ts";

const GPUS = 8;
const ROUNDS = Number(Deno.env.get("BENCH_EDITS") ?? 40);
const ANNOTATION = "dynamo.nvidia.com/gpu-power-limit";
const LIMITS = { "nvidia.com/gpu": "1" };

function summary(values: number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    n: sorted.length,
    p50: percentile(sorted, 50),
    p99: percentile(sorted, 99),
    max: sorted.at(-1),
  };
}

/** Stops the agent (SIGTERM: it restores the GPUs), then the in-test servers. */
async function stopAll(
  agent: AgentProcess,
  api: FakeApiServer,
  kubelet: KubeletPodResourcesServer,
  fake: FakeNvmlDir,
): Promise<void> {
  agent.kill("SIGTERM");
  await agent.status();
  await api.close();
  await kubelet.close();
  fake.cleanup();
}

/** Epoch ms of the first set of `uuid` to `mw` logged at or after line `from`; null if none. */
function setAt(lines: string[], from: number, uuid: string, mw: number): number | null {
  for (const line of lines.slice(from)) {
    const [ms, , id, value] = line.split(" ");
    if (id === uuid && Number(value) === mw) return Number(ms);
  }
  return null;
}

async function latencyBench(): Promise<Record<string, unknown>> {
  const state = makeFakeState(GPUS);
  const fake = createFakeNvmlDir(state);
  const kubelet = await startKubeletPodResourcesServer();
  const api = await startFakeApiServer({ defaultNodeName: "bench-node" });
  const kubeconfig = await api.writeKubeconfig(fake.dir);
  const agent = await spawnKubernetesBenchAgent({
    fake,
    kubeconfig,
    socket: kubelet.socketPath,
    mapping: "pod-resources",
  });
  const reported: number[] = [];
  const late: number[] = [];
  try {
    await waitFor(async () => (await kubelet.calls()).list > 0, "first List", 30_000);
    for (let i = 1; i <= ROUNDS * 2; i++) {
      const gpu = i % GPUS;
      const uuid = state.gpus[gpu].uuid;
      const watts = 250 + (i % 7) * 10;
      const name = `pod-${i}`;
      const allocation: PodAllocation[] = [gpuPod("bench", name, [uuid])];
      const before = fake.readLog().length;
      let t0: number;
      if (i % 2 === 1) {
        await kubelet.setPods(allocation);
        t0 = Date.now();
        api.addPod({
          name,
          namespace: "bench",
          annotations: { [ANNOTATION]: `${watts}` },
          limits: LIMITS,
        });
      } else {
        api.addPod({
          name,
          namespace: "bench",
          annotations: { [ANNOTATION]: `${watts}` },
          limits: LIMITS,
        });
        await new Promise((r) => setTimeout(r, 300));
        await kubelet.setPods(allocation);
        t0 = Date.now();
      }
      await waitFor(() => setAt(fake.readLog(), before, uuid, watts * 1000) !== null, name, 20_000);
      (i % 2 === 1 ? reported : late).push(setAt(fake.readLog(), before, uuid, watts * 1000)! - t0);
      // Back to unmanaged before the next round.
      const restoredFrom = fake.readLog().length;
      await kubelet.setPods([]);
      api.deletePod("bench", name);
      await waitFor(
        () => setAt(fake.readLog(), restoredFrom, uuid, 700_000) !== null,
        `${name} gone`,
      );
    }
    return {
      mapping: "pod-resources",
      gpus: GPUS,
      allocationReportedAtPodEventMs: summary(reported),
      allocationReported300msAfterPodEventMs: summary(late),
      kubeletCalls: await kubelet.calls(),
    };
  } finally {
    await stopAll(agent, api, kubelet, fake);
  }
}

async function rssBench(mapping: "processes" | "auto"): Promise<Record<string, unknown>> {
  const { fake, api, kubeconfig, state } = await kubernetesBenchNode({ limits: LIMITS });
  const kubelet = await startKubeletPodResourcesServer(
    state.gpus.map((g, i) => gpuPod("bench", `pod-${i}`, [g.uuid])),
  );
  const agent = await spawnKubernetesBenchAgent({
    fake,
    kubeconfig,
    socket: kubelet.socketPath,
    mapping,
  });
  try {
    await waitFor(() => fake.readLog().length >= GPUS, "initial caps", 30_000);
    const pid = descendants(agent.child.pid).at(-1)!;
    for (let i = 1; i <= ROUNDS * 2; i++) {
      const before = fake.readLog().length;
      api.setAnnotation("bench", `pod-${i % GPUS}`, ANNOTATION, String(300 + (i % 2 ? 25 : 0) + i));
      await waitFor(() => fake.readLog().length > before, `annotation ${i}`, 10_000);
    }
    return {
      mapping,
      rssMiB: Number(procStatus(pid, "VmRSS").toFixed(1)),
      peakRssMiB: Number(procStatus(pid, "VmHWM").toFixed(1)),
      kubeletCalls: await kubelet.calls(),
    };
  } finally {
    await stopAll(agent, api, kubelet, fake);
  }
}

if (import.meta.main) {
  const results = [await latencyBench()];
  for (let run = 0; run < 2; run++) {
    results.push(await rssBench("processes"), await rssBench("auto"));
  }
  console.log(JSON.stringify(results, null, 2));
}
