/**
 * A file-mode agent's surroundings for e2e tests: fake NVML with two GPUs, a caps file and a
 * state directory in one temp dir, and the flags every command needs.
 */
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { createFakeNvmlDir, type FakeNvmlDir, makeGpu, readFakeState } from "./fake_state.ts";
import type { AgentProcess } from "./agent_process.ts";

/** What {@linkcode setupFileAgent} prepared. */
export interface FileAgentSetup {
  fake: FakeNvmlDir;
  dir: string;
  lib: string;
  statePath: string;
  capsPath: string;
  stateDir: string;
  env: Record<string, string>;
  /** `--nvml-library LIB --state-dir DIR`. */
  common: string[];
}

/** Fake GPUs at `limits` (mW) and a caps file holding `caps` (absent when null). */
export async function setupFileAgent(
  caps: string | null,
  limits: number[] = [700000, 600000],
): Promise<FileAgentSetup> {
  const lib = await buildFakeNvml();
  const fake = createFakeNvmlDir({
    driverVersion: "580.159.04",
    gpus: limits.map((limitMw, i) => makeGpu(i, { limitMw })),
  });
  const capsPath = `${fake.dir}/caps.yaml`;
  if (caps !== null) await Deno.writeTextFile(capsPath, caps);
  const stateDir = `${fake.dir}/state`;
  return {
    fake,
    dir: fake.dir,
    lib,
    statePath: fake.statePath,
    capsPath,
    stateDir,
    env: fake.env,
    common: ["--nvml-library", lib, "--state-dir", stateDir],
  };
}

/** Current power limits of the fake GPUs (mW). */
export function fakeLimits(s: FileAgentSetup): number[] {
  return readFakeState(s.statePath).gpus.map((g) => g.limitMw);
}

/** Exit code of `agent` if it exits within `ms`; otherwise it is killed and null returned. */
export async function exitWithin(agent: AgentProcess, ms: number): Promise<number | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), ms));
  const code = await Promise.race([agent.status().then((s) => s.code), late]);
  clearTimeout(timer);
  if (code === null) {
    agent.killTree("SIGKILL");
    await agent.status();
  }
  return code;
}
