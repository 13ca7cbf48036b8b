import assert from "node:assert/strict";
import { loadKubeClient } from "../../src/sources/kubernetes_client.ts";
import { type KubePod, PodInformer } from "../../src/sources/kubernetes_informer.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";
import { ManualClock, recordingTelemetry, waitFor } from "./k8s_test_support.ts";

Deno.test("informer: capped exponential backoff with jitter while LIST fails", async () => {
  const server = await startFakeApiServer();
  const dir = await Deno.makeTempDir();
  const clock = new ManualClock();
  const client = await loadKubeClient({ kubeconfigPath: await server.writeKubeconfig(dir) });
  const jitter = [0, 0.5, 1, 0.5, 0.5];
  let draw = 0;
  const informer = new PodInformer(client, {
    nodeName: "node-a",
    telemetry: recordingTelemetry(),
    clock,
    random: () => jitter[draw++] ?? 0.5,
    backoff: { initialMs: 100, maxMs: 400 },
    handlers: { replace() {}, event() {} },
  });
  try {
    server.setFaults({ list: 500 });
    await informer.start();
    // delay = base/2 + random * base/2, base doubling from 100 up to 400.
    const expected = [50, 150, 400, 300, 300];
    for (const ms of expected) {
      await waitFor(() => clock.pending().includes(ms), `backoff timer ${ms} ms`);
      clock.fire(ms);
    }
    await waitFor(() => server.counters.lists === expected.length + 1, "one LIST per attempt");
    await waitFor(() => clock.pending().length === 1, "next backoff armed");
    assert.equal(server.counters.watches, 0);
    assert.equal(informer.health().synced, false);
    // Recovery resets the backoff.
    server.setFaults({});
    await waitFor(() => clock.pending().length > 0, "next backoff");
    clock.fire(clock.pending()[0]);
    await waitFor(() => informer.health().synced && server.activeWatches === 1, "synced");
    assert.equal(informer.health().problem, undefined);
    // A LIST that works is no proof of health: the count stays until a watch held 30 s.
    assert.equal(informer.stats().backoffFailures, expected.length + 1);
    await waitFor(() => clock.pending().includes(30_000), "healthy-watch timer armed");
    clock.fire(30_000);
    assert.equal(informer.stats().backoffFailures, 0);
    server.setFaults({ watch: 500 });
    server.dropWatches();
    await waitFor(() => clock.pending().includes(75), "first backoff again (random 0.5)");
  } finally {
    await informer.stop();
    client.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("informer: events reach handlers in order; RV tracked; watch asks bookmarks", async () => {
  const server = await startFakeApiServer();
  const dir = await Deno.makeTempDir();
  const client = await loadKubeClient({ kubeconfigPath: await server.writeKubeconfig(dir) });
  const seen: string[] = [];
  const informer = new PodInformer(client, {
    nodeName: "node-a",
    namespace: "ml",
    telemetry: recordingTelemetry(),
    handlers: {
      replace: (pods: KubePod[]) => seen.push(`replace:${pods.map((p) => p.metadata.name)}`),
      event: (type, pod) => seen.push(`${type}:${pod.metadata.name}`),
    },
  });
  try {
    server.addPod({ name: "a", namespace: "ml" });
    server.addPod({ name: "b", namespace: "other" });
    await informer.start();
    assert.equal(informer.podsPath, "/api/v1/namespaces/ml/pods");
    await waitFor(() => server.activeWatches === 1, "watching");
    server.addPod({ name: "c", namespace: "ml" });
    server.setAnnotation("ml", "c", "k", "v");
    server.addPod({ name: "d", namespace: "ml", nodeName: "node-b" });
    server.deletePod("ml", "a");
    await waitFor(() => seen.length === 4, "events");
    assert.deepEqual(seen, ["replace:a", "ADDED:c", "MODIFIED:c", "DELETED:a"]);
    assert.equal(informer.stats().resourceVersion, String(server.resourceVersion));
    const watch = server.requests.find((r) => r.kind === "watch")!;
    assert.equal(watch.path, "/api/v1/namespaces/ml/pods");
    assert.equal(watch.query.allowWatchBookmarks, "true");
    assert.equal(watch.query.watch, "true");
  } finally {
    await informer.stop();
    client.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("informer: a watch that sent data when the idle timer fires is kept; it is reopened once data stops", async () => {
  const clock = new ManualClock();
  await using f = await informerFixture({
    clock,
    random: () => 0,
    backoff: { initialMs: 10, maxMs: 10 },
    watchIdleMs: 1234,
    watchTimeoutSeconds: 300,
  });
  await f.informer.start();
  await waitFor(() => clock.pending().includes(1234), "idle timer armed");
  const armed = clock.delays.length;
  for (let i = 0; i < 5; i++) {
    f.server.addPod({ name: `p${i}`, namespace: "ns", nodeName: "node-a" });
  }
  await waitFor(() => f.seen.filter((s) => s.startsWith("ADDED:")).length === 5, "5 events");
  assert.equal(clock.delays.length, armed, "no timer armed per chunk");
  // Data came since the timer was armed: armed again (for what is left), the watch stays.
  clock.fire(1234);
  assert.ok(clock.pending().includes(1234));
  assert.equal(f.server.counters.watches, 1);
  assert.equal(f.informer.health().problem ?? null, null);
  // Nothing since: the watch is idle.
  clock.fire(1234);
  await waitFor(() => /no data for 1234 ms/.test(f.informer.health().problem ?? ""), "idle");
});

Deno.test("informer: a watch that sends nothing for watchIdleMs is reopened", async () => {
  const server = await startFakeApiServer();
  const dir = await Deno.makeTempDir();
  const clock = new ManualClock();
  const client = await loadKubeClient({ kubeconfigPath: await server.writeKubeconfig(dir) });
  const informer = new PodInformer(client, {
    nodeName: "node-a",
    telemetry: recordingTelemetry(),
    clock,
    random: () => 0,
    backoff: { initialMs: 10, maxMs: 10 },
    watchIdleMs: 1234,
    watchTimeoutSeconds: 300,
    handlers: { replace() {}, event() {} },
  });
  try {
    await informer.start();
    await waitFor(() => clock.pending().includes(1234), "idle timer armed");
    assert.ok(clock.pending().includes(330_000), "stall timer: timeout + 30 s grace");
    clock.fire(1234);
    await waitFor(() => /no data for 1234 ms/.test(informer.health().problem ?? ""), "idle");
    await waitFor(() => clock.pending().includes(5), "backoff");
    clock.fire(5);
    await waitFor(() => server.counters.watches === 2 && server.activeWatches === 1, "reopened");
    assert.equal(server.counters.lists, 1);
  } finally {
    await informer.stop();
    client.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

async function informerFixture(
  options: Partial<ConstructorParameters<typeof PodInformer>[1]> = {},
  serverOptions: Parameters<typeof startFakeApiServer>[0] = {},
) {
  const server = await startFakeApiServer(serverOptions);
  const dir = await Deno.makeTempDir();
  const client = await loadKubeClient({ kubeconfigPath: await server.writeKubeconfig(dir) });
  const telemetry = recordingTelemetry();
  const seen: string[] = [];
  const informer = new PodInformer(client, {
    nodeName: "node-a",
    telemetry,
    handlers: {
      replace: (pods: KubePod[]) => seen.push(`replace:${pods.map((p) => p.metadata.name)}`),
      event: (type, pod) => seen.push(`${type}:${pod.metadata.name}`),
    },
    ...options,
  });
  return {
    server,
    informer,
    telemetry,
    seen,
    async [Symbol.asyncDispose]() {
      await informer.stop();
      client.close();
      await server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

for (const fault of [410, "gone"] as const) {
  Deno.test(`informer: a watch that keeps answering 410 (${fault === 410 ? "HTTP" : "ERROR event"}) backs off its relists`, async () => {
    const clock = new ManualClock();
    await using f = await informerFixture({
      clock,
      random: () => 0.5,
      backoff: { initialMs: 100, maxMs: 800 },
    });
    f.server.setFaults({ watch: fault });
    await f.informer.start();
    // First 410 after a healthy start: relist at once; then 150, 300, 600, 600 ms (capped).
    const expected = [150, 300, 600, 600];
    for (const [i, ms] of expected.entries()) {
      await waitFor(() => clock.pending().includes(ms), `relist backoff ${ms} ms`);
      assert.equal(f.server.counters.lists, i + 2, "one LIST per backoff, not a storm");
      assert.equal(f.server.counters.watches, i + 2);
      clock.fire(ms);
    }
    await waitFor(() => f.server.counters.lists === 6, "sixth LIST");
    assert.ok(f.informer.stats().relists >= 5);
    // Consistent reads (no resourceVersion=0) only after the first repeated 410.
    const lists = f.server.requests.filter((r) => r.kind === "list");
    assert.equal(lists[0].query.resourceVersion, "0");
    assert.equal(lists[1].query.resourceVersion, "0");
    assert.equal(lists[2].query.resourceVersion, undefined);
    // Fixed server: the watch stays, and after 30 s healthy the count is forgotten.
    f.server.setFaults({});
    await waitFor(() => clock.pending().length > 0, "pending backoff");
    clock.fire(600);
    await waitFor(() => clock.pending().includes(30_000), "watching");
    assert.ok(f.informer.stats().backoffFailures > 0);
    clock.fire(30_000);
    assert.equal(f.informer.stats().backoffFailures, 0);
    f.server.expireWatches();
    await waitFor(() => f.server.counters.lists === 8, "immediate relist after a healthy watch");
  });
}

Deno.test("informer: while the API server is unreachable the backoff is capped low", async () => {
  const clock = new ManualClock();
  await using f = await informerFixture({
    clock,
    random: () => 0.5,
    backoff: { initialMs: 100, maxMs: 30_000, unreachableMaxMs: 400 },
  });
  await f.informer.start();
  await waitFor(() => clock.pending().includes(30_000), "watching");
  clock.fire(30_000);
  await f.server.stop();
  // Refused connections: 75, 150, 300, 300 (capped at 400 with jitter 0.5), never 30 s.
  for (const ms of [75, 150, 300, 300, 300]) {
    await waitFor(() => clock.pending().includes(ms), `backoff ${ms} ms`);
    clock.fire(ms);
  }
  await f.server.start();
  await waitFor(() => {
    if (clock.pending().includes(300)) clock.fire(300);
    return clock.pending().includes(30_000);
  }, "watching again");
  // An HTTP error answer is the server's word: those back off up to maxMs.
  f.server.setFaults({ watch: 503, list: 503 });
  f.server.dropWatches();
  await waitFor(() => {
    const short = clock.pending().find((ms) => ms <= 400);
    if (short !== undefined) clock.fire(short); // The dropped watch itself: no answer.
    return clock.pending().some((ms) => ms > 400 && ms < 30_000);
  }, "longer backoff");
});

Deno.test("informer: a watch event over the size limit is skipped and the informer relists past it", async () => {
  // The 17 MiB event of the issue with the default limit (4 MiB): before, the 16 MiB line cap
  // made the watch replay the same event forever and no later change arrived.
  await using f = await informerFixture({
    random: () => 0.5,
    backoff: { initialMs: 10, maxMs: 40 },
    annotationKeys: ["keep"],
  });
  f.server.addPod({ name: "a", annotations: { keep: "1", drop: "x" } });
  f.server.addPod({ name: "b" });
  await f.informer.start();
  await waitFor(() => f.server.activeWatches === 1, "watching");
  f.server.modifyPod("default", "b", (pod) => {
    pod.metadata.annotations = { huge: "x".repeat(17 * 1024 * 1024) };
  });
  await waitFor(() => f.informer.stats().oversized >= 2, "event and list item skipped");
  await waitFor(() => f.server.counters.lists === 2 && f.server.activeWatches === 1, "relisted");
  f.server.setAnnotation("default", "a", "keep", "2");
  await waitFor(() => f.seen.includes("MODIFIED:a"), "a later change arrives");
  assert.deepEqual(f.seen.slice(0, 2), ["replace:a,b", "replace:a"]);
  assert.ok(f.telemetry.count("sourceError:kubernetes:oversized") >= 2);
  // The huge pod shrinks again: it is back.
  f.server.modifyPod("default", "b", (pod) => {
    pod.metadata.annotations = {};
  });
  await waitFor(() => f.seen.includes("MODIFIED:b"), "b back");
});

Deno.test("informer: pods are trimmed to what the agent reads", async () => {
  const got: KubePod[] = [];
  await using f = await informerFixture({
    annotationKeys: ["keep"],
    handlers: { replace: (pods) => got.push(...pods), event: (_, pod) => got.push(pod) },
  });
  f.server.addPod({ name: "a", annotations: { keep: "1", drop: "x".repeat(1000) } });
  f.server.modifyPod("default", "a", (pod) => {
    pod.metadata.labels = { app: "x" };
    pod.spec.containers = [
      { name: "c", image: "i" },
      {
        name: "gpu",
        image: "i",
        resources: {
          limits: { cpu: "2", memory: "1Gi", "nvidia.com/gpu": "1" },
          requests: { "nvidia.com/mig-1g.10gb": 2 },
        },
      },
    ];
    pod.spec.initContainers = [{ name: "init", resources: { limits: { cpu: "1" } } }];
    pod.status.containerStatuses = [{ name: "c" }];
  });
  await f.informer.start();
  await waitFor(() => f.server.activeWatches === 1, "watching");
  f.server.modifyPod("default", "a", (pod) => {
    pod.metadata.deletionTimestamp = "2026-01-01T00:00:00Z";
  });
  await waitFor(() => got.length === 2, "list + event");
  const uid = got[0].metadata.uid;
  const base = {
    name: "a",
    namespace: "default",
    uid,
    annotations: { keep: "1" },
  };
  assert.deepEqual(got[0], {
    metadata: { ...base, resourceVersion: got[0].metadata.resourceVersion },
    // Only extended resources (a GPU pod's event asks the kubelet for its devices).
    spec: {
      nodeName: "node-a",
      containers: [{
        resources: {
          limits: { "nvidia.com/gpu": "1" },
          requests: { "nvidia.com/mig-1g.10gb": "2" },
        },
      }],
    },
    status: { phase: "Running" },
  });
  assert.deepEqual(got[1].metadata, {
    ...base,
    resourceVersion: got[1].metadata.resourceVersion,
    deletionTimestamp: "2026-01-01T00:00:00Z",
  });
});
