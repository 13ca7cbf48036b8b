/**
 * `deno task agent <run|status|check|restore> [flags]`: runs `main.ts` in a child Deno with
 * exactly the permissions its flags and environment name (see `permission_set.ts`), forwards
 * SIGTERM/SIGINT/SIGHUP to it and exits with its exit code.
 *
 * With `GPU_POWER_AGENT_BUNDLE=<dir>` it runs the bundle `deno task bundle` built there (what
 * the image and the binary ship) under the same permissions, runtime flags and `--no-config`.
 *
 * The launcher itself needs read (kubeconfig, NVML search), env and run (to start the child);
 * the agent never gets those wide grants. Relative paths are resolved against the directory
 * `deno task` was started from (`INIT_CWD`), which is also the child's working directory.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { posix } from "node:path";
import { FLAGS, helpText, parseCommandLine, UsageError } from "../cli/flags.ts";
import type { AgentOptions, Command, FlagSpec } from "../cli/flags.ts";
import {
  resolveNvmlLibraryPath,
  type ResolveNvmlLibraryPathOptions,
} from "../nvml/library_path.ts";
import { NvmlLibraryError } from "../nvml/errors.ts";
import {
  type AgentMode,
  type AgentPermissionOptions,
  agentPermissions,
  type PermissionSet,
  PermissionSetError,
  toDenoFlags,
} from "./permission_set.ts";
import { forwardSignals } from "./forward_signals.ts";
import type { EarlySignals } from "../cli/early_signals.ts";
import { inClusterHostPort, kubeconfigAccess, KubeconfigAccessError } from "./kubeconfig_access.ts";
import { AGENT_RUNTIME_FLAGS, agentMallocEnv } from "./runtime.ts";
import { BUNDLE_ENTRY_FILE } from "./bundle.ts";

/** Absolute path of the agent entry point. */
export const MAIN_MODULE = fileURLToPath(new URL("../../main.ts", import.meta.url));
/** Absolute path of the project's deno.json (import map, lock file, node_modules). */
export const DENO_CONFIG = fileURLToPath(new URL("../../deno.json", import.meta.url));

/**
 * The launcher's own variable: the directory of a bundle (`deno task bundle`) to run instead of
 * the sources. Not passed on as a permission: the agent never reads it.
 */
export const BUNDLE_ENV = "GPU_POWER_AGENT_BUNDLE";

/** Flags whose values are file-system paths (`arg` PATH or DIR in the flag table). */
export const PATH_FLAGS: readonly FlagSpec[] = FLAGS.filter((f) =>
  f.arg === "PATH" || f.arg === "DIR"
);

/** Options of {@linkcode planLaunch}. */
export interface PlanLaunchOptions {
  /** Environment lookup (default `Deno.env.get`). */
  env?: (name: string) => string | undefined;
  /** Directory relative paths are resolved against (default `INIT_CWD`, else the cwd). */
  cwd?: string;
  /** Deno executable (default `Deno.execPath()`). */
  deno?: string;
  /** Entry point (default {@linkcode MAIN_MODULE}). */
  mainModule?: string;
  /** Config file (default {@linkcode DENO_CONFIG}). */
  config?: string;
  /**
   * Directory of a bundle built by `deno task bundle` (default: `GPU_POWER_AGENT_BUNDLE`): run
   * its `main.js` with `--no-config` instead of `main.ts` with the config (see `bundle.ts`).
   */
  bundleDir?: string;
  /** Where to search for NVML when no path is given (default: driver dirs + linker cache). */
  nvmlSearch?: ResolveNvmlLibraryPathOptions;
}

/** How to start the agent. */
export interface LaunchPlan {
  command: Command;
  mode: AgentMode;
  permissions: PermissionSet;
  /** Executable to spawn (Deno). */
  deno: string;
  /**
   * Its arguments: `run --no-prompt <runtime flags> --config … <permission flags> <main.ts>
   * <agent args>` (runtime flags: `runtime.ts`); for a bundle `--no-config` and its `main.js`.
   */
  args: string[];
  /** Working directory of the child. */
  cwd: string;
  /**
   * Variables set for the child on top of the inherited environment (paths made absolute, the
   * NVML library found, the malloc settings of `runtime.ts` unless already set).
   */
  env: Record<string, string>;
}

/** Either the launcher answers by itself (help, usage error) or it starts the agent. */
export type LaunchDecision =
  | { kind: "exit"; code: number; stdout?: string; stderr?: string }
  | { kind: "spawn"; plan: LaunchPlan };

function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
}

function denoEnv(name: string): string | undefined {
  return Deno.env.get(name);
}

function launcherCwd(env: (name: string) => string | undefined): string {
  const init = env("INIT_CWD");
  return init && init.startsWith("/") ? init : Deno.cwd();
}

/** `argv` with the value of every path flag made absolute against `cwd`. */
export function absolutizeArgs(argv: readonly string[], cwd: string): string[] {
  const names = new Set(PATH_FLAGS.map((f) => f.name));
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const eq = arg.indexOf("=");
    const name = arg.startsWith("--") ? arg.slice(2, eq === -1 ? undefined : eq) : "";
    if (!names.has(name)) {
      out.push(arg);
    } else if (eq !== -1) {
      out.push(`--${name}=${posix.resolve(cwd, arg.slice(eq + 1))}`);
    } else if (i + 1 < argv.length) {
      out.push(arg, posix.resolve(cwd, argv[++i]));
    } else {
      out.push(arg);
    }
  }
  return out;
}

/**
 * Decide what `deno task agent <argv>` does: print help / a usage error, or start main.ts under
 * the permission set its flags name. Throws nothing for bad input: errors become exit decisions
 * (2 usage or invalid kubeconfig, 3 NVIDIA driver not found).
 */
export async function planLaunch(
  argv: readonly string[],
  options: PlanLaunchOptions = {},
): Promise<LaunchDecision> {
  const env = options.env ?? denoEnv;
  let parsed;
  try {
    parsed = parseCommandLine(argv, { env });
  } catch (error) {
    if (error instanceof UsageError) return { kind: "exit", code: 2, stderr: error.message };
    throw error;
  }
  if (parsed.help) return { kind: "exit", code: 0, stdout: helpText(parsed.command) };
  if (!parsed.command) return { kind: "exit", code: 2, stderr: helpText(null) };
  const cwd = options.cwd ?? launcherCwd(env);
  const bundleDir = options.bundleDir ?? env(BUNDLE_ENV);
  let entry = [
    "--config",
    options.config ?? DENO_CONFIG,
  ];
  let mainModule = options.mainModule ?? MAIN_MODULE;
  if (bundleDir) {
    mainModule = posix.resolve(cwd, bundleDir, BUNDLE_ENTRY_FILE);
    if (!isFile(mainModule)) {
      return {
        kind: "exit",
        code: 2,
        stderr: `gpu-power-agent: ${BUNDLE_ENV}=${bundleDir}: no ${mainModule}. Build the ` +
          `bundle with 'deno task bundle --out-dir ${bundleDir}', or unset ${BUNDLE_ENV} to ` +
          "run from the sources",
      };
    }
    entry = ["--no-config"];
  }
  const opts: AgentOptions = { ...parsed.options };
  const childEnv: Record<string, string> = {};
  // Make every path absolute; a path that came from the environment is passed on absolute too.
  for (const spec of PATH_FLAGS) {
    const key = camel(spec.name) as keyof AgentOptions;
    const value = opts[key];
    if (typeof value !== "string") continue;
    const absolute = posix.resolve(cwd, value);
    (opts as unknown as Record<string, unknown>)[key] = absolute;
    if (parsed.explicit.has(spec.name) && !argvHasFlag(argv, spec.name)) {
      const from = spec.env.find((name) => (env(name) ?? "") !== "");
      if (from) childEnv[from] = absolute;
    }
  }
  const mode: AgentMode = parsed.command === "run" && opts.source === "kubernetes"
    ? "kubernetes"
    : "file";
  try {
    const nvmlLibraryPath = resolveNvmlLibraryPath(opts.nvmlLibrary, options.nvmlSearch);
    if (!parsed.explicit.has("nvml-library")) {
      // The agent loads exactly the library the launcher scoped FFI to.
      childEnv["GPU_POWER_AGENT_NVML_LIBRARY"] = nvmlLibraryPath;
    }
    const permissionOptions: AgentPermissionOptions = {
      nvmlLibraryPath,
      stateDir: opts.stateDir,
      capsFile: parsed.command === "restore" ? undefined : opts.capsFile,
      metricsAddress: parsed.command === "run" ? opts.metricsAddress : undefined,
    };
    if (mode === "kubernetes") {
      Object.assign(permissionOptions, await kubernetesAccess(opts, env, childEnv));
    }
    const permissions = agentPermissions(mode, permissionOptions);
    return {
      kind: "spawn",
      plan: {
        command: parsed.command,
        mode,
        permissions,
        deno: options.deno ?? Deno.execPath(),
        args: [
          "run",
          "--no-prompt",
          ...AGENT_RUNTIME_FLAGS,
          ...entry,
          ...toDenoFlags(permissions),
          mainModule,
          ...absolutizeArgs(argv, cwd),
        ],
        cwd,
        env: { ...agentMallocEnv(env), ...childEnv },
      },
    };
  } catch (error) {
    if (error instanceof NvmlLibraryError) {
      return { kind: "exit", code: 3, stderr: `gpu-power-agent: ${error.message}` };
    }
    if (
      error instanceof UsageError || error instanceof KubeconfigAccessError ||
      error instanceof PermissionSetError
    ) {
      return { kind: "exit", code: 2, stderr: `gpu-power-agent: ${error.message}` };
    }
    throw error;
  }
}

function argvHasFlag(argv: readonly string[], name: string): boolean {
  return argv.some((arg) => arg === `--${name}` || arg.startsWith(`--${name}=`));
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/**
 * What kubernetes mode reaches: the in-cluster API server (`KUBERNETES_SERVICE_HOST`/`_PORT`)
 * and/or the kubeconfig (`--kubeconfig`, `KUBECONFIG`, else `~/.kube/config`, which is then
 * passed to the agent explicitly: the agent is not given `HOME`).
 */
async function kubernetesAccess(
  opts: AgentOptions,
  env: (name: string) => string | undefined,
  childEnv: Record<string, string>,
): Promise<Partial<AgentPermissionOptions>> {
  const apiServer: string[] = [];
  const access: Partial<AgentPermissionOptions> = {
    procRoot: opts.procRoot,
    apiServer,
    podResourcesSocket: opts.podGpuMapping === "processes" ? undefined : opts.podResourcesSocket,
  };
  const host = env("KUBERNETES_SERVICE_HOST");
  const port = env("KUBERNETES_SERVICE_PORT");
  if (host && port) apiServer.push(inClusterHostPort(host, port));
  let kubeconfig = opts.kubeconfig;
  const home = env("HOME");
  if (!kubeconfig && apiServer.length === 0 && home && isFile(`${home}/.kube/config`)) {
    kubeconfig = `${home}/.kube/config`;
    childEnv["GPU_POWER_AGENT_KUBECONFIG"] = kubeconfig;
  }
  if (kubeconfig) {
    const paths = kubeconfig.split(":").filter((p) => p !== "");
    const { files, servers } = await kubeconfigAccess(paths);
    access.kubeconfigPath = paths;
    access.kubeconfigFiles = files;
    apiServer.push(...servers);
  }
  if (apiServer.length === 0) {
    throw new UsageError(
      "kubernetes mode needs an API server: pass --kubeconfig PATH (or set KUBECONFIG), or run " +
        "in a pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT)",
    );
  }
  return access;
}

const FORWARDED: readonly Deno.Signal[] = ["SIGTERM", "SIGINT", "SIGHUP"];

/** Options of {@linkcode launch}. */
export interface LaunchOptions extends PlanLaunchOptions {
  /** Listeners installed before the launcher loaded (`launch_main.ts`): taken over. */
  earlySignals?: EarlySignals;
}

/** Run the launcher: decide, start the agent, forward signals, return its exit code. */
export async function launch(
  argv: readonly string[],
  options: LaunchOptions = {},
): Promise<number> {
  const decision = await planLaunch(argv, options);
  if (decision.kind === "exit") {
    if (decision.stdout) console.log(decision.stdout);
    if (decision.stderr) console.error(decision.stderr);
    return decision.code;
  }
  const { plan } = decision;
  // Forwarders first: a signal while the child starts is queued, never fatal to the launcher.
  const forwarder = forwardSignals(FORWARDED, { early: options.earlySignals });
  try {
    const child = new Deno.Command(plan.deno, {
      args: plan.args,
      cwd: plan.cwd,
      env: plan.env,
      stdin: "inherit",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    forwarder.attach(child);
    const status = await child.status;
    return status.code;
  } finally {
    forwarder.dispose();
  }
}

if (import.meta.main) {
  Deno.exit(await launch(Deno.args));
}
