/**
 * Conformance of the in-test API server (tests/helpers/k8s_api_server.ts): the reference
 * client, `@kubernetes/client-node`'s own `Watch`, `makeInformer` and `CoreV1Api` (run here, in
 * the test process; the agent never loads the library), is pointed at it. If the reference
 * client lists, watches from the list's resourceVersion, sees bookmarks and relists after
 * 410 Gone against this server, the server speaks the protocol the agent is tested with.
 *
 * Under Deno 2.9.6 the library works for this (its `undici` fetch and `node:readline` line
 * splitting), with one defect found while writing these tests: when a watch ends abnormally —
 * the connection is dropped mid-stream (`server.dropWatches()`), or the caller aborts the
 * controller `Watch.watch()` returns — the connection closes but the library never calls its
 * `done` callback (Readable.fromWeb over undici's failed body emits neither "error" nor
 * "close"), so its informer would never reconnect. These tests therefore end watches the normal
 * way (`endWatches()`, an ERROR 410 event, HTTP 410). (Not compared with Node: the library's
 * undici 8 needs Node >= 22; the machine has 20.) Two differences from the agent are the
 * library's own rules: it needs `skipTLSVerify` for an `http://` server (kubectl does not), and
 * `ListWatch` never asks for bookmarks (`allowWatchBookmarks` is not in its query), so bookmarks
 * are checked with `Watch` directly.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  CoreV1Api,
  KubeConfig,
  makeInformer,
  type V1Pod,
  type V1PodList,
  Watch,
} from "@kubernetes/client-node";
import { type FakeApiServer, startFakeApiServer } from "../helpers/k8s_api_server.ts";

function kubeConfigFor(server: FakeApiServer): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: "fake", server: server.url, skipTLSVerify: true }],
    users: [{ name: "agent", token: server.token }],
    contexts: [{ name: "fake", cluster: "fake", user: "agent" }],
    currentContext: "fake",
  });
  return kc;
}

async function until(what: string, predicate: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

Deno.test("conformance: client-node's informer lists, watches from the list's resourceVersion, and relists after 410", async () => {
  const server = await startFakeApiServer();
  const kc = kubeConfigFor(server);
  const api = kc.makeApiClient(CoreV1Api);
  const seen: string[] = [];
  const informer = makeInformer<V1Pod>(
    kc,
    "/api/v1/pods",
    () => api.listPodForAllNamespaces({ fieldSelector: "spec.nodeName=node-a" }),
  );
  const errors: unknown[] = [];
  informer.on("add", (pod) => seen.push(`add ${pod.metadata?.name}`));
  informer.on("update", (pod) => seen.push(`update ${pod.metadata?.name}`));
  informer.on("delete", (pod) => seen.push(`delete ${pod.metadata?.name}`));
  informer.on("error", (error) => errors.push(error));
  try {
    server.addPod({ name: "before", namespace: "ml" });
    const listedAt = server.resourceVersion;
    await informer.start();
    await until("the initial list and watch", () => server.activeWatches === 1);
    assert.deepEqual(seen, ["add before"]);
    assert.equal(server.counters.lists, 1);
    const watch = server.requests.find((r) => r.kind === "watch")!;
    assert.equal(watch.query.watch, "true");
    assert.equal(watch.query.resourceVersion, String(listedAt));

    server.addPod({ name: "during", namespace: "ml" });
    server.setAnnotation("ml", "before", "dynamo.nvidia.com/gpu-power-limit", "300");
    server.deletePod("ml", "during");
    await until("watch events", () => seen.length === 4);
    assert.deepEqual(seen, ["add before", "add during", "update before", "delete during"]);
    assert.equal(
      informer.get("before", "ml")?.metadata?.annotations?.[
        "dynamo.nvidia.com/gpu-power-limit"
      ],
      "300",
    );

    // 410 Gone on the open watch: the informer forgets its resourceVersion and lists again;
    // a change made while it was away is seen through the relist.
    server.expireWatches();
    server.addPod({ name: "after-gone", namespace: "ml" });
    await until("the relist", () => server.counters.lists === 2 && server.activeWatches === 1);
    await until("the pod added while away", () => seen.includes("add after-gone"));
    assert.deepEqual(errors, []);
  } finally {
    await informer.stop();
    await server.close();
  }
});

Deno.test("conformance: client-node's Watch gets bookmarks when it asks, and HTTP 410 for a compacted resourceVersion", async () => {
  const server = await startFakeApiServer({ goneAs: "http" });
  const kc = kubeConfigFor(server);
  const watch = new Watch(kc);
  try {
    server.addPod({ name: "p", namespace: "ml" });
    const events: Array<{ type: string; rv?: string }> = [];
    const ended = Promise.withResolvers<unknown>();
    await watch.watch(
      "/api/v1/pods",
      { allowWatchBookmarks: true, resourceVersion: String(server.resourceVersion) },
      (type: string, object: V1Pod) => events.push({ type, rv: object.metadata?.resourceVersion }),
      (error: unknown) => ended.resolve(error),
    );
    await until("the watch", () => server.activeWatches === 1);
    server.bookmark();
    await until("the bookmark", () => events.length === 1);
    assert.deepEqual(events, [{ type: "BOOKMARK", rv: String(server.resourceVersion) }]);
    // The server ends the stream normally (as at timeoutSeconds): the library reports the end.
    // Not dropWatches() or aborting: under Deno the library never reports those (see above).
    server.endWatches();
    assert.equal(await ended.promise, null);

    const old = server.resourceVersion;
    server.addPod({ name: "q", namespace: "ml" });
    server.compact();
    const gone = Promise.withResolvers<unknown>();
    await watch.watch(
      "/api/v1/pods",
      { resourceVersion: String(old) },
      () => {},
      (error: unknown) => gone.resolve(error),
    );
    const error = await gone.promise as { statusCode?: number };
    assert.equal(error?.statusCode, 410);

    // A list through the library's generated API parses what the fake returns.
    const list: V1PodList = await kc.makeApiClient(CoreV1Api).listNamespacedPod({
      namespace: "ml",
    });
    assert.deepEqual(list.items.map((p) => p.metadata?.name).sort(), ["p", "q"]);
  } finally {
    await server.close();
  }
});
