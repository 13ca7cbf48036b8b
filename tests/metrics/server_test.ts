import assert from "node:assert/strict";
import { createPrometheusTelemetry, type GpuStatusLike } from "../../src/metrics/prometheus.ts";
import {
  type HealthServer,
  parseListenAddress,
  type Readiness,
  serveHealth,
  startHealthServer,
} from "../../src/metrics/server.ts";
import { findSamples, promtoolCheck, sampleValue } from "./exposition.ts";

const P = "gpu_power_agent_";

function status(index: number, limitMw: number): GpuStatusLike {
  return {
    index,
    uuid: `GPU-${index}`,
    name: "NVIDIA H100 80GB HBM3",
    pciBusId: `00000000:1${index}:00.0`,
    drawMw: 100_000,
    limitMw,
    enforcedMw: limitMw,
    defaultMw: 700_000,
    minMw: 200_000,
    maxMw: 700_000,
    energyMj: 1_000_000,
    managed: limitMw !== 700_000,
    baselineMw: limitMw !== 700_000 ? 700_000 : null,
    desiredMw: limitMw !== 700_000 ? limitMw : null,
    supported: true,
    enforced: limitMw !== 700_000 ? true : null,
  };
}

async function withServer(
  fn: (
    base: string,
    state: { readiness: Readiness; statuses: GpuStatusLike[] },
    server: HealthServer,
    telemetry: ReturnType<typeof createPrometheusTelemetry>,
  ) => Promise<void>,
): Promise<void> {
  const state = {
    readiness: {
      ready: false,
      reason: "no reconcile pass with known desired caps yet",
    } as Readiness,
    statuses: [] as GpuStatusLike[],
  };
  const telemetry = createPrometheusTelemetry({
    buildInfo: { version: "0.0.0-test", denoVersion: Deno.version.deno, driverVersion: "580.1" },
    statuses: () => state.statuses,
  });
  const server = await startHealthServer("127.0.0.1:0", {
    metrics: () => telemetry.metrics(),
    contentType: telemetry.contentType,
    ready: () => state.readiness,
  });
  assert.ok(server);
  try {
    await fn(`http://127.0.0.1:${server.port}`, state, server, telemetry);
  } finally {
    await server.close();
  }
}

async function get(url: string, init?: RequestInit) {
  const response = await fetch(url, init);
  return { status: response.status, headers: response.headers, body: await response.text() };
}

Deno.test("scraping /metrics shows values driven by telemetry and the status callback", async () => {
  await withServer(async (base, state, server, telemetry) => {
    assert.equal(server.hostname, "127.0.0.1");
    assert.ok(server.port > 0);
    state.statuses = [status(0, 250_000), status(1, 700_000)];
    telemetry.clamped("down");
    telemetry.clamped("down");

    let res = await get(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
    const labels0 = { gpu: "0", uuid: "GPU-0", name: "NVIDIA H100 80GB HBM3" };
    assert.equal(sampleValue(res.body, `${P}clamps_total`, { direction: "down" }), 2);
    assert.equal(sampleValue(res.body, `${P}gpu_power_limit_watts`, labels0), 250);
    assert.equal(sampleValue(res.body, `${P}gpu_desired_power_limit_watts`, labels0), 250);
    assert.equal(sampleValue(res.body, `${P}gpu_power_limit_watts`, { gpu: "1" }), 700);
    assert.equal(
      sampleValue(res.body, `${P}gpu_desired_power_limit_watts`, { gpu: "1" }),
      undefined,
    );

    const check = await promtoolCheck(res.body);
    assert.equal(check.output, "", `promtool output:\n${check.output}`);
    assert.equal(check.code, 0);

    // GPU 1 goes away: its series are gone on the next scrape.
    state.statuses = [status(0, 300_000)];
    res = await get(`${base}/metrics`);
    assert.equal(sampleValue(res.body, `${P}gpu_power_limit_watts`, labels0), 300);
    assert.deepEqual(findSamples(res.body, `${P}gpu_power_limit_watts`, { gpu: "1" }), []);
  });
});

Deno.test("/healthz is 200 ok; /readyz flips between 503 with the reason and 200", async () => {
  await withServer(async (base, state) => {
    const health = await get(`${base}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(health.body, "ok\n");

    let ready = await get(`${base}/readyz`);
    assert.equal(ready.status, 503);
    assert.equal(ready.body, "not ready: no reconcile pass with known desired caps yet\n");

    state.readiness = { ready: true };
    ready = await get(`${base}/readyz`);
    assert.equal(ready.status, 200);
    assert.equal(ready.body, "ready\n");

    state.readiness = { ready: false, reason: "caps source stale for 75 s (--stale-after 60)" };
    ready = await get(`${base}/readyz?verbose=1`);
    assert.equal(ready.status, 503);
    assert.match(ready.body, /caps source stale for 75 s/);
  });
});

Deno.test("unknown paths are 404, other methods 405 with Allow, HEAD has no body", async () => {
  await withServer(async (base, state) => {
    for (const path of ["/", "/metrics/", "/favicon.ico", "/ready"]) {
      const res = await get(`${base}${path}`);
      assert.equal(res.status, 404, path);
    }
    for (const method of ["POST", "PUT", "DELETE", "OPTIONS"]) {
      const res = await get(`${base}/metrics`, { method });
      assert.equal(res.status, 405, method);
      assert.equal(res.headers.get("allow"), "GET, HEAD");
    }
    let head = await get(`${base}/healthz`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
    head = await get(`${base}/readyz`, { method: "HEAD" });
    assert.equal(head.status, 503);
    assert.equal(head.body, "");
    state.readiness = { ready: true };
    head = await get(`${base}/readyz`, { method: "HEAD" });
    assert.equal(head.status, 200);
    head = await get(`${base}/metrics`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
    assert.match(head.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  });
});

Deno.test("a failing metrics renderer answers 500 and the server keeps serving", async () => {
  const server = await startHealthServer("127.0.0.1:0", {
    metrics: () => Promise.reject(new Error("boom")),
    ready: () => {
      throw new Error("readiness exploded");
    },
  });
  assert.ok(server);
  try {
    const base = `http://127.0.0.1:${server.port}`;
    const metrics = await get(`${base}/metrics`);
    assert.equal(metrics.status, 500);
    assert.match(metrics.body, /boom/);
    const ready = await get(`${base}/readyz`);
    assert.equal(ready.status, 503);
    assert.match(ready.body, /readiness exploded/);
    assert.equal((await get(`${base}/healthz`)).status, 200);
  } finally {
    await server.close();
  }
});

Deno.test("off disables the server; close is idempotent", async () => {
  const options = { metrics: () => Promise.resolve(""), ready: () => ({ ready: true }) };
  assert.equal(await startHealthServer("off", options), null);
  const server = await startHealthServer("127.0.0.1:0", options);
  assert.ok(server);
  await server.close();
  await server.close();
  await assert.rejects(fetch(`http://127.0.0.1:${server.port}/healthz`));
});

Deno.test("listen addresses parse, bad ones name the flag", async () => {
  assert.equal(parseListenAddress("off"), null);
  assert.deepEqual(parseListenAddress("127.0.0.1:9402"), { hostname: "127.0.0.1", port: 9402 });
  assert.deepEqual(parseListenAddress("0.0.0.0:0"), { hostname: "0.0.0.0", port: 0 });
  assert.deepEqual(parseListenAddress("[::1]:0"), { hostname: "::1", port: 0 });
  assert.deepEqual(parseListenAddress("[::]:9402"), { hostname: "::", port: 9402 });
  assert.deepEqual(parseListenAddress("localhost:9402"), { hostname: "localhost", port: 9402 });
  assert.deepEqual(parseListenAddress(":9402"), { hostname: "0.0.0.0", port: 9402 });
  const options = { metrics: () => Promise.resolve(""), ready: () => ({ ready: true }) };
  for (
    const bad of ["", "9402", "127.0.0.1", "127.0.0.1:65536", "::1:9402", "host:port", "a:1:2"]
  ) {
    assert.throws(() => parseListenAddress(bad), /--metrics-address/, bad);
    await assert.rejects(startHealthServer(bad, options), /Invalid --metrics-address/, bad);
  }
});

Deno.test("a port in use is reported with the flag name", async () => {
  const options = { metrics: () => Promise.resolve(""), ready: () => ({ ready: true }) };
  const first = await startHealthServer("127.0.0.1:0", options);
  assert.ok(first);
  try {
    await assert.rejects(
      startHealthServer(`127.0.0.1:${first.port}`, options),
      /Cannot listen on --metrics-address 127\.0\.0\.1:\d+: .*--metrics-address off/,
    );
  } finally {
    await first.close();
  }
});

Deno.test("idle connections are capped and closed; /healthz still answers; errors counted", async () => {
  const errors: string[] = [];
  const server = await startHealthServer("127.0.0.1:0", {
    metrics: () => Promise.resolve(""),
    ready: () => ({ ready: true }),
    maxConnections: 32,
    connectionTimeoutMs: 300,
    onError: (reason) => errors.push(reason),
  });
  assert.ok(server);
  const idle: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < 200; i++) {
      idle.push(await Deno.connect({ hostname: "127.0.0.1", port: server.port }));
    }
    // 200 silent sockets: the server holds at most 32 and still answers a probe at once.
    const res = await get(`http://127.0.0.1:${server.port}/healthz`);
    assert.equal(res.status, 200);
    assert.equal(res.body, "ok\n");
    assert.ok(server.connections <= 32, `${server.connections} connections open`);
    assert.ok(errors.filter((e) => e === "connection_limit").length >= 200 - 32);
    // Idle ones are closed by the server after connectionTimeoutMs.
    const deadline = Date.now() + 5000;
    while (server.connections > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(server.connections, 0);
    assert.ok(errors.includes("timeout"));
    const closedByServer = await Promise.all(idle.map(async (conn) => {
      try {
        return await conn.read(new Uint8Array(16)) === null;
      } catch {
        return true; // Reset.
      }
    }));
    assert.ok(closedByServer.every(Boolean), "every idle socket was closed by the server");
    assert.equal((await get(`http://127.0.0.1:${server.port}/readyz`)).status, 200);
  } finally {
    for (const conn of idle) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
    }
    await server.close();
  }
});

Deno.test("a throwing callback answers 500 and is counted; oversized or bad requests are refused", async () => {
  const errors: string[] = [];
  let calls = 0;
  const server = await startHealthServer("127.0.0.1:0", {
    metrics: () => {
      calls++;
      throw new Error("renderer exploded");
    },
    ready: () => ({ ready: true }),
    onError: (reason) => {
      errors.push(reason);
      throw new Error("a failing counter must not matter");
    },
  });
  assert.ok(server);
  const base = `http://127.0.0.1:${server.port}`;
  try {
    for (let i = 0; i < 3; i++) assert.equal((await get(`${base}/metrics`)).status, 500);
    assert.equal(calls, 3);
    assert.equal((await get(`${base}/healthz`)).status, 200);
    const raw = async (request: string) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
      try {
        await conn.write(new TextEncoder().encode(request));
        const chunks: string[] = [];
        const buf = new Uint8Array(4096);
        let n: number | null;
        while ((n = await conn.read(buf)) !== null) {
          chunks.push(new TextDecoder().decode(buf.subarray(0, n)));
        }
        return chunks.join("");
      } finally {
        conn.close();
      }
    };
    assert.match(await raw("garbage\r\n\r\n"), /^HTTP\/1\.1 400 /);
    // Over 8 KiB of headers: refused (431, or a reset while the client still writes).
    const oversized = await raw(`GET /healthz HTTP/1.1\r\nx: ${"a".repeat(9000)}\r\n\r\n`)
      .catch(() => "reset");
    assert.doesNotMatch(oversized, / 200 /);
    assert.match(await raw("GET /healthz?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"), / 200 OK[\s\S]*ok\n$/);
    assert.equal((await get(`${base}/healthz`)).status, 200);
  } finally {
    await server.close();
  }
});

Deno.test("accept failures (too many open files) are counted, logged once, and survived", async () => {
  const real = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let failuresLeft = 5;
  // A listener whose accept() fails like EMFILE a few times, then works.
  const flaky = new Proxy(real, {
    get(target, prop) {
      if (prop === "accept") {
        return () => {
          if (failuresLeft > 0) {
            failuresLeft--;
            return Promise.reject(new Error("Too many open files (os error 24)"));
          }
          return target.accept();
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  const errors: string[] = [];
  const server = serveHealth(flaky, {
    metrics: () => Promise.resolve(""),
    ready: () => ({ ready: true }),
    onError: (reason) => errors.push(reason),
  });
  try {
    const res = await get(`http://127.0.0.1:${server.port}/healthz`);
    assert.equal(res.status, 200);
    assert.deepEqual(errors, ["accept", "accept", "accept", "accept", "accept"]);
  } finally {
    await server.close();
  }
});
