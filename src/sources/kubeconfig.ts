/**
 * The agent's own kubeconfig / in-cluster loader: which API server to talk to, which CA to
 * trust, which client certificate to present, and where the bearer token comes from.
 *
 * Supported: the in-cluster service account (`KUBERNETES_SERVICE_HOST`/`_PORT`, IPv6 included,
 * `token` re-read when it rotates, `ca.crt`); kubeconfig `current-context`, cluster `server`
 * (`https://` or `http://`), `certificate-authority(-data)`, `tls-server-name` when it names
 * the server's own host, `proxy-url`; user `token`, `tokenFile`, `client-certificate(-data)`,
 * `client-key(-data)`. A `KUBECONFIG`-style list (`a:b`) merges like kubectl: the first file
 * to define a cluster, user or context name wins, `current-context` comes from the first file
 * that sets it; relative paths are resolved against the file that names them.
 *
 * Refused with a {@linkcode KubeConfigError} that says what to use instead: `exec` and
 * `auth-provider` plugins (they run programs or need cloud SDKs), basic auth, https with
 * `insecure-skip-tls-verify`, and a `tls-server-name` other than the server's host (Deno's
 * `fetch` cannot set the TLS server name separately from the URL).
 *
 * The launcher derives the agent's read and net permissions from {@linkcode resolveKubeconfig}
 * (`permissions/kubeconfig_access.ts`), so both read a kubeconfig the same way.
 *
 * @module
 */

import { posix } from "node:path";
import { loadYaml } from "./load_yaml.ts";

/** In-cluster service account files (as mounted by the kubelet). */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** Largest kubeconfig, certificate, key or token file read (every read is bounded). */
export const MAX_KUBE_FILE_BYTES = 1 << 20;

/** How often a token file is re-read even when its mtime and size look unchanged. */
export const TOKEN_REFRESH_MS = 60_000;

/** The configuration cannot be loaded or used (missing, unreadable, unsupported). */
export class KubeConfigError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KubeConfigError";
  }
}

/** PEM material: inline (from a `-data` field, base64-decoded) or a file to read. */
export type PemSource = { data: string } | { file: string };

/** A kubeconfig's current context (or the in-cluster service account), resolved. */
export interface ResolvedKubeconfig {
  /** Context name (`inClusterContext` for the service account). */
  context: string;
  /** API server URL without a trailing slash. */
  server: string;
  /** CA bundle to trust (https only). */
  ca?: PemSource;
  /** Client certificate and key (both or neither). */
  clientCert?: PemSource;
  clientKey?: PemSource;
  /** Static bearer token. */
  token?: string;
  /** Bearer token file, re-read when it changes. */
  tokenFile?: string;
  /** `proxy-url` of the cluster. */
  proxyUrl?: string;
  /** Absolute paths of every file this configuration makes the agent read (not the kubeconfig). */
  files: string[];
}

type Entry = Record<string, unknown>;
type Located = { entry: Entry; file: string };

function record(value: unknown): Entry {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? value as Entry : {};
}

function str(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" ? value : undefined;
}

/** An environment variable, or undefined when unset or not permitted (scoped --allow-env). */
function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/**
 * Read a text file of at most `MAX_KUBE_FILE_BYTES`. Throws the underlying error (NotFound,
 * NotCapable…) or a RangeError for an oversized file.
 */
export async function readBoundedText(path: string): Promise<string> {
  using file = await Deno.open(path, { read: true });
  const buffer = new Uint8Array(MAX_KUBE_FILE_BYTES + 1);
  let length = 0;
  while (length < buffer.length) {
    const n = await file.read(buffer.subarray(length));
    if (n === null) break;
    length += n;
  }
  if (length > MAX_KUBE_FILE_BYTES) {
    throw new RangeError(`larger than ${MAX_KUBE_FILE_BYTES} bytes`);
  }
  return new TextDecoder().decode(buffer.subarray(0, length));
}

/** The named entries of a kubeconfig list (`clusters`, `users`, `contexts`). */
function named(list: unknown, key: string): Map<string, Entry> {
  const out = new Map<string, Entry>();
  if (!Array.isArray(list)) return out;
  for (const item of list) {
    const entry = record(item);
    if (typeof entry.name === "string" && !out.has(entry.name)) {
      out.set(entry.name, record(entry[key]));
    }
  }
  return out;
}

function decodeBase64(value: string, what: string): string {
  try {
    const binary = atob(value.replace(/\s+/g, ""));
    return new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
  } catch {
    throw new KubeConfigError(`${what} is not valid base64`);
  }
}

/** `-data` (inline, base64) wins over the file, as in kubectl. */
function pemSource(
  located: Located,
  field: string,
  where: string,
): PemSource | undefined {
  const data = str(located.entry[`${field}-data`]);
  if (data) return { data: decodeBase64(data, `${where}: ${field}-data`) };
  const file = str(located.entry[field]);
  return file ? { file: posix.resolve(posix.dirname(located.file), file) } : undefined;
}

/**
 * `https://host:port/…` → `host:port` (default port 443 for https, 80 for http, 1080 for
 * socks5); IPv6 hosts keep their brackets. Throws {@linkcode KubeConfigError}.
 */
export function serverHostPort(server: string, what = "server"): string {
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    throw new KubeConfigError(`kubeconfig ${what} "${server}" is not a URL`);
  }
  const defaults: Record<string, string> = { "https:": "443", "http:": "80", "socks5:": "1080" };
  const port = url.port !== "" ? url.port : defaults[url.protocol] ?? "";
  if (url.hostname === "" || port === "") {
    throw new KubeConfigError(`kubeconfig ${what} "${server}" has no host or port`);
  }
  return `${url.hostname}:${port}`;
}

/** `https://host:port` of the in-cluster API server (IPv6 literals bracketed). */
export function inClusterServer(host: string, port: string): string {
  return `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/**
 * Read and merge kubeconfig files (in order, like kubectl's `KUBECONFIG` list) and resolve the
 * current context. Throws {@linkcode KubeConfigError} for an unreadable file, no usable
 * current context, and every refused feature.
 */
export async function resolveKubeconfig(paths: readonly string[]): Promise<ResolvedKubeconfig> {
  const { parse } = await loadYaml();
  const clusters = new Map<string, Located>();
  const users = new Map<string, Located>();
  const contexts = new Map<string, Entry>();
  let current: string | undefined;
  for (const file of paths) {
    let doc: Entry;
    try {
      doc = record(parse(await readBoundedText(file)));
    } catch (error) {
      throw new KubeConfigError(
        `Cannot read kubeconfig ${file}: ${(error as Error).message}. ` +
          "Pass --kubeconfig with a readable kubeconfig file",
        { cause: error },
      );
    }
    for (const [name, entry] of named(doc.clusters, "cluster")) {
      if (!clusters.has(name)) clusters.set(name, { entry, file });
    }
    for (const [name, entry] of named(doc.users, "user")) {
      if (!users.has(name)) users.set(name, { entry, file });
    }
    for (const [name, entry] of named(doc.contexts, "context")) {
      if (!contexts.has(name)) contexts.set(name, entry);
    }
    current ??= str(doc["current-context"]);
  }
  const where = `kubeconfig ${paths.join(":")}`;
  if (!current || !contexts.has(current)) {
    throw new KubeConfigError(
      `${where} has no usable current-context; set one with 'kubectl config use-context NAME'`,
    );
  }
  const context = contexts.get(current)!;
  const cluster = clusters.get(String(context.cluster ?? ""));
  const server = str(cluster?.entry.server);
  if (!cluster || !server) {
    throw new KubeConfigError(`${where}: context "${current}" names no cluster with a server`);
  }
  const resolved = resolveCluster(cluster, { where, server, context: current });
  const userName = String(context.user ?? "");
  const user = users.get(userName);
  if (user) resolveUser(user, resolved, `${where}: user "${userName}"`);
  for (const pem of [resolved.ca, resolved.clientCert, resolved.clientKey]) {
    if (pem && "file" in pem) resolved.files.push(pem.file);
  }
  if (resolved.tokenFile) resolved.files.push(resolved.tokenFile);
  resolved.files = [...new Set(resolved.files)];
  return resolved;
}

function resolveCluster(
  cluster: Located,
  options: { where: string; server: string; context: string },
): ResolvedKubeconfig {
  const { where, context } = options;
  const server = options.server.replace(/\/+$/, "");
  const protocol = /^([a-z0-9+.-]+):/i.exec(server)?.[1]?.toLowerCase();
  if (protocol !== "https" && protocol !== "http") {
    throw new KubeConfigError(
      `${where}: cluster server "${server}" must be an https:// or http:// URL`,
    );
  }
  serverHostPort(server);
  const https = protocol === "https";
  const e = cluster.entry;
  const ca = pemSource(cluster, "certificate-authority", where);
  if (https && e["insecure-skip-tls-verify"] === true) {
    throw new KubeConfigError(
      `insecure-skip-tls-verify is not supported for ${server} (${where}, context ` +
        `"${context}"): set certificate-authority(-data) in the kubeconfig`,
    );
  }
  const serverName = str(e["tls-server-name"]);
  if (https && serverName && serverName !== new URL(server).hostname.replace(/^\[|\]$/g, "")) {
    throw new KubeConfigError(
      `${where}: tls-server-name "${serverName}" differs from the host of ${server}, and the ` +
        "agent's HTTP client (Deno fetch) cannot verify the certificate against another name. " +
        `Use a server URL with that host name (https://${serverName}:PORT, resolvable from the ` +
        "node) or a certificate whose SANs include the server's address",
    );
  }
  const proxyUrl = str(e["proxy-url"]);
  if (proxyUrl) serverHostPort(proxyUrl, "proxy-url");
  return {
    context,
    server,
    ca: https ? ca : undefined,
    proxyUrl,
    files: [],
  };
}

function resolveUser(user: Located, into: ResolvedKubeconfig, where: string): void {
  const e = user.entry;
  for (const plugin of ["exec", "auth-provider"]) {
    if (e[plugin] !== undefined && e[plugin] !== null) {
      throw new KubeConfigError(
        `${where} authenticates with an ${plugin} plugin, which needs to run a program; the ` +
          "agent never gets subprocess permission. Use a ServiceAccount token (token or " +
          "tokenFile) or a client certificate",
      );
    }
  }
  if (str(e.username) || str(e.password)) {
    throw new KubeConfigError(
      `${where} uses basic auth (username/password), which the agent does not support ` +
        "(Kubernetes removed it in 1.19). Use a ServiceAccount token (token or tokenFile) or a " +
        "client certificate",
    );
  }
  into.token = str(e.token);
  const tokenFile = str(e.tokenFile);
  if (!into.token && tokenFile) into.tokenFile = posix.resolve(posix.dirname(user.file), tokenFile);
  into.clientCert = pemSource(user, "client-certificate", where);
  into.clientKey = pemSource(user, "client-key", where);
  if (Boolean(into.clientCert) !== Boolean(into.clientKey)) {
    throw new KubeConfigError(
      `${where} has a client certificate without a key or a key without a certificate: set ` +
        "both client-certificate(-data) and client-key(-data)",
    );
  }
  if (into.clientCert && into.server.startsWith("http:")) {
    throw new KubeConfigError(
      `${where} has a client certificate, which needs an https:// server (got ${into.server})`,
    );
  }
}

/**
 * The in-cluster service account: `https://KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT`,
 * `<dir>/ca.crt`, `<dir>/token`. Returns undefined when the variables are unset.
 */
export function inClusterConfig(
  options: { serviceAccountDir?: string; env?: (name: string) => string | undefined } = {},
): ResolvedKubeconfig | undefined {
  const get = options.env ?? env;
  const host = get("KUBERNETES_SERVICE_HOST");
  const port = get("KUBERNETES_SERVICE_PORT");
  if (!host || !port) return undefined;
  const dir = options.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  const ca = `${dir}/ca.crt`;
  const tokenFile = `${dir}/token`;
  return {
    context: "inClusterContext",
    server: inClusterServer(host, port),
    ca: { file: ca },
    tokenFile,
    files: [ca, tokenFile],
  };
}

/** Reads the bearer token for each request; a token file is re-read when it rotates. */
export class TokenSource {
  #static?: string;
  #file?: string;
  #cached?: string;
  #stamp = "";
  #readAt = -Infinity;
  #now: () => number;

  constructor(config: Pick<ResolvedKubeconfig, "token" | "tokenFile">, now = Date.now) {
    this.#static = config.token;
    this.#file = config.tokenFile;
    this.#now = now;
  }

  /**
   * The current token (undefined when the configuration has none). A token file is re-read
   * when its mtime or size changed (the kubelet rotates projected tokens by swapping a
   * symlink) and at least every {@linkcode TOKEN_REFRESH_MS}. Throws KubeConfigError when the
   * file cannot be read or is empty.
   */
  async get(): Promise<string | undefined> {
    if (this.#static !== undefined || this.#file === undefined) return this.#static;
    const file = this.#file;
    try {
      const info = await Deno.stat(file);
      const stamp = `${info.mtime?.getTime()}:${info.size}:${info.ino}`;
      const now = this.#now();
      if (
        this.#cached === undefined || stamp !== this.#stamp ||
        now - this.#readAt >= TOKEN_REFRESH_MS
      ) {
        const token = (await readBoundedText(file)).trim();
        if (token === "") throw new Error("the file is empty");
        this.#cached = token;
        this.#stamp = stamp;
        this.#readAt = now;
      }
      return this.#cached;
    } catch (error) {
      throw new KubeConfigError(
        `Cannot read the bearer token file ${file}: ${(error as Error).message}`,
        { cause: error },
      );
    }
  }
}

/** Read a PEM source (bounded). Throws KubeConfigError naming the file. */
export async function readPem(
  source: PemSource | undefined,
  what: string,
): Promise<string | undefined> {
  if (!source) return undefined;
  if ("data" in source) return source.data;
  try {
    return await readBoundedText(source.file);
  } catch (error) {
    throw new KubeConfigError(
      `Cannot read the ${what} ${source.file}: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
}
