await import("@logtape/logtape");
const p = await import("prom-client");
const r = new p.Registry();
new p.Counter({ name: "a_total", help: "h", registers: [r] });
new p.Gauge({ name: "g", help: "h", registers: [r] });
new p.Histogram({ name: "hh", help: "h", registers: [r] });
await r.metrics();
console.log((Deno.memoryUsage().rss / 2 ** 20).toFixed(1));
