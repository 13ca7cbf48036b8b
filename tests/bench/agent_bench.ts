/**
 * Benchmark of the running agent (file mode), spawned as a user would (`deno task agent run`):
 * - reaction latency: caps-file write → limit set on every GPU (fake NVML log timestamps), p50/p99;
 * - quiet node: NVML sets and CPU time over an idle window;
 * - RSS of the agent process (VmRSS / VmHWM), metrics server on;
 * - Kubernetes mode (in-test API server, fake proc root): annotation change → GPU and pod
 *   deletion → baseline latency, LIST/WATCH counts, RSS.
 * Prints figures; asserts nothing about time. Usage: deno task bench
 */
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { createFakeNvmlDir, makeFakeState } from "../helpers/fake_state.ts";
import { descendants, kubernetesRunArgs, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";

const GPUS = 8;
const EDITS = Number(Deno.env.get("BENCH_EDITS") ?? 60);

function procStatus(pid: number, key: string): number {
  const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(
    new RegExp(`^${key}:\\s+(\\d+) kB`, "m"),
  );
  return m ? Number(m[1]) / 1024 : NaN;
}

function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime, clock ticks (100 Hz)
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function fileModeBench(): Promise<Record<string, unknown>> {
  const lib = await buildFakeNvml();
  const fake = createFakeNvmlDir(makeFakeState(GPUS));
  const dir = fake.dir;
  const setLines = () => fake.readLog();
  const caps = `${dir}/caps.yaml`;
  Deno.writeTextFileSync(caps, "version: 1\ndefault: {watts: 300}\n");
  const port = 19000 + Math.floor(Math.random() * 1000);
  const agent = spawnAgent([
    "run",
    "--caps-file",
    caps,
    "--nvml-library",
    lib,
    "--state-dir",
    `${dir}/state`,
    "--metrics-address",
    `127.0.0.1:${port}`,
    "--log-level",
    "warning",
  ], { env: fake.env });
  try {
    await waitFor(() => setLines().length >= GPUS, "initial caps", 30_000);
    const pid = descendants(agent.child.pid).at(-1)!; // the agent itself (deepest process)
    const latencies: number[] = [];
    for (let i = 1; i <= EDITS; i++) {
      const before = setLines().length;
      const watts = 300 + (i % 2 === 0 ? 0 : 50) + (i % 7);
      const t0 = Date.now();
      Deno.writeTextFileSync(caps, `version: 1\ndefault: {watts: ${watts}}\n`);
      await waitFor(() => setLines().length >= before + GPUS, `edit ${i}`, 10_000);
      const last = setLines().slice(before).map((l) => Number(l.split(" ")[0]));
      latencies.push(Math.max(...last) - t0);
      await new Promise((r) => setTimeout(r, 30));
    }
    latencies.sort((a, b) => a - b);
    // Quiet node: no writes, little CPU.
    const setsBefore = setLines().length;
    const cpu0 = cpuSeconds(pid);
    const idleMs = 5_000;
    await new Promise((r) => setTimeout(r, idleMs));
    const idleSets = setLines().length - setsBefore;
    const idleCpu = cpuSeconds(pid) - cpu0;
    const scrape = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const rss = procStatus(pid, "VmRSS");
    const hwm = procStatus(pid, "VmHWM");
    const fmt = (n: number) => n.toFixed(1);
    return {
      mode: "file",
      gpus: GPUS,
      edits: EDITS,
      latencyMs: {
        p50: percentile(latencies, 50),
        p99: percentile(latencies, 99),
        max: latencies.at(-1),
      },
      idle: { seconds: idleMs / 1000, nvmlSets: idleSets, cpuSeconds: idleCpu },
      rssMiB: Number(fmt(rss)),
      peakRssMiB: Number(fmt(hwm)),
      metricsBytes: scrape.length,
    };
  } finally {
    agent.kill("SIGTERM");
    await agent.status();
  }
}

const ANNOTATION = "dynamo.nvidia.com/gpu-power-limit";

async function kubernetesModeBench(): Promise<Record<string, unknown>> {
  const lib = await buildFakeNvml();
  const state = makeFakeState(GPUS);
  for (let i = 0; i < GPUS; i++) {
    state.gpus[i].processes = [{ pid: 5000 + i, usedGpuMemory: 1 << 30 }];
  }
  const fake = createFakeNvmlDir(state);
  const dir = fake.dir;
  const setLines = () => fake.readLog();
  const api = await startFakeApiServer({ defaultNodeName: "bench-node" });
  for (let i = 0; i < GPUS; i++) {
    const pid = 5000 + i;
    const uid = `00000000-0000-0000-0000-${String(i).padStart(12, "0")}`;
    Deno.mkdirSync(`${dir}/proc/${pid}`, { recursive: true });
    Deno.writeTextFileSync(`${dir}/proc/${pid}/cgroup`, `0::/kubepods/burstable/pod${uid}/c${i}\n`);
    api.addPod({ name: `pod-${i}`, namespace: "bench", uid, annotations: { [ANNOTATION]: "300" } });
  }
  const kubeconfig = await api.writeKubeconfig(dir);
  const agent = spawnAgent([
    ...kubernetesRunArgs({
      kubeconfig: kubeconfig,
      nodeName: "bench-node",
      procRoot: `${dir}/proc`,
    }),
    "--nvml-library",
    lib,
    "--state-dir",
    `${dir}/state`,
    "--metrics-address",
    `127.0.0.1:${19000 + Math.floor(Math.random() * 1000)}`,
    "--no-events",
    "--log-level",
    "warning",
  ], { env: fake.env });
  try {
    await waitFor(() => setLines().length >= GPUS, "initial caps", 30_000);
    const pid = descendants(agent.child.pid).at(-1)!;
    const change: number[] = [];
    for (let i = 1; i <= EDITS; i++) {
      const gpu = i % GPUS;
      const before = setLines().length;
      const t0 = Date.now();
      api.setAnnotation("bench", `pod-${gpu}`, ANNOTATION, String(300 + (i % 2 ? 25 : 0) + i));
      await waitFor(() => setLines().length > before, `annotation ${i}`, 10_000);
      change.push(Number(setLines()[before].split(" ")[0]) - t0);
    }
    const deletion: number[] = [];
    for (let i = 0; i < GPUS; i++) {
      const before = setLines().length;
      const t0 = Date.now();
      api.deletePod("bench", `pod-${i}`);
      await waitFor(() => setLines().length > before, `delete ${i}`, 10_000);
      deletion.push(Number(setLines()[before].split(" ")[0]) - t0);
    }
    change.sort((a, b) => a - b);
    deletion.sort((a, b) => a - b);
    return {
      mode: "kubernetes",
      gpus: GPUS,
      annotationChangeMs: {
        n: change.length,
        p50: percentile(change, 50),
        p99: percentile(change, 99),
      },
      podDeletionMs: { n: deletion.length, p50: percentile(deletion, 50), max: deletion.at(-1) },
      apiRequests: { lists: api.counters.lists, watches: api.counters.watches },
      rssMiB: Number(procStatus(pid, "VmRSS").toFixed(1)),
      peakRssMiB: Number(procStatus(pid, "VmHWM").toFixed(1)),
    };
  } finally {
    agent.kill("SIGTERM");
    await agent.status();
    await api.close();
  }
}

if (import.meta.main) {
  console.log(JSON.stringify([await fileModeBench(), await kubernetesModeBench()], null, 2));
}
