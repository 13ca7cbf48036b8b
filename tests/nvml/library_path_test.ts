import assert from "node:assert/strict";
import { NvmlLibraryError } from "../../src/nvml/errors.ts";
import {
  findNvmlLibraryPath,
  NVML_LIBRARY_NAME,
  parseLdSoCache,
  resolveNvmlLibraryPath,
} from "../../src/nvml/library_path.ts";

interface CacheEntry {
  name: string;
  path: string;
  flags: number;
}

const X86_64 = 0x0303; // FLAG_ELF_LIBC6 | FLAG_X8664_LIB64
const I386 = 0x0003; // FLAG_ELF_LIBC6
const AARCH64 = 0x0a03; // FLAG_ELF_LIBC6 | FLAG_AARCH64_LIB64

function ascii(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** glibc-ld.so.cache1.1 as ldconfig writes it: header, 24-byte entries, then strings. */
function newFormatCache(entries: CacheEntry[]): Uint8Array {
  const headerSize = 48;
  const stringsStart = headerSize + entries.length * 24;
  const strings: number[] = [];
  const offsets = entries.map((entry) => {
    const name = stringsStart + strings.length;
    strings.push(...ascii(entry.name), 0);
    const path = stringsStart + strings.length;
    strings.push(...ascii(entry.path), 0);
    return { name, path };
  });
  const bytes = new Uint8Array(stringsStart + strings.length);
  const view = new DataView(bytes.buffer);
  bytes.set(ascii("glibc-ld.so.cache1.1"), 0);
  view.setUint32(20, entries.length, true);
  view.setUint32(24, strings.length, true);
  entries.forEach((entry, i) => {
    const at = headerSize + i * 24;
    view.setInt32(at, entry.flags, true);
    view.setUint32(at + 4, offsets[i].name, true);
    view.setUint32(at + 8, offsets[i].path, true);
  });
  bytes.set(strings, stringsStart);
  return bytes;
}

/** Old ld.so-1.7.0 format alone: 16-byte header, 12-byte entries, strings relative to their end. */
function oldFormatCache(entries: CacheEntry[]): Uint8Array {
  const entriesEnd = 16 + entries.length * 12;
  const strings: number[] = [];
  const offsets = entries.map((entry) => {
    const name = strings.length;
    strings.push(...ascii(entry.name), 0);
    const path = strings.length;
    strings.push(...ascii(entry.path), 0);
    return { name, path };
  });
  const bytes = new Uint8Array(entriesEnd + strings.length);
  const view = new DataView(bytes.buffer);
  bytes.set(ascii("ld.so-1.7.0"), 0);
  view.setUint32(12, entries.length, true);
  entries.forEach((entry, i) => {
    view.setInt32(16 + i * 12, entry.flags, true);
    view.setUint32(16 + i * 12 + 4, offsets[i].name, true);
    view.setUint32(16 + i * 12 + 8, offsets[i].path, true);
  });
  bytes.set(strings, entriesEnd);
  return bytes;
}

/** Old section followed (8-aligned) by a new section, as compat-mode ldconfig writes. */
function combinedCache(oldEntries: CacheEntry[], newEntries: CacheEntry[]): Uint8Array {
  const oldPart = oldFormatCache(oldEntries);
  const oldSectionEnd = 16 + oldEntries.length * 12;
  const newAt = Math.ceil(oldSectionEnd / 8) * 8;
  const newPart = newFormatCache(newEntries);
  const bytes = new Uint8Array(newAt + newPart.byteLength);
  bytes.set(oldPart.subarray(0, oldSectionEnd), 0); // old strings are not needed by the new part
  bytes.set(newPart, newAt);
  return bytes;
}

function withTree(fn: (root: string, makeLib: (dir: string) => string) => void): void {
  const root = Deno.makeTempDirSync({ prefix: "nvml-libpath-" });
  try {
    fn(root, (dir) => {
      Deno.mkdirSync(`${root}/${dir}`, { recursive: true });
      const path = `${root}/${dir}/${NVML_LIBRARY_NAME}`;
      Deno.writeFileSync(path, new Uint8Array([0x7f, 0x45, 0x4c, 0x46]));
      return path;
    });
  } finally {
    Deno.removeSync(root, { recursive: true });
  }
}

Deno.test("explicit absolute path wins and is returned as given", () => {
  assert.equal(
    resolveNvmlLibraryPath("/opt/nvidia/libnvidia-ml.so.1", { searchDirs: [], ldCachePath: null }),
    "/opt/nvidia/libnvidia-ml.so.1",
  );
});

Deno.test("explicit relative path is a usage error", () => {
  assert.throws(
    () => resolveNvmlLibraryPath("libnvidia-ml.so.1"),
    (error: unknown) => error instanceof TypeError && /must be absolute/.test(error.message),
  );
});

Deno.test("search dirs are tried in order; first existing library wins", () => {
  withTree((root, makeLib) => {
    const second = makeLib("b");
    makeLib("c");
    const dirs = [`${root}/a`, `${root}/b/`, `${root}/c`];
    assert.equal(
      resolveNvmlLibraryPath(undefined, { searchDirs: dirs, ldCachePath: null }),
      second,
    );
    assert.equal(resolveNvmlLibraryPath("", { searchDirs: dirs, ldCachePath: null }), second);
  });
});

Deno.test("nothing found → NvmlLibraryError naming the places searched", () => {
  withTree((root) => {
    const dirs = [`${root}/none`, `${root}/also-none`];
    assert.equal(
      findNvmlLibraryPath({ searchDirs: dirs, ldCachePath: `${root}/ld.so.cache` }),
      null,
    );
    assert.throws(
      () =>
        resolveNvmlLibraryPath(undefined, { searchDirs: dirs, ldCachePath: `${root}/ld.so.cache` }),
      (error: unknown) =>
        error instanceof NvmlLibraryError &&
        error.message.startsWith("NVIDIA driver not found: cannot load libnvidia-ml.so.1") &&
        error.message.includes(`${root}/none`) &&
        error.message.includes(`${root}/ld.so.cache`),
    );
  });
});

Deno.test("parseLdSoCache reads the new glibc format", () => {
  const cache = newFormatCache([
    { name: "libc.so.6", path: "/lib/x86_64-linux-gnu/libc.so.6", flags: X86_64 },
    { name: NVML_LIBRARY_NAME, path: "/usr/lib/i386-linux-gnu/libnvidia-ml.so.1", flags: I386 },
  ]);
  assert.deepEqual(parseLdSoCache(cache), [
    { name: "libc.so.6", path: "/lib/x86_64-linux-gnu/libc.so.6", flags: X86_64 },
    { name: NVML_LIBRARY_NAME, path: "/usr/lib/i386-linux-gnu/libnvidia-ml.so.1", flags: I386 },
  ]);
});

Deno.test("parseLdSoCache reads the old format and old+new combined files", () => {
  const entry = { name: "libfoo.so.1", path: "/usr/lib/libfoo.so.1", flags: X86_64 };
  assert.deepEqual(parseLdSoCache(oldFormatCache([entry])), [entry]);
  const newer = { name: "libbar.so.2", path: "/usr/lib64/libbar.so.2", flags: X86_64 };
  // 1 old entry: old section ends at 28, new section starts at 32 (8-aligned).
  assert.deepEqual(parseLdSoCache(combinedCache([entry], [newer])), [newer]);
  assert.deepEqual(parseLdSoCache(ascii("not a cache")), []);
  assert.deepEqual(parseLdSoCache(new Uint8Array(0)), []);
});

Deno.test("linker cache entry of this architecture wins over search dirs; other arches ignored", () => {
  withTree((root, makeLib) => {
    const i386 = makeLib("i386");
    const x64 = makeLib("x64");
    const arm = makeLib("arm");
    const fromDirs = makeLib("dirs");
    const ldCache = newFormatCache([
      { name: NVML_LIBRARY_NAME, path: i386, flags: I386 },
      { name: "libnvidia-ml.so", path: `${root}/x64/libnvidia-ml.so`, flags: X86_64 },
      { name: NVML_LIBRARY_NAME, path: arm, flags: AARCH64 },
      { name: NVML_LIBRARY_NAME, path: x64, flags: X86_64 },
    ]);
    const searchDirs = [`${root}/dirs`];
    assert.equal(resolveNvmlLibraryPath(undefined, { ldCache, searchDirs, arch: "x86_64" }), x64);
    assert.equal(resolveNvmlLibraryPath(undefined, { ldCache, searchDirs, arch: "aarch64" }), arm);
    const onlyI386 = newFormatCache([{ name: NVML_LIBRARY_NAME, path: i386, flags: I386 }]);
    assert.equal(
      resolveNvmlLibraryPath(undefined, { ldCache: onlyI386, searchDirs, arch: "x86_64" }),
      fromDirs,
    );
  });
});

Deno.test("stale linker cache entry (file gone) falls back to the search dirs", () => {
  withTree((root, makeLib) => {
    const fromDirs = makeLib("dirs");
    const cachePath = `${root}/ld.so.cache`;
    Deno.writeFileSync(
      cachePath,
      newFormatCache([{
        name: NVML_LIBRARY_NAME,
        path: `${root}/gone/${NVML_LIBRARY_NAME}`,
        flags: X86_64,
      }]),
    );
    assert.equal(
      resolveNvmlLibraryPath(undefined, {
        ldCachePath: cachePath,
        searchDirs: [`${root}/dirs`],
        arch: "x86_64",
      }),
      fromDirs,
    );
  });
});

Deno.test("linker cache is read from ldCachePath", () => {
  withTree((root, makeLib) => {
    const lib = makeLib("from-cache");
    const cachePath = `${root}/ld.so.cache`;
    Deno.writeFileSync(
      cachePath,
      newFormatCache([{ name: NVML_LIBRARY_NAME, path: lib, flags: X86_64 }]),
    );
    assert.equal(
      findNvmlLibraryPath({ ldCachePath: cachePath, searchDirs: [], arch: "x86_64" }),
      lib,
    );
  });
});
