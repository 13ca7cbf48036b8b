import assert from "node:assert/strict";
import { GPU0, GPU1, KEY, NODE, SAFE_MW, setupK8s, waitFor } from "./k8s_test_support.ts";
import { ReconcileLoop } from "../../src/reconcile/loop.ts";
import { loadJournal } from "../../src/state/journal.ts";

Deno.test("k8s source: null before start, then initial sync → caps on the pod's GPU", async () => {
  await using f = await setupK8s({ noStart: true });
  const pod = f.server.addPod({ name: "llm-0", namespace: "ml", annotations: { [KEY]: "250" } });
  f.server.addPod({ name: "elsewhere", nodeName: "node-b", annotations: { [KEY]: "300" } });
  await f.runProcess(100, pod.metadata.uid, 0);
  assert.equal(f.source.desired(f.views()), null, "not synced before start");
  assert.equal(f.source.health().synced, false);

  let changes = 0;
  await f.source.start(() => changes++);
  assert.equal(f.source.health().synced, true);
  assert.equal(f.source.health().problem, undefined);
  assert.ok(f.source.health().lastSuccessMs !== null);
  assert.ok(changes >= 1, "first sync triggers a pass");
  const desired = f.source.desired(f.views())!;
  assert.deepEqual([...desired.keys()], [GPU0]);
  assert.deepEqual(desired.get(GPU0), {
    mw: 250_000,
    reason: "pod ml/llm-0",
    kind: "pod",
    pods: [{ namespace: "ml", name: "llm-0", uid: pod.metadata.uid }],
    askedMw: 250_000,
  });

  const list = f.server.requests.find((r) => r.kind === "list")!;
  assert.equal(list.path, "/api/v1/pods");
  assert.equal(list.query.fieldSelector, `spec.nodeName=${NODE}`);
  await waitFor(() => f.server.activeWatches === 1, "watch open");
  const watch = f.server.requests.find((r) => r.kind === "watch")!;
  assert.equal(watch.query.resourceVersion, String(f.server.resourceVersion));
  assert.equal(watch.query.allowWatchBookmarks, "true");
  assert.equal(watch.query.fieldSelector, `spec.nodeName=${NODE}`);
  assert.ok(Number(watch.query.timeoutSeconds) >= 300 && Number(watch.query.timeoutSeconds) < 450);
});

Deno.test("k8s source: annotation added/changed/removed → onChange and new caps", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml" });
  await f.runProcess(200, pod.metadata.uid, 1);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), {}, "unannotated pod: GPU unmanaged");

  let before = f.changes();
  f.server.setAnnotation("ml", "p", KEY, "300");
  await waitFor(() => f.changes() > before, "onChange after annotation");
  assert.deepEqual(f.caps(), { [GPU1]: 300_000 });

  before = f.changes();
  f.server.setAnnotation("ml", "p", KEY, "275.5");
  await waitFor(() => f.changes() > before, "onChange after change");
  assert.deepEqual(f.caps(), { [GPU1]: 275_500 });

  before = f.changes();
  f.server.modifyPod("ml", "p", (p) => p.metadata.labels = { unrelated: "yes" });
  f.server.setAnnotation("ml", "p", KEY, undefined);
  await waitFor(() => f.changes() > before, "onChange after removal");
  assert.deepEqual(f.caps(), {});
});

Deno.test("k8s source: pod deleted → GPU leaves desired at once", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await f.runProcess(300, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  const before = f.changes();
  f.server.deletePod("ml", "p");
  await waitFor(() => f.changes() > before, "onChange after delete");
  // The process may still be reported for a moment: the pod is gone, so no cap.
  assert.deepEqual(f.caps(), {});
});

Deno.test("k8s source: pod Succeeded/Failed → GPU leaves desired", async () => {
  await using f = await setupK8s();
  const a = f.server.addPod({ name: "a", namespace: "ml", annotations: { [KEY]: "250" } });
  const b = f.server.addPod({ name: "b", namespace: "ml", annotations: { [KEY]: "260" } });
  await f.runProcess(401, a.metadata.uid, 0);
  await f.runProcess(402, b.metadata.uid, 1);
  await waitFor(() => f.source.stats().pods === 2, "pods seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000, [GPU1]: 260_000 });
  let before = f.changes();
  f.server.setPhase("ml", "a", "Succeeded");
  await waitFor(() => f.changes() > before, "onChange after Succeeded");
  assert.deepEqual(f.caps(), { [GPU1]: 260_000 });
  before = f.changes();
  f.server.setPhase("ml", "b", "Failed");
  await waitFor(() => f.changes() > before, "onChange after Failed");
  assert.deepEqual(f.caps(), {});
});

Deno.test("k8s source: association survives a process restart inside the pod", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await f.runProcess(500, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  await f.stopProcess(500, 0);
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 }, "no process, pod still there: cap stays");
  assert.equal(f.source.stats().cachedPids, 0, "pid evicted once NVML stops reporting it");
  await f.runProcess(501, pod.metadata.uid, 0);
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
});

Deno.test("k8s source: shared GPU — conflict and unannotated co-tenant fail closed", async () => {
  await using f = await setupK8s();
  const a = f.server.addPod({ name: "a", namespace: "ml", annotations: { [KEY]: "250" } });
  const b = f.server.addPod({ name: "b", namespace: "ml", annotations: { [KEY]: "300" } });
  await f.runProcess(601, a.metadata.uid, 0);
  await f.runProcess(602, b.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 2, "pods seen");
  const desired = f.source.desired(f.views())!;
  assert.equal(desired.get(GPU0)?.kind, "safe-default");
  assert.equal(desired.get(GPU0)?.mw, SAFE_MW);
  assert.equal(f.telemetry.count("safeDefaultApplied"), 0, "a decision is not an application");
  f.caps();
  f.caps();
  assert.equal(f.telemetry.count("safeDefaultApplied"), 1, "counted when set, not per pass");

  f.server.setAnnotation("ml", "b", KEY, "250");
  await waitFor(() => f.caps()[GPU0] === 250_000, "agreement → value");
  f.server.setAnnotation("ml", "b", KEY, undefined);
  await waitFor(() => f.caps()[GPU0] === SAFE_MW, "unannotated co-tenant → safe default");
  assert.equal(f.telemetry.count("safeDefaultApplied"), 2);
});

Deno.test("k8s source: invalid annotation → safe default, invalidRequest once, CapRejected", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250W" } });
  await f.runProcess(700, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: SAFE_MW });
  f.caps();
  assert.deepEqual(f.telemetry.calls.filter((c) => c.startsWith("invalidRequest")), [
    "invalidRequest:not_a_number",
  ]);
  await f.source.flushEvents();
  const reasons = f.server.events.map((e) => e.reason).sort();
  assert.deepEqual(reasons, ["CapRejected", "SafeDefaultApplied"]);
});

Deno.test("k8s source: events deduplicated; steady state emits nothing", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await f.runProcess(800, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  for (let i = 0; i < 5; i++) f.caps();
  await f.source.flushEvents();
  assert.equal(f.server.events.length, 1);
  const event = f.server.events[0] as {
    reason: string;
    type: string;
    involvedObject: Record<string, string>;
    metadata: { namespace: string };
    message: string;
  };
  assert.equal(event.reason, "CapApplied");
  assert.equal(event.type, "Normal");
  assert.deepEqual(event.involvedObject, {
    apiVersion: "v1",
    kind: "Pod",
    namespace: "ml",
    name: "p",
    uid: pod.metadata.uid,
  });
  assert.equal(event.metadata.namespace, "ml");
  assert.match(event.message, new RegExp(`250 W applied to GPU 0 \\(${GPU0}\\)`));
  assert.equal(
    f.server.requests.find((r) => r.kind === "event")?.path,
    "/api/v1/namespaces/ml/events",
  );

  f.server.setAnnotation("ml", "p", KEY, "100"); // below the H100 minimum (200 W)
  await waitFor(() => f.caps()[GPU0] === 100_000, "new value");
  f.caps();
  await f.source.flushEvents();
  assert.deepEqual(f.server.events.map((e) => e.reason), ["CapApplied", "CapClamped"]);
  assert.match(String(f.server.events[1].message), /raised to the GPU minimum 200 W/);

  f.server.setAnnotation("ml", "p", KEY, "250");
  await waitFor(() => f.caps()[GPU0] === 250_000, "back to 250");
  await f.source.flushEvents();
  assert.deepEqual(f.server.events.map((e) => e.reason), [
    "CapApplied",
    "CapClamped",
    "CapApplied",
  ]);
});

Deno.test("k8s source: event failures never affect caps", async () => {
  await using f = await setupK8s();
  f.server.setFaults({ events: 500 });
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await f.runProcess(900, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  await f.source.flushEvents();
  assert.equal(f.server.counters.events, 1);
  assert.equal(f.source.stats().eventsSent, 0);
  assert.equal(f.telemetry.count("sourceError:kubernetes:event"), 1);
  assert.equal(f.source.health().problem, undefined, "events do not make the source unhealthy");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
});

Deno.test("k8s source: --no-events sends nothing", async () => {
  await using f = await setupK8s({ source: { events: false } });
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await f.runProcess(950, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  await f.source.flushEvents();
  assert.equal(f.server.counters.events, 0);
});

Deno.test("k8s source: BOOKMARK advances the resourceVersion; re-watch without LIST", async () => {
  await using f = await setupK8s();
  await waitFor(() => f.server.activeWatches === 1, "watch open");
  // Changes on another node move the server's resourceVersion without events for us.
  f.server.addPod({ name: "x", nodeName: "node-b" });
  f.server.addPod({ name: "y", nodeName: "node-b" });
  const rv = String(f.server.resourceVersion);
  const before = f.source.health().lastSuccessMs!;
  await new Promise((r) => setTimeout(r, 2));
  f.server.bookmark();
  await waitFor(() => f.source.stats().informer.resourceVersion === rv, "bookmark RV");
  assert.ok(f.source.health().lastSuccessMs! > before, "bookmark counts as success");
  f.server.endWatches(); // server-side timeout
  await waitFor(() => f.server.counters.watches === 2 && f.server.activeWatches === 1, "re-watch");
  const rewatch = f.server.requests.filter((r) => r.kind === "watch")[1];
  assert.equal(rewatch.query.resourceVersion, rv);
  assert.equal(f.server.counters.lists, 1, "no LIST for a re-watch");
});

for (const goneAs of ["event", "http"] as const) {
  Deno.test(`k8s source: 410 Gone (${goneAs}) → relist, state caught up`, async () => {
    await using f = await setupK8s({ server: { goneAs } });
    const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
    await f.runProcess(1000, pod.metadata.uid, 0);
    await waitFor(() => f.source.stats().pods === 1, "pod seen");
    assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
    await f.server.stop();
    // While we are disconnected the value changes and history is compacted.
    f.server.setAnnotation("ml", "p", KEY, "280");
    f.server.compact();
    await f.server.start();
    await waitFor(() => f.server.counters.lists === 2, "relist");
    await waitFor(() => f.caps()[GPU0] === 280_000, "value from the relist");
    await waitFor(() => f.server.activeWatches === 1, "watching again");
    assert.ok(f.telemetry.count("sourceError:kubernetes:gone") >= 1);
    assert.equal(f.source.stats().informer.relists, 1);
  });
}

Deno.test("k8s source: ERROR 410 on an open watch → relist", async () => {
  await using f = await setupK8s();
  await waitFor(() => f.server.activeWatches === 1, "watch open");
  f.server.expireWatches();
  await waitFor(() => f.server.counters.lists === 2 && f.server.activeWatches === 1, "relisted");
  assert.equal(f.source.health().problem, undefined);
});

for (const status of [403, 500] as const) {
  Deno.test(`k8s source: watch ${status} → retries with backoff, caps unchanged, problem set`, async () => {
    await using f = await setupK8s();
    const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
    await f.runProcess(1100, pod.metadata.uid, 0);
    await waitFor(() => f.source.stats().pods === 1, "pod seen");
    f.server.setFaults({ watch: status });
    f.server.dropWatches();
    await waitFor(() => f.server.counters.watches >= 4, "retries");
    assert.match(f.source.health().problem ?? "", new RegExp(`watch failed: .*HTTP ${status}`));
    assert.deepEqual(f.caps(), { [GPU0]: 250_000 }, "last known pods still answer");
    const reason = status === 403 ? "forbidden" : "watch";
    assert.ok(f.telemetry.count(`sourceError:kubernetes:${reason}`) >= 2);
    if (status === 403) assert.match(f.source.health().problem!, /RBAC/);
    f.server.setFaults({});
    await waitFor(() => f.server.activeWatches === 1, "watching again");
    await waitFor(() => f.source.health().problem === undefined, "problem cleared");
    assert.equal(f.server.counters.lists, 1, "re-watch from the last RV, no relist");
  });
}

Deno.test("k8s source: watch dropped mid-stream / hanging → reconnect", async () => {
  await using f = await setupK8s({ source: { requestTimeoutMs: 300 } });
  await waitFor(() => f.server.activeWatches === 1, "watch open");
  f.server.setFaults({ watch: "drop" });
  f.server.dropWatches();
  await waitFor(() => f.server.counters.watches >= 3, "reconnect attempts");
  assert.ok(f.source.health().problem);
  f.server.setFaults({ watch: "hang" });
  await waitFor(() => /timed out/.test(f.source.health().problem ?? ""), "hang times out", 5000);
  f.server.setFaults({});
  await waitFor(
    () => f.source.health().problem === undefined && f.server.activeWatches === 1,
    "ok",
  );
});

Deno.test("k8s source: LIST failing at start → start resolves, null, retried until it works", async () => {
  await using f = await setupK8s({ noStart: true, source: { requestTimeoutMs: 300 } });
  f.server.setFaults({ list: 500 });
  await f.source.start(() => {});
  assert.equal(f.source.health().synced, false);
  assert.match(f.source.health().problem ?? "", /list failed: .*HTTP 500/);
  assert.equal(f.source.desired(f.views()), null);
  await waitFor(() => f.server.counters.lists >= 3, "retries");
  f.server.setFaults({ list: "hang" });
  await waitFor(() => /timed out/.test(f.source.health().problem ?? ""), "hang → timeout", 5000);
  f.server.setFaults({});
  await waitFor(() => f.source.health().synced, "synced");
  assert.deepEqual(f.caps(), {});
});

Deno.test("k8s source: API server stopped → caps unchanged; restarted → resumes", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await f.runProcess(1200, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  await f.server.stop();
  await waitFor(() => f.source.health().problem !== undefined, "problem set");
  const failedAt = f.server.counters.watches;
  await waitFor(() => f.source.stats().informer.failures >= 3, "keeps retrying");
  assert.equal(f.server.counters.watches, failedAt, "nothing reached the stopped server");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 }, "caps stay while the API is down");
  assert.equal(f.source.health().synced, true);

  await f.server.start();
  await waitFor(() => f.server.activeWatches === 1, "watching again");
  await waitFor(() => f.source.health().problem === undefined, "healthy");
  f.server.setAnnotation("ml", "p", KEY, "260");
  await waitFor(() => f.caps()[GPU0] === 260_000, "updates flow again");
});

Deno.test("k8s source: steady state = exactly one LIST and one open WATCH, no timers", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await f.runProcess(1300, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  for (let i = 0; i < 3; i++) {
    f.caps();
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(f.server.counters.lists, 1);
  assert.equal(f.server.counters.watches, 1);
  assert.equal(f.server.activeWatches, 1);
  assert.equal(
    f.source.stats().probing,
    false,
    "no probe timer when every annotated pod is mapped",
  );
  const changes = f.changes();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(f.changes(), changes, "a quiet node triggers nothing");
});

Deno.test("k8s source: annotated pod without a GPU process → probes until its process appears", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), {});
  assert.equal(f.source.stats().pendingPods, 1);
  assert.equal(f.source.stats().probing, true);
  const before = f.changes();
  await waitFor(() => f.changes() >= before + 2, "periodic onChange while unmapped");
  await f.runProcess(1400, pod.metadata.uid, 0);
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  assert.equal(f.source.stats().probing, false);
  const after = f.changes();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(f.changes(), after, "probing stopped");
});

Deno.test("k8s source: host processes and vanished pids are skipped; NVML errors keep associations", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await f.runProcess(1500, pod.metadata.uid, 0);
  await Deno.mkdir(`${f.procRoot}/1501`);
  await Deno.writeTextFile(`${f.procRoot}/1501/cgroup`, "0::/system.slice/dcgm.service\n");
  f.gpu.setPids(0, [1500, 1501, 1502]); // 1502 has no /proc entry
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  f.gpu.failOn(0, "computePids", "GPU_IS_LOST");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
});

Deno.test("k8s source: MIG/multi-GPU pod — every GPU it uses gets the cap", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "350" } });
  await f.runProcess(1600, pod.metadata.uid, 0);
  await f.runProcess(1601, pod.metadata.uid, 1);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 350_000, [GPU1]: 350_000 });
});

Deno.test("k8s source: namespace-scoped mode uses the namespaced URL", async () => {
  await using f = await setupK8s({
    server: { rbacNamespace: "ml" },
    source: { namespace: "ml" },
  });
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  f.server.addPod({ name: "q", namespace: "other", annotations: { [KEY]: "300" } });
  await f.runProcess(1700, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "only the namespace's pod");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  assert.deepEqual(
    [...new Set(f.server.requests.filter((r) => r.kind !== "event").map((r) => r.path))],
    ["/api/v1/namespaces/ml/pods"],
  );
});

Deno.test("k8s source: namespaced RBAC without --namespace → 403 problem, never synced", async () => {
  await using f = await setupK8s({ server: { rbacNamespace: "ml" }, noStart: true });
  await f.source.start(() => {});
  assert.equal(f.source.health().synced, false);
  assert.match(f.source.health().problem!, /HTTP 403.*pass --namespace/);
  assert.ok(f.telemetry.count("sourceError:kubernetes:forbidden") >= 1);
});

Deno.test("k8s source: --allowed-namespaces ignores annotations elsewhere", async () => {
  await using f = await setupK8s({ source: { allowedNamespaces: ["ml"] } });
  const a = f.server.addPod({ name: "a", namespace: "ml", annotations: { [KEY]: "250" } });
  const b = f.server.addPod({ name: "b", namespace: "rogue", annotations: { [KEY]: "200" } });
  await f.runProcess(1800, a.metadata.uid, 0);
  await f.runProcess(1801, b.metadata.uid, 1);
  await waitFor(() => f.source.stats().pods === 2, "pods seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  assert.equal(f.source.stats().pendingPods, 0, "ignored annotations are not probed");
});

Deno.test("k8s source: --min-watts/--max-watts bound requests", async () => {
  await using f = await setupK8s({ source: { minMw: 300_000, maxMw: 400_000 } });
  const a = f.server.addPod({ name: "a", namespace: "ml", annotations: { [KEY]: "250" } });
  const b = f.server.addPod({ name: "b", namespace: "ml", annotations: { [KEY]: "450" } });
  await f.runProcess(1900, a.metadata.uid, 0);
  await f.runProcess(1901, b.metadata.uid, 1);
  await waitFor(() => f.source.stats().pods === 2, "pods seen");
  assert.deepEqual(f.caps(), { [GPU0]: 300_000, [GPU1]: 400_000 });
});

Deno.test("k8s source: stop() closes the watch and is idempotent", async () => {
  await using f = await setupK8s();
  await waitFor(() => f.server.activeWatches === 1, "watch open");
  await f.source.stop();
  await f.source.stop();
  await waitFor(() => f.server.activeWatches === 0, "watch closed");
});

Deno.test("k8s source: Events come from outcomes — nothing from desired() or a dry run; CapNotApplied on failure", async () => {
  await using f = await setupK8s();
  const pod = f.server.addPod({ name: "p", namespace: "ml", annotations: { [KEY]: "250" } });
  await f.runProcess(2000, pod.metadata.uid, 0);
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  f.source.desired(f.views());
  // A dry run: the loop over a read-only journal plans the 250 W cap but never reports it.
  const dryRun = new ReconcileLoop(f.gpu, f.source, {
    journal: loadJournal(`${f.dir}/state`, { readOnly: true }),
    intervalMs: 60_000,
    printPlan: () => {},
  });
  assert.equal(dryRun.runOnce().gpus[0].summary, "would set 700 W → 250 W (pod ml/p)");
  await f.source.flushEvents();
  assert.equal(f.server.counters.events, 0, "a decision or a dry run posts nothing");

  f.gpu.failOn(0, "setLimit", "NO_PERMISSION");
  f.caps();
  await f.source.flushEvents();
  assert.deepEqual(f.server.events.map((e) => e.reason), ["CapNotApplied"]);
  assert.match(String(f.server.events[0].message), /250 W not applied to GPU 0 .*NO_PERMISSION/);
  f.caps();
  await f.source.flushEvents();
  assert.equal(f.server.events.length, 1, "deduplicated while the failure stays the same");
  f.gpu.clearFailures();
  f.caps();
  await f.source.flushEvents();
  assert.deepEqual(f.server.events.map((e) => e.reason), ["CapNotApplied", "CapApplied"]);
});
