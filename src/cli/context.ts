/** What every subcommand gets from the dispatcher: parsed options and where to print. */
import type { AgentOptions } from "./flags.ts";
import type { EarlySignals } from "./early_signals.ts";

/** Output streams of the CLI (injected so tests can capture them). */
export interface CliIo {
  /** Write a line of command output (not logs) to stdout. */
  out(line: string): void;
  /** Write a line of user-facing error output to stderr. */
  err(line: string): void;
}

/** Options common to every subcommand handler. */
export interface CommandContext {
  options: AgentOptions;
  io: CliIo;
  /** Absolute path of libnvidia-ml.so.1 to load. */
  nvmlLibraryPath: string;
  /** Signals recorded while the CLI loaded (`main.ts`); `run` takes them over. */
  earlySignals?: EarlySignals;
}

/** Exit codes of the agent. */
export const EXIT = Object.freeze({
  ok: 0,
  failure: 1,
  usage: 2,
  driverNotFound: 3,
});
