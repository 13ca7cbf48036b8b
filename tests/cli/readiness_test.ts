import assert from "node:assert/strict";
import { readiness, sourceStalenessSeconds } from "../../src/cli/readiness.ts";

const now = 1_000_000;

Deno.test("not ready before the source synced or before the first reconcile", () => {
  const r1 = readiness({
    lastSuccessMs: null,
    health: { synced: false, lastSuccessMs: null, problem: "list failed: 403" },
    nowMs: now,
    staleAfterMs: 60_000,
  });
  assert.equal(r1.ready, false);
  assert.match(r1.reason!, /not synced.*403/);
  const r2 = readiness({
    lastSuccessMs: null,
    health: { synced: true, lastSuccessMs: now },
    nowMs: now,
    staleAfterMs: 60_000,
  });
  assert.deepEqual(r2, { ready: false, reason: "no successful reconcile yet" });
});

Deno.test("a quiet healthy source is never stale; a failing one is after stale-after", () => {
  const quiet = { synced: true, lastSuccessMs: now - 3_600_000 };
  assert.equal(sourceStalenessSeconds(quiet, now), 0);
  assert.deepEqual(
    readiness({ lastSuccessMs: now, health: quiet, nowMs: now, staleAfterMs: 60_000 }),
    { ready: true },
  );
  const failing = { synced: true, lastSuccessMs: now - 90_000, problem: "watch failed: 500" };
  assert.equal(sourceStalenessSeconds(failing, now), 90);
  const r = readiness({ lastSuccessMs: now, health: failing, nowMs: now, staleAfterMs: 60_000 });
  assert.equal(r.ready, false);
  assert.match(r.reason!, /stale for 90s.*watch failed: 500/);
  const fresh = { ...failing, lastSuccessMs: now - 10_000 };
  assert.equal(
    readiness({ lastSuccessMs: now, health: fresh, nowMs: now, staleAfterMs: 60_000 }).ready,
    true,
  );
});
