/**
 * A process's start time from `/proc/<pid>/stat` (field 22, clock ticks since boot): with the
 * PID it identifies one process for good, so a PID the kernel has reused for another process
 * is told apart from the one a cache remembers.
 */

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
 * The start time of process `pid` read from `<procRoot>/<pid>/stat` (at most 4 KiB, regular
 * files only), or undefined when it cannot be read (the process exited, or no such file).
 * Never throws.
 */
export function readProcessStartTime(procRoot: string, pid: number): string | undefined {
  const path = `${procRoot}/${pid}/stat`;
  let file: Deno.FsFile | undefined;
  try {
    if (!Deno.lstatSync(path).isFile) return undefined;
    file = Deno.openSync(path, { read: true });
    const buffer = new Uint8Array(MAX_STAT_BYTES);
    let length = 0;
    while (length < buffer.length) {
      const n = file.readSync(buffer.subarray(length));
      if (n === null || n === 0) break;
      length += n;
    }
    return startTimeFromStat(new TextDecoder().decode(buffer.subarray(0, length)));
  } catch {
    return undefined;
  } finally {
    file?.close();
  }
}
