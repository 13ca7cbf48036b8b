/**
 * End to end, observability: scrape a running agent (file mode, fake NVML) and check values —
 * the metrics and `status --json` agree, a clamp moves the counter and the applied gauge, and
 * `/readyz` flips to 503 while the caps file is missing for longer than --stale-after.
 */
import assert from "node:assert/strict";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { makeGpu, writeFakeState } from "../helpers/fake_state.ts";
import { runAgent, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { sampleValue } from "../metrics/exposition.ts";

Deno.test("metrics agree with status --json; clamp counted; /readyz follows the source", async () => {
  const lib = await buildFakeNvml();
  const dir = await Deno.makeTempDir({ prefix: "gpa-e2e-metrics-" });
  const env = { FAKE_NVML_STATE: `${dir}/nvml.json` };
  writeFakeState(env.FAKE_NVML_STATE, {
    driverVersion: "580.159.04",
    gpus: [makeGpu(0, { limitMw: 650000, powerUsageMw: 123400 }), makeGpu(1, { limitMw: 600000 })],
  });
  const caps = `${dir}/caps.yaml`;
  // GPU 0 (at 650 W) asks for 900 W: clamped down to its 700 W maximum; GPU 1 gets 250 W.
  await Deno.writeTextFile(
    caps,
    "version: 1\ngpus:\n  - index: 0\n    watts: 900\n  - index: 1\n    watts: 250\n",
  );
  const common = ["--nvml-library", lib, "--state-dir", `${dir}/state`];
  const port = 20000 + Math.floor(Math.random() * 20000);
  const agent = spawnAgent(
    [
      "run",
      "--caps-file",
      caps,
      "--metrics-address",
      `127.0.0.1:${port}`,
      "--stale-after",
      "1",
      ...common,
    ],
    { env },
  );
  const get = async (path: string) => {
    const r = await fetch(`http://127.0.0.1:${port}${path}`);
    return { status: r.status, body: await r.text() };
  };
  try {
    await waitFor(async () => {
      try {
        return (await get("/readyz")).status === 200;
      } catch {
        return false; // not listening yet
      }
    }, "ready");
    const text = (await get("/metrics")).body;
    const value = (name: string, labels: Record<string, string> = {}) => {
      const v = sampleValue(text, `gpu_power_agent_${name}`, labels);
      assert.notEqual(v, undefined, `metric ${name} ${JSON.stringify(labels)} present`);
      return v;
    };
    assert.equal(value("clamps_total", { direction: "down" }), 1);
    assert.equal(value("cap_changes_total", { kind: "apply" }), 2);
    assert.equal(
      value("gpu_power_limit_watts", { gpu: "0" }),
      700,
      "applied gauge moved to the max",
    );
    assert.equal(value("gpu_desired_power_limit_watts", { gpu: "0" }), 900);

    const status = JSON.parse((await runAgent(["status", "--json", ...common], { env })).stdout);
    for (const g of status.gpus) {
      const l = { gpu: String(g.index), uuid: g.uuid };
      assert.equal(value("gpu_power_limit_watts", l), g.powerLimitWatts);
      assert.equal(value("gpu_default_power_limit_watts", l), g.defaultPowerLimitWatts);
      assert.equal(value("gpu_min_power_limit_watts", l), g.minPowerLimitWatts);
      assert.equal(value("gpu_power_draw_watts", l), g.powerDrawWatts);
      assert.equal(value("gpu_managed", l), g.managed ? 1 : 0);
    }
    assert.equal(value("gpu_power_limit_watts", { gpu: "1" }), 250);
    assert.equal(value("gpu_power_draw_watts", { gpu: "0" }), 123.4);

    // The caps file disappears: last good caps kept, readiness fails after --stale-after.
    await Deno.remove(caps);
    await waitFor(async () => (await get("/readyz")).status === 503, "readyz 503");
    assert.match((await get("/readyz")).body, /caps file missing/);
    await Deno.writeTextFile(caps, "version: 1\ndefault: {watts: 300}\n");
    await waitFor(async () => (await get("/readyz")).status === 200, "readyz 200 again");
    assert.equal((await get("/healthz")).status, 200);
    assert.equal((await get("/nope")).status, 404);

    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
  }
});
