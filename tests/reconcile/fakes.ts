/** Test doubles for reconcile tests: manual clock, scripted cap source, recording telemetry, log capture. */
import { configureSync, type LogRecord, resetSync } from "@logtape/logtape";
import type { Clock } from "../../src/clock.ts";
import type {
  CapSource,
  DesiredCap,
  DesiredCaps,
  GpuView,
  SourceHealth,
} from "../../src/sources/cap_source.ts";
import type { CapChange, Telemetry } from "../../src/metrics/telemetry.ts";
import type { GpuOutcome } from "../../src/reconcile/report.ts";
import { loadJournal } from "../../src/state/journal.ts";
import { FakeGpuControl, fakeH100 } from "../helpers/fake_gpu_control.ts";

/** A clock that only moves when the test says so. */
export class ManualClock implements Clock {
  #now: number;
  #nextId = 1;
  #timers = new Map<number, { at: number; fn: () => void }>();

  constructor(startMs = 1_700_000_000_000) {
    this.#now = startMs;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number): number {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.#now + ms, fn });
    return id;
  }

  clearTimeout(id: number): void {
    this.#timers.delete(id);
  }

  /** Number of armed timers. */
  get pending(): number {
    return this.#timers.size;
  }

  /** Delays (from now) of the armed timers, ascending. */
  delays(): number[] {
    return [...this.#timers.values()].map((t) => t.at - this.#now).sort((a, b) => a - b);
  }

  /** Advance time by `ms`, firing due timers in order (including ones they arm). */
  advance(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const entry of this.#timers) {
        if (entry[1].at <= end && (!next || entry[1].at < next[1].at)) next = entry;
      }
      if (!next) break;
      this.#timers.delete(next[0]);
      this.#now = Math.max(this.#now, next[1].at);
      next[1].fn();
    }
    this.#now = end;
  }
}

/** A cap source whose desired caps the test sets directly. */
export class FakeCapSource implements CapSource {
  readonly name = "fake";
  /** Returned by desired(); null = not synced. */
  caps: DesiredCaps | null;
  desiredCalls = 0;
  lastViews: readonly GpuView[] = [];
  onChange: (() => void) | null = null;
  /** Outcomes passed to report(), one entry per call. */
  reported: { outcomes: readonly GpuOutcome[] }[] = [];

  constructor(caps: DesiredCaps | null = new Map()) {
    this.caps = caps;
  }

  start(onChange: () => void): Promise<void> {
    this.onChange = onChange;
    return Promise.resolve();
  }

  desired(gpus: readonly GpuView[]): DesiredCaps | null {
    this.desiredCalls++;
    this.lastViews = gpus;
    return this.caps === null ? null : new Map(this.caps);
  }

  report(outcomes: readonly GpuOutcome[]): void {
    this.reported.push({ outcomes });
  }

  health(): SourceHealth {
    return { synced: this.caps !== null, lastSuccessMs: null };
  }

  stop(): Promise<void> {
    return Promise.resolve();
  }
}

/** Desired caps from `[uuid, watts]` pairs (kind file, reason `test`). */
export function caps(...entries: [string, number][]): DesiredCaps {
  return new Map(
    entries.map(([uuid, w]): [string, DesiredCap] => [
      uuid,
      { mw: w * 1000, reason: `test ${w} W`, kind: "file" },
    ]),
  );
}

/** Telemetry that records every event. */
export class RecordingTelemetry implements Telemetry {
  changes: CapChange[] = [];
  clamps: ("up" | "down")[] = [];
  nvmlErrors: { fn: string; code: string }[] = [];
  completed: { durationSeconds: number; ok: boolean; atMs: number }[] = [];
  latencies: number[] = [];

  capChanged(change: CapChange): void {
    this.changes.push(change);
  }
  clamped(direction: "up" | "down"): void {
    this.clamps.push(direction);
  }
  nvmlError(fn: string, code: string): void {
    this.nvmlErrors.push({ fn, code });
  }
  sourceError(): void {}
  invalidRequest(): void {}
  safeDefaultApplied(): void {}
  configReload(): void {}
  reconcileCompleted(info: { durationSeconds: number; ok: boolean; atMs: number }): void {
    this.completed.push(info);
  }
  reactionLatency(seconds: number): void {
    this.latencies.push(seconds);
  }
  budgetAllocated(): void {}
}

/** A captured log line. */
export interface CapturedLog {
  level: string;
  text: string;
  properties: Record<string, unknown>;
}

/** Run `fn` with logtape writing to an array; returns what was logged. */
export async function captureLogs(fn: () => void | Promise<void>): Promise<CapturedLog[]> {
  const logs: CapturedLog[] = [];
  configureSync({
    reset: true,
    sinks: {
      buffer: (record: LogRecord) => {
        logs.push({
          level: record.level,
          text: record.message.map((part) => String(part)).join(""),
          properties: record.properties,
        });
      },
    },
    loggers: [
      { category: ["gpu-power-agent"], sinks: ["buffer"], lowestLevel: "info" },
      { category: ["logtape", "meta"], sinks: [], lowestLevel: "error" },
    ],
  });
  try {
    await fn();
  } finally {
    resetSync();
  }
  return logs;
}

/** A fresh temporary state directory path (`dir`, not created yet); removed on dispose. */
export function tempStateDir(): { dir: string } & Disposable {
  const root = Deno.makeTempDirSync({ prefix: "gpa-state-" });
  return {
    dir: `${root}/state`,
    [Symbol.dispose]: () => Deno.removeSync(root, { recursive: true }),
  };
}

/**
 * What every reconcile test starts from: `gpus` fake H100s, a journal in a fresh state dir (its
 * timestamps from the manual clock; `readOnly` as `run --dry-run` loads it), a manual clock and
 * recording telemetry. Disposing removes the state dir.
 */
export function reconcileFixture(options: { gpus?: number; readOnly?: boolean } = {}) {
  const gpu = new FakeGpuControl(Array.from({ length: options.gpus ?? 2 }, (_, i) => fakeH100(i)));
  const tmp = tempStateDir();
  const clock = new ManualClock();
  const journal = loadJournal(tmp.dir, { now: () => clock.now(), readOnly: options.readOnly });
  const telemetry = new RecordingTelemetry();
  return { gpu, tmp, clock, journal, telemetry, [Symbol.dispose]: tmp[Symbol.dispose] };
}
