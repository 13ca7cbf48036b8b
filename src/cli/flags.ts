/**
 * The one table of command-line flags. The parser, `--help`, the environment-variable names, the
 * `deno task agent` launcher and the permission sets are all derived from it.
 */
import { parseArgs } from "node:util";
import { DEFAULT_POD_RESOURCES_SOCKET } from "../sources/pod_resources.ts";
import {
  DEFAULT_GPU_RESOURCE_NAMES,
  parseGpuResourceNames,
} from "../sources/pod_resources_devices.ts";

/** Subcommands of the agent. */
export type Command = "run" | "status" | "check" | "restore";

/** All subcommands, in help order. */
export const COMMANDS: readonly Command[] = ["run", "status", "check", "restore"];

/** One flag: its name, type, default, environment variables and the commands that accept it. */
export interface FlagSpec {
  /** Long name without dashes, e.g. `caps-file`. */
  name: string;
  type: "string" | "boolean" | "number";
  /** Placeholder in help, e.g. `PATH`. */
  arg?: string;
  help: string;
  /** Default value (already typed). */
  default?: string | number | boolean;
  /** Allowed values for enumerations. */
  choices?: readonly string[];
  /** Commands that accept the flag; undefined = every command. */
  commands?: readonly Command[];
  /** Environment variables read when the flag is absent, first found wins. */
  env: readonly string[];
  /** Extra check of a string value; throws an `Error` whose message says what is wrong. */
  validate?: (value: string) => void;
}

const KUBE: readonly Command[] = ["run"];

function flag(spec: Omit<FlagSpec, "env"> & { extraEnv?: string[] }): FlagSpec {
  const { extraEnv = [], ...rest } = spec;
  return { ...rest, env: [envNameFor(spec.name), ...extraEnv] };
}

/** `caps-file` → `GPU_POWER_AGENT_CAPS_FILE`. */
export function envNameFor(flagName: string): string {
  return `GPU_POWER_AGENT_${flagName.toUpperCase().replaceAll("-", "_")}`;
}

/** Every flag the agent understands. */
export const FLAGS: readonly FlagSpec[] = [
  flag({
    name: "nvml-library",
    type: "string",
    arg: "PATH",
    help: "Absolute path of libnvidia-ml.so.1 (default: searched in the driver directories)",
    extraEnv: ["NVML_LIBRARY_PATH"],
  }),
  flag({
    name: "state-dir",
    type: "string",
    arg: "DIR",
    default: "/var/lib/gpu-power-agent",
    help: "Directory of the journal of baselines and applied caps",
  }),
  flag({
    name: "log-level",
    type: "string",
    arg: "LEVEL",
    default: "info",
    choices: ["debug", "info", "warning", "error"],
    help: "Minimum log level",
  }),
  flag({
    name: "log-format",
    type: "string",
    arg: "FORMAT",
    default: "text",
    choices: ["text", "json"],
    help: "text (human, journald) or json (one object per line)",
  }),
  flag({
    name: "source",
    type: "string",
    arg: "SOURCE",
    choices: ["file", "kubernetes"],
    commands: ["run"],
    help: "Where desired caps come from (default: file when --caps-file is given)",
  }),
  flag({
    name: "caps-file",
    type: "string",
    arg: "PATH",
    commands: ["run", "check", "status"],
    help: "JSON or YAML caps file (file mode; with --source kubernetes: the node policy and " +
      "budget; status: show how its budget is allocated)",
  }),
  flag({
    name: "interval",
    type: "number",
    arg: "SECONDS",
    default: 30,
    commands: ["run"],
    help: "Reconcile at least this often to correct drift",
  }),
  flag({
    name: "once",
    type: "boolean",
    default: false,
    commands: ["run"],
    help: "Reconcile once and exit, leaving the caps applied",
  }),
  flag({
    name: "dry-run",
    type: "boolean",
    default: false,
    commands: ["run"],
    help: "Print the plan (as `check` does); never touch a GPU, the journal or post an Event",
  }),
  flag({
    name: "restore-to",
    type: "string",
    arg: "TARGET",
    default: "baseline",
    choices: ["baseline", "default"],
    commands: ["run", "restore"],
    help: "Restore to the limit recorded before the agent changed it, or to the vendor default",
  }),
  flag({
    name: "metrics-address",
    type: "string",
    arg: "HOST:PORT",
    default: "127.0.0.1:9402",
    commands: ["run"],
    help: "Listen address of /metrics, /healthz, /readyz, or 'off'",
  }),
  flag({
    name: "stale-after",
    type: "number",
    arg: "SECONDS",
    default: 60,
    commands: ["run"],
    help: "Readiness fails when the caps source has not synced for this long",
  }),
  flag({
    name: "enforce-grace",
    type: "number",
    arg: "SECONDS",
    default: 60,
    commands: ["run"],
    help: "Readiness fails when a wanted power limit has not been in place for this long",
  }),
  flag({
    name: "kubeconfig",
    type: "string",
    arg: "PATH",
    commands: KUBE,
    extraEnv: ["KUBECONFIG"],
    help: "kubeconfig (default: in-cluster service account)",
  }),
  flag({
    name: "node-name",
    type: "string",
    arg: "NAME",
    commands: KUBE,
    extraEnv: ["NODE_NAME"],
    help: "This node's name (required in kubernetes mode)",
  }),
  flag({
    name: "namespace",
    type: "string",
    arg: "NS",
    commands: KUBE,
    help: "Watch pods in this namespace only (namespace-scoped RBAC)",
  }),
  flag({
    name: "annotation",
    type: "string",
    arg: "KEY",
    default: "dynamo.nvidia.com/gpu-power-limit",
    commands: KUBE,
    help: "Pod annotation holding the cap in watts",
  }),
  flag({
    name: "safe-default-watts",
    type: "number",
    arg: "WATTS",
    commands: KUBE,
    help: "Cap for GPUs whose pods disagree or ask invalidly (required in kubernetes mode)",
  }),
  flag({
    name: "allowed-namespaces",
    type: "string",
    arg: "A,B",
    commands: KUBE,
    help: "Only honour annotations of pods in these namespaces",
  }),
  flag({
    name: "min-watts",
    type: "number",
    arg: "WATTS",
    commands: KUBE,
    help: "Floor applied to pod requests before the device clamp",
  }),
  flag({
    name: "max-watts",
    type: "number",
    arg: "WATTS",
    commands: KUBE,
    help: "Ceiling applied to pod requests before the device clamp",
  }),
  flag({
    name: "events",
    type: "boolean",
    default: true,
    commands: KUBE,
    help: "Emit Kubernetes Events on pods (--no-events to disable)",
  }),
  flag({
    name: "node-budget-annotation",
    type: "boolean",
    default: true,
    commands: KUBE,
    help: "Follow this node's gpu-power-agent.io/power-budget-watts annotation (needs get/list/" +
      "watch on nodes; --no-node-budget-annotation to disable)",
  }),
  flag({
    name: "proc-root",
    type: "string",
    arg: "DIR",
    default: "/proc",
    commands: KUBE,
    help: "Where the host's /proc is mounted (maps GPU processes to pods)",
  }),
  flag({
    name: "pod-gpu-mapping",
    type: "string",
    arg: "MAPPING",
    default: "auto",
    choices: ["auto", "pod-resources", "processes"],
    commands: KUBE,
    help: "How pods map to GPUs: kubelet allocations, GPU processes, or both when the socket " +
      "is readable (auto)",
  }),
  flag({
    name: "pod-resources-socket",
    type: "string",
    arg: "PATH",
    default: DEFAULT_POD_RESOURCES_SOCKET,
    commands: KUBE,
    help: "The kubelet's PodResources socket (pod-resources and auto mapping)",
    validate: (value) => {
      if (!value.startsWith("/")) throw new Error(`expected an absolute path, got "${value}"`);
    },
  }),
  flag({
    name: "gpu-resource-names",
    type: "string",
    arg: "A,B",
    default: DEFAULT_GPU_RESOURCE_NAMES.join(","),
    commands: KUBE,
    help: "Resources whose allocated devices are GPUs (a trailing * matches any suffix)",
    validate: (value) => void parseGpuResourceNames(value),
  }),
  flag({
    name: "json",
    type: "boolean",
    default: false,
    commands: ["status"],
    help: "Print JSON",
  }),
];

/** Parsed, typed, defaulted options; keys are the camelCase flag names. */
export interface AgentOptions {
  nvmlLibrary?: string;
  stateDir: string;
  logLevel: "debug" | "info" | "warning" | "error";
  logFormat: "text" | "json";
  source?: "file" | "kubernetes";
  capsFile?: string;
  interval: number;
  once: boolean;
  dryRun: boolean;
  restoreTo: "baseline" | "default";
  metricsAddress: string;
  staleAfter: number;
  enforceGrace: number;
  kubeconfig?: string;
  nodeName?: string;
  namespace?: string;
  annotation: string;
  safeDefaultWatts?: number;
  allowedNamespaces?: string;
  minWatts?: number;
  maxWatts?: number;
  events: boolean;
  nodeBudgetAnnotation: boolean;
  procRoot: string;
  podGpuMapping: "auto" | "pod-resources" | "processes";
  podResourcesSocket: string;
  gpuResourceNames: string;
  json: boolean;
}

/** Result of parsing a command line. */
export interface ParsedCommandLine {
  /** null when no subcommand was given (then `help` is true or it is a usage error). */
  command: Command | null;
  help: boolean;
  options: AgentOptions;
  /** Names of flags whose value came from the command line or the environment (not defaults). */
  explicit: Set<string>;
}

/** Bad usage: unknown flag, bad value, missing required flag. The CLI exits 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Options for {@linkcode parseCommandLine}. */
export interface ParseOptions {
  /** Environment lookup (default: none). */
  env?: (name: string) => string | undefined;
}

function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
}

/** Flags accepted by a command. */
export function flagsFor(command: Command): FlagSpec[] {
  return FLAGS.filter((f) => !f.commands || f.commands.includes(command));
}

function convert(spec: FlagSpec, raw: string | boolean, from: string): string | number | boolean {
  if (spec.type === "boolean") {
    if (typeof raw === "boolean") return raw;
    const v = raw.trim().toLowerCase();
    if (["1", "true", "yes", "on"].includes(v)) return true;
    if (["0", "false", "no", "off"].includes(v)) return false;
    throw new UsageError(`${from}: expected true or false, got "${raw}"`);
  }
  const text = String(raw);
  if (spec.type === "number") {
    const n = Number(text);
    if (text.trim() === "" || !Number.isFinite(n) || n < 0) {
      throw new UsageError(`${from}: expected a non-negative number, got "${text}"`);
    }
    return n;
  }
  if (spec.choices && !spec.choices.includes(text)) {
    throw new UsageError(`${from}: expected one of ${spec.choices.join(", ")}, got "${text}"`);
  }
  if (text === "") throw new UsageError(`${from}: value must not be empty`);
  try {
    spec.validate?.(text);
  } catch (error) {
    throw new UsageError(`${from}: ${(error as Error).message}`);
  }
  return text;
}

/**
 * Parse `argv` (without the program name): `<command> [flags]`. Flag > environment > default.
 * Throws {@linkcode UsageError} on unknown flags or bad values.
 */
export function parseCommandLine(
  argv: readonly string[],
  options: ParseOptions = {},
): ParsedCommandLine {
  const env = options.env ?? (() => undefined);
  const first = argv[0];
  const wantsHelp = argv.includes("--help") || argv.includes("-h");
  let command: Command | null = null;
  if (first !== undefined && !first.startsWith("-")) {
    if (!(COMMANDS as readonly string[]).includes(first)) {
      throw new UsageError(`Unknown command "${first}". Commands: ${COMMANDS.join(", ")}`);
    }
    command = first as Command;
  }
  const specs = command ? flagsFor(command) : FLAGS.filter((f) => !f.commands);
  const parseSpec: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const s of specs) parseSpec[s.name] = { type: s.type === "boolean" ? "boolean" : "string" };
  let parsed;
  try {
    parsed = parseArgs({
      args: command ? argv.slice(1) : [...argv],
      options: parseSpec,
      allowPositionals: false,
      allowNegative: true,
      strict: true,
    });
  } catch (err) {
    const where = command ? `gpu-power-agent ${command}` : "gpu-power-agent";
    throw new UsageError(`${where}: ${(err as Error).message}. See --help.`);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const out: Record<string, unknown> = {};
  const explicit = new Set<string>();
  for (const s of specs) {
    const key = camel(s.name);
    const cli = values[s.name];
    if (cli !== undefined) {
      out[key] = convert(s, cli, `--${s.name}`);
      explicit.add(s.name);
      continue;
    }
    const envName = s.env.find((e) => (env(e) ?? "") !== "");
    if (envName) {
      out[key] = convert(s, env(envName)!, `environment variable ${envName}`);
      explicit.add(s.name);
      continue;
    }
    if (s.default !== undefined) out[key] = s.default;
  }
  // Defaults of flags the command does not take keep AgentOptions total.
  for (const s of FLAGS) {
    const key = camel(s.name);
    if (!(key in out) && s.default !== undefined) out[key] = s.default;
  }
  return {
    command,
    help: wantsHelp || values.help === true,
    options: out as unknown as AgentOptions,
    explicit,
  };
}

/** Usage text for one command, or the overview when command is null. */
export function helpText(command: Command | null): string {
  const lines: string[] = [];
  if (!command) {
    lines.push(
      "gpu-power-agent: keeps each NVIDIA GPU's power limit where its owner wants it.",
      "",
      "Usage: gpu-power-agent <command> [flags]",
      "",
      "Commands:",
      "  run       Enforce caps from a caps file or Kubernetes pod annotations",
      "  status    Show every GPU's limits, draw and whether the agent manages it",
      "  check     Validate a caps file and print what it would apply on this host",
      "  restore   Put every GPU the agent changed back to its baseline now",
      "",
      "Run 'gpu-power-agent <command> --help' for the flags of a command.",
      "Every flag can also be set with GPU_POWER_AGENT_<FLAG> (e.g. GPU_POWER_AGENT_STATE_DIR);",
      "a flag on the command line wins over the environment.",
      "",
      "Exit codes: 0 ok, 1 runtime failure, 2 bad usage or invalid caps file,",
      "3 NVIDIA driver (libnvidia-ml.so.1) not found.",
    );
    return lines.join("\n");
  }
  lines.push(`Usage: gpu-power-agent ${command} [flags]`, "", "Flags:");
  for (const s of flagsFor(command)) {
    const left = s.type === "boolean"
      ? (s.default === true ? `--${s.name} / --no-${s.name}` : `--${s.name}`)
      : `--${s.name} ${s.arg ?? "VALUE"}`;
    const extra: string[] = [];
    if (s.choices) extra.push(`one of ${s.choices.join("|")}`);
    if (s.default !== undefined && s.type !== "boolean") extra.push(`default ${s.default}`);
    extra.push(`env ${s.env.join(", ")}`);
    lines.push(`  ${left.padEnd(34)} ${s.help}`, `  ${"".padEnd(34)} (${extra.join("; ")})`);
  }
  lines.push(`  ${"--help, -h".padEnd(34)} Show this help`);
  return lines.join("\n");
}
