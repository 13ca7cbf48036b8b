import assert from "node:assert/strict";
import { systemClock } from "../src/clock.ts";

Deno.test("system clock: a zero delay runs soon, in order, after the current microtasks; clearTimeout cancels it", async () => {
  const order: string[] = [];
  const a = systemClock.setTimeout(() => order.push("a"), 0);
  const b = systemClock.setTimeout(() => order.push("b"), 0);
  const c = systemClock.setTimeout(() => order.push("c"), 0);
  assert.ok(a < 0 && b < 0 && a !== b, "immediate ids are negative and distinct");
  systemClock.clearTimeout(b);
  systemClock.clearTimeout(b); // twice: no effect
  await Promise.resolve();
  order.push("microtask");
  await new Promise((resolve) => systemClock.setTimeout(() => resolve(undefined), 5));
  assert.deepEqual(order, ["microtask", "a", "c"]);
  void c;
});

Deno.test("system clock: a positive delay is a timer, cancelled by clearTimeout", async () => {
  let fired = 0;
  const id = systemClock.setTimeout(() => fired++, 1);
  assert.ok(Number(id) > 0);
  systemClock.clearTimeout(id);
  await new Promise((resolve) => systemClock.setTimeout(() => resolve(undefined), 20));
  assert.equal(fired, 0);
});
