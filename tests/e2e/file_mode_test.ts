/**
 * End to end, file mode: spawn `deno task agent run` (permission-scoped, as a user would) on a
 * fake libnvidia-ml.so.1 and watch the fake GPUs obey the caps file, then come back.
 */
import assert from "node:assert/strict";
import { updateFakeState } from "../helpers/fake_state.ts";
import { runAgent, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { fakeLimits as limits, setupFileAgent as setup } from "../helpers/file_agent.ts";

Deno.test("run applies the caps file, follows edits, and SIGTERM restores every baseline", async () => {
  const s = await setup(
    "version: 1\ngpus:\n  - index: 0\n    watts: 250\n  - index: 1\n    percent: 50\n",
  );
  const agent = spawnAgent(
    ["run", "--caps-file", s.capsPath, "--interval", "1", "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  try {
    await waitFor(() => limits(s).join() === "250000,350000", "caps applied");
    // Edit the caps file: the agent follows without a restart.
    await Deno.writeTextFile(s.capsPath, "version: 1\ndefault: {watts: 300}\n");
    await waitFor(() => limits(s).join() === "300000,300000", "edit applied");
    const journal = JSON.parse(await Deno.readTextFile(`${s.stateDir}/journal.json`));
    // Baselines are what the GPUs had before the agent, not the vendor default.
    assert.equal(journal.gpus["GPU-00000000-0000-0000-0000-000000000000"].baselineMw, 700000);
    assert.equal(journal.gpus["GPU-00000000-0000-0000-0000-000000000001"].baselineMw, 600000);
    agent.kill("SIGTERM");
    const status = await agent.status();
    assert.equal(status.code, 0, agent.output());
    assert.deepEqual(limits(s), [700000, 600000]);
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
  }
});

Deno.test("drift is corrected and SIGHUP reloads the caps file", async () => {
  const s = await setup("version: 1\ndefault: {watts: 400}\n");
  const agent = spawnAgent(
    ["run", "--caps-file", s.capsPath, "--interval", "1", "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  try {
    await waitFor(() => limits(s).join() === "400000,400000", "caps applied");
    // Someone runs `nvidia-smi -pl 650` on GPU 1.
    updateFakeState(s.statePath, (state) => state.gpus[1].limitMw = 650000);
    await waitFor(() => limits(s)[1] === 400000, "drift corrected");
    await agent.waitForOutput(/drift/i);
    agent.kill("SIGHUP");
    await agent.waitForOutput(/SIGHUP/);
    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
    assert.deepEqual(limits(s), [700000, 600000]);
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
  }
});

Deno.test("after kill -9, `restore` puts every GPU back; a new run also recovers", async () => {
  const s = await setup("version: 1\ndefault: {watts: 250}\n");
  const agent = spawnAgent(
    ["run", "--caps-file", s.capsPath, "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  await waitFor(() => limits(s).join() === "250000,250000", "caps applied");
  agent.killTree("SIGKILL");
  await agent.status();
  assert.deepEqual(limits(s), [250000, 250000], "a killed agent cannot restore");

  const restored = await runAgent(["restore", ...s.common], { env: s.env });
  assert.equal(restored.code, 0, restored.stderr);
  assert.deepEqual(limits(s), [700000, 600000]);

  // Crash recovery by a new run: caps applied, killed, then a run whose file asks for nothing.
  const again = await runAgent(
    ["run", "--once", "--caps-file", s.capsPath, "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(limits(s), [250000, 250000]);
  await Deno.writeTextFile(s.capsPath, "version: 1\n");
  const recover = await runAgent(
    ["run", "--once", "--caps-file", s.capsPath, "--metrics-address", "off", ...s.common],
    { env: s.env },
  );
  assert.equal(recover.code, 0, recover.stderr);
  assert.deepEqual(limits(s), [700000, 600000]);
});

Deno.test("an invalid caps file at start exits 2 and touches no GPU", async () => {
  const s = await setup("version: 1\ngpus:\n  - index: 0\n    watts: -5\n");
  const r = await runAgent(["run", "--caps-file", s.capsPath, ...s.common], { env: s.env });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /caps\.yaml/);
  assert.match(r.stderr, /gpus\[0\]\.watts/);
  assert.equal(s.fake.readLog().length, 0);
  assert.deepEqual(limits(s), [700000, 600000]);
});

Deno.test("a missing NVML library exits 3 with an actionable message", async () => {
  const s = await setup("version: 1\n");
  const r = await runAgent(
    ["status", "--nvml-library", `${s.dir}/nope/libnvidia-ml.so.1`, "--state-dir", s.stateDir],
    { env: s.env },
  );
  assert.equal(r.code, 3, r.stderr);
  assert.match(r.stderr, /NVIDIA driver not found/);
});

Deno.test("status --json and check report the host's GPUs", async () => {
  const s = await setup('version: 1\ngpus:\n  - name: "NVIDIA H100*"\n    watts: 900\n');
  const status = await runAgent(["status", "--json", ...s.common], { env: s.env });
  assert.equal(status.code, 0, status.stderr);
  const parsed = JSON.parse(status.stdout);
  assert.equal(parsed.gpus.length, 2);
  assert.equal(parsed.gpus[1].powerLimitWatts, 600);
  assert.equal(parsed.gpus[1].managed, false);

  const check = await runAgent(["check", "--caps-file", s.capsPath, ...s.common], { env: s.env });
  assert.equal(check.code, 0, check.stderr);
  assert.match(
    check.stdout,
    /GPU 0 .*: keep 700 W .*clamped down to the GPU maximum 700 W; already in place/,
  );
  assert.match(check.stdout, /GPU 1 .*: would set 600 W → 700 W .*clamped down/);
  assert.equal(s.fake.readLog().length, 0, "check never sets a limit");

  const table = await runAgent(["status", ...s.common], { env: s.env });
  assert.equal(table.code, 0, table.stderr);
  assert.match(table.stdout, /GPU-00000000-0000-0000-0000-000000000001/);
});

Deno.test("usage errors exit 2 and --help exits 0", async () => {
  const bad = await runAgent(["run", "--bogus"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /bogus/);
  const help = await runAgent(["run", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--caps-file PATH/);
  const noSource = await runAgent(["run", "--nvml-library", "/nonexistent/libnvidia-ml.so.1"]);
  assert.equal(noSource.code, 2, noSource.stderr);
  assert.match(noSource.stderr, /--caps-file/);
});

Deno.test("a relative --nvml-library is a usage error (exit 2) when run directly", async () => {
  const r = await runAgent(["status", "--nvml-library", "lib/libnvidia-ml.so.1"], {
    unscoped: true,
  });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--nvml-library: .*absolute/);
});

Deno.test("kubernetes mode without a usable kubeconfig exits 2 with the reason", async () => {
  const s = await setup("version: 1\n");
  const r = await runAgent([
    "run",
    "--source",
    "kubernetes",
    "--node-name",
    "n1",
    "--safe-default-watts",
    "500",
    "--kubeconfig",
    `${s.dir}/no-such-kubeconfig`,
    "--metrics-address",
    "off",
    ...s.common,
  ], { env: s.env, unscoped: true });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /no-such-kubeconfig/);
  const missingNode = await runAgent(
    ["run", "--source", "kubernetes", "--safe-default-watts", "500", ...s.common],
    { env: s.env, unscoped: true },
  );
  assert.equal(missingNode.code, 2);
  assert.match(missingNode.stderr, /--node-name/);
});
