/**
 * README.md against the code: every flag of the flag table is documented in one of the README's
 * flag tables with its default, every flag those tables document exists, every metric of a real
 * scrape is listed and every metric listed exists, every `#anchor` link resolves to a heading,
 * and every test the "What the agent guarantees" section names exists.
 */
import { deepStrictEqual, ok } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { FLAGS } from "../../src/cli/flags.ts";
import { exposedMetricNames, scrapeAgent } from "../helpers/agent_scrape.ts";

const README = Deno.readTextFileSync(new URL("../../README.md", import.meta.url));
const TESTS = fileURLToPath(new URL("../", import.meta.url));

/** Table rows as cells (`\|` inside a cell kept), outside code blocks, with their table's header. */
function tableRows(text: string): { header: string[]; row: string[] }[] {
  let fenced = false;
  let header: string[] | undefined;
  const rows: { header: string[]; row: string[] }[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("```")) fenced = !fenced;
    if (fenced || !line.startsWith("|")) {
      header = undefined;
      continue;
    }
    const row = line.slice(1, -1).split(/(?<!\\)\|/).map((cell) => cell.trim());
    if (!header) header = row;
    else if (!/^-+$/.test(row[0])) rows.push({ header, row });
  }
  return rows;
}

/** Rows of the flag tables (header `flag`), by every `--flag` their first cell names. */
function flagRows(readme: string): Map<string, string[]> {
  const rows = new Map<string, string[]>();
  for (const { header, row } of tableRows(readme)) {
    if (header[0] !== "flag") continue;
    for (const [, name] of row[0].matchAll(/`--([a-z][a-z-]*)/g)) rows.set(name, row);
  }
  return rows;
}

/** Flags documented that do not exist, flags not documented, defaults that differ. */
function flagProblems(readme: string): string[] {
  const rows = flagRows(readme);
  const known = new Set(FLAGS.map((f) => f.name));
  const booleans = new Set(FLAGS.filter((f) => f.type === "boolean").map((f) => f.name));
  const problems = [...rows.keys()]
    .filter((name) => !known.has(name) && !(name.startsWith("no-") && booleans.has(name.slice(3))))
    .map((name) => `--${name} is documented but the agent has no such flag`);
  for (const flag of FLAGS) {
    const row = rows.get(flag.name);
    if (!row) {
      problems.push(`--${flag.name} is not in a README flag table`);
      continue;
    }
    const shown = row[1];
    const want = flag.type === "boolean"
      ? (flag.default === true ? "on" : "off")
      : flag.default === undefined
      ? undefined
      : `\`${flag.default}\``;
    if (want !== undefined && shown !== want) {
      problems.push(`--${flag.name}: README default ${shown}, the code says ${want}`);
    }
  }
  return problems;
}

Deno.test("README: every flag is in a flag table with its default, and every documented flag exists", () => {
  deepStrictEqual(flagProblems(README), []);
});

Deno.test("README flag check fails on an unknown flag, a missing flag and a wrong default", () => {
  const broken = README
    .replace(/^\| `--interval S` +\| `30` /m, "| `--interval S` | `31` ")
    .replace(/^\| `--json` .*$/m, "| `--jsonx` | off | x |");
  deepStrictEqual(flagProblems(broken), [
    "--jsonx is documented but the agent has no such flag",
    "--interval: README default `31`, the code says `30`",
    "--json is not in a README flag table",
  ]);
});

Deno.test("README: every #anchor link resolves to a heading", () => {
  const slugs = new Set<string>();
  let fenced = false;
  for (const line of README.split("\n")) {
    if (line.startsWith("```")) fenced = !fenced;
    const heading = !fenced && line.match(/^#+ (.*)$/);
    if (!heading) continue;
    slugs.add(
      heading[1].trim().toLowerCase().replaceAll("`", "").replace(/[^\p{L}\p{N}_\- ]/gu, "")
        .replaceAll(" ", "-"),
    );
  }
  const broken = [...README.matchAll(/\]\(#([^)]+)\)/g)].map((m) => m[1])
    .filter((anchor) => !slugs.has(anchor));
  deepStrictEqual(broken, []);
  ok(slugs.has("what-the-agent-guarantees"));
});

Deno.test("README: every test the guarantees name exists in the file named", async () => {
  const start = README.indexOf("## What the agent guarantees");
  const section = README.slice(start, README.indexOf("\n## ", start + 1));
  const missing: string[] = [];
  let named = 0;
  // A file reference, then the quoted test names after it (up to the next file reference).
  const parts = section.replaceAll(/\n\s*/g, " ").split(/`((?:[a-z0-9_]+\/)+[a-z0-9_]+_test\.ts)`/);
  for (let i = 1; i < parts.length; i += 2) {
    const source = await Deno.readTextFile(`${TESTS}${parts[i]}`);
    const names = source.replaceAll(/\s*\n\s*/g, " ");
    for (const [, quoted] of parts[i + 1].matchAll(/"([^"]+)"/g)) {
      named++;
      // Test names may be templates (`${name}: …`, `… ${kind} …`): match the literal parts.
      const wanted = quoted.replaceAll("\\`", "`").replace(/^(sync|async): /, "").replace(
        / …$/,
        "",
      );
      const found = names.includes(wanted) || templateMatches(names, wanted);
      if (!found) missing.push(`${parts[i]}: "${quoted}"`);
    }
  }
  ok(named > 40, `only ${named} test names found in the section`);
  deepStrictEqual(missing, []);
});

/** Whether a `Deno.test(`…${x}…`)` template in the source, with `${…}` as a wildcard, gives `name`. */
function templateMatches(source: string, name: string): boolean {
  for (const [, template] of source.matchAll(/Deno\.test\(\s*`([^`]+)`/g)) {
    const pattern = template.split(/\$\{[^}]*\}/).map((part) =>
      part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
    ).join(".+?");
    if (new RegExp(`^(?:.*?)?${pattern}$`).test(name)) return true;
  }
  return false;
}

Deno.test("README: the metrics tables list exactly the metrics of a real scrape", async () => {
  const exposed = exposedMetricNames(await scrapeAgent());
  const families = [...exposed].filter((name) =>
    !/_(bucket|sum|count)$/.test(name) || !exposed.has(name.replace(/_(bucket|sum|count)$/, ""))
  );
  const listed = new Set<string>();
  for (const { header, row } of tableRows(README)) {
    if (header[0] !== "metric") continue;
    for (const [, name] of row[0].matchAll(/`([a-z]+_[a-z_]+)[`{]/g)) listed.add(name);
  }
  const full = (name: string) =>
    exposed.has(name)
      ? name
      : exposed.has(`gpu_power_agent_${name}`)
      ? `gpu_power_agent_${name}`
      : "";
  deepStrictEqual([...listed].filter((name) => !full(name)), [], "listed but not exposed");
  const listedFull = new Set([...listed].map(full));
  deepStrictEqual(families.filter((name) => !listedFull.has(name)), [], "exposed but not listed");
});
