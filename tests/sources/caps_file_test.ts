import assert from "node:assert/strict";
import {
  CapsFileError,
  type CapsSpec,
  excerpt,
  formatCapsFileProblem,
  formatKeyPath,
  parseCapsFile,
  readCapsFile,
} from "../../src/sources/caps_file.ts";

const PATH = "/etc/gpu-power-agent/caps.yaml";

function parse(text: string): Promise<CapsSpec> {
  return parseCapsFile(text, { path: PATH });
}

/** Parse `text`, expect a CapsFileError, return it. */
async function parseError(text: string, path = PATH): Promise<CapsFileError> {
  try {
    await parseCapsFile(text, { path });
  } catch (error) {
    assert.ok(error instanceof CapsFileError, `expected CapsFileError, got ${error}`);
    assert.equal(error.path, path);
    assert.ok(error.message.startsWith(`Invalid caps file ${path}: `), error.message);
    return error;
  }
  assert.fail(`expected ${JSON.stringify(text)} to be rejected`);
}

/** Expect exactly one problem and return its rendered form (`keyPath at line L:C: reason`). */
async function onlyProblem(text: string): Promise<string> {
  const error = await parseError(text);
  assert.equal(error.problems.length, 1, error.message);
  assert.equal(
    error.message,
    `Invalid caps file ${PATH}: ${formatCapsFileProblem(error.problems[0])}`,
  );
  return formatCapsFileProblem(error.problems[0]);
}

const YAML_EXAMPLE = `# Caps for this host
version: 1
default: {watts: 300}
gpus:
  - index: 0
    watts: 250.5
  - uuid: GPU-8d5b1c2e-1111-2222-3333-444444444444
    percent: 80
  - name: "NVIDIA H100*"
    watts: 0.0004
`;

const EXPECTED: CapsSpec = {
  version: 1,
  default: { kind: "watts", watts: 300, mw: 300_000 },
  rules: [
    {
      position: 0,
      selector: { kind: "index", index: 0 },
      value: { kind: "watts", watts: 250.5, mw: 250_500 },
    },
    {
      position: 1,
      selector: { kind: "uuid", uuid: "GPU-8d5b1c2e-1111-2222-3333-444444444444" },
      value: { kind: "percent", percent: 80 },
    },
    {
      position: 2,
      selector: { kind: "name", pattern: "NVIDIA H100*" },
      value: { kind: "watts", watts: 0.0004, mw: 0 },
    },
  ],
};

// --- valid files ------------------------------------------------------------------------------

Deno.test("parseCapsFile reads YAML", async () => {
  assert.deepEqual(await parse(YAML_EXAMPLE), EXPECTED);
});

Deno.test("parseCapsFile reads the same file as JSON", async () => {
  const json = JSON.stringify(
    {
      version: 1,
      default: { watts: 300 },
      gpus: [
        { index: 0, watts: 250.5 },
        { uuid: "GPU-8d5b1c2e-1111-2222-3333-444444444444", percent: 80 },
        { name: "NVIDIA H100*", watts: 0.0004 },
      ],
    },
    null,
    2,
  );
  assert.deepEqual(await parse(json), EXPECTED);
  assert.deepEqual(await parse(`\uFEFF  \n${json}`), EXPECTED, "BOM and leading space");
});

Deno.test("parseCapsFile: watts become integer milliwatts (Math.round(w * 1000))", async () => {
  const spec = await parse("version: 1\ndefault: {watts: 123.4567}\n");
  assert.deepEqual(spec.default, { kind: "watts", watts: 123.4567, mw: 123_457 });
});

Deno.test("parseCapsFile: minimal files and the bounds of each value", async () => {
  assert.deepEqual(await parse("version: 1\n"), { version: 1, rules: [] });
  assert.deepEqual(await parse('{"version": 1, "gpus": []}'), { version: 1, rules: [] });
  const spec = await parse(
    "version: 1\ngpus:\n  - {index: 0, watts: 100000}\n  - {index: 1, percent: 100}\n" +
      "  - {index: 2, percent: 0.5}\n",
  );
  assert.deepEqual(spec.rules.map((r) => r.value), [
    { kind: "watts", watts: 100_000, mw: 100_000_000 },
    { kind: "percent", percent: 100 },
    { kind: "percent", percent: 0.5 },
  ]);
});

// --- unknown keys -----------------------------------------------------------------------------

Deno.test("unknown key at the top level names the key, its line:column and the allowed keys", async () => {
  assert.equal(
    await onlyProblem("version: 1\ndefaults: {watts: 300}\n"),
    'defaults at line 2:1: unknown key "defaults" (allowed here: version, default, gpus, budget); ' +
      'did you mean "default"?',
  );
});

Deno.test("unknown key in default", async () => {
  assert.equal(
    await onlyProblem("version: 1\ndefault:\n  watts: 300\n  mode: soft\n"),
    'default.mode at line 4:3: unknown key "mode" (allowed here: watts, percent)',
  );
});

Deno.test("unknown key in a rule", async () => {
  assert.equal(
    await onlyProblem(
      "version: 1\ngpus:\n  - index: 0\n    watts: 250\n  - index: 1\n    wats: 5\n",
    ),
    'gpus[1].wats at line 6:5: unknown key "wats" (allowed here: index, uuid, name, watts, percent); ' +
      'did you mean "watts"?',
  );
});

// --- selectors and values ---------------------------------------------------------------------

Deno.test("a rule with both index and uuid is rejected", async () => {
  assert.equal(
    await onlyProblem("version: 1\ngpus:\n  - index: 0\n    uuid: GPU-1\n    watts: 250\n"),
    "gpus[0] at line 3:5: expected exactly one of index, uuid, name to select GPUs, " +
      "found index and uuid",
  );
});

Deno.test("a rule with no selector is rejected", async () => {
  assert.equal(
    await onlyProblem("version: 1\ngpus:\n  - watts: 250\n"),
    "gpus[0] at line 3:5: expected exactly one of index, uuid, name to select GPUs, found none",
  );
});

Deno.test("a rule with both watts and percent is rejected", async () => {
  assert.equal(
    await onlyProblem("version: 1\ngpus:\n  - name: '*'\n    watts: 250\n    percent: 50\n"),
    "gpus[0] at line 3:5: expected exactly one of watts, percent to set the cap, " +
      "found watts and percent",
  );
});

Deno.test("a rule or default with no value is rejected", async () => {
  assert.equal(
    await onlyProblem("version: 1\ngpus:\n  - index: 3\n"),
    "gpus[0] at line 3:5: expected exactly one of watts, percent to set the cap, found none",
  );
  assert.equal(
    await onlyProblem("version: 1\ndefault: {}\n"),
    "default at line 2:10: expected exactly one of watts, percent to set the cap, found none",
  );
});

Deno.test("negative, zero, too large and non-numeric watts are rejected", async () => {
  const rule = (watts: string) => `version: 1\ngpus:\n  - index: 0\n    watts: ${watts}\n`;
  const expected = "gpus[0].watts at line 4:12: expected a number of watts > 0 and <= 100000, got";
  assert.equal(await onlyProblem(rule("-5")), `${expected} -5`);
  assert.equal(await onlyProblem(rule("0")), `${expected} 0`);
  assert.equal(await onlyProblem(rule("100001")), `${expected} 100001`);
  assert.equal(await onlyProblem(rule(".nan")), `${expected} NaN`);
  assert.equal(await onlyProblem(rule(".inf")), `${expected} Infinity`);
  assert.equal(await onlyProblem(rule('"NaN"')), `${expected} the string "NaN"`);
  assert.equal(
    await onlyProblem(rule('"250"')),
    `${expected} the string "250" (remove the quotes)`,
  );
  assert.equal(await onlyProblem(rule("")), `${expected} an empty value`);
  assert.equal(await onlyProblem(rule("[250]")), `${expected} a list`);
});

Deno.test("percent must be > 0 and <= 100", async () => {
  assert.equal(
    await onlyProblem("version: 1\ndefault:\n  percent: 150\n"),
    "default.percent at line 3:12: expected a percentage of the GPU's default limit > 0 and " +
      "<= 100, got 150",
  );
  assert.match(await onlyProblem("version: 1\ndefault: {percent: 0}\n"), /got 0$/);
  assert.match(await onlyProblem("version: 1\ndefault: {percent: -10}\n"), /got -10$/);
});

Deno.test("selectors are type-checked: index >= 0 integer, non-empty uuid and name", async () => {
  assert.equal(
    await onlyProblem("version: 1\ngpus:\n  - index: -1\n    watts: 5\n"),
    "gpus[0].index at line 3:12: expected a GPU index: a whole number >= 0, got -1",
  );
  assert.match(await onlyProblem("version: 1\ngpus:\n  - {index: 1.5, watts: 5}\n"), /got 1\.5$/);
  assert.match(
    await onlyProblem("version: 1\ngpus:\n  - {index: '0', watts: 5}\n"),
    /got the string "0"/,
  );
  assert.match(
    await onlyProblem('version: 1\ngpus:\n  - {uuid: "", watts: 5}\n'),
    /^gpus\[0\]\.uuid at line 3:12: expected a non-empty GPU UUID string/,
  );
  assert.match(
    await onlyProblem("version: 1\ngpus:\n  - {name: 100, watts: 5}\n"),
    /^gpus\[0\]\.name at line 3:12: expected a non-empty GPU name glob string.*got 100$/,
  );
});

Deno.test("structure errors: root, gpus and rules of the wrong type", async () => {
  assert.equal(
    await onlyProblem("- version: 1\n"),
    "line 1:1: expected a mapping that starts with `version: 1`, got a list",
  );
  assert.match(await onlyProblem("just text\n"), /^line 1:1: expected a mapping.*got the string/);
  assert.equal(
    await onlyProblem("version: 1\ngpus: {index: 0}\n"),
    "gpus at line 2:7: expected a list of rules, e.g. [{index: 0, watts: 250}] (use [] for none), " +
      "got a mapping",
  );
  assert.equal(
    await onlyProblem("version: 1\ngpus:\n  - index 0\n"),
    'gpus[0] at line 3:5: expected a rule mapping, e.g. {index: 0, watts: 250}, got the string "index 0"',
  );
});

// --- version ----------------------------------------------------------------------------------

Deno.test("a wrong, quoted or missing version is rejected", async () => {
  assert.equal(
    await onlyProblem("version: 2\n"),
    "version at line 1:10: expected version: 1 (the only supported version), got 2",
  );
  assert.match(await onlyProblem('version: "1"\n'), /^version at line 1:10: .*got the string "1"/);
  assert.equal(
    await onlyProblem("default: {watts: 300}\n"),
    "version at line 1:1: missing required key version: add `version: 1`",
  );
  assert.equal(
    await onlyProblem('{"default": {"watts": 300}}'),
    "version at line 1:1: missing required key version: add `version: 1`",
  );
});

// --- empty and syntax errors ------------------------------------------------------------------

Deno.test("an empty or comment-only file is rejected", async () => {
  for (const text of ["", "  \n\t\n", "\uFEFF"]) {
    assert.match(
      await onlyProblem(text),
      /^the file is empty; it must contain at least `version: 1`$/,
    );
  }
  assert.match(await onlyProblem("# nothing yet\n"), /no content \(only comments\)/);
});

Deno.test("a YAML syntax error reports line:column", async () => {
  assert.match(
    await onlyProblem("version: 1\ngpus:\n  - index: 0\n    watts: [250\n  - index: 1\n"),
    /^line \d+:\d+: invalid YAML: Flow sequence/,
  );
  assert.equal(
    await onlyProblem("version: 1\nversion: 1\n"),
    "line 2:1: invalid YAML: Map keys must be unique",
  );
  assert.equal(
    await onlyProblem("version: 1\n\tgpus: []\n"),
    "line 2:1: invalid YAML: Tabs are not allowed as indentation",
  );
  assert.match(await onlyProblem("version: 1\n---\nversion: 1\n"), /multiple documents/);
});

Deno.test("a JSON syntax error reports line:column and what was expected", async () => {
  assert.equal(
    await onlyProblem('{\n  "version": 1,\n  "gpus": [\n    {"index": 0 "watts": 250}\n  ]\n}\n'),
    'line 4:17: invalid JSON: expected "," or "}" after a value, found "\\""',
  );
  assert.equal(
    await onlyProblem('{"version": 1,\n "gpus": [{"index": 0, "watts": 5},\n ]}'),
    'line 3:2: invalid JSON: trailing comma before "]" is not allowed',
  );
  assert.equal(
    await onlyProblem('{"version": 1, }'),
    'line 1:16: invalid JSON: trailing comma before "}" is not allowed',
  );
  assert.equal(
    await onlyProblem("{version: 1}"),
    'line 1:2: invalid JSON: expected a double-quoted key, found "v"',
  );
  assert.equal(
    await onlyProblem('{"version": 1,\n "gpus": ['),
    "line 2:11: invalid JSON: expected a value, found the end of the file",
  );
  assert.equal(
    await onlyProblem('{"version": 1} x'),
    'line 1:16: invalid JSON: unexpected "x" after the end of the JSON document',
  );
});

Deno.test("JSON validation problems report key path and line:column too", async () => {
  const json =
    '{\n  "version": 1,\n  "gpus": [\n    {"index": 0, "watts": -5, "extra": true}\n  ]\n}';
  const error = await parseError(json);
  assert.deepEqual(error.problems.map(formatCapsFileProblem), [
    "gpus[0].watts at line 4:27: expected a number of watts > 0 and <= 100000, got -5",
    'gpus[0].extra at line 4:31: unknown key "extra" (allowed here: index, uuid, name, watts, ' +
    "percent)",
  ]);
});

Deno.test("JSON duplicate keys are errors, as in YAML", async () => {
  assert.equal(
    await onlyProblem('{"version": 1,\n "gpus": [{"index": 0, "watts": 5, "watts": 6}]}'),
    'gpus[0].watts at line 2:36: duplicate key "watts": each key may appear once',
  );
});

// --- several problems -------------------------------------------------------------------------

Deno.test("every problem is listed, one per line, in file order", async () => {
  const text = `version: 1
gpus:
  - index: 0
    uuid: GPU-1
    watts: 250
  - name: "NVIDIA*"
    watts: -1
  - index: 2
    percent: 101
    color: red
`;
  const error = await parseError(text);
  assert.equal(
    error.message,
    `Invalid caps file ${PATH}: 4 problems:
  gpus[0] at line 3:5: expected exactly one of index, uuid, name to select GPUs, found index and uuid
  gpus[1].watts at line 7:12: expected a number of watts > 0 and <= 100000, got -1
  gpus[2].percent at line 9:14: expected a percentage of the GPU's default limit > 0 and <= 100, got 101
  gpus[2].color at line 10:5: unknown key "color" (allowed here: index, uuid, name, watts, percent)`,
  );
  assert.deepEqual(error.problems[1], {
    keyPath: "gpus[1].watts",
    line: 7,
    column: 12,
    reason: "expected a number of watts > 0 and <= 100000, got -1",
  });
});

// --- reading ----------------------------------------------------------------------------------

Deno.test("readCapsFile: a missing file is a CapsFileError that says what to do", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/caps.yaml`;
    await assert.rejects(
      () => readCapsFile(path),
      (error: unknown) => {
        assert.ok(error instanceof CapsFileError);
        assert.equal(
          error.message,
          `Invalid caps file ${path}: file not found: create it or point --caps-file at an ` +
            "existing file",
        );
        return true;
      },
    );
    await Deno.writeTextFile(path, "version: 1\ndefault: {watts: 300}\n");
    assert.equal((await readCapsFile(path)).default?.kind, "watts");
    await assert.rejects(() => readCapsFile(dir), /this is a directory, not a caps file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("formatKeyPath quotes unusual keys", () => {
  assert.equal(formatKeyPath(["gpus", 1, "watts"]), "gpus[1].watts");
  assert.equal(formatKeyPath([]), "");
  assert.equal(formatKeyPath(["gpus", 0, "my key"]), 'gpus[0]["my key"]');
});

Deno.test("a misspelt value key is reported once; an unrelated unknown key does not hide a missing value", async () => {
  // `wats` explains the missing value: no separate "found none".
  assert.equal((await parseError("version: 1\ndefault: {wats: 5}\n")).problems.length, 1);
  // `color` does not: both problems are reported.
  assert.deepEqual(
    (await parseError("version: 1\ndefault: {color: red}\n")).problems.map((p) => p.keyPath),
    ["default", "default.color"],
  );
  // A misspelt selector with a proper value: one problem about the selector key.
  assert.deepEqual(
    (await parseError("version: 1\ngpus:\n  - {indx: 0, watts: 5}\n")).problems.map(
      formatCapsFileProblem,
    ),
    [
      'gpus[0].indx at line 3:6: unknown key "indx" (allowed here: index, uuid, name, watts, ' +
      'percent); did you mean "index"?',
    ],
  );
});

// --- budget -----------------------------------------------------------------------------------

Deno.test("budget: {watts: N} becomes the node power budget in milliwatts (YAML and JSON)", async () => {
  const yaml = await parse("version: 1\nbudget: {watts: 4000.5}\ndefault: {watts: 300}\n");
  assert.deepEqual(yaml.budget, { watts: 4000.5, mw: 4_000_500 });
  assert.deepEqual(yaml.default, { kind: "watts", watts: 300, mw: 300_000 });
  const json = await parse('{"version": 1, "budget": {"watts": 0.001}}');
  assert.deepEqual(json, { version: 1, rules: [], budget: { watts: 0.001, mw: 1 } });
  assert.equal((await parse("version: 1\n")).budget, undefined);
  assert.deepEqual((await parse("version: 1\nbudget: {watts: 100000}\n")).budget, {
    watts: 100_000,
    mw: 100_000_000,
  });
});

Deno.test("budget: out-of-range, non-numeric and missing watts report line:column", async () => {
  const expected = "expected the node's power budget in watts: a number >= 0.001 and <= 100000";
  assert.equal(
    await onlyProblem("version: 1\nbudget:\n  watts: 0\n"),
    `budget.watts at line 3:10: ${expected}, got 0`,
  );
  assert.equal(
    await onlyProblem("version: 1\nbudget: {watts: 100001}\n"),
    `budget.watts at line 2:17: ${expected}, got 100001`,
  );
  assert.equal(
    await onlyProblem('version: 1\nbudget: {watts: "4000"}\n'),
    `budget.watts at line 2:17: ${expected}, got the string "4000" (remove the quotes)`,
  );
  assert.equal(
    await onlyProblem("version: 1\nbudget: {}\n"),
    `budget.watts at line 2:9: missing required key watts: ${expected}`,
  );
  assert.equal(
    await onlyProblem('{\n  "version": 1,\n  "budget": 4000\n}'),
    "budget at line 3:13: expected a mapping with the node's power budget, e.g. {watts: 4000}, " +
      "got 4000",
  );
});

Deno.test("budget: unknown keys are named with the allowed ones", async () => {
  assert.equal(
    await onlyProblem("version: 1\nbudget:\n  watts: 4000\n  wats: 1\n"),
    'budget.wats at line 4:3: unknown key "wats" (allowed here: watts); did you mean "watts"?',
  );
  assert.equal(
    await onlyProblem("version: 1\nbugdet: {watts: 4000}\n"),
    'bugdet at line 2:1: unknown key "bugdet" (allowed here: version, default, gpus, budget); ' +
      'did you mean "budget"?',
  );
});

// --- hostile input ----------------------------------------------------------------------------

Deno.test("excerpt: at most 40 characters, quoted, control characters escaped, … when cut", () => {
  assert.equal(excerpt("abc"), '"abc"');
  assert.equal(excerpt("a\u0000b\nc\u007fd\u009b"), '"a\\u0000b\\nc\\u007fd\\u009b"');
  const long = excerpt("S".repeat(39) + "é" + "TAIL");
  assert.equal(long, `"${"S".repeat(39)}é…"`);
  assert.doesNotMatch(long, /TAIL/);
});

Deno.test("a value or key from the file is echoed only as a short excerpt", async () => {
  const secret = `dbuser:S3CRET-${"x".repeat(200)}`;
  const error = await parseCapsFile(`${secret}\n`, { path: "/p" }).catch((e) => e);
  assert.ok(error instanceof CapsFileError);
  assert.ok(!error.message.includes("x".repeat(27)), error.message);
  assert.match(error.message, /got the string "dbuser:S3CRET-x{26}…"/);
  const key = await parseCapsFile(`{"version": 1, "${"k".repeat(100)}": 1}`, { path: "/p" })
    .catch((e) => e);
  assert.ok(!key.message.includes("k".repeat(41)), key.message);
});

Deno.test("nesting that exhausts the stack is a CapsFileError, not a crash", async () => {
  for (const text of ["[".repeat(500_000), '{"a":'.repeat(200_000), "- ".repeat(200_000)]) {
    await assert.rejects(
      () => parseCapsFile(text, { path: "/p" }),
      (e: unknown) => e instanceof CapsFileError,
    );
  }
});

Deno.test("readCapsFile: a symlink out of the directory is refused; ..data symlinks inside work", async () => {
  const dir = await Deno.makeTempDir();
  const outside = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${outside}/secret`, "dbuser:S3CRET\n");
    await Deno.symlink(`${outside}/secret`, `${dir}/caps.yaml`);
    await assert.rejects(
      () => readCapsFile(`${dir}/caps.yaml`),
      (e: unknown) =>
        e instanceof CapsFileError && /outside the caps file's directory/.test(e.message) &&
        !e.message.includes("S3CRET"),
    );
    await Deno.remove(`${dir}/caps.yaml`);
    await Deno.mkdir(`${dir}/..2026_01`);
    await Deno.writeTextFile(`${dir}/..2026_01/caps.yaml`, "version: 1\ndefault: {watts: 300}\n");
    await Deno.symlink("..2026_01", `${dir}/..data`);
    await Deno.symlink("..data/caps.yaml", `${dir}/caps.yaml`);
    assert.equal((await readCapsFile(`${dir}/caps.yaml`)).default?.kind, "watts");
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("a parser message quoting the file (an unresolved alias) is cut to a short excerpt", async () => {
  const error = await parseError(`version: *S3CRET${"S".repeat(100)}\u0001\n`);
  assert.match(error.message, /Unresolved alias .*: S3CRETS{34}…$/);
  assert.ok(!error.message.includes("S".repeat(41)));
});
