import assert from "node:assert/strict";
import {
  combineBudgets,
  parseBudgetAnnotation,
  POWER_BUDGET_ANNOTATION,
} from "../../src/sources/budget_annotation.ts";

Deno.test("parseBudgetAnnotation: integer and decimal watts > 0 become milliwatts", () => {
  assert.equal(POWER_BUDGET_ANNOTATION, "gpu-power-agent.io/power-budget-watts");
  assert.deepEqual(parseBudgetAnnotation("4000"), { kind: "valid", mw: 4_000_000, value: "4000" });
  assert.deepEqual(parseBudgetAnnotation("3999.5"), {
    kind: "valid",
    mw: 3_999_500,
    value: "3999.5",
  });
  assert.deepEqual(parseBudgetAnnotation(undefined), { kind: "absent" });
  assert.deepEqual(parseBudgetAnnotation(null), { kind: "absent" });
});

Deno.test("parseBudgetAnnotation: invalid values name the annotation and the problem", () => {
  for (
    const [value, reason] of [
      ["", "empty"],
      ["0", "not_positive"],
      ["-1", "not_a_number"],
      ["4kW", "not_a_number"],
      ["4e3", "not_a_number"],
      ["100001", "too_large"],
      ["12345678901234567", "too_long"],
    ]
  ) {
    const parsed = parseBudgetAnnotation(value);
    assert.equal(parsed.kind, "invalid", value);
    if (parsed.kind !== "invalid") continue;
    assert.equal(parsed.reason, reason, value);
    assert.equal(parsed.value, value);
    assert.ok(
      parsed.message.startsWith("node annotation gpu-power-agent.io/power-budget-watts: "),
      parsed.message,
    );
  }
});

Deno.test("combineBudgets: the smaller of caps file and annotation wins", () => {
  assert.deepEqual(combineBudgets({}), { budgetMw: null, source: null });
  assert.deepEqual(combineBudgets({ fileMw: 4_000_000 }), {
    budgetMw: 4_000_000,
    source: "caps-file",
  });
  assert.deepEqual(combineBudgets({ annotation: parseBudgetAnnotation("3500") }), {
    budgetMw: 3_500_000,
    source: "node-annotation",
  });
  assert.deepEqual(
    combineBudgets({ fileMw: 4_000_000, annotation: parseBudgetAnnotation("3500") }),
    { budgetMw: 3_500_000, source: "node-annotation" },
  );
  assert.deepEqual(
    combineBudgets({ fileMw: 3_000_000, annotation: parseBudgetAnnotation("3500") }),
    { budgetMw: 3_000_000, source: "caps-file" },
  );
  assert.deepEqual(
    combineBudgets({ fileMw: 3_000_000, annotation: parseBudgetAnnotation("3000") }),
    { budgetMw: 3_000_000, source: "caps-file" },
  );
  assert.deepEqual(
    combineBudgets({ fileMw: 3_000_000, annotation: parseBudgetAnnotation(undefined) }),
    { budgetMw: 3_000_000, source: "caps-file" },
  );
});

Deno.test("combineBudgets: an invalid annotation is ignored with a warning; the file budget stays", () => {
  assert.deepEqual(
    combineBudgets({ fileMw: 4_000_000, annotation: parseBudgetAnnotation("lots") }),
    {
      budgetMw: 4_000_000,
      source: "caps-file",
      warning: "Ignoring node annotation gpu-power-agent.io/power-budget-watts: value " +
        '"lots" is not a positive number of watts such as "250" or "250.5"; the caps file ' +
        "budget 4000 W applies",
    },
  );
  const alone = combineBudgets({ annotation: parseBudgetAnnotation("0") });
  assert.equal(alone.budgetMw, null);
  assert.equal(alone.source, null);
  assert.match(alone.warning!, /not a positive wattage; no node power budget applies$/);
});
