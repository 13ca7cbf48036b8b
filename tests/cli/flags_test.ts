import assert from "node:assert/strict";
import {
  envNameFor,
  FLAGS,
  flagsFor,
  helpText,
  parseCommandLine,
  UsageError,
} from "../../src/cli/flags.ts";

const envOf = (vars: Record<string, string>) => (name: string) => vars[name];

Deno.test("flags win over the environment, which wins over defaults", () => {
  const p = parseCommandLine(["run", "--state-dir", "/flag", "--caps-file", "/c.yaml"], {
    env: envOf({ GPU_POWER_AGENT_STATE_DIR: "/env", GPU_POWER_AGENT_INTERVAL: "7" }),
  });
  assert.equal(p.command, "run");
  assert.equal(p.options.stateDir, "/flag");
  assert.equal(p.options.interval, 7);
  assert.equal(p.options.metricsAddress, "127.0.0.1:9402");
  assert.deepEqual([...p.explicit].sort(), ["caps-file", "interval", "state-dir"]);
});

Deno.test("legacy environment names: NODE_NAME, KUBECONFIG, NVML_LIBRARY_PATH", () => {
  const p = parseCommandLine(["run"], {
    env: envOf({ NODE_NAME: "n1", KUBECONFIG: "/k", NVML_LIBRARY_PATH: "/lib/x.so" }),
  });
  assert.equal(p.options.nodeName, "n1");
  assert.equal(p.options.kubeconfig, "/k");
  assert.equal(p.options.nvmlLibrary, "/lib/x.so");
});

Deno.test("booleans: --no-events, env true/false", () => {
  assert.equal(parseCommandLine(["run", "--no-events"]).options.events, false);
  assert.equal(parseCommandLine(["run"]).options.events, true);
  const p = parseCommandLine(["run"], { env: envOf({ GPU_POWER_AGENT_DRY_RUN: "yes" }) });
  assert.equal(p.options.dryRun, true);
  assert.throws(
    () => parseCommandLine(["run"], { env: envOf({ GPU_POWER_AGENT_ONCE: "maybe" }) }),
    /GPU_POWER_AGENT_ONCE: expected true or false/,
  );
});

Deno.test("bad usage is a UsageError naming the problem", () => {
  assert.throws(() => parseCommandLine(["frobnicate"]), /Unknown command "frobnicate"/);
  assert.throws(() => parseCommandLine(["run", "--bogus"]), UsageError);
  assert.throws(() => parseCommandLine(["status", "--caps-file", "x"]), /caps-file/);
  assert.throws(() => parseCommandLine(["run", "--interval", "soon"]), /--interval: expected/);
  assert.throws(() => parseCommandLine(["run", "--log-format", "xml"]), /one of text, json/);
});

Deno.test("help: overview and per-command, every flag documented with its env var", () => {
  const p = parseCommandLine(["status", "--help"]);
  assert.equal(p.help, true);
  assert.match(helpText(null), /Commands:/);
  const run = helpText("run");
  for (const f of flagsFor("run")) {
    assert.ok(run.includes(`--${f.name}`), f.name);
    assert.ok(run.includes(envNameFor(f.name)), f.name);
  }
  assert.ok(FLAGS.every((f) => f.env[0] === envNameFor(f.name)));
});
