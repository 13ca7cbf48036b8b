/**
 * Caps file source: loads the caps file, watches it, reloads it on change or on demand.
 *
 * - `start()` loads the file; a missing or invalid file rejects with {@link CapsFileError}
 *   (the CLI exits 2 and touches no GPU).
 * - Watches the file's parent directory with `Deno.watchFs` (editors save by rename; Kubernetes
 *   ConfigMap volumes swap a `..data` symlink). Any event in the directory schedules a debounced
 *   re-read of the file; if its text is unchanged nothing happens. No polling: a quiet node runs
 *   nothing.
 * - On a change: valid → the new caps replace the old, `configReload("success")`, `onChange()`;
 *   invalid → the last good caps stay, the error is logged, `configReload("failure")` and
 *   `sourceError("file", "invalid")`, and `health().problem` holds the message until the next
 *   good load; deleted → the last good caps stay, `problem` starts with `caps file missing`
 *   (`sourceError("file", "missing")`); unreadable → like invalid (`sourceError("file",
 *   "unreadable")`).
 * - Half-written files are not applied: after a write event (`modify`/`create`) on the caps file
 *   the re-read waits for the writer to close it (`access`: close-after-write) or, failing that,
 *   for `settleMs` without further events; after parsing, the file is stat'ed again and re-read
 *   later if its size or mtime moved. Writing a temp file and renaming it over the caps file
 *   (atomic) is the recommended way to change it.
 * - Reads are bounded (regular file, 1 MiB) and refuse a caps file whose real path leaves its
 *   directory (see `readCapsFileSnapshot`).
 * - `reload()` (the CLI wires SIGHUP to it) re-reads and re-validates even if the text is unchanged,
 *   and on success always calls `onChange()` (a forced reconcile pass).
 *
 * Permissions: read access to the caps file AND its parent directory (for the watcher).
 */
import { getLogger, type Logger } from "@logtape/logtape";
import { dirname, resolve } from "node:path";
import { noopTelemetry, type Telemetry } from "../metrics/telemetry.ts";
import { type Clock, systemClock } from "../clock.ts";
import { describeCapsValue, resolveFileCaps } from "../policy/file_rules.ts";
import type { CapSource, DesiredCaps, GpuView, SourceHealth } from "./cap_source.ts";
import type { EffectiveBudget } from "./budget_annotation.ts";
import { CapsFileError, type CapsSpec, parseCapsFile, readCapsFileSnapshot } from "./caps_file.ts";

/** Options of {@link createFileCapSource}. */
export interface FileCapSourceOptions {
  /** Event sink for metrics; default: none. */
  telemetry?: Telemetry;
  /** Timers for the debounce; default: the system clock. */
  clock?: Clock;
  /** Quiet time after the last file system event before re-reading, ms; default 20. */
  debounceMs?: number;
  /**
   * Quiet time after a write to the caps file that was not followed by its close, ms; default
   * 2000 (a writer pausing mid-file must not get its prefix applied).
   */
  settleMs?: number;
}

/** What a reload did (internal; tests observe it through health, telemetry and onChange). */
type ReloadOutcome = "applied" | "unchanged" | "invalid" | "missing" | "stopped";

/** Create a caps file source for `path` (relative paths resolve against the working directory). */
export function createFileCapSource(
  path: string,
  options: FileCapSourceOptions = {},
): FileCapSource {
  return new FileCapSource(path, options);
}

/** A {@link CapSource} backed by a caps file. */
export class FileCapSource implements CapSource {
  readonly name = "file";
  /** Absolute path of the caps file. */
  readonly path: string;
  #dir: string;
  #telemetry: Telemetry;
  #clock: Clock;
  #debounceMs: number;
  #settleMs: number;
  /** A write to the caps file was seen and its close not yet. */
  #writing = false;
  /** Write events seen on the caps file (a read is applied only if none came during it). */
  #writeSeq = 0;
  /** When the last write event on the caps file was seen (clock ms). */
  #lastWriteMs = 0;
  #log: Logger;

  #spec: CapsSpec | null = null;
  /** Text of the last read: null when the file was missing, undefined before the first read. */
  #lastText: string | null | undefined = undefined;
  #lastSuccessMs: number | null = null;
  #problem: string | undefined = undefined;

  #onChange: (() => void) | null = null;
  #watcher: Deno.FsWatcher | null = null;
  #watchLoop: Promise<void> | null = null;
  #timer: number | null = null;
  /** Reloads run one after another. */
  #chain: Promise<unknown> = Promise.resolve();
  #started = false;
  #stopped = false;

  constructor(path: string, options: FileCapSourceOptions = {}) {
    this.path = resolve(path);
    this.#dir = dirname(this.path);
    this.#telemetry = options.telemetry ?? noopTelemetry;
    this.#clock = options.clock ?? systemClock;
    this.#debounceMs = options.debounceMs ?? 20;
    this.#settleMs = options.settleMs ?? 2000;
    this.#log = getLogger(["gpu-power-agent", "file"]);
  }

  /** Load the file (rejects with {@link CapsFileError} if missing or invalid), then watch it. */
  async start(onChange: () => void): Promise<void> {
    if (this.#started) throw new Error(`Caps file source ${this.path} was already started`);
    this.#started = true;
    const { text } = await readCapsFileSnapshot(this.path);
    const spec = await parseCapsFile(text, { path: this.path });
    if (this.#stopped) return;
    let watcher: Deno.FsWatcher;
    try {
      watcher = Deno.watchFs(this.#dir, { recursive: false });
    } catch (error) {
      throw new Error(
        `Cannot watch the caps file directory ${this.#dir}: ${(error as Error).message} ` +
          `(the agent needs read access to the directory, not only to the file)`,
        { cause: error },
      );
    }
    this.#lastText = text;
    this.#accept(spec);
    this.#onChange = onChange;
    this.#watcher = watcher;
    this.#watchLoop = this.#watch(watcher);
    // A change between the read above and the watch start would go unseen: check once.
    this.#schedule();
    this.#log.info("Loaded caps file {path}: {summary}", {
      path: this.path,
      summary: summarize(spec),
    });
  }

  /** Desired caps for these GPUs, or null before the first good load. */
  desired(gpus: readonly GpuView[]): DesiredCaps | null {
    return this.#spec === null ? null : resolveFileCaps(this.#spec, gpus);
  }

  /**
   * The last good caps file, or null before the first good load: what the node policy
   * (`applyNodePolicy`) and the node power budget (`spec().budget`) read. Like `desired()`, it
   * keeps the last good file while the file on disk is missing or invalid.
   */
  spec(): CapsSpec | null {
    return this.#spec;
  }

  /** The caps file's `budget` (the last good file's), or no budget. */
  budget(): EffectiveBudget {
    const mw = this.#spec?.budget?.mw;
    return mw === undefined
      ? { budgetMw: null, source: null }
      : { budgetMw: mw, source: "caps-file" };
  }

  /** Synced after the first good load; `problem` while the file on disk is missing or invalid. */
  health(): SourceHealth {
    const health: SourceHealth = {
      synced: this.#spec !== null,
      lastSuccessMs: this.#lastSuccessMs,
    };
    if (this.#problem !== undefined) health.problem = this.#problem;
    return health;
  }

  /**
   * Re-read and re-validate now (SIGHUP), even if the text is unchanged. Never rejects: problems
   * are logged, counted and shown in `health()`.
   */
  async reload(): Promise<void> {
    await this.#enqueue(true);
  }

  /** Stop watching; pending debounced reloads are dropped. Idempotent. */
  async stop(): Promise<void> {
    if (!this.#stopped) {
      this.#stopped = true;
      if (this.#timer !== null) {
        this.#clock.clearTimeout(this.#timer);
        this.#timer = null;
      }
      try {
        this.#watcher?.close();
      } catch {
        // Already closed.
      }
    }
    await this.#watchLoop;
    await this.#chain;
  }

  async #watch(watcher: Deno.FsWatcher): Promise<void> {
    try {
      for await (const event of watcher) {
        if (event.paths.includes(this.path)) {
          if (event.kind === "modify" || event.kind === "create") {
            this.#writing = true;
            this.#writeSeq++;
            this.#lastWriteMs = this.#clock.now();
          }
          // Close after write (inotify IN_CLOSE_WRITE) or replaced by a rename: complete.
          if (event.kind === "access" || event.kind === "rename") this.#writing = false;
        }
        this.#schedule();
      }
    } catch (error) {
      if (this.#stopped) return;
      const message = `watching ${this.#dir} failed: ${(error as Error).message}; ` +
        `caps file changes are only picked up on SIGHUP now`;
      this.#problem = message;
      this.#telemetry.sourceError("file", "watch");
      this.#log.error("Caps file {path}: {message}", { path: this.path, message });
    }
  }

  #schedule(): void {
    if (this.#stopped) return;
    if (this.#timer !== null) this.#clock.clearTimeout(this.#timer);
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = null;
      void this.#enqueue(false);
    }, this.#writing ? this.#settleMs : this.#debounceMs);
  }

  #enqueue(force: boolean): Promise<ReloadOutcome> {
    const next = this.#chain.then(() => this.#refresh(force));
    this.#chain = next.catch(() => {});
    return next;
  }

  async #refresh(force: boolean): Promise<ReloadOutcome> {
    if (this.#stopped || this.#onChange === null) return "stopped";
    if (!force && this.#writing) {
      // A writer has the file open: wait for its close, or for settleMs without writes.
      if (this.#clock.now() - this.#lastWriteMs < this.#settleMs) return this.#later();
      this.#writing = false;
    }
    const writeSeq = this.#writeSeq;
    let text: string | null;
    let info: Deno.FileInfo | null = null;
    try {
      ({ text, info } = await readCapsFileSnapshot(this.path));
    } catch (error) {
      if (!(error instanceof CapsFileError && error.cause instanceof Deno.errors.NotFound)) {
        this.#lastText = undefined;
        return this.#reject((error as Error).message, "unreadable");
      }
      text = null;
    }
    if (!force && text === this.#lastText) return "unchanged";
    this.#lastText = text;
    if (text === null) {
      const problem = `caps file missing: ${this.path} (keeping the last good caps)`;
      return this.#reject(problem, "missing");
    }
    let spec: CapsSpec;
    try {
      spec = await parseCapsFile(text, { path: this.path });
    } catch (error) {
      return this.#reject((error as Error).message, "invalid");
    }
    if (this.#stopped) return "stopped";
    // Let queued watcher events in before deciding whether the file was written meanwhile.
    await new Promise((resolve) => setTimeout(resolve, 0));
    if (info !== null && !(await this.#unchangedSince(info))) this.#writing = true;
    if (this.#writing || (!force && writeSeq !== this.#writeSeq)) return this.#later();
    const recovered = this.#problem !== undefined;
    this.#accept(spec);
    this.#telemetry.configReload("success");
    this.#log.info("Reloaded caps file {path}{recovered}: {summary}", {
      path: this.path,
      recovered: recovered ? " (problem fixed)" : "",
      summary: summarize(spec),
    });
    try {
      this.#onChange();
    } catch (error) {
      this.#log.error("Caps file change handler failed: {error}", { error });
    }
    return "applied";
  }

  /** The file is still being written: forget this read and read it again once it settles. */
  #later(): ReloadOutcome {
    this.#lastText = undefined;
    this.#schedule();
    return "unchanged";
  }

  /** True when the file still has the size and mtime it had when it was read. */
  async #unchangedSince(read: Deno.FileInfo): Promise<boolean> {
    try {
      const now = await Deno.stat(this.path);
      return now.size === read.size && now.mtime?.getTime() === read.mtime?.getTime() &&
        now.ino === read.ino;
    } catch {
      return false;
    }
  }

  #accept(spec: CapsSpec): void {
    this.#spec = spec;
    this.#problem = undefined;
    this.#lastSuccessMs = this.#clock.now();
  }

  #reject(problem: string, reason: "invalid" | "missing" | "unreadable"): ReloadOutcome {
    this.#problem = problem;
    this.#telemetry.configReload("failure");
    this.#telemetry.sourceError("file", reason);
    this.#log.error("{problem}\nKeeping the last good caps until the file is fixed.", {
      problem,
      path: this.path,
    });
    return reason === "missing" ? "missing" : "invalid";
  }
}

function summarize(spec: CapsSpec): string {
  const rules = `${spec.rules.length} rule${spec.rules.length === 1 ? "" : "s"}`;
  const budget = spec.budget ? `, node power budget ${spec.budget.watts} W` : "";
  return `${rules}, ${
    spec.default ? `default ${describeCapsValue(spec.default)}` : "no default"
  }${budget}`;
}
