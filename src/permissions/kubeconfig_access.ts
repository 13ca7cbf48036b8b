/**
 * What a kubeconfig makes the agent touch: the files it references (CA, client certificate and
 * key, token file) and the addresses it connects to (API server, proxy). The launcher turns
 * these into `--allow-read` and `--allow-net` entries.
 *
 * @module
 */

import { posix } from "node:path";

/** Files and addresses a kubeconfig's current context needs. */
export interface KubeconfigAccess {
  /** Absolute paths of the files the current context references. */
  files: string[];
  /** `host:port` of the API server and of its proxy, if any. */
  servers: string[];
}

/** A kubeconfig the agent cannot use under its permission set. */
export class KubeconfigAccessError extends Error {
  override name = "KubeconfigAccessError";
}

type Named = { name?: unknown; [key: string]: unknown };

function record(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    ? value as Record<string, unknown>
    : {};
}

function named(list: unknown, key: string): Map<string, Record<string, unknown>> {
  const out = new Map<string, Record<string, unknown>>();
  if (!Array.isArray(list)) return out;
  for (const item of list as Named[]) {
    const entry = record(item);
    if (typeof entry.name === "string" && !out.has(entry.name)) {
      out.set(entry.name, record(entry[key]));
    }
  }
  return out;
}

/** `https://host:port/…` → `host:port` (default port 443 for https, 80 for http). */
export function serverHostPort(server: string, what = "server"): string {
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    throw new KubeconfigAccessError(`kubeconfig ${what} "${server}" is not a URL`);
  }
  const port = url.port !== ""
    ? url.port
    : url.protocol === "https:"
    ? "443"
    : url.protocol === "http:"
    ? "80"
    : url.protocol === "socks5:"
    ? "1080"
    : "";
  if (url.hostname === "" || port === "") {
    throw new KubeconfigAccessError(`kubeconfig ${what} "${server}" has no host or port`);
  }
  return `${url.hostname}:${port}`; // IPv6 hostnames keep their brackets
}

/**
 * Reads the kubeconfig file(s) (merged like kubectl: the first file to define a name wins) and
 * returns what the current context needs. Relative file references are resolved against the
 * directory of the kubeconfig that holds them. Throws {@linkcode KubeconfigAccessError} for an
 * unreadable file, no current context, or a user that needs an exec / auth-provider plugin (the
 * agent never gets subprocess permission).
 */
export async function kubeconfigAccess(paths: readonly string[]): Promise<KubeconfigAccess> {
  const { parse } = await import("yaml");
  const clusters = new Map<string, { entry: Record<string, unknown>; dir: string }>();
  const users = new Map<string, { entry: Record<string, unknown>; dir: string }>();
  const contexts = new Map<string, Record<string, unknown>>();
  let current: string | undefined;
  for (const path of paths) {
    let doc: Record<string, unknown>;
    try {
      doc = record(parse(await Deno.readTextFile(path)));
    } catch (error) {
      throw new KubeconfigAccessError(
        `Cannot read kubeconfig ${path}: ${(error as Error).message}. ` +
          "Pass --kubeconfig with a readable kubeconfig file",
      );
    }
    const dir = posix.dirname(path);
    for (const [name, entry] of named(doc.clusters, "cluster")) {
      if (!clusters.has(name)) clusters.set(name, { entry, dir });
    }
    for (const [name, entry] of named(doc.users, "user")) {
      if (!users.has(name)) users.set(name, { entry, dir });
    }
    for (const [name, entry] of named(doc.contexts, "context")) {
      if (!contexts.has(name)) contexts.set(name, entry);
    }
    if (current === undefined && typeof doc["current-context"] === "string") {
      current = doc["current-context"] as string;
    }
  }
  const where = paths.join(":");
  if (!current || !contexts.has(current)) {
    throw new KubeconfigAccessError(
      `kubeconfig ${where} has no usable current-context; set one with ` +
        "'kubectl config use-context NAME'",
    );
  }
  const context = contexts.get(current)!;
  const cluster = clusters.get(String(context.cluster ?? ""));
  if (!cluster || typeof cluster.entry.server !== "string") {
    throw new KubeconfigAccessError(
      `kubeconfig ${where}: context "${current}" names no cluster with a server`,
    );
  }
  const files: string[] = [];
  const fileOf = (value: unknown, dir: string) => {
    if (typeof value === "string" && value !== "") files.push(posix.resolve(dir, value));
  };
  fileOf(cluster.entry["certificate-authority"], cluster.dir);
  const servers = [serverHostPort(cluster.entry.server)];
  if (typeof cluster.entry["proxy-url"] === "string") {
    servers.push(serverHostPort(cluster.entry["proxy-url"], "proxy-url"));
  }
  const user = users.get(String(context.user ?? ""));
  if (user) {
    for (const plugin of ["exec", "auth-provider"]) {
      if (user.entry[plugin] !== undefined && user.entry[plugin] !== null) {
        throw new KubeconfigAccessError(
          `kubeconfig ${where}: user "${String(context.user)}" authenticates with an ` +
            `${plugin} plugin, which needs to run a program; the agent never gets subprocess ` +
            "permission. Use a ServiceAccount token (token or tokenFile) or a client certificate",
        );
      }
    }
    fileOf(user.entry["client-certificate"], user.dir);
    fileOf(user.entry["client-key"], user.dir);
    fileOf(user.entry.tokenFile, user.dir);
  }
  return { files: [...new Set(files)], servers: [...new Set(servers)] };
}
