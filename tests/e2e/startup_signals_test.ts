/**
 * End to end, signals during start-up (issue 9, item 3): the Kubernetes source waits for its
 * first LIST (made to hang here) while the journal holds a GPU a crashed predecessor capped.
 * SIGHUP then is queued (the agent keeps starting); SIGTERM restores the journal's GPU and
 * exits 0.
 */
import assert from "node:assert/strict";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { createFakeNvmlDir, makeGpu, readFakeState } from "../helpers/fake_state.ts";
import { spawnAgent, waitFor } from "../helpers/agent_process.ts";
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
  await Deno.writeTextFile(
    `${stateDir}/journal.json`,
    JSON.stringify({
      version: 1,
      gpus: {
        [GPU0]: {
          baselineMw: 700000,
          appliedMw: 250000,
          name: "NVIDIA H100 80GB HBM3",
          updatedAt: "2026-01-01T00:00:00.000Z",
        },
      },
    }),
  );
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
