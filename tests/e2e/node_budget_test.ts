/**
 * End to end, the node power budget and the node policy (issue 12) through the real FFI path:
 * the worked example (8 × 700 W, min 200 W, budget 4000 W → 500 W each), a budget below Σ min,
 * the budget raised again, the transient order (Σ limits never above the budget, replayed from
 * the fake NVML's set log), and in Kubernetes mode the node annotation changing while running,
 * caps file + annotation (the smaller wins) and a node ceiling below a pod's request.
 */
import assert from "node:assert/strict";
import { type FakeNvmlDir, makeGpu, readFakeState } from "../helpers/fake_state.ts";
import { runAgent, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import {
  events,
  http,
  K8S_NODE,
  limits,
  POD_UIDS,
  setupK8sAgent,
  stop,
} from "../helpers/k8s_agent.ts";
import { sampleValue } from "../metrics/exposition.ts";
import { setupFileAgent } from "../helpers/file_agent.ts";

const POD_ANNOTATION = "dynamo.nvidia.com/gpu-power-limit";
const BUDGET_ANNOTATION = "gpu-power-agent.io/power-budget-watts";
const NODE = K8S_NODE;

function metric(text: string, name: string): number | undefined {
  return sampleValue(text, `gpu_power_agent_${name}`, {});
}

/**
 * Replay the set log (`<ms> set <uuid> <mW>`) over the initial limits: the highest Σ of the
 * node's limits at any moment.
 */
function peakTotal(fake: FakeNvmlDir, initial: Map<string, number>): number {
  const current = new Map(initial);
  const total = () => [...current.values()].reduce((a, b) => a + b, 0);
  let peak = total();
  for (const line of fake.readLog()) {
    const [, verb, uuid, mw] = line.split(" ");
    assert.equal(verb, "set", line);
    assert.ok(current.has(uuid), `set of an unknown GPU: ${line}`);
    current.set(uuid, Number(mw));
    peak = Math.max(peak, total());
  }
  return peak;
}

/** Eight 700 W GPUs (min 200 W) starting at `startMw`, a caps file, metrics on a free port. */
async function fileSetup(caps: string, startMw: number) {
  const s = await setupFileAgent(caps, Array(8).fill(startMw));
  const port = 20000 + Math.floor(Math.random() * 20000);
  const args = ["run", "--caps-file", s.capsPath, "--interval", "1", "--metrics-address"];
  return { ...s, port, args: [...args, `127.0.0.1:${port}`, ...s.common] };
}

Deno.test("worked example: 8 × 700 W, min 200 W, budget 4000 W → 500 W each; in sync ⇒ no write; lowers before raises", async () => {
  // The GPUs start at 500 W: the allocation is already in place.
  const s = await fileSetup("version: 1\ndefault: {watts: 700}\nbudget: {watts: 4000}\n", 500_000);
  const initial = new Map(readFakeState(s.fake.statePath).gpus.map((g) => [g.uuid, g.limitMw]));
  const get = http(s.port);
  const agent = spawnAgent(s.args, { env: s.fake.env });
  try {
    await waitFor(async () => {
      const m = (await get("/metrics")).body;
      return metric(m, "node_power_allocated_watts") === 4000 &&
        (sampleValue(m, "gpu_power_agent_reconcile_passes_total", { result: "success" }) ?? 0) >= 3;
    }, "three passes under the budget");
    const m = (await get("/metrics")).body;
    assert.equal(metric(m, "node_power_budget_watts"), 4000);
    assert.equal(metric(m, "node_power_over_budget"), 0);
    assert.deepEqual(limits(s.fake), Array(8).fill(500_000));
    assert.deepEqual(s.fake.readLog(), [], "in sync under a budget: zero NVML writes");
    assert.match(
      agent.output(),
      /node power budget 4000 W: 4000 W allocated, 8 GPU\(s\) reduced by it \(source: caps-file\)/,
    );

    // GPUs 0-3 down to 300 W, the others may go back to 700 W: 4 × 300 + 4 × 700 = 4000 W.
    // Lowering first keeps Σ ≤ 4000 W at every moment.
    await Deno.writeTextFile(
      s.capsPath,
      "version: 1\ndefault: {watts: 700}\nbudget: {watts: 4000}\ngpus:\n" +
        [0, 1, 2, 3].map((i) => `  - {index: ${i}, watts: 300}\n`).join(""),
    );
    await waitFor(
      () =>
        limits(s.fake).join() ===
          [300, 300, 300, 300, 700, 700, 700, 700].map((w) => w * 1000).join(),
      "reallocated",
    );
    assert.equal(s.fake.readLog().length, 8);
    assert.ok(peakTotal(s.fake, initial) <= 4_000_000, "Σ limits never above the budget");
    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
  } finally {
    await stop(agent);
    s.fake.cleanup();
  }
});

Deno.test("budget below Σ min: every GPU at its min, over budget, ready; raised → caps go back up", async () => {
  const s = await fileSetup("version: 1\ndefault: {watts: 700}\nbudget: {watts: 1000}\n", 700_000);
  const get = http(s.port);
  const agent = spawnAgent(s.args, { env: s.fake.env });
  try {
    await waitFor(() => limits(s.fake).every((mw) => mw === 200_000), "every GPU at its min");
    await waitFor(async () => (await get("/readyz")).status === 200, "ready while over budget");
    await waitFor(
      async () => metric((await get("/metrics")).body, "node_power_over_budget") === 1,
      "over budget reported",
    );
    const m = (await get("/metrics")).body;
    assert.equal(metric(m, "node_power_budget_watts"), 1000);
    assert.equal(metric(m, "node_power_allocated_watts"), 1600);
    await new Promise((r) => setTimeout(r, 1500)); // more passes: logged once
    const over = agent.output().match(/node power budget 1000 W cannot be met: 1600 W allocated/g);
    assert.equal(over?.length, 1, agent.output());

    // `status --caps-file` computes the same allocation, read only.
    const status = await runAgent(["status", "--json", "--caps-file", s.capsPath, ...s.common], {
      env: s.fake.env,
    });
    assert.equal(status.code, 0, status.stderr);
    const budget = JSON.parse(status.stdout).budget;
    assert.deepEqual(
      [budget.budgetWatts, budget.source, budget.limitsNowWatts, budget.allocatedWatts],
      [1000, "caps-file", 1600, 1600],
    );
    assert.equal(budget.overBudget, true);
    assert.equal(budget.reduced.length, 8);
    assert.deepEqual(budget.reduced[0], {
      index: 0,
      uuid: makeGpu(0).uuid,
      fromWatts: 700,
      toWatts: 200,
    });
    const table = await runAgent(["status", "--caps-file", s.capsPath, ...s.common], {
      env: s.fake.env,
    });
    assert.match(
      table.stdout,
      /Node power budget 1000 W \(caps file\): limits now 1600 W; allocated 1600 W \(over budget/,
    );
    assert.match(
      table.stdout,
      /GPU 7 \(\S+\): reduced from 700 W to 200 W by the node power budget/,
    );

    const peakFrom = new Map(readFakeState(s.fake.statePath).gpus.map((g) => [g.uuid, g.limitMw]));
    const logged = s.fake.readLog().length;
    await Deno.writeTextFile(
      s.capsPath,
      "version: 1\ndefault: {watts: 700}\nbudget: {watts: 4000}\n",
    );
    await waitFor(() => limits(s.fake).every((mw) => mw === 500_000), "raised to 500 W each");
    await waitFor(
      async () => metric((await get("/metrics")).body, "node_power_over_budget") === 0,
      "no longer over budget",
    );
    // The raises, replayed from the GPUs at their mins: never above the new budget.
    const raisesOnly = { readLog: () => s.fake.readLog().slice(logged) } as FakeNvmlDir;
    assert.ok(peakTotal(raisesOnly, peakFrom) <= 4_000_000);

    // No budget any more: the default applies in full, the budget gauges are gone.
    await Deno.writeTextFile(s.capsPath, "version: 1\ndefault: {watts: 700}\n");
    await waitFor(() => limits(s.fake).every((mw) => mw === 700_000), "budget removed");
    await waitFor(
      async () => metric((await get("/metrics")).body, "node_power_budget_watts") === undefined,
      "budget gauges removed",
    );
    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
  } finally {
    await stop(agent);
    s.fake.cleanup();
  }
});

Deno.test("Kubernetes: node annotation budget while running, caps file + annotation (smaller wins), node ceiling", async () => {
  const s = await setupK8sAgent();
  const { fake, api } = s;
  api.addNode(NODE, { annotations: { [BUDGET_ANNOTATION]: "1000" } });
  for (const [i, name] of ["a", "b"].entries()) {
    api.addPod({
      name,
      namespace: "ml",
      uid: POD_UIDS[i],
      annotations: { [POD_ANNOTATION]: "700" },
    });
  }
  const policyDir = `${fake.dir}/policy`;
  await Deno.mkdir(policyDir);
  const policy = `${policyDir}/node-policy.yaml`;
  await Deno.writeTextFile(policy, "version: 1\nbudget: {watts: 2000}\n");
  const get = http(s.port);
  const agent = spawnAgent(s.args(["--caps-file", policy, "--interval", "1"]), { env: fake.env });
  const budgetIs = async (watts: number) =>
    metric((await get("/metrics")).body, "node_power_budget_watts") === watts;
  try {
    // Annotation 1000 W < caps file 2000 W: 2 × 700 W asked → 500 W each.
    await waitFor(() => limits(fake).join() === "500000,500000", "annotation budget applied");
    await waitFor(() => budgetIs(1000), "budget gauge 1000 W");
    await waitFor(
      () =>
        events(api, "a").some((e) =>
          /reduced from 700 W to 500 W by the node power budget/.test(e.message)
        ),
      "pod a told about the budget",
    );
    const told = events(api, "a").find((e) => /node power budget/.test(e.message))!;
    assert.equal(told.reason, "CapClamped");
    assert.equal(told.type, "Warning");

    // The annotation changes while running.
    api.setNodeAnnotation(NODE, BUDGET_ANNOTATION, "1200");
    await waitFor(() => limits(fake).join() === "600000,600000", "annotation raised to 1200 W");

    // The caps file's budget is now the smaller one.
    await Deno.writeTextFile(policy, "version: 1\nbudget: {watts: 1100}\n");
    await waitFor(() => limits(fake).join() === "550000,550000", "caps file budget 1100 W wins");
    await waitFor(() => budgetIs(1100), "budget gauge 1100 W");

    // Node ceiling 450 W on GPU 0: pod a asks 700 W and gets 450 W ("node ceiling"); with the
    // annotation's 1200 W budget GPU 1 keeps its 700 W (450 + 700 ≤ 1200).
    await Deno.writeTextFile(policy, "version: 1\ngpus:\n  - {index: 0, watts: 450}\n");
    await waitFor(() => limits(fake).join() === "450000,700000", "node ceiling applied");
    assert.match(
      agent.output(),
      /550 W → 450 W \(node ceiling 450 W \(caps file rule gpus\[0\] \(index 0\)\); pod ml\/a asked 700 W/,
    );
    await waitFor(
      () =>
        events(api, "a").some((e) =>
          /lowered to the node ceiling 450 W: 450 W applied/.test(e.message)
        ),
      "pod a told about the node ceiling",
    );

    // The annotation goes away: no budget at all.
    api.setNodeAnnotation(NODE, BUDGET_ANNOTATION, undefined);
    await waitFor(
      async () => metric((await get("/metrics")).body, "node_power_budget_watts") === undefined,
      "no budget",
    );
    assert.equal((await get("/readyz")).status, 200);
    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
  } finally {
    await stop(agent);
    await api.close();
    fake.cleanup();
  }
});
