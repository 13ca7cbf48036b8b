/**
 * The Kubernetes source with the kubelet's PodResources: pods map to the GPUs they were
 * allocated (`pod-resources`), or to those and the GPUs their processes run on (`auto`); a
 * failing kubelet freezes the allocations and shows in health.
 */
import assert from "node:assert/strict";
import { configureLogging, resetLogging } from "../../src/cli/logging.ts";
import type { PodAllocation } from "../../src/sources/pod_resources.ts";
import type { PodResourcesOptions } from "../../src/sources/kubernetes.ts";
import { GPU0, GPU1, KEY, SAFE_MW, setupK8s, waitFor } from "./k8s_test_support.ts";
import { gpuPod } from "../helpers/kubelet_pod_resources_server.ts";

const GPU_LIMITS = { "nvidia.com/gpu": "1" };

/** A PodResources client the test drives: its pods, failures and a List counter. */
function fakeKubelet(pods: PodAllocation[] = []) {
  const kubelet = {
    pods,
    failure: null as string | null,
    lists: 0,
    client: {
      socketPath: "/fake/kubelet.sock",
      list: () => {
        kubelet.lists++;
        if (kubelet.failure !== null) return Promise.reject(new Error(kubelet.failure));
        return Promise.resolve(structuredClone(kubelet.pods));
      },
    },
  };
  return kubelet;
}

function podResources(kubelet: ReturnType<typeof fakeKubelet>): PodResourcesOptions {
  return {
    client: kubelet.client,
    resyncMs: 60_000,
    retryDelaysMs: [5, 5, 10],
    failureRetryMs: 10,
  };
}

async function captureLogs<T>(fn: (lines: string[]) => Promise<T>): Promise<T> {
  const lines: string[] = [];
  configureLogging({ level: "info", format: "text", sink: (line) => lines.push(line) });
  try {
    return await fn(lines);
  } finally {
    resetLogging();
  }
}

Deno.test("pod-resources: an annotated pod allocated a GPU is capped with no process on it", async () => {
  const kubelet = fakeKubelet([gpuPod("ml", "llm-0", [GPU0])]);
  await using f = await setupK8s({
    source: { podGpuMapping: "pod-resources", podResources: podResources(kubelet) },
  });
  assert.equal(f.source.needsPids, false, "no PIDs are read");
  assert.equal(f.source.needsMigDevices, false, "no MIG device allocated: none read");
  f.server.addPod({ name: "llm-0", namespace: "ml", annotations: { [KEY]: "250" } });
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  assert.equal(f.gpu.calls.computePids, 0, "no PIDs read");
  assert.equal(f.source.stats().probing, false, "nothing to probe without processes");
  // A process of the pod on the other GPU is not seen in this mode.
  const uid = f.server.getPod("ml", "llm-0")!.metadata.uid;
  await f.runProcess(100, uid, 1);
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
});

Deno.test("pod-resources: desired() is null until the kubelet first answers; the problem is told", async () => {
  const kubelet = fakeKubelet([gpuPod("ml", "llm-0", [GPU0])]);
  kubelet.failure = "PodResources List on /fake/kubelet.sock failed: connect ENOENT";
  await using f = await setupK8s({
    source: { podGpuMapping: "pod-resources", podResources: podResources(kubelet) },
  });
  f.server.addPod({ name: "llm-0", namespace: "ml", annotations: { [KEY]: "250" } });
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.equal(f.source.desired(f.views()), null, "nothing known: change nothing");
  const health = f.source.health();
  assert.equal(health.synced, false);
  assert.match(health.problem ?? "", /kubelet PodResources: .*ENOENT/);
  assert.equal(f.source.podResourcesHealth()?.synced, false);
  kubelet.failure = null;
  await waitFor(() => f.source.health().synced, "kubelet answered (retried after a failure)");
  assert.equal(f.source.health().problem, undefined);
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
});

Deno.test("time-slicing: a second pod allocated the same GPU without the annotation → safe default", async () => {
  const kubelet = fakeKubelet([gpuPod("ml", "llm-0", [`${GPU0}::0`])]);
  await using f = await setupK8s({
    source: { podGpuMapping: "pod-resources", podResources: podResources(kubelet) },
  });
  f.server.addPod({
    name: "llm-0",
    namespace: "ml",
    annotations: { [KEY]: "250" },
    limits: GPU_LIMITS,
  });
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });

  // The kubelet admits a replica on the same GPU; its pod event makes the source List again.
  kubelet.pods = [...kubelet.pods, gpuPod("batch", "job-1", [`${GPU0}::1`])];
  const changes = f.changes();
  const lists = kubelet.lists;
  f.server.addPod({ name: "job-1", namespace: "batch", limits: GPU_LIMITS });
  await waitFor(() => kubelet.lists > lists && f.changes() > changes, "List and a pass");
  assert.deepEqual(f.caps(), { [GPU0]: SAFE_MW });

  // It goes away: the pod is dropped (informer), the kubelet is asked again.
  const before = kubelet.lists;
  kubelet.pods = kubelet.pods.slice(0, 1);
  f.server.deletePod("batch", "job-1");
  await waitFor(() => kubelet.lists > before, "List after the deletion");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
});

Deno.test("pod event: the kubelet is asked until the pod's devices appear; non-GPU pods cost no List", async () => {
  const kubelet = fakeKubelet();
  await using f = await setupK8s({
    source: { podGpuMapping: "pod-resources", podResources: podResources(kubelet) },
  });
  const lists = kubelet.lists;
  f.server.addPod({ name: "web", namespace: "ml", annotations: { [KEY]: "250" } });
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(kubelet.lists, lists, "a pod requesting no GPU: no List");

  f.server.addPod({
    name: "llm-0",
    namespace: "ml",
    annotations: { [KEY]: "300" },
    limits: { "nvidia.com/mig-1g.10gb": "1" },
  });
  await waitFor(() => kubelet.lists >= lists + 2, "Lists while the devices are not reported");
  // The device plugin allocates a MIG device of GPU 1: it maps to its parent.
  f.gpu.setMigDeviceUuids(1, ["MIG-aaaa-1111"]);
  kubelet.pods = [gpuPod("ml", "llm-0", ["MIG-aaaa-1111"], "nvidia.com/mig-1g.10gb")];
  await waitFor(() => f.source.stats().podResources?.pods === 1, "devices seen");
  assert.equal(f.source.needsMigDevices, true, "a MIG device is allocated: read them");
  assert.deepEqual(f.caps(), { [GPU1]: 300_000 });
  const settled = kubelet.lists;
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(kubelet.lists, settled, "no more Lists once the devices are known");
});

Deno.test("unknown device IDs: warned once, nothing applied; pods the informer lacks are ignored", async () => {
  const kubelet = fakeKubelet([
    gpuPod("ml", "llm-0", ["GPU-not-on-this-node"]),
    gpuPod("ml", "ghost", [GPU1]),
  ]);
  await captureLogs(async (lines) => {
    await using f = await setupK8s({
      source: { podGpuMapping: "pod-resources", podResources: podResources(kubelet) },
    });
    f.server.addPod({ name: "llm-0", namespace: "ml", annotations: { [KEY]: "250" } });
    await waitFor(() => f.source.stats().pods === 1, "pod seen");
    assert.deepEqual(f.caps(), {}, "nothing applied");
    assert.deepEqual(f.caps(), {});
    const warnings = lines.filter((l) => l.includes("GPU-not-on-this-node"));
    assert.equal(warnings.length, 1, lines.join("\n"));
    assert.match(warnings[0], /ml\/llm-0.*none of the GPUs/);
  });
});

Deno.test("auto: a GPU's pods are those allocated it plus those whose processes run on it", async () => {
  const kubelet = fakeKubelet([gpuPod("ml", "llm-0", [GPU0])]);
  await using f = await setupK8s({
    source: { podGpuMapping: "auto", podResources: podResources(kubelet) },
  });
  assert.equal(f.source.needsPids, true);
  f.server.addPod({ name: "llm-0", namespace: "ml", annotations: { [KEY]: "250" } });
  // Requests no GPU, uses them all (NVIDIA_VISIBLE_DEVICES=all): only its process shows it.
  const sneaky = f.server.addPod({ name: "sneaky", namespace: "ml" });
  await waitFor(() => f.source.stats().pods === 2, "pods seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  await f.runProcess(200, sneaky.metadata.uid, 0);
  assert.deepEqual(f.caps(), { [GPU0]: SAFE_MW }, "co-tenant without annotation → safe default");
});

Deno.test("auto: a kubelet that never answers is no problem; processes map pods", async () => {
  const kubelet = fakeKubelet();
  kubelet.failure = "connect ENOENT";
  await captureLogs(async (lines) => {
    await using f = await setupK8s({
      source: { podGpuMapping: "auto", podResources: podResources(kubelet) },
    });
    const pod = f.server.addPod({ name: "llm-0", namespace: "ml", annotations: { [KEY]: "250" } });
    await f.runProcess(100, pod.metadata.uid, 1);
    await waitFor(() => f.source.stats().pods === 1, "pod seen");
    assert.deepEqual(f.caps(), { [GPU1]: 250_000 });
    assert.equal(f.source.health().problem, undefined);
    assert.equal(f.source.health().synced, true);
    await waitFor(() => kubelet.lists >= 3, "asked again, backing off");
    const hints = lines.filter((l) => l.includes("not usable"));
    assert.equal(hints.length, 1, lines.join("\n"));
    assert.match(hints[0], /processes only/);
    assert.equal(lines.filter((l) => l.includes("Cannot list the kubelet")).length, 0);
  });
});

Deno.test("a failing kubelet freezes the allocations (caps kept) and shows in health until it answers", async () => {
  const kubelet = fakeKubelet([gpuPod("ml", "llm-0", [GPU0])]);
  let now = 1_000_000;
  await using f = await setupK8s({
    source: {
      podGpuMapping: "pod-resources",
      podResources: podResources(kubelet),
      clock: {
        now: () => now,
        setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms) as unknown as number,
        clearTimeout: (id: number) => clearTimeout(id),
      },
    },
  });
  f.server.addPod({ name: "llm-0", namespace: "ml", annotations: { [KEY]: "250" } });
  await waitFor(() => f.source.stats().pods === 1, "pod seen");
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 });
  const writes = f.gpu.calls.setLimit;

  kubelet.failure = "PodResources List failed: the kubelet is not answering";
  kubelet.pods = [];
  now += 5_000;
  // A pod event makes the source List: it fails, and nothing changes.
  f.server.addPod({ name: "other", namespace: "ml", limits: GPU_LIMITS });
  await waitFor(() => f.source.health().problem !== undefined, "problem seen");
  assert.match(f.source.health().problem!, /^kubelet PodResources: .*not answering/);
  assert.equal(f.source.health().lastSuccessMs, 1_000_000, "stale since the last answer");
  assert.equal(f.source.podResourcesHealth()?.problem?.includes("not answering"), true);
  assert.deepEqual(f.caps(), { [GPU0]: 250_000 }, "caps frozen");
  assert.equal(f.gpu.calls.setLimit, writes, "no write while the kubelet is down");

  kubelet.failure = null;
  await waitFor(() => f.source.health().problem === undefined, "answers again");
  assert.deepEqual(f.caps(), {}, "then the new answer applies (the pod was not allocated)");
});
