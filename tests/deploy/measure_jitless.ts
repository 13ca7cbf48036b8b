/**
 * Measures what `--v8-flags=--jitless` (needed for systemd's MemoryDenyWriteExecute=yes) costs
 * the agent: RSS after start-up and after many reconcile passes, CPU time per reconcile pass,
 * and the pass duration from the agent's own histogram. Not a test (timings are never
 * asserted); run by hand:
 *
 *   deno run -A tests/deploy/measure_jitless.ts [--gpus 8] [--seconds 20] [--interval 0.1]
 *
 * It runs the agent in file mode under the baked (compile) permission set, against the fake
 * NVML, once as baked (jitless: `--jitless`, and `--lite-mode` of src/permissions/runtime.ts
 * implies it) and once with V8's JIT (without those V8 flags), and prints one JSON line per
 * variant.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { makeGpu, writeFakeState } from "../helpers/fake_state.ts";
import { bakedFlags, JITLESS_V8_FLAG } from "../../src/permissions/compile.ts";
import { MAIN_MODULE } from "../../src/permissions/launch.ts";
import { AGENT_RUNTIME_FLAGS } from "../../src/permissions/runtime.ts";

const TICKS_PER_SECOND = 100; // sysconf(_SC_CLK_TCK) on Linux

function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND; // utime + stime
}

function rssMiB(pid: number): { rss: number; hwm: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kib = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN);
  return { rss: kib("VmRSS") / 1024, hwm: kib("VmHWM") / 1024 };
}

async function scrape(port: number): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  return await response.text();
}

function metric(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(name + " ") || l.startsWith(name + "{"));
  return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : NaN;
}

async function waitReady(port: number): Promise<void> {
  for (let i = 0; i < 300; i++) {
    try {
      const response = await fetch(`http://127.0.0.1:${port}/readyz`);
      await response.body?.cancel();
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("agent did not become ready");
}

async function measure(
  jitless: boolean,
  options: { lib: string; dir: string; gpus: number; seconds: number; interval: number },
) {
  const port = 19700 + (jitless ? 1 : 0);
  const stateDir = `${options.dir}/state-${jitless}`;
  await Deno.mkdir(stateDir, { recursive: true });
  const flags = bakedFlags({
    stateDir,
    capsFile: `${options.dir}/caps.yaml`,
    metricsAddress: `127.0.0.1:${port}`,
    nvmlLibraryPath: options.lib,
    jitless,
  }).filter((flag) => jitless || !AGENT_RUNTIME_FLAGS.includes(flag)); // --lite-mode is jitless
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      ...flags,
      MAIN_MODULE,
      "run",
      "--caps-file",
      `${options.dir}/caps.yaml`,
      "--state-dir",
      stateDir,
      "--nvml-library",
      options.lib,
      "--metrics-address",
      `127.0.0.1:${port}`,
      "--interval",
      String(options.interval),
      "--log-level",
      "warning",
    ],
    env: { FAKE_NVML_STATE: `${options.dir}/state.json`, NO_COLOR: "1" },
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  try {
    await waitReady(port);
    const before = await scrape(port);
    const cpu0 = cpuSeconds(child.pid);
    const mem0 = rssMiB(child.pid);
    const passes0 = metric(before, "gpu_power_agent_reconcile_duration_seconds_count");
    const sum0 = metric(before, "gpu_power_agent_reconcile_duration_seconds_sum");
    await new Promise((r) => setTimeout(r, options.seconds * 1000));
    const after = await scrape(port);
    const cpu1 = cpuSeconds(child.pid);
    const mem1 = rssMiB(child.pid);
    const passes = metric(after, "gpu_power_agent_reconcile_duration_seconds_count") - passes0;
    const sum = metric(after, "gpu_power_agent_reconcile_duration_seconds_sum") - sum0;
    return {
      jitless,
      gpus: options.gpus,
      passes,
      rssAfterStartMiB: +mem0.rss.toFixed(1),
      rssAfterPassesMiB: +mem1.rss.toFixed(1),
      peakRssMiB: +mem1.hwm.toFixed(1),
      cpuMsPerPass: +(((cpu1 - cpu0) * 1000) / passes).toFixed(3),
      passDurationMs: +((sum * 1000) / passes).toFixed(3),
    };
  } finally {
    child.kill("SIGTERM");
    await child.status;
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      gpus: { type: "string", default: "8" },
      seconds: { type: "string", default: "20" },
      interval: { type: "string", default: "0.1" },
    },
  });
  const lib = await buildFakeNvml();
  const dir = await Deno.makeTempDir({ prefix: "gpa-jitless-" });
  const gpus = Number(values.gpus);
  await writeFakeState(`${dir}/state.json`, {
    driverVersion: "580.159.04",
    gpus: Array.from({ length: gpus }, (_, i) => makeGpu(i)),
  });
  await Deno.writeTextFile(`${dir}/caps.yaml`, "version: 1\ndefault: {watts: 400}\n");
  const options = {
    lib,
    dir,
    gpus,
    seconds: Number(values.seconds),
    interval: Number(values.interval),
  };
  try {
    for (const jitless of [false, true]) {
      console.log(JSON.stringify(await measure(jitless, options)));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  console.error(`(flag measured: ${JITLESS_V8_FLAG})`);
}
