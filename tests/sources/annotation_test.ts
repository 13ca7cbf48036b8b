import assert from "node:assert/strict";
import { parsePowerAnnotation } from "../../src/sources/annotation.ts";
import { formatWatts } from "../../src/reconcile/report.ts";

const VALID: Array<[string, number]> = [
  ["250", 250_000],
  ["250.5", 250_500],
  ["0.5", 500],
  ["700", 700_000],
  ["0250", 250_000],
  ["100000", 100_000_000],
  ["249.9996", 250_000],
];

for (const [value, mw] of VALID) {
  Deno.test(`parsePowerAnnotation: ${JSON.stringify(value)} → ${mw} mW`, () => {
    assert.deepEqual(parsePowerAnnotation(value), { kind: "valid", mw, value });
  });
}

const INVALID: Array<[string, string]> = [
  ["", "empty"],
  ["-5", "not_a_number"],
  ["0", "not_positive"],
  ["0.0", "not_positive"],
  ["0.0001", "not_positive"],
  ["abc", "not_a_number"],
  ["250W", "not_a_number"],
  [" 250", "not_a_number"],
  ["250 ", "not_a_number"],
  ["1e9", "not_a_number"],
  ["Infinity", "not_a_number"],
  ["NaN", "not_a_number"],
  ["+250", "not_a_number"],
  ["250.", "not_a_number"],
  [".5", "not_a_number"],
  ["0x10", "not_a_number"],
  ["250,5", "not_a_number"],
  ["1".repeat(17), "too_long"],
  ["9".repeat(200), "too_long"],
  ["100000.5", "too_large"],
  ["250000", "too_large"],
];

for (const [value, reason] of INVALID) {
  Deno.test(`parsePowerAnnotation: ${JSON.stringify(value.slice(0, 20))} → invalid (${reason})`, () => {
    const parsed = parsePowerAnnotation(value);
    assert.equal(parsed.kind, "invalid");
    if (parsed.kind !== "invalid") return;
    assert.equal(parsed.reason, reason);
    assert.equal(parsed.value, value);
    assert.ok(parsed.message.length > 0);
  });
}

Deno.test("parsePowerAnnotation: absent", () => {
  assert.deepEqual(parsePowerAnnotation(undefined), { kind: "absent" });
  assert.deepEqual(parsePowerAnnotation(null), { kind: "absent" });
});

Deno.test("formatWatts", () => {
  assert.equal(formatWatts(250_000), "250 W");
  assert.equal(formatWatts(250_500), "250.5 W");
  assert.equal(formatWatts(250_500, { unit: false }), "250.5");
  assert.equal(formatWatts(null), "-");
});
