import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { FLAGS } from "../../src/cli/flags.ts";
import {
  agentPermissions,
  DEFAULT_SERVICE_ACCOUNT_DIR,
  flagEnvNames,
  IGNORED_LIBRARY_ENV,
  listenPermission,
  nvmlCandidatePaths,
  PermissionSetError,
  toDenoFlags,
} from "../../src/permissions/permission_set.ts";

const LIB = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1";

Deno.test("file mode grants exactly the library, caps dir, state dir, metrics address and flag env", () => {
  const set = agentPermissions("file", {
    nvmlLibraryPath: LIB,
    stateDir: "/var/lib/gpu-power-agent/",
    capsFile: "/tmp/x/caps.yaml",
    metricsAddress: "127.0.0.1:9402",
  });
  deepStrictEqual(set, {
    read: ["/var/lib/gpu-power-agent", "/tmp/x"],
    write: ["/var/lib/gpu-power-agent"],
    ffi: [LIB],
    net: ["127.0.0.1:9402"],
    env: flagEnvNames(),
    ignoreEnv: [...IGNORED_LIBRARY_ENV],
    sys: [],
  });
});

Deno.test("the env list is every variable of the flag table, nothing else in file mode", () => {
  const names = flagEnvNames();
  for (const flag of FLAGS) for (const name of flag.env) ok(names.includes(name), name);
  for (
    const name of ["GPU_POWER_AGENT_CAPS_FILE", "NVML_LIBRARY_PATH", "KUBECONFIG", "NODE_NAME"]
  ) {
    ok(names.includes(name), name);
  }
  ok(!names.includes("HOME"));
  equal(new Set(names).size, names.length);
});

Deno.test("kubernetes mode adds proc root, service account, kubeconfig, API server and in-cluster env", () => {
  const set = agentPermissions("kubernetes", {
    nvmlLibraryPath: LIB,
    stateDir: "/var/lib/gpu-power-agent",
    procRoot: "/host/proc",
    kubeconfigPath: "/etc/kube/config",
    kubeconfigFiles: ["/etc/kube/ca.crt"],
    metricsAddress: "0.0.0.0:9402",
    apiServer: ["10.96.0.1:443", "api.example:6443"],
  });
  deepStrictEqual(set.read, [
    "/var/lib/gpu-power-agent",
    "/host/proc",
    DEFAULT_SERVICE_ACCOUNT_DIR,
    "/etc/kube/config",
    "/etc/kube/ca.crt",
  ]);
  deepStrictEqual(set.net, ["0.0.0.0:9402", "10.96.0.1:443", "api.example:6443"]);
  deepStrictEqual(set.env.slice(-2), ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"]);
  deepStrictEqual(set.write, ["/var/lib/gpu-power-agent"]);
});

Deno.test("candidate NVML paths: ffi and read on each, plus the linker cache", () => {
  const candidates = nvmlCandidatePaths(["/usr/lib64", "/usr/local/nvidia/lib64/"]);
  deepStrictEqual(candidates, [
    "/usr/lib64/libnvidia-ml.so.1",
    "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
  ]);
  const set = agentPermissions("file", { nvmlLibraryPath: candidates, stateDir: "/s" });
  deepStrictEqual(set.ffi, candidates);
  deepStrictEqual(set.read, [...candidates, "/etc/ld.so.cache", "/s"]);
});

Deno.test("listen addresses map to --allow-net entries", () => {
  equal(listenPermission("127.0.0.1:9402"), "127.0.0.1:9402");
  equal(listenPermission("0.0.0.0:9402"), "0.0.0.0:9402");
  equal(listenPermission(":9402"), "0.0.0.0:9402");
  equal(listenPermission("[::1]:9402"), "[::1]:9402");
  equal(listenPermission("localhost:0"), "localhost");
  equal(listenPermission("off"), null);
  throws(() => listenPermission("9402"), PermissionSetError);
});

Deno.test("metrics off grants no net at all", () => {
  const set = agentPermissions("file", {
    nvmlLibraryPath: LIB,
    stateDir: "/s",
    metricsAddress: "off",
  });
  deepStrictEqual(set.net, []);
  ok(!toDenoFlags(set).some((f) => f.startsWith("--allow-net")));
});

Deno.test("relative paths and commas are refused with the option named", () => {
  throws(
    () => agentPermissions("file", { nvmlLibraryPath: LIB, stateDir: "state" }),
    /State directory must be an absolute path, got "state"/,
  );
  throws(
    () => agentPermissions("file", { nvmlLibraryPath: "lib.so", stateDir: "/s" }),
    /NVML library path must be an absolute path/,
  );
  throws(
    () => agentPermissions("file", { nvmlLibraryPath: LIB, stateDir: "/a,b" }),
    /contains a comma/,
  );
  throws(() => agentPermissions("file", { nvmlLibraryPath: [], stateDir: "/s" }), /at least one/);
});

Deno.test("toDenoFlags: scoped flags only, never -A or --allow-run", () => {
  const flags = toDenoFlags(agentPermissions("kubernetes", {
    nvmlLibraryPath: LIB,
    stateDir: "/s",
    capsFile: "/etc/c/caps.yaml",
    metricsAddress: "127.0.0.1:9402",
    apiServer: "10.0.0.1:443",
  }));
  deepStrictEqual(flags.map((f) => f.slice(0, f.indexOf("="))), [
    "--allow-read",
    "--allow-write",
    "--allow-ffi",
    "--allow-net",
    "--allow-env",
    "--ignore-env",
  ]);
  for (const flag of flags) {
    ok(flag.includes("="), `${flag} is scoped`);
    ok(!/^(-A|--allow-all|--allow-run|--allow-sys|--allow-import)/.test(flag), flag);
  }
  equal(flags[3], "--allow-net=127.0.0.1:9402,10.0.0.1:443");
});
