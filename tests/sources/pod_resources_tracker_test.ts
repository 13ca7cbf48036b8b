import assert from "node:assert/strict";
import { createPodResourcesClient, type PodAllocation } from "../../src/sources/pod_resources.ts";
import { PodResourcesTracker } from "../../src/sources/pod_resources_tracker.ts";
import { gpuPod, startKubeletPodResourcesServer } from "../helpers/kubelet_pod_resources_server.ts";

const GPU0 = "GPU-00000000-0000-0000-0000-000000000000";
const GPU1 = "GPU-00000000-0000-0000-0000-000000000001";
const FAST = { resyncMs: 0, retryDelaysMs: [5, 10, 20, 40] };

/** A client whose answers the test scripts: a list of pods, or an error to throw. */
class ScriptedClient {
  readonly socketPath = "/scripted/kubelet.sock";
  answer: PodAllocation[] | Error = [];
  lists = 0;
  /** Set to hold the next List until `release` is called. */
  gate: Promise<void> | null = null;

  /** Answers used once each, before `answer`. */
  sequence: (PodAllocation[] | Error)[] = [];

  async list(): Promise<PodAllocation[]> {
    this.lists++;
    const answer = this.sequence.shift() ?? this.answer;
    if (this.gate) await this.gate;
    if (answer instanceof Error) throw answer;
    return structuredClone(answer);
  }
}

Deno.test("a failing kubelet freezes the last good allocations and shows in health", async () => {
  const client = new ScriptedClient();
  const changes: (readonly PodAllocation[])[] = [];
  let now = 1_000;
  const tracker = new PodResourcesTracker(client, {
    ...FAST,
    onChange: (a) => changes.push(a),
    now: () => now,
  });
  assert.deepEqual(tracker.health(), {
    synced: false,
    lastSuccessMs: null,
    problem: null,
    consecutiveFailures: 0,
  });
  client.answer = [gpuPod("ml", "a", [GPU0])];
  assert.equal(await tracker.start(), true);
  assert.deepEqual(tracker.allocations(), [gpuPod("ml", "a", [GPU0])]);
  assert.equal(changes.length, 1);

  now = 2_000;
  client.answer = new Error("connect ECONNREFUSED");
  assert.equal(await tracker.refresh(), false);
  assert.equal(await tracker.refresh(), false);
  assert.deepEqual(tracker.allocations(), [gpuPod("ml", "a", [GPU0])], "frozen");
  assert.deepEqual(tracker.health(), {
    synced: true,
    lastSuccessMs: 1_000,
    problem: "connect ECONNREFUSED",
    consecutiveFailures: 2,
  });
  assert.equal(changes.length, 1, "a failure is no change");

  now = 3_000;
  client.answer = [gpuPod("ml", "a", [GPU0])];
  assert.equal(await tracker.refresh(), true);
  assert.equal(changes.length, 1, "the same answer again is no change");
  assert.deepEqual(tracker.health(), {
    synced: true,
    lastSuccessMs: 3_000,
    problem: null,
    consecutiveFailures: 0,
  });
  client.answer = [gpuPod("ml", "a", [GPU0]), gpuPod("ml", "b", [GPU0])];
  await tracker.refresh();
  assert.equal(changes.length, 2);
  assert.deepEqual(changes[1], client.answer);
  tracker.stop();
});

Deno.test("refresh(pod) lists again until the pod's devices appear, then stops", async () => {
  const client = new ScriptedClient();
  const tracker = new PodResourcesTracker(client, FAST);
  await tracker.start();
  const pod = { namespace: "ml", name: "new" };
  // Not admitted yet, then admitted without devices, then allocated.
  client.sequence = [
    [],
    [{ namespace: "ml", name: "new", containers: [{ name: "main", devices: [] }] }],
    [gpuPod("ml", "new", [GPU1])],
  ];
  assert.equal(await tracker.refresh(pod), true);
  const lists = client.lists;
  assert.equal(lists, 1 + 3);
  client.answer = [gpuPod("ml", "new", [GPU1])];
  assert.equal(await tracker.refresh(pod), true);
  assert.equal(client.lists, lists + 1, "already there: one List");
  tracker.stop();
});

Deno.test("refresh(pod) gives up after the retry delays; stop ends a wait at once", async () => {
  const client = new ScriptedClient();
  const tracker = new PodResourcesTracker(client, FAST);
  await tracker.start();
  assert.equal(await tracker.refresh({ namespace: "ml", name: "cpu-only" }), false);
  assert.equal(client.lists, 1 + 1 + FAST.retryDelaysMs.length);
  const slow = new PodResourcesTracker(client, { resyncMs: 0, retryDelaysMs: [60_000] });
  const waiting = slow.refresh({ namespace: "ml", name: "cpu-only" });
  await new Promise((resolve) => setTimeout(resolve, 5));
  slow.stop();
  assert.equal(await waiting, false);
  tracker.stop();
});

Deno.test("refresh(pod) against a failing kubelet: one List, no retries of its own", async () => {
  const client = new ScriptedClient();
  client.answer = new Error("no socket at /scripted/kubelet.sock");
  const tracker = new PodResourcesTracker(client, FAST);
  await tracker.start();
  const lists = client.lists;
  assert.equal(await tracker.refresh({ namespace: "ml", name: "a" }), false);
  assert.equal(client.lists, lists + 1, "each GPU pod event would otherwise repeat the failure");
  // Back: the pod's retries run again until its devices appear.
  client.answer = [];
  client.sequence = [[], [gpuPod("ml", "a", [GPU0])]];
  assert.equal(await tracker.refresh({ namespace: "ml", name: "a" }), true);
  assert.equal(client.lists, lists + 3);
  tracker.stop();
});

Deno.test("refreshes during a List share one List that starts after it", async () => {
  const client = new ScriptedClient();
  const tracker = new PodResourcesTracker(client, FAST);
  let release!: () => void;
  client.gate = new Promise((resolve) => release = resolve);
  const first = tracker.refresh();
  const second = tracker.refresh();
  const third = tracker.refresh();
  assert.equal(client.lists, 1);
  client.gate = null;
  release();
  assert.deepEqual(await Promise.all([first, second, third]), [true, true, true]);
  assert.equal(client.lists, 2, "one List in flight, one shared List after it");
  tracker.stop();
});

Deno.test("the safety-net List runs periodically and picks up changes", async () => {
  const client = new ScriptedClient();
  const changes: number[] = [];
  const tracker = new PodResourcesTracker(client, {
    resyncMs: 10,
    onChange: (a) => changes.push(a.length),
  });
  await tracker.start();
  client.answer = [gpuPod("ml", "a", [GPU0])];
  const deadline = Date.now() + 5_000;
  while (changes.length < 2 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  tracker.stop();
  assert.deepEqual(changes, [0, 1]);
  const lists = client.lists;
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(client.lists, lists, "stopped");
});

Deno.test("against the test kubelet: restart, refusal and hang freeze; then it resumes", async () => {
  await using kubelet = await startKubeletPodResourcesServer([gpuPod("ml", "a", [GPU0])]);
  const client = createPodResourcesClient({ socketPath: kubelet.socketPath, timeoutMs: 200 });
  const tracker = new PodResourcesTracker(client, FAST);
  assert.equal(await tracker.start(), true);
  const before = tracker.allocations();

  await kubelet.stop({ graceful: true });
  assert.equal(await tracker.refresh(), false, "absent socket");
  assert.match(tracker.health().problem!, /no socket/);
  await kubelet.start();
  await kubelet.stop({ leaveSocket: true });
  assert.equal(await tracker.refresh(), false, "refused");
  await kubelet.start();
  await kubelet.hang();
  assert.equal(await tracker.refresh(), false, "hang");
  assert.match(tracker.health().problem!, /no answer within 200 ms/);
  assert.equal(tracker.allocations(), before, "frozen through all three");
  assert.equal(tracker.health().consecutiveFailures, 3);

  await kubelet.hang(false);
  await kubelet.setPods([gpuPod("ml", "a", [GPU0]), gpuPod("ml", "b", [GPU1])]);
  assert.equal(await tracker.refresh({ namespace: "ml", name: "b" }), true);
  assert.equal(tracker.allocations().length, 2);
  assert.equal(tracker.health().problem, null);
  tracker.stop();
});

Deno.test("a throwing onChange listener neither rejects a refresh nor stops the tracker", async () => {
  const client = new ScriptedClient();
  let calls = 0;
  const tracker = new PodResourcesTracker(client, {
    ...FAST,
    onChange: () => {
      calls++;
      throw new Error("listener bug");
    },
  });
  assert.equal(await tracker.start(), true);
  client.answer = [gpuPod("ml", "a", [GPU0])];
  assert.equal(await tracker.refresh(), true);
  assert.equal(calls, 2);
  assert.equal(tracker.allocations().length, 1);
  tracker.stop();
});
