import assert from "node:assert/strict";
import {
  decideGpuCap,
  type GpuPod,
  type SharedGpuPolicyOptions,
} from "../../src/policy/shared_gpu.ts";
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

function reasons(events: { reason: string; pod: { name: string } }[]): string[] {
  return events.map((e) => `${e.pod.name}:${e.reason}`).sort();
}

Deno.test("policy: no pods → unmanaged", () => {
  assert.deepEqual(decideGpuCap([], base), { cap: null, events: [], ignored: [] });
});

Deno.test("policy: pods without annotation → unmanaged", () => {
  const d = decideGpuCap([pod("a"), pod("b")], base);
  assert.equal(d.cap, null);
  assert.deepEqual(d.events, []);
});

Deno.test("policy: single pod → its value", () => {
  const d = decideGpuCap([pod("a", "250")], base);
  assert.deepEqual(d.cap, { mw: 250_000, reason: "pod ml/a", kind: "pod" });
  assert.deepEqual(reasons(d.events), ["a:CapApplied"]);
  assert.match(d.events[0].message, /250 W.*GPU 0 \(GPU-a\)/);
  assert.equal(d.events[0].type, "Normal");
});

Deno.test("policy: two pods agree → that value", () => {
  const d = decideGpuCap([pod("a", "250"), pod("b", "250.0")], base);
  assert.deepEqual(d.cap, { mw: 250_000, reason: "pods ml/a, ml/b", kind: "pod" });
  assert.deepEqual(reasons(d.events), ["a:CapApplied", "b:CapApplied"]);
});

Deno.test("policy: three pods agree → that value", () => {
  const d = decideGpuCap([pod("a", "300"), pod("b", "300"), pod("c", "300")], base);
  assert.equal(d.cap?.mw, 300_000);
  assert.equal(d.cap?.kind, "pod");
});

Deno.test("policy: conflict → safe default naming the pods and values", () => {
  const d = decideGpuCap([pod("a", "250"), pod("b", "300")], base);
  assert.equal(d.cap?.kind, "safe-default");
  assert.equal(d.cap?.mw, SAFE);
  assert.match(d.cap!.reason, /^safe default: pods disagree: ml\/a 250 W, ml\/b 300 W$/);
  assert.deepEqual(reasons(d.events), ["a:SafeDefaultApplied", "b:SafeDefaultApplied"]);
});

Deno.test("policy: three pods, one disagrees → safe default", () => {
  const d = decideGpuCap([pod("a", "300"), pod("b", "300"), pod("c", "310")], base);
  assert.equal(d.cap?.kind, "safe-default");
});

Deno.test("policy: co-tenant without annotation → safe default (fail closed)", () => {
  const d = decideGpuCap([pod("a", "250"), pod("b")], base);
  assert.equal(d.cap?.kind, "safe-default");
  assert.equal(d.cap?.mw, SAFE);
  assert.match(d.cap!.reason, /ml\/a ask for a cap but co-tenant ml\/b has no annotation/);
  assert.deepEqual(reasons(d.events), ["a:SafeDefaultApplied", "b:SafeDefaultApplied"]);
});

Deno.test("policy: invalid annotation alone → safe default + CapRejected", () => {
  const d = decideGpuCap([pod("a", "250W")], base);
  assert.equal(d.cap?.kind, "safe-default");
  assert.match(d.cap!.reason, /invalid annotation on ml\/a/);
  assert.deepEqual(reasons(d.events), ["a:CapRejected", "a:SafeDefaultApplied"]);
  assert.equal(d.events.find((e) => e.reason === "CapRejected")?.type, "Warning");
});

Deno.test("policy: invalid next to valid → safe default", () => {
  const d = decideGpuCap([pod("a", "250"), pod("b", "abc")], base);
  assert.equal(d.cap?.kind, "safe-default");
  assert.deepEqual(reasons(d.events), [
    "a:SafeDefaultApplied",
    "b:CapRejected",
    "b:SafeDefaultApplied",
  ]);
});

Deno.test("policy: the same pod twice counts once", () => {
  const a = pod("a", "250");
  const d = decideGpuCap([a, a], base);
  assert.equal(d.cap?.mw, 250_000);
  assert.equal(d.events.length, 1);
});

Deno.test("policy: allowed namespaces: annotation elsewhere ignored (treated as absent)", () => {
  const options = { ...base, allowedNamespaces: ["ml"] };
  const alone = decideGpuCap([pod("x", "250", "other")], options);
  assert.equal(alone.cap, null);
  assert.equal(alone.ignored.length, 1);
  assert.match(
    alone.ignored[0].message,
    /other\/x ignored: namespace other is not in --allowed-namespaces/,
  );
  assert.deepEqual(reasons(alone.events), ["x:CapRejected"]);

  // An ignored annotation makes that pod an unannotated co-tenant: fail closed.
  const shared = decideGpuCap([pod("a", "250"), pod("x", "250", "other")], options);
  assert.equal(shared.cap?.kind, "safe-default");

  const allowed = decideGpuCap([pod("a", "250")], options);
  assert.equal(allowed.cap?.mw, 250_000);
  assert.deepEqual(allowed.ignored, []);
});

Deno.test("policy: floor and ceiling apply to pod values and the safe default", () => {
  const options = { ...base, minMw: 300_000, maxMw: 400_000 };
  const low = decideGpuCap([pod("a", "250")], options);
  assert.equal(low.cap?.mw, 300_000);
  assert.deepEqual(reasons(low.events), ["a:CapClamped"]);
  assert.match(low.events[0].message, /Requested 250 W .*--min-watts floor 300 W.*300 W applied/);

  const high = decideGpuCap([pod("a", "450")], options);
  assert.equal(high.cap?.mw, 400_000);
  assert.match(high.events[0].message, /--max-watts ceiling 400 W/);

  const inside = decideGpuCap([pod("a", "350")], options);
  assert.equal(inside.cap?.mw, 350_000);
  assert.deepEqual(reasons(inside.events), ["a:CapApplied"]);

  const conflict = decideGpuCap([pod("a", "350"), pod("b", "360")], options);
  assert.equal(conflict.cap?.mw, 400_000);
});

Deno.test("policy: device limits turn CapApplied into CapClamped (cap itself unclamped)", () => {
  const options = { ...base, deviceLimits: { minMw: 200_000, maxMw: 700_000 } };
  const d = decideGpuCap([pod("a", "100")], options);
  assert.equal(d.cap?.mw, 100_000, "the reconciler does the device clamp");
  assert.deepEqual(reasons(d.events), ["a:CapClamped"]);
  assert.match(d.events[0].message, /raised to the GPU minimum 200 W: 200 W applied/);
  const ok = decideGpuCap([pod("a", "300")], options);
  assert.deepEqual(reasons(ok.events), ["a:CapApplied"]);
});
