/**
 * `GpuControl` over the real NVML library through `Deno.dlopen`.
 *
 * Works under a scoped `--allow-ffi=/abs/path/libnvidia-ml.so.1`: handles travel as `u64`, and all
 * out-parameters are typed arrays this module allocates and decodes (no `Deno.UnsafePointer*`).
 *
 * Device handles and identities (UUID, name, PCI bus id) are read once per NVML session: NVML
 * enumerates the devices at `nvmlInit_v2`, and a handle names the same device, with the same
 * identity, until `nvmlShutdown`. `listGpus()` still asks for every handle on every call, so a
 * GPU that fell off the bus (GPU_IS_LOST) drops out of the list; the other calls reuse the handle
 * and every pass saves five NVML calls per GPU (measured: 13 → 8).
 *
 * @module
 */

import { getLogger } from "@logtape/logtape";
import type { GpuControl, GpuIdentity, PowerLimits, PowerSample } from "./gpu_control.ts";
import { NvmlError, NvmlLibraryError } from "./errors.ts";
import { NVML_SYMBOLS, type NvmlSymbols } from "./ffi_symbols.ts";
import {
  decodeCString,
  decodePciInfo,
  decodeProcessInfos,
  NVML_STRING_BUFFER,
  PCI_INFO,
  type ProcessInfoLayout,
  processInfoSize,
} from "./layouts.ts";
import { NvmlReturn } from "./return_codes.ts";

/** Options of {@linkcode openNvmlGpuControl}. */
export interface OpenNvmlGpuControlOptions {
  /**
   * How many times a process list is re-queried when it keeps growing between the sizing call
   * and the fill call (default 5).
   */
  processListAttempts?: number;
}

type ProcessFunctionName =
  | "nvmlDeviceGetComputeRunningProcesses_v3"
  | "nvmlDeviceGetComputeRunningProcesses_v2"
  | "nvmlDeviceGetComputeRunningProcesses";

interface ProcessFunction {
  name: ProcessFunctionName;
  layout: ProcessInfoLayout;
  call: (device: bigint, count: Uint32Array, infos: Uint8Array | null) => number;
}

/** Which optional features the opened library provides. */
export interface NvmlCapabilities {
  /** Process-list function in use (newest present), or null when the library has none. */
  processFunction: ProcessFunctionName | null;
  /** Whether the MIG functions (mode, max count, handle by index) are all present. */
  mig: boolean;
  /** Whether nvmlDeviceGetEnforcedPowerLimit is present. */
  enforcedLimit: boolean;
  /** Whether nvmlDeviceGetPowerUsage is present. */
  powerUsage: boolean;
  /** Whether nvmlDeviceGetTotalEnergyConsumption is present. */
  energy: boolean;
}

const MAX_U32 = 0xffff_ffff;

/**
 * Loads the NVML library at `libraryPath` (absolute under scoped FFI permission) and initializes
 * it. Throws {@linkcode NvmlLibraryError} when the library cannot be loaded and
 * {@linkcode NvmlError} when `nvmlInit_v2` fails (e.g. DRIVER_NOT_LOADED).
 */
export function openNvmlGpuControl(
  libraryPath: string,
  options: OpenNvmlGpuControlOptions = {},
): NvmlGpuControl {
  let library: Deno.DynamicLibrary<NvmlSymbols>;
  try {
    library = Deno.dlopen(libraryPath, NVML_SYMBOLS);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied) {
      throw error;
    }
    const detail = error instanceof Error ? error.message : String(error);
    throw new NvmlLibraryError(detail, { path: libraryPath, cause: error });
  }
  const code = library.symbols.nvmlInit_v2();
  if (code !== NvmlReturn.SUCCESS) {
    library.close();
    throw new NvmlError("nvmlInit_v2", code);
  }
  return new NvmlGpuControl(library, { ...options, libraryPath });
}

/** Internal constructor options of {@linkcode NvmlGpuControl}. */
export interface NvmlGpuControlOptions extends OpenNvmlGpuControlOptions {
  /** Path the library was loaded from (for logs). */
  libraryPath?: string;
}

/**
 * NVML-backed {@linkcode GpuControl}. Create with {@linkcode openNvmlGpuControl}; the
 * constructor takes an already initialized library (nvmlInit_v2 succeeded) and owns it.
 */
export class NvmlGpuControl implements GpuControl {
  #library: Deno.DynamicLibrary<NvmlSymbols> | null;
  #processFunction: ProcessFunction | null;
  #processListAttempts: number;
  #logger = getLogger(["gpu-power-agent", "nvml"]);
  // Scratch out-parameters (calls are synchronous, so reuse is safe).
  #handle = new BigUint64Array(1);
  #u32a = new Uint32Array(1);
  #u32b = new Uint32Array(1);
  #u64 = new BigUint64Array(1);
  #text = new Uint8Array(
    Math.max(NVML_STRING_BUFFER.driverVersion, NVML_STRING_BUFFER.uuid, NVML_STRING_BUFFER.name),
  );
  #pci = new Uint8Array(PCI_INFO.size);
  /** Handle of each index, as `nvmlDeviceGetHandleByIndex_v2` last returned it. */
  #handles = new Map<number, bigint>();
  /** Identity of each handle (constant for the session). */
  #identities = new Map<bigint, Omit<GpuIdentity, "index">>();

  constructor(library: Deno.DynamicLibrary<NvmlSymbols>, options: NvmlGpuControlOptions = {}) {
    this.#library = library;
    this.#processListAttempts = Math.max(1, options.processListAttempts ?? 5);
    this.#processFunction = pickProcessFunction(library.symbols);
    this.#logger.debug(
      "NVML loaded from {path}: processes via {processFunction}, MIG {mig}",
      {
        path: options.libraryPath ?? "(unknown)",
        processFunction: this.#processFunction?.name ?? "none",
        mig: this.capabilities().mig,
      },
    );
  }

  /** Optional features of the loaded library. */
  capabilities(): NvmlCapabilities {
    const s = this.#symbols("capabilities");
    return {
      processFunction: this.#processFunction?.name ?? null,
      mig: s.nvmlDeviceGetMigMode !== null && s.nvmlDeviceGetMaxMigDeviceCount !== null &&
        s.nvmlDeviceGetMigDeviceHandleByIndex !== null,
      enforcedLimit: s.nvmlDeviceGetEnforcedPowerLimit !== null,
      powerUsage: s.nvmlDeviceGetPowerUsage !== null,
      energy: s.nvmlDeviceGetTotalEnergyConsumption !== null,
    };
  }

  driverVersion(): string {
    const s = this.#symbols("nvmlSystemGetDriverVersion");
    const length = NVML_STRING_BUFFER.driverVersion;
    this.#text.fill(0);
    this.#check("nvmlSystemGetDriverVersion", s.nvmlSystemGetDriverVersion(this.#text, length));
    return decodeCString(this.#text, 0, length);
  }

  /**
   * Enumerates the GPUs. A GPU whose identity cannot be read (e.g. GPU_IS_LOST) is left out with
   * a warning so that the others can still be managed; a failing device count throws.
   */
  listGpus(): GpuIdentity[] {
    const s = this.#symbols("nvmlDeviceGetCount_v2");
    this.#check("nvmlDeviceGetCount_v2", s.nvmlDeviceGetCount_v2(this.#u32a));
    const count = this.#u32a[0];
    for (const index of this.#handles.keys()) if (index >= count) this.#handles.delete(index);
    const gpus: GpuIdentity[] = [];
    for (let index = 0; index < count; index++) {
      try {
        gpus.push(this.#identityOf(index));
      } catch (error) {
        if (!(error instanceof NvmlError)) throw error;
        this.#logger.warn("Skipping GPU {index}: {message}", { index, message: error.message });
      }
    }
    return gpus;
  }

  readLimits(index: number): PowerLimits {
    const s = this.#symbols("nvmlDeviceGetPowerManagementLimit");
    const handle = this.#handleOf(index);
    const limitMw = this.#u32(
      "nvmlDeviceGetPowerManagementLimit",
      handle,
      index,
      (out) => s.nvmlDeviceGetPowerManagementLimit(handle, out),
    );
    const defaultMw = this.#u32(
      "nvmlDeviceGetPowerManagementDefaultLimit",
      handle,
      index,
      (out) => s.nvmlDeviceGetPowerManagementDefaultLimit(handle, out),
    );
    const code = s.nvmlDeviceGetPowerManagementLimitConstraints(handle, this.#u32a, this.#u32b);
    if (code !== NvmlReturn.SUCCESS) {
      this.#fail("nvmlDeviceGetPowerManagementLimitConstraints", code, handle, index);
    }
    const minMw = this.#u32a[0];
    const maxMw = this.#u32b[0];
    let enforcedMw: number | null = null;
    const enforced = s.nvmlDeviceGetEnforcedPowerLimit;
    if (enforced !== null) {
      enforcedMw = this.#optionalU32(
        "nvmlDeviceGetEnforcedPowerLimit",
        handle,
        index,
        (out) => enforced(handle, out),
      );
    }
    return { limitMw, enforcedMw, defaultMw, minMw, maxMw };
  }

  readSample(index: number): PowerSample {
    const s = this.#symbols("nvmlDeviceGetPowerUsage");
    const handle = this.#handleOf(index);
    let drawMw: number | null = null;
    const usage = s.nvmlDeviceGetPowerUsage;
    if (usage !== null) {
      drawMw = this.#optionalU32(
        "nvmlDeviceGetPowerUsage",
        handle,
        index,
        (out) => usage(handle, out),
      );
    }
    let energyMj: number | null = null;
    const energy = s.nvmlDeviceGetTotalEnergyConsumption;
    if (energy !== null) {
      this.#u64[0] = 0n;
      const code = energy(handle, this.#u64);
      if (code === NvmlReturn.SUCCESS) {
        energyMj = Number(this.#u64[0]);
      } else if (code !== NvmlReturn.NOT_SUPPORTED) {
        this.#fail("nvmlDeviceGetTotalEnergyConsumption", code, handle, index);
      }
    }
    return { drawMw, energyMj };
  }

  setLimit(index: number, mw: number): void {
    if (!Number.isInteger(mw) || mw < 0 || mw > MAX_U32) {
      throw new RangeError(`power limit must be a whole number of milliwatts, got ${mw}`);
    }
    const s = this.#symbols("nvmlDeviceSetPowerManagementLimit");
    const handle = this.#handleOf(index);
    const code = s.nvmlDeviceSetPowerManagementLimit(handle, mw);
    if (code !== NvmlReturn.SUCCESS) {
      this.#fail("nvmlDeviceSetPowerManagementLimit", code, handle, index);
    }
  }

  computePids(index: number): number[] {
    const handle = this.#handleOf(index);
    const pids = new Set<number>();
    const migHandles = this.#migHandles(handle, index);
    if (migHandles.length === 0) {
      for (const pid of this.#processes(handle, () => this.#labelOf(handle, index))) pids.add(pid);
    } else {
      // In MIG mode the parent may refuse (needs privileges); the MIG instances are authoritative.
      try {
        for (const pid of this.#processes(handle, () => this.#labelOf(handle, index))) {
          pids.add(pid);
        }
      } catch (error) {
        if (!(error instanceof NvmlError)) throw error;
        this.#logger.debug("Parent process query failed in MIG mode: {message}", {
          message: error.message,
        });
      }
      for (const mig of migHandles) {
        const label = () => this.#migLabel(mig, handle, index);
        for (const pid of this.#processes(mig, label)) pids.add(pid);
      }
    }
    return [...pids].sort((a, b) => a - b);
  }

  migDeviceUuids(index: number): string[] {
    const handle = this.#handleOf(index);
    const label = this.#labelOf(handle, index);
    return this.#migHandles(handle, index).map((mig) =>
      this.#string("nvmlDeviceGetUUID", mig, label, NVML_STRING_BUFFER.uuid)
    );
  }

  close(): void {
    const library = this.#library;
    if (library === null) return;
    this.#library = null;
    try {
      const code = library.symbols.nvmlShutdown();
      if (code !== NvmlReturn.SUCCESS) {
        this.#logger.warn("nvmlShutdown returned {code}", { code });
      }
    } finally {
      library.close();
    }
  }

  // ---------------------------------------------------------------- internals

  #symbols(fn: string): Deno.DynamicLibrary<NvmlSymbols>["symbols"] {
    if (this.#library === null) {
      throw new NvmlError(fn, NvmlReturn.UNINITIALIZED, {
        hint: "the GPU control was closed",
      });
    }
    return this.#library.symbols;
  }

  #check(fn: string, code: number, gpu?: string): void {
    if (code !== NvmlReturn.SUCCESS) throw new NvmlError(fn, code, { gpu });
  }

  /** Throws an NvmlError labelled with the GPU's UUID (best effort) or index. */
  #fail(fn: string, code: number, handle: bigint, index: number): never {
    throw new NvmlError(fn, code, { gpu: this.#labelOf(handle, index) });
  }

  #labelOf(handle: bigint, index: number): string {
    const s = this.#symbols("nvmlDeviceGetUUID");
    const buffer = new Uint8Array(NVML_STRING_BUFFER.uuid);
    const code = s.nvmlDeviceGetUUID(handle, buffer, buffer.byteLength);
    const uuid = code === NvmlReturn.SUCCESS ? decodeCString(buffer) : "";
    return uuid === "" ? String(index) : uuid;
  }

  #migLabel(mig: bigint, parent: bigint, index: number): string {
    const parentLabel = this.#labelOf(parent, index);
    const s = this.#symbols("nvmlDeviceGetUUID");
    const buffer = new Uint8Array(NVML_STRING_BUFFER.uuid);
    const code = s.nvmlDeviceGetUUID(mig, buffer, buffer.byteLength);
    return code === NvmlReturn.SUCCESS && buffer[0] !== 0
      ? `${parentLabel} (MIG ${decodeCString(buffer)})`
      : parentLabel;
  }

  #identityOf(index: number): GpuIdentity {
    const handle = this.#lookupHandle(index);
    const known = this.#identities.get(handle);
    if (known !== undefined) return { index, ...known };
    const s = this.#symbols("nvmlDeviceGetPciInfo_v3");
    const uuid = this.#string("nvmlDeviceGetUUID", handle, index, NVML_STRING_BUFFER.uuid);
    const name = this.#string("nvmlDeviceGetName", handle, uuid, NVML_STRING_BUFFER.name);
    this.#pci.fill(0);
    this.#check("nvmlDeviceGetPciInfo_v3", s.nvmlDeviceGetPciInfo_v3(handle, this.#pci), uuid);
    const identity = { uuid, name, pciBusId: decodePciInfo(this.#pci).busId };
    this.#identities.set(handle, identity);
    return { index, ...identity };
  }

  /** The handle of `index`: the one this session already has, else asked for. */
  #handleOf(index: number): bigint {
    return this.#handles.get(index) ?? this.#lookupHandle(index);
  }

  /** Ask NVML for the handle of `index` (and remember it; forget it when NVML refuses). */
  #lookupHandle(index: number): bigint {
    if (!Number.isInteger(index) || index < 0 || index > MAX_U32) {
      throw new RangeError(`GPU index must be a non-negative integer, got ${index}`);
    }
    const s = this.#symbols("nvmlDeviceGetHandleByIndex_v2");
    this.#handle[0] = 0n;
    const code = s.nvmlDeviceGetHandleByIndex_v2(index, this.#handle);
    if (code !== NvmlReturn.SUCCESS) {
      this.#handles.delete(index);
      throw new NvmlError("nvmlDeviceGetHandleByIndex_v2", code, { gpu: String(index) });
    }
    this.#handles.set(index, this.#handle[0]);
    return this.#handle[0];
  }

  #string(
    fn: "nvmlDeviceGetUUID" | "nvmlDeviceGetName",
    handle: bigint,
    gpu: number | string,
    length: number,
  ): string {
    const s = this.#symbols(fn);
    this.#text.fill(0);
    const code = s[fn](handle, this.#text, length);
    if (code !== NvmlReturn.SUCCESS) {
      throw new NvmlError(fn, code, {
        gpu: typeof gpu === "number" ? String(gpu) : gpu,
      });
    }
    return decodeCString(this.#text, 0, length);
  }

  #u32(
    fn: string,
    handle: bigint,
    index: number,
    call: (out: Uint32Array) => number,
  ): number {
    this.#u32a[0] = 0;
    const code = call(this.#u32a);
    if (code !== NvmlReturn.SUCCESS) this.#fail(fn, code, handle, index);
    return this.#u32a[0];
  }

  /** Like #u32 but NOT_SUPPORTED gives null. */
  #optionalU32(
    fn: string,
    handle: bigint,
    index: number,
    call: (out: Uint32Array) => number,
  ): number | null {
    this.#u32a[0] = 0;
    const code = call(this.#u32a);
    if (code === NvmlReturn.NOT_SUPPORTED) return null;
    if (code !== NvmlReturn.SUCCESS) this.#fail(fn, code, handle, index);
    return this.#u32a[0];
  }

  /** MIG device handles of a GPU in MIG mode; empty when MIG is off or unavailable. */
  #migHandles(handle: bigint, index: number): bigint[] {
    const s = this.#symbols("nvmlDeviceGetMigMode");
    const getMode = s.nvmlDeviceGetMigMode;
    const getMax = s.nvmlDeviceGetMaxMigDeviceCount;
    const getMig = s.nvmlDeviceGetMigDeviceHandleByIndex;
    if (getMode === null) return [];
    const current = new Uint32Array(1);
    const pending = new Uint32Array(1);
    const modeCode = getMode(handle, current, pending);
    if (modeCode === NvmlReturn.NOT_SUPPORTED) return [];
    if (modeCode !== NvmlReturn.SUCCESS) {
      this.#fail("nvmlDeviceGetMigMode", modeCode, handle, index);
    }
    if (current[0] !== 1) return [];
    if (getMax === null || getMig === null) {
      const missing = getMax === null
        ? "nvmlDeviceGetMaxMigDeviceCount"
        : "nvmlDeviceGetMigDeviceHandleByIndex";
      this.#fail(missing, NvmlReturn.FUNCTION_NOT_FOUND, handle, index);
    }
    const max = new Uint32Array(1);
    const maxCode = getMax(handle, max);
    if (maxCode !== NvmlReturn.SUCCESS) {
      this.#fail("nvmlDeviceGetMaxMigDeviceCount", maxCode, handle, index);
    }
    const handles: bigint[] = [];
    const out = new BigUint64Array(1);
    for (let slot = 0; slot < max[0]; slot++) {
      out[0] = 0n;
      const code = getMig(handle, slot, out);
      if (code === NvmlReturn.NOT_FOUND) continue; // empty slot
      if (code !== NvmlReturn.SUCCESS) {
        this.#fail("nvmlDeviceGetMigDeviceHandleByIndex", code, handle, index);
      }
      handles.push(out[0]);
    }
    return handles;
  }

  /** PIDs of one device (GPU or MIG) via the two-call INSUFFICIENT_SIZE protocol. */
  #processes(handle: bigint, label: () => string): number[] {
    const fn = this.#processFunction;
    if (fn === null) {
      throw new NvmlError("nvmlDeviceGetComputeRunningProcesses", NvmlReturn.FUNCTION_NOT_FOUND, {
        gpu: label(),
      });
    }
    const count = new Uint32Array(1);
    let code = fn.call(handle, count, null);
    if (code === NvmlReturn.SUCCESS) return [];
    if (code !== NvmlReturn.INSUFFICIENT_SIZE) throw new NvmlError(fn.name, code, { gpu: label() });
    let capacity = count[0] * 2 + 8; // headroom: the list can grow between the two calls
    for (let attempt = 0; attempt < this.#processListAttempts; attempt++) {
      const buffer = new Uint8Array(capacity * processInfoSize(fn.layout));
      count[0] = capacity;
      code = fn.call(handle, count, buffer);
      if (code === NvmlReturn.SUCCESS) {
        const filled = Math.min(count[0], capacity);
        return decodeProcessInfos(buffer, { layout: fn.layout, count: filled }).map((p) => p.pid);
      }
      if (code !== NvmlReturn.INSUFFICIENT_SIZE) {
        throw new NvmlError(fn.name, code, { gpu: label() });
      }
      this.#logger.debug("Process list of {gpu} grew to {count}; retrying", {
        gpu: label(),
        count: count[0],
      });
      capacity = Math.max(count[0], capacity) * 2 + 8;
    }
    throw new NvmlError(fn.name, NvmlReturn.INSUFFICIENT_SIZE, {
      gpu: label(),
      hint:
        `the process list kept growing after ${this.#processListAttempts} attempts; retry later`,
    });
  }
}

function pickProcessFunction(
  s: Deno.DynamicLibrary<NvmlSymbols>["symbols"],
): ProcessFunction | null {
  const v3 = s.nvmlDeviceGetComputeRunningProcesses_v3;
  if (v3 !== null) {
    return { name: "nvmlDeviceGetComputeRunningProcesses_v3", layout: 2, call: v3 };
  }
  const v2 = s.nvmlDeviceGetComputeRunningProcesses_v2;
  if (v2 !== null) {
    return { name: "nvmlDeviceGetComputeRunningProcesses_v2", layout: 2, call: v2 };
  }
  const v1 = s.nvmlDeviceGetComputeRunningProcesses;
  if (v1 !== null) return { name: "nvmlDeviceGetComputeRunningProcesses", layout: 1, call: v1 };
  return null;
}
