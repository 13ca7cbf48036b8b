/**
 * The `yaml` package, loaded on first use: only YAML content (caps files, kubeconfigs) needs it,
 * and an agent reading a JSON caps file never pays its memory.
 *
 * Works from the sources and from the bundle (`deno task bundle`): there the package is
 * CommonJS behind a default export (Deno's own loader offers its named exports, the bundler does
 * not), so a destructured `parse` would be undefined in the shipped agent.
 *
 * @module
 */

/** The `yaml` module's API. */
export type YamlModule = typeof import("yaml");

/** Load `yaml` (named exports in both the sources and the bundle). */
export async function loadYaml(): Promise<YamlModule> {
  const mod = await import("yaml");
  return typeof (mod as { parseDocument?: unknown }).parseDocument === "function"
    ? mod
    : (mod as unknown as { default: YamlModule }).default;
}
