/**
 * The restore journal: per GPU UUID, the power limit the GPU had before the agent first changed
 * it (the baseline) and what the agent last applied. It is what makes every change reversible,
 * across crashes and restarts.
 *
 * File `<stateDir>/journal.json`:
 * `{"version":1,"gpus":{"GPU-…":{"baselineMw":700000,"appliedMw":250000,"name":"…","updatedAt":"ISO"}}}`
 *
 * Writes are atomic (temp file in the same directory, fsync, rename) and happen only when something
 * changed. A corrupt file is moved aside with a warning; the agent never crashes on it. All
 * file-system calls are synchronous: the journal is tiny and must be durable before a GPU is
 * touched.
 *
 * Durability. The directory is fsynced after the rename (making the new name durable) whenever
 * the save adds or removes an entry, rewrites a file that changed behind the agent's back, or
 * writes the first file this instance knows of. A save that only changes `appliedMw`/`updatedAt`
 * of existing entries — every verified change of an already managed GPU — skips the directory
 * fsync: the new file is still complete on disk before the rename (its own fsync), so after a
 * power failure the directory names either the new file or the previous one, and the previous one
 * was made durable with every entry the new one has (same UUIDs, same baselines; only
 * `appliedMw`/`updatedAt` are older). A baseline is therefore durable before the first write to
 * its GPU, and a removal is durable before the save returns, as before; what may be lost is
 * the last `appliedMw`, which only labels a correction as drift vs apply and is rewritten by the
 * next verified change. (At worst a `journal.json.tmp-<pid>` file is left behind, never read.)
 *
 * Group commit. For the same reason a save that only changes `appliedMw`/`updatedAt` may wait:
 * `save({ coalesceAppliedMs })` writes nothing when the file was written less than that long ago
 * (the journal stays `dirty`; the caller saves again when the time is up: the reconcile loop
 * arms a timer, and saves on stop). A burst of cap changes on managed GPUs thus costs one write
 * a second instead of one per change; `ensureOnDisk()` (before a GPU is changed) writes only
 * what must be durable first — new or removed entries, a file changed behind the agent's back.
 */
import { getLogger } from "@logtape/logtape";
import { BoundedReadError, READ_LIMITS, readBoundedTextSync } from "./bounded_read.ts";

/** Journal record of one GPU the agent has changed. */
export interface JournalEntry {
  /** Limit before the agent first changed this GPU; recorded once, never overwritten. */
  baselineMw: number;
  /** Limit the agent last applied (equals baselineMw until a set succeeded). */
  appliedMw: number;
  /** GPU name when recorded, for humans reading the file. */
  name: string;
  /** ISO 8601 time of the last change to this entry. */
  updatedAt: string;
}

/** Options of `loadJournal`. */
export interface LoadJournalOptions {
  /**
   * Never write anything (no save, no moving a corrupt file aside): `status`, `check` and
   * `run --dry-run`. A pass or restore over a read-only journal plans only (nothing can be
   * changed whose baseline could not be made durable first).
   */
  readOnly?: boolean;
  /** Time source for `updatedAt` and the corrupt-file suffix (default `Date.now`). */
  now?: () => number;
  /**
   * For `restore`: a corrupt file also throws a {@linkcode JournalReadError} (and is left where
   * it is) instead of a warning and an empty journal (an unreadable one always throws unless
   * read-only).
   */
  strict?: boolean;
  /**
   * fsync of the state directory after a rename (default: open it read-only and fsync,
   * best-effort); a seam for tests that count directory syncs.
   */
  syncDir?: (dir: string) => void;
}

/**
 * The journal file exists but cannot be read (unless read-only), or cannot be parsed (with
 * `strict` only).
 */
export class JournalReadError extends Error {
  override name = "JournalReadError";
}

/** Options of {@linkcode Journal.save}. */
export interface SaveOptions {
  /**
   * Group commit: when only `appliedMw`/`updatedAt` changed and this instance wrote the file
   * less than this many milliseconds ago, write nothing now (default 0: write at once).
   */
  coalesceAppliedMs?: number;
}

/** Options of `Journal.recordBaseline`. */
export interface RecordBaselineOptions {
  /** GPU name, stored for humans. */
  name: string;
}

/** File name of the journal inside the state directory. */
export const JOURNAL_FILE = "journal.json";

const JOURNAL_VERSION = 1;

/** In-memory journal bound to `<stateDir>/journal.json`; create with `loadJournal`. */
export class Journal {
  /** Absolute or relative path of the journal file. */
  readonly path: string;
  /** State directory holding the file. */
  readonly stateDir: string;
  /** True when this journal never writes (`readOnly` at load). */
  readonly readOnly: boolean;
  #entries: Map<string, JournalEntry>;
  #dirty = false;
  #saveCount = 0;
  /**
   * The next save must fsync the directory: an entry was added or removed, the file changed
   * behind our back, or this instance has not saved yet.
   */
  #needsDirSync = true;
  #dirReady = false;
  #now: () => number;
  #syncDir: (dir: string) => void;
  /** Identity of the file as this instance last wrote or read it; null: no file known. */
  #fileStamp: string | null = null;
  /** When (`now()`) this instance last wrote the file; null: never. */
  #lastWriteMs: number | null = null;

  constructor(
    stateDir: string,
    entries: Map<string, JournalEntry>,
    options: LoadJournalOptions = {},
  ) {
    this.stateDir = stateDir;
    this.path = joinPath(stateDir, JOURNAL_FILE);
    this.readOnly = options.readOnly ?? false;
    this.#entries = new Map([...entries].map(([uuid, e]) => [uuid, { ...e }]));
    this.#now = options.now ?? Date.now;
    this.#syncDir = options.syncDir ?? syncDirBestEffort;
    this.#fileStamp = this.#stamp();
  }

  /** Number of GPUs in the journal. */
  get size(): number {
    return this.#entries.size;
  }

  /** True when in-memory state differs from the file. */
  get dirty(): boolean {
    return this.#dirty;
  }

  /** Number of times the file was written by this instance. */
  get saveCount(): number {
    return this.#saveCount;
  }

  /** Entry of one GPU (a copy), or undefined when the agent has not changed it. */
  get(uuid: string): JournalEntry | undefined {
    const entry = this.#entries.get(uuid);
    return entry ? { ...entry } : undefined;
  }

  /** True when the agent has changed this GPU and not yet restored it. */
  has(uuid: string): boolean {
    return this.#entries.has(uuid);
  }

  /** All UUIDs in the journal. */
  uuids(): string[] {
    return [...this.#entries.keys()];
  }

  /** All entries (copies), keyed by UUID. */
  entries(): Map<string, JournalEntry> {
    return new Map([...this.#entries].map(([uuid, e]) => [uuid, { ...e }]));
  }

  /**
   * Record the pre-agent limit of a GPU, only if it has no entry yet (a baseline is never
   * overwritten). Returns true when a new entry was created. Call `save()` before changing the GPU.
   */
  recordBaseline(uuid: string, baselineMw: number, options: RecordBaselineOptions): boolean {
    if (this.#entries.has(uuid)) return false;
    assertMw(baselineMw, `baseline of GPU ${uuid}`);
    this.#entries.set(uuid, {
      baselineMw,
      appliedMw: baselineMw,
      name: options.name,
      updatedAt: this.#isoNow(),
    });
    this.#dirty = true;
    this.#needsDirSync = true;
    return true;
  }

  /** Remember what the agent applied to a GPU that has an entry. */
  setApplied(uuid: string, appliedMw: number): void {
    const entry = this.#entries.get(uuid);
    if (!entry) {
      throw new Error(
        `Journal has no baseline for GPU ${uuid}: record the baseline before applying a cap`,
      );
    }
    assertMw(appliedMw, `applied limit of GPU ${uuid}`);
    if (entry.appliedMw === appliedMw) return;
    entry.appliedMw = appliedMw;
    entry.updatedAt = this.#isoNow();
    this.#dirty = true;
  }

  /** Forget a GPU (after it was restored). Returns true when an entry was removed. */
  remove(uuid: string): boolean {
    const removed = this.#entries.delete(uuid);
    if (removed) {
      this.#dirty = true;
      this.#needsDirSync = true;
    }
    return removed;
  }

  /**
   * Write the file atomically if anything changed. Returns true when the file was written.
   * Throws an Error naming the file when it cannot be written. A read-only journal never writes.
   * The directory is fsynced too unless only `appliedMw`/`updatedAt` changed (see the module
   * doc). With `coalesceAppliedMs`, such a save may wait (group commit, see the module doc).
   */
  save(options: SaveOptions = {}): boolean {
    if (!this.#dirty || this.readOnly) return false;
    const wait = options.coalesceAppliedMs ?? 0;
    if (
      wait > 0 && !this.#needsDirSync && this.#lastWriteMs !== null &&
      this.#now() - this.#lastWriteMs < wait
    ) {
      return false;
    }
    const gpus: Record<string, JournalEntry> = {};
    for (const [uuid, e] of [...this.#entries].sort(([a], [b]) => a.localeCompare(b))) {
      gpus[uuid] = {
        baselineMw: e.baselineMw,
        appliedMw: e.appliedMw,
        name: e.name,
        updatedAt: e.updatedAt,
      };
    }
    const text = JSON.stringify({ version: JOURNAL_VERSION, gpus }, null, 2) + "\n";
    const tmp = `${this.path}.tmp-${Deno.pid}`;
    try {
      // mkdir once per instance (and again if the directory vanished), not on every save.
      if (!this.#dirReady) ensureDir(this.stateDir);
      let file: Deno.FsFile;
      try {
        file = openTemp(tmp);
      } catch (err) {
        if (!this.#dirReady || !(err instanceof Deno.errors.NotFound)) throw err;
        ensureDir(this.stateDir);
        file = openTemp(tmp);
      }
      this.#dirReady = true;
      try {
        writeAll(file, new TextEncoder().encode(text));
        file.syncSync();
      } finally {
        file.close();
      }
      Deno.renameSync(tmp, this.path);
    } catch (err) {
      try {
        Deno.removeSync(tmp);
      } catch {
        // the temp file may not exist
      }
      throw new Error(
        `Cannot write journal ${this.path}: ${errorText(err)}. ` +
          `Check that ${this.stateDir} is writable by the agent (--state-dir)`,
        { cause: err },
      );
    }
    if (this.#needsDirSync) {
      this.#syncDir(this.stateDir);
      this.#needsDirSync = false;
    }
    this.#dirty = false;
    this.#saveCount++;
    this.#lastWriteMs = this.#now();
    this.#fileStamp = this.#stamp();
    return true;
  }

  /**
   * Make sure the file on disk holds every entry in memory before a GPU is changed: saves when an
   * entry was added or removed (or this instance has not written yet), and when the file changed
   * under us since this instance last wrote it (another process emptied, replaced or removed
   * it). A pending change of `appliedMw` alone is left to the next `save()`: every baseline on
   * disk is already there. Returns true when the file was written. Throws like `save`.
   */
  ensureOnDisk(): boolean {
    if (this.readOnly) return false;
    const changedBehind = this.#stamp() !== this.#fileStamp;
    if (!(this.#dirty && this.#needsDirSync) && !changedBehind) return false;
    if (!this.#dirty) {
      getLogger(["gpu-power-agent", "journal"]).warn(
        "Journal {path} changed behind the agent's back; writing it again from memory",
        { path: this.path },
      );
    }
    // The file on disk may lack baselines: the rewrite's new name must be durable too.
    if (changedBehind) this.#needsDirSync = true;
    this.#dirty = true;
    return this.save();
  }

  #stamp(): string | null {
    try {
      const st = Deno.statSync(this.path);
      return `${st.ino}:${st.size}:${st.mtime?.getTime()}`;
    } catch {
      return null;
    }
  }

  #isoNow(): string {
    return new Date(this.#now()).toISOString();
  }
}

/**
 * Load `<stateDir>/journal.json`. A missing file (or directory) gives an empty journal; the
 * directory is created on first save. The file is read through the bounded reader (regular file,
 * at most 16 MiB). A corrupt file — or one that is not a regular file or is too large — is logged
 * as a warning, moved aside to `journal.json.corrupt-<epoch ms>` (not when read-only) and
 * the journal starts empty. A file that exists but cannot be read (permissions, I/O error) throws
 * a {@linkcode JournalReadError} unless read-only (then a warning and an empty journal): the first
 * save would overwrite it. With `strict` (for `restore`) a corrupt file throws too and nothing
 * moves.
 */
export function loadJournal(stateDir: string, options: LoadJournalOptions = {}): Journal {
  const logger = getLogger(["gpu-power-agent", "journal"]);
  const path = joinPath(stateDir, JOURNAL_FILE);
  const now = options.now ?? Date.now;
  let text: string | null = null;
  let refused: string | null = null;
  try {
    // Bounded: a journal that is a FIFO, a device or huge is refused, never read forever.
    text = readBoundedTextSync(path, { limit: READ_LIMITS.journal, what: "journal" }).text;
  } catch (err) {
    // No file (or a path component that is a file): there is no journal to lose.
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return new Journal(stateDir, new Map(), options);
    }
    if (options.strict) {
      throw new JournalReadError(
        `Cannot read journal ${path}: ${errorText(err)}. Its GPUs cannot be restored until it ` +
          `is readable; fix it or reset the GPUs with \`nvidia-smi -pl <watts>\``,
        { cause: err },
      );
    }
    // Not a journal at all (FIFO, device, oversized): like a corrupt one, moved aside below
    // rather than overwritten by the next save.
    if (err instanceof BoundedReadError) {
      refused = err.message;
    } else if (!options.readOnly) {
      // A writable journal that exists but cannot be read (permissions, I/O error) would be
      // overwritten by the first save, and the GPUs' current, possibly capped, limits recorded
      // as their baselines: the real baselines would be lost for good.
      throw new JournalReadError(
        `Cannot read journal ${path}: ${errorText(err)}. The agent does not start without it: ` +
          `with an empty journal it would take the GPUs' current, possibly capped, limits for ` +
          `their baselines. Make the file readable and writable by the agent (then start it ` +
          `again, or run \`gpu-power-agent restore\`), or, if it is lost, move it aside and reset ` +
          `the GPUs it held with \`nvidia-smi -pl <watts>\``,
        { cause: err },
      );
    } else {
      logger.warn(
        "Cannot read journal {path}: {error}. Starting with an empty journal: GPUs changed by a " +
          "previous run will not be restored automatically; fix the file's permissions and run " +
          "`gpu-power-agent restore`",
        { path, error: errorText(err) },
      );
      return new Journal(stateDir, new Map(), options);
    }
  }
  const parsed = text === null ? refused! : parseJournal(text);
  if (typeof parsed === "string" && options.strict) {
    throw new JournalReadError(
      `Journal ${path} is corrupt (${parsed}); it was left in place. Its GPUs cannot be ` +
        `restored from it: check \`gpu-power-agent status\` and reset them with ` +
        `\`nvidia-smi -pl <watts>\` if needed`,
    );
  }
  if (typeof parsed === "string") {
    let movedTo: string | null = null;
    if (!options.readOnly) {
      const aside = `${path}.corrupt-${now()}`;
      try {
        Deno.renameSync(path, aside);
        movedTo = aside;
      } catch (err) {
        logger.warn("Cannot move corrupt journal {path} aside: {error}", {
          path,
          error: errorText(err),
        });
      }
    }
    logger.warn(
      "Journal {path} is corrupt ({problem}); starting with an empty journal" +
        (movedTo ? " (bad file kept as {movedTo})" : "") +
        ". GPUs changed by a previous run may still be capped: check `gpu-power-agent status` " +
        "and reset them with `nvidia-smi -pl <watts>` if needed",
      { path, problem: parsed, movedTo },
    );
    return new Journal(stateDir, new Map(), options);
  }
  return new Journal(stateDir, parsed, options);
}

/** Parse and validate journal text; returns the entries or a description of the problem. */
function parseJournal(text: string): Map<string, JournalEntry> | string {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    return `invalid JSON: ${errorText(err)}`;
  }
  if (!isRecord(data)) return "top level is not an object";
  if (data.version !== JOURNAL_VERSION) {
    return `unsupported version ${JSON.stringify(data.version)} (expected ${JOURNAL_VERSION})`;
  }
  if (!isRecord(data.gpus)) return `"gpus" is not an object`;
  const entries = new Map<string, JournalEntry>();
  for (const [uuid, raw] of Object.entries(data.gpus)) {
    const where = `gpus[${JSON.stringify(uuid)}]`;
    if (uuid === "") return `${where}: empty GPU UUID`;
    if (!isRecord(raw)) return `${where} is not an object`;
    for (const key of ["baselineMw", "appliedMw"] as const) {
      const v = raw[key];
      if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
        return `${where}.${key} is not a positive integer`;
      }
    }
    if (typeof raw.name !== "string") return `${where}.name is not a string`;
    if (typeof raw.updatedAt !== "string") return `${where}.updatedAt is not a string`;
    entries.set(uuid, {
      baselineMw: raw.baselineMw as number,
      appliedMw: raw.appliedMw as number,
      name: raw.name,
      updatedAt: raw.updatedAt,
    });
  }
  return entries;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function assertMw(mw: number, what: string): void {
  if (!Number.isInteger(mw) || mw <= 0) {
    throw new Error(`Invalid ${what}: ${mw} mW (must be a positive integer)`);
  }
}

function ensureDir(dir: string): void {
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
  }
}

function openTemp(path: string): Deno.FsFile {
  return Deno.openSync(path, { write: true, create: true, truncate: true, mode: 0o600 });
}

function writeAll(file: Deno.FsFile, data: Uint8Array): void {
  let offset = 0;
  while (offset < data.length) offset += file.writeSync(data.subarray(offset));
}

function syncDirBestEffort(dir: string): void {
  try {
    const handle = Deno.openSync(dir, { read: true });
    try {
      handle.syncSync();
    } finally {
      handle.close();
    }
  } catch {
    // Not every platform/file system allows fsync of a directory; the rename is already done.
  }
}

function joinPath(dir: string, file: string): string {
  return dir.endsWith("/") ? `${dir}${file}` : `${dir}/${file}`;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
