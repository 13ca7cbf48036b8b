/**
 * One unary gRPC call over a unix socket with `node:http2` and gRPC's wire framing (a 1-byte
 * compression flag and a 4-byte big-endian length before each message; `content-type:
 * application/grpc`; the outcome in the `grpc-status` trailer).
 *
 * Why not `@grpc/grpc-js`: under Deno 2.9.6 its client segfaults (exit 139) in 3–4 of 8 runs when
 * the server sends GOAWAY on shutdown, which a kubelet restart does; this client survived every
 * restart measured (see README, development section) and costs less memory.
 *
 * Every call opens its own HTTP/2 session and destroys it afterwards: a kubelet restart can never
 * leave a half-dead session behind for the next call. Every call has a deadline and a bound on
 * the response size, and every failure is a {@linkcode GrpcCallError}.
 *
 * @module
 */

import http2 from "node:http2";
import net from "node:net";

/** gRPC status codes this module names (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
export const GrpcStatus = Object.freeze({
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
});

/** Size of the gRPC message prefix: compression flag (1 byte) + length (4 bytes). */
export const GRPC_PREFIX_BYTES = 5;

/** Why a call failed. */
export type GrpcFailure =
  /** Could not connect, or the connection broke before a status arrived. */
  | "unavailable"
  /** No complete answer within the deadline. */
  | "deadline"
  /** The server answered with a non-zero `grpc-status`. */
  | "status"
  /** The answer exceeded the response-size bound. */
  | "too-large"
  /** The answer was not well-formed gRPC (HTTP status, framing, compression). */
  | "protocol";

/** A failed gRPC call: what failed (`failure`) and, for `status`, the server's code. */
export class GrpcCallError extends Error {
  override name = "GrpcCallError";
  /** Kind of failure. */
  readonly failure: GrpcFailure;
  /** `grpc-status` of the answer (for `status`; DEADLINE_EXCEEDED for `deadline`). */
  readonly grpcStatus: number | null;

  constructor(
    failure: GrpcFailure,
    message: string,
    options: { grpcStatus?: number; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.failure = failure;
    this.grpcStatus = options.grpcStatus ?? null;
  }
}

/** Options of {@linkcode grpcUnaryCall}. */
export interface GrpcUnaryCallOptions {
  /** Deadline of the whole call, connection included (milliseconds; default 2000). */
  timeoutMs?: number;
  /** Largest accepted response message (bytes; default 4 MiB). */
  maxResponseBytes?: number;
}

/** Default deadline of a call. */
export const DEFAULT_GRPC_TIMEOUT_MS = 2_000;
/** Default bound on a response message. */
export const DEFAULT_GRPC_MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

/** `message` with gRPC's 5-byte prefix (uncompressed). */
export function frameGrpcMessage(message: Uint8Array): Uint8Array {
  const framed = new Uint8Array(GRPC_PREFIX_BYTES + message.byteLength);
  new DataView(framed.buffer).setUint32(1, message.byteLength);
  framed.set(message, GRPC_PREFIX_BYTES);
  return framed;
}

/**
 * The messages of a complete gRPC body (concatenated frames). Throws a `protocol`
 * {@linkcode GrpcCallError} on a truncated frame, a compressed frame, or a message over
 * `maxBytes`.
 */
export function parseGrpcFrames(
  body: Uint8Array,
  maxBytes: number = DEFAULT_GRPC_MAX_RESPONSE_BYTES,
): Uint8Array[] {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const messages: Uint8Array[] = [];
  let offset = 0;
  while (offset < body.byteLength) {
    if (body.byteLength - offset < GRPC_PREFIX_BYTES) {
      throw new GrpcCallError("protocol", "truncated gRPC frame header");
    }
    if (body[offset] !== 0) {
      throw new GrpcCallError("protocol", "compressed gRPC message (compression not negotiated)");
    }
    const length = view.getUint32(offset + 1);
    if (length > maxBytes) {
      throw new GrpcCallError("too-large", `gRPC message of ${length} bytes exceeds ${maxBytes}`);
    }
    const start = offset + GRPC_PREFIX_BYTES;
    if (start + length > body.byteLength) {
      throw new GrpcCallError("protocol", "truncated gRPC message");
    }
    messages.push(body.subarray(start, start + length));
    offset = start + length;
  }
  return messages;
}

function headerText(value: string | string[] | number | undefined): string | undefined {
  if (value === undefined) return undefined;
  return Array.isArray(value) ? value[0] : String(value);
}

function decodeGrpcMessage(value: string | undefined): string {
  if (value === undefined) return "";
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/**
 * Calls `method` (`/package.Service/Method`) on the gRPC server at unix socket `socketPath` with
 * one encoded request message and resolves with the one encoded response message.
 */
export function grpcUnaryCall(
  socketPath: string,
  method: string,
  request: Uint8Array,
  options: GrpcUnaryCallOptions = {},
): Promise<Uint8Array> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_GRPC_TIMEOUT_MS;
  const maxBytes = options.maxResponseBytes ?? DEFAULT_GRPC_MAX_RESPONSE_BYTES;
  return new Promise<Uint8Array>((resolve, reject) => {
    const chunks: Uint8Array[] = [];
    let received = 0;
    let status: string | undefined;
    let statusMessage: string | undefined;
    let httpStatus: number | undefined;
    let settled = false;
    let session: http2.ClientHttp2Session | undefined;

    const finish = (error: GrpcCallError | null, value?: Uint8Array) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session?.destroy();
      if (error) reject(error);
      else resolve(value!);
    };
    const timer = setTimeout(() => {
      finish(
        new GrpcCallError("deadline", `no answer within ${timeoutMs} ms`, {
          grpcStatus: GrpcStatus.DEADLINE_EXCEEDED,
        }),
      );
    }, timeoutMs);
    const broken = (error: unknown) => {
      const detail = error instanceof Error ? error.message : String(error);
      finish(new GrpcCallError("unavailable", detail, { cause: error }));
    };

    const complete = () => {
      if (settled) return;
      if (httpStatus !== undefined && httpStatus !== 200) {
        finish(new GrpcCallError("protocol", `HTTP status ${httpStatus} instead of 200`));
        return;
      }
      if (status === undefined) {
        finish(new GrpcCallError("unavailable", "the connection closed before a gRPC status"));
        return;
      }
      const code = Number(status);
      if (code !== GrpcStatus.OK) {
        const text = decodeGrpcMessage(statusMessage);
        finish(
          new GrpcCallError("status", `gRPC status ${code}${text ? `: ${text}` : ""}`, {
            grpcStatus: code,
          }),
        );
        return;
      }
      let messages: Uint8Array[];
      try {
        const body = new Uint8Array(received);
        let offset = 0;
        for (const chunk of chunks) {
          body.set(chunk, offset);
          offset += chunk.byteLength;
        }
        messages = parseGrpcFrames(body, maxBytes);
      } catch (error) {
        finish(error as GrpcCallError);
        return;
      }
      if (messages.length !== 1) {
        finish(
          new GrpcCallError("protocol", `expected one response message, got ${messages.length}`),
        );
        return;
      }
      finish(null, messages[0]);
    };

    try {
      session = http2.connect("http://localhost", {
        createConnection: () => net.connect(socketPath),
      });
      session.on("error", broken);
      const stream = session.request({
        ":method": "POST",
        ":path": method,
        "content-type": "application/grpc",
        "te": "trailers",
        "grpc-timeout": `${Math.max(1, Math.ceil(timeoutMs))}m`,
      });
      stream.on("response", (headers) => {
        httpStatus = Number(headers[":status"]);
        // A trailers-only answer (an error) carries the status in the headers.
        status ??= headerText(headers["grpc-status"]);
        statusMessage ??= headerText(headers["grpc-message"]);
      });
      stream.on("trailers", (trailers) => {
        status = headerText(trailers["grpc-status"]) ?? status;
        statusMessage = headerText(trailers["grpc-message"]) ?? statusMessage;
      });
      stream.on("data", (chunk: Uint8Array) => {
        received += chunk.byteLength;
        if (received > maxBytes + GRPC_PREFIX_BYTES) {
          finish(
            new GrpcCallError("too-large", `answer exceeds ${maxBytes} bytes`, {
              grpcStatus: GrpcStatus.RESOURCE_EXHAUSTED,
            }),
          );
          return;
        }
        chunks.push(chunk);
      });
      stream.on("error", broken);
      stream.on("close", complete);
      stream.end(frameGrpcMessage(request));
    } catch (error) {
      broken(error);
    }
  });
}
