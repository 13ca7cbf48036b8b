/**
 * `deno task demo`: the agent on two simulated GPUs (the fake libnvidia-ml.so.1).
 * Builds the fake library, writes a fake GPU state and a caps file in a temp dir, prints `status`,
 * runs the agent (permission-scoped, via `deno task agent run`), edits the caps file while it
 * runs, stops it with SIGTERM and prints `status` again: every GPU is back at its baseline.
 * Headings are bold only on a terminal and without `NO_COLOR` (https://no-color.org).
 *
 * @module
 */
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { makeGpu, readFakeState, writeFakeState } from "../helpers/fake_state.ts";
import { REPO_ROOT, runAgent, spawnAgent, waitFor } from "../helpers/agent_process.ts";

/** Whether to print ANSI styles: stdout is a terminal and `NO_COLOR` is unset or empty. */
export function useColor(
  options: { noColor?: string; isTerminal?: boolean } = {
    noColor: Deno.env.get("NO_COLOR"),
    isTerminal: Deno.stdout.isTerminal(),
  },
): boolean {
  return options.isTerminal === true && (options.noColor ?? "") === "";
}

/** A demo heading, bold when `color`. */
export function bannerText(text: string, color: boolean): string {
  return color ? `\n\x1b[1m== ${text}\x1b[0m` : `\n== ${text}`;
}

const COLOR = useColor();

function banner(text: string) {
  console.log(bannerText(text, COLOR));
}

async function main() {
  const lib = await buildFakeNvml();
  const dir = await Deno.makeTempDir({ prefix: "gpu-power-agent-demo-" });
  const statePath = `${dir}/fake-gpus.json`;
  await writeFakeState(statePath, {
    driverVersion: "580.159.04",
    gpus: [
      makeGpu(0, { powerUsageMw: 412000 }),
      makeGpu(1, { limitMw: 650000, powerUsageMw: 388000 }),
    ],
  });
  const capsPath = `${dir}/caps.yaml`;
  await Deno.writeTextFile(
    capsPath,
    [
      "# Demo caps file: GPU 0 at 250 W, every other GPU at 80% of its default limit.",
      "version: 1",
      "default: {percent: 80}",
      "gpus:",
      "  - index: 0",
      "    watts: 250",
      "",
    ].join("\n"),
  );
  const env = { FAKE_NVML_STATE: statePath };
  const common = ["--nvml-library", lib, "--state-dir", `${dir}/state`];
  console.log(`Simulated GPUs: ${statePath}\nCaps file:      ${capsPath}`);

  banner("status before the agent");
  console.log((await runAgent(["status", ...common], { env })).stdout.trimEnd());

  banner("deno task agent run --caps-file caps.yaml");
  const agent = spawnAgent(
    ["run", "--caps-file", capsPath, "--metrics-address", "off", ...common],
    { env },
  );
  const limits = async () => (await readFakeState(statePath)).gpus.map((g) => g.limitMw).join();
  try {
    await waitFor(async () => (await limits()) === "250000,560000", "caps applied", 30_000);
    console.log(agent.output().trimEnd());
    banner("status while the agent runs");
    console.log((await runAgent(["status", ...common], { env })).stdout.trimEnd());

    banner("edit caps.yaml: GPU 0 → 300 W");
    await Deno.writeTextFile(
      capsPath,
      "version: 1\ndefault: {percent: 80}\ngpus:\n  - index: 0\n    watts: 300\n",
    );
    await waitFor(async () => (await limits()) === "300000,560000", "edit applied", 30_000);
    console.log((await runAgent(["status", ...common], { env })).stdout.trimEnd());

    banner("SIGTERM: the agent restores every GPU it changed");
    const before = agent.output().length;
    agent.kill("SIGTERM");
    const status = await agent.status();
    console.log(agent.output().slice(before).trimEnd());
    console.log(`agent exited with code ${status.code}`);
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
  }

  banner("status after the agent");
  console.log((await runAgent(["status", ...common], { env })).stdout.trimEnd());
  console.log(`\n(demo files left in ${dir}; repository ${REPO_ROOT})`);
}

if (import.meta.main) await main();
