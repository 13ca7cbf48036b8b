/**
 * A process's start time from `/proc/<pid>/stat` (field 22, clock ticks since boot): with the
 * PID it identifies one process for good, so a PID the kernel has reused for another process
 * is told apart from the one a cache remembers.
 */

import { readBoundedTextSync } from "../state/bounded_read.ts";

/** `/proc/<pid>/stat` is a few hundred bytes; more than this is not a stat file. */
const MAX_STAT_BYTES = 4096;

/**
 * The start-time field of the content of a `/proc/<pid>/stat` file, or undefined when it is
 * not one. Pure. The command name (field 2) may contain spaces and parentheses, so fields are
 * counted after its last `)`.
 */
export function startTimeFromStat(text: string): string | undefined {
  const close = text.lastIndexOf(")");
  if (close < 0) return undefined;
  // Fields 3… follow ") ": state is field 3, so start time (22) is the 20th.
  const fields = text.slice(close + 2).split(" ");
  const start = fields[19];
  return start !== undefined && /^\d+$/.test(start) ? start : undefined;
}

/**
 * The start time of process `pid` read from `<procRoot>/<pid>/stat` (through the bounded
 * reader: regular files only, at most 4 KiB), or undefined when it cannot be read (the process
 * exited, or no such file). Never throws.
 */
export function readProcessStartTime(procRoot: string, pid: number): string | undefined {
  try {
    const { text } = readBoundedTextSync(`${procRoot}/${pid}/stat`, {
      limit: MAX_STAT_BYTES,
      what: "process stat file",
    });
    return startTimeFromStat(text);
  } catch {
    return undefined;
  }
}
