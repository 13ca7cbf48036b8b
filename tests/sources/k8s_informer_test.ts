import assert from "node:assert/strict";
import type { Clock } from "../../src/clock.ts";
import { loadKubeClient } from "../../src/sources/kubernetes_client.ts";
import { type KubePod, PodInformer } from "../../src/sources/kubernetes_informer.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";
import { recordingTelemetry, waitFor } from "./k8s_test_support.ts";

/** A clock whose timers only fire when the test says so; records requested delays. */
class ManualClock implements Clock {
  delays: number[] = [];
  #timers = new Map<number, { fn: () => void; ms: number }>();
  #next = 1;
  now(): number {
    return 1_000_000;
  }
  setTimeout(fn: () => void, ms: number): number {
    const id = this.#next++;
    this.#timers.set(id, { fn, ms });
    this.delays.push(ms);
    return id;
  }
  clearTimeout(id: number): void {
    this.#timers.delete(id);
  }
  /** Pending timers' delays. */
  pending(): number[] {
    return [...this.#timers.values()].map((t) => t.ms);
  }
  /** Fire the pending timer with this delay. */
  fire(ms: number): void {
    for (const [id, t] of this.#timers) {
      if (t.ms === ms) {
        this.#timers.delete(id);
        t.fn();
        return;
      }
    }
    throw new Error(`no pending timer of ${ms} ms (pending: ${this.pending().join(", ")})`);
  }
}

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
