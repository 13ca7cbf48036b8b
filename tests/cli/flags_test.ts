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
  assert.throws(() => parseCommandLine(["restore", "--caps-file", "x"]), /caps-file/);
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

Deno.test("pod → GPU mapping flags: defaults, choices, validated socket and resource names", () => {
  const defaults = parseCommandLine(["run"]).options;
  assert.equal(defaults.podGpuMapping, "auto");
  assert.equal(defaults.podResourcesSocket, "/var/lib/kubelet/pod-resources/kubelet.sock");
  assert.equal(defaults.gpuResourceNames, "nvidia.com/gpu,nvidia.com/mig-*");
  const p = parseCommandLine([
    "run",
    "--pod-gpu-mapping",
    "pod-resources",
    "--pod-resources-socket",
    "/run/kubelet/pod-resources.sock",
    "--gpu-resource-names",
    "nvidia.com/gpu.shared",
  ]);
  assert.equal(p.options.podGpuMapping, "pod-resources");
  assert.equal(p.options.podResourcesSocket, "/run/kubelet/pod-resources.sock");
  assert.equal(p.options.gpuResourceNames, "nvidia.com/gpu.shared");
  assert.throws(
    () => parseCommandLine(["run", "--pod-gpu-mapping", "cgroups"]),
    /--pod-gpu-mapping: expected one of auto, pod-resources, processes/,
  );
  assert.throws(
    () => parseCommandLine(["run", "--pod-resources-socket", "kubelet.sock"]),
    /--pod-resources-socket: expected an absolute path, got "kubelet.sock"/,
  );
  assert.throws(
    () => parseCommandLine(["run"], { env: envOf({ GPU_POWER_AGENT_GPU_RESOURCE_NAMES: "gpu" }) }),
    /GPU_POWER_AGENT_GPU_RESOURCE_NAMES: "gpu" is not a resource name/,
  );
});
