import assert from "node:assert/strict";
import { applyNodePolicy } from "../../src/policy/node_policy.ts";
import { parseCapsFile } from "../../src/sources/caps_file.ts";
import type { DesiredCaps, GpuView } from "../../src/sources/cap_source.ts";

const H100 = "NVIDIA H100 80GB HBM3";
const A100 = "NVIDIA A100-SXM4-40GB";

function gpu(index: number, name = H100, defaultMw = 700_000): GpuView {
  return {
    index,
    uuid: `GPU-${index}`,
    name,
    pciBusId: `00000000:1${index}:00.0`,
    defaultMw,
    minMw: 100_000,
    maxMw: defaultMw,
    pids: null,
  };
}

const gpus = [gpu(0), gpu(1), gpu(2, A100, 400_000), gpu(3)];

function parse(yaml: string) {
  return parseCapsFile(yaml, { path: "/etc/gpu-power-agent/node-policy.yaml" });
}

function pods(entries: Record<string, number>): DesiredCaps {
  return new Map(
    Object.entries(entries).map(([uuid, watts]) => [
      uuid,
      { mw: watts * 1000, reason: `pod default/p-${uuid}`, kind: "pod" as const },
    ]),
  );
}

Deno.test("a pod asking above the rule's ceiling gets the ceiling, reason 'node ceiling'", async () => {
  const spec = await parse("version: 1\ngpus:\n  - {index: 0, watts: 450}\n");
  const result = applyNodePolicy(spec, { gpus, podCaps: pods({ "GPU-0": 600 }) });
  assert.deepEqual(result.desired?.get("GPU-0"), {
    mw: 450_000,
    reason:
      "node ceiling 450 W (caps file rule gpus[0] (index 0)); pod default/p-GPU-0 asked 600 W",
    kind: "pod",
    // The pods are still told: what they asked, and that the node ceiling lowered it.
    askedMw: 600_000,
    notes: ["lowered to the node ceiling 450 W"],
  });
  assert.deepEqual(result.ceilings, [{
    uuid: "GPU-0",
    requestedMw: 600_000,
    ceilingMw: 450_000,
    requestReason: "pod default/p-GPU-0",
    rule: "caps file rule gpus[0] (index 0)",
  }]);
});

Deno.test("a pod asking below or at the ceiling keeps its request", async () => {
  const spec = await parse("version: 1\ngpus:\n  - {name: 'NVIDIA H100*', watts: 450}\n");
  const podCaps = pods({ "GPU-0": 300, "GPU-1": 450 });
  const result = applyNodePolicy(spec, { gpus: gpus.slice(0, 2), podCaps });
  assert.deepEqual(result.desired?.get("GPU-0"), podCaps.get("GPU-0"));
  assert.deepEqual(result.desired?.get("GPU-1"), podCaps.get("GPU-1"));
  assert.deepEqual(result.ceilings, []);
});

Deno.test("the default applies only to GPUs no pod asks for, never to pods", async () => {
  const spec = await parse("version: 1\ndefault: {watts: 300}\n");
  const result = applyNodePolicy(spec, { gpus, podCaps: pods({ "GPU-1": 650 }) });
  assert.equal(result.desired?.get("GPU-1")?.mw, 650_000);
  for (const uuid of ["GPU-0", "GPU-2", "GPU-3"]) {
    assert.deepEqual(result.desired?.get(uuid), {
      mw: 300_000,
      reason: "node default 300 W (caps file default)",
      kind: "file",
    });
  }
});

Deno.test("an idle GPU a rule matches gets min(default, rule), or the rule without a default", async () => {
  const withDefault = await parse(
    "version: 1\ndefault: {watts: 300}\ngpus:\n  - {index: 0, watts: 250}\n  - {index: 1, watts: 450}\n",
  );
  let desired = applyNodePolicy(withDefault, { gpus, podCaps: new Map() }).desired!;
  assert.deepEqual(desired.get("GPU-0"), {
    mw: 250_000,
    reason: "node ceiling 250 W (caps file rule gpus[0] (index 0)); no pod asks",
    kind: "file",
  });
  assert.equal(desired.get("GPU-1")?.mw, 300_000);
  assert.equal(desired.get("GPU-1")?.reason, "node default 300 W (caps file default)");

  const rulesOnly = await parse("version: 1\ngpus:\n  - {index: 1, watts: 450}\n");
  desired = applyNodePolicy(rulesOnly, { gpus, podCaps: new Map() }).desired!;
  assert.deepEqual([...desired.keys()], ["GPU-1"]);
  assert.equal(desired.get("GPU-1")?.mw, 450_000);
});

Deno.test("percent rules are a ceiling relative to each GPU's default limit; last rule wins", async () => {
  const spec = await parse(
    "version: 1\ngpus:\n  - {name: '*', percent: 50}\n  - {uuid: GPU-3, watts: 600}\n",
  );
  const result = applyNodePolicy(spec, {
    gpus,
    podCaps: pods({ "GPU-0": 400, "GPU-2": 250, "GPU-3": 650 }),
  });
  assert.equal(result.desired?.get("GPU-0")?.mw, 350_000);
  assert.equal(result.desired?.get("GPU-2")?.mw, 200_000);
  assert.equal(result.desired?.get("GPU-3")?.mw, 600_000);
  assert.equal(result.desired?.get("GPU-1")?.mw, 350_000);
  assert.deepEqual(result.ceilings.map((c) => [c.uuid, c.ceilingMw]), [
    ["GPU-0", 350_000],
    ["GPU-2", 200_000],
    ["GPU-3", 600_000],
  ]);
});

Deno.test("safe-default caps are ceilinged too and keep their kind", async () => {
  const spec = await parse("version: 1\ngpus:\n  - {index: 0, watts: 200}\n");
  const podCaps: DesiredCaps = new Map([["GPU-0", {
    mw: 250_000,
    reason: "safe default: pods disagree",
    kind: "safe-default" as const,
  }]]);
  const cap = applyNodePolicy(spec, { gpus, podCaps }).desired?.get("GPU-0");
  assert.equal(cap?.mw, 200_000);
  assert.equal(cap?.kind, "safe-default");
  assert.match(cap!.reason, /^node ceiling 200 W .*safe default: pods disagree asked 250 W$/);
});

Deno.test("an unsynced source (null) stays null; pod caps for unknown GPUs pass through", async () => {
  const spec = await parse("version: 1\ndefault: {watts: 300}\n");
  assert.deepEqual(applyNodePolicy(spec, { gpus, podCaps: null }), {
    desired: null,
    ceilings: [],
  });
  const podCaps = pods({ "GPU-gone": 500 });
  const desired = applyNodePolicy(spec, { gpus: [], podCaps }).desired!;
  assert.deepEqual([...desired], [...podCaps]);
});

Deno.test("the input map is not modified", async () => {
  const spec = await parse(
    "version: 1\ndefault: {watts: 300}\ngpus:\n  - {index: 0, watts: 100}\n",
  );
  const podCaps = pods({ "GPU-0": 600 });
  const before = structuredClone([...podCaps]);
  applyNodePolicy(spec, { gpus, podCaps });
  assert.deepEqual([...podCaps], before);
});
