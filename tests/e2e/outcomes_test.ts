/**
 * End to end, what the agent says comes from what it did: Events, metrics, `status --json`,
 * `/readyz` and the journal agree with the outcome of each set — a set failing NO_PERMISSION, a
 * GPU without software power limits (NOT_SUPPORTED), and `--dry-run`.
 */
import assert from "node:assert/strict";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import {
  createFakeNvmlDir,
  type FakeNvmlDir,
  makeGpu,
  updateFakeState,
} from "../helpers/fake_state.ts";
import { runAgent, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { events, http, limits, POD_UIDS, setupK8sAgent, stop } from "../helpers/k8s_agent.ts";
import { sampleValue } from "../metrics/exposition.ts";

const ANNOTATION = "dynamo.nvidia.com/gpu-power-limit";
const NO_PERMISSION = 4;
const NOT_SUPPORTED = 3;

/** Two GPUs, pod a (250 W) on GPU 0 and pod b (300 W) on GPU 1, through the fake API server. */
async function k8sSetup(fail?: Record<string, number>) {
  const s = await setupK8sAgent(fail);
  s.api.addPod({
    name: "a",
    namespace: "ml",
    uid: POD_UIDS[0],
    annotations: { [ANNOTATION]: "250" },
  });
  s.api.addPod({
    name: "b",
    namespace: "ml",
    uid: POD_UIDS[1],
    annotations: { [ANNOTATION]: "300" },
  });
  const args = (extra: string[] = []) =>
    s.args(["--interval", "1", "--enforce-grace", "1", ...extra]);
  return { ...s, args };
}

function journalUuids(fake: FakeNvmlDir): string[] {
  try {
    return Object.keys(JSON.parse(Deno.readTextFileSync(`${fake.dir}/state/journal.json`)).gpus);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
}

Deno.test("set NO_PERMISSION on one GPU: CapNotApplied, not managed, /readyz 503 after the grace, recovers", async () => {
  const s = await k8sSetup({ nvmlDeviceSetPowerManagementLimit: NO_PERMISSION });
  const get = http(s.port);
  const agent = spawnAgent(s.args(), { env: s.fake.env });
  const gpu0 = makeGpu(0).uuid;
  try {
    await waitFor(() => limits(s.fake)[1] === 300_000, "GPU 1 capped");
    await waitFor(
      () => events(s.api, "a").some((e) => e.reason === "CapNotApplied"),
      "CapNotApplied on pod a",
    );
    const notApplied = events(s.api, "a").find((e) => e.reason === "CapNotApplied")!;
    assert.equal(notApplied.type, "Warning");
    assert.match(notApplied.message, /250 W not applied to GPU 0 .*NVML NO_PERMISSION/);
    assert.equal(events(s.api, "a").filter((e) => e.reason === "CapApplied").length, 0);
    await waitFor(
      () => events(s.api, "b").some((e) => e.reason === "CapApplied"),
      "CapApplied on pod b",
    );
    assert.equal(limits(s.fake)[0], 700_000);
    assert.deepEqual(journalUuids(s.fake), [makeGpu(1).uuid], "journal without GPU 0");

    await waitFor(async () => (await get("/readyz")).status === 503, "readyz 503 after the grace");
    const readyz = (await get("/readyz")).body;
    assert.match(readyz, new RegExp(`GPU 0 \\(${gpu0}\\).*NO_PERMISSION`));
    assert.doesNotMatch(readyz, /GPU 1/);

    // Metrics, status --json and /readyz agree on every GPU.
    const metrics = (await get("/metrics")).body;
    const status = JSON.parse(
      (await runAgent(["status", "--json", ...s.common], { env: s.fake.env })).stdout,
    );
    const m = (name: string, gpu: number) =>
      sampleValue(metrics, `gpu_power_agent_${name}`, { gpu: String(gpu) });
    assert.deepEqual([m("gpu_managed", 0), m("gpu_enforced", 0)], [0, 0]);
    assert.deepEqual([m("gpu_managed", 1), m("gpu_enforced", 1)], [1, 1]);
    for (const g of status.gpus) {
      assert.equal(m("gpu_managed", g.index), g.managed ? 1 : 0);
      assert.equal(m("gpu_power_limit_watts", g.index), g.powerLimitWatts);
      assert.equal(m("gpu_power_limit_supported", g.index), g.powerLimitSupported ? 1 : 0);
    }
    assert.equal(status.gpus[1].enforced, true);
    assert.equal(
      sampleValue(metrics, "gpu_power_agent_last_successful_reconcile_timestamp_seconds", {}),
      undefined,
      "no pass was a success: the timestamp is absent, as readiness says",
    );

    // The driver allows the set again: the cap lands (after the backoff), everything recovers.
    updateFakeState(s.fake.statePath, (st) => delete st.gpus[0].fail);
    await waitFor(() => limits(s.fake)[0] === 250_000, "GPU 0 capped once allowed", 30_000);
    await waitFor(async () => (await get("/readyz")).status === 200, "readyz 200 again");
    await waitFor(
      () => events(s.api, "a").some((e) => e.reason === "CapApplied"),
      "CapApplied on pod a after the outcome",
    );
    const after = (await get("/metrics")).body;
    assert.equal(sampleValue(after, "gpu_power_agent_gpu_managed", { gpu: "0" }), 1);
    assert.equal(sampleValue(after, "gpu_power_agent_gpu_enforced", { gpu: "0" }), 1);
    assert.deepEqual(journalUuids(s.fake).sort(), [gpu0, makeGpu(1).uuid].sort());

    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
  } finally {
    await stop(agent);
    await s.api.close();
    s.fake.cleanup();
  }
});

Deno.test("--dry-run posts no Event and writes nothing; its printed plan is what a real run does", async () => {
  const s = await k8sSetup();
  updateFakeState(s.fake.statePath, (st) => {
    st.gpus[1].limitMw = 300_000; // already in place
    st.gpus.push(makeGpu(2)); // no pod: unmanaged
  });
  const dry = spawnAgent(s.args(["--dry-run"]), { env: s.fake.env });
  let plan: string[];
  try {
    await dry.waitForOutput(/dry run: plan at [^\n]*\n(?: {2}GPU[^\n]*\n){3}/);
    plan = dry.output().split("\n").filter((l) => l.startsWith("  GPU")).slice(0, 3);
    // Several passes later: still nothing written, nothing posted.
    await waitFor(async () => (await http(s.port)("/readyz")).status === 200, "dry run ready");
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(s.api.counters.events, 0, "no Event in dry run");
    assert.deepEqual(s.fake.readLog(), [], "no set in dry run");
    assert.throws(() => Deno.statSync(`${s.fake.dir}/state`), Deno.errors.NotFound);
    dry.kill("SIGTERM");
    assert.equal((await dry.status()).code, 0, dry.output());
  } finally {
    await stop(dry);
  }
  assert.match(plan[0], /GPU 0 .*: would set 700 W → 250 W \(pod ml\/a\)/);
  assert.match(plan[1], /GPU 1 .*: keep 300 W \(pod ml\/b; already in place\)/);
  assert.match(plan[2], /GPU 2 .*: unmanaged at 700 W/);

  // The same plan, for real: exactly the planned sets, nothing else.
  const real = spawnAgent(s.args(), { env: s.fake.env });
  try {
    await waitFor(() => limits(s.fake)[0] === 250_000, "real run applied the plan");
    await new Promise((r) => setTimeout(r, 1500));
    const planned = plan.map((line) => {
      const m = /would set [\d.]+ W → ([\d.]+) W/.exec(line) ?? /keep ([\d.]+) W/.exec(line) ??
        /unmanaged at ([\d.]+) W/.exec(line);
      return Number(m![1]) * 1000;
    });
    assert.deepEqual(limits(s.fake), planned);
    assert.equal(s.fake.readLog().length, 1, "one set: the one the plan said");
    await waitFor(() => events(s.api, "a").length > 0, "events after the real sets");
    real.kill("SIGTERM");
    assert.equal((await real.status()).code, 0, real.output());
  } finally {
    await stop(real);
    await s.api.close();
    s.fake.cleanup();
  }
});

Deno.test("a NOT_SUPPORTED GPU beside three normal ones: three capped, ready, unsupported, logged once", async () => {
  const lib = await buildFakeNvml();
  const fake = createFakeNvmlDir({
    driverVersion: "580.159.04",
    gpus: [0, 1, 2, 3].map((i) =>
      makeGpu(i, i === 2 ? { fail: { nvmlDeviceGetPowerManagementLimit: NOT_SUPPORTED } } : {})
    ),
  });
  const caps = `${fake.dir}/caps.yaml`;
  await Deno.writeTextFile(caps, "version: 1\ndefault: {watts: 300}\n");
  const common = ["--nvml-library", lib, "--state-dir", `${fake.dir}/state`];
  const port = 20000 + Math.floor(Math.random() * 20000);
  const get = http(port);
  const agent = spawnAgent([
    "run",
    "--caps-file",
    caps,
    "--interval",
    "1",
    "--enforce-grace",
    "1",
    "--metrics-address",
    `127.0.0.1:${port}`,
    ...common,
  ], { env: fake.env });
  try {
    await waitFor(async () => (await get("/readyz")).status === 200, "ready");
    assert.deepEqual(limits(fake), [300_000, 300_000, 700_000, 300_000]);
    // Several passes at --interval 1, then: still ready, still one log line about it.
    await new Promise((r) => setTimeout(r, 4000));
    const readyz = await get("/readyz");
    assert.equal(readyz.status, 200, readyz.body);
    const metrics = (await get("/metrics")).body;
    assert.ok(
      (sampleValue(metrics, "gpu_power_agent_reconcile_passes_total", { result: "success" }) ??
        0) >= 4,
      "passes with an unsupported GPU are successes",
    );
    assert.equal(
      sampleValue(metrics, "gpu_power_agent_gpu_power_limit_supported", { gpu: "2" }),
      0,
    );
    assert.equal(
      sampleValue(metrics, "gpu_power_agent_gpu_power_limit_supported", { gpu: "0" }),
      1,
    );
    const status = JSON.parse(
      (await runAgent(["status", "--json", ...common], { env: fake.env })).stdout,
    );
    assert.equal(status.gpus[2].unsupported, true);
    assert.equal(status.gpus[2].powerLimitSupported, false);
    assert.equal(status.gpus[2].managed, false);
    for (const g of status.gpus) {
      assert.equal(
        sampleValue(metrics, "gpu_power_agent_gpu_managed", { gpu: String(g.index) }),
        g.managed ? 1 : 0,
      );
    }
    assert.equal(agent.output().match(/NOT_SUPPORTED/g)?.length, 1, agent.output());
    assert.doesNotMatch(journalUuids(fake).join(), new RegExp(makeGpu(2).uuid));
    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
  } finally {
    await stop(agent);
    fake.cleanup();
  }
});
