/**
 * gpu-power-agent: keeps each NVIDIA GPU's power limit where its owner wants it.
 * Only wires and exits; everything else lives in src/.
 *
 * Signal listeners come first: the CLI is imported only afterwards (dynamically), so a SIGTERM
 * while its modules load is recorded and handled (see src/cli/early_signals.ts), never fatal.
 */
import { captureEarlySignals } from "./src/cli/early_signals.ts";

if (import.meta.main) {
  const earlySignals = captureEarlySignals();
  const { runCli } = await import("./src/cli/cli.ts");
  Deno.exit(await runCli(Deno.args, { earlySignals }));
}
