/**
 * Minimal Kubernetes API client on Deno's `fetch`: JSON GET/POST and streaming GET (watches)
 * under a request timeout, with the bearer token of the loaded configuration (re-read when its
 * file rotates) and one `Deno.HttpClient` carrying the CA, client certificate and proxy.
 * The configuration comes from the project's own loader (`kubeconfig.ts`); no client library
 * is loaded at run time.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import {
  inClusterConfig,
  KubeConfigError,
  readPem,
  type ResolvedKubeconfig,
  resolveKubeconfig,
  SERVICE_ACCOUNT_DIR,
  TokenSource,
} from "./kubeconfig.ts";

/** Options of `loadKubeClient`. */
export interface KubeClientOptions {
  /**
   * Explicit kubeconfig (`--kubeconfig`, a `:`-separated list merges like `KUBECONFIG`); else
   * in-cluster, else `KUBECONFIG`/`~/.kube/config`.
   */
  kubeconfigPath?: string;
  /** Timeout of non-streaming requests and of a watch's response headers (default 30 s). */
  requestTimeoutMs?: number;
  /** Service account mount for in-cluster mode (default {@linkcode SERVICE_ACCOUNT_DIR}). */
  serviceAccountDir?: string;
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

/** Options of the `KubeClient` constructor. */
export interface KubeClientInit {
  /** Bearer token for each request. */
  tokens: TokenSource;
  /** HTTP client with the CA / client certificate / proxy, when the default one does not do. */
  httpClient?: Deno.HttpClient;
  requestTimeoutMs?: number;
}

/**
 * A connection to one API server. Create with `loadKubeClient`; `close()` releases the HTTP
 * client.
 */
export class KubeClient {
  #server: string;
  #context: string;
  #tokens: TokenSource;
  #httpClient: Deno.HttpClient | undefined;
  #timeoutMs: number;

  constructor(config: Pick<ResolvedKubeconfig, "server" | "context">, init: KubeClientInit) {
    this.#server = config.server.replace(/\/+$/, "");
    this.#context = config.context;
    this.#tokens = init.tokens;
    this.#httpClient = init.httpClient;
    this.#timeoutMs = init.requestTimeoutMs ?? 30_000;
  }

  /** API server URL, e.g. `https://10.0.0.1:443`. */
  get server(): string {
    return this.#server;
  }

  /** Name of the loaded context (`inClusterContext` in a pod). */
  get context(): string {
    return this.#context;
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
    this.#httpClient?.close();
    this.#httpClient = undefined;
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
    // A string, not a URL object: fetch parses it once anyway (a URL and its searchParams cost
    // more than the rest of an Event POST's set-up under --lite-mode).
    let url = this.#server + path;
    let separator = "?";
    for (const key in query) {
      const value = query[key];
      if (value === undefined) continue;
      url += `${separator}${encodeURIComponent(key)}=${encodeURIComponent(String(value))}`;
      separator = "&";
    }
    const what = `${method} ${path}`;
    // Name/value pairs, not a Headers object: fetch copies its init into a new Headers either way
    // (building one here and iterating it again cost as much as the rest of a POST's set-up).
    const headers: [string, string][] = [
      ["Accept", "application/json"],
      ["User-Agent", "gpu-power-agent"],
    ];
    try {
      const token = await this.#tokens.get();
      if (token !== undefined) headers.push(["Authorization", `Bearer ${token}`]);
    } catch (error) {
      // A token file being rotated or briefly missing: retried like a failed request.
      throw new KubeApiError(
        `Kubernetes authentication failed before ${what}: ${(error as Error).message}`,
        { status: 0, cause: error },
      );
    }
    if (options.body !== undefined) headers.push(["Content-Type", "application/json"]);
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
        headers,
        body: options.body,
        signal,
      };
      if (this.#httpClient) init.client = this.#httpClient;
      const response = await fetch(url, init);
      status = response.status;
      if (!response.ok || !response.body) {
        throw await this.#statusError(response, method, path);
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
}

/** The configuration to use: explicit path, else in-cluster, else KUBECONFIG / ~/.kube/config. */
async function resolveConfig(options: KubeClientOptions): Promise<ResolvedKubeconfig> {
  const log = getLogger(["gpu-power-agent", "kubernetes"]);
  const list = (value: string) => value.split(":").filter((p) => p !== "");
  if (options.kubeconfigPath) {
    const config = await resolveKubeconfig(list(options.kubeconfigPath));
    log.debug("Kubernetes config loaded from {path}", { path: options.kubeconfigPath });
    return config;
  }
  const dir = options.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
  const inCluster = inClusterConfig({ serviceAccountDir: dir });
  if (inCluster && exists(`${dir}/token`)) {
    log.debug("Kubernetes config: in-cluster service account");
    return inCluster;
  }
  const kubeconfigEnv = env("KUBECONFIG");
  const home = env("HOME");
  const paths = kubeconfigEnv
    ? list(kubeconfigEnv)
    : home && exists(`${home}/.kube/config`)
    ? [`${home}/.kube/config`]
    : [];
  if (paths.length > 0) {
    const config = await resolveKubeconfig(paths);
    log.debug("Kubernetes config loaded from {path}", { path: paths.join(":") });
    return config;
  }
  throw new KubeConfigError(
    "No Kubernetes configuration: not running in a pod with a service account " +
      `(${dir}/token and KUBERNETES_SERVICE_HOST) and no --kubeconfig, ` +
      "KUBECONFIG or ~/.kube/config",
  );
}

/**
 * Load the Kubernetes configuration (`kubeconfigPath` when given, else the in-cluster service
 * account, else `KUBECONFIG` or `~/.kube/config`), read its CA and client certificate, and
 * return a client. Throws `KubeConfigError` when none is usable or a feature is refused.
 */
export async function loadKubeClient(options: KubeClientOptions = {}): Promise<KubeClient> {
  const config = await resolveConfig(options);
  const https = config.server.startsWith("https:");
  const ca = https ? await readPem(config.ca, "certificate authority") : undefined;
  const cert = https ? await readPem(config.clientCert, "client certificate") : undefined;
  const key = https ? await readPem(config.clientKey, "client key") : undefined;
  const tokens = new TokenSource(config);
  // Fail now, not at the first request, when the token file is unreadable.
  await tokens.get();
  let httpClient: Deno.HttpClient | undefined;
  if (ca || cert || config.proxyUrl) {
    const clientOptions: Deno.CreateHttpClientOptions & Partial<Deno.TlsCertifiedKeyPem> = {};
    if (ca) clientOptions.caCerts = [ca];
    if (cert && key) {
      clientOptions.cert = cert;
      clientOptions.key = key;
    }
    if (config.proxyUrl) {
      clientOptions.proxy = {
        url: config.proxyUrl,
        transport: config.proxyUrl.startsWith("socks5") ? "socks5" : undefined,
      };
    }
    try {
      httpClient = Deno.createHttpClient(
        clientOptions as Deno.CreateHttpClientOptions & Deno.TlsCertifiedKeyPem,
      );
    } catch (error) {
      throw new KubeConfigError(
        `Cannot use the TLS material of Kubernetes context "${config.context}" ` +
          `(certificate authority, client certificate or key): ${(error as Error).message}`,
        { cause: error },
      );
    }
  }
  return new KubeClient(config, {
    tokens,
    httpClient,
    requestTimeoutMs: options.requestTimeoutMs,
  });
}
