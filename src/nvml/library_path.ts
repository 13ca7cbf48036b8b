/**
 * Finds `libnvidia-ml.so.1` as an absolute path (scoped `--allow-ffi=/abs/path` needs one):
 * an explicit value (flag / env) wins, else the dynamic linker cache (`/etc/ld.so.cache`, parsed
 * here: no subprocess permission is needed), else the usual driver directories.
 *
 * @module
 */

import { NvmlLibraryError } from "./errors.ts";

/** File name of the NVML library. */
export const NVML_LIBRARY_NAME = "libnvidia-ml.so.1";

/** Directories searched when the linker cache has no usable entry. */
export const DEFAULT_NVML_SEARCH_DIRS: readonly string[] = Object.freeze([
  "/usr/lib/x86_64-linux-gnu",
  "/usr/lib64",
  "/usr/lib/aarch64-linux-gnu",
  "/usr/local/nvidia/lib64",
  "/usr/local/nvidia/lib",
  "/usr/lib/wsl/lib",
  "/run/nvidia/driver/usr/lib/x86_64-linux-gnu",
  "/run/nvidia/driver/usr/lib64",
  "/usr/lib",
  "/lib64",
  "/lib/x86_64-linux-gnu",
  "/lib/aarch64-linux-gnu",
]);

/** Default location of the dynamic linker cache. */
export const DEFAULT_LD_CACHE_PATH = "/etc/ld.so.cache";

/** One entry of the dynamic linker cache. */
export interface LdCacheEntry {
  /** Library soname, e.g. `libnvidia-ml.so.1`. */
  name: string;
  /** Absolute path of the library. */
  path: string;
  /** glibc cache flags (`FLAG_ELF_LIBC6 | FLAG_X8664_LIB64` = 0x0303 for x86-64). */
  flags: number;
}

/** Options of {@linkcode resolveNvmlLibraryPath} and {@linkcode findNvmlLibraryPath}. */
export interface ResolveNvmlLibraryPathOptions {
  /** Directories to search (default {@linkcode DEFAULT_NVML_SEARCH_DIRS}). */
  searchDirs?: readonly string[];
  /** Linker cache file (default `/etc/ld.so.cache`); `null` skips the cache. */
  ldCachePath?: string | null;
  /** Linker cache content to use instead of reading `ldCachePath`. */
  ldCache?: Uint8Array;
  /** Architecture whose cache entries count (default `Deno.build.arch`). */
  arch?: string;
}

const OLD_MAGIC = "ld.so-1.7.0";
const NEW_MAGIC = "glibc-ld.so.cache1.1";
const OLD_HEADER_SIZE = 16; // char magic[11]; (pad 1) unsigned int nlibs
const OLD_ENTRY_SIZE = 12; // int32 flags; uint32 key; uint32 value
const NEW_HEADER_SIZE = 48;
const NEW_ENTRY_SIZE = 24; // old entry + uint32 osversion + uint64 hwcap
const FLAG_ELF_LIBC6 = 0x0003;
const FLAG_TYPE_MASK = 0x00ff;
const FLAG_REQUIRED_MASK = 0xff00;
const ARCH_FLAGS: Readonly<Record<string, number>> = {
  x86_64: 0x0300, // FLAG_X8664_LIB64
  aarch64: 0x0a00, // FLAG_AARCH64_LIB64
};

function startsWithAscii(bytes: Uint8Array, offset: number, text: string): boolean {
  if (offset + text.length > bytes.byteLength) return false;
  for (let i = 0; i < text.length; i++) {
    if (bytes[offset + i] !== text.charCodeAt(i)) return false;
  }
  return true;
}

function readCString(bytes: Uint8Array, offset: number): string | null {
  if (offset < 0 || offset >= bytes.byteLength) return null;
  const end = bytes.indexOf(0, offset);
  if (end === -1) return null;
  return new TextDecoder().decode(bytes.subarray(offset, end));
}

function readEntries(
  bytes: Uint8Array,
  options: { entriesAt: number; count: number; entrySize: number; stringsAt: number },
): LdCacheEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const entries: LdCacheEntry[] = [];
  for (let i = 0; i < options.count; i++) {
    const at = options.entriesAt + i * options.entrySize;
    if (at + OLD_ENTRY_SIZE > bytes.byteLength) break;
    const flags = view.getInt32(at, true);
    const name = readCString(bytes, options.stringsAt + view.getUint32(at + 4, true));
    const path = readCString(bytes, options.stringsAt + view.getUint32(at + 8, true));
    if (name !== null && path !== null) entries.push({ name, path, flags });
  }
  return entries;
}

/**
 * Parses glibc's `/etc/ld.so.cache` (new `glibc-ld.so.cache1.1` format, alone or after an old
 * `ld.so-1.7.0` section, or the old format alone). Unknown content gives an empty list.
 */
export function parseLdSoCache(bytes: Uint8Array): LdCacheEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let newAt = -1;
  if (startsWithAscii(bytes, 0, NEW_MAGIC)) {
    newAt = 0;
  } else if (startsWithAscii(bytes, 0, OLD_MAGIC) && bytes.byteLength >= OLD_HEADER_SIZE) {
    const oldCount = view.getUint32(12, true);
    const oldEnd = OLD_HEADER_SIZE + oldCount * OLD_ENTRY_SIZE;
    const aligned = Math.ceil(oldEnd / 8) * 8; // ALIGN_CACHE: alignof(struct cache_file_new)
    if (startsWithAscii(bytes, aligned, NEW_MAGIC)) {
      newAt = aligned;
    } else {
      return readEntries(bytes, {
        entriesAt: OLD_HEADER_SIZE,
        count: oldCount,
        entrySize: OLD_ENTRY_SIZE,
        stringsAt: oldEnd, // old format: offsets relative to the end of the entries
      });
    }
  } else {
    return [];
  }
  if (newAt + NEW_HEADER_SIZE > bytes.byteLength) return [];
  return readEntries(bytes, {
    entriesAt: newAt + NEW_HEADER_SIZE,
    count: view.getUint32(newAt + 20, true),
    entrySize: NEW_ENTRY_SIZE,
    stringsAt: newAt, // new format: offsets relative to the new header
  });
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false; // missing, or not readable under the granted permissions
  }
}

function ldCacheCandidates(options: ResolveNvmlLibraryPathOptions): string[] {
  let bytes = options.ldCache;
  if (bytes === undefined) {
    const path = options.ldCachePath === undefined ? DEFAULT_LD_CACHE_PATH : options.ldCachePath;
    if (path === null) return [];
    try {
      bytes = Deno.readFileSync(path);
    } catch {
      return [];
    }
  }
  const archFlag = ARCH_FLAGS[options.arch ?? Deno.build.arch];
  return parseLdSoCache(bytes)
    .filter((entry) =>
      entry.name === NVML_LIBRARY_NAME &&
      (entry.flags & FLAG_TYPE_MASK) === FLAG_ELF_LIBC6 &&
      (archFlag === undefined || (entry.flags & FLAG_REQUIRED_MASK) === archFlag) &&
      entry.path.startsWith("/")
    )
    .map((entry) => entry.path);
}

/**
 * Searches the linker cache, then the driver directories, for an existing
 * `libnvidia-ml.so.1`; null when none is found.
 */
export function findNvmlLibraryPath(options: ResolveNvmlLibraryPathOptions = {}): string | null {
  for (const path of ldCacheCandidates(options)) {
    if (isFile(path)) return path;
  }
  for (const dir of options.searchDirs ?? DEFAULT_NVML_SEARCH_DIRS) {
    const path = `${dir.replace(/\/+$/, "")}/${NVML_LIBRARY_NAME}`;
    if (path.startsWith("/") && isFile(path)) return path;
  }
  return null;
}

/**
 * Absolute path of the NVML library to load.
 *
 * `explicit` (from `--nvml-library` / `NVML_LIBRARY_PATH`) is returned as given and must be
 * absolute (a relative one throws `TypeError`: a usage error). Otherwise the linker cache and the
 * driver directories are searched; nothing found throws {@linkcode NvmlLibraryError}.
 */
export function resolveNvmlLibraryPath(
  explicit?: string,
  options: ResolveNvmlLibraryPathOptions = {},
): string {
  if (explicit !== undefined && explicit !== "") {
    if (!explicit.startsWith("/")) {
      throw new TypeError(
        `NVML library path must be absolute (scoped FFI permission needs one), got "${explicit}"`,
      );
    }
    return explicit;
  }
  const found = findNvmlLibraryPath(options);
  if (found !== null) return found;
  const dirs = options.searchDirs ?? DEFAULT_NVML_SEARCH_DIRS;
  const cache = options.ldCache !== undefined
    ? "the given linker cache"
    : options.ldCachePath === null
    ? null
    : options.ldCachePath ?? DEFAULT_LD_CACHE_PATH;
  throw new NvmlLibraryError(
    `not found in ${cache === null ? "" : `${cache} or `}${dirs.join(", ")}`,
  );
}
