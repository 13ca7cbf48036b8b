const m = await import("../src/metrics/prometheus.ts");
const s = await import("../src/metrics/server.ts");
const t = m.createPrometheusTelemetry({ buildInfo: { version: "x", denoVersion: "y", driverVersion: "z" } });
const srv = await s.startHealthServer("127.0.0.1:0", { metrics: () => t.metrics(), ready: () => ({ ready: true }) });
await (await fetch(`http://127.0.0.1:${srv!.port}/metrics`)).text();
console.log((Deno.memoryUsage().rss / 2 ** 20).toFixed(1));
await srv!.close();
