/**
 * Entry point of `deno task agent`: installs the launcher's signal listeners before loading the
 * launcher (whose modules take a while to load), so a SIGTERM/SIGINT/SIGHUP right after start is
 * forwarded to the agent once it runs, never fatal to the launcher (see `early_signals.ts`,
 * `forward_signals.ts`).
 *
 * @module
 */
import { captureEarlySignals } from "../cli/early_signals.ts";

if (import.meta.main) {
  const earlySignals = captureEarlySignals();
  const { launch } = await import("./launch.ts");
  Deno.exit(await launch(Deno.args, { earlySignals }));
}
