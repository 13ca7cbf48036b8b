import assert from "node:assert/strict";
import { JOURNAL_FILE, JournalReadError, loadJournal } from "../../src/state/journal.ts";
import { captureLogs, tempStateDir } from "../reconcile/fakes.ts";

const UUID = "GPU-00000000-0000-0000-0000-000000000001";
const UUID2 = "GPU-00000000-0000-0000-0000-000000000002";
const NOW = 1_700_000_000_000;
const now = () => NOW;

Deno.test("missing state dir: empty journal, first save creates dir 0700 and file", () => {
  using tmp = tempStateDir();
  const journal = loadJournal(tmp.dir, { now });
  assert.equal(journal.size, 0);
  assert.equal(journal.save(), false, "nothing to save");
  assert.throws(() => Deno.statSync(tmp.dir), Deno.errors.NotFound);

  assert.equal(journal.recordBaseline(UUID, 700_000, { name: "NVIDIA H100" }), true);
  journal.setApplied(UUID, 250_000);
  assert.equal(journal.save(), true);
  assert.equal(Deno.statSync(tmp.dir).mode! & 0o777, 0o700);
  const data = JSON.parse(Deno.readTextFileSync(`${tmp.dir}/${JOURNAL_FILE}`));
  assert.deepEqual(data, {
    version: 1,
    gpus: {
      [UUID]: {
        baselineMw: 700_000,
        appliedMw: 250_000,
        name: "NVIDIA H100",
        updatedAt: new Date(NOW).toISOString(),
      },
    },
  });
  assert.deepEqual([...Deno.readDirSync(tmp.dir)].map((e) => e.name), [JOURNAL_FILE]);
});

Deno.test("save writes only when something changed", () => {
  using tmp = tempStateDir();
  const journal = loadJournal(tmp.dir, { now });
  journal.recordBaseline(UUID, 700_000, { name: "a" });
  assert.equal(journal.save(), true);
  const mtime = Deno.statSync(journal.path).mtime;
  assert.equal(journal.save(), false);
  journal.setApplied(UUID, 700_000); // same value as recorded: not a change
  assert.equal(journal.recordBaseline(UUID, 650_000, { name: "a" }), false);
  assert.equal(journal.dirty, false);
  assert.equal(journal.save(), false);
  assert.equal(journal.saveCount, 1);
  assert.deepEqual(Deno.statSync(journal.path).mtime, mtime);
});

Deno.test("group commit: a save changing only appliedMw waits while the file is younger than coalesceAppliedMs", () => {
  using tmp = tempStateDir();
  let t = 1_000_000;
  const journal = loadJournal(tmp.dir, { now: () => t, syncDir: () => {} });
  const coalesce = { coalesceAppliedMs: 1000 };
  journal.recordBaseline(UUID, 700_000, { name: "a" });
  assert.equal(journal.save(coalesce), true, "a new entry is written at once");
  journal.setApplied(UUID, 300_000);
  t += 999;
  assert.equal(journal.save(coalesce), false, "the file is 999 ms old: the write waits");
  assert.equal(journal.dirty, true);
  assert.equal(loadJournal(tmp.dir).get(UUID)?.appliedMw, 700_000);
  // An entry added meanwhile is never held back (nor the applied limit waiting with it).
  journal.recordBaseline(UUID2, 650_000, { name: "b" });
  assert.equal(journal.save(coalesce), true);
  assert.equal(loadJournal(tmp.dir).get(UUID)?.appliedMw, 300_000);
  journal.setApplied(UUID2, 250_000);
  t += 1000;
  assert.equal(journal.save(coalesce), true, "the file is 1 s old: written at once");
  journal.setApplied(UUID2, 275_000);
  assert.equal(journal.save(coalesce), false);
  assert.equal(journal.save(), true, "without coalesceAppliedMs a save writes");
  assert.equal(loadJournal(tmp.dir).get(UUID2)?.appliedMw, 275_000);
  assert.equal(journal.saveCount, 4);
});

Deno.test("a save that adds or removes an entry fsyncs the directory; one changing only appliedMw does not", () => {
  using tmp = tempStateDir();
  const dirSyncs: string[] = [];
  const journal = loadJournal(tmp.dir, { now, syncDir: (dir) => dirSyncs.push(dir) });
  journal.recordBaseline(UUID, 700_000, { name: "a" });
  assert.equal(journal.save(), true);
  assert.deepEqual(dirSyncs, [tmp.dir], "a new baseline: the file's new name is durable");
  journal.setApplied(UUID, 300_000);
  assert.equal(journal.save(), true);
  journal.setApplied(UUID, 325_000);
  assert.equal(journal.ensureOnDisk(), false, "appliedMw only: nothing must be durable first");
  assert.equal(journal.save(), true);
  assert.equal(dirSyncs.length, 1, "appliedMw only: file fsync + rename, no directory fsync");
  assert.equal(loadJournal(tmp.dir).get(UUID)?.appliedMw, 325_000);
  journal.recordBaseline(UUID2, 650_000, { name: "b" });
  journal.setApplied(UUID, 350_000);
  assert.equal(journal.ensureOnDisk(), true);
  assert.equal(
    dirSyncs.length,
    2,
    "a baseline added (with an appliedMw change) syncs the directory",
  );
  assert.equal(journal.remove(UUID2), true);
  assert.equal(journal.save(), true);
  assert.equal(dirSyncs.length, 3, "a removal syncs the directory");
  // A file replaced behind the agent's back is rewritten from memory with a directory fsync.
  Deno.writeTextFileSync(journal.path, '{"version":1,"gpus":{}}\n');
  assert.equal(journal.ensureOnDisk(), true);
  assert.equal(dirSyncs.length, 4);
  assert.equal(loadJournal(tmp.dir).get(UUID)?.baselineMw, 700_000);
  // A new instance (a restarted agent) syncs the directory on its first save.
  const reopened = loadJournal(tmp.dir, { now, syncDir: (dir) => dirSyncs.push(dir) });
  reopened.setApplied(UUID, 375_000);
  assert.equal(reopened.save(), true);
  assert.equal(dirSyncs.length, 5);
});

Deno.test("save recreates a state directory removed behind the agent's back", () => {
  using tmp = tempStateDir();
  const dir = `${tmp.dir}/state`;
  const journal = loadJournal(dir, { now });
  journal.recordBaseline(UUID, 700_000, { name: "a" });
  assert.equal(journal.save(), true);
  Deno.removeSync(dir, { recursive: true });
  journal.setApplied(UUID, 300_000);
  assert.equal(journal.save(), true);
  assert.equal(loadJournal(dir).get(UUID)?.appliedMw, 300_000);
});

Deno.test("baseline is recorded once and survives reload", () => {
  using tmp = tempStateDir();
  const first = loadJournal(tmp.dir, { now });
  first.recordBaseline(UUID, 700_000, { name: "a" });
  first.setApplied(UUID, 250_000);
  first.save();

  const second = loadJournal(tmp.dir, { now });
  assert.deepEqual(second.get(UUID)?.baselineMw, 700_000);
  assert.equal(second.get(UUID)?.appliedMw, 250_000);
  assert.equal(second.recordBaseline(UUID, 250_000, { name: "a" }), false);
  assert.equal(second.get(UUID)?.baselineMw, 700_000);
  assert.equal(second.dirty, false);
});

Deno.test("remove forgets a GPU and persists", () => {
  using tmp = tempStateDir();
  const journal = loadJournal(tmp.dir, { now });
  journal.recordBaseline(UUID, 700_000, { name: "a" });
  journal.recordBaseline(UUID2, 600_000, { name: "b" });
  journal.save();
  assert.equal(journal.remove(UUID), true);
  assert.equal(journal.remove(UUID), false);
  journal.save();
  assert.deepEqual(loadJournal(tmp.dir).uuids(), [UUID2]);
});

Deno.test("setApplied without a baseline is refused", () => {
  using tmp = tempStateDir();
  const journal = loadJournal(tmp.dir);
  assert.throws(
    () => journal.setApplied(UUID, 250_000),
    new RegExp(`no baseline for GPU ${UUID}: record the baseline`),
  );
  assert.throws(() => journal.recordBaseline(UUID, 0, { name: "a" }), /positive integer/);
});

for (
  const [label, content] of [
    ["unparseable JSON", "{not json"],
    ["wrong version", JSON.stringify({ version: 2, gpus: {} })],
    [
      "invalid entry",
      JSON.stringify({
        version: 1,
        gpus: { [UUID]: { baselineMw: -1, appliedMw: 1, name: "a", updatedAt: "x" } },
      }),
    ],
    ["array", "[]"],
  ]
) {
  Deno.test(`corrupt journal (${label}): warning, empty journal, file moved aside`, async () => {
    using tmp = tempStateDir();
    Deno.mkdirSync(tmp.dir);
    const path = `${tmp.dir}/${JOURNAL_FILE}`;
    Deno.writeTextFileSync(path, content);
    let journal: ReturnType<typeof loadJournal> | undefined;
    const logs = await captureLogs(() => {
      journal = loadJournal(tmp.dir, { now });
    });
    assert.equal(journal!.size, 0);
    const aside = `${path}.corrupt-${NOW}`;
    assert.equal(Deno.readTextFileSync(aside), content);
    assert.throws(() => Deno.statSync(path), Deno.errors.NotFound);
    const warnings = logs.filter((l) => l.level === "warning");
    assert.equal(warnings.length, 1);
    assert.match(warnings[0].text, new RegExp(`Journal ${path} is corrupt`));
    assert.match(warnings[0].text, new RegExp(`kept as ${aside}`));
    assert.match(warnings[0].text, /gpu-power-agent status/);
    // The agent can go on and write a fresh journal.
    journal!.recordBaseline(UUID, 700_000, { name: "a" });
    assert.equal(journal!.save(), true);
    assert.equal(loadJournal(tmp.dir).size, 1);
  });
}

Deno.test("dry-run journal never writes, not even a corrupt file aside", async () => {
  using tmp = tempStateDir();
  Deno.mkdirSync(tmp.dir);
  const path = `${tmp.dir}/${JOURNAL_FILE}`;
  Deno.writeTextFileSync(path, "garbage");
  let journal: ReturnType<typeof loadJournal> | undefined;
  const logs = await captureLogs(() => {
    journal = loadJournal(tmp.dir, { readOnly: true, now });
  });
  assert.equal(logs.filter((l) => l.level === "warning").length, 1);
  assert.equal(Deno.readTextFileSync(path), "garbage");
  journal!.recordBaseline(UUID, 700_000, { name: "a" });
  assert.equal(journal!.save(), false);
  assert.equal(Deno.readTextFileSync(path), "garbage");
  assert.deepEqual([...Deno.readDirSync(tmp.dir)].map((e) => e.name), [JOURNAL_FILE]);
});

Deno.test("readOnly journal (status) never writes or moves a corrupt file", async () => {
  using tmp = tempStateDir();
  Deno.mkdirSync(tmp.dir);
  const path = `${tmp.dir}/${JOURNAL_FILE}`;
  Deno.writeTextFileSync(path, "garbage");
  let journal: ReturnType<typeof loadJournal> | undefined;
  await captureLogs(() => {
    journal = loadJournal(tmp.dir, { readOnly: true });
  });
  assert.equal(journal!.readOnly, true);
  journal!.recordBaseline(UUID, 700_000, { name: "a" });
  assert.equal(journal!.save(), false);
  assert.deepEqual([...Deno.readDirSync(tmp.dir)].map((e) => e.name), [JOURNAL_FILE]);
  assert.equal(Deno.readTextFileSync(path), "garbage");
});

Deno.test("save failure names the file and keeps changes for a retry", () => {
  using tmp = tempStateDir();
  Deno.writeTextFileSync(tmp.dir, "a file where the state dir should be");
  const journal = loadJournal(`${tmp.dir}/sub`);
  journal.recordBaseline(UUID, 700_000, { name: "a" });
  assert.throws(
    () => journal.save(),
    (err: Error) =>
      err.message.startsWith(`Cannot write journal ${tmp.dir}/sub/journal.json:`) &&
      err.message.includes("--state-dir"),
  );
  assert.equal(journal.dirty, true);
  assert.equal(journal.has(UUID), true);
});

Deno.test("strict (restore): a corrupt journal throws, naming it, and is left in place", () => {
  using tmp = tempStateDir();
  Deno.mkdirSync(tmp.dir);
  const path = `${tmp.dir}/${JOURNAL_FILE}`;
  Deno.writeTextFileSync(path, "[]");
  assert.throws(
    () => loadJournal(tmp.dir, { strict: true }),
    (e: unknown) =>
      e instanceof JournalReadError &&
      e.message.startsWith(`Journal ${path} is corrupt (top level is not an object)`),
  );
  assert.equal(Deno.readTextFileSync(path), "[]");
});

Deno.test("strict (restore): an unreadable journal (FIFO, device) throws at once; a missing one is empty", async () => {
  using tmp = tempStateDir();
  Deno.mkdirSync(tmp.dir);
  assert.equal(loadJournal(tmp.dir, { strict: true }).size, 0);
  const path = `${tmp.dir}/${JOURNAL_FILE}`;
  const made = await new Deno.Command("mkfifo", { args: [path] }).output();
  assert.equal(made.code, 0, "mkfifo is needed by this test");
  assert.throws(
    () => loadJournal(tmp.dir, { strict: true }),
    (e: unknown) =>
      e instanceof JournalReadError && e.message.startsWith(`Cannot read journal ${path}: `) &&
      /FIFO/.test(e.message),
  );
  // Not strict (run, status): a warning and an empty journal, never a hang.
  const logs = await captureLogs(() => {
    assert.equal(loadJournal(tmp.dir, { readOnly: true }).size, 0);
  });
  assert.match(logs.find((l) => l.level === "warning")?.text ?? "", /FIFO/);
  assert.ok(Deno.lstatSync(path).isFifo, "status never moves it");
  // `run`: moved aside like a corrupt file, so the next save cannot overwrite the evidence.
  await captureLogs(() => {
    assert.equal(loadJournal(tmp.dir, { now }).size, 0);
  });
  assert.ok(Deno.lstatSync(`${path}.corrupt-${NOW}`).isFifo);
  assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound);
});

Deno.test("an unreadable journal (symlink loop) throws unless read-only: the first save would overwrite it", () => {
  using tmp = tempStateDir();
  Deno.mkdirSync(tmp.dir);
  const path = `${tmp.dir}/${JOURNAL_FILE}`;
  Deno.symlinkSync(path, path); // ELOOP: as root, chmod 000 would not make it unreadable
  assert.throws(
    () => loadJournal(tmp.dir),
    (e: unknown) =>
      e instanceof JournalReadError && e.message.startsWith(`Cannot read journal ${path}: `) &&
      e.message.includes("nvidia-smi -pl"),
  );
  assert.equal(loadJournal(tmp.dir, { readOnly: true }).size, 0);
  assert.equal(Deno.lstatSync(path).isSymlink, true, "left in place");
});
