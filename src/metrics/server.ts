/**
 * The agent's one HTTP server: `/metrics`, `/healthz` and `/readyz` (Deno.serve).
 */

import { getLogger } from "@logtape/logtape";

/** A parsed `--metrics-address`. */
export interface ListenAddress {
  /** Host name or IP address, IPv6 without brackets (`::1`). */
  hostname: string;
  port: number;
}

/** Readiness as reported by the agent. */
export interface Readiness {
  ready: boolean;
  /** Why the agent is not ready; sent in the 503 body. */
  reason?: string;
}

/** Options of {@link startHealthServer}. */
export interface HealthServerOptions {
  /** Renders the metrics text (e.g. `PrometheusTelemetry.metrics`). */
  metrics: () => Promise<string>;
  /** Content type of the metrics text; default Prometheus text format 0.0.4. */
  contentType?: string;
  /** Current readiness, asked on every `/readyz` request. */
  ready: () => Readiness;
}

/** A running health server. */
export interface HealthServer {
  /** Bound host (IPv6 without brackets). */
  hostname: string;
  /** Bound port (the real one when 0 was asked for). */
  port: number;
  /** Stop listening and wait for open requests to finish. Idempotent. */
  close(): Promise<void>;
}

const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";
const TEXT = "text/plain; charset=utf-8";
const PATHS = new Set(["/metrics", "/healthz", "/readyz"]);

function invalidAddress(address: string): Error {
  return new Error(
    `Invalid --metrics-address ${JSON.stringify(address)}: expected HOST:PORT ` +
      `(e.g. 127.0.0.1:9402, 0.0.0.0:9402, [::1]:9402; port 0-65535) or "off"`,
  );
}

/**
 * Parse a `--metrics-address` value: `HOST:PORT`, `[IPV6]:PORT`, `:PORT` (all IPv4 interfaces)
 * or `off` (returns null). Throws an Error naming the flag when the value is malformed.
 */
export function parseListenAddress(address: string): ListenAddress | null {
  const value = address.trim();
  if (value === "off") return null;
  const match = /^\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]:(\d{1,5})$/.exec(value) ??
    /^([^\s:[\]/]*):(\d{1,5})$/.exec(value);
  if (!match) throw invalidAddress(address);
  const port = Number(match[2]);
  if (!Number.isInteger(port) || port > 65535) throw invalidAddress(address);
  return { hostname: match[1] === "" ? "0.0.0.0" : match[1], port };
}

function text(body: string, status: number, head: boolean, headers: HeadersInit = {}): Response {
  return new Response(head ? null : body, {
    status,
    headers: { "content-type": TEXT, "cache-control": "no-store", ...headers },
  });
}

/**
 * Start the health/metrics server on `address` (see {@link parseListenAddress}); resolves to
 * null when the address is `off`. Only GET and HEAD are allowed (else 405 with `Allow`); unknown
 * paths get 404. `/healthz` answers 200 `ok`; `/readyz` 200 `ready` or 503 `not ready: <reason>`.
 */
export function startHealthServer(
  address: string,
  options: HealthServerOptions,
): Promise<HealthServer | null> {
  let listen: ListenAddress | null;
  try {
    listen = parseListenAddress(address);
  } catch (error) {
    return Promise.reject(error);
  }
  if (listen === null) return Promise.resolve(null);
  const contentType = options.contentType ?? PROMETHEUS_CONTENT_TYPE;

  const handler = async (request: Request): Promise<Response> => {
    const path = new URL(request.url).pathname;
    if (!PATHS.has(path)) return text("not found\n", 404, request.method === "HEAD");
    if (request.method !== "GET" && request.method !== "HEAD") {
      return text("method not allowed\n", 405, false, { allow: "GET, HEAD" });
    }
    const head = request.method === "HEAD";
    if (path === "/healthz") return text("ok\n", 200, head);
    if (path === "/readyz") {
      let readiness: Readiness;
      try {
        readiness = options.ready();
      } catch (error) {
        readiness = { ready: false, reason: `readiness check failed: ${String(error)}` };
      }
      return readiness.ready
        ? text("ready\n", 200, head)
        : text(`not ready: ${readiness.reason ?? "unknown reason"}\n`, 503, head);
    }
    // /metrics. HEAD does not render: rendering reads every GPU.
    if (head) return text("", 200, true, { "content-type": contentType });
    try {
      return text(await options.metrics(), 200, false, { "content-type": contentType });
    } catch (error) {
      getLogger(["gpu-power-agent", "metrics"]).error("Cannot render metrics: {error}", {
        error: String(error),
      });
      return text(`cannot render metrics: ${String(error)}\n`, 500, false);
    }
  };

  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve({
      hostname: listen.hostname,
      port: listen.port,
      onListen() {},
      handler,
    });
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    return Promise.reject(
      new Error(
        `Cannot listen on --metrics-address ${address}: ${detail}. ` +
          `Pick a free HOST:PORT or pass --metrics-address off`,
        { cause: error },
      ),
    );
  }
  let closing: Promise<void> | undefined;
  return Promise.resolve({
    hostname: server.addr.hostname,
    port: server.addr.port,
    close() {
      closing ??= server.shutdown();
      return closing;
    },
  });
}
