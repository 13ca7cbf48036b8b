/**
 * The NVML functions the agent binds with `Deno.dlopen`.
 *
 * Conventions (they keep everything working under a scoped `--allow-ffi=/abs/path`, where every
 * `Deno.UnsafePointer*` API throws NotCapable):
 * - `nvmlReturn_t` (a 4-byte enum) → `"i32"`.
 * - `nvmlDevice_t` (an opaque pointer passed by value) → `"u64"`; it is received through a
 *   `BigUint64Array(1)` passed as a `"buffer"` out-parameter.
 * - Every other out-parameter (`unsigned int *`, `char *`, struct pointers) → `"buffer"` with a
 *   typed array the caller allocates and decodes (see `layouts.ts`).
 * - `nvmlErrorString` is deliberately not bound: it returns a pointer (see `return_codes.ts`).
 *
 * Symbols that the core get/set path does not need, or that only newer drivers have, are
 * `optional: true` (Deno gives `null` when the library lacks them).
 *
 * @module
 */

/** Foreign function declarations for `Deno.dlopen(path, NVML_SYMBOLS)`. */
export const NVML_SYMBOLS = {
  /** `nvmlReturn_t nvmlInit_v2(void)` */
  nvmlInit_v2: { parameters: [], result: "i32" },
  /** `nvmlReturn_t nvmlShutdown(void)` */
  nvmlShutdown: { parameters: [], result: "i32" },
  /** `nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)` */
  nvmlSystemGetDriverVersion: {
    parameters: [
      "buffer", // char *version (out, NUL-terminated; 80 bytes is enough)
      "u32", // unsigned int length
    ],
    result: "i32",
  },
  /** `nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)` */
  nvmlDeviceGetCount_v2: {
    parameters: [
      "buffer", // unsigned int *deviceCount (out)
    ],
    result: "i32",
  },
  /** `nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)` */
  nvmlDeviceGetHandleByIndex_v2: {
    parameters: [
      "u32", // unsigned int index
      "buffer", // nvmlDevice_t *device (out, 8 bytes)
    ],
    result: "i32",
  },
  /** `nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)` */
  nvmlDeviceGetHandleByUUID: {
    parameters: [
      "buffer", // const char *uuid (in, NUL-terminated; GPU or MIG UUID)
      "buffer", // nvmlDevice_t *device (out, 8 bytes)
    ],
    result: "i32",
    optional: true,
  },
  /** `nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)` */
  nvmlDeviceGetUUID: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // char *uuid (out, NUL-terminated; 96 bytes)
      "u32", // unsigned int length
    ],
    result: "i32",
  },
  /** `nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)` */
  nvmlDeviceGetName: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // char *name (out, NUL-terminated; 96 bytes)
      "u32", // unsigned int length
    ],
    result: "i32",
  },
  /** `nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)` */
  nvmlDeviceGetPciInfo_v3: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // nvmlPciInfo_t *pci (out, 68 bytes)
    ],
    result: "i32",
  },
  /** `nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)` */
  nvmlDeviceGetPowerUsage: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *power (out, milliwatts)
    ],
    result: "i32",
    optional: true,
  },
  /** `nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit)` */
  nvmlDeviceGetPowerManagementLimit: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *limit (out, milliwatts)
    ],
    result: "i32",
  },
  /**
   * `nvmlReturn_t nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device,
   * unsigned int *minLimit, unsigned int *maxLimit)`
   */
  nvmlDeviceGetPowerManagementLimitConstraints: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *minLimit (out, milliwatts)
      "buffer", // unsigned int *maxLimit (out, milliwatts)
    ],
    result: "i32",
  },
  /**
   * `nvmlReturn_t nvmlDeviceGetPowerManagementDefaultLimit(nvmlDevice_t device,
   * unsigned int *defaultLimit)`
   */
  nvmlDeviceGetPowerManagementDefaultLimit: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *defaultLimit (out, milliwatts)
    ],
    result: "i32",
  },
  /** `nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit)` */
  nvmlDeviceGetEnforcedPowerLimit: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *limit (out, milliwatts)
    ],
    result: "i32",
    optional: true,
  },
  /** `nvmlReturn_t nvmlDeviceSetPowerManagementLimit(nvmlDevice_t device, unsigned int limit)` */
  nvmlDeviceSetPowerManagementLimit: {
    parameters: [
      "u64", // nvmlDevice_t device
      "u32", // unsigned int limit (milliwatts)
    ],
    result: "i32",
  },
  /**
   * `nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
   * unsigned long long *energy)`
   */
  nvmlDeviceGetTotalEnergyConsumption: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned long long *energy (out, millijoules since driver load)
    ],
    result: "i32",
    optional: true,
  },
  /**
   * `nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
   * unsigned int *infoCount, nvmlProcessInfo_t *infos)` (R510+)
   */
  nvmlDeviceGetComputeRunningProcesses_v3: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *infoCount (in: capacity, out: needed/filled)
      "buffer", // nvmlProcessInfo_t *infos (out, 24 bytes each; NULL when *infoCount is 0)
    ],
    result: "i32",
    optional: true,
  },
  /**
   * `nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
   * unsigned int *infoCount, nvmlProcessInfo_v2_t *infos)` (CUDA 11.1+ drivers)
   */
  nvmlDeviceGetComputeRunningProcesses_v2: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *infoCount (in: capacity, out: needed/filled)
      "buffer", // nvmlProcessInfo_v2_t *infos (out, 24 bytes each; NULL when *infoCount is 0)
    ],
    result: "i32",
    optional: true,
  },
  /**
   * `nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device,
   * unsigned int *infoCount, nvmlProcessInfo_v1_t *infos)`
   */
  nvmlDeviceGetComputeRunningProcesses: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *infoCount (in: capacity, out: needed/filled)
      "buffer", // nvmlProcessInfo_v1_t *infos (out, 16 bytes each; NULL when *infoCount is 0)
    ],
    result: "i32",
    optional: true,
  },
  /**
   * `nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
   * unsigned int *pendingMode)`
   */
  nvmlDeviceGetMigMode: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *currentMode (out, 1 = MIG enabled)
      "buffer", // unsigned int *pendingMode (out)
    ],
    result: "i32",
    optional: true,
  },
  /** `nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)` */
  nvmlDeviceGetMaxMigDeviceCount: {
    parameters: [
      "u64", // nvmlDevice_t device
      "buffer", // unsigned int *count (out; 0 when MIG is off or unsupported)
    ],
    result: "i32",
    optional: true,
  },
  /**
   * `nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
   * nvmlDevice_t *migDevice)` (NOT_FOUND = empty slot)
   */
  nvmlDeviceGetMigDeviceHandleByIndex: {
    parameters: [
      "u64", // nvmlDevice_t device (the physical GPU)
      "u32", // unsigned int index (0 .. MaxMigDeviceCount-1)
      "buffer", // nvmlDevice_t *migDevice (out, 8 bytes)
    ],
    result: "i32",
    optional: true,
  },
  /**
   * `nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice,
   * nvmlDevice_t *device)`
   */
  nvmlDeviceGetDeviceHandleFromMigDeviceHandle: {
    parameters: [
      "u64", // nvmlDevice_t migDevice
      "buffer", // nvmlDevice_t *device (out, 8 bytes; the physical GPU)
    ],
    result: "i32",
    optional: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** Type of the symbol table (for `Deno.DynamicLibrary<NvmlSymbols>`). */
export type NvmlSymbols = typeof NVML_SYMBOLS;
