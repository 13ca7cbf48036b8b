import assert from "node:assert/strict";
import {
  decideGpuCap,
  type GpuDecision,
  type GpuPod,
  outcomeEvents,
  type SharedGpuPolicyOptions,
} from "../../src/policy/shared_gpu.ts";
import type { DesiredCap } from "../../src/policy/desired.ts";
import type { GpuOutcome } from "../../src/reconcile/report.ts";
import { parsePowerAnnotation } from "../../src/sources/annotation.ts";

const SAFE = 500_000;
const base: SharedGpuPolicyOptions = { safeDefaultMw: SAFE, gpuLabel: "GPU 0 (GPU-a)" };

function pod(name: string, value?: string, namespace = "ml"): GpuPod {
  return {
    namespace,
    name,
    uid: `uid-${namespace}-${name}`,
    annotation: parsePowerAnnotation(value),
  };
}

/** An outcome of `cap` on a 200–700 W GPU: held (default) or failed with `error`. */
function outcome(cap: DesiredCap | null, fields: Partial<GpuOutcome> = {}): GpuOutcome {
  const mw = cap?.mw ?? 700_000;
  const toMw = Math.min(Math.max(mw, 200_000), 700_000);
  return {
    uuid: "GPU-a",
    index: 0,
    name: "NVIDIA H100 80GB HBM3",
    action: cap ? "apply" : "none",
    fromMw: 700_000,
    toMw,
    requestedMw: cap ? mw : null,
    clamp: toMw > mw ? "up" : toMw < mw ? "down" : "none",
    reason: cap?.reason ?? "",
    ...(cap ? { desired: cap } : {}),
    desiredKind: cap?.kind ?? null,
    enforced: true,
    wanted: cap !== null,
    changed: cap !== null,
    summary: "",
    ...fields,
  };
}

/** The decision, with what its pods are told once the cap was set and holds. */
function decide(pods: readonly GpuPod[], options: SharedGpuPolicyOptions): GpuDecision {
  const d = decideGpuCap(pods, options);
  return { ...d, events: [...d.events, ...outcomeEvents(outcome(d.cap), "GPU 0 (GPU-a)")] };
}

function reasons(events: { reason: string; pod: { name: string } }[]): string[] {
  return events.map((e) => `${e.pod.name}:${e.reason}`).sort();
}

Deno.test("policy: no pods → unmanaged", () => {
  assert.deepEqual(decideGpuCap([], base), { cap: null, events: [], ignored: [] });
});

Deno.test("policy: pods without annotation → unmanaged", () => {
  const d = decide([pod("a"), pod("b")], base);
  assert.equal(d.cap, null);
  assert.deepEqual(d.events, []);
});

Deno.test("policy: single pod → its value", () => {
  const d = decide([pod("a", "250")], base);
  assert.deepEqual(d.cap, {
    mw: 250_000,
    reason: "pod ml/a",
    kind: "pod",
    pods: [{ namespace: "ml", name: "a", uid: "uid-ml-a" }],
    askedMw: 250_000,
  });
  assert.deepEqual(reasons(d.events), ["a:CapApplied"]);
  assert.match(d.events[0].message, /250 W.*GPU 0 \(GPU-a\)/);
  assert.equal(d.events[0].type, "Normal");
});

Deno.test("policy: two pods agree → that value", () => {
  const d = decide([pod("a", "250"), pod("b", "250.0")], base);
  assert.deepEqual(d.cap, {
    mw: 250_000,
    reason: "pods ml/a, ml/b",
    kind: "pod",
    pods: [
      { namespace: "ml", name: "a", uid: "uid-ml-a" },
      { namespace: "ml", name: "b", uid: "uid-ml-b" },
    ],
    askedMw: 250_000,
  });
  assert.deepEqual(reasons(d.events), ["a:CapApplied", "b:CapApplied"]);
});

Deno.test("policy: three pods agree → that value", () => {
  const d = decide([pod("a", "300"), pod("b", "300"), pod("c", "300")], base);
  assert.equal(d.cap?.mw, 300_000);
  assert.equal(d.cap?.kind, "pod");
});

Deno.test("policy: conflict → safe default naming the pods and values", () => {
  const d = decide([pod("a", "250"), pod("b", "300")], base);
  assert.equal(d.cap?.kind, "safe-default");
  assert.equal(d.cap?.mw, SAFE);
  assert.match(d.cap!.reason, /^safe default: pods disagree: ml\/a 250 W, ml\/b 300 W$/);
  assert.deepEqual(reasons(d.events), ["a:SafeDefaultApplied", "b:SafeDefaultApplied"]);
});

Deno.test("policy: three pods, one disagrees → safe default", () => {
  const d = decide([pod("a", "300"), pod("b", "300"), pod("c", "310")], base);
  assert.equal(d.cap?.kind, "safe-default");
});

Deno.test("policy: co-tenant without annotation → safe default (fail closed)", () => {
  const d = decide([pod("a", "250"), pod("b")], base);
  assert.equal(d.cap?.kind, "safe-default");
  assert.equal(d.cap?.mw, SAFE);
  assert.match(d.cap!.reason, /ml\/a ask for a cap but co-tenant ml\/b has no annotation/);
  assert.deepEqual(reasons(d.events), ["a:SafeDefaultApplied", "b:SafeDefaultApplied"]);
});

Deno.test("policy: invalid annotation alone → safe default + CapRejected", () => {
  const d = decide([pod("a", "250W")], base);
  assert.equal(d.cap?.kind, "safe-default");
  assert.match(d.cap!.reason, /invalid annotation on ml\/a/);
  assert.deepEqual(reasons(d.events), ["a:CapRejected", "a:SafeDefaultApplied"]);
  assert.equal(d.events.find((e) => e.reason === "CapRejected")?.type, "Warning");
});

Deno.test("policy: invalid next to valid → safe default", () => {
  const d = decide([pod("a", "250"), pod("b", "abc")], base);
  assert.equal(d.cap?.kind, "safe-default");
  assert.deepEqual(reasons(d.events), [
    "a:SafeDefaultApplied",
    "b:CapRejected",
    "b:SafeDefaultApplied",
  ]);
});

Deno.test("policy: the same pod twice counts once", () => {
  const a = pod("a", "250");
  const d = decide([a, a], base);
  assert.equal(d.cap?.mw, 250_000);
  assert.equal(d.events.length, 1);
});

Deno.test("policy: allowed namespaces: annotation elsewhere ignored (treated as absent)", () => {
  const options = { ...base, allowedNamespaces: ["ml"] };
  const alone = decide([pod("x", "250", "other")], options);
  assert.equal(alone.cap, null);
  assert.equal(alone.ignored.length, 1);
  assert.match(
    alone.ignored[0].message,
    /other\/x ignored: namespace other is not in --allowed-namespaces/,
  );
  assert.deepEqual(reasons(alone.events), ["x:CapRejected"]);

  // An ignored annotation makes that pod an unannotated co-tenant: fail closed.
  const shared = decide([pod("a", "250"), pod("x", "250", "other")], options);
  assert.equal(shared.cap?.kind, "safe-default");

  const allowed = decide([pod("a", "250")], options);
  assert.equal(allowed.cap?.mw, 250_000);
  assert.deepEqual(allowed.ignored, []);
});

Deno.test("policy: floor and ceiling apply to pod values and the safe default", () => {
  const options = { ...base, minMw: 300_000, maxMw: 400_000 };
  const low = decide([pod("a", "250")], options);
  assert.equal(low.cap?.mw, 300_000);
  assert.deepEqual(reasons(low.events), ["a:CapClamped"]);
  assert.match(low.events[0].message, /Requested 250 W .*--min-watts floor 300 W.*300 W applied/);

  const high = decide([pod("a", "450")], options);
  assert.equal(high.cap?.mw, 400_000);
  assert.match(high.events[0].message, /--max-watts ceiling 400 W/);

  const inside = decide([pod("a", "350")], options);
  assert.equal(inside.cap?.mw, 350_000);
  assert.deepEqual(reasons(inside.events), ["a:CapApplied"]);

  const conflict = decide([pod("a", "350"), pod("b", "360")], options);
  assert.equal(conflict.cap?.mw, 400_000);
});

Deno.test("policy: the device clamp of the outcome turns CapApplied into CapClamped", () => {
  const options = base;
  const d = decide([pod("a", "100")], options);
  assert.equal(d.cap?.mw, 100_000, "the reconciler does the device clamp");
  assert.deepEqual(reasons(d.events), ["a:CapClamped"]);
  assert.match(d.events[0].message, /raised to the GPU minimum 200 W: 200 W applied/);
  const ok = decide([pod("a", "300")], options);
  assert.deepEqual(reasons(ok.events), ["a:CapApplied"]);
});

Deno.test("policy: decisions tell nothing by themselves; a failed set → CapNotApplied", () => {
  const d = decideGpuCap([pod("a", "250"), pod("b", "250")], base);
  assert.deepEqual(d.events, [], "no CapApplied before the set happened");
  const failed = outcomeEvents(
    outcome(d.cap, {
      action: "error",
      enforced: false,
      changed: false,
      error: "Cannot set power limit on GPU GPU-a: NVML NO_PERMISSION (run as root)",
    }),
    "GPU 0 (GPU-a)",
  );
  assert.deepEqual(reasons(failed), ["a:CapNotApplied", "b:CapNotApplied"]);
  assert.equal(failed[0].type, "Warning");
  assert.match(failed[0].message, /250 W not applied to GPU 0 \(GPU-a\): .*NO_PERMISSION/);
  // Unknown outcome (desired caps unknown this pass): nothing is said.
  assert.deepEqual(outcomeEvents(outcome(d.cap, { action: "skipped" }), "GPU 0"), []);
});

Deno.test("policy: a cap the node power budget reduced tells the pod by how much", () => {
  const d = decideGpuCap([pod("a", "700")], base);
  const events = outcomeEvents(
    outcome(d.cap, { toMw: 500_000, limitedBy: "budget", reducedFromMw: 700_000 }),
    "GPU 0 (GPU-a)",
  );
  assert.deepEqual(events.map((e) => [e.reason, e.type, e.message]), [[
    "CapClamped",
    "Warning",
    "Requested 700 W for GPU 0 (GPU-a), reduced from 700 W to 500 W by the node power budget: " +
    "500 W applied",
  ]]);
});
