await import("@logtape/logtape");
await import("node:util");
console.log((Deno.memoryUsage().rss / 2 ** 20).toFixed(1));
