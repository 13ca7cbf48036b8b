/**
 * Benchmark: how soon after the API server returns from an outage is the first change applied?
 *
 * Spawns the agent in Kubernetes mode as a user would (fake NVML, fake proc root, in-test API
 * server); each round stops the API server for `downMs`, starts it again, changes a pod's
 * annotation at once and times until the fake NVML log shows the new limit. Target (README):
 * p99 ≤ 5 s. Asserts nothing about time.
 *
 * `measureApiRecovery(options)` for `deno task bench`; standalone:
 * `deno run -A tests/bench/api_recovery.ts [rounds] [downMs]` prints JSON.
 */
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { createFakeNvmlDir, makeFakeState } from "../helpers/fake_state.ts";
import { kubernetesRunArgs, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";

const ANNOTATION = "dynamo.nvidia.com/gpu-power-limit";

/** Options of `measureApiRecovery`. */
export interface ApiRecoveryOptions {
  /** Outages measured (default 6). */
  rounds?: number;
  /** Length of each outage in ms (default 8000). */
  downMs?: number;
  /** Healthy time between outages in ms (default 1000). */
  upMs?: number;
}

/** Result: recovery latencies in ms (API server back → new limit on the GPU). */
export interface ApiRecoveryResult {
  p50Ms: number;
  p99Ms: number;
  samples: number[];
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** Run the outage rounds against a spawned agent; see the module doc. */
export async function measureApiRecovery(
  options: ApiRecoveryOptions = {},
): Promise<ApiRecoveryResult> {
  const rounds = options.rounds ?? 6;
  const downMs = options.downMs ?? 8000;
  const upMs = options.upMs ?? 1000;
  const lib = await buildFakeNvml();
  const state = makeFakeState(1);
  state.gpus[0].processes = [{ pid: 4242, usedGpuMemory: 1 << 30 }];
  const fake = createFakeNvmlDir(state);
  const dir = fake.dir;
  const uid = "00000000-0000-4000-8000-00000000abcd";
  Deno.mkdirSync(`${dir}/proc/4242`, { recursive: true });
  Deno.writeTextFileSync(`${dir}/proc/4242/cgroup`, `0::/kubepods/burstable/pod${uid}/c\n`);
  const api = await startFakeApiServer({ defaultNodeName: "bench-node" });
  api.addPod({ name: "p", namespace: "bench", uid, annotations: { [ANNOTATION]: "300" } });
  const agent = spawnAgent([
    ...kubernetesRunArgs({
      kubeconfig: await api.writeKubeconfig(dir),
      nodeName: "bench-node",
      procRoot: `${dir}/proc`,
      nvmlLibrary: lib,
      stateDir: `${dir}/state`,
      metricsAddress: "off",
    }),
    "--no-events",
    "--log-level",
    "error",
  ], { env: fake.env });
  const samples: number[] = [];
  try {
    await waitFor(() => fake.readLog().length >= 1, "initial cap", 30_000);
    for (let round = 1; round <= rounds; round++) {
      await new Promise((r) => setTimeout(r, upMs));
      await api.stop();
      await new Promise((r) => setTimeout(r, downMs));
      const before = fake.readLog().length;
      await api.start();
      const t0 = Date.now();
      api.setAnnotation("bench", "p", ANNOTATION, String(300 + (round % 2 ? 50 : 0) + round));
      await waitFor(() => fake.readLog().length > before, `change after outage ${round}`, 60_000);
      samples.push(Number(fake.readLog()[before].split(" ")[0]) - t0);
    }
  } finally {
    agent.kill("SIGTERM");
    await agent.status();
    await api.close();
  }
  const sorted = [...samples].sort((a, b) => a - b);
  return { p50Ms: percentile(sorted, 50), p99Ms: percentile(sorted, 99), samples };
}

if (import.meta.main) {
  const [rounds, downMs] = Deno.args.map(Number);
  const result = await measureApiRecovery({
    rounds: rounds || undefined,
    downMs: downMs || undefined,
  });
  console.log(JSON.stringify(result));
}
