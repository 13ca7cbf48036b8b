/**
 * One `/metrics` scrape of a real agent (file mode, fake NVML, two GPUs with caps applied), and
 * the metric names it exposes: what dashboards and alert rules may refer to.
 */
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { createFakeNvmlDir, makeGpu } from "./fake_state.ts";
import { spawnAgent, waitFor } from "./agent_process.ts";

/** Start the agent, wait until /readyz answers 200, scrape /metrics, stop the agent. */
export async function scrapeAgent(): Promise<string> {
  const lib = await buildFakeNvml();
  const fake = createFakeNvmlDir({
    driverVersion: "580.159.04",
    gpus: [makeGpu(0, { limitMw: 650000, powerUsageMw: 123400 }), makeGpu(1)],
  });
  const caps = `${fake.dir}/caps.yaml`;
  await Deno.writeTextFile(caps, "version: 1\ngpus:\n  - index: 0\n    watts: 300\n");
  const port = 20000 + Math.floor(Math.random() * 20000);
  const url = `http://127.0.0.1:${port}`;
  const agent = spawnAgent([
    "run",
    "--caps-file",
    caps,
    "--metrics-address",
    `127.0.0.1:${port}`,
    "--nvml-library",
    lib,
    "--state-dir",
    `${fake.dir}/state`,
  ], { env: fake.env });
  try {
    await waitFor(async () => {
      try {
        const response = await fetch(`${url}/readyz`);
        await response.body?.cancel();
        return response.status === 200;
      } catch {
        return false; // not listening yet
      }
    }, `agent ready on ${url}; output:\n${agent.output()}`);
    const response = await fetch(`${url}/metrics`);
    if (response.status !== 200) throw new Error(`/metrics answered ${response.status}`);
    return await response.text();
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
    fake.cleanup();
  }
}

/**
 * The metric names a scrape exposes: every `# TYPE` family (also those without samples yet,
 * e.g. an error counter that never counted), plus `_bucket`, `_sum`, `_count` of histograms and
 * summaries.
 */
export function exposedMetricNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(name);
    if (type === "histogram" || type === "summary") {
      for (const suffix of ["_bucket", "_sum", "_count"]) names.add(name + suffix);
    }
  }
  return names;
}
