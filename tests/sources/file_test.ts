import assert from "node:assert/strict";
import { CapsFileError } from "../../src/sources/caps_file.ts";
import { createFileCapSource, type FileCapSource } from "../../src/sources/file.ts";
import type { GpuView } from "../../src/sources/cap_source.ts";
import type { Telemetry } from "../../src/metrics/telemetry.ts";
import { type Clock, systemClock } from "../../src/clock.ts";

/** Fail instead of hanging when an expected event never comes. */
const TIMEOUT_MS = 5_000;

const GPUS: GpuView[] = [
  {
    index: 0,
    uuid: "GPU-0",
    name: "NVIDIA H100 80GB HBM3",
    pciBusId: "0:18:00.0",
    defaultMw: 700_000,
    minMw: 200_000,
    maxMw: 700_000,
    pids: null,
  },
  {
    index: 1,
    uuid: "GPU-1",
    name: "NVIDIA H100 80GB HBM3",
    pciBusId: "0:2a:00.0",
    defaultMw: 700_000,
    minMw: 200_000,
    maxMw: 700_000,
    pids: null,
  },
];

/** Resolves when `predicate` holds after some event, or rejects after TIMEOUT_MS. */
class Waiters {
  #waiters: { predicate: () => boolean; resolve: () => void }[] = [];

  notify(): void {
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.predicate()) return true;
      w.resolve();
      return false;
    });
  }

  until(predicate: () => boolean, what: string): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w.resolve !== done);
        reject(new Error(`timed out waiting for ${what}`));
      }, TIMEOUT_MS);
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#waiters.push({ predicate, resolve: done });
    });
  }
}

class RecordingTelemetry implements Telemetry {
  reloads: ("success" | "failure")[] = [];
  sourceErrors: string[] = [];
  constructor(readonly waiters: Waiters) {}
  configReload(result: "success" | "failure"): void {
    this.reloads.push(result);
    this.waiters.notify();
  }
  sourceError(source: string, reason: string): void {
    this.sourceErrors.push(`${source}:${reason}`);
    this.waiters.notify();
  }
  capChanged(): void {}
  clamped(): void {}
  nvmlError(): void {}
  invalidRequest(): void {}
  safeDefaultApplied(): void {}
  reconcileCompleted(): void {}
  reactionLatency(): void {}
  budgetAllocated(): void {}
}

/** The system clock, counting the timers scheduled and fired. */
class CountingClock implements Clock {
  scheduled = 0;
  fired = 0;
  constructor(readonly waiters: Waiters) {}
  now(): number {
    return systemClock.now();
  }
  setTimeout(fn: () => void, ms: number): number {
    this.scheduled++;
    return systemClock.setTimeout(() => {
      fn();
      this.fired++;
      this.waiters.notify();
    }, ms);
  }
  clearTimeout(id: number): void {
    systemClock.clearTimeout(id);
  }
}

interface Harness {
  dir: string;
  path: string;
  source: FileCapSource;
  telemetry: RecordingTelemetry;
  clock: CountingClock;
  waiters: Waiters;
  changes: () => number;
  /** Wait until onChange has been called at least `n` times in total. */
  changed: (n: number) => Promise<void>;
  watts: (uuid: string) => number | undefined;
  [Symbol.asyncDispose]: () => Promise<void>;
}

async function harness(
  caps: string,
  options: { debounceMs?: number; start?: boolean } = {},
): Promise<Harness> {
  const dir = await Deno.makeTempDir({ prefix: "caps-file-test-" });
  const path = `${dir}/caps.yaml`;
  await Deno.writeTextFile(path, caps);
  const waiters = new Waiters();
  const telemetry = new RecordingTelemetry(waiters);
  const clock = new CountingClock(waiters);
  const source = createFileCapSource(path, { telemetry, clock, debounceMs: options.debounceMs });
  let changes = 0;
  if (options.start !== false) {
    await source.start(() => {
      changes++;
      waiters.notify();
    });
  }
  return {
    dir,
    path,
    source,
    telemetry,
    clock,
    waiters,
    changes: () => changes,
    changed: (n) => waiters.until(() => changes >= n, `onChange call #${n}`),
    watts: (uuid) => {
      const mw = source.desired(GPUS)?.get(uuid)?.mw;
      return mw === undefined ? undefined : mw / 1000;
    },
    [Symbol.asyncDispose]: async () => {
      await source.stop();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Replace the file the way editors do: write a temporary file, then rename it over the target. */
async function renameReplace(path: string, text: string): Promise<void> {
  await Deno.writeTextFile(`${path}.tmp`, text);
  await Deno.rename(`${path}.tmp`, path);
}

Deno.test("start loads the file; desired() applies it; health is synced", async () => {
  const before = Date.now();
  await using h = await harness(
    "version: 1\ndefault: {watts: 300}\ngpus:\n  - index: 1\n    percent: 50\n",
  );
  assert.equal(h.source.name, "file");
  assert.deepEqual(h.source.desired(GPUS)?.get("GPU-0"), {
    mw: 300_000,
    reason: "caps file default",
    kind: "file",
  });
  assert.deepEqual(h.source.desired(GPUS)?.get("GPU-1"), {
    mw: 350_000,
    reason: "caps file rule gpus[0] (index 1)",
    kind: "file",
  });
  const health = h.source.health();
  assert.equal(health.synced, true);
  assert.equal(health.problem, undefined);
  assert.ok(health.lastSuccessMs !== null && health.lastSuccessMs >= before);
  assert.deepEqual(h.telemetry.reloads, [], "the first load is not a reload");
  assert.equal(h.changes(), 0, "start does not call onChange");
});

Deno.test("before start, desired() is null and health is not synced", async () => {
  await using h = await harness("version: 1\n", { start: false });
  assert.equal(h.source.desired(GPUS), null);
  assert.deepEqual(h.source.health(), { synced: false, lastSuccessMs: null });
});

Deno.test("start rejects with CapsFileError when the file is missing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const source = createFileCapSource(`${dir}/nope.yaml`);
    await assert.rejects(() => source.start(() => {}), (error: unknown) => {
      assert.ok(error instanceof CapsFileError);
      assert.match(error.message, /^Invalid caps file .*nope\.yaml: file not found/);
      return true;
    });
    assert.equal(source.health().synced, false);
    await source.stop();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("start rejects with CapsFileError when the file is invalid, and watches nothing", async () => {
  await using h = await harness("version: 1\ndefault: {watts: -3}\n", { start: false });
  await assert.rejects(
    () => h.source.start(() => {}),
    (error: unknown) => {
      assert.ok(error instanceof CapsFileError);
      assert.equal(
        error.message,
        `Invalid caps file ${h.path}: default.watts at line 2:18: expected a number of watts > 0 ` +
          "and <= 100000, got -3",
      );
      return true;
    },
  );
  assert.equal(h.source.desired(GPUS), null);
  // The test sanitizer fails this test if a watcher or timer were left open.
});

Deno.test("an edit in place reaches onChange and replaces the caps", async () => {
  await using h = await harness("version: 1\ndefault: {watts: 300}\n");
  await Deno.writeTextFile(h.path, "version: 1\ndefault: {watts: 250}\n");
  await h.changed(1);
  assert.equal(h.watts("GPU-0"), 250);
  // (A read between truncate and write could count one transient failure first.)
  assert.equal(h.telemetry.reloads.at(-1), "success");
  assert.equal(h.source.health().problem, undefined);
});

Deno.test("a rename-replace save (editors) reaches onChange", async () => {
  await using h = await harness("version: 1\ndefault: {watts: 300}\n");
  await renameReplace(h.path, '{"version": 1, "default": {"percent": 40}}');
  await h.changed(1);
  assert.equal(h.watts("GPU-0"), 280);
});

Deno.test("a Kubernetes ConfigMap update (..data symlink swap) reaches onChange", async () => {
  const dir = await Deno.makeTempDir({ prefix: "caps-configmap-test-" });
  const waiters = new Waiters();
  let changes = 0;
  // Layout of a ConfigMap volume: caps.yaml -> ..data/caps.yaml, ..data -> ..<timestamp>.
  await Deno.mkdir(`${dir}/..v1`);
  await Deno.writeTextFile(`${dir}/..v1/caps.yaml`, "version: 1\ndefault: {watts: 300}\n");
  await Deno.symlink("..v1", `${dir}/..data`);
  await Deno.symlink("..data/caps.yaml", `${dir}/caps.yaml`);
  const source = createFileCapSource(`${dir}/caps.yaml`);
  try {
    await source.start(() => {
      changes++;
      waiters.notify();
    });
    assert.equal(source.desired(GPUS)?.get("GPU-0")?.mw, 300_000);
    // The kubelet writes a new directory, points ..data_tmp at it and renames it over ..data.
    await Deno.mkdir(`${dir}/..v2`);
    await Deno.writeTextFile(`${dir}/..v2/caps.yaml`, "version: 1\ndefault: {watts: 200}\n");
    await Deno.symlink("..v2", `${dir}/..data_tmp`);
    await Deno.rename(`${dir}/..data_tmp`, `${dir}/..data`);
    await Deno.remove(`${dir}/..v1`, { recursive: true });
    await waiters.until(() => changes >= 1, "onChange after the ConfigMap swap");
    assert.equal(source.desired(GPUS)?.get("GPU-0")?.mw, 200_000);
  } finally {
    await source.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an invalid edit keeps the last good caps, is counted, and shows in health until fixed", async () => {
  await using h = await harness("version: 1\ndefault: {watts: 300}\n");
  await renameReplace(h.path, "version: 1\ndefault:\n  watts: 250\n  percent: 50\n");
  await h.waiters.until(() => h.telemetry.reloads.includes("failure"), "a failed reload");
  assert.deepEqual(h.telemetry.sourceErrors, ["file:invalid"]);
  assert.equal(h.watts("GPU-0"), 300, "last good caps kept");
  assert.equal(h.changes(), 0);
  const health = h.source.health();
  assert.equal(health.synced, true);
  assert.equal(
    health.problem,
    `Invalid caps file ${h.path}: default at line 3:3: expected exactly one of watts, percent to ` +
      "set the cap, found watts and percent",
  );
  const lastGood = health.lastSuccessMs;

  // Fix the file: the new caps apply and the problem clears.
  await renameReplace(h.path, "version: 1\ndefault:\n  watts: 250\n");
  await h.changed(1);
  assert.equal(h.watts("GPU-0"), 250);
  assert.equal(h.source.health().problem, undefined);
  assert.ok((h.source.health().lastSuccessMs ?? 0) >= (lastGood ?? 0));
  assert.deepEqual(h.telemetry.reloads, ["failure", "success"]);
});

Deno.test("spec() follows good reloads (budget included) and keeps the last good on invalid ones", async () => {
  await using h = await harness("version: 1\nbudget: {watts: 4000}\n");
  assert.deepEqual(h.source.spec()?.budget, { watts: 4000, mw: 4_000_000 });
  await renameReplace(h.path, "version: 1\nbudget: {watts: 3000}\n");
  await h.changed(1);
  assert.deepEqual(h.source.spec()?.budget, { watts: 3000, mw: 3_000_000 });
  await renameReplace(h.path, "version: 1\nbudget: {watts: -1}\n");
  await h.waiters.until(() => h.telemetry.reloads.includes("failure"), "a failed reload");
  assert.deepEqual(h.source.spec()?.budget, { watts: 3000, mw: 3_000_000 }, "last good kept");
  await renameReplace(h.path, "version: 1\n");
  await h.changed(2);
  assert.equal(h.source.spec()?.budget, undefined);
});

Deno.test("a deleted file keeps the last good caps; recreating it applies again", async () => {
  await using h = await harness("version: 1\ndefault: {watts: 300}\n");
  await Deno.remove(h.path);
  await h.waiters.until(() => h.telemetry.sourceErrors.includes("file:missing"), "missing file");
  assert.match(h.source.health().problem ?? "", /^caps file missing: .*caps\.yaml/);
  assert.equal(h.watts("GPU-0"), 300);
  assert.equal(h.changes(), 0);
  await renameReplace(h.path, "version: 1\ndefault: {watts: 300}\n");
  await h.changed(1);
  assert.equal(h.source.health().problem, undefined);
  assert.equal(h.watts("GPU-0"), 300);
});

Deno.test("reload() (SIGHUP) re-reads without the watcher, and reports invalid files", async () => {
  // A huge debounce: only reload() can pick changes up during this test.
  await using h = await harness("version: 1\ndefault: {watts: 300}\n", { debounceMs: 3_600_000 });
  await Deno.writeTextFile(h.path, "version: 1\ndefault: {watts: 260}\n");
  await h.source.reload();
  assert.equal(h.changes(), 1);
  assert.equal(h.watts("GPU-0"), 260);

  // Unchanged text: an explicit reload still re-validates and triggers a pass.
  await h.source.reload();
  assert.equal(h.changes(), 2);
  assert.deepEqual(h.telemetry.reloads, ["success", "success"]);

  await Deno.writeTextFile(h.path, "version: 1\ndefault: {wats: 200}\n");
  await h.source.reload();
  assert.equal(h.changes(), 2);
  assert.equal(h.watts("GPU-0"), 260);
  assert.match(h.source.health().problem ?? "", /default\.wats at line 2:11: unknown key "wats"/);
  assert.deepEqual(h.telemetry.reloads, ["success", "success", "failure"]);
});

Deno.test("a watcher event with unchanged text does nothing", async () => {
  const text = "version: 1\ndefault: {watts: 300}\n";
  await using h = await harness(text);
  // The start-up re-check runs through the debounce timer too: let it finish first.
  await h.waiters.until(() => h.clock.fired >= 1, "start-up check");
  await h.source.reload();
  const fired = h.clock.fired;
  const changes = h.changes();
  await renameReplace(h.path, text);
  await h.waiters.until(() => h.clock.fired > fired, "the debounced re-read");
  // reload() is queued behind the watcher's re-read: once it returns, that re-read is done.
  await h.source.reload();
  assert.equal(h.changes(), changes + 1, "only the explicit reload called onChange");
  assert.deepEqual(h.telemetry.reloads, ["success", "success"]);
});

Deno.test("stop() closes the watcher: later edits are ignored; stop is idempotent", async () => {
  await using h = await harness("version: 1\ndefault: {watts: 300}\n", { debounceMs: 0 });
  await h.source.stop();
  await h.source.stop();
  const scheduled = h.clock.scheduled;

  // Prove the edit produces file system events, with a watcher of our own.
  const probe = Deno.watchFs(h.dir);
  try {
    await Deno.writeTextFile(h.path, "version: 1\ndefault: {watts: 100}\n");
    const iterator = probe[Symbol.asyncIterator]();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const event = await Promise.race([
      iterator.next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("no file system event")), TIMEOUT_MS);
      }),
    ]);
    clearTimeout(timer);
    assert.ok(!event.done);
  } finally {
    probe.close();
  }
  await h.source.reload();
  assert.equal(h.clock.scheduled, scheduled, "no debounce timer after stop");
  assert.equal(h.changes(), 0);
  assert.equal(h.watts("GPU-0"), 300);
  assert.deepEqual(h.telemetry.reloads, []);
});

Deno.test("start twice is an error", async () => {
  await using h = await harness("version: 1\n");
  await assert.rejects(() => h.source.start(() => {}), /already started/);
});

Deno.test("an oversized edit (over 1 MiB) keeps the last good caps and says why", async () => {
  await using h = await harness("version: 1\ndefault: {watts: 300}\n");
  await renameReplace(h.path, "version: 1\ndefault: {watts: 250}\n" + "#\n".repeat(600_000));
  await h.waiters.until(() => h.telemetry.reloads.includes("failure"), "a failed reload");
  assert.deepEqual(h.telemetry.sourceErrors, ["file:unreadable"]);
  assert.equal(h.watts("GPU-0"), 300, "last good caps kept");
  assert.match(h.source.health().problem ?? "", /caps\.yaml: is larger than 1 MiB/);
});

Deno.test("a swap to a symlink out of the directory keeps the last good caps, never reads it", async () => {
  await using h = await harness("version: 1\ndefault: {watts: 300}\n");
  const outside = await Deno.makeTempDir({ prefix: "caps-outside-" });
  try {
    await Deno.writeTextFile(`${outside}/caps.yaml`, "version: 1\ndefault: {watts: 250}\n");
    await Deno.symlink(`${outside}/caps.yaml`, `${h.path}.tmp`);
    await Deno.rename(`${h.path}.tmp`, h.path);
    await h.waiters.until(() => h.telemetry.reloads.includes("failure"), "a failed reload");
    assert.equal(h.watts("GPU-0"), 300, "last good caps kept");
    assert.match(h.source.health().problem ?? "", /outside the caps file's directory/);
  } finally {
    await Deno.remove(outside, { recursive: true });
  }
});

Deno.test("a write without its close waits for the settle time; the close applies at once", async () => {
  await using h = await harness("version: 1\ndefault: {watts: 300}\n");
  const file = await Deno.open(h.path, { write: true, truncate: true });
  await file.write(new TextEncoder().encode("version: 1\ndefault: {watts: 250}\n"));
  // Open for writing: the 20 ms debounce passes, nothing is applied (settle is 2 s).
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(h.changes(), 0);
  assert.equal(h.watts("GPU-0"), 300);
  file.close();
  await h.changed(1);
  assert.equal(h.watts("GPU-0"), 250);
});
