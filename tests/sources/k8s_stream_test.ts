import assert from "node:assert/strict";
import {
  type BoundedItem,
  boundedLines,
  identify,
  streamPodList,
} from "../../src/sources/kubernetes_stream.ts";

/** `text` as a stream of chunks of `size` bytes. */
function chunked(text: string, size: number): ReadableStream<Uint8Array> {
  const bytes = new TextEncoder().encode(text);
  let offset = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= bytes.length) return controller.close();
      controller.enqueue(bytes.slice(offset, offset + size));
      offset += size;
    },
  });
}

const pod = (name: string, extra: Record<string, unknown> = {}) => ({
  metadata: { name, namespace: "ns", uid: `uid-${name}`, annotations: { "a/b": 'x"}]{[\\' } },
  spec: { containers: [{ name: "c", args: ["]", "}"] }] },
  ...extra,
});

Deno.test("streamPodList: items one by one at every chunk size, nesting and escapes included", async () => {
  const doc = JSON.stringify({
    kind: "PodList",
    apiVersion: "v1",
    weird: { items: [{ no: 1 }] },
    metadata: { resourceVersion: "42", continue: "" },
    items: [pod("ä-ü"), pod("b", { status: { phase: "Running" } }), pod("c")],
  });
  for (const size of [1, 2, 3, 7, 64, 1 << 20]) {
    const items: unknown[] = [];
    const head = await streamPodList(chunked(doc, size), {
      maxItemBytes: 1 << 20,
      onItem: (item) => {
        assert.equal(item.kind, "json");
        items.push(JSON.parse((item as { text: string }).text));
      },
    });
    assert.deepEqual(head, { resourceVersion: "42", hasItems: true }, `chunk size ${size}`);
    assert.deepEqual(items, JSON.parse(doc).items, `chunk size ${size}`);
  }
});

Deno.test("streamPodList: an oversized item is skipped and named; the rest parse", async () => {
  const big = pod("big", { filler: "z".repeat(50_000) });
  const doc = JSON.stringify({
    metadata: { resourceVersion: "7" },
    items: [pod("a"), big, pod("c")],
  });
  const seen: BoundedItem[] = [];
  const head = await streamPodList(chunked(doc, 1000), {
    maxItemBytes: 10_000,
    onItem: (item) => seen.push(item),
  });
  assert.equal(head.resourceVersion, "7");
  assert.deepEqual(seen.map((i) => i.kind), ["json", "oversized", "json"]);
  assert.match((seen[1] as { identity: string }).identity, /^ns\/big$/);
});

Deno.test("streamPodList: not an object or cut short → SyntaxError", async () => {
  const opts = { maxItemBytes: 1000, onItem() {} };
  await assert.rejects(streamPodList(chunked("[1,2]", 2), opts), SyntaxError);
  await assert.rejects(streamPodList(chunked('{"items":[{"a":1}', 3), opts), SyntaxError);
  await assert.rejects(streamPodList(chunked('{"items":"x', 3), opts), SyntaxError);
  assert.deepEqual(await streamPodList(chunked('{"kind":"Status"}', 4), opts), {
    hasItems: false,
  });
});

Deno.test("boundedLines: lines split anywhere; an oversized line is skipped, not buffered", async () => {
  const long = JSON.stringify({
    object: { metadata: { name: "p", namespace: "n" } },
    x: "y".repeat(5000),
  });
  const text = `{"a":1}\n\n${long}\n{"b":2}\r\n{"c":3}`;
  for (const size of [1, 5, 100, 100_000]) {
    const items: BoundedItem[] = [];
    for await (const item of boundedLines(chunked(text, size), 1000)) items.push(item);
    assert.deepEqual(items, [
      { kind: "json", text: '{"a":1}' },
      { kind: "oversized", bytes: long.length, identity: "n/p" },
      { kind: "json", text: '{"b":2}\r' },
      { kind: "json", text: '{"c":3}' },
    ], `chunk size ${size}`);
  }
});

Deno.test("identify: names what the prefix shows", () => {
  assert.equal(
    identify('{"metadata":{"name":"x","namespace":"y","resourceVersion":"9"'),
    "y/x (resourceVersion 9)",
  );
  assert.match(identify('{"metadata":{"annotations":{'), /name not in its first 4 KiB/);
});
