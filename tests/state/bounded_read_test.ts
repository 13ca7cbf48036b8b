import assert from "node:assert/strict";
import {
  BoundedReadError,
  formatBytes,
  READ_LIMITS,
  readBoundedText,
  readBoundedTextSync,
} from "../../src/state/bounded_read.ts";

const OPTIONS = { limit: 1024, what: "test file" };

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "gpa-bounded-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const READERS = [
  [
    "sync",
    (path: string, o = OPTIONS) =>
      new Promise<ReturnType<typeof readBoundedTextSync>>((resolve) =>
        resolve(readBoundedTextSync(path, o))
      ),
  ],
  ["async", (path: string, o = OPTIONS) => readBoundedText(path, o)],
] as const;

for (const [name, read] of READERS) {
  Deno.test(`${name}: a regular file up to the limit is read whole, with its fstat`, async () => {
    await withDir(async (dir) => {
      const text = "é".repeat(512); // 1024 bytes
      await Deno.writeTextFile(`${dir}/f`, text);
      const got = await read(`${dir}/f`);
      assert.equal(got.text, text);
      assert.equal(got.info.size, 1024);
      assert.ok(got.info.isFile);
    });
  });

  Deno.test(`${name}: one byte over the limit is refused, naming the file and the limit`, async () => {
    await withDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/f`, "x".repeat(1025));
      await assert.rejects(
        () => read(`${dir}/f`),
        (e: unknown) =>
          e instanceof BoundedReadError && e.problem === "too-large" &&
          e.message === `test file ${dir}/f is larger than 1 KiB: refusing to read it ` +
              `(the limit for a test file)`,
      );
    });
  });

  Deno.test(`${name}: a FIFO is refused without blocking`, async () => {
    await withDir(async (dir) => {
      const made = await new Deno.Command("mkfifo", { args: [`${dir}/p`] }).output();
      assert.equal(made.code, 0, "mkfifo is needed by this test");
      await assert.rejects(() => read(`${dir}/p`), /is a FIFO \(named pipe\), not a regular file/);
    });
  });

  Deno.test(`${name}: /dev/zero and a directory are refused`, async () => {
    await assert.rejects(() => read("/dev/zero"), /\/dev\/zero is a character device/);
    await withDir(async (dir) => {
      await assert.rejects(() => read(dir), /is a directory, not a regular file/);
    });
  });

  Deno.test(`${name}: /proc files (size 0) are read, bounded by bytes read not by size`, async () => {
    const got = await read("/proc/self/cgroup", { limit: READ_LIMITS.cgroup, what: "cgroup" });
    assert.match(got.text, /^\d+:/);
    assert.equal(got.info.size, 0);
    // /proc/self/maps of a Deno process is far longer than 64 bytes although it reports 0.
    await assert.rejects(() => read("/proc/self/maps", { limit: 64, what: "maps" }), /larger than/);
  });

  Deno.test(`${name}: a missing file passes NotFound through`, async () => {
    await assert.rejects(() => read("/nonexistent/f"), Deno.errors.NotFound);
  });
}

Deno.test("formatBytes and the stated limits", () => {
  assert.equal(formatBytes(READ_LIMITS.capsFile), "1 MiB");
  assert.equal(formatBytes(READ_LIMITS.journal), "16 MiB");
  assert.equal(formatBytes(READ_LIMITS.cgroup), "64 KiB");
  assert.equal(formatBytes(100), "100 bytes");
});
