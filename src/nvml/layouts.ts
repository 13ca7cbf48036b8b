/**
 * x86-64 (and aarch64: same LP64 ABI) layouts of the NVML structs the agent reads, with decoders
 * that work on caller-allocated buffers only (no `Deno.UnsafePointer*`: scoped `--allow-ffi`
 * makes those throw NotCapable).
 *
 * @module
 */

/** `nvmlProcessInfo_v1_t`: `{unsigned int pid; unsigned long long usedGpuMemory;}`. */
export const PROCESS_INFO_V1 = {
  size: 16,
  pid: 0,
  usedGpuMemory: 8,
} as const;

/**
 * `nvmlProcessInfo_v2_t` = `nvmlProcessInfo_t` (used by `_v2` and `_v3` of
 * `nvmlDeviceGetComputeRunningProcesses`).
 */
export const PROCESS_INFO_V2 = {
  size: 24,
  pid: 0,
  usedGpuMemory: 8,
  gpuInstanceId: 16,
  computeInstanceId: 20,
} as const;

/** `nvmlPciInfo_t` (filled by `nvmlDeviceGetPciInfo_v3`). */
export const PCI_INFO = {
  size: 68,
  busIdLegacy: 0,
  busIdLegacyLength: 16,
  domain: 16,
  bus: 20,
  device: 24,
  pciDeviceId: 28,
  pciSubSystemId: 32,
  busId: 36,
  busIdLength: 32,
} as const;

/** Buffer sizes NVML documents for strings (`NVML_DEVICE_UUID_V2_BUFFER_SIZE` etc.). */
export const NVML_STRING_BUFFER = {
  driverVersion: 80,
  uuid: 96,
  name: 96,
} as const;

/** `usedGpuMemory` value meaning "not available" (`NVML_VALUE_NOT_AVAILABLE`). */
export const NVML_VALUE_NOT_AVAILABLE_U64 = 0xffff_ffff_ffff_ffffn;

/** `gpuInstanceId` / `computeInstanceId` value for processes not on a MIG instance. */
export const NVML_INSTANCE_ID_NONE = 0xffff_ffff;

/** Process-info struct generation: 1 = `nvmlProcessInfo_v1_t`, 2 = `_v2_t` (also `_v3` calls). */
export type ProcessInfoLayout = 1 | 2;

/** One decoded process-info entry. */
export interface ProcessInfo {
  /** Process id (in the host PID namespace). */
  pid: number;
  /** Used GPU memory in bytes; null when NVML reports it unavailable. */
  usedGpuMemory: bigint | null;
  /** MIG GPU instance id; null for v1 layout or non-MIG processes. */
  gpuInstanceId: number | null;
  /** MIG compute instance id; null for v1 layout or non-MIG processes. */
  computeInstanceId: number | null;
}

/** Decoded `nvmlPciInfo_t`. */
export interface PciInfo {
  /** Legacy bus id, e.g. `0000:18:00.0`. */
  busIdLegacy: string;
  domain: number;
  bus: number;
  device: number;
  /** `(device id << 16) | vendor id`. */
  pciDeviceId: number;
  pciSubSystemId: number;
  /** Bus id, e.g. `00000000:18:00.0`. */
  busId: string;
}

/** Options of {@linkcode decodeProcessInfos}. */
export interface DecodeProcessInfosOptions {
  /** Struct layout the buffer holds. */
  layout: ProcessInfoLayout;
  /** Number of entries filled (the `*infoCount` NVML returned). */
  count: number;
}

/** Byte size of one process-info entry of a layout. */
export function processInfoSize(layout: ProcessInfoLayout): number {
  return layout === 1 ? PROCESS_INFO_V1.size : PROCESS_INFO_V2.size;
}

function viewOf(buffer: Uint8Array): DataView {
  return new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

/** Decodes `count` process-info structs of `layout` from a buffer NVML filled. */
export function decodeProcessInfos(
  buffer: Uint8Array,
  options: DecodeProcessInfosOptions,
): ProcessInfo[] {
  const size = processInfoSize(options.layout);
  if (!Number.isInteger(options.count) || options.count < 0) {
    throw new RangeError(`process count must be a non-negative integer, got ${options.count}`);
  }
  if (options.count * size > buffer.byteLength) {
    throw new RangeError(
      `buffer of ${buffer.byteLength} bytes cannot hold ${options.count} process entries of ${size} bytes`,
    );
  }
  const view = viewOf(buffer);
  const result: ProcessInfo[] = [];
  for (let i = 0; i < options.count; i++) {
    const base = i * size;
    const memory = view.getBigUint64(base + PROCESS_INFO_V1.usedGpuMemory, true);
    const info: ProcessInfo = {
      pid: view.getUint32(base + PROCESS_INFO_V1.pid, true),
      usedGpuMemory: memory === NVML_VALUE_NOT_AVAILABLE_U64 ? null : memory,
      gpuInstanceId: null,
      computeInstanceId: null,
    };
    if (options.layout === 2) {
      const gi = view.getUint32(base + PROCESS_INFO_V2.gpuInstanceId, true);
      const ci = view.getUint32(base + PROCESS_INFO_V2.computeInstanceId, true);
      info.gpuInstanceId = gi === NVML_INSTANCE_ID_NONE ? null : gi;
      info.computeInstanceId = ci === NVML_INSTANCE_ID_NONE ? null : ci;
    }
    result.push(info);
  }
  return result;
}

/** Decodes a NUL-terminated C string from (a slice of) a buffer; no NUL → whole slice. */
export function decodeCString(buffer: Uint8Array, offset = 0, length?: number): string {
  const end = length === undefined
    ? buffer.byteLength
    : Math.min(buffer.byteLength, offset + length);
  const slice = buffer.subarray(offset, end);
  const nul = slice.indexOf(0);
  return new TextDecoder().decode(nul === -1 ? slice : slice.subarray(0, nul));
}

/** Encodes a string as a NUL-terminated C string. */
export function encodeCString(text: string): Uint8Array {
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(bytes.byteLength + 1);
  out.set(bytes);
  return out;
}

/** Decodes an `nvmlPciInfo_t` from a buffer of at least 68 bytes. */
export function decodePciInfo(buffer: Uint8Array): PciInfo {
  if (buffer.byteLength < PCI_INFO.size) {
    throw new RangeError(
      `nvmlPciInfo_t needs ${PCI_INFO.size} bytes, buffer has ${buffer.byteLength}`,
    );
  }
  const view = viewOf(buffer);
  return {
    busIdLegacy: decodeCString(buffer, PCI_INFO.busIdLegacy, PCI_INFO.busIdLegacyLength),
    domain: view.getUint32(PCI_INFO.domain, true),
    bus: view.getUint32(PCI_INFO.bus, true),
    device: view.getUint32(PCI_INFO.device, true),
    pciDeviceId: view.getUint32(PCI_INFO.pciDeviceId, true),
    pciSubSystemId: view.getUint32(PCI_INFO.pciSubSystemId, true),
    busId: decodeCString(buffer, PCI_INFO.busId, PCI_INFO.busIdLength),
  };
}
