await import("@logtape/logtape");
console.log((Deno.memoryUsage().rss / 2 ** 20).toFixed(1));
