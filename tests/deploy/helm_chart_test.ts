/**
 * The Helm chart (deploy/helm/gpu-power-agent), the one source of the Kubernetes manifests:
 * `helm lint` and `helm template` of every shape, the invariants of the rendered objects (parsed
 * with `yaml`), the DaemonSet command against the permission definition, and every refused
 * combination of values with its message. Needs helm (`.ci/install-helm`); the tests fail, never
 * skip, without it.
 */
import { deepStrictEqual, equal, match, notEqual, ok } from "node:assert/strict";
import { parse, parseAllDocuments } from "yaml";
import { FLAGS } from "../../src/cli/flags.ts";
import { CONTAINER_LAYOUT } from "../../src/permissions/layouts.ts";
import { AGENT_MALLOC_ENV } from "../../src/permissions/runtime.ts";
import {
  CHART_DIR,
  containerCommand,
  KUBELET_API_SERVER,
} from "../../src/permissions/manifests.ts";

// deno-lint-ignore no-explicit-any
type Obj = Record<string, any>;
type Values = Record<string, unknown>;

const RELEASE = "gpa";
const NAMESPACE = "gpu-power-agent";
const DIGEST = `sha256:${"0123456789abcdef".repeat(4)}`;

/** Values of each shape the chart is rendered in (all need safeDefaultWatts). */
const SHAPES: Record<string, Values> = {
  "default": {},
  "namespace-restricted": { rbac: { namespaceRestricted: true, namespace: "gpu-workloads" } },
  "privileged": { privileged: true },
  "podmonitor": { metrics: { podMonitor: { enabled: true } } },
  "servicemonitor": { metrics: { serviceMonitor: { enabled: true } } },
  "prometheus-rule": { prometheusRule: { enabled: true, labels: { release: "kube-prometheus" } } },
  "pod-resources": { podGpuMapping: "pod-resources" },
  "auto-mapping": { podGpuMapping: "auto" },
  "processes-mapping": { podGpuMapping: "processes" },
  "node-policy": { nodePolicy: { enabled: true, budgetWatts: 4000 } },
  "no-node-budget-annotation": { nodeBudgetAnnotation: { enabled: false } },
  "everything-set": {
    image: { repository: "registry.example/gpu-power-agent", digest: DIGEST },
    annotation: "example.com/watts",
    allowedNamespaces: ["team-a", "team-b"],
    minWatts: 150,
    maxWatts: 650,
    enforceGraceSeconds: 30,
    metrics: { port: 9500 },
    priorityClassName: "system-node-critical",
    runtimeClassName: "nvidia-cdi",
    terminationGracePeriodSeconds: 120,
    extraArgs: ["--interval", "15"],
    nodePolicy: { enabled: true, caps: { default: { watts: 600 } } },
  },
};

async function helm(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let out;
  try {
    out = await new Deno.Command("helm", { args, stdin: "null" }).output();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new Error("helm not found on PATH: run .ci/install-helm (installs helm v4.1.4)");
    }
    throw error;
  }
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

/** `-f values.json`: the shape's values with safeDefaultWatts 500 unless given. */
async function valuesFile(values: Values): Promise<string> {
  const path = await Deno.makeTempFile({ prefix: "gpa-values-", suffix: ".json" });
  await Deno.writeTextFile(path, JSON.stringify({ safeDefaultWatts: 500, ...values }));
  return path;
}

async function template(values: Values): Promise<{ code: number; stdout: string; stderr: string }> {
  const file = await valuesFile(values);
  try {
    return await helm(["template", RELEASE, CHART_DIR, "--namespace", NAMESPACE, "-f", file]);
  } finally {
    await Deno.remove(file);
  }
}

const rendered = new Map<string, Promise<Obj[]>>();

/** The parsed objects of `helm template` for a shape (rendered once per shape). */
function render(shape: string): Promise<Obj[]> {
  if (!rendered.has(shape)) {
    rendered.set(
      shape,
      template(SHAPES[shape]).then(({ code, stdout, stderr }) => {
        equal(code, 0, `helm template (${shape}) failed:\n${stderr}`);
        equal(stderr.trim(), "", `helm template (${shape}) warned:\n${stderr}`);
        return parseAllDocuments(stdout).map((d) => d.toJS() as Obj).filter((o) => o !== null);
      }),
    );
  }
  return rendered.get(shape)!.then((objects) => structuredClone(objects));
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

/** A command with each `--flag=a,b` permission list sorted: lists are sets to Deno. */
function normalizedCommand(command: string[]): string[] {
  return command.map((arg) => {
    const m = /^(--(?:allow|ignore)-[a-z]+)=(.*)$/.exec(arg);
    return m ? `${m[1]}=${m[2].split(",").sort().join(",")}` : arg;
  });
}

function agentOf(objects: Obj[]): { spec: Obj; agent: Obj; args: string[] } {
  const spec = only(objects, "DaemonSet").spec.template.spec;
  const [agent] = spec.containers;
  return { spec, agent, args: agent.args };
}

function checkDaemonSet(objects: Obj[], shape: string): void {
  const values = SHAPES[shape] as Obj;
  const ds = only(objects, "DaemonSet");
  const { spec, agent, args } = agentOf(objects);
  const env = Object.fromEntries(
    (agent.env as Obj[]).map((e) => [e.name, e.value ?? e.valueFrom?.fieldRef?.fieldPath]),
  );
  deepStrictEqual(spec.nodeSelector, { "nvidia.com/gpu.present": "true" }, shape);
  ok(
    spec.tolerations.some((t: Obj) =>
      t.key === "nvidia.com/gpu" && t.operator === "Exists" && t.effect === "NoSchedule"
    ),
    shape,
  );
  equal(spec.runtimeClassName, values.runtimeClassName ?? "nvidia", shape);
  equal(spec.priorityClassName, values.priorityClassName, shape);
  equal(env.NVIDIA_VISIBLE_DEVICES, "all");
  equal(env.NVIDIA_DRIVER_CAPABILITIES, "utility");
  equal(env.NODE_NAME, "spec.nodeName");
  equal(env.POD_NAMESPACE, "metadata.namespace");
  for (const [variable, value] of Object.entries(AGENT_MALLOC_ENV)) {
    equal(env[variable], value, `${shape}: ${variable} of src/permissions/runtime.ts`);
  }
  equal(args[0], "run");
  equal(argValue(args, "--source"), "kubernetes");
  equal(Number(argValue(args, "--safe-default-watts")), 500, "--safe-default-watts is passed");
  equal(argValue(args, "--proc-root"), CONTAINER_LAYOUT.procRoot);
  equal(argValue(args, "--annotation"), values.annotation ?? "dynamo.nvidia.com/gpu-power-limit");

  // The state dir the agent writes is the hostPath volume.
  const stateDir = argValue(args, "--state-dir")!;
  equal(stateDir, CONTAINER_LAYOUT.stateDir);
  const mount = agent.volumeMounts.find((m: Obj) => m.mountPath === stateDir);
  ok(mount, `${shape}: ${stateDir} is not mounted`);
  equal(spec.volumes.find((v: Obj) => v.name === mount.name).hostPath.path, stateDir);

  // The command is the one permission_set.ts derives for these arguments.
  deepStrictEqual(
    normalizedCommand(agent.command),
    normalizedCommand(containerCommand({
      apiServer: KUBELET_API_SERVER,
      metricsAddress: argValue(args, "--metrics-address"),
      procRoot: argValue(args, "--proc-root"),
      stateDir,
      capsFile: argValue(args, "--caps-file"),
      podResourcesSocket: argValue(args, "--pod-resources-socket"),
    })),
    `${shape}: container command does not match the kubernetes permission set`,
  );
  ok(!agent.command.some((a: string) => a === "-A" || a.startsWith("--allow-run")));

  // Probes on the metrics port, which the permission set lets the agent listen on.
  const port = agent.ports.find((p: Obj) => p.name === "metrics").containerPort;
  equal(port, values.metrics?.port ?? 9402);
  equal(argValue(args, "--metrics-address"), `0.0.0.0:${port}`);
  equal(agent.readinessProbe.httpGet.path, "/readyz");
  equal(agent.readinessProbe.httpGet.port, "metrics");
  equal(agent.livenessProbe.httpGet.path, "/healthz");
  ok(spec.terminationGracePeriodSeconds >= 60, "time to restore every GPU");
  deepStrictEqual(ds.spec.updateStrategy, {
    type: "RollingUpdate",
    rollingUpdate: { maxUnavailable: 1 },
  });
  ok(agent.resources.requests.memory && agent.resources.limits.memory);
  const sc = agent.securityContext;
  equal(sc.readOnlyRootFilesystem, true);
  equal(sc.runAsUser, 0);
  if (values.privileged) {
    equal(sc.privileged, true);
  } else {
    ok(!sc.privileged, `${shape} must not be privileged`);
    deepStrictEqual(sc.capabilities, { drop: ["ALL"], add: ["SYS_ADMIN"] });
    // The API server rejects allowPrivilegeEscalation: false together with SYS_ADMIN.
    equal(sc.allowPrivilegeEscalation, undefined);
  }
  deepStrictEqual(ds.spec.selector.matchLabels, {
    "app.kubernetes.io/name": "gpu-power-agent",
    "app.kubernetes.io/instance": RELEASE,
  });
  equal(spec.serviceAccountName, only(objects, "ServiceAccount").metadata.name);
}

for (const shape of Object.keys(SHAPES)) {
  Deno.test(`helm template ${shape}: renders and keeps the DaemonSet invariants`, async () => {
    checkDaemonSet(await render(shape), shape);
  });
}

Deno.test("helm lint --strict passes for every shape", async () => {
  for (const [shape, values] of Object.entries(SHAPES)) {
    const file = await valuesFile(values);
    try {
      const { code, stdout, stderr } = await helm(["lint", "--strict", CHART_DIR, "-f", file]);
      equal(code, 0, `helm lint (${shape}):\n${stdout}${stderr}`);
      match(stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
    } finally {
      await Deno.remove(file);
    }
  }
});

Deno.test("the default render passes only flags today's agent knows", async () => {
  const known = new Set(FLAGS.map((f) => `--${f.name}`));
  for (const shape of ["default", "namespace-restricted", "privileged", "podmonitor"]) {
    const { args } = agentOf(await render(shape));
    for (const arg of args.filter((a) => a.startsWith("--"))) {
      ok(known.has(arg.split("=")[0]), `${shape}: ${arg} is not a flag of the agent`);
    }
  }
});

Deno.test("RBAC scope and --namespace agree in every shape", async () => {
  const podsAndEvents = [
    { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] },
    { apiGroups: [""], resources: ["events"], verbs: ["create", "patch"] },
  ];
  for (const shape of Object.keys(SHAPES)) {
    const objects = await render(shape);
    const namespace = argValue(agentOf(objects).args, "--namespace");
    const sa = only(objects, "ServiceAccount");
    equal(sa.metadata.namespace, NAMESPACE);
    const isNodes = (o: Obj) => String(o.metadata.name).endsWith("-nodes");
    const roles = objects.filter((o) =>
      (o.kind === "Role" || o.kind === "ClusterRole") && !isNodes(o)
    );
    const bindings = objects.filter((o) =>
      (o.kind === "RoleBinding" || o.kind === "ClusterRoleBinding") && !isNodes(o)
    );
    // Nodes (the budget annotation of the agent's own node): cluster-scoped, so a ClusterRole
    // in every RBAC shape, present exactly when the agent follows the annotation.
    const nodeRoles = objects.filter((o) => o.kind === "ClusterRole" && isNodes(o));
    const nodeBindings = objects.filter((o) => o.kind === "ClusterRoleBinding" && isNodes(o));
    const follows = !agentOf(objects).args.includes("--no-node-budget-annotation");
    equal(follows, shape !== "no-node-budget-annotation", `${shape}: --no-node-budget-annotation`);
    equal(nodeRoles.length, follows ? 1 : 0, `${shape}: nodes ClusterRole`);
    equal(nodeBindings.length, follows ? 1 : 0, `${shape}: nodes ClusterRoleBinding`);
    if (follows) {
      deepStrictEqual(nodeRoles[0].rules, [
        { apiGroups: [""], resources: ["nodes"], verbs: ["get", "list", "watch"] },
      ], `${shape}: nodes read, nothing else`);
      deepStrictEqual(nodeBindings[0].roleRef, {
        apiGroup: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        name: nodeRoles[0].metadata.name,
      });
      deepStrictEqual(nodeBindings[0].subjects, [{
        kind: "ServiceAccount",
        name: only(objects, "ServiceAccount").metadata.name,
        namespace: NAMESPACE,
      }]);
    }
    equal(roles.length, 1, shape);
    equal(bindings.length, 1, shape);
    const [role] = roles;
    const [binding] = bindings;
    deepStrictEqual(role.rules, podsAndEvents, `${shape}: pods read + events write, nothing else`);
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
    if (role.kind === "ClusterRole") {
      equal(namespace, undefined, `${shape}: cluster-wide RBAC, so no --namespace`);
    } else {
      ok(namespace, `${shape}: namespaced Role without --namespace: every LIST would be 403`);
      equal(role.metadata.namespace, namespace, `${shape}: Role namespace`);
      equal(binding.metadata.namespace, namespace, `${shape}: RoleBinding namespace`);
    }
  }
  equal(
    argValue(agentOf(await render("namespace-restricted")).args, "--namespace"),
    "gpu-workloads",
  );
});

Deno.test("metrics are scraped once: annotations, or a PodMonitor, or a ServiceMonitor", async () => {
  const annotations = only(await render("default"), "DaemonSet").spec.template.metadata.annotations;
  deepStrictEqual(annotations, {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": "9402",
    "prometheus.io/path": "/metrics",
  });
  equal(
    only(await render("everything-set"), "DaemonSet").spec.template.metadata
      .annotations["prometheus.io/port"],
    "9500",
  );
  const relabelings = [
    { targetLabel: "job", replacement: "gpu-power-agent" },
    { sourceLabels: ["__meta_kubernetes_pod_node_name"], targetLabel: "node" },
  ];
  for (
    const [shape, kind] of [["podmonitor", "PodMonitor"], ["servicemonitor", "ServiceMonitor"]]
  ) {
    const objects = await render(shape);
    deepStrictEqual(only(objects, "DaemonSet").spec.template.metadata.annotations ?? {}, {});
    const monitor = only(objects, kind);
    equal(monitor.metadata.namespace, NAMESPACE);
    const endpoint = (monitor.spec.podMetricsEndpoints ?? monitor.spec.endpoints)[0];
    equal(endpoint.port, "metrics");
    equal(endpoint.path, "/metrics");
    deepStrictEqual(endpoint.relabelings, relabelings, `${shape}: the alert rules need job, node`);
    deepStrictEqual(
      monitor.spec.selector.matchLabels,
      only(objects, "DaemonSet").spec.selector.matchLabels,
    );
  }
  const service = only(await render("servicemonitor"), "Service");
  equal(service.spec.clusterIP, "None");
  deepStrictEqual(service.spec.ports, [{
    name: "metrics",
    port: 9402,
    targetPort: "metrics",
    protocol: "TCP",
  }]);
  for (const kind of ["PodMonitor", "ServiceMonitor", "Service", "PrometheusRule"]) {
    ok(!(await render("default")).some((o) => o.kind === kind), `default renders no ${kind}`);
  }
});

Deno.test("the PrometheusRule carries the rules file as it is", async () => {
  const rule = only(await render("prometheus-rule"), "PrometheusRule");
  equal(rule.metadata.labels.release, "kube-prometheus");
  const file = await Deno.readTextFile(`${CHART_DIR}/files/gpu-power-agent.rules.yaml`);
  deepStrictEqual(rule.spec, parse(file));
  const linked = await Deno.realPath(
    new URL("../../deploy/prometheus/gpu-power-agent.rules.yaml", import.meta.url),
  );
  equal(linked, await Deno.realPath(`${CHART_DIR}/files/gpu-power-agent.rules.yaml`));
});

Deno.test("hostPID and the PodResources socket follow podGpuMapping", async () => {
  const expected = {
    "default": { hostPID: true, socket: true, mode: "auto" },
    "processes-mapping": { hostPID: true, socket: false, mode: "processes" },
    "auto-mapping": { hostPID: true, socket: true, mode: "auto" },
    "pod-resources": { hostPID: undefined, socket: true, mode: "pod-resources" },
  } as const;
  for (const [shape, want] of Object.entries(expected)) {
    const { spec, agent, args } = agentOf(await render(shape));
    equal(spec.hostPID, want.hostPID, shape);
    equal(argValue(args, "--pod-gpu-mapping"), want.mode, shape);
    const mount = agent.volumeMounts.find((m: Obj) =>
      m.mountPath === CONTAINER_LAYOUT.podResourcesDir
    );
    const volume = spec.volumes.find((v: Obj) => v.name === mount?.name);
    if (want.socket) {
      equal(argValue(args, "--pod-resources-socket"), CONTAINER_LAYOUT.podResourcesSocket);
      equal(mount.readOnly, true, `${shape}: the kubelet's socket directory is read-only`);
      deepStrictEqual(volume.hostPath, {
        path: CONTAINER_LAYOUT.podResourcesDir,
        type: "Directory",
      });
    } else {
      equal(argValue(args, "--pod-resources-socket"), undefined, shape);
      equal(mount, undefined, shape);
    }
  }
});

Deno.test("node policy: a ConfigMap caps file with the budget, mounted read-only, --caps-file", async () => {
  for (
    const [shape, caps] of [
      ["node-policy", { version: 1, budget: { watts: 4000 } }],
      ["everything-set", { version: 1, default: { watts: 600 } }],
    ] as const
  ) {
    const objects = await render(shape);
    const { spec, agent, args } = agentOf(objects);
    equal(argValue(args, "--caps-file"), CONTAINER_LAYOUT.nodePolicyFile);
    const configMap = only(objects, "ConfigMap");
    deepStrictEqual(parse(configMap.data["caps.yaml"]), caps, shape);
    const mount = agent.volumeMounts.find((m: Obj) =>
      m.mountPath === CONTAINER_LAYOUT.nodePolicyDir
    );
    equal(mount.readOnly, true);
    equal(
      spec.volumes.find((v: Obj) => v.name === mount.name).configMap.name,
      configMap.metadata.name,
    );
    ok(
      agent.command.some((a: string) =>
        a.startsWith("--allow-read=") && a.split(/[=,]/).includes(CONTAINER_LAYOUT.nodePolicyDir)
      ),
      "the agent may read the policy directory",
    );
  }
  const { agent, args } = agentOf(await render("default"));
  equal(argValue(args, "--caps-file"), undefined);
  ok(!agent.command.join(" ").includes(CONTAINER_LAYOUT.nodePolicyDir));
  ok(!(await render("default")).some((o) => o.kind === "ConfigMap"));
});

Deno.test("image: repository:tag (appVersion by default) or repository@digest", async () => {
  const chart = parse(await Deno.readTextFile(`${CHART_DIR}/Chart.yaml`));
  equal(agentOf(await render("default")).agent.image, `gpu-power-agent:${chart.appVersion}`);
  equal(
    agentOf(await render("everything-set")).agent.image,
    `registry.example/gpu-power-agent@${DIGEST}`,
  );
  const { args } = agentOf(await render("everything-set"));
  deepStrictEqual(args.slice(-2), ["--interval", "15"], "extraArgs come last");
  equal(argValue(args, "--allowed-namespaces"), "team-a,team-b");
  equal(argValue(args, "--min-watts"), "150");
  equal(argValue(args, "--max-watts"), "650");
  equal(argValue(args, "--enforce-grace"), "30");
  equal(argValue(agentOf(await render("default")).args, "--enforce-grace"), undefined);
});

/** Values the chart must refuse, and the message that says why. */
const REFUSED: Array<[string, Values, RegExp]> = [
  ["tag latest", { image: { tag: "latest" } }, /image\.tag "latest" is refused: pin a version/],
  ["tag LaTeSt", { image: { tag: "LaTeSt" } }, /image\.tag "LaTeSt" is refused/],
  [
    "tag and digest",
    { image: { tag: "0.1.0", digest: DIGEST } },
    /set image\.tag .* or image\.digest .*, not both/,
  ],
  [
    "short digest",
    { image: { digest: "sha256:abc" } },
    /image\.digest "sha256:abc" must be sha256: followed by 64 lowercase hex/,
  ],
  [
    "digest without algorithm",
    { image: { digest: "0123456789abcdef".repeat(4) } },
    /image\.digest .* must be sha256:/,
  ],
  [
    "uppercase digest",
    { image: { digest: DIGEST.toUpperCase().replace("SHA256", "sha256") } },
    /must be sha256: followed by 64 lowercase hex/,
  ],
  [
    "missing safeDefaultWatts",
    { safeDefaultWatts: undefined },
    /missing property 'safeDefaultWatts'/,
  ],
  ["null safeDefaultWatts", { safeDefaultWatts: null }, /safeDefaultWatts/],
  [
    "zero safeDefaultWatts",
    { safeDefaultWatts: 0 },
    /safeDefaultWatts must be a positive number of watts, got 0/,
  ],
  [
    "grace 30",
    { terminationGracePeriodSeconds: 30 },
    /terminationGracePeriodSeconds must be at least 60 .*got 30/,
  ],
  [
    "restricted without namespace",
    { rbac: { namespaceRestricted: true } },
    /rbac\.namespaceRestricted needs rbac\.namespace/,
  ],
  [
    "namespace without restricted",
    { rbac: { namespaceRestricted: false, namespace: "x" } },
    /rbac\.namespace "x" is set but rbac\.namespaceRestricted is false/,
  ],
  ["allowed namespaces miss the watched one", {
    rbac: { namespaceRestricted: true, namespace: "a" },
    allowedNamespaces: ["b"],
  }, /allowedNamespaces \[b\] leaves out rbac\.namespace "a"/],
  ["min above max", { minWatts: 600, maxWatts: 300 }, /minWatts \(600\) is above maxWatts \(300\)/],
  ["negative minWatts", { minWatts: -1 }, /minWatts must be a positive number of watts, got -1/],
  [
    "unknown mapping mode",
    { podGpuMapping: "cgroups" },
    /podGpuMapping.*(value must be one of|enum)/s,
  ],
  [
    "node policy empty",
    { nodePolicy: { enabled: true } },
    /nodePolicy\.enabled needs nodePolicy\.budgetWatts or nodePolicy\.caps/,
  ],
  [
    "budget twice",
    { nodePolicy: { enabled: true, budgetWatts: 100, caps: { budget: { watts: 200 } } } },
    /nodePolicy: set the budget with nodePolicy\.budgetWatts or nodePolicy\.caps\.budget, not both/,
  ],
  [
    "budget while disabled",
    { nodePolicy: { enabled: false, budgetWatts: 100 } },
    /nodePolicy\.budgetWatts\/nodePolicy\.caps are set but nodePolicy\.enabled is false/,
  ],
  [
    "zero budget",
    { nodePolicy: { enabled: true, budgetWatts: 0 } },
    /nodePolicy\.budgetWatts must be a positive number of watts, got 0/,
  ],
  [
    "negative enforce grace",
    { enforceGraceSeconds: -5 },
    /enforceGraceSeconds must be 0 or more seconds, got -5/,
  ],
  ["port out of range", { metrics: { port: 70000 } }, /metrics\.port must be 1–65535, got 70000/],
  ["two monitors", {
    metrics: { podMonitor: { enabled: true }, serviceMonitor: { enabled: true } },
  }, /both true: enable one, or every series is scraped twice/],
  [
    "extraArgs --namespace",
    { extraArgs: ["--namespace=x"] },
    /extraArgs: --namespace is set by the chart's values/,
  ],
  [
    "extraArgs --source",
    { extraArgs: ["--source", "file"] },
    /extraArgs: --source is set by the chart's values/,
  ],
  [
    "string watts",
    { safeDefaultWatts: "500" },
    /safeDefaultWatts.*(got string, want number|expected number)/s,
  ],
  [
    "typo in a value",
    { safeDefaultWats: 500 },
    /additional properties? 'safeDefaultWats' not allowed|safeDefaultWats/,
  ],
];

for (const [name, values, message] of REFUSED) {
  Deno.test(`helm template refuses ${name}`, async () => {
    const { code, stdout, stderr } = await template(values);
    notEqual(code, 0, `${name}: rendered:\n${stdout.slice(0, 400)}`);
    match(stderr, message);
  });
}

Deno.test("NOTES.txt tells the operator how to check the agent on a node", async () => {
  const file = await valuesFile({});
  try {
    const { code, stdout, stderr } = await helm([
      "install",
      RELEASE,
      CHART_DIR,
      "--dry-run=client",
      "--namespace",
      NAMESPACE,
      "-f",
      file,
    ]);
    equal(code, 0, stderr);
    const notes = stdout.slice(stdout.indexOf("NOTES:"));
    match(notes, /kubectl -n gpu-power-agent logs \$POD/);
    match(notes, /port-forward \$POD 9402:metrics/);
    match(notes, /curl -s localhost:9402\/readyz/);
    match(notes, /exec \$POD -- deno run .* \/app\/main\.ts status/s);
    match(notes, /pod-security\.kubernetes\.io\/enforce=privileged/);
  } finally {
    await Deno.remove(file);
  }
});
