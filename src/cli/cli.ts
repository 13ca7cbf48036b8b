/**
 * Entry point of the command line: parse, configure logging, locate NVML, dispatch, map errors to
 * exit codes. `main.ts` only calls {@linkcode runCli} and exits with its result.
 */
import { helpText, parseCommandLine, UsageError } from "./flags.ts";
import type { CliIo, CommandContext } from "./context.ts";
import { EXIT } from "./context.ts";
import { configureLogging } from "./logging.ts";
import { resolveNvmlLibraryPath } from "../nvml/library_path.ts";
import { NvmlLibraryError } from "../nvml/errors.ts";
import { CapsFileError } from "../sources/caps_file.ts";
import { StateDirError } from "../state/state_lock.ts";

/** Options for {@linkcode runCli}. */
export interface RunCliOptions {
  /** Environment lookup; default reads only the variables named in the flag table. */
  env?: (name: string) => string | undefined;
  io?: CliIo;
}

function defaultEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // not granted: treated as unset
  }
}

const consoleIo: CliIo = {
  out: (line) => console.log(line),
  err: (line) => console.error(line),
};

/** Run the CLI with `argv` (without the program name) and return the exit code. */
export async function runCli(
  argv: readonly string[],
  options: RunCliOptions = {},
): Promise<number> {
  const io = options.io ?? consoleIo;
  const env = options.env ?? defaultEnv;
  let parsed;
  try {
    parsed = parseCommandLine(argv, { env });
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(err.message);
      return EXIT.usage;
    }
    throw err;
  }
  if (parsed.help || !parsed.command) {
    const text = helpText(parsed.command);
    if (parsed.help) {
      io.out(text);
      return EXIT.ok;
    }
    io.err(text);
    return EXIT.usage;
  }
  const { command, options: opts } = parsed;
  await configureLogging({ level: opts.logLevel, format: opts.logFormat });
  try {
    // Usage problems of `run` are reported before looking for the driver.
    const run = command === "run" ? await import("./run_command.ts") : undefined;
    run?.selectSource(opts);
    const nvmlLibraryPath = libraryPath(opts.nvmlLibrary);
    const ctx: CommandContext = { options: opts, io, nvmlLibraryPath };
    switch (command) {
      case "run":
        return await run!.runCommand(ctx);
      case "status": {
        const { statusCommand } = await import("./status_command.ts");
        return await statusCommand(ctx);
      }
      case "check": {
        const { checkCommand } = await import("./check_command.ts");
        return await checkCommand(ctx);
      }
      case "restore": {
        const { restoreCommand } = await import("./restore_command.ts");
        return restoreCommand(ctx);
      }
    }
  } catch (err) {
    return reportFatal(err, io);
  }
}

/** The NVML library to load; a relative explicit path is a usage error. */
function libraryPath(explicit: string | undefined): string {
  try {
    return resolveNvmlLibraryPath(explicit);
  } catch (err) {
    if (err instanceof TypeError) throw new UsageError(`--nvml-library: ${err.message}`);
    throw err;
  }
}

/** Print a fatal error the way a user can act on it and return the exit code. */
export function reportFatal(err: unknown, io: CliIo): number {
  if (err instanceof UsageError) {
    io.err(`gpu-power-agent: ${err.message}`);
    return EXIT.usage;
  }
  // Matched by name: the Kubernetes client module is loaded only in Kubernetes mode.
  // An unusable state dir is configuration, like an invalid caps file: restarting cannot help.
  if (
    err instanceof CapsFileError || err instanceof StateDirError ||
    (err instanceof Error && err.name === "KubeConfigError")
  ) {
    io.err(`gpu-power-agent: ${err.message}`);
    return EXIT.usage;
  }
  if (err instanceof NvmlLibraryError) {
    io.err(`gpu-power-agent: ${err.message}`);
    return EXIT.driverNotFound;
  }
  if (err instanceof Deno.errors.NotCapable || err instanceof Deno.errors.PermissionDenied) {
    io.err(
      `gpu-power-agent: ${(err as Error).message}. The agent runs with a scoped permission set: ` +
        "start it through 'deno task agent', the compiled binary or the systemd unit, " +
        "or widen the --allow-* flags for the paths you pass.",
    );
    return EXIT.failure;
  }
  io.err(`gpu-power-agent: ${err instanceof Error ? err.message : String(err)}`);
  return EXIT.failure;
}
