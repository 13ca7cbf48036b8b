/**
 * The import graph of main.ts (static, dynamic and type-only imports and re-exports of this
 * project's files) has no cycle: layers stay layers.
 */
import assert from "node:assert/strict";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["'](\.{1,2}\/[^"']+)["']/g;

/** Local files imported by `file` (absolute paths). */
function localImports(file: string): string[] {
  const text = Deno.readTextFileSync(file);
  return [...text.matchAll(SPECIFIER)].map((m) => join(dirname(file), m[1]));
}

/** Every cycle found by a depth-first walk from `entry`, as lists of root-relative paths. */
export function findCycles(entry: string): string[][] {
  const cycles: string[][] = [];
  const done = new Set<string>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const visit = (file: string) => {
    if (onStack.has(file)) {
      cycles.push([...stack.slice(stack.indexOf(file)), file].map((f) => relative(ROOT, f)));
      return;
    }
    if (done.has(file)) return;
    stack.push(file);
    onStack.add(file);
    for (const next of localImports(file)) visit(next);
    stack.pop();
    onStack.delete(file);
    done.add(file);
  };
  visit(entry);
  return cycles;
}

Deno.test("main.ts's import graph has no cycles", () => {
  const cycles = findCycles(join(ROOT, "main.ts"));
  assert.deepEqual(cycles, [], cycles.map((c) => c.join(" → ")).join("\n"));
});

Deno.test("the walker sees the whole agent and would find a cycle", () => {
  const dir = Deno.makeTempDirSync({ prefix: "gpa-graph-" });
  try {
    Deno.writeTextFileSync(`${dir}/a.ts`, `import type { B } from "./b.ts";\nexport type A = B;\n`);
    Deno.writeTextFileSync(`${dir}/b.ts`, `export { type A as B } from "./a.ts";\n`);
    assert.equal(findCycles(`${dir}/a.ts`).length, 1);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
  // Reached from main.ts: the reconciler's steps and the lazily imported Kubernetes source.
  const seen = new Set<string>();
  const walk = (f: string) => {
    if (seen.has(f)) return;
    seen.add(f);
    localImports(f).forEach(walk);
  };
  walk(join(ROOT, "main.ts"));
  for (const f of ["observe", "actuate", "report", "pass", "loop"]) {
    assert.ok(seen.has(join(ROOT, `src/reconcile/${f}.ts`)), f);
  }
  assert.ok(seen.has(join(ROOT, "src/policy/plan.ts")));
  assert.ok(seen.has(join(ROOT, "src/sources/kubernetes.ts")));
});
