/**
 * NVML return codes (`nvmlReturn_t`), kept as a local table so that error names can be produced
 * without `nvmlErrorString` (which returns a pointer: unreadable under scoped `--allow-ffi`).
 *
 * @module
 */

/** Numeric NVML return codes by name (without the `NVML_ERROR_` / `NVML_` prefix). */
export const NvmlReturn = {
  SUCCESS: 0,
  UNINITIALIZED: 1,
  INVALID_ARGUMENT: 2,
  NOT_SUPPORTED: 3,
  NO_PERMISSION: 4,
  ALREADY_INITIALIZED: 5,
  NOT_FOUND: 6,
  INSUFFICIENT_SIZE: 7,
  INSUFFICIENT_POWER: 8,
  DRIVER_NOT_LOADED: 9,
  TIMEOUT: 10,
  IRQ_ISSUE: 11,
  LIBRARY_NOT_FOUND: 12,
  FUNCTION_NOT_FOUND: 13,
  CORRUPTED_INFOROM: 14,
  GPU_IS_LOST: 15,
  RESET_REQUIRED: 16,
  OPERATING_SYSTEM: 17,
  LIB_RM_VERSION_MISMATCH: 18,
  IN_USE: 19,
  MEMORY: 20,
  NO_DATA: 21,
  VGPU_ECC_NOT_SUPPORTED: 22,
  INSUFFICIENT_RESOURCES: 23,
  FREQ_NOT_SUPPORTED: 24,
  ARGUMENT_VERSION_MISMATCH: 25,
  DEPRECATED: 26,
  NOT_READY: 27,
  GPU_NOT_FOUND: 28,
  INVALID_STATE: 29,
  RESET_TYPE_NOT_SUPPORTED: 30,
  UNKNOWN: 999,
} as const;

/** Name of an NVML return code, e.g. `"NO_PERMISSION"`. */
export type NvmlReturnName = keyof typeof NvmlReturn;

/** NVML return code → name without prefix (`4` → `"NO_PERMISSION"`), codes 0..30 and 999. */
export const NVML_RETURN_CODES: Readonly<Record<number, NvmlReturnName>> = Object.freeze(
  Object.fromEntries(
    Object.entries(NvmlReturn).map(([name, code]) => [code, name as NvmlReturnName]),
  ),
);

/** Name of an NVML return code; codes outside the table give `UNKNOWN_CODE_<n>`. */
export function nvmlReturnName(code: number): string {
  return Object.hasOwn(NVML_RETURN_CODES, code) ? NVML_RETURN_CODES[code] : `UNKNOWN_CODE_${code}`;
}
