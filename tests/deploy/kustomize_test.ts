/**
 * Renders every kustomization under deploy/kubernetes with `kubectl kustomize` and checks the
 * invariants on the parsed objects. Needs kubectl (with its built-in kustomize, v5); the tests
 * fail, never skip, without it.
 */
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { containerCommand, KUBELET_API_SERVER } from "../../src/permissions/manifests.ts";
import { AGENT_MALLOC_ENV } from "../../src/permissions/runtime.ts";
import { CONTAINER_LAYOUT } from "../../src/permissions/layouts.ts";

const KUBE_DIR = fileURLToPath(new URL("../../deploy/kubernetes/", import.meta.url));
const KUSTOMIZATIONS = [
  "base",
  "overlays/namespace-restricted",
  "overlays/privileged",
  "overlays/podmonitor",
] as const;

// deno-lint-ignore no-explicit-any
type Obj = Record<string, any>;

const rendered = new Map<string, Promise<Obj[]>>();

/** The parsed output of `kubectl kustomize` (rendered once per kustomization). */
function render(kustomization: string): Promise<Obj[]> {
  if (!rendered.has(kustomization)) rendered.set(kustomization, renderNow(kustomization));
  return rendered.get(kustomization)!.then((objects) => structuredClone(objects));
}

async function renderNow(kustomization: string): Promise<Obj[]> {
  let out;
  try {
    out = await new Deno.Command("kubectl", {
      args: ["kustomize", `${KUBE_DIR}${kustomization}`],
      stdin: "null",
    }).output();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new Error("kubectl not found: install kubectl (it renders the kustomizations)");
    }
    throw error;
  }
  const stderr = new TextDecoder().decode(out.stderr);
  equal(out.code, 0, `kubectl kustomize ${kustomization} failed:\n${stderr}`);
  equal(stderr.trim(), "", `kubectl kustomize ${kustomization} warned:\n${stderr}`);
  return parseAllDocuments(new TextDecoder().decode(out.stdout)).map((d) => d.toJS() as Obj);
}

function only(objects: Obj[], kind: string): Obj {
  const found = objects.filter((o) => o.kind === kind);
  equal(found.length, 1, `expected one ${kind}, found ${found.length}`);
  return found[0];
}

function argValue(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  if (i !== -1) return args[i + 1];
  return args.find((a) => a.startsWith(`${flag}=`))?.slice(flag.length + 1);
}

const PODS_AND_EVENTS = [
  { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] },
  { apiGroups: [""], resources: ["events"], verbs: ["create", "patch"] },
];

function checkDaemonSet(objects: Obj[], name: string): void {
  const ds = only(objects, "DaemonSet");
  const spec = ds.spec.template.spec;
  const [agent] = spec.containers;
  const args: string[] = agent.args;
  const env = Object.fromEntries(
    (agent.env as Obj[]).map((e) => [e.name, e.value ?? e.valueFrom?.fieldRef?.fieldPath]),
  );
  deepStrictEqual(spec.nodeSelector, { "nvidia.com/gpu.present": "true" }, name);
  ok(
    spec.tolerations.some((t: Obj) =>
      t.key === "nvidia.com/gpu" && t.operator === "Exists" && t.effect === "NoSchedule"
    ),
    name,
  );
  equal(spec.runtimeClassName, "nvidia", name);
  equal(spec.hostPID, true, `${name}: NVML reports only PIDs of the caller's PID namespace`);
  equal(env.NVIDIA_VISIBLE_DEVICES, "all");
  for (const [variable, value] of Object.entries(AGENT_MALLOC_ENV)) {
    equal(env[variable], value, `${name}: ${variable} of src/permissions/runtime.ts`);
  }
  equal(env.NVIDIA_DRIVER_CAPABILITIES, "utility");
  equal(env.NODE_NAME, "spec.nodeName");
  equal(env.POD_NAMESPACE, "metadata.namespace");
  equal(argValue(args, "--source"), "kubernetes");
  ok(Number(argValue(args, "--safe-default-watts")) > 0, "--safe-default-watts is required");
  equal(argValue(args, "--proc-root"), "/proc");
  // The state dir the agent writes is the hostPath volume.
  const stateDir = argValue(args, "--state-dir") ?? CONTAINER_LAYOUT.stateDir;
  const mount = agent.volumeMounts.find((m: Obj) => m.mountPath === stateDir);
  ok(mount, `${name}: ${stateDir} is not mounted`);
  const volume = spec.volumes.find((v: Obj) => v.name === mount.name);
  equal(volume.hostPath.path, stateDir);
  // The command is the one permission_set.ts derives for these arguments.
  deepStrictEqual(
    agent.command,
    containerCommand({
      apiServer: KUBELET_API_SERVER,
      metricsAddress: argValue(args, "--metrics-address"),
      procRoot: argValue(args, "--proc-root"),
      stateDir,
    }),
    `${name}: container command does not match the kubernetes permission set`,
  );
  ok(!agent.command.some((a: string) => a === "-A" || a.startsWith("--allow-run")));
  // Probes on the metrics port, which the permission set lets the agent listen on.
  const port = agent.ports.find((p: Obj) => p.name === "metrics").containerPort;
  equal(argValue(args, "--metrics-address"), `0.0.0.0:${port}`);
  equal(agent.readinessProbe.httpGet.path, "/readyz");
  equal(agent.livenessProbe.httpGet.path, "/healthz");
  ok(spec.terminationGracePeriodSeconds >= 30, "time to restore every GPU");
  deepStrictEqual(ds.spec.updateStrategy, {
    type: "RollingUpdate",
    rollingUpdate: { maxUnavailable: 1 },
  });
  ok(agent.resources.requests.memory && agent.resources.limits.memory);
  const sc = agent.securityContext;
  equal(sc.readOnlyRootFilesystem, true);
  equal(sc.runAsUser, 0);
  if (name === "overlays/privileged") {
    equal(sc.privileged, true);
  } else {
    ok(!sc.privileged, `${name} must not be privileged`);
    deepStrictEqual(sc.capabilities, { drop: ["ALL"], add: ["SYS_ADMIN"] });
    // The API server rejects allowPrivilegeEscalation: false together with SYS_ADMIN.
    equal(sc.allowPrivilegeEscalation, undefined);
  }
}

for (const name of KUSTOMIZATIONS) {
  Deno.test(`kubectl kustomize ${name}: renders and keeps the DaemonSet invariants`, async () => {
    checkDaemonSet(await render(name), name);
  });
}

Deno.test("RBAC scope and --namespace agree in every kustomization", async () => {
  for (const name of KUSTOMIZATIONS) {
    const objects = await render(name);
    const args: string[] = only(objects, "DaemonSet").spec.template.spec.containers[0].args;
    const namespace = argValue(args, "--namespace");
    const sa = only(objects, "ServiceAccount");
    const roles = objects.filter((o) => o.kind === "Role" || o.kind === "ClusterRole");
    const bindings = objects.filter((o) =>
      o.kind === "RoleBinding" || o.kind === "ClusterRoleBinding"
    );
    equal(roles.length, 1, name);
    equal(bindings.length, 1, name);
    const [role] = roles;
    const [binding] = bindings;
    deepStrictEqual(role.rules, PODS_AND_EVENTS, `${name}: pods read + events write, nothing else`);
    deepStrictEqual(binding.roleRef, {
      apiGroup: "rbac.authorization.k8s.io",
      kind: role.kind,
      name: role.metadata.name,
    });
    deepStrictEqual(binding.subjects, [{
      kind: "ServiceAccount",
      name: sa.metadata.name,
      namespace: sa.metadata.namespace,
    }]);
    equal(
      only(objects, "DaemonSet").spec.template.spec.serviceAccountName,
      sa.metadata.name,
    );
    if (role.kind === "ClusterRole") {
      equal(namespace, undefined, `${name}: cluster-wide RBAC, so no --namespace`);
    } else {
      ok(namespace, `${name}: namespaced Role without --namespace: every LIST would be 403`);
      equal(role.metadata.namespace, namespace, `${name}: Role namespace`);
      equal(binding.metadata.namespace, namespace, `${name}: RoleBinding namespace`);
    }
  }
});

Deno.test("metrics are scraped once: annotations in the base, a PodMonitor in its overlay", async () => {
  const base = only(await render("base"), "DaemonSet").spec.template.metadata.annotations;
  deepStrictEqual(base, {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": "9402",
    "prometheus.io/path": "/metrics",
  });
  const objects = await render("overlays/podmonitor");
  deepStrictEqual(only(objects, "DaemonSet").spec.template.metadata.annotations ?? {}, {});
  const monitor = only(objects, "PodMonitor");
  deepStrictEqual(monitor.spec.selector.matchLabels, {
    "app.kubernetes.io/name": "gpu-power-agent",
  });
  deepStrictEqual(monitor.spec.podMetricsEndpoints[0].port, "metrics");
});

Deno.test("the namespace admits the agent's privileges", async () => {
  const ns = only(await render("base"), "Namespace");
  equal(ns.metadata.labels["pod-security.kubernetes.io/enforce"], "privileged");
});
