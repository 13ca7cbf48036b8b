/**
 * End to end, hostile and careless caps files (issue 9, items 7, 8 and 9): size and type limits,
 * symlinks out of the caps directory, ConfigMap-style `..data` swaps, and writers that pause
 * mid-file.
 */
import assert from "node:assert/strict";
import { spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { exitWithin, fakeLimits, setupFileAgent } from "../helpers/file_agent.ts";

const GPU1 = "GPU-00000000-0000-0000-0000-000000000001";

/** Start `run` on `capsPath` and expect exit 2 within 20 s; returns the output. */
async function expectExit2(s: Awaited<ReturnType<typeof setupFileAgent>>, capsPath: string) {
  const agent = spawnAgent(
    ["run", "--caps-file", capsPath, "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  const code = await exitWithin(agent, 20_000);
  assert.equal(code, 2, agent.output());
  assert.equal(s.fake.readLog().length, 0, "no GPU touched");
  return agent.output();
}

Deno.test("a caps file larger than 1 MiB exits 2 at start, naming the file and the limit", async () => {
  const s = await setupFileAgent("version: 1\ndefault: {watts: 250}\n" + "#\n".repeat(600_000));
  const out = await expectExit2(s, s.capsPath);
  assert.match(out, /caps\.yaml.*larger than 1 MiB/);
  s.fake.cleanup();
});

Deno.test("a caps file that is a FIFO exits 2 at start instead of hanging", async () => {
  const s = await setupFileAgent(null);
  const made = await new Deno.Command("mkfifo", { args: [s.capsPath] }).output();
  assert.equal(made.code, 0, "mkfifo is needed by this test");
  const out = await expectExit2(s, s.capsPath);
  assert.match(out, /caps\.yaml.*is a FIFO \(named pipe\), not a regular file/);
  s.fake.cleanup();
});

Deno.test("a caps file symlinked out of its directory is refused (exit 2) and its contents never echoed", async () => {
  const s = await setupFileAgent(null);
  const secretDir = await Deno.makeTempDir({ prefix: "gpa-secret-" });
  await Deno.writeTextFile(`${secretDir}/db`, "dbuser:S3CRET-hunter2-do-not-log\n");
  await Deno.symlink(`${secretDir}/db`, s.capsPath);
  const out = await expectExit2(s, s.capsPath);
  assert.match(out, /outside the caps file's directory/);
  assert.doesNotMatch(out, /S3CRET/);
  // /dev/zero behind a symlink: refused the same way, at once.
  await Deno.remove(s.capsPath);
  await Deno.symlink("/dev/zero", s.capsPath);
  assert.match(await expectExit2(s, s.capsPath), /outside the caps file's directory/);
  await Deno.remove(secretDir, { recursive: true });
  s.fake.cleanup();
});

Deno.test("an invalid caps file's parse error echoes at most a short sanitised excerpt", async () => {
  const s = await setupFileAgent(
    `version: 1\ndefault: {watts: "dbuser:S3CRET-${"x".repeat(100)}\\u0007END"}\n`,
  );
  const out = await expectExit2(s, s.capsPath);
  assert.match(out, /default\.watts/);
  assert.match(out, /"dbuser:S3CRET-x{26}…"/);
  assert.doesNotMatch(out, /END/);
  s.fake.cleanup();
});

Deno.test("ConfigMap volume layout: caps through ..data symlinks apply, and a ..data swap is followed", async () => {
  const s = await setupFileAgent(null);
  const cm = `${s.dir}/cm`;
  await Deno.mkdir(`${cm}/..2026_01_01_00_00_00.1`, { recursive: true });
  await Deno.writeTextFile(
    `${cm}/..2026_01_01_00_00_00.1/caps.yaml`,
    "version: 1\ndefault: {watts: 250}\n",
  );
  await Deno.symlink("..2026_01_01_00_00_00.1", `${cm}/..data`);
  await Deno.symlink("..data/caps.yaml", `${cm}/caps.yaml`);
  const agent = spawnAgent(
    ["run", "--caps-file", `${cm}/caps.yaml`, "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  try {
    await waitFor(() => fakeLimits(s).join() === "250000,250000", "caps applied");
    // The kubelet's update: new timestamped dir, new ..data_tmp symlink renamed over ..data.
    await Deno.mkdir(`${cm}/..2026_01_01_00_01_00.2`);
    await Deno.writeTextFile(
      `${cm}/..2026_01_01_00_01_00.2/caps.yaml`,
      "version: 1\ndefault: {watts: 300}\n",
    );
    await Deno.symlink("..2026_01_01_00_01_00.2", `${cm}/..data_tmp`);
    await Deno.rename(`${cm}/..data_tmp`, `${cm}/..data`);
    await Deno.remove(`${cm}/..2026_01_01_00_00_00.1`, { recursive: true });
    await waitFor(() => fakeLimits(s).join() === "300000,300000", "swap applied");
    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
    assert.deepEqual(fakeLimits(s), [700000, 600000]);
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
    s.fake.cleanup();
  }
});

Deno.test("a writer pausing mid-file never gets its valid prefix applied", async () => {
  const s = await setupFileAgent("version: 1\ndefault: {watts: 400}\n");
  const agent = spawnAgent(
    ["run", "--caps-file", s.capsPath, "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  try {
    await waitFor(() => fakeLimits(s).join() === "400000,400000", "caps applied");
    // The prefix alone is a valid file: GPU 0 to 200 W, GPU 1 released (back to 600 W).
    const prefix = "version: 1\ngpus:\n  - index: 0\n    watts: 200\n";
    const rest = "  - index: 1\n    watts: 300\n";
    const file = await Deno.open(s.capsPath, { write: true, truncate: true });
    try {
      await file.write(new TextEncoder().encode(prefix));
      await new Promise((r) => setTimeout(r, 300));
      await file.write(new TextEncoder().encode(rest));
    } finally {
      file.close();
    }
    await waitFor(() => fakeLimits(s).join() === "200000,300000", "whole file applied");
    const gpu1Sets = s.fake.readLog().filter((line) => line.includes(GPU1));
    assert.deepEqual(
      gpu1Sets.map((line) => line.split(" ")[3]),
      ["400000", "300000"],
      "GPU 1 was never released to its baseline by the half-written file",
    );
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
    s.fake.cleanup();
  }
});
