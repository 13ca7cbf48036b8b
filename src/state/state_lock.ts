/**
 * One writer per state directory: `run` and `restore` hold an exclusive `flock` on
 * `<state-dir>/agent.lock` for as long as they run, with the holder's PID written into the file.
 *
 * The kernel releases an flock when the process dies, SIGKILL included, so a crashed agent never
 * leaves a stale lock; the file itself stays (it is never deleted: deleting a lock file races
 * with a process that has just opened it). A second `run`, or `restore` beside a live agent, is
 * refused with a {@linkcode StateLockError} naming the holder's PID. Taking the lock also
 * proves that the state directory is usable (it can be created, opened for writing and locked):
 * an unusable directory is a {@linkcode StateDirError}, found at start instead of at the first
 * journal write. Read-only commands (`status`, `check`) do not take the lock.
 *
 * @module
 */

/** File name of the lock inside the state directory. */
export const LOCK_FILE = "agent.lock";

/** The state directory is locked by another live process. */
export class StateLockError extends Error {
  override name = "StateLockError";
  /** PID written by the holder, when readable. */
  readonly holderPid: number | undefined;
  /** The lock file. */
  readonly path: string;

  constructor(path: string, holderPid: number | undefined, message: string) {
    super(message);
    this.path = path;
    this.holderPid = holderPid;
  }
}

/** The state directory cannot be created, written or locked (permissions, read-only, not a dir). */
export class StateDirError extends Error {
  override name = "StateDirError";
  /** The state directory. */
  readonly stateDir: string;

  constructor(stateDir: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.stateDir = stateDir;
  }
}

/** A held lock; release it with {@linkcode StateLock.release} (or let the process exit). */
export interface StateLock {
  /** The lock file. */
  readonly path: string;
  /** Unlock and close (idempotent). */
  release(): void;
}

/** Options of {@linkcode acquireStateLock}. */
export interface AcquireStateLockOptions {
  /** What the caller is about to do, for the refusal message, e.g. "run" or "restore". */
  command: string;
}

function lockPath(stateDir: string): string {
  return stateDir.endsWith("/") ? `${stateDir}${LOCK_FILE}` : `${stateDir}/${LOCK_FILE}`;
}

/** PID recorded in an existing lock file, or undefined (bounded read: 64 bytes). */
export function readLockHolder(stateDir: string): number | undefined {
  try {
    using file = Deno.openSync(lockPath(stateDir), { read: true });
    if (!file.statSync().isFile) return undefined;
    const buffer = new Uint8Array(64);
    const n = file.readSync(buffer) ?? 0;
    const text = new TextDecoder().decode(buffer.subarray(0, n)).trim();
    return /^\d{1,10}$/.test(text) ? Number(text) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Take the exclusive lock on `stateDir` (created with mode 0700 when missing) and write this
 * process's PID into it. Never blocks. Throws {@linkcode StateLockError} when another process
 * holds it and {@linkcode StateDirError} when the directory is unusable.
 */
export function acquireStateLock(stateDir: string, options: AcquireStateLockOptions): StateLock {
  const path = lockPath(stateDir);
  let file: Deno.FsFile;
  try {
    Deno.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    file = Deno.openSync(path, { read: true, write: true, create: true, mode: 0o600 });
  } catch (error) {
    throw unusable(stateDir, path, error);
  }
  let locked: boolean;
  try {
    if (!file.statSync().isFile) throw new Error(`${path} is not a regular file`);
    locked = file.tryLockSync(true);
  } catch (error) {
    file.close();
    throw unusable(stateDir, path, error);
  }
  if (!locked) {
    file.close();
    const pid = readLockHolder(stateDir);
    const who = pid === undefined
      ? "another gpu-power-agent process"
      : `gpu-power-agent PID ${pid}`;
    throw new StateLockError(
      path,
      pid,
      `Cannot ${options.command}: the state directory ${stateDir} is in use by ${who} ` +
        `(lock ${path}). Only one agent may use a state directory; a running agent restores ` +
        `every GPU itself when it stops: stop it (systemctl stop gpu-power-agent, or kill -TERM ` +
        `${pid ?? "<pid>"}) instead of running ${options.command} beside it`,
    );
  }
  try {
    file.truncateSync(0);
    const bytes = new TextEncoder().encode(`${Deno.pid}\n`);
    let offset = 0;
    while (offset < bytes.length) offset += file.writeSync(bytes.subarray(offset));
  } catch (error) {
    file.close();
    throw unusable(stateDir, path, error);
  }
  let released = false;
  return {
    path,
    release() {
      if (released) return;
      released = true;
      try {
        file.unlockSync();
      } finally {
        file.close();
      }
    },
  };
}

function unusable(stateDir: string, path: string, error: unknown): StateDirError {
  const reason = error instanceof Error ? error.message : String(error);
  return new StateDirError(
    stateDir,
    `State directory ${stateDir} is not usable (cannot create and lock ${path}: ${reason}). ` +
      `It must be a writable directory inside the agent's permission set (--state-dir)`,
    { cause: error },
  );
}
