/**
 * The Node side of the in-test kubelet (tests/helpers/kubelet_pod_resources_server.ts): a gRPC
 * server on a unix socket built on `node:http2`, answering each method with bytes the Deno side
 * encoded. It runs under Node because a `node:http2` server hosted by Deno 2.9.6 aborts in
 * nghttp2 (`find_stream_on_goaway_func` assertion) within a few hundred short-lived sessions.
 *
 * Control protocol: one JSON command per stdin line, one JSON answer per stdout line:
 * - `{"cmd":"answers","answers":{"<path>":{"body":"<base64>"}|{"status":N,"message":"…"}},
 *   "keyed":{"<path>":{"<request base64>":{…answer…}}}}` replaces the answers (a keyed answer is
 *   chosen by the exact request bytes, e.g. Get per pod);
 * - `{"cmd":"hang","hang":true|false}`: accept calls but never answer them (a wedged kubelet);
 * - `{"cmd":"stop","graceful":bool,"leaveSocket":bool}`: shut down like a kubelet: graceful sends
 *   GOAWAY, otherwise connections are reset; `leaveSocket` keeps a dead socket file behind
 *   (connections are refused) instead of removing it (the socket is absent);
 * - `{"cmd":"start"}`: listen again;
 * - `{"cmd":"calls"}`: calls answered per method path since start-up.
 *
 * Usage: `node kubelet_pod_resources_server.mjs SOCKET_PATH`
 */
import fs from "node:fs";
import http2 from "node:http2";
import readline from "node:readline";

const socketPath = process.argv[2];
let answers = {};
let keyed = {};
let hang = false;
const calls = {};
const sessions = new Set();
const hung = new Set();
let server = null;

function frame(bytes) {
  const framed = Buffer.alloc(5 + bytes.length);
  framed.writeUInt32BE(bytes.length, 1);
  bytes.copy(framed, 5);
  return framed;
}

function reply(stream, answer) {
  if (stream.destroyed) return;
  if (answer === undefined) answer = { status: 12, message: "method not implemented" };
  if (answer.body === undefined) {
    stream.respond({
      ":status": 200,
      "content-type": "application/grpc",
      "grpc-status": String(answer.status),
      "grpc-message": encodeURIComponent(answer.message ?? ""),
    }, { endStream: true });
    return;
  }
  stream.respond({ ":status": 200, "content-type": "application/grpc" }, {
    waitForTrailers: true,
  });
  stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
  stream.end(frame(Buffer.from(answer.body, "base64")));
}

function onStream(stream, headers) {
  const path = headers[":path"];
  const chunks = [];
  stream.on("error", () => {});
  stream.on("data", (chunk) => chunks.push(chunk));
  stream.on("end", () => {
    if (hang) {
      hung.add(stream);
      stream.on("close", () => hung.delete(stream));
      return;
    }
    calls[path] = (calls[path] ?? 0) + 1;
    const body = Buffer.concat(chunks);
    const request = body.length >= 5 ? body.subarray(5).toString("base64") : "";
    reply(stream, keyed[path]?.[request] ?? answers[path]);
  });
}

function start() {
  return new Promise((resolve, reject) => {
    try {
      fs.unlinkSync(socketPath);
    } catch {
      // absent
    }
    server = http2.createServer();
    server.on("session", (session) => {
      sessions.add(session);
      session.on("error", () => {});
      session.on("close", () => sessions.delete(session));
    });
    server.on("stream", onStream);
    server.once("error", reject);
    server.listen(socketPath, () => resolve());
  });
}

function stop(graceful, leaveSocket) {
  if (server === null) return Promise.resolve();
  const keep = `${socketPath}.kept`;
  if (leaveSocket) fs.linkSync(socketPath, keep);
  const closing = server;
  server = null;
  // Graceful: GOAWAY first, while calls are still open, then they are cut (a kubelet that
  // stops does not finish them). Otherwise: connections reset at once (a crash).
  for (const session of sessions) {
    if (graceful) session.close();
    else session.destroy();
  }
  return new Promise((resolve) => setTimeout(resolve, graceful ? 20 : 0)).then(() => {
    for (const stream of hung) stream.destroy();
    for (const session of sessions) session.destroy();
  }).then(() =>
    new Promise((resolve) => {
      closing.close(() => {
        if (leaveSocket) fs.renameSync(keep, socketPath);
        else {
          try {
            fs.unlinkSync(socketPath);
          } catch {
            // already removed by the close
          }
        }
        resolve();
      });
    })
  );
}

async function handle(command) {
  switch (command.cmd) {
    case "answers":
      answers = command.answers ?? {};
      keyed = command.keyed ?? {};
      return {};
    case "hang":
      hang = command.hang;
      if (!hang) { for (const stream of hung) stream.destroy(); }
      return {};
    case "stop":
      await stop(command.graceful === true, command.leaveSocket === true);
      return {};
    case "start":
      await start();
      return {};
    case "calls":
      return { calls };
    default:
      throw new Error(`unknown command ${JSON.stringify(command.cmd)}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on("line", (line) => {
  queue = queue.then(async () => {
    try {
      const result = await handle(JSON.parse(line));
      process.stdout.write(JSON.stringify({ ok: true, ...result }) + "\n");
    } catch (error) {
      process.stdout.write(JSON.stringify({ ok: false, error: String(error) }) + "\n");
    }
  });
});
lines.on("close", () => {
  stop(false, false).finally(() => process.exit(0));
});

start().then(
  () => process.stdout.write(JSON.stringify({ ok: true, ready: true }) + "\n"),
  (error) => {
    process.stderr.write(`cannot listen on ${socketPath}: ${error}\n`);
    process.exit(1);
  },
);
