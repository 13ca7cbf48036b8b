/**
 * The agent's bundle (`deno task bundle`, what the image and the binary ship), built once per
 * test process into a temporary directory and shared by the tests that run what ships.
 *
 * @module
 */
import { buildBundle } from "../../src/permissions/bundle.ts";

let built: Promise<{ dir: string; entry: string }> | undefined;

/** Directory and entry point (`main.js`) of a bundle of the current sources. */
export function agentBundle(): Promise<{ dir: string; entry: string }> {
  built ??= (async () => {
    const dir = `${await Deno.makeTempDir({ prefix: "gpu-power-agent-bundle-" })}/agent`;
    return { dir, entry: await buildBundle({ outDir: dir }) };
  })();
  return built;
}
