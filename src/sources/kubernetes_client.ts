/**
 * Minimal Kubernetes API client: `@kubernetes/client-node`'s `KubeConfig` loads the kubeconfig
 * or the in-cluster service account and authenticates every request (token, token file, exec
 * plugin, OIDC, client certificate…); the requests themselves go through Deno's `fetch`.
 *
 * The library's own transport (undici) and generated API cost ~60-80 MiB RSS under Deno, so by
 * default `KubeConfig` comes from `kubernetes_kubeconfig_bundle.js`, a tree-shaken build of the
 * library without them (~6 MiB); `library: "npm"` imports the package module instead.
 */
import { getLogger } from "@logtape/logtape";
import type { KubeConfig } from "./kubernetes_kubeconfig_bundle.js";

/** In-cluster service account files (as mounted by the kubelet). */
export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** Which copy of `KubeConfig` to load. */
export type KubeConfigLibrary = "bundle" | "npm";

/** Options of `loadKubeClient`. */
export interface KubeClientOptions {
  /** Explicit kubeconfig (`--kubeconfig`); else in-cluster, else `KUBECONFIG`/`~/.kube/config`. */
  kubeconfigPath?: string;
  /** `bundle` (default, small) or `npm` (the package module, ~60 MiB more RSS). */
  library?: KubeConfigLibrary;
  /** Timeout of non-streaming requests and of a watch's response headers (default 30 s). */
  requestTimeoutMs?: number;
}

/** The configuration cannot be loaded or used (missing, unreadable, unsupported). */
export class KubeConfigError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KubeConfigError";
  }
}

/** The API server answered with an error status, or could not be reached. */
export class KubeApiError extends Error {
  /** HTTP status, or 0 when there was no response (connection refused, timeout, reset). */
  readonly status: number;
  /** `reason` of the Kubernetes Status object (`Forbidden`, `Expired`…), if any. */
  readonly reason?: string;

  constructor(
    message: string,
    options: { status: number; reason?: string; cause?: unknown },
  ) {
    super(message, { cause: options.cause });
    this.name = "KubeApiError";
    this.status = options.status;
    this.reason = options.reason;
  }
}

/** Query parameters; undefined values are left out. */
export type KubeQuery = Record<string, string | number | boolean | undefined>;

interface RequestSetup {
  headers: Headers;
  client?: Deno.HttpClient;
}

type HttpsOptions = {
  headers?: Record<string, string>;
  ca?: Uint8Array | string;
  cert?: Uint8Array | string;
  key?: Uint8Array | string;
  auth?: string;
  rejectUnauthorized?: boolean;
  servername?: string;
};

function pem(value: Uint8Array | string | undefined): string | undefined {
  if (value === undefined || value === null) return undefined;
  return typeof value === "string" ? value : new TextDecoder().decode(value);
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** An environment variable, or undefined when unset or not permitted (scoped --allow-env). */
function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

function homeKubeconfig(): string | undefined {
  const home = env("HOME");
  return home ? `${home}/.kube/config` : undefined;
}

async function importKubeConfig(library: KubeConfigLibrary): Promise<typeof KubeConfig> {
  if (library === "npm") {
    return (await import("@kubernetes/client-node/dist/config.js")).KubeConfig;
  }
  return (await import("./kubernetes_kubeconfig_bundle.js")).KubeConfig;
}

/**
 * A connection to one API server. Create with `loadKubeClient`; `close()` releases the HTTP
 * client.
 */
export class KubeClient {
  #kc: KubeConfig;
  #server: string;
  #timeoutMs: number;
  #clients = new Map<string, Deno.HttpClient>();
  #warned = new Set<string>();

  constructor(kc: KubeConfig, options: { requestTimeoutMs?: number } = {}) {
    const cluster = kc.getCurrentCluster();
    if (!cluster) {
      throw new KubeConfigError(
        "Kubernetes configuration has no current cluster: set current-context in the kubeconfig",
      );
    }
    this.#kc = kc;
    this.#server = cluster.server.replace(/\/+$/, "");
    this.#timeoutMs = options.requestTimeoutMs ?? 30_000;
  }

  /** API server URL, e.g. `https://10.0.0.1:443`. */
  get server(): string {
    return this.#server;
  }

  /** Name of the loaded context (`inClusterContext` in a pod). */
  get context(): string {
    return this.#kc.getCurrentContext();
  }

  /** GET a JSON document. Throws `KubeApiError`. */
  async getJson(path: string, query: KubeQuery = {}, signal?: AbortSignal): Promise<unknown> {
    return await this.#request("GET", path, query, { signal, read: true });
  }

  /** POST a JSON document, return the response document. Throws `KubeApiError`. */
  async postJson(path: string, body: unknown, signal?: AbortSignal): Promise<unknown> {
    return await this.#request("POST", path, {}, {
      signal,
      read: true,
      body: JSON.stringify(body),
    });
  }

  /**
   * Open a streaming GET (a watch): resolves with the body once the server answered 200
   * (within the request timeout); the stream lasts until the server ends it or `signal` aborts.
   * Throws `KubeApiError`.
   */
  async stream(
    path: string,
    query: KubeQuery,
    signal: AbortSignal,
  ): Promise<ReadableStream<Uint8Array>> {
    return await this.#request("GET", path, query, { signal, read: false }) as ReadableStream<
      Uint8Array
    >;
  }

  /** Release HTTP clients. Idempotent. */
  close(): void {
    for (const client of this.#clients.values()) client.close();
    this.#clients.clear();
  }

  /**
   * One request under the request timeout: with `read`, the whole JSON body is read within it;
   * without, only the response headers are awaited and the body stream is returned.
   */
  async #request(
    method: string,
    path: string,
    query: KubeQuery,
    options: { signal?: AbortSignal; read: boolean; body?: string },
  ): Promise<unknown> {
    const url = new URL(this.#server + path);
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined) url.searchParams.set(key, String(value));
    }
    const what = `${method} ${url.pathname}`;
    let setup: RequestSetup;
    try {
      setup = await this.#setup();
    } catch (error) {
      if (error instanceof KubeConfigError) throw error;
      throw new KubeApiError(
        `Kubernetes authentication failed before ${what}: ${(error as Error).message}`,
        { status: 0, cause: error },
      );
    }
    if (options.body !== undefined) setup.headers.set("Content-Type", "application/json");
    // One controller for both the caller's signal and the timeout (AbortSignal.any() only
    // holds its result weakly: once fetch has answered, aborting could be lost to GC).
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new DOMException("request timed out", "TimeoutError"));
    }, this.#timeoutMs);
    const onAbort = () => controller.abort(options.signal?.reason);
    if (options.signal?.aborted) onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    const signal = controller.signal;
    let status = 0;
    try {
      const init: RequestInit & { client?: Deno.HttpClient } = {
        method,
        headers: setup.headers,
        body: options.body,
        signal,
      };
      if (setup.client) init.client = setup.client;
      const response = await fetch(url, init);
      status = response.status;
      if (!response.ok || !response.body) {
        throw await this.#statusError(response, method, url.pathname);
      }
      if (!options.read) return response.body;
      const body = await response.json();
      options.signal?.removeEventListener("abort", onAbort);
      return body;
    } catch (error) {
      options.signal?.removeEventListener("abort", onAbort);
      if (error instanceof KubeApiError) throw error;
      throw new KubeApiError(
        timedOut
          ? `${what} on ${this.#server} timed out after ${this.#timeoutMs} ms`
          : `${what} on ${this.#server} failed: ${(error as Error).message}`,
        { status, reason: timedOut ? "Timeout" : undefined, cause: error },
      );
    } finally {
      clearTimeout(timer);
    }
  }

  async #statusError(response: Response, method: string, path: string): Promise<KubeApiError> {
    let reason: string | undefined;
    let detail = "";
    try {
      const text = await response.text();
      const status = JSON.parse(text) as { reason?: string; message?: string };
      reason = typeof status.reason === "string" ? status.reason : undefined;
      detail = typeof status.message === "string" ? `: ${status.message}` : "";
    } catch {
      // Not a Status object.
    }
    const hint = response.status === 401
      ? " (credentials rejected: check the service account token or kubeconfig user)"
      : response.status === 403
      ? " (RBAC: the service account needs get/list/watch on pods" +
        " — cluster-wide, or pass --namespace when the Role is namespaced)"
      : "";
    return new KubeApiError(
      `${method} ${path} on ${this.#server}: HTTP ${response.status} ${response.statusText}` +
        `${detail}${hint}`,
      { status: response.status, reason },
    );
  }

  async #setup(): Promise<RequestSetup> {
    const opts: HttpsOptions = {};
    // The library resolves the credentials on every call (token files are re-read, exec
    // plugin tokens refreshed when expired).
    await this.#kc.applyToHTTPSOptions(
      opts as unknown as Parameters<KubeConfig["applyToHTTPSOptions"]>[0],
    );
    const headers = new Headers({
      "Accept": "application/json",
      "User-Agent": "gpu-power-agent",
    });
    for (const [key, value] of Object.entries(opts.headers ?? {})) headers.set(key, `${value}`);
    if (opts.auth) headers.set("Authorization", `Basic ${btoa(opts.auth)}`);
    const https = this.#server.startsWith("https:");
    if (https && opts.rejectUnauthorized === false) {
      throw new KubeConfigError(
        `insecure-skip-tls-verify is not supported for ${this.#server}: set ` +
          "certificate-authority(-data) in the kubeconfig",
      );
    }
    if (opts.servername && !this.#warned.has("servername")) {
      this.#warned.add("servername");
      getLogger(["gpu-power-agent", "kubernetes"]).warn(
        "kubeconfig tls-server-name {name} is not supported and is ignored",
        { name: opts.servername },
      );
    }
    const proxyUrl = this.#kc.getCurrentCluster()?.proxyUrl;
    const ca = https ? pem(opts.ca) : undefined;
    const cert = https ? pem(opts.cert) : undefined;
    const key = https ? pem(opts.key) : undefined;
    if (!ca && !cert && !proxyUrl) return { headers };
    const fingerprint = JSON.stringify([ca, cert, key, proxyUrl]);
    let client = this.#clients.get(fingerprint);
    if (!client) {
      const options: Deno.CreateHttpClientOptions & { cert?: string; key?: string } = {};
      if (ca) options.caCerts = [ca];
      if (cert && key) {
        options.cert = cert;
        options.key = key;
      }
      if (proxyUrl) {
        options.proxy = {
          url: proxyUrl,
          transport: proxyUrl.startsWith("socks5") ? "socks5" : undefined,
        };
      }
      client = Deno.createHttpClient(options as Deno.CreateHttpClientOptions);
      this.#clients.set(fingerprint, client);
    }
    return { headers, client };
  }
}

/**
 * Load the Kubernetes configuration with the client library: `kubeconfigPath` when given, else
 * the in-cluster service account (`KUBERNETES_SERVICE_HOST` + token), else `KUBECONFIG` or
 * `~/.kube/config`. Throws `KubeConfigError` when none is usable.
 */
export async function loadKubeClient(options: KubeClientOptions = {}): Promise<KubeClient> {
  const KubeConfigClass = await importKubeConfig(options.library ?? "bundle");
  const kc = new KubeConfigClass();
  const log = getLogger(["gpu-power-agent", "kubernetes"]);
  try {
    if (options.kubeconfigPath) {
      // A KUBECONFIG-style list merges like kubectl: the first file's current-context wins.
      const [first, ...rest] = options.kubeconfigPath.split(":").filter((p) => p !== "");
      kc.loadFromFile(first);
      for (const path of rest) {
        const more = new KubeConfigClass();
        more.loadFromFile(path);
        kc.mergeConfig(more, Boolean(kc.getCurrentContext()));
      }
      log.debug("Kubernetes config loaded from {path}", { path: options.kubeconfigPath });
    } else if (
      env("KUBERNETES_SERVICE_HOST") && env("KUBERNETES_SERVICE_PORT") &&
      exists(`${SERVICE_ACCOUNT_DIR}/token`)
    ) {
      kc.loadFromCluster();
      log.debug("Kubernetes config: in-cluster service account");
    } else if (env("KUBECONFIG") || exists(homeKubeconfig() ?? "")) {
      kc.loadFromDefault();
      log.debug("Kubernetes config loaded from KUBECONFIG or ~/.kube/config");
    } else {
      throw new KubeConfigError(
        "No Kubernetes configuration: not running in a pod with a service account " +
          `(${SERVICE_ACCOUNT_DIR}/token and KUBERNETES_SERVICE_HOST) and no --kubeconfig, ` +
          "KUBECONFIG or ~/.kube/config",
      );
    }
  } catch (error) {
    if (error instanceof KubeConfigError) throw error;
    throw new KubeConfigError(
      `Cannot load the Kubernetes configuration${
        options.kubeconfigPath ? ` from ${options.kubeconfigPath}` : ""
      }: ${(error as Error).message}`,
      { cause: error },
    );
  }
  return new KubeClient(kc, { requestTimeoutMs: options.requestTimeoutMs });
}
