const m = await import("../src/metrics/prometheus.ts");
const t = m.createPrometheusTelemetry({ buildInfo: { version: "x", denoVersion: "y", driverVersion: "z" } });
await t.metrics();
console.log((Deno.memoryUsage().rss / 2 ** 20).toFixed(1));
