import assert from "node:assert/strict";
import { readiness, sourceStalenessSeconds } from "../../src/cli/readiness.ts";

const now = 1_000_000;
const done = { reconciledMs: now, unenforced: [] };
const base = { enforcement: done, enforceGraceMs: 60_000 };

Deno.test("not ready before the source synced or before the first reconcile", () => {
  const r1 = readiness({
    ...base,
    enforcement: { reconciledMs: null, unenforced: [] },
    health: { synced: false, lastSuccessMs: null, problem: "list failed: 403" },
    nowMs: now,
    staleAfterMs: 60_000,
  });
  assert.equal(r1.ready, false);
  assert.match(r1.reason!, /not synced.*403/);
  const r2 = readiness({
    ...base,
    enforcement: { reconciledMs: null, unenforced: [] },
    health: { synced: true, lastSuccessMs: now },
    nowMs: now,
    staleAfterMs: 60_000,
  });
  assert.deepEqual(r2, { ready: false, reason: "no reconcile pass with known desired caps yet" });
});

Deno.test("a quiet healthy source is never stale; a failing one is after stale-after", () => {
  const quiet = { synced: true, lastSuccessMs: now - 3_600_000 };
  assert.equal(sourceStalenessSeconds(quiet, now), 0);
  assert.deepEqual(
    readiness({ ...base, health: quiet, nowMs: now, staleAfterMs: 60_000 }),
    { ready: true },
  );
  const failing = { synced: true, lastSuccessMs: now - 90_000, problem: "watch failed: 500" };
  assert.equal(sourceStalenessSeconds(failing, now), 90);
  const r = readiness({ ...base, health: failing, nowMs: now, staleAfterMs: 60_000 });
  assert.equal(r.ready, false);
  assert.match(r.reason!, /stale for 90s.*watch failed: 500/);
  const fresh = { ...failing, lastSuccessMs: now - 10_000 };
  assert.equal(
    readiness({ ...base, health: fresh, nowMs: now, staleAfterMs: 60_000 }).ready,
    true,
  );
});

Deno.test("a wanted cap not enforced: ready within the grace, 503 naming the GPU after it", () => {
  const health = { synced: true, lastSuccessMs: now };
  const failing = {
    reconciledMs: now - 120_000,
    unenforced: [{
      uuid: "GPU-a",
      index: 3,
      sinceMs: now - 30_000,
      error: "Cannot set power limit on GPU GPU-a: NVML NO_PERMISSION",
    }],
  };
  const input = { health, enforcement: failing, staleAfterMs: 60_000, enforceGraceMs: 60_000 };
  assert.deepEqual(readiness({ ...input, nowMs: now }), { ready: true });
  const late = readiness({ ...input, nowMs: now + 31_000 });
  assert.equal(late.ready, false);
  assert.match(
    late.reason!,
    /not enforced for longer than 60s on 1 GPU\(s\): GPU 3 \(GPU-a\) for 61s: .*NO_PERMISSION/,
  );
  // Recovered: nothing unenforced any more.
  assert.deepEqual(
    readiness({ ...input, enforcement: { ...failing, unenforced: [] }, nowMs: now + 31_000 }),
    { ready: true },
  );
});

Deno.test("a pass-level failure (GPUs not listable) fails readiness after the grace", () => {
  const health = { synced: true, lastSuccessMs: now };
  const enforcement = {
    reconciledMs: now - 120_000,
    unenforced: [],
    passError: { sinceMs: now - 61_000, error: "Cannot list GPUs: NVML GPU_IS_LOST" },
  };
  const r = readiness({
    health,
    enforcement,
    nowMs: now,
    staleAfterMs: 60_000,
    enforceGraceMs: 60_000,
  });
  assert.equal(r.ready, false);
  assert.match(r.reason!, /reconcile failing for 61s \(grace 60s\): Cannot list GPUs/);
});
