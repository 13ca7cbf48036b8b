/**
 * End to end, one writer per state directory (issue 9, items 1, 2 and 10): a live agent holds
 * `<state-dir>/agent.lock`; a second `run` and `restore` are refused naming its PID, `status`
 * still works, the lock dies with the agent (kill -9), and an unusable state dir fails fast.
 */
import assert from "node:assert/strict";
import { descendants, runAgent, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { exitWithin, fakeLimits, setupFileAgent } from "../helpers/file_agent.ts";
import { planLaunch } from "../../src/permissions/launch.ts";

Deno.test("restore beside a live agent is refused (journal intact); after kill -9 restore puts the baseline back and a new run starts", async () => {
  const s = await setupFileAgent("version: 1\ndefault: {watts: 250}\n");
  const agent = spawnAgent(
    ["run", "--caps-file", s.capsPath, "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  try {
    await waitFor(() => fakeLimits(s).join() === "250000,250000", "caps applied");
    const journalPath = `${s.stateDir}/journal.json`;
    await waitFor(
      () => Deno.readTextFileSync(journalPath).split('"appliedMw": 250000').length === 3,
      "both caps journaled",
    );
    const holder = Number((await Deno.readTextFile(`${s.stateDir}/agent.lock`)).trim());
    assert.ok(descendants(agent.child.pid).includes(holder), `lock holder ${holder} is the agent`);
    const journal = await Deno.readTextFile(`${s.stateDir}/journal.json`);

    // A second agent on the same state dir is refused, naming the holder.
    const second = spawnAgent(
      ["run", "--caps-file", s.capsPath, "--metrics-address", "off", ...s.common],
      { env: s.env },
    );
    assert.equal(await exitWithin(second, 20_000), 1, second.output());
    assert.match(second.output(), new RegExp(`in use by gpu-power-agent PID ${holder}\\b`));

    // `restore` beside it is refused too and leaves the journal and the GPUs alone.
    const refused = await runAgent(["restore", ...s.common], { env: s.env });
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, new RegExp(`Cannot restore: .*PID ${holder}\\b`));
    assert.equal(await Deno.readTextFile(`${s.stateDir}/journal.json`), journal);
    assert.deepEqual(fakeLimits(s), [250000, 250000]);

    // Read-only status works while the agent runs.
    const status = await runAgent(["status", "--json", ...s.common], { env: s.env });
    assert.equal(status.code, 0, status.stderr);
    assert.equal(JSON.parse(status.stdout).gpus[0].managed, true);

    // The agent remains the only writer: still running, journal unchanged.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await Deno.readTextFile(`${s.stateDir}/journal.json`), journal);
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
  }
  assert.deepEqual(fakeLimits(s), [250000, 250000], "a killed agent cannot restore");

  // The kernel dropped the lock with the process: restore runs and restores the baselines.
  const restored = await runAgent(["restore", ...s.common], { env: s.env });
  assert.equal(restored.code, 0, restored.stderr);
  assert.deepEqual(fakeLimits(s), [700000, 600000]);

  // And a new agent starts on the same state dir.
  const again = await runAgent(
    ["run", "--once", "--caps-file", s.capsPath, "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(fakeLimits(s), [250000, 250000]);
  s.fake.cleanup();
});

Deno.test("run with a state dir that cannot be created exits 2 at start, naming it", async () => {
  const s = await setupFileAgent("version: 1\ndefault: {watts: 250}\n");
  await Deno.writeTextFile(`${s.dir}/not-a-dir`, "");
  const stateDir = `${s.dir}/not-a-dir/state`;
  const agent = spawnAgent(
    [
      "run",
      "--caps-file",
      s.capsPath,
      "--metrics-address",
      "off",
      "--nvml-library",
      s.lib,
      "--state-dir",
      stateDir,
    ],
    { env: s.env },
  );
  assert.equal(await exitWithin(agent, 20_000), 2, agent.output());
  assert.match(agent.output(), /State directory .*not-a-dir\/state is not usable/);
  assert.equal(s.fake.readLog().length, 0, "no GPU touched");
  s.fake.cleanup();
});

Deno.test("run with a state dir outside its permission set exits 2 at start, naming it", async () => {
  const s = await setupFileAgent("version: 1\ndefault: {watts: 250}\n");
  const args = ["run", "--caps-file", s.capsPath, "--metrics-address", "off", ...s.common];
  const decision = await planLaunch(args, { env: () => undefined, cwd: s.dir });
  assert.equal(decision.kind, "spawn");
  if (decision.kind !== "spawn") return;
  // The permissions name s.stateDir; the agent is pointed elsewhere.
  const outside = await Deno.makeTempDir({ prefix: "gpa-outside-" });
  const argv = decision.plan.args.map((a) => a === s.stateDir ? outside : a);
  const child = new Deno.Command(decision.plan.deno, {
    args: argv,
    env: { ...decision.plan.env, ...s.env, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  const out = await child.output();
  clearTimeout(timer);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 2, stderr);
  assert.match(stderr, new RegExp(`State directory ${outside} is not usable`));
  assert.equal(s.fake.readLog().length, 0, "no GPU touched");
  await Deno.remove(outside, { recursive: true });
  s.fake.cleanup();
});

Deno.test("restore with a corrupt journal exits 1 with the reason and leaves the file in place", async () => {
  const s = await setupFileAgent(null);
  await Deno.mkdir(s.stateDir);
  await Deno.writeTextFile(`${s.stateDir}/journal.json`, '{"version": 1, "gpus": ');
  const r = await runAgent(["restore", ...s.common], { env: s.env });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /Journal .*journal\.json is corrupt \(invalid JSON/);
  assert.doesNotMatch(r.stdout, /Nothing to restore/);
  assert.equal(await Deno.readTextFile(`${s.stateDir}/journal.json`), '{"version": 1, "gpus": ');
  s.fake.cleanup();
});

for (const kind of ["FIFO", "/dev/zero"] as const) {
  Deno.test(`restore with a journal that is ${kind} fails at once with exit 1, never hangs`, async () => {
    const s = await setupFileAgent(null);
    await Deno.mkdir(s.stateDir);
    const journal = `${s.stateDir}/journal.json`;
    if (kind === "FIFO") {
      const made = await new Deno.Command("mkfifo", { args: [journal] }).output();
      assert.equal(made.code, 0, "mkfifo is needed by this test");
    } else {
      await Deno.symlink("/dev/zero", journal);
    }
    const agent = spawnAgent(["restore", ...s.common], { env: s.env });
    assert.equal(await exitWithin(agent, 20_000), 1, agent.output());
    assert.match(
      agent.output(),
      kind === "FIFO"
        ? /journal .* is a FIFO \(named pipe\), not a regular file/
        : /character device/,
    );
    s.fake.cleanup();
  });
}
