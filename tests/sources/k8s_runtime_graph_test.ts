import assert from "node:assert/strict";

interface Dependency {
  specifier: string;
  code?: { specifier: string };
  type?: { specifier: string };
}
interface InfoModule {
  specifier: string;
  dependencies?: Dependency[];
}

/**
 * npm packages the agent's own modules load at run time: every `code` edge (static and dynamic
 * imports) of `deno info --json main.ts`. An `import type` edge has only a `type` side (it is
 * erased), although deno info still lists the package among its `modules` (it includes the type
 * graph) and its top-level `npmPackages` is the whole lockfile resolution, so neither is used.
 */
async function runtimeNpmPackages(): Promise<Set<string>> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", "main.ts"],
    cwd: new URL("../../", import.meta.url).pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
  const info = JSON.parse(new TextDecoder().decode(output.stdout)) as { modules: InfoModule[] };
  const packages = new Set<string>();
  const name = (specifier: string) =>
    specifier.replace(/^npm:\/?/, "").replace(/^(@[^/]+\/[^@/]+|[^@/]+).*$/, "$1");
  for (const module of info.modules) {
    for (const dependency of module.dependencies ?? []) {
      if (dependency.code?.specifier.startsWith("npm:")) {
        packages.add(name(dependency.code.specifier));
      }
    }
  }
  return packages;
}

Deno.test("the agent never loads @kubernetes/client-node at run time (type-only imports at most)", async () => {
  const packages = await runtimeNpmPackages();
  // The walk sees static and dynamic imports: the Kubernetes source's loader reaches yaml
  // through a dynamic import, the metrics through static ones.
  assert.ok(packages.has("yaml"), [...packages].join(", "));
  assert.ok(packages.has("prom-client"), [...packages].join(", "));
  assert.ok(!packages.has("@kubernetes/client-node"), [...packages].join(", "));
  // Nothing it depends on either: no second YAML parser, no auth plugins, no undici.
  for (const library of ["js-yaml", "undici", "openid-client", "jsonpath-plus", "oauth4webapi"]) {
    assert.ok(!packages.has(library), library);
  }
});
