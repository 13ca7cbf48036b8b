/**
 * gpu-power-agent: keeps each NVIDIA GPU's power limit where its owner wants it.
 * Only wires and exits; everything else lives in src/.
 */
import { runCli } from "./src/cli/cli.ts";

if (import.meta.main) {
  Deno.exit(await runCli(Deno.args));
}
