/**
 * systemd/caps.example.yaml is installed as the first /etc/gpu-power-agent/caps.yaml: as shipped
 * it must be valid and cap nothing; with its examples uncommented it must be valid and use every
 * option of the format.
 */
import { deepStrictEqual, equal, match } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseCapsFile } from "../../src/sources/caps_file.ts";

const EXAMPLE = fileURLToPath(new URL("../../systemd/caps.example.yaml", import.meta.url));

/** The example with its commented `default:` line and `gpus:` block uncommented. */
function uncommented(text: string): string {
  const lines = text.split("\n");
  const gpus = lines.findIndex((l) => l.startsWith("# gpus:"));
  return lines.map((line, i) =>
    line.startsWith("# default:") || (i >= gpus && line.startsWith("# ")) ? line.slice(2) : line
  ).join("\n");
}

Deno.test("the example as shipped is valid and caps nothing", async () => {
  const text = await Deno.readTextFile(EXAMPLE);
  const spec = await parseCapsFile(text, { path: EXAMPLE });
  equal(spec.version, 1);
  equal(spec.default, undefined);
  deepStrictEqual(spec.rules, []);
});

Deno.test("the example's commented options are valid and cover the whole format", async () => {
  const text = uncommented(await Deno.readTextFile(EXAMPLE));
  const spec = await parseCapsFile(text, { path: EXAMPLE });
  deepStrictEqual(spec.default, { kind: "percent", percent: 80 });
  deepStrictEqual(spec.rules.map((r) => [r.selector.kind, r.value.kind]), [
    ["name", "watts"],
    ["index", "watts"],
    ["uuid", "percent"],
  ]);
  for (const key of ["version", "default", "gpus", "index", "uuid", "name", "watts", "percent"]) {
    match(await Deno.readTextFile(EXAMPLE), new RegExp(`\\b${key}\\b`));
  }
});
