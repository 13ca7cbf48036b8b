import assert from "node:assert/strict";
import { NodePolicyCapSource } from "../../src/sources/node_policy_source.ts";
import { createFileCapSource } from "../../src/sources/file.ts";
import type { GpuView } from "../../src/sources/cap_source.ts";
import { FakeCapSource } from "../reconcile/fakes.ts";

function view(index: number): GpuView {
  return {
    index,
    uuid: `GPU-${index}`,
    name: "NVIDIA H100 80GB HBM3",
    pciBusId: `00000000:1${index}:00.0`,
    defaultMw: 700_000,
    minMw: 200_000,
    maxMw: 700_000,
    pids: null,
  };
}

Deno.test("node policy source: pods' caps under the policy, the file's budget, reload, delegation", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/node-policy.yaml`;
  await Deno.writeTextFile(
    path,
    "version: 1\ndefault: {watts: 300}\ngpus:\n  - {index: 0, watts: 450}\nbudget: {watts: 1000}\n",
  );
  const pods = new FakeCapSource(
    new Map([["GPU-0", { mw: 600_000, reason: "pod ml/a", kind: "pod" as const }]]),
  );
  const source = new NodePolicyCapSource({ pods, policy: createFileCapSource(path) });
  let changes = 0;
  await source.start(() => changes++);
  try {
    assert.equal(source.name, "fake");
    const desired = source.desired([view(0), view(1)])!;
    assert.equal(desired.get("GPU-0")?.mw, 450_000, "node ceiling below the pod's 600 W");
    assert.match(desired.get("GPU-0")!.reason, /^node ceiling 450 W/);
    assert.equal(desired.get("GPU-1")?.mw, 300_000, "node default for a GPU no pod asks for");
    assert.deepEqual(source.budget(), { budgetMw: 1_000_000, source: "caps-file" });
    assert.equal(source.health().synced, true);

    // The pods' source not synced: change nothing.
    pods.caps = null;
    assert.equal(source.desired([view(0)]), null);
    assert.equal(source.health().synced, false);
    pods.caps = new Map();

    // An invalid reload keeps the last good policy; the problem is the source's problem.
    await Deno.writeTextFile(path, "version: 1\nbudget: {watts: -5}\n");
    await source.reload();
    assert.deepEqual(source.budget(), { budgetMw: 1_000_000, source: "caps-file" });
    assert.match(source.health().problem ?? "", /^node policy: /);
    await Deno.writeTextFile(path, "version: 1\n");
    await source.reload();
    assert.deepEqual(source.budget(), { budgetMw: null, source: null });
    assert.equal(source.health().problem, undefined);
    assert.ok(changes >= 1, "a good reload triggers a pass");

    source.report([]);
    assert.equal(pods.reported.length, 1, "report goes to the pods' source");
  } finally {
    await source.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("node policy source: forwards what the pods' source needs observed, read live", () => {
  const health = { synced: true, lastSuccessMs: 1, problem: null, consecutiveFailures: 0 };
  class PodResourcesPods extends FakeCapSource {
    readonly needsPids = false;
    mig = false;
    get needsMigDevices(): boolean {
      return this.mig;
    }
    podResourcesHealth() {
      return health;
    }
  }
  const pods = new PodResourcesPods(new Map());
  const source = new NodePolicyCapSource({ pods });
  assert.equal(source.needsPids, false, "pod-resources mapping: no PIDs read");
  assert.equal(source.needsMigDevices, false);
  pods.mig = true;
  assert.equal(source.needsMigDevices, true, "MIG devices appear while running");
  assert.equal(source.podResourcesHealth(), health);
  const plain = new NodePolicyCapSource({ pods: new FakeCapSource(new Map()) });
  assert.equal(plain.podResourcesHealth(), null);
});
