import assert from "node:assert/strict";
import { noopTelemetry, type Telemetry } from "../../src/metrics/telemetry.ts";
import { loadKubeClient } from "../../src/sources/kubernetes_client.ts";
import {
  NodeAnnotationWatcher,
  type NodeAnnotationWatcherOptions,
} from "../../src/sources/kubernetes_node_watch.ts";
import { POWER_BUDGET_ANNOTATION } from "../../src/sources/budget_annotation.ts";
import { type FakeApiServerOptions, startFakeApiServer } from "../helpers/k8s_api_server.ts";
import { ManualClock, waitFor } from "./k8s_test_support.ts";

const NODE = "node-a";

async function setup(
  serverOptions: FakeApiServerOptions = {},
  options: Partial<NodeAnnotationWatcherOptions> = {},
) {
  const server = await startFakeApiServer(serverOptions);
  const dir = await Deno.makeTempDir();
  const client = await loadKubeClient({ kubeconfigPath: await server.writeKubeconfig(dir) });
  const changes: Array<string | undefined> = [];
  const errors: string[] = [];
  const telemetry: Telemetry = {
    ...noopTelemetry,
    sourceError: (source, reason) => errors.push(`${source}:${reason}`),
  };
  const watcher = new NodeAnnotationWatcher(client, {
    nodeName: NODE,
    annotation: POWER_BUDGET_ANNOTATION,
    onChange: (value) => changes.push(value),
    telemetry,
    backoff: { initialMs: 10, maxMs: 40 },
    ...options,
  });
  return {
    server,
    watcher,
    changes,
    errors,
    async [Symbol.asyncDispose]() {
      await watcher.stop();
      client.close();
      await server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("node watch: LIST then one WATCH of this node only; follows the annotation", async () => {
  await using f = await setup();
  f.server.addNode("node-b", { annotations: { [POWER_BUDGET_ANNOTATION]: "100" } });
  f.server.addNode(NODE, { annotations: { [POWER_BUDGET_ANNOTATION]: "4000" } });
  await f.watcher.start();
  assert.equal(f.watcher.value, "4000");
  assert.deepEqual(f.changes, ["4000"]);
  assert.equal(f.watcher.health().synced, true);
  await waitFor(() => f.server.activeWatches === 1, "the watch is open");
  const nodeRequests = f.server.requests.filter((r) => r.resource === "nodes");
  assert.deepEqual(nodeRequests.map((r) => [r.kind, r.path, r.query.fieldSelector]), [
    ["list", "/api/v1/nodes", "metadata.name=node-a"],
    ["watch", "/api/v1/nodes", "metadata.name=node-a"],
  ]);
  assert.equal(f.server.counters.lists, 0, "no pod requests");

  f.server.setNodeAnnotation(NODE, POWER_BUDGET_ANNOTATION, "3500");
  await waitFor(() => f.watcher.value === "3500", "the new budget arrives");
  // Other annotations and other nodes do not wake the agent.
  f.server.setNodeAnnotation(NODE, "example.com/other", "x");
  f.server.setNodeAnnotation("node-b", POWER_BUDGET_ANNOTATION, "200");
  f.server.setNodeAnnotation(NODE, POWER_BUDGET_ANNOTATION, undefined);
  await waitFor(() => f.watcher.value === undefined, "the annotation removal arrives");
  assert.deepEqual(f.changes, ["4000", "3500", undefined]);
  assert.equal(f.server.counters.nodeLists, 1);
  assert.equal(f.server.counters.nodeWatches, 1);
});

Deno.test("node watch: node absent at start, created later, deleted", async () => {
  await using f = await setup();
  await f.watcher.start();
  assert.equal(f.watcher.value, undefined);
  assert.deepEqual(f.changes, []);
  f.server.addNode(NODE, { annotations: { [POWER_BUDGET_ANNOTATION]: "2500" } });
  await waitFor(() => f.watcher.value === "2500", "the created node arrives");
  f.server.deleteNode(NODE);
  await waitFor(() => f.watcher.value === undefined, "the deletion arrives");
  assert.deepEqual(f.changes, ["2500", undefined]);
});

Deno.test("node watch: 410 Gone relists; a dropped watch re-watches from the last version", async () => {
  await using f = await setup();
  f.server.addNode(NODE, { annotations: { [POWER_BUDGET_ANNOTATION]: "4000" } });
  await f.watcher.start();
  await waitFor(() => f.server.activeWatches === 1, "the watch is open");
  f.server.expireWatches();
  f.server.setNodeAnnotation(NODE, POWER_BUDGET_ANNOTATION, "3000");
  await waitFor(() => f.watcher.value === "3000", "the change after 410 arrives");
  assert.equal(f.server.counters.nodeLists, 2);

  await waitFor(() => f.server.activeWatches === 1, "the watch is open again");
  f.server.endWatches();
  f.server.setNodeAnnotation(NODE, POWER_BUDGET_ANNOTATION, "2000");
  await waitFor(() => f.watcher.value === "2000", "the change after the watch ended arrives");
  assert.equal(f.server.counters.nodeLists, 2, "no relist for an ended watch");
  const last = f.server.requests.filter((r) => r.resource === "nodes").at(-1)!;
  assert.equal(last.kind, "watch");
  assert.ok(Number(last.query.resourceVersion) > 0);
});

Deno.test("node watch: 403 is reported with an RBAC hint, retried, and recovers", async () => {
  await using f = await setup({ nodesForbidden: true });
  f.server.addNode(NODE, { annotations: { [POWER_BUDGET_ANNOTATION]: "4000" } });
  await f.watcher.start();
  const health = f.watcher.health();
  assert.equal(health.synced, false);
  assert.match(health.problem!, /^node list failed: .*HTTP 403.*get\/list\/watch on nodes/);
  assert.doesNotMatch(health.problem!, /on pods/);
  assert.ok(f.errors.includes("kubernetes-node:forbidden"));
  assert.equal(f.watcher.value, undefined);
  await waitFor(() => f.server.counters.nodeLists >= 3, "LIST is retried with backoff");

  f.server.setNodeAnnotation(NODE, POWER_BUDGET_ANNOTATION, "3900");
  // Simulate the RBAC fix.
  f.server.setNodesForbidden(false);
  await waitFor(() => f.watcher.value === "3900", "the budget arrives once RBAC allows it");
  assert.equal(f.watcher.health().problem, undefined);
});

Deno.test("node watch: a failing WATCH keeps the last value and retries", async () => {
  await using f = await setup();
  f.server.addNode(NODE, { annotations: { [POWER_BUDGET_ANNOTATION]: "4000" } });
  f.server.setFaults({ nodeWatch: 500 });
  await f.watcher.start();
  await waitFor(() => f.server.counters.nodeWatches >= 3, "WATCH is retried");
  assert.equal(f.watcher.value, "4000");
  assert.match(f.watcher.health().problem!, /^node watch failed: .*HTTP 500/);
  f.server.setFaults({});
  f.server.setNodeAnnotation(NODE, POWER_BUDGET_ANNOTATION, "3000");
  await waitFor(() => f.watcher.value === "3000", "the change arrives after recovery");
  assert.equal(f.server.counters.lists + f.server.counters.watches, 0, "no pod requests");
});

Deno.test("node watch: a watch that keeps answering 410 backs off its relists (no storm)", async () => {
  for (const fault of [410, "gone"] as const) {
    const clock = new ManualClock();
    await using f = await setup({}, {
      clock,
      random: () => 0.5,
      backoff: { initialMs: 100, maxMs: 800 },
    });
    f.server.addNode(NODE, { annotations: { [POWER_BUDGET_ANNOTATION]: "4000" } });
    f.server.setFaults({ nodeWatch: fault });
    await f.watcher.start();
    // First 410 after a healthy start: relist at once; then 150, 300, 600, 600 ms (capped).
    // Before, every LIST reset the count (HTTP 410 relisted with no pause at all).
    for (const [i, ms] of [150, 300, 600, 600].entries()) {
      await waitFor(() => clock.pending().includes(ms), `relist backoff ${ms} ms (${fault})`);
      assert.equal(f.server.counters.nodeLists, i + 2, "one LIST per backoff, not a storm");
      assert.equal(f.server.counters.nodeWatches, i + 2);
      clock.fire(ms);
    }
    await waitFor(() => f.server.counters.nodeLists === 6, "sixth LIST");
    assert.equal(f.watcher.value, "4000");
  }
});

Deno.test("node watch: while the API server is unreachable the backoff is capped at 3 s", async () => {
  const clock = new ManualClock();
  await using f = await setup({}, { clock, random: () => 0.5, backoff: undefined });
  await f.server.stop();
  await f.watcher.start();
  assert.match(f.watcher.health().problem!, /^node list failed: /);
  // Default 500 ms doubling to 30 s, jitter 0.5: 375, 750, 1500, then 2250 (3 s cap), never more.
  for (const ms of [375, 750, 1500, 2250, 2250, 2250]) {
    await waitFor(() => clock.pending().includes(ms), `backoff ${ms} ms`);
    clock.fire(ms);
  }
  await f.server.start();
  f.server.addNode(NODE, { annotations: { [POWER_BUDGET_ANNOTATION]: "3000" } });
  await waitFor(() => {
    if (clock.pending().includes(2250)) clock.fire(2250);
    return f.watcher.value === "3000";
  }, "the budget arrives once the API server is back");
  assert.equal(f.watcher.health().problem, undefined);
});
