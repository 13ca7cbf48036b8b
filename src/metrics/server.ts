/**
 * The agent's one HTTP server: `/metrics`, `/healthz` and `/readyz`.
 *
 * A small HTTP/1.1 server on `Deno.listen` (one request per connection, `Connection: close`)
 * rather than `Deno.serve`, because the metrics port may be reachable from the whole cluster
 * and must never take the agent down: neither `Deno.serve` nor `node:http` under Deno 2.9.6
 * closes a connection that never sends a request, and `node:http`'s `maxConnections` refuses
 * new connections (so `/healthz` fails) instead of shedding idle ones. Here:
 *
 * - at most `maxConnections` (default 64) connections are open; a new one beyond that closes
 *   the oldest connection still waiting for its request, so a flood of idle sockets cannot
 *   starve the kubelet's probes or Prometheus;
 * - a connection must deliver its request (≤ 8 KiB of headers) and take its answer within
 *   `connectionTimeoutMs` (default 15 s), else it is closed;
 * - accept errors (`EMFILE`, `ENFILE`…) and handler exceptions are counted (`onError`), logged
 *   once per change of state, and the server keeps serving (a failing handler answers 500).
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
  /** Most connections open at once (default 64); the oldest waiting one is shed beyond it. */
  maxConnections?: number;
  /** A connection is closed this long after it was accepted (default 15 s). */
  connectionTimeoutMs?: number;
  /**
   * Called once per server failure the agent survives: `accept` (e.g. too many open files),
   * `handler` (a request handler threw), `connection_limit` (a connection was shed),
   * `timeout` (a connection sent no complete request in time), `write` (the answer could not
   * be sent). Must not throw (exceptions are ignored).
   */
  onError?: (reason: MetricsServerErrorReason) => void;
}

/** Reasons passed to {@link HealthServerOptions.onError}. */
export type MetricsServerErrorReason =
  | "accept"
  | "handler"
  | "connection_limit"
  | "timeout"
  | "write";

/** A running health server. */
export interface HealthServer {
  /** Bound host (IPv6 without brackets). */
  hostname: string;
  /** Bound port (the real one when 0 was asked for). */
  port: number;
  /** Connections open now. */
  readonly connections: number;
  /** Stop listening and close every connection. Idempotent. */
  close(): Promise<void>;
}

const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";
const TEXT = "text/plain; charset=utf-8";
const PATHS = new Set(["/metrics", "/healthz", "/readyz"]);
const MAX_HEADER_BYTES = 8 * 1024;
const DEFAULT_MAX_CONNECTIONS = 64;
const DEFAULT_CONNECTION_TIMEOUT_MS = 15_000;
const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
};
const encoder = new TextEncoder();

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

/** An answer before serialisation. */
interface Answer {
  status: number;
  body: string;
  head: boolean;
  headers: Record<string, string>;
}

function text(
  body: string,
  status: number,
  head: boolean,
  headers: Record<string, string> = {},
): Answer {
  return { status, body, head, headers: { "content-type": TEXT, ...headers } };
}

function serialize(answer: Answer): Uint8Array {
  const body = encoder.encode(answer.body);
  const lines = [`HTTP/1.1 ${answer.status} ${REASONS[answer.status] ?? "Unknown"}`];
  for (const [name, value] of Object.entries(answer.headers)) lines.push(`${name}: ${value}`);
  lines.push("cache-control: no-store", `content-length: ${body.length}`, "connection: close");
  const headBytes = encoder.encode(lines.join("\r\n") + "\r\n\r\n");
  if (answer.head) return headBytes;
  const out = new Uint8Array(headBytes.length + body.length);
  out.set(headBytes);
  out.set(body, headBytes.length);
  return out;
}

/** Index just past the `\r\n\r\n` (or `\n\n`) ending the request head, or -1. */
function headEnd(bytes: Uint8Array, length: number): number {
  for (let i = 0; i < length; i++) {
    if (bytes[i] !== 10) continue;
    if (i >= 1 && bytes[i - 1] === 10) return i + 1;
    if (i >= 3 && bytes[i - 1] === 13 && bytes[i - 2] === 10 && bytes[i - 3] === 13) return i + 1;
  }
  return -1;
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
  let listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>;
  try {
    listener = Deno.listen({ hostname: listen.hostname, port: listen.port, transport: "tcp" });
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
  return Promise.resolve(serveHealth(listener, options));
}

/**
 * Serve `/metrics`, `/healthz` and `/readyz` on an open listener (what
 * {@link startHealthServer} does after listening; tests pass a listener whose `accept` fails).
 * `close()` closes the listener.
 */
export function serveHealth(
  listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>,
  options: HealthServerOptions,
): HealthServer {
  return new MetricsHttpServer(listener, options);
}

/** Answer one parsed request. Never throws for a failing callback (500 instead). */
async function route(
  method: string,
  path: string,
  options: HealthServerOptions,
): Promise<Answer> {
  if (!PATHS.has(path)) return text("not found\n", 404, method === "HEAD");
  if (method !== "GET" && method !== "HEAD") {
    return text("method not allowed\n", 405, false, { allow: "GET, HEAD" });
  }
  const head = method === "HEAD";
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
  const contentType = options.contentType ?? PROMETHEUS_CONTENT_TYPE;
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
}

interface Connection {
  conn: Deno.TcpConn;
  /** True until the request head arrived (such connections are shed first). */
  waiting: boolean;
  closed: boolean;
  timer: ReturnType<typeof setTimeout>;
}

class MetricsHttpServer implements HealthServer {
  readonly hostname: string;
  readonly port: number;
  #listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>;
  #o: HealthServerOptions;
  #max: number;
  #timeoutMs: number;
  /** Open connections, oldest first (Map keeps insertion order). */
  #open = new Map<Deno.TcpConn, Connection>();
  #closing: Promise<void> | undefined;
  #stopped = false;
  #acceptLoop: Promise<void>;
  #acceptFailing = false;
  #handlerFailing = false;

  constructor(listener: Deno.Listener<Deno.TcpConn, Deno.NetAddr>, options: HealthServerOptions) {
    this.#listener = listener;
    this.#o = options;
    this.hostname = listener.addr.hostname;
    this.port = listener.addr.port;
    this.#max = Math.max(1, options.maxConnections ?? DEFAULT_MAX_CONNECTIONS);
    this.#timeoutMs = options.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS;
    this.#acceptLoop = this.#accept();
  }

  get connections(): number {
    return this.#open.size;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#stopped = true;
      try {
        this.#listener.close();
      } catch {
        // Already closed.
      }
      for (const c of [...this.#open.values()]) this.#drop(c);
      await this.#acceptLoop;
    })();
    return this.#closing;
  }

  #error(reason: MetricsServerErrorReason): void {
    try {
      this.#o.onError?.(reason);
    } catch {
      // Counting must not fail the server.
    }
  }

  async #accept(): Promise<void> {
    const log = getLogger(["gpu-power-agent", "metrics"]);
    let pauseMs = 10;
    while (!this.#stopped) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#stopped || error instanceof Deno.errors.BadResource) return;
        this.#error("accept");
        if (!this.#acceptFailing) {
          this.#acceptFailing = true;
          log.error(
            "Metrics server cannot accept connections (still capping GPUs; retrying): {error}",
            { error: String(error) },
          );
        }
        // Give descriptors a chance to be freed (EMFILE) before trying again.
        await new Promise((resolve) => setTimeout(resolve, pauseMs));
        pauseMs = Math.min(pauseMs * 2, 1000);
        continue;
      }
      pauseMs = 10;
      if (this.#acceptFailing) {
        this.#acceptFailing = false;
        log.info("Metrics server accepts connections again");
      }
      if (this.#stopped) {
        closeQuietly(conn);
        return;
      }
      this.#admit(conn);
    }
  }

  #admit(conn: Deno.TcpConn): void {
    if (this.#open.size >= this.#max) {
      // Shed the oldest connection that has not sent its request yet; if every slot is busy
      // answering, refuse the newcomer instead.
      let victim: Connection | undefined;
      for (const c of this.#open.values()) {
        if (c.waiting) {
          victim = c;
          break;
        }
      }
      this.#error("connection_limit");
      if (!victim) {
        closeQuietly(conn);
        return;
      }
      this.#drop(victim);
    }
    const c: Connection = {
      conn,
      waiting: true,
      closed: false,
      timer: setTimeout(() => {
        this.#error("timeout");
        this.#drop(c);
      }, this.#timeoutMs),
    };
    this.#open.set(conn, c);
    this.#serve(c).catch((error) => {
      this.#error("handler");
      this.#logHandler(error);
    }).finally(() => this.#drop(c));
  }

  #drop(c: Connection): void {
    if (c.closed) return;
    c.closed = true;
    clearTimeout(c.timer);
    this.#open.delete(c.conn);
    closeQuietly(c.conn);
  }

  #logHandler(error: unknown): void {
    if (this.#handlerFailing) return;
    this.#handlerFailing = true;
    getLogger(["gpu-power-agent", "metrics"]).error(
      "Metrics server request failed (still serving): {error}",
      { error: error instanceof Error ? error.stack ?? error.message : String(error) },
    );
  }

  async #serve(c: Connection): Promise<void> {
    const buffer = new Uint8Array(MAX_HEADER_BYTES);
    let length = 0;
    let end = -1;
    while (end < 0) {
      if (length === buffer.length) {
        await this.#write(c, text("request header too large\n", 431, false));
        return;
      }
      let n: number | null;
      try {
        n = await c.conn.read(buffer.subarray(length));
      } catch {
        return; // Reset by the peer, or closed by the timeout / shedding.
      }
      if (n === null || c.closed) return;
      length += n;
      end = headEnd(buffer, length);
    }
    c.waiting = false;
    const head = new TextDecoder().decode(buffer.subarray(0, end));
    const match = /^([A-Z]+) (\S+) HTTP\/1\.[01]\r?\n/.exec(head);
    if (!match) {
      await this.#write(c, text("bad request\n", 400, false));
      return;
    }
    let path: string;
    try {
      path = new URL(match[2], "http://localhost").pathname;
    } catch {
      await this.#write(c, text("bad request\n", 400, false));
      return;
    }
    let answer: Answer;
    try {
      answer = await route(match[1], path, this.#o);
      this.#handlerFailing = false;
    } catch (error) {
      this.#error("handler");
      this.#logHandler(error);
      answer = text("internal error\n", 500, match[1] === "HEAD");
    }
    await this.#write(c, answer);
  }

  async #write(c: Connection, answer: Answer): Promise<void> {
    const bytes = serialize(answer);
    let offset = 0;
    try {
      while (offset < bytes.length && !c.closed) {
        offset += await c.conn.write(bytes.subarray(offset));
      }
    } catch {
      if (!c.closed) this.#error("write");
    }
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
