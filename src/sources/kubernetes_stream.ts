/**
 * Bounded reading of Kubernetes API response bodies, so no single object can exhaust memory
 * or wedge the informer:
 *
 * - `boundedLines`: the newline-delimited events of a watch; a line longer than the limit is
 *   skipped without being buffered whole (only a short prefix is kept to name the object);
 * - `streamPodList`: a PodList parsed item by item, so a LIST of thousands of pods never holds
 *   the whole document or every full Pod object at once; items over the limit are skipped the
 *   same way.
 *
 * Both work on bytes: JSON's structural characters are ASCII and never occur inside a
 * multi-byte UTF-8 sequence, so no decoding is needed to find boundaries.
 */

/** Default largest watch event / list item (etcd stores objects of at most ~1.5 MiB). */
export const DEFAULT_MAX_OBJECT_BYTES = 4 * 1024 * 1024;
/** A watch open this long without trouble resets the reconnect failure count. */
export const HEALTHY_WATCH_MS = 30_000;

/** Bytes kept of an oversized object to say which object it was. */
const PREFIX_BYTES = 4096;
const NEWLINE = 10;
const QUOTE = 34;
const BACKSLASH = 92;
const OPEN_BRACE = 123;
const CLOSE_BRACE = 125;
const OPEN_BRACKET = 91;
const CLOSE_BRACKET = 93;
const COLON = 58;

/** One piece of a bounded stream: a complete JSON text, or an object that was too large. */
export type BoundedItem =
  | { kind: "json"; text: string }
  | { kind: "oversized"; bytes: number; identity: string };

/** Accumulates bytes up to a limit; beyond it only counts them and keeps a prefix. */
class Accumulator {
  #parts: Uint8Array[] = [];
  #size = 0;
  #oversized = false;
  #prefix: Uint8Array | null = null;

  constructor(readonly limit: number) {}

  get size(): number {
    return this.#size;
  }

  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.#size += bytes.length;
    if (this.#oversized) return;
    if (this.#size > this.limit) {
      this.#oversized = true;
      const all = concat(this.#parts, this.#size - bytes.length);
      const prefix = new Uint8Array(Math.min(PREFIX_BYTES, this.#size));
      prefix.set(all.subarray(0, prefix.length));
      if (all.length < prefix.length) {
        prefix.set(bytes.subarray(0, prefix.length - all.length), all.length);
      }
      this.#prefix = prefix;
      this.#parts = [];
      return;
    }
    // Copy: the reader may reuse or hold on to the whole chunk otherwise.
    this.#parts.push(bytes.slice());
  }

  /** The collected item, and reset. */
  take(decoder: TextDecoder): BoundedItem {
    const size = this.#size;
    let item: BoundedItem;
    if (this.#oversized) {
      item = { kind: "oversized", bytes: size, identity: identify(decoder.decode(this.#prefix!)) };
    } else {
      item = { kind: "json", text: decoder.decode(concat(this.#parts, size)) };
    }
    this.#parts = [];
    this.#size = 0;
    this.#oversized = false;
    this.#prefix = null;
    return item;
  }
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/**
 * `namespace/name` (and resourceVersion) of an object from the start of its JSON, as far as the
 * prefix shows them (the API server writes metadata's name, namespace and uid first).
 */
export function identify(prefix: string): string {
  const field = (name: string) => new RegExp(`"${name}":"([^"\\\\]{1,253})"`).exec(prefix)?.[1];
  const name = field("name");
  const namespace = field("namespace");
  const rv = field("resourceVersion");
  if (!name) return "an object (name not in its first 4 KiB)";
  return `${namespace ? `${namespace}/` : ""}${name}${rv ? ` (resourceVersion ${rv})` : ""}`;
}

/** A reader of `stream` that aborting `signal` cancels; `release()` when done with it. */
function cancellableReader(stream: ReadableStream<Uint8Array>, signal: AbortSignal | undefined) {
  const reader = stream.getReader();
  const cancel = () => reader.cancel(signal?.reason).catch(() => {});
  if (signal?.aborted) cancel();
  signal?.addEventListener("abort", cancel, { once: true });
  return {
    reader,
    /** Stop listening to the signal, cancel the rest of the stream, release the lock. */
    release() {
      signal?.removeEventListener("abort", cancel);
      if (!signal?.aborted) cancel();
      reader.releaseLock();
    },
  };
}

/**
 * The non-empty lines of a newline-delimited stream, each at most `maxLineBytes`; longer
 * lines come out as `oversized` and are never held whole. `onChunk` is called for every chunk
 * read (liveness); aborting `signal` cancels the stream and ends the lines.
 */
export async function* boundedLines(
  stream: ReadableStream<Uint8Array>,
  maxLineBytes: number,
  options: { signal?: AbortSignal; onChunk?: () => void } = {},
): AsyncGenerator<BoundedItem> {
  const decoder = new TextDecoder();
  const line = new Accumulator(maxLineBytes);
  const { reader, release } = cancellableReader(stream, options.signal);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done || options.signal?.aborted) break;
      options.onChunk?.();
      let start = 0;
      while (start < value.length) {
        const newline = value.indexOf(NEWLINE, start);
        if (newline < 0) {
          line.push(value.subarray(start));
          break;
        }
        line.push(value.subarray(start, newline));
        start = newline + 1;
        const item = line.take(decoder);
        if (item.kind === "oversized" || item.text.trim() !== "") yield item;
      }
    }
    if (line.size > 0) {
      const item = line.take(decoder);
      if (item.kind === "oversized" || item.text.trim() !== "") yield item;
    }
  } finally {
    release();
  }
}

/** What `streamPodList` found besides the items. */
export interface PodListHead {
  /** `metadata.resourceVersion` of the list, or undefined when absent. */
  resourceVersion?: string;
  /** True when the document had an `items` array. */
  hasItems: boolean;
}

/**
 * Parse a `{"metadata":{…},"items":[…]}` document item by item: `onItem` gets each element of
 * `items` (a JSON text of at most `maxItemBytes`, or `oversized`) as soon as it is complete.
 * Throws `SyntaxError` when the document is not a JSON object or is cut short.
 */
export async function streamPodList(
  stream: ReadableStream<Uint8Array>,
  options: { maxItemBytes: number; onItem: (item: BoundedItem) => void; signal?: AbortSignal },
): Promise<PodListHead> {
  const decoder = new TextDecoder();
  const item = new Accumulator(options.maxItemBytes);
  const metadata = new Accumulator(64 * 1024);
  const head: PodListHead = { hasItems: false };
  // Scanner state.
  let depth = 0;
  let inString = false;
  let escaped = false;
  let started = false;
  let finished = false;
  /** Bytes of the last string at depth 1 (a key candidate), bounded. */
  let key = "";
  let keyBytes: number[] | null = null;
  let pendingKey: string | null = null;
  /** What the current depth-1 value is: items array, metadata object, or anything else. */
  let section: "items" | "metadata" | "other" | null = null;
  let itemStart = -1;
  let metadataStart = -1;

  const { reader, release } = cancellableReader(stream, options.signal);
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (options.signal?.aborted) throw options.signal.reason;
      if (done) break;
      itemStart = section === "items" && depth >= 3 ? 0 : -1;
      metadataStart = section === "metadata" && depth >= 2 ? 0 : -1;
      for (let i = 0; i < value.length; i++) {
        const c = value[i];
        if (inString) {
          if (keyBytes !== null && keyBytes.length < 64 && c !== QUOTE) keyBytes.push(c);
          if (escaped) escaped = false;
          else if (c === BACKSLASH) escaped = true;
          else if (c === QUOTE) {
            inString = false;
            if (keyBytes !== null) {
              key = String.fromCharCode(...keyBytes);
              keyBytes = null;
            }
          }
          continue;
        }
        if (c === QUOTE) {
          inString = true;
          if (depth === 1 && section === null) keyBytes = [];
          continue;
        }
        if (c === COLON && depth === 1) {
          pendingKey = key;
          continue;
        }
        if (c === OPEN_BRACE || c === OPEN_BRACKET) {
          if (!started) {
            if (c !== OPEN_BRACE) throw new SyntaxError("a PodList must be a JSON object");
            started = true;
          } else if (depth === 1 && pendingKey !== null) {
            section = pendingKey === "items" && c === OPEN_BRACKET
              ? "items"
              : pendingKey === "metadata" && c === OPEN_BRACE
              ? "metadata"
              : "other";
            if (section === "items") head.hasItems = true;
            if (section === "metadata") metadataStart = i;
            pendingKey = null;
          } else if (depth === 2 && section === "items" && c === OPEN_BRACE) {
            itemStart = i;
          }
          depth++;
          continue;
        }
        if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
          depth--;
          if (depth < 0) throw new SyntaxError("unbalanced PodList document");
          if (depth === 2 && section === "items" && c === CLOSE_BRACE && itemStart >= 0) {
            item.push(value.subarray(itemStart, i + 1));
            itemStart = -1;
            options.onItem(item.take(decoder));
          } else if (depth === 1 && section !== null) {
            if (section === "metadata" && metadataStart >= 0) {
              metadata.push(value.subarray(metadataStart, i + 1));
              metadataStart = -1;
              const taken = metadata.take(decoder);
              if (taken.kind === "json") {
                const rv = (JSON.parse(taken.text) as { resourceVersion?: unknown })
                  .resourceVersion;
                if (typeof rv === "string") head.resourceVersion = rv;
              }
            }
            section = null;
          } else if (depth === 0) {
            finished = true;
          }
          continue;
        }
        if (depth === 1 && section === null && pendingKey !== null && c > 32 && c !== 44) {
          // A scalar value at depth 1 (kind, apiVersion): nothing to keep.
          pendingKey = null;
        }
      }
      if (itemStart >= 0) item.push(value.subarray(itemStart));
      if (metadataStart >= 0) metadata.push(value.subarray(metadataStart));
    }
  } finally {
    release();
  }
  if (!finished || inString) throw new SyntaxError("PodList document cut short");
  return head;
}
