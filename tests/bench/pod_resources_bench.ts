/**
 * Benchmark of the PodResources client against the in-test kubelet (Node child process):
 * - cost of one `List` with N pods on the node: answer bytes, wall ms p50/p99, CPU ms of the
 *   agent-side process per List (utime + stime over many Lists);
 * - RSS a child Deno process adds by loading and using the client (node:http2 + the codec),
 *   against an idle one (both have loaded this module's imports);
 * - kubelet restarts with a call in flight (GOAWAY, then connection reset), counted.
 * Prints figures; asserts nothing about time. Usage:
 * `deno run -A tests/bench/pod_resources_bench.ts` (part of `deno task bench`).
 */
import { fileURLToPath } from "node:url";
import { createPodResourcesClient } from "../../src/sources/pod_resources.ts";
import { encodeWithProtobufjs } from "../helpers/pod_resources_protobufjs.ts";
import { gpuPod, startKubeletPodResourcesServer } from "../helpers/kubelet_pod_resources_server.ts";

const LISTS = Number(Deno.env.get("BENCH_LISTS") ?? 200);
const SELF = fileURLToPath(import.meta.url);
const CONFIG = fileURLToPath(new URL("../../deno.json", import.meta.url));

function cpuMs(): number {
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10; // clock ticks at 100 Hz
}

function statusMiB(key: string): number {
  const m = Deno.readTextFileSync("/proc/self/status").match(
    new RegExp(`^${key}:\\s+(\\d+) kB`, "m"),
  );
  return m ? Number(m[1]) / 1024 : NaN;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** N pods: ~8 GPU pods with one GPU each, the rest without devices (typical node). */
function podsOnNode(n: number) {
  return Array.from(
    { length: n },
    (_, i) =>
      i < 8
        ? gpuPod("inference", `worker-${i}`, [`GPU-00000000-0000-0000-0000-00000000000${i}`])
        : {
          namespace: "kube-system",
          name: `daemon-${i}`,
          containers: [{ name: "c", devices: [] }],
        },
  );
}

async function listCost(): Promise<void> {
  await using kubelet = await startKubeletPodResourcesServer();
  const client = createPodResourcesClient({ socketPath: kubelet.socketPath });
  console.log("List cost (client side; kubelet in a Node child):");
  for (const n of [10, 110, 500]) {
    const pods = podsOnNode(n);
    await kubelet.setPods(pods);
    const bytes = encodeWithProtobufjs("ListPodResourcesResponse", { podResources: pods })
      .byteLength;
    for (let i = 0; i < 20; i++) await client.list(); // warm-up
    const walls: number[] = [];
    const cpu0 = cpuMs();
    for (let i = 0; i < LISTS; i++) {
      const t0 = performance.now();
      await client.list();
      walls.push(performance.now() - t0);
    }
    const cpuPerList = (cpuMs() - cpu0) / LISTS;
    console.log(
      `  ${String(n).padStart(3)} pods: ${bytes} B answer, wall p50 ${
        percentile(walls, 50).toFixed(2)
      } ms p99 ${percentile(walls, 99).toFixed(2)} ms, CPU ${cpuPerList.toFixed(2)} ms/List ` +
        `(every 30 s: ${(cpuPerList / 30_000 * 100).toFixed(4)} % of a core)`,
    );
  }
}

async function restarts(): Promise<void> {
  await using kubelet = await startKubeletPodResourcesServer(podsOnNode(10));
  const client = createPodResourcesClient({ socketPath: kubelet.socketPath, timeoutMs: 5_000 });
  let survived = 0;
  const rounds = 20;
  for (let round = 0; round < rounds; round++) {
    await kubelet.hang();
    const inFlight = client.list().then(() => "answered", () => "failed");
    await new Promise((resolve) => setTimeout(resolve, 20));
    await kubelet.restart({ graceful: round % 2 === 0 });
    await kubelet.hang(false);
    await inFlight;
    if ((await client.list()).length === 10) survived++;
  }
  console.log(
    `Kubelet restarts with a List in flight (GOAWAY / reset alternating): ${survived}/${rounds} ` +
      "survived, process alive",
  );
}

async function rss(): Promise<void> {
  await using kubelet = await startKubeletPodResourcesServer(podsOnNode(110));
  const run = async (mode: string) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--config", CONFIG, SELF, "--rss-child", mode, kubelet.socketPath],
      stdin: "null",
      stderr: "inherit",
    }).output();
    return JSON.parse(new TextDecoder().decode(out.stdout)) as { rss: number; hwm: number };
  };
  const idle = await run("idle");
  const used = await run("client");
  console.log(
    `RSS of a Deno process: idle ${idle.rss.toFixed(1)} MiB (HWM ${idle.hwm.toFixed(1)}), ` +
      `after ${LISTS} Lists of 110 pods (node:http2 + codec + garbage) ${
        used.rss.toFixed(1)
      } MiB ` +
      `(HWM ${used.hwm.toFixed(1)}): +${(used.hwm - idle.hwm).toFixed(1)} MiB`,
  );
}

async function rssChild(mode: string, socketPath: string): Promise<void> {
  if (mode === "client") {
    const { createPodResourcesClient } = await import("../../src/sources/pod_resources.ts");
    const client = createPodResourcesClient({ socketPath });
    for (let i = 0; i < LISTS; i++) await client.list();
  } else {
    for (let i = 0; i < LISTS; i++) await new Promise((resolve) => setTimeout(resolve, 0));
  }
  console.log(JSON.stringify({ rss: statusMiB("VmRSS"), hwm: statusMiB("VmHWM") }));
}

if (import.meta.main) {
  if (Deno.args[0] === "--rss-child") {
    await rssChild(Deno.args[1], Deno.args[2]);
  } else {
    await listCost();
    await restarts();
    await rss();
  }
}
