/**
 * A Kubernetes-mode agent's surroundings for e2e tests: fake NVML with two GPUs, each running one
 * process of a pod (pid → pod cgroup in a fake proc root), the in-test API server for node
 * `gpu-node-1`, its kubeconfig and a metrics port; plus the readers these tests share (limits,
 * HTTP, Events of a pod).
 */
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { createFakeNvmlDir, type FakeNvmlDir, makeGpu, readFakeState } from "./fake_state.ts";
import { type AgentProcess, kubernetesRunArgs } from "./agent_process.ts";
import { type FakeApiServer, startFakeApiServer } from "./k8s_api_server.ts";

/** The node the agent runs on. */
export const K8S_NODE = "gpu-node-1";
/** UIDs of the pods whose processes run on GPU 0 (pid 4242) and GPU 1 (pid 4343). */
export const POD_UIDS = [
  "aaaa0001-0000-4000-8000-000000000001",
  "bbbb0002-0000-4000-8000-000000000002",
] as const;

/** What {@linkcode setupK8sAgent} prepared. */
export interface K8sAgentSetup {
  lib: string;
  fake: FakeNvmlDir;
  api: FakeApiServer;
  kubeconfig: string;
  port: number;
  /** `--nvml-library LIB --state-dir DIR` (also for `status`). */
  common: string[];
  /** `run --source kubernetes …` on this node, with metrics on `port`, plus `extra`. */
  args(extra?: string[]): string[];
}

/** Two GPUs (GPU 0's NVML calls fail as `fail` says) with one pod process each; no pods yet. */
export async function setupK8sAgent(fail?: Record<string, number>): Promise<K8sAgentSetup> {
  const lib = await buildFakeNvml();
  const fake = createFakeNvmlDir({
    driverVersion: "580.159.04",
    gpus: [
      makeGpu(0, { processes: [{ pid: 4242, usedGpuMemory: 1 << 30 }], fail }),
      makeGpu(1, { processes: [{ pid: 4343, usedGpuMemory: 1 << 30 }] }),
    ],
  });
  const proc = `${fake.dir}/proc`;
  for (const [pid, uid] of [[4242, POD_UIDS[0]], [4343, POD_UIDS[1]]] as const) {
    await Deno.mkdir(`${proc}/${pid}`, { recursive: true });
    await Deno.writeTextFile(`${proc}/${pid}/cgroup`, `0::/kubepods/burstable/pod${uid}/c${pid}\n`);
  }
  const api = await startFakeApiServer({ defaultNodeName: K8S_NODE });
  const kubeconfig = await api.writeKubeconfig(fake.dir);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const stateDir = `${fake.dir}/state`;
  const args = (extra: string[] = []) => [
    ...kubernetesRunArgs({
      kubeconfig,
      nodeName: K8S_NODE,
      procRoot: proc,
      nvmlLibrary: lib,
      stateDir,
      metricsAddress: `127.0.0.1:${port}`,
    }),
    ...extra,
  ];
  return {
    lib,
    fake,
    api,
    kubeconfig,
    port,
    common: ["--nvml-library", lib, "--state-dir", stateDir],
    args,
  };
}

/** Current power limits of the fake GPUs (mW). */
export function limits(fake: FakeNvmlDir): number[] {
  return readFakeState(fake.statePath).gpus.map((g) => g.limitMw);
}

/** GET `path` on the agent's metrics port; status 0 while it is not listening yet. */
export function http(port: number) {
  return async (path: string) => {
    try {
      const r = await fetch(`http://127.0.0.1:${port}${path}`);
      return { status: r.status, body: await r.text() };
    } catch {
      return { status: 0, body: "" }; // not listening yet
    }
  };
}

/** A Kubernetes Event as the fake API server stored it. */
export interface PodEvent {
  reason: string;
  type: string;
  message: string;
  involvedObject: { name: string };
}

/** The Events posted about `pod`. */
export function events(api: FakeApiServer, pod: string): PodEvent[] {
  return (api.events as unknown as PodEvent[]).filter((e) => e.involvedObject.name === pod);
}

/** Kill the agent's process tree and wait for it. */
export async function stop(agent: AgentProcess): Promise<void> {
  agent.killTree("SIGKILL");
  await agent.status();
}
