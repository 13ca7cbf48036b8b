await import("@logtape/logtape");
await import("prom-client/lib/util.js");
console.log((Deno.memoryUsage().rss / 2 ** 20).toFixed(1));
