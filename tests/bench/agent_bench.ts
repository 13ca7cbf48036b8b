/**
 * `deno task bench`: the running agent, spawned as a user would (`deno task agent run`), with the
 * fake libnvidia-ml.so.1 (8 GPUs) and metrics on, in file mode and Kubernetes mode (in-test API
 * server, fake proc root):
 * - startup: spawn → every GPU at its cap;
 * - reaction: desired change (caps-file write / pod annotation) → limit set (fake NVML log
 *   timestamps), p50/p99, and the agent's utime+stime over those changes ÷ the GPU limit changes
 *   they caused (an edit of the caps file's default changes all 8 GPUs, an annotation one):
 *   `--changes` (default 200) timed one after the other, after `--warmup-changes` (default 20)
 *   untimed ones, so that the figures are the agent's steady cost, not its first run of each
 *   code path (V8 compiles every function on its first call);
 * - sustained load: file mode 2 caps edits/s, Kubernetes mode ≥ 20 pod events/s (annotation
 *   changes on the GPU pods and pods coming and going on the node) for `--sustain-seconds`
 *   (default 600); VmHWM at the end, VmRSS `--after-seconds` (default 60) after the load stops;
 * - Kubernetes: LIST and WATCH requests over the whole run; first change after the API server
 *   returns (`tests/bench/api_recovery.ts`, when present).
 * First (unless `--quick` or `--no-reconcile`) `deno bench` of tests/bench/ (steady reconcile
 * pass), tests/bench/pod_resources_bench.ts and tests/bench/pod_resources_latency.ts.
 *
 * The agent measured is what ships: the bundle (`deno task bundle`, built into a temporary
 * directory and run through `GPU_POWER_AGENT_BUNDLE`, which every agent this process starts
 * inherits); `--sources` measures `main.ts` from the sources instead.
 *
 * Prints a Markdown table (stdout), or with `--json` ONE JSON object on stdout (everything else
 * on stderr). `--quick` is the smoke configuration CI runs (seconds; figures meaningless).
 * Asserts nothing about time.
 *
 *   deno task bench [--json] [--quick] [--sustain-seconds N] [--after-seconds N]
 *     [--changes N] [--warmup-changes N]
 *     [--mode file|kubernetes]... [--agent-env NAME=VALUE]... [--no-reconcile] [--from-json FILE]
 *     [--sources]
 *
 * `--agent-env` sets a variable for the agent only (measuring levers, e.g.
 * `DENO_V8_FLAGS=--max-semi-space-size=1` or `MALLOC_ARENA_MAX=2`); `--from-json` prints the
 * table of a saved `--json` report.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import {
  createFakeNvmlDir,
  type FakeNvmlDir,
  type FakeState,
  makeFakeState,
} from "../helpers/fake_state.ts";
import {
  type AgentProcess,
  descendants,
  kubernetesRunArgs,
  REPO_ROOT,
  spawnAgent,
  waitFor,
} from "../helpers/agent_process.ts";
import { type FakeApiServer, startFakeApiServer } from "../helpers/k8s_api_server.ts";
import { agentBundle } from "../helpers/agent_bundle.ts";
import { BUNDLE_ENV } from "../../src/permissions/launch.ts";

/** One mode's figures (null where a figure does not apply or was not measured). */
export interface BenchResult {
  mode: "file" | "kubernetes";
  reaction_ms_p50: number | null;
  reaction_ms_p99: number | null;
  vmrss_mib_start: number | null;
  vmhwm_mib_sustained: number | null;
  vmrss_mib_after_load: number | null;
  cpu_ms_per_change: number | null;
  list_requests: number | null;
  watch_requests: number | null;
  startup_ms: number | null;
  api_recovery_ms_p99: number | null;
}

/** What `--json` prints. */
export interface BenchReport {
  date: string;
  machine: string;
  deno: string;
  /** What ran: the bundle (as shipped) or the sources (`--sources`). */
  agent?: "bundle" | "sources";
  results: BenchResult[];
}

/** The keys of every {@linkcode BenchResult}, in print order. */
export const RESULT_KEYS: readonly (keyof BenchResult)[] = [
  "mode",
  "reaction_ms_p50",
  "reaction_ms_p99",
  "vmrss_mib_start",
  "vmhwm_mib_sustained",
  "vmrss_mib_after_load",
  "cpu_ms_per_change",
  "list_requests",
  "watch_requests",
  "startup_ms",
  "api_recovery_ms_p99",
];

/** How a run is configured. */
export interface BenchOptions {
  modes: ReadonlyArray<BenchResult["mode"]>;
  /** Desired changes timed one by one (latency, CPU per change). */
  changes: number;
  /** Changes made first, untimed (the agent's first run of each code path). */
  warmupChanges: number;
  /** Length of the sustained load. */
  sustainSeconds: number;
  /** Wait after the load before VmRSS is read. */
  afterSeconds: number;
  /** Caps-file edits per second under sustained load (file mode). */
  fileEditsPerSecond: number;
  /** Pod events per second under sustained load (Kubernetes mode). */
  podEventsPerSecond: number;
  /** Variables for the agent only. */
  agentEnv: Record<string, string>;
  /** Smoke configuration (passed on to the API-recovery measurement). */
  quick: boolean;
  /** Run the agent from its sources instead of the bundle. */
  sources?: boolean;
  /** Progress lines (stderr). */
  log: (line: string) => void;
}

const GPUS = 8;
const ANNOTATION = "dynamo.nvidia.com/gpu-power-limit";

/** `key` (a kB line) of /proc/<pid>/status in MiB, to 0.1. */
export function procStatus(pid: number, key: string): number {
  const m = Deno.readTextFileSync(`/proc/${pid}/status`).match(
    new RegExp(`^${key}:\\s+(\\d+) kB`, "m"),
  );
  if (!m) throw new Error(`/proc/${pid}/status has no ${key}`);
  return Math.round(Number(m[1]) / 1024 * 10) / 10;
}

/** utime + stime of `pid` in milliseconds (clock ticks of 10 ms). */
function cpuMs(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}

/** The p-th percentile of `values` (nearest rank). */
export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const round1 = (n: number) => Math.round(n * 10) / 10;

/** Calls `tick(n)` for every event due at `perSecond` until `seconds` have passed. */
async function paced(
  seconds: number,
  perSecond: number,
  tick: (n: number) => void,
): Promise<number> {
  const start = performance.now();
  let done = 0;
  while (performance.now() - start < seconds * 1000) {
    const due = Math.floor((performance.now() - start) / 1000 * perSecond);
    while (done < due) tick(done++);
    await sleep(Math.max(5, Math.min(50, 1000 / perSecond / 2)));
  }
  return done;
}

/** The agent process itself: the deepest descendant of `deno task agent`. */
function agentPid(agent: AgentProcess): number {
  const pid = descendants(agent.child.pid).at(-1);
  if (pid === undefined) throw new Error(`agent not running; output:\n${agent.output()}`);
  return pid;
}

interface Measured {
  startupMs: number;
  rssStart: number;
  reactions: number[];
  cpuPerChange: number;
  hwm: number;
  rssAfter: number;
}

/**
 * What both modes share: wait for the initial caps, make `warmupChanges` changes, time `changes`
 * changes, run the load, wait, read memory. `change(i)` makes one desired change and returns how many set-log lines it
 * produces; `load(n)` makes the n-th sustained-load event.
 */
async function measure(
  agent: AgentProcess,
  fake: FakeNvmlDir,
  spawnedAt: number,
  options: BenchOptions & {
    perSecond: number;
    change: (i: number) => number;
    load: (n: number) => void;
  },
): Promise<Measured> {
  const setLines = () => fake.readLog();
  await waitFor(() => setLines().length >= GPUS, "initial caps", 60_000);
  const startupMs = Date.now() - spawnedAt;
  const pid = agentPid(agent);
  await sleep(options.quick ? 500 : 3000);
  const rssStart = procStatus(pid, "VmRSS");

  const reactions: number[] = [];
  let cpu0 = 0;
  let sets0 = 0;
  for (let i = 1; i <= options.warmupChanges + options.changes; i++) {
    // The first changes run code for the first time (V8 compiles lazily): not timed.
    if (i === options.warmupChanges + 1) {
      cpu0 = cpuMs(pid);
      sets0 = setLines().length;
    }
    const before = setLines().length;
    const t0 = Date.now();
    const lines = options.change(i);
    await waitFor(() => setLines().length >= before + lines, `change ${i}`, 10_000);
    const stamps = setLines().slice(before).map((l) => Number(l.split(" ")[0]));
    if (i > options.warmupChanges) reactions.push(Math.max(...stamps) - t0);
    await sleep(20);
  }
  // Per GPU limit change (a caps-file edit changes all 8 GPUs, an annotation one).
  const cpuPerChange = (cpuMs(pid) - cpu0) / (setLines().length - sets0);

  options.log(`sustained load: ${options.perSecond}/s for ${options.sustainSeconds} s`);
  const events = await paced(options.sustainSeconds, options.perSecond, options.load);
  await sleep(500);
  const hwm = procStatus(pid, "VmHWM");
  options.log(`${events} events; VmHWM ${hwm} MiB; waiting ${options.afterSeconds} s`);
  await sleep(options.afterSeconds * 1000);
  const rssAfter = procStatus(pid, "VmRSS");
  return { startupMs, rssStart, reactions, cpuPerChange, hwm, rssAfter };
}

/** A mode's result from what {@linkcode measure} found and the mode's own figures. */
function result(
  mode: BenchResult["mode"],
  m: Measured,
  own: Pick<BenchResult, "list_requests" | "watch_requests" | "api_recovery_ms_p99">,
): BenchResult {
  return {
    mode,
    reaction_ms_p50: percentile(m.reactions, 50),
    reaction_ms_p99: percentile(m.reactions, 99),
    vmrss_mib_start: m.rssStart,
    vmhwm_mib_sustained: m.hwm,
    vmrss_mib_after_load: m.rssAfter,
    cpu_ms_per_change: round1(m.cpuPerChange),
    list_requests: own.list_requests,
    watch_requests: own.watch_requests,
    startup_ms: m.startupMs,
    api_recovery_ms_p99: own.api_recovery_ms_p99,
  };
}

function metricsAddress(): string {
  return `127.0.0.1:${19000 + Math.floor(Math.random() * 1000)}`;
}

/** `deno task agent <args>` on the fake library, metrics on, warnings only, `--agent-env` set. */
function spawnBenchAgent(
  args: readonly string[],
  context: { lib: string; fake: FakeNvmlDir; options: BenchOptions },
): AgentProcess {
  const { lib, fake, options } = context;
  return spawnAgent([
    ...args,
    "--nvml-library",
    lib,
    "--state-dir",
    `${fake.dir}/state`,
    "--metrics-address",
    metricsAddress(),
    "--log-level",
    "warning",
  ], { env: { ...fake.env, ...options.agentEnv } });
}

async function fileMode(options: BenchOptions): Promise<BenchResult> {
  const lib = await buildFakeNvml();
  const fake = createFakeNvmlDir(makeFakeState(GPUS));
  const caps = `${fake.dir}/caps.yaml`;
  const write = (watts: number) =>
    Deno.writeTextFileSync(caps, `version: 1\ndefault: {watts: ${watts}}\n`);
  write(300);
  const spawnedAt = Date.now();
  const agent = spawnBenchAgent(["run", "--caps-file", caps], { lib, fake, options });
  try {
    const m = await measure(agent, fake, spawnedAt, {
      ...options,
      perSecond: options.fileEditsPerSecond,
      change: (i) => {
        write(300 + (i % 2 === 0 ? 0 : 50) + (i % 7));
        return GPUS;
      },
      load: (n) => write(200 + (n % 200)),
    });
    return result("file", m, {
      list_requests: null,
      watch_requests: null,
      api_recovery_ms_p99: null,
    });
  } finally {
    agent.kill("SIGTERM");
    await agent.status();
    fake.cleanup();
  }
}

/** Sustained Kubernetes load: every 10th event an annotation change, else pods come and go. */
function podChurn(api: FakeApiServer): (n: number) => void {
  const live: string[] = [];
  let next = 0;
  return (n) => {
    if (n % 10 === 0) {
      const gpu = (n / 10) % GPUS;
      api.setAnnotation("bench", `pod-${gpu}`, ANNOTATION, String(250 + (n % 150)));
    } else if (n % 3 === 0 || live.length >= 30) {
      const name = live.shift();
      if (name) api.deletePod("churn", name);
    } else if (n % 3 === 1 || live.length === 0) {
      const name = `churn-${next++}`;
      api.addPod({
        name,
        namespace: "churn",
        phase: "Pending",
        annotations: { "example.com/owner": `team-${n % 17}` },
      });
      live.push(name);
    } else {
      api.setPhase("churn", live[live.length - 1], "Running");
    }
  };
}

/** A bench node: fake GPUs, each with a process of an annotated pod (300 W) in the in-test API. */
export async function kubernetesBenchNode(
  options: { limits?: Record<string, string> } = {},
): Promise<{ fake: FakeNvmlDir; api: FakeApiServer; kubeconfig: string; state: FakeState }> {
  const state = makeFakeState(GPUS);
  for (let i = 0; i < GPUS; i++) {
    state.gpus[i].processes = [{ pid: 5000 + i, usedGpuMemory: 1 << 30 }];
  }
  const fake = createFakeNvmlDir(state);
  const api = await startFakeApiServer({ defaultNodeName: "bench-node" });
  for (let i = 0; i < GPUS; i++) {
    const pid = 5000 + i;
    const uid = `00000000-0000-0000-0000-${String(i).padStart(12, "0")}`;
    Deno.mkdirSync(`${fake.dir}/proc/${pid}`, { recursive: true });
    Deno.writeTextFileSync(
      `${fake.dir}/proc/${pid}/cgroup`,
      `0::/kubepods/burstable/pod${uid}/c${i}\n`,
    );
    // As in a real /proc: the agent keys its PID → pod cache by the start time (field 22).
    Deno.writeTextFileSync(
      `${fake.dir}/proc/${pid}/stat`,
      `${pid} (python3) S 1 ${pid} ${pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 ${1000 + i} 0 0\n`,
    );
    api.addPod({
      name: `pod-${i}`,
      namespace: "bench",
      uid,
      annotations: { [ANNOTATION]: "300" },
      limits: options.limits,
    });
  }
  return { fake, api, kubeconfig: await api.writeKubeconfig(fake.dir), state };
}

/** The agent in Kubernetes mode on a bench node (warnings only; no Events unless `events`). */
export async function spawnKubernetesBenchAgent(options: {
  fake: FakeNvmlDir;
  kubeconfig: string;
  mapping?: "processes" | "auto" | "pod-resources";
  socket?: string;
  events?: boolean;
  env?: Record<string, string>;
}): Promise<AgentProcess> {
  return spawnAgent([
    ...kubernetesRunArgs({
      kubeconfig: options.kubeconfig,
      nodeName: "bench-node",
      procRoot: `${options.fake.dir}/proc`,
      podGpuMapping: options.mapping,
      podResourcesSocket: options.socket,
      nvmlLibrary: await buildFakeNvml(),
      stateDir: `${options.fake.dir}/state`,
      metricsAddress: metricsAddress(),
    }),
    ...(options.events ? [] : ["--no-events"]),
    "--log-level",
    "warning",
  ], { env: { ...options.fake.env, ...options.env } });
}

async function kubernetesMode(options: BenchOptions): Promise<BenchResult> {
  const { fake, api, kubeconfig } = await kubernetesBenchNode();
  const spawnedAt = Date.now();
  const agent = await spawnKubernetesBenchAgent({
    fake,
    kubeconfig,
    events: true,
    env: options.agentEnv,
  });
  try {
    const m = await measure(agent, fake, spawnedAt, {
      ...options,
      perSecond: options.podEventsPerSecond,
      change: (i) => {
        api.setAnnotation("bench", `pod-${i % GPUS}`, ANNOTATION, String(300 + (i % 2) * 25 + i));
        return 1;
      },
      load: podChurn(api),
    });
    return result("kubernetes", m, {
      list_requests: api.counters.lists,
      watch_requests: api.counters.watches,
      api_recovery_ms_p99: await apiRecoveryP99(options),
    });
  } finally {
    agent.kill("SIGTERM");
    await agent.status();
    await api.close();
    fake.cleanup();
  }
}

/** p99 of `measureApiRecovery` from `./api_recovery.ts`, or null while that module is absent. */
async function apiRecoveryP99(options: BenchOptions): Promise<number | null> {
  const url = new URL("./api_recovery.ts", import.meta.url);
  try {
    Deno.statSync(url);
  } catch {
    options.log("api_recovery: tests/bench/api_recovery.ts not present, figure is null");
    return null;
  }
  const module = await import(url.href);
  // --quick: two short outages (a smoke run); else the module's defaults (6 outages of 8 s).
  const result = await module.measureApiRecovery(
    options.quick ? { rounds: 2, downMs: 2000, upMs: 500 } : {},
  );
  return typeof result?.p99Ms === "number" ? result.p99Ms : null;
}

function machine(): string {
  const cpu = Deno.readTextFileSync("/proc/cpuinfo").match(/^model name\s*:\s*(.+)$/m)?.[1] ??
    "unknown CPU";
  const memGiB = Math.round(Deno.systemMemoryInfo().total / 2 ** 30);
  return `${cpu.trim()}, ${navigator.hardwareConcurrency} cores, ${memGiB} GiB, ${Deno.build.os}`;
}

/** Run the benchmark of each mode in `options.modes`. */
export async function runBench(options: BenchOptions): Promise<BenchReport> {
  if (!options.sources && !Deno.env.get(BUNDLE_ENV)) {
    const { dir } = await agentBundle();
    options.log(`agent: the bundle in ${dir}`);
    // Inherited by every agent this process starts (the API-recovery and PodResources ones too).
    Deno.env.set(BUNDLE_ENV, dir);
  }
  const results: BenchResult[] = [];
  for (const mode of options.modes) {
    options.log(`== ${mode} mode`);
    results.push(mode === "file" ? await fileMode(options) : await kubernetesMode(options));
  }
  return {
    date: new Date().toISOString(),
    machine: machine(),
    deno: Deno.version.deno,
    agent: Deno.env.get(BUNDLE_ENV) ? "bundle" : "sources",
    results,
  };
}

/** The report as a Markdown table, one column per mode. */
export function benchTable(report: BenchReport): string {
  const rows: Array<[keyof BenchResult, string]> = [
    ["reaction_ms_p50", "desired change → GPU, p50 (ms)"],
    ["reaction_ms_p99", "desired change → GPU, p99 (ms)"],
    ["vmrss_mib_start", "VmRSS at start (MiB)"],
    ["vmhwm_mib_sustained", "VmHWM after sustained load (MiB)"],
    ["vmrss_mib_after_load", "VmRSS after the load stopped (MiB)"],
    ["cpu_ms_per_change", "CPU per change (ms)"],
    ["list_requests", "LIST requests"],
    ["watch_requests", "WATCH requests"],
    ["startup_ms", "start → every GPU capped (ms)"],
    ["api_recovery_ms_p99", "API server back → first change, p99 (ms)"],
  ];
  const modes = report.results.map((r) => r.mode);
  const lines = [
    `| | ${modes.join(" | ")} |`,
    `|---|${modes.map(() => "---").join("|")}|`,
    ...rows.map(([key, label]) =>
      `| ${label} | ${report.results.map((r) => r[key] ?? "–").join(" | ")} |`
    ),
  ];
  const agent = report.agent ? `, agent from the ${report.agent}` : "";
  return `${lines.join("\n")}\n\n${report.date}, Deno ${report.deno}, ${report.machine}${agent}`;
}

/**
 * The other benchmarks: `deno bench` of tests/bench/ (steady reconcile pass) and the PodResources
 * client's; their output goes to stdout, or to stderr with `--json`.
 */
async function otherBenches(toStderr: boolean): Promise<void> {
  for (
    const args of [
      ["bench", "-A", `${REPO_ROOT}/tests/bench/`],
      ["run", "-A", `${REPO_ROOT}/tests/bench/pod_resources_bench.ts`],
      ["run", "-A", `${REPO_ROOT}/tests/bench/pod_resources_latency.ts`],
    ]
  ) {
    const out = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: REPO_ROOT,
      stdout: toStderr ? "piped" : "inherit",
      stderr: "inherit",
    }).output();
    if (toStderr) await Deno.stderr.write(out.stdout);
    if (!out.success) throw new Error(`deno ${args.join(" ")} failed`);
  }
}

function positive(value: string | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} must be a number ≥ 0`);
  return n;
}

/** Parse the command line; exported for the smoke test. */
export function benchOptions(args: readonly string[]): BenchOptions & {
  json: boolean;
  fromJson?: string;
  reconcile: boolean;
} {
  const { values } = parseArgs({
    args: [...args],
    options: {
      json: { type: "boolean", default: false },
      quick: { type: "boolean", default: false },
      "sustain-seconds": { type: "string" },
      "after-seconds": { type: "string" },
      changes: { type: "string" },
      "warmup-changes": { type: "string" },
      mode: { type: "string", multiple: true },
      "agent-env": { type: "string", multiple: true },
      "from-json": { type: "string" },
      reconcile: { type: "boolean", default: true },
      sources: { type: "boolean", default: false },
    },
    allowNegative: true,
    strict: true,
  });
  const quick = values.quick;
  const modes = (values.mode ?? ["file", "kubernetes"]).map((m) => {
    if (m !== "file" && m !== "kubernetes") throw new Error(`--mode: file or kubernetes, not ${m}`);
    return m as BenchResult["mode"];
  });
  const agentEnv: Record<string, string> = {};
  for (const pair of values["agent-env"] ?? []) {
    const eq = pair.indexOf("=");
    if (eq < 1) throw new Error(`--agent-env NAME=VALUE, not ${pair}`);
    agentEnv[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const env = Deno.env.get("BENCH_SUSTAIN_SECONDS");
  return {
    json: values.json,
    quick,
    sources: values.sources,
    fromJson: values["from-json"],
    reconcile: values.reconcile && !quick,
    modes,
    changes: positive(values.changes, quick ? 4 : 200, "changes"),
    warmupChanges: positive(values["warmup-changes"], quick ? 1 : 20, "warmup-changes"),
    sustainSeconds: positive(values["sustain-seconds"] ?? env, quick ? 2 : 600, "sustain-seconds"),
    afterSeconds: positive(values["after-seconds"], quick ? 1 : 60, "after-seconds"),
    fileEditsPerSecond: 2,
    // 20k pod events in 10 minutes.
    podEventsPerSecond: 34,
    agentEnv,
    log: (line) => console.error(line),
  };
}

if (import.meta.main) {
  const options = benchOptions(Deno.args);
  let report: BenchReport;
  if (options.fromJson) {
    report = JSON.parse(await Deno.readTextFile(options.fromJson));
  } else {
    if (options.reconcile) await otherBenches(options.json);
    report = await runBench(options);
  }
  console.log(options.json ? JSON.stringify(report) : benchTable(report));
}
