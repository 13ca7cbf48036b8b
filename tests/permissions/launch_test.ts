import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import {
  absolutizeArgs,
  BUNDLE_ENV,
  DENO_CONFIG,
  type LaunchPlan,
  MAIN_MODULE,
  planLaunch,
  type PlanLaunchOptions,
} from "../../src/permissions/launch.ts";
import { AGENT_MALLOC_ENV, AGENT_RUNTIME_FLAGS } from "../../src/permissions/runtime.ts";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { makeGpu, readFakeState, writeFakeState } from "../helpers/fake_state.ts";

const LIB = "/opt/nvidia/libnvidia-ml.so.1";

function envOf(vars: Record<string, string>): (name: string) => string | undefined {
  return (name) => vars[name];
}

async function plan(
  argv: string[],
  options: PlanLaunchOptions & { vars?: Record<string, string> } = {},
): Promise<LaunchPlan> {
  const decision = await planLaunch(argv, {
    cwd: "/home/op",
    deno: "/usr/bin/deno",
    env: envOf(options.vars ?? {}),
    ...options,
  });
  if (decision.kind !== "spawn") throw new Error(`expected spawn, got ${JSON.stringify(decision)}`);
  return decision.plan;
}

Deno.test("help, no command and usage errors are answered without NVML", async () => {
  const help = await planLaunch(["run", "--help"], { env: envOf({}) });
  equal(help.kind, "exit");
  if (help.kind === "exit") {
    equal(help.code, 0);
    match(help.stdout ?? "", /Usage: gpu-power-agent run/);
  }
  const none = await planLaunch([], { env: envOf({}) });
  deepStrictEqual([none.kind, none.kind === "exit" && none.code], ["exit", 2]);
  const bad = await planLaunch(["run", "--bogus"], { env: envOf({}) });
  equal(bad.kind === "exit" && bad.code, 2);
  const badCommand = await planLaunch(["frobnicate"], { env: envOf({}) });
  equal(badCommand.kind === "exit" && badCommand.code, 2);
});

Deno.test("NVIDIA driver not found exits 3 with the agent's message", async () => {
  const empty = await Deno.makeTempDir();
  try {
    const decision = await planLaunch(["status"], {
      env: envOf({}),
      nvmlSearch: { searchDirs: [empty], ldCachePath: null },
    });
    equal(decision.kind, "exit");
    if (decision.kind === "exit") {
      equal(decision.code, 3);
      match(decision.stderr ?? "", /NVIDIA driver not found: cannot load libnvidia-ml\.so\.1/);
    }
  } finally {
    await Deno.remove(empty);
  }
});

Deno.test("run: relative paths become absolute in the flags and the arguments", async () => {
  const p = await plan([
    "run",
    "--caps-file",
    "conf/caps.yaml",
    "--state-dir=state",
    "--nvml-library",
    "../lib/libnvidia-ml.so.1",
    "--metrics-address",
    "127.0.0.1:9500",
  ]);
  equal(p.mode, "file");
  equal(p.cwd, "/home/op");
  deepStrictEqual(p.permissions.read, ["/home/op/state", "/home/op/conf"]);
  deepStrictEqual(p.permissions.write, ["/home/op/state"]);
  deepStrictEqual(p.permissions.ffi, ["/home/lib/libnvidia-ml.so.1"]);
  deepStrictEqual(p.permissions.net, ["127.0.0.1:9500"]);
  deepStrictEqual(p.args.slice(0, 4 + AGENT_RUNTIME_FLAGS.length), [
    "run",
    "--no-prompt",
    ...AGENT_RUNTIME_FLAGS,
    "--config",
    DENO_CONFIG,
  ]);
  const main = p.args.indexOf(MAIN_MODULE);
  deepStrictEqual(p.args.slice(main + 1), [
    "run",
    "--caps-file",
    "/home/op/conf/caps.yaml",
    "--state-dir=/home/op/state",
    "--nvml-library",
    "/home/lib/libnvidia-ml.so.1",
    "--metrics-address",
    "127.0.0.1:9500",
  ]);
  deepStrictEqual(p.env, AGENT_MALLOC_ENV); // the library was given: nothing else to pass
  ok(!p.args.some((a) => a === "-A" || a.startsWith("--allow-run") || a === "--allow-all"));
});

Deno.test("paths from the environment and INIT_CWD (deno task) are honoured", async () => {
  const p = await plan(["check"], {
    cwd: undefined,
    vars: {
      INIT_CWD: "/srv/site",
      GPU_POWER_AGENT_CAPS_FILE: "caps.json",
      NVML_LIBRARY_PATH: LIB,
    },
  });
  equal(p.cwd, "/srv/site");
  deepStrictEqual(p.permissions.read, ["/var/lib/gpu-power-agent", "/srv/site"]);
  deepStrictEqual(p.permissions.net, []); // check does not listen
  deepStrictEqual(p.env, {
    ...AGENT_MALLOC_ENV,
    GPU_POWER_AGENT_CAPS_FILE: "/srv/site/caps.json",
    NVML_LIBRARY_PATH: LIB,
  });
});

Deno.test("the agent gets the runtime settings; an operator's own malloc variable wins", async () => {
  const p = await plan(["status", "--nvml-library", LIB], { vars: { MALLOC_ARENA_MAX: "8" } });
  const { MALLOC_ARENA_MAX: _, ...rest } = AGENT_MALLOC_ENV;
  deepStrictEqual(p.env, rest);
  ok(AGENT_RUNTIME_FLAGS.every((flag) => p.args.includes(flag)));
  ok(p.args.indexOf(AGENT_RUNTIME_FLAGS[0]) < p.args.indexOf(MAIN_MODULE));
});

Deno.test("GPU_POWER_AGENT_BUNDLE: the bundle's main.js with --no-config, same permissions", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/main.js`, "");
    const argv = ["status", "--nvml-library", LIB];
    const sources = await plan(argv);
    const bundle = await plan(argv, { vars: { [BUNDLE_ENV]: dir } });
    equal(bundle.args[bundle.args.indexOf("status") - 1], `${dir}/main.js`);
    ok(bundle.args.includes("--no-config"));
    ok(!bundle.args.includes("--config") && !bundle.args.includes(MAIN_MODULE));
    deepStrictEqual(bundle.permissions, sources.permissions);
    deepStrictEqual(
      bundle.args.filter((a) => a !== "--no-config" && a !== `${dir}/main.js`),
      sources.args.filter((a) => a !== "--config" && a !== DENO_CONFIG && a !== MAIN_MODULE),
    );
    const missing = await planLaunch(argv, {
      cwd: "/home/op",
      deno: "/usr/bin/deno",
      env: envOf({ [BUNDLE_ENV]: "rel/none" }),
    });
    equal(missing.kind, "exit");
    if (missing.kind === "exit") {
      equal(missing.code, 2);
      match(missing.stderr ?? "", /no \/home\/op\/rel\/none\/main\.js.*deno task bundle/);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a searched NVML library is handed to the agent, so FFI and load agree", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeFile(`${dir}/libnvidia-ml.so.1`, new Uint8Array());
    const p = await plan(["status"], { nvmlSearch: { searchDirs: [dir], ldCachePath: null } });
    deepStrictEqual(p.permissions.ffi, [`${dir}/libnvidia-ml.so.1`]);
    deepStrictEqual(p.env, {
      ...AGENT_MALLOC_ENV,
      GPU_POWER_AGENT_NVML_LIBRARY: `${dir}/libnvidia-ml.so.1`,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kubernetes mode: API server from the kubeconfig and from the in-cluster variables", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/kubeconfig`,
      JSON.stringify({
        "current-context": "c",
        contexts: [{ name: "c", context: { cluster: "k", user: "u" } }],
        clusters: [{
          name: "k",
          cluster: { server: "https://10.0.0.5:6443", "certificate-authority": "ca.crt" },
        }],
        users: [{ name: "u", user: { token: "t" } }],
      }),
    );
    const argv = ["run", "--source", "kubernetes", "--kubeconfig", `${dir}/kubeconfig`];
    const p = await plan([...argv, "--nvml-library", LIB], {
      vars: { KUBERNETES_SERVICE_HOST: "10.96.0.1", KUBERNETES_SERVICE_PORT: "443" },
    });
    equal(p.mode, "kubernetes");
    deepStrictEqual(p.permissions.net, [
      "127.0.0.1:9402",
      "10.96.0.1:443",
      "10.0.0.5:6443",
      // --pod-gpu-mapping auto (the default) may read the kubelet's PodResources socket.
      "unix:/var/lib/kubelet/pod-resources/kubelet.sock",
    ]);
    ok(p.permissions.read.includes("/var/lib/kubelet/pod-resources/kubelet.sock"));
    ok(p.permissions.read.includes("/proc"));
    ok(p.permissions.read.includes(`${dir}/kubeconfig`));
    ok(p.permissions.read.includes(`${dir}/ca.crt`));
    ok(p.permissions.env.includes("KUBERNETES_SERVICE_HOST"));

    const processes = await plan([
      ...argv,
      "--pod-gpu-mapping",
      "processes",
      "--nvml-library",
      LIB,
    ]);
    ok(!processes.permissions.net.some((n) => n.startsWith("unix:")), "processes: no socket");
    ok(!processes.permissions.read.some((r) => r.includes("pod-resources")));

    const none = await planLaunch(["run", "--source", "kubernetes", "--nvml-library", LIB], {
      env: envOf({}),
      cwd: "/",
    });
    equal(none.kind === "exit" && none.code, 2);
    match(none.kind === "exit" ? none.stderr ?? "" : "", /needs an API server/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("absolutizeArgs rewrites only path flags", () => {
  deepStrictEqual(
    absolutizeArgs(["run", "--caps-file", "a.yaml", "--annotation", "x/y", "--proc-root=p"], "/w"),
    ["run", "--caps-file", "/w/a.yaml", "--annotation", "x/y", "--proc-root=/w/p"],
  );
});

Deno.test("deno task agent: runs from another directory, forwards SIGTERM, passes the exit code", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpa-launch-" });
  try {
    const lib = await buildFakeNvml();
    const statePath = `${dir}/fake.json`;
    await writeFakeState(statePath, { driverVersion: "580.159.04", gpus: [makeGpu(0)] });
    await Deno.mkdir(`${dir}/conf`);
    await Deno.writeTextFile(`${dir}/conf/caps.yaml`, "version: 1\ndefault: {watts: 250}\n");
    // INIT_CWD is where the user ran the task; set it as a user's shell would (an enclosing
    // `deno task test` would otherwise pass its own down).
    const env = {
      FAKE_NVML_STATE: statePath,
      NO_COLOR: "1",
      DENO_NO_UPDATE_CHECK: "1",
      INIT_CWD: dir,
    };
    const task = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["task", "--quiet", "--config", DENO_CONFIG, "agent", ...args],
        cwd: dir, // relative paths below are relative to this directory
        env,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      });
    const invalid = await task(["check", "--caps-file", "missing.yaml", "--nvml-library", lib])
      .output();
    equal(invalid.code, 2, new TextDecoder().decode(invalid.stderr));

    const child = task([
      "run",
      "--caps-file",
      "conf/caps.yaml",
      "--state-dir",
      "state",
      "--nvml-library",
      lib,
      "--metrics-address",
      "off",
    ]).spawn();
    const output = Promise.all([
      new Response(child.stdout).text(),
      new Response(child.stderr).text(),
    ]).then(([a, b]) => a + b);
    const limit = async () => (await readFakeState(statePath)).gpus[0].limitMw;
    const deadline = Date.now() + 15_000;
    while ((await limit()) !== 250_000) {
      if (Date.now() > deadline) {
        try {
          child.kill("SIGKILL");
        } catch { /* already exited: the output says why */ }
        throw new Error(`cap not applied; output:\n${await output}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    ok((await Deno.stat(`${dir}/state/journal.json`)).isFile);
    child.kill("SIGTERM");
    const status = await child.status;
    equal(status.code, 0, await output);
    equal(await limit(), 700_000); // restored by the agent on the forwarded SIGTERM
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
