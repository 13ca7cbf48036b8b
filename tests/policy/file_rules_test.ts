import assert from "node:assert/strict";
import {
  capsValueToMw,
  describeCapsRule,
  describeCapsValue,
  globToRegExp,
  resolveFileCaps,
} from "../../src/policy/file_rules.ts";
import { parseCapsFile } from "../../src/sources/caps_file.ts";
import type { GpuView } from "../../src/sources/cap_source.ts";

const H100 = "NVIDIA H100 80GB HBM3";
const A100 = "NVIDIA A100-SXM4-40GB";

function gpu(index: number, name: string, defaultMw = 700_000): GpuView {
  return {
    index,
    uuid: `GPU-0000000${index}-aaaa-bbbb-cccc-dddddddddddd`,
    name,
    pciBusId: `00000000:1${index}:00.0`,
    defaultMw,
    minMw: 100_000,
    maxMw: defaultMw,
    pids: null,
  };
}

const gpus = [gpu(0, H100), gpu(1, H100), gpu(2, A100, 400_000)];

function parse(yaml: string) {
  return parseCapsFile(yaml, { path: "/etc/gpu-power-agent/caps.yaml" });
}

Deno.test("resolveFileCaps: default applies to every GPU no rule matches", async () => {
  const spec = await parse(
    "version: 1\ndefault: {watts: 300}\ngpus:\n  - index: 1\n    watts: 250\n",
  );
  const desired = resolveFileCaps(spec, gpus);
  assert.deepEqual(desired.get(gpus[0].uuid), {
    mw: 300_000,
    reason: "caps file default",
    kind: "file",
  });
  assert.deepEqual(desired.get(gpus[1].uuid), {
    mw: 250_000,
    reason: "caps file rule gpus[0] (index 1)",
    kind: "file",
  });
  assert.equal(desired.get(gpus[2].uuid)?.mw, 300_000);
});

Deno.test("resolveFileCaps: without a default, unmatched GPUs are absent (unmanaged)", async () => {
  const spec = await parse("version: 1\ngpus:\n  - index: 2\n    watts: 200\n");
  const desired = resolveFileCaps(spec, gpus);
  assert.deepEqual([...desired.keys()], [gpus[2].uuid]);
});

Deno.test("resolveFileCaps: a file with only a version manages nothing", async () => {
  assert.equal(resolveFileCaps(await parse("version: 1\n"), gpus).size, 0);
});

Deno.test("resolveFileCaps: later rules win over earlier ones", async () => {
  const spec = await parse(
    `version: 1
gpus:
  - name: "NVIDIA H100*"
    watts: 500
  - index: 1
    watts: 250
  - name: "NVIDIA *"
    percent: 50
  - uuid: ${gpus[2].uuid}
    watts: 222.5
`,
  );
  const desired = resolveFileCaps(spec, gpus);
  // gpus[2] ("NVIDIA *") is the last rule matching GPU 0 and 1.
  assert.deepEqual(desired.get(gpus[0].uuid), {
    mw: 350_000,
    reason: 'caps file rule gpus[2] (name "NVIDIA *")',
    kind: "file",
  });
  assert.equal(desired.get(gpus[1].uuid)?.reason, 'caps file rule gpus[2] (name "NVIDIA *")');
  assert.deepEqual(desired.get(gpus[2].uuid), {
    mw: 222_500,
    reason: `caps file rule gpus[3] (uuid "${gpus[2].uuid}")`,
    kind: "file",
  });
});

Deno.test("resolveFileCaps: an earlier rule applies where no later rule matches", async () => {
  const spec = await parse(
    'version: 1\ngpus:\n  - name: "NVIDIA H100*"\n    watts: 500\n  - index: 1\n    watts: 250\n',
  );
  const desired = resolveFileCaps(spec, gpus);
  assert.equal(desired.get(gpus[0].uuid)?.reason, 'caps file rule gpus[0] (name "NVIDIA H100*")');
  assert.equal(desired.get(gpus[0].uuid)?.mw, 500_000);
  assert.equal(desired.get(gpus[1].uuid)?.mw, 250_000);
  assert.equal(desired.has(gpus[2].uuid), false);
});

Deno.test("resolveFileCaps: percent is of each GPU's own default limit, rounded", async () => {
  const spec = await parse("version: 1\ndefault: {percent: 33.3}\n");
  const desired = resolveFileCaps(spec, [gpu(0, H100, 700_000), gpu(1, A100, 400_001)]);
  assert.equal(desired.get(gpu(0, H100).uuid)?.mw, 233_100);
  assert.equal(desired.get(gpu(1, A100).uuid)?.mw, Math.round(400_001 * 33.3 / 100));
  assert.ok(Number.isInteger(desired.get(gpu(1, A100).uuid)?.mw));
});

Deno.test("resolveFileCaps: rules that match no GPU are fine", async () => {
  const spec = await parse(
    "version: 1\ngpus:\n  - index: 7\n    watts: 100\n  - uuid: GPU-gone\n    watts: 100\n" +
      '  - name: "Tesla*"\n    watts: 100\n',
  );
  assert.equal(resolveFileCaps(spec, gpus).size, 0);
  assert.equal(resolveFileCaps(spec, []).size, 0);
});

const matchesNameGlob = (pattern: string, name: string) => globToRegExp(pattern).test(name);

Deno.test("globToRegExp: * and ? match, everything else is literal, whole name", () => {
  assert.ok(matchesNameGlob("NVIDIA H100*", H100));
  assert.ok(matchesNameGlob("*H100*", H100));
  assert.ok(matchesNameGlob("*", H100));
  assert.ok(matchesNameGlob("NVIDIA H?00 80GB HBM3", H100));
  assert.ok(matchesNameGlob(H100, H100));
  assert.ok(!matchesNameGlob("H100*", H100), "anchored at the start");
  assert.ok(!matchesNameGlob("NVIDIA H100", H100), "anchored at the end");
  assert.ok(!matchesNameGlob("nvidia h100*", H100), "case-sensitive");
  assert.ok(!matchesNameGlob("NVIDIA H?100*", H100), "? is exactly one character");
  assert.ok(matchesNameGlob("NVIDIA A100-SXM4-??GB", A100));
  // Regular-expression characters are literal.
  assert.ok(matchesNameGlob("a.b+(c)[d]{e}|^$\\", "a.b+(c)[d]{e}|^$\\"));
  assert.ok(!matchesNameGlob("a.c", "abc"));
  assert.ok(!matchesNameGlob("[ab]", "a"));
  assert.equal(globToRegExp("x*").source, "^x[^]*$");
});

Deno.test("capsValueToMw, describeCapsRule and describeCapsValue", () => {
  assert.equal(capsValueToMw({ kind: "watts", watts: 250.5, mw: 250_500 }, 700_000), 250_500);
  assert.equal(capsValueToMw({ kind: "percent", percent: 80 }, 700_000), 560_000);
  assert.equal(
    describeCapsRule({
      position: 2,
      selector: { kind: "name", pattern: "NVIDIA H100*" },
      value: { kind: "percent", percent: 80 },
    }),
    'gpus[2] (name "NVIDIA H100*")',
  );
  assert.equal(describeCapsValue({ kind: "watts", watts: 300, mw: 300_000 }), "300 W");
  assert.equal(describeCapsValue({ kind: "percent", percent: 80 }), "80% of default");
});
