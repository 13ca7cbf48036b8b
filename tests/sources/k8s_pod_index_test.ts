import assert from "node:assert/strict";
import { PodIndex, START_TIME_RECHECK_MS } from "../../src/sources/kubernetes_pod_index.ts";
import { readProcessStartTime, startTimeFromStat } from "../../src/sources/proc_stat.ts";
import type { KubePod } from "../../src/sources/kubernetes_informer.ts";

const KEY = "dynamo.nvidia.com/gpu-power-limit";
/** The two GPUs with the compute PIDs observed this pass (null: the query failed). */
const gpus = (pids0: number[] | null, pids1: number[] | null) => [
  { index: 0, uuid: "GPU-0", pids: pids0 },
  { index: 1, uuid: "GPU-1", pids: pids1 },
];

function pod(name: string, uid: string): KubePod {
  return {
    metadata: { name, namespace: "ns", uid, annotations: { [KEY]: "300" } },
    status: { phase: "Running" },
  };
}

function stat(pid: number, start: number): string {
  // Field 2 with spaces and parentheses, as a process may name itself; field 22 = start.
  const rest = Array.from({ length: 50 }, (_, i) => (i === 18 ? String(start) : "0"));
  return `${pid} (evil ) name) S ${rest.join(" ")}\n`;
}

async function runProcess(root: string, pid: number, uid: string, start: number) {
  await Deno.mkdir(`${root}/${pid}`, { recursive: true });
  await Deno.writeTextFile(
    `${root}/${pid}/cgroup`,
    `0::/kubepods.slice/kubepods-pod${uid.replaceAll("-", "_")}.slice/cri-containerd-x.scope\n`,
  );
  await Deno.writeTextFile(`${root}/${pid}/stat`, stat(pid, start));
}

const UID_A = "aaaaaaaa-0000-4000-8000-000000000001";
const UID_B = "bbbbbbbb-0000-4000-8000-000000000002";

Deno.test("pod index: a reused PID maps to the pod its new process runs in", async () => {
  const root = await Deno.makeTempDir();
  try {
    const index = new PodIndex(KEY);
    index.replace([pod("a", UID_A), pod("b", UID_B)]);
    await runProcess(root, 100, UID_A, 1111);
    const pids: number[][] = [[100], []];
    let nowMs = 0;
    const scan = () => index.scan(gpus(pids[0], pids[1]), { procRoot: root, nowMs });
    scan();
    assert.deepEqual([...index.gpusOf(UID_A)], ["GPU-0"]);
    // Same process: the cgroup file is not read again.
    await Deno.remove(`${root}/100/cgroup`);
    scan();
    assert.equal(index.cachedPids, 1);
    // Pod a's process exits; the kernel gives PID 100 to a process of pod b, on GPU 1 (after
    // the PID counter wrapped: not within a second).
    await runProcess(root, 100, UID_B, 2222);
    pids[0] = [];
    pids[1] = [100];
    nowMs += START_TIME_RECHECK_MS;
    scan();
    assert.deepEqual([...index.gpusOf(UID_B)], ["GPU-1"]);
    assert.ok(index.hasProcess(UID_B));
    assert.ok(!index.hasProcess(UID_A));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("pod index: a PID seen scan after scan is checked again once a second, not per scan", async () => {
  const root = await Deno.makeTempDir();
  try {
    const index = new PodIndex(KEY);
    index.replace([pod("a", UID_A), pod("b", UID_B)]);
    await runProcess(root, 100, UID_A, 1111);
    const scan = (nowMs: number, pids: number[]) =>
      index.scan(gpus(pids, []), { procRoot: root, nowMs });
    scan(0, [100]);
    // No /proc file is read within the second: a burst of passes costs no reads.
    await Deno.remove(`${root}/100`, { recursive: true });
    for (let t = 0; t < START_TIME_RECHECK_MS; t += 100) scan(t, [100]);
    assert.equal(index.cachedPids, 1);
    assert.deepEqual([...index.gpusOf(UID_A)], ["GPU-0"]);
    // A second later the start time is read again: the process is gone, so is its entry.
    scan(START_TIME_RECHECK_MS, [100]);
    assert.equal(index.cachedPids, 0);
    // A PID that left the list for one scan is read afresh at once, whatever the time.
    await runProcess(root, 200, UID_A, 1);
    scan(START_TIME_RECHECK_MS + 1, [200]);
    scan(START_TIME_RECHECK_MS + 2, []);
    await runProcess(root, 200, UID_B, 2);
    scan(START_TIME_RECHECK_MS + 3, [200]);
    assert.ok(index.hasProcess(UID_B));
    assert.ok(!index.hasProcess(UID_A));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("pod index: the PID cache holds only PIDs of the latest scan, even while a GPU fails", async () => {
  const root = await Deno.makeTempDir();
  try {
    const index = new PodIndex(KEY);
    index.replace([pod("a", UID_A)]);
    let next = 1000;
    for (let round = 0; round < 200; round++) {
      const pid = next++;
      await runProcess(root, pid, UID_A, pid * 10);
      const result = index.scan(gpus(null, [pid]), { procRoot: root, nowMs: round });
      assert.equal(result.failed.length, 1);
      await Deno.remove(`${root}/${pid}`, { recursive: true });
    }
    assert.equal(index.cachedPids, 1);
    assert.deepEqual([...index.gpusOf(UID_A)], ["GPU-1"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("proc stat: field 22 after the last parenthesis; bounded, never throws", async () => {
  assert.equal(startTimeFromStat(stat(7, 123456)), "123456");
  assert.equal(startTimeFromStat("garbage"), undefined);
  assert.equal(startTimeFromStat("1 (x) S 1 2"), undefined);
  const root = await Deno.makeTempDir();
  try {
    assert.equal(readProcessStartTime(root, 1), undefined);
    await Deno.mkdir(`${root}/2/stat`, { recursive: true });
    assert.equal(readProcessStartTime(root, 2), undefined, "a directory is not read");
    assert.match(readProcessStartTime("/proc", Deno.pid) ?? "", /^\d+$/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("pod index: annotatedPods follows LISTs and watch events; unannotated pods are not in it", () => {
  const index = new PodIndex(KEY);
  const plain = (name: string, uid: string): KubePod => ({
    metadata: { name, namespace: "ns", uid },
    status: { phase: "Running" },
  });
  const names = () => [...index.annotatedPods()].map((p) => p.name).sort();
  index.replace([pod("a", UID_A), plain("c", "c-uid")]);
  assert.deepEqual(names(), ["a"]);
  index.apply("ADDED", pod("b", UID_B));
  assert.deepEqual(names(), ["a", "b"]);
  index.apply("MODIFIED", plain("a", UID_A)); // annotation removed
  assert.deepEqual(names(), ["b"]);
  index.apply("MODIFIED", { ...pod("b", UID_B), status: { phase: "Succeeded" } });
  assert.deepEqual(names(), []);
  index.apply("MODIFIED", pod("c", "c-uid")); // annotation added
  assert.deepEqual(names(), ["c"]);
  index.apply("DELETED", pod("c", "c-uid"));
  assert.deepEqual(names(), []);
  assert.equal(index.size, 1);
});
