/**
 * Spawn the agent as a user would (`deno task agent <subcommand> …` from the repository root)
 * and observe it: collected output, log waiting, signals, exit status.
 */
import { fileURLToPath } from "node:url";

/** Repository root (absolute). */
export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url)).replace(/\/$/, "");

/** Options for {@linkcode spawnAgent}. */
export interface SpawnAgentOptions {
  /** Extra environment (FAKE_NVML_STATE etc.). */
  env?: Record<string, string>;
  /** Run `deno run -A main.ts` instead of the permission-scoped `deno task agent`. */
  unscoped?: boolean;
}

/** A running agent process. */
export interface AgentProcess {
  child: Deno.ChildProcess;
  /** Everything printed so far on stdout and stderr (interleaved by arrival). */
  output(): string;
  /** Resolve when the output matches, reject after timeoutMs with the output so far. */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<void>;
  /** Send a signal to the agent (forwarded by `deno task` and the launcher). */
  kill(signal: Deno.Signal): void;
  /**
   * Send a signal to every process of the tree, deepest first (`kill -9` of the agent itself:
   * signals to `deno task` are forwarded, but SIGKILL cannot be).
   */
  killTree(signal: Deno.Signal): void;
  /** Wait for exit. */
  status(): Promise<Deno.CommandStatus>;
}

/** Spawn `deno task agent <args>` (or `deno run -A main.ts <args>` when unscoped). */
export function spawnAgent(args: readonly string[], options: SpawnAgentOptions = {}): AgentProcess {
  const argv = options.unscoped
    ? ["run", "-A", `${REPO_ROOT}/main.ts`, ...args]
    : ["task", "--quiet", "agent", ...args];
  const child = new Deno.Command(Deno.execPath(), {
    args: argv,
    cwd: REPO_ROOT,
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...options.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const waiters = new Set<() => void>();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      for (const w of [...waiters]) w();
    }
  };
  const pumps = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const statusPromise = child.status.then(async (s) => {
    await pumps;
    for (const w of [...waiters]) w();
    return s;
  });
  let exited = false;
  statusPromise.then(() => exited = true);
  return {
    child,
    output: () => text,
    waitForOutput(pattern, timeoutMs = 15_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (pattern.test(text)) {
            cleanup();
            resolve();
          } else if (exited) {
            cleanup();
            reject(new Error(`agent exited before printing ${pattern}; output:\n${text}`));
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out waiting for ${pattern}; output:\n${text}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    kill(signal) {
      child.kill(signal);
    },
    killTree(signal) {
      if (exited) return;
      for (const pid of [...descendants(child.pid).reverse(), child.pid]) {
        try {
          Deno.kill(pid, signal);
        } catch { /* already gone */ }
      }
    },
    status: () => statusPromise,
  };
}

/** Run `deno task agent <args>` to completion and return code and output. */
export async function runAgent(
  args: readonly string[],
  options: SpawnAgentOptions = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const argv = options.unscoped
    ? ["run", "-A", `${REPO_ROOT}/main.ts`, ...args]
    : ["task", "--quiet", "agent", ...args];
  const out = await new Deno.Command(Deno.execPath(), {
    args: argv,
    cwd: REPO_ROOT,
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...options.env },
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Poll `predicate` every 20 ms until true; fail with `what` after timeoutMs. */
export async function waitFor(
  predicate: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 15_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** PIDs of all descendants of `pid`, parents before children (Linux /proc). */
export function descendants(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      // pid (comm) state ppid …; comm may contain spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      parentOf.set(Number(entry.name), ppid);
    } catch { /* exited meanwhile */ }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    for (const [c, pp] of parentOf) {
      if (pp === p) {
        out.push(c);
        walk(c);
      }
    }
  };
  walk(pid);
  return out;
}

/** Options of {@linkcode kubernetesRunArgs}. */
export interface KubernetesRunArgsOptions {
  kubeconfig: string;
  nodeName: string;
  procRoot: string;
  /** Default 500. */
  safeDefaultWatts?: number;
  /**
   * `--pod-gpu-mapping` (default `processes`: tests never ask a kubelet they did not start, e.g.
   * the real one on a node).
   */
  podGpuMapping?: "auto" | "pod-resources" | "processes";
  /** `--pod-resources-socket` (the in-test kubelet's). */
  podResourcesSocket?: string;
  /** `--nvml-library` (the fake's path). */
  nvmlLibrary?: string;
  /** `--state-dir`. */
  stateDir?: string;
  /** `--metrics-address`. */
  metricsAddress?: string;
}

/** `run --source kubernetes …` with the flags every Kubernetes-mode test needs. */
export function kubernetesRunArgs(options: KubernetesRunArgsOptions): string[] {
  return [
    "run",
    "--source",
    "kubernetes",
    "--kubeconfig",
    options.kubeconfig,
    "--node-name",
    options.nodeName,
    "--safe-default-watts",
    String(options.safeDefaultWatts ?? 500),
    "--proc-root",
    options.procRoot,
    "--pod-gpu-mapping",
    options.podGpuMapping ?? "processes",
    ...(options.podResourcesSocket ? ["--pod-resources-socket", options.podResourcesSocket] : []),
    ...(options.nvmlLibrary ? ["--nvml-library", options.nvmlLibrary] : []),
    ...(options.stateDir ? ["--state-dir", options.stateDir] : []),
    ...(options.metricsAddress ? ["--metrics-address", options.metricsAddress] : []),
  ];
}
