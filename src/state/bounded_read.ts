/**
 * The one way the agent reads a file: regular files only, at most a fixed number of bytes per
 * kind of file, never a blocking open of a FIFO or a device.
 *
 * Deno cannot open with O_NONBLOCK, so the path is stat'ed first and anything that is not a
 * regular file (FIFO, character or block device such as `/dev/zero`, socket, directory) is
 * refused before it is opened. The read itself stops after `limit + 1` bytes whatever the size
 * the file reports: `/proc` files report size 0 and may be endless, and a file may grow while it
 * is read. The opened file is checked again (`fstat`) so a swap between stat and open cannot
 * slip a FIFO or a device in after the check.
 *
 * Limits ({@linkcode READ_LIMITS}): caps file 1 MiB, journal 16 MiB, `/proc/<pid>/cgroup` 64 KiB.
 *
 * @module
 */

/** Largest accepted size, in bytes, of each kind of file the agent reads. */
export const READ_LIMITS = Object.freeze({
  /** The caps file (`--caps-file`). */
  capsFile: 1024 * 1024,
  /** `<state-dir>/journal.json`. */
  journal: 16 * 1024 * 1024,
  /** `/proc/<pid>/cgroup`. */
  cgroup: 64 * 1024,
});

/** Why a bounded read refused a file. */
export type BoundedReadProblem = "not-regular" | "too-large" | "changed";

/** A file the bounded reader refused; the message names the file and what to do. */
export class BoundedReadError extends Error {
  override name = "BoundedReadError";
  /** The file. */
  readonly path: string;
  /** What was wrong with it. */
  readonly problem: BoundedReadProblem;

  constructor(path: string, problem: BoundedReadProblem, message: string) {
    super(message);
    this.path = path;
    this.problem = problem;
  }
}

/** Options of {@linkcode readBoundedText} and {@linkcode readBoundedTextSync}. */
export interface BoundedReadOptions {
  /** Most bytes accepted; a longer file is refused ({@linkcode READ_LIMITS}). */
  limit: number;
  /** What the file is, for messages, e.g. "caps file". */
  what: string;
}

/** Text of a bounded read and the file's identity and state when it was read. */
export interface BoundedText {
  text: string;
  /** `fstat` of the opened file (size, mtime, dev/ino) for stability checks. */
  info: Deno.FileInfo;
}

function kindOf(info: Deno.FileInfo): string {
  if (info.isDirectory) return "a directory";
  if (info.isFifo) return "a FIFO (named pipe)";
  if (info.isCharDevice) return "a character device";
  if (info.isBlockDevice) return "a block device";
  if (info.isSocket) return "a socket";
  return "not a regular file";
}

function refuseNonRegular(path: string, info: Deno.FileInfo, options: BoundedReadOptions): void {
  if (info.isFile) return;
  throw new BoundedReadError(
    path,
    "not-regular",
    `${options.what} ${path} is ${kindOf(info)}, not a regular file: refusing to read it ` +
      `(point it at a regular file)`,
  );
}

function tooLarge(path: string, options: BoundedReadOptions): BoundedReadError {
  return new BoundedReadError(
    path,
    "too-large",
    `${options.what} ${path} is larger than ${formatBytes(options.limit)}: refusing to read it ` +
      `(the limit for a ${options.what})`,
  );
}

function checkSame(path: string, before: Deno.FileInfo, after: Deno.FileInfo, what: string) {
  if (before.dev !== after.dev || before.ino !== after.ino) {
    throw new BoundedReadError(
      path,
      "changed",
      `${what} ${path} was replaced while it was being opened; read it again`,
    );
  }
}

/** `1 MiB`, `64 KiB`, `100 bytes`. */
export function formatBytes(bytes: number): string {
  if (bytes >= 1024 * 1024 && bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

/** Checks of the path's stat before it is opened, and of the opened file's fstat. */
function checkFile(
  path: string,
  options: BoundedReadOptions,
  stats: { before: Deno.FileInfo; opened?: Deno.FileInfo },
): void {
  refuseNonRegular(path, stats.opened ?? stats.before, options);
  if (stats.opened) checkSame(path, stats.before, stats.opened, options.what);
  else if (stats.before.size > options.limit) throw tooLarge(path, options);
}

/** The bytes read so far; never holds more than `limit + 1` of them. */
class BoundedBuffer {
  #buffer: Uint8Array<ArrayBuffer>;
  #length = 0;

  constructor(readonly path: string, readonly options: BoundedReadOptions, size: number) {
    this.#buffer = new Uint8Array(Math.min(options.limit, Math.max(size, 4096)) + 1);
  }

  /** Where the next read goes; grows the buffer when full (`/proc` reports size 0, files grow). */
  space(): Uint8Array<ArrayBuffer> {
    if (this.#length === this.#buffer.length) {
      if (this.#length > this.options.limit) throw tooLarge(this.path, this.options);
      const wider = new Uint8Array(Math.min(this.options.limit + 1, this.#length * 4));
      wider.set(this.#buffer);
      this.#buffer = wider;
    }
    return this.#buffer.subarray(this.#length);
  }

  /** Count `n` bytes read; false at end of file. */
  add(n: number | null): boolean {
    if (n === null || n === 0) return false;
    this.#length += n;
    return true;
  }

  text(): string {
    return new TextDecoder().decode(this.#buffer.subarray(0, this.#length));
  }
}

/**
 * Read a regular file of at most `limit` bytes as UTF-8 text, synchronously (for small files on
 * paths that must not yield). Throws {@linkcode BoundedReadError} for a non-regular or oversized
 * file; file-system errors (NotFound, PermissionDenied, NotCapable) pass through unchanged.
 */
export function readBoundedTextSync(path: string, options: BoundedReadOptions): BoundedText {
  const before = Deno.statSync(path);
  checkFile(path, options, { before });
  using file = Deno.openSync(path, { read: true });
  const info = file.statSync();
  checkFile(path, options, { before, opened: info });
  const bytes = new BoundedBuffer(path, options, info.size);
  while (bytes.add(file.readSync(bytes.space())));
  return { text: bytes.text(), info };
}

/**
 * Read a regular file of at most `limit` bytes as UTF-8 text without blocking the event loop.
 * Same checks and errors as {@linkcode readBoundedTextSync}.
 */
export async function readBoundedText(
  path: string,
  options: BoundedReadOptions,
): Promise<BoundedText> {
  const before = await Deno.stat(path);
  checkFile(path, options, { before });
  using file = await Deno.open(path, { read: true });
  const info = await file.stat();
  checkFile(path, options, { before, opened: info });
  const bytes = new BoundedBuffer(path, options, info.size);
  while (bytes.add(await file.read(bytes.space())));
  return { text: bytes.text(), info };
}
