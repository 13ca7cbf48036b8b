/**
 * The ONE definition of the Deno permissions the agent runs with, per mode (`file`,
 * `kubernetes`). Everything that starts the agent derives its flags from here: the
 * `deno task agent` launcher, `deno task compile` (baked into the binary, and so the systemd
 * unit), the container entrypoint in `deploy/Dockerfile` and the DaemonSet command.
 *
 * Every grant is scoped: FFI to the NVML library file(s), read to exactly the files and
 * directories the agent opens, write to the state directory, net to the metrics listen address
 * and the Kubernetes API server, env to the variable names of the flag table. Never `-A`, never
 * `--allow-run`. Code behind FFI (libnvidia-ml) runs outside Deno's sandbox.
 *
 * @module
 */

import { posix } from "node:path";
import { FLAGS } from "../cli/flags.ts";
import {
  DEFAULT_LD_CACHE_PATH,
  DEFAULT_NVML_SEARCH_DIRS,
  NVML_LIBRARY_NAME,
} from "../nvml/library_path.ts";
import { parseListenAddress } from "../metrics/server.ts";

/** How the agent gets its desired caps: a caps file, or pod annotations. */
export type AgentMode = "file" | "kubernetes";

/** Where a pod's service-account token, CA and namespace are mounted. */
export const DEFAULT_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** Variables the Kubernetes client reads for the in-cluster configuration. */
export const KUBERNETES_IN_CLUSTER_ENV: readonly string[] = Object.freeze([
  "KUBERNETES_SERVICE_HOST",
  "KUBERNETES_SERVICE_PORT",
]);

/**
 * Debug switches that bundled npm code reads through `process.env` (`yaml`: LOG_TOKENS and
 * LOG_STREAM on every parse). They are granted as "ignored" (`--ignore-env`): reading them
 * answers `undefined`, whatever their value (so a stray `LOG_TOKENS=1` cannot make the YAML
 * parser print to stdout), instead of throwing NotCapable and failing the parse. Any
 * `--ignore-env` also makes `Object.keys(process.env)` list only the granted names instead of
 * throwing. Every other unlisted variable still throws NotCapable.
 */
export const IGNORED_LIBRARY_ENV: readonly string[] = Object.freeze([
  "LOG_TOKENS",
  "LOG_STREAM",
]);

/** Options of {@linkcode agentPermissions}. Every path must be absolute. */
export interface AgentPermissionOptions {
  /**
   * The NVML library: one absolute file path (FFI to exactly that file; the agent is given the
   * same path), or candidate file paths the agent searches itself (FFI + read to each, read to
   * the linker cache), e.g. {@linkcode nvmlCandidatePaths}.
   */
  nvmlLibraryPath: string | readonly string[];
  /** Journal directory: read + write. */
  stateDir: string;
  /** Caps file (file mode): read on its parent directory, which the source watches. */
  capsFile?: string;
  /** Host /proc (kubernetes mode; default `/proc`): read, maps GPU PIDs to pods. */
  procRoot?: string;
  /** kubeconfig file(s) (kubernetes mode): read. */
  kubeconfigPath?: string | readonly string[];
  /** Files a kubeconfig references (CA, client certificate and key, token file): read. */
  kubeconfigFiles?: readonly string[];
  /** Service-account mount (kubernetes mode; default {@linkcode DEFAULT_SERVICE_ACCOUNT_DIR}). */
  serviceAccountDir?: string;
  /** `--metrics-address` (`HOST:PORT`, `[IPV6]:PORT`, `:PORT` or `off`): net (listen). */
  metricsAddress?: string;
  /** Kubernetes API server(s) and proxies as `host:port` (kubernetes mode): net (connect). */
  apiServer?: string | readonly string[];
  /**
   * The kubelet's PodResources socket (kubernetes mode, when the pod → GPU mapping uses it):
   * read + write on the socket path and net `unix:<path>`, what connecting to a unix socket
   * needs under Deno 2.9.6 (measured: each of the three alone or in pairs throws NotCapable).
   */
  podResourcesSocket?: string;
}

/** Scoped Deno permissions; an empty list grants nothing of that kind. */
export interface PermissionSet {
  read: string[];
  write: string[];
  ffi: string[];
  net: string[];
  env: string[];
  /** Variables answered as unset (`--ignore-env`), see {@linkcode IGNORED_LIBRARY_ENV}. */
  ignoreEnv: string[];
  /** `Deno` OS-information APIs (`--allow-sys`). */
  sys: string[];
}

/** A path or address that cannot be turned into a scoped permission (the CLI exits 2). */
export class PermissionSetError extends Error {
  override name = "PermissionSetError";
}

function list<T>(value: T | readonly T[] | undefined): T[] {
  if (value === undefined) return [];
  return Array.isArray(value) ? [...value as readonly T[]] : [value as T];
}

function unique(values: readonly string[]): string[] {
  return [...new Set(values)];
}

/** Normalized absolute path; throws a {@linkcode PermissionSetError} naming `what` otherwise. */
export function absolutePath(path: string, what: string): string {
  if (!path.startsWith("/")) {
    throw new PermissionSetError(`${what} must be an absolute path, got "${path}"`);
  }
  if (path.includes(",")) {
    throw new PermissionSetError(
      `${what} "${path}" contains a comma, which Deno permission lists cannot express`,
    );
  }
  const normalized = posix.normalize(path);
  return normalized.length > 1 ? normalized.replace(/\/+$/, "") : normalized;
}

/** Candidate NVML library files: `<dir>/libnvidia-ml.so.1` for each driver directory. */
export function nvmlCandidatePaths(
  dirs: readonly string[] = DEFAULT_NVML_SEARCH_DIRS,
): string[] {
  return dirs.map((dir) => absolutePath(`${dir}/${NVML_LIBRARY_NAME}`, "NVML search directory"));
}

/**
 * The `--allow-net` entry for a listen address: `HOST:PORT` (`[IPV6]:PORT`), the host alone for
 * port 0 (the OS picks the port), null for `off`. Throws on a malformed address.
 */
export function listenPermission(address: string): string | null {
  let listen;
  try {
    listen = parseListenAddress(address);
  } catch (error) {
    throw new PermissionSetError((error as Error).message);
  }
  if (listen === null) return null;
  const host = listen.hostname.includes(":") ? `[${listen.hostname}]` : listen.hostname;
  return listen.port === 0 ? host : `${host}:${listen.port}`;
}

/** The variables the agent reads: every name of the flag table (flag > env > default). */
export function flagEnvNames(): string[] {
  return unique(FLAGS.flatMap((flag) => flag.env));
}

/**
 * The permissions of the agent in `mode`, computed from the paths and addresses it will use.
 *
 * - file: ffi NVML; read caps-file directory + state dir; write state dir; net metrics address;
 *   env = flag-table names; the library probes of {@linkcode IGNORED_LIBRARY_ENV} ignored.
 * - kubernetes: the same without the caps file, plus read proc root, service-account dir and
 *   kubeconfig(s); net API server(s); env + `KUBERNETES_SERVICE_HOST`/`_PORT`; with a
 *   PodResources socket, read + write on it and net `unix:<socket>`.
 */
export function agentPermissions(mode: AgentMode, options: AgentPermissionOptions): PermissionSet {
  const read: string[] = [];
  const write: string[] = [];
  const ffi: string[] = [];
  const net: string[] = [];
  const env = flagEnvNames();
  const ignoreEnv: string[] = [...IGNORED_LIBRARY_ENV];

  const libs = list(options.nvmlLibraryPath).map((p) => absolutePath(p, "NVML library path"));
  if (libs.length === 0) {
    throw new PermissionSetError("NVML library path: at least one path is needed");
  }
  ffi.push(...libs);
  if (Array.isArray(options.nvmlLibraryPath)) {
    // The agent searches: it stats each candidate and parses the linker cache.
    read.push(...libs, DEFAULT_LD_CACHE_PATH);
  }

  const stateDir = absolutePath(options.stateDir, "State directory");
  read.push(stateDir);
  write.push(stateDir);

  if (options.capsFile !== undefined) {
    const capsFile = absolutePath(options.capsFile, "Caps file");
    // The source watches the directory: editors replace the file by rename and ConfigMaps swap
    // a symlinked `..data` directory.
    read.push(posix.dirname(capsFile));
  }

  if (options.metricsAddress !== undefined) {
    const listen = listenPermission(options.metricsAddress);
    if (listen !== null) net.push(listen);
  }

  if (mode === "kubernetes") {
    read.push(absolutePath(options.procRoot ?? "/proc", "Proc root"));
    read.push(
      absolutePath(options.serviceAccountDir ?? DEFAULT_SERVICE_ACCOUNT_DIR, "Service account dir"),
    );
    for (const path of list(options.kubeconfigPath)) read.push(absolutePath(path, "kubeconfig"));
    for (const path of options.kubeconfigFiles ?? []) {
      read.push(absolutePath(path, "File referenced by the kubeconfig"));
    }
    for (const server of list(options.apiServer)) {
      if (server.trim() === "") {
        throw new PermissionSetError("Kubernetes API server address is empty");
      }
      net.push(server);
    }
    env.push(...KUBERNETES_IN_CLUSTER_ENV);
    if (options.podResourcesSocket !== undefined) {
      const socket = absolutePath(options.podResourcesSocket, "PodResources socket");
      read.push(socket);
      write.push(socket);
      net.push(`unix:${socket}`);
    }
  }

  return {
    read: unique(read),
    write: unique(write),
    ffi: unique(ffi),
    net: unique(net),
    env: unique(env),
    ignoreEnv: unique(ignoreEnv),
    sys: [],
  };
}

/** Each kind of a {@linkcode PermissionSet} and its Deno flag, in the order flags are written. */
export const DENO_PERMISSION_FLAGS: ReadonlyArray<readonly [string, keyof PermissionSet]> = Object
  .freeze(
    [
      ["--allow-read", "read"],
      ["--allow-write", "write"],
      ["--allow-ffi", "ffi"],
      ["--allow-net", "net"],
      ["--allow-env", "env"],
      ["--ignore-env", "ignoreEnv"],
      ["--allow-sys", "sys"],
    ] as const,
  );

/**
 * Deno flags for a permission set, in a fixed order; a kind with an empty list is not granted.
 * Never `-A` and never `--allow-run`.
 */
export function toDenoFlags(set: PermissionSet): string[] {
  const flags: string[] = [];
  for (const [flag, kind] of DENO_PERMISSION_FLAGS) {
    const values = set[kind];
    if (values.length === 0) continue;
    for (const value of values) {
      if (value === "" || value.includes(",")) {
        throw new PermissionSetError(
          `${flag}: "${value}" cannot be expressed in a Deno permission list`,
        );
      }
    }
    flags.push(`${flag}=${values.join(",")}`);
  }
  return flags;
}
