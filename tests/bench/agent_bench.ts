/**
 * Benchmark of the running agent (file mode), spawned as a user would (`deno task agent run`):
 * - reaction latency: caps-file write → limit set on every GPU (fake NVML log timestamps), p50/p99;
 * - quiet node: NVML sets and CPU time over an idle window;
 * - RSS of the agent process (VmRSS / VmHWM), metrics server on.
 * Prints figures; asserts nothing about time. Usage: deno task bench
 */
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { makeFakeState, writeFakeState } from "../helpers/fake_state.ts";
import { descendants, spawnAgent, waitFor } from "../helpers/agent_process.ts";

const GPUS = 8;
const EDITS = Number(Deno.env.get("BENCH_EDITS") ?? 60);

function setLines(logPath: string): string[] {
  try {
    return Deno.readTextFileSync(logPath).split("\n").filter((l) => l.includes(" set "));
  } catch {
    return [];
  }
}

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

if (import.meta.main) {
  const lib = await buildFakeNvml();
  const dir = Deno.makeTempDirSync({ prefix: "gpa-agent-bench-" });
  const statePath = `${dir}/state.json`;
  const logPath = `${dir}/nvml.log`;
  writeFakeState(statePath, makeFakeState(GPUS));
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
  ], { env: { FAKE_NVML_STATE: statePath, FAKE_NVML_LOG: logPath } });
  try {
    await waitFor(() => setLines(logPath).length >= GPUS, "initial caps", 30_000);
    const pid = descendants(agent.child.pid).at(-1)!; // the agent itself (deepest process)
    const latencies: number[] = [];
    for (let i = 1; i <= EDITS; i++) {
      const before = setLines(logPath).length;
      const watts = 300 + (i % 2 === 0 ? 0 : 50) + (i % 7);
      const t0 = Date.now();
      Deno.writeTextFileSync(caps, `version: 1\ndefault: {watts: ${watts}}\n`);
      await waitFor(() => setLines(logPath).length >= before + GPUS, `edit ${i}`, 10_000);
      const last = setLines(logPath).slice(before).map((l) => Number(l.split(" ")[0]));
      latencies.push(Math.max(...last) - t0);
      await new Promise((r) => setTimeout(r, 30));
    }
    latencies.sort((a, b) => a - b);
    // Quiet node: no writes, little CPU.
    const setsBefore = setLines(logPath).length;
    const cpu0 = cpuSeconds(pid);
    const idleMs = 5_000;
    await new Promise((r) => setTimeout(r, idleMs));
    const idleSets = setLines(logPath).length - setsBefore;
    const idleCpu = cpuSeconds(pid) - cpu0;
    const scrape = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const rss = procStatus(pid, "VmRSS");
    const hwm = procStatus(pid, "VmHWM");
    const fmt = (n: number) => n.toFixed(1);
    console.log(JSON.stringify(
      {
        gpus: GPUS,
        edits: EDITS,
        latencyMs: {
          p50: latencies[Math.floor(latencies.length / 2)],
          p99: percentile(latencies, 99),
          max: latencies.at(-1),
        },
        idle: { seconds: idleMs / 1000, nvmlSets: idleSets, cpuSeconds: idleCpu },
        rssMiB: Number(fmt(rss)),
        peakRssMiB: Number(fmt(hwm)),
        metricsBytes: scrape.length,
      },
      null,
      2,
    ));
  } finally {
    agent.kill("SIGTERM");
    await agent.status();
  }
}
