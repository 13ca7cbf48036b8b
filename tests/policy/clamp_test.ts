import assert from "node:assert/strict";
import { clampMw } from "../../src/policy/clamp.ts";

const limits = { minMw: 200_000, maxMw: 700_000 };

Deno.test("clampMw leaves a request inside the range alone", () => {
  assert.deepEqual(clampMw(250_000, limits), { mw: 250_000, direction: "none" });
});

Deno.test("clampMw accepts both bounds exactly", () => {
  assert.deepEqual(clampMw(200_000, limits), { mw: 200_000, direction: "none" });
  assert.deepEqual(clampMw(700_000, limits), { mw: 700_000, direction: "none" });
});

Deno.test("clampMw raises a request below the minimum", () => {
  assert.deepEqual(clampMw(199_999, limits), { mw: 200_000, direction: "up" });
  assert.deepEqual(clampMw(0, limits), { mw: 200_000, direction: "up" });
});

Deno.test("clampMw lowers a request above the maximum", () => {
  assert.deepEqual(clampMw(700_001, limits), { mw: 700_000, direction: "down" });
  assert.deepEqual(clampMw(100_000_000, limits), { mw: 700_000, direction: "down" });
});

Deno.test("clampMw works on a GPU whose range is a single value", () => {
  const fixed = { minMw: 300_000, maxMw: 300_000 };
  assert.deepEqual(clampMw(300_000, fixed), { mw: 300_000, direction: "none" });
  assert.deepEqual(clampMw(250_000, fixed), { mw: 300_000, direction: "up" });
  assert.deepEqual(clampMw(350_000, fixed), { mw: 300_000, direction: "down" });
});

Deno.test("clampMw rejects non-finite requests and inverted constraints", () => {
  assert.throws(() => clampMw(Number.NaN, limits), RangeError);
  assert.throws(() => clampMw(Infinity, limits), RangeError);
  assert.throws(() => clampMw(250_000, { minMw: 700_000, maxMw: 200_000 }), /700000\.\.200000/);
});

Deno.test("clampMw does not mutate its input", () => {
  const input = { minMw: 1, maxMw: 2 };
  clampMw(5, input);
  assert.deepEqual(input, { minMw: 1, maxMw: 2 });
});
