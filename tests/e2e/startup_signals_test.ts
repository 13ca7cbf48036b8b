/**
 * End to end, signals during start-up (issue 9, item 3): the journal holds a GPU a crashed
 * predecessor capped. While the Kubernetes source waits for its first LIST (made to hang here)
 * SIGHUP is queued (the agent keeps starting) and SIGTERM restores the journal's GPU and exits 0;
 * so does a SIGTERM right after the process is spawned, while its modules still load.
 */
import assert from "node:assert/strict";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import {
  createFakeNvmlDir,
  makeGpu,
  readFakeState,
  updateFakeState,
} from "../helpers/fake_state.ts";
import { REPO_ROOT, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { exitWithin, fakeLimits, setupFileAgent } from "../helpers/file_agent.ts";
import { catchesSignal } from "../../src/permissions/forward_signals.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";

const GPU0 = "GPU-00000000-0000-0000-0000-000000000000";

Deno.test("start-up, first LIST hanging: SIGHUP is queued, SIGTERM restores the journal's GPU and exits 0", async () => {
  const lib = await buildFakeNvml();
  // GPU 0 was capped to 250 W by a predecessor that was killed; its journal says 700 W before.
  const fake = createFakeNvmlDir({
    driverVersion: "580.159.04",
    gpus: [makeGpu(0, { limitMw: 250000 }), makeGpu(1)],
  });
  const stateDir = `${fake.dir}/state`;
  await Deno.mkdir(stateDir);
  await Deno.writeTextFile(`${stateDir}/journal.json`, capturedJournal());
  const api = await startFakeApiServer({ defaultNodeName: "gpu-node-1" });
  api.setFaults({ list: "hang" });
  const kubeconfig = await api.writeKubeconfig(fake.dir);
  const limits = () => readFakeState(fake.statePath).gpus.map((g) => g.limitMw);
  const flags: Record<string, string> = {
    "--source": "kubernetes",
    "--kubeconfig": kubeconfig,
    "--node-name": "gpu-node-1",
    "--safe-default-watts": "500",
    "--proc-root": fake.dir,
    "--nvml-library": lib,
    "--state-dir": stateDir,
    "--metrics-address": "off",
  };
  const agent = spawnAgent(["run", ...Object.entries(flags).flat()], { env: fake.env });
  let exited = false;
  agent.status().then(() => exited = true);
  try {
    // Start-up is under way: the source's first LIST is hanging.
    await waitFor(() => api.counters.lists >= 1, "first LIST");

    agent.kill("SIGHUP"); // e.g. `systemctl reload` right after start
    await agent.waitForOutput(/SIGHUP during start-up/);
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(exited, false, `SIGHUP during start-up ended the agent:\n${agent.output()}`);
    assert.deepEqual(limits(), [250000, 700000], "nothing changed while starting");

    agent.kill("SIGTERM");
    const status = await agent.status();
    assert.equal(status.code, 0, agent.output());
    assert.deepEqual(limits(), [700000, 700000], "the predecessor's cap was restored");
    const journal = JSON.parse(await Deno.readTextFile(`${stateDir}/journal.json`));
    assert.deepEqual(journal.gpus, {}, "the restored GPU left the journal");
    assert.match(agent.output(), /SIGTERM during start-up/);
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
    await api.close();
    fake.cleanup();
  }
});

/**
 * Milliseconds from spawn until a Deno program whose first statement adds a SIGTERM listener and
 * which then loads the CLI (the shape of a fixed `main.ts`, written here so that the measure does
 * not depend on main.ts) catches SIGTERM: the runtime's own start and module-graph preparation,
 * before any code of the agent runs — the only window no program can cover. Measured, not
 * assumed, so the test follows the machine's load.
 */
async function runtimeStartMs(): Promise<number> {
  const dir = await Deno.makeTempDir();
  const probe = `${dir}/probe.ts`;
  await Deno.writeTextFile(
    probe,
    `Deno.addSignalListener("SIGTERM", () => Deno.exit(0));\n` +
      `await import(${JSON.stringify(`${REPO_ROOT}/src/cli/cli.ts`)});\n` +
      "setTimeout(() => {}, 10_000);\n",
  );
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--config", `${REPO_ROOT}/deno.json`, probe],
      cwd: REPO_ROOT,
      stdout: "null",
      stderr: "null",
    }).spawn();
    const t0 = performance.now();
    await waitFor(() => catchesSignal(child.pid, "SIGTERM"), "the probe's SIGTERM listener");
    times.push(performance.now() - t0);
    child.kill("SIGKILL");
    await child.status;
  }
  await Deno.remove(dir, { recursive: true });
  return Math.max(...times);
}

/**
 * Start `run` on a journal holding GPU 0 capped by a crashed predecessor, five times, and send
 * SIGTERM to the process just spawned (no log line waited for) at increasing delays past the
 * runtime's own start: while the CLI's modules load and `run` starts. Every time the agent exits
 * 0 and GPU 0 is back at its baseline. Without the listeners `main.ts` installs first thing (and,
 * through the launcher, without forwarders installed before the child is spawned), SIGTERM in that
 * window kills it with 143 and GPU 0 stays at 250 W.
 */
async function sigtermRightAfterSpawn(unscoped: boolean): Promise<void> {
  const s = await setupFileAgent("version: 1\ngpus:\n  - index: 1\n    watts: 300\n", [
    250000,
    600000,
  ]);
  const journal = `${s.stateDir}/journal.json`;
  await Deno.mkdir(s.stateDir);
  try {
    const startMs = await runtimeStartMs();
    for (let i = 0; i < 5; i++) {
      await Deno.writeTextFile(journal, capturedJournal());
      updateFakeState(s.statePath, (state) => {
        state.gpus[0].limitMw = 250000;
        state.gpus[1].limitMw = 600000;
      });
      const agent = spawnAgent(
        ["run", "--caps-file", s.capsPath, "--metrics-address", "off", ...s.common],
        { env: s.env, unscoped },
      );
      const delayMs = startMs + 10 + i * 25;
      await new Promise((r) => setTimeout(r, delayMs));
      agent.kill("SIGTERM");
      const code = await exitWithin(agent, 20_000);
      const what = `attempt ${i + 1}, SIGTERM ${delayMs.toFixed(0)} ms after spawn`;
      assert.equal(code, 0, `${what}: exit ${code}\n${agent.output()}`);
      assert.deepEqual(fakeLimits(s), [700000, 600000], `${what}: baselines\n${agent.output()}`);
    }
  } finally {
    s.fake.cleanup();
  }
}

/** A journal holding GPU 0, capped to 250 W by a crashed predecessor, 700 W before. */
function capturedJournal(): string {
  return JSON.stringify({
    version: 1,
    gpus: {
      [GPU0]: {
        baselineMw: 700000,
        appliedMw: 250000,
        name: "NVIDIA H100 80GB HBM3",
        updatedAt: "2026-01-01T00:00:00.000Z",
      },
    },
  });
}

Deno.test("SIGTERM right after spawn through the launcher (deno task agent run), 5 times: exit 0, the journal's GPU restored", async () => {
  await sigtermRightAfterSpawn(false);
});

Deno.test("SIGTERM right after spawn without the launcher (deno run main.ts run), 5 times: exit 0, the journal's GPU restored", async () => {
  await sigtermRightAfterSpawn(true);
});
