/**
 * Errors raised by the NVML binding.
 *
 * @module
 */

import { NvmlReturn, nvmlReturnName } from "./return_codes.ts";

const SET_LIMIT_FUNCTIONS = new Set([
  "nvmlDeviceSetPowerManagementLimit",
  "nvmlDeviceSetPowerManagementLimit_v2",
]);

const HINTS: Readonly<Record<number, string>> = {
  [NvmlReturn.UNINITIALIZED]: "NVML is not initialized; the GPU control was closed or init failed",
  [NvmlReturn.INVALID_ARGUMENT]:
    "invalid argument; the GPU index may be stale (GPUs added or removed)",
  [NvmlReturn.NOT_SUPPORTED]: "this GPU or driver does not support the operation",
  [NvmlReturn.NO_PERMISSION]: "run as root or with CAP_SYS_ADMIN",
  [NvmlReturn.ALREADY_INITIALIZED]: "NVML was already initialized",
  [NvmlReturn.NOT_FOUND]: "the GPU or object was not found",
  [NvmlReturn.INSUFFICIENT_SIZE]: "the result did not fit the buffer (it kept growing)",
  [NvmlReturn.INSUFFICIENT_POWER]: "check that the GPU's external power cables are attached",
  [NvmlReturn.DRIVER_NOT_LOADED]:
    "the NVIDIA kernel driver is not loaded; check `nvidia-smi` and `lsmod | grep nvidia`",
  [NvmlReturn.TIMEOUT]: "the driver timed out; retry, and check dmesg if it persists",
  [NvmlReturn.IRQ_ISSUE]: "the kernel driver reported an interrupt problem; check dmesg",
  [NvmlReturn.LIBRARY_NOT_FOUND]: "NVML could not find a library it depends on",
  [NvmlReturn.FUNCTION_NOT_FOUND]:
    "this driver's libnvidia-ml.so lacks the function; upgrade the NVIDIA driver",
  [NvmlReturn.CORRUPTED_INFOROM]: "the GPU's infoROM is corrupted; contact the GPU vendor",
  [NvmlReturn.GPU_IS_LOST]:
    "the GPU fell off the bus or is otherwise inaccessible; check dmesg, reset the GPU or reboot",
  [NvmlReturn.RESET_REQUIRED]: "the GPU needs a reset (`nvidia-smi -r`) or a reboot",
  [NvmlReturn.OPERATING_SYSTEM]: "the operating system blocked the request",
  [NvmlReturn.LIB_RM_VERSION_MISMATCH]:
    "libnvidia-ml.so and the loaded kernel driver differ in version; reload the driver or reboot after an upgrade",
  [NvmlReturn.IN_USE]: "the GPU is in use by another operation; retry later",
  [NvmlReturn.MEMORY]: "the driver ran out of memory",
  [NvmlReturn.NO_DATA]: "no data is available yet",
  [NvmlReturn.INSUFFICIENT_RESOURCES]: "the driver lacks the resources for the request",
  [NvmlReturn.ARGUMENT_VERSION_MISMATCH]: "the struct version does not match this driver",
  [NvmlReturn.DEPRECATED]: "the function is deprecated by this driver",
  [NvmlReturn.NOT_READY]: "the GPU is not ready yet; retry later",
  [NvmlReturn.GPU_NOT_FOUND]: "the GPU was not found; it may have been removed",
  [NvmlReturn.INVALID_STATE]: "the GPU is in a state that does not allow the operation",
  [NvmlReturn.UNKNOWN]: "an unknown NVML error occurred; check dmesg and `nvidia-smi`",
};

/** Human hint for an NVML return code in the context of a function (undefined if none). */
export function nvmlErrorHint(code: number, fn?: string): string | undefined {
  if (code === NvmlReturn.INVALID_ARGUMENT && fn !== undefined && SET_LIMIT_FUNCTIONS.has(fn)) {
    return "value outside the GPU's min/max constraints";
  }
  return HINTS[code];
}

/** Options of {@linkcode NvmlError}. */
export interface NvmlErrorOptions {
  /** The GPU the call was about: its UUID, or its index as text when the UUID is unknown. */
  gpu?: string;
  /** Overrides the default hint for the code. */
  hint?: string;
  /** Underlying error, if any. */
  cause?: unknown;
}

/**
 * An NVML function returned a code other than SUCCESS.
 *
 * Message: `NVML nvmlDeviceSetPowerManagementLimit failed on GPU GPU-…: NO_PERMISSION (run as
 * root or with CAP_SYS_ADMIN)`.
 */
export class NvmlError extends Error {
  /** NVML function that failed, e.g. `nvmlDeviceSetPowerManagementLimit`. */
  readonly fn: string;
  /** `nvmlReturn_t` value. */
  readonly code: number;
  /** Code name without prefix, e.g. `NO_PERMISSION`. */
  readonly codeName: string;
  /** GPU UUID (or index as text), when the call was about one GPU. */
  readonly gpu?: string;
  /** What to do about it, when known. */
  readonly hint?: string;

  constructor(fn: string, code: number, options: NvmlErrorOptions = {}) {
    const codeName = nvmlReturnName(code);
    const hint = options.hint ?? nvmlErrorHint(code, fn);
    const where = options.gpu === undefined ? "" : ` on GPU ${options.gpu}`;
    super(
      `NVML ${fn} failed${where}: ${codeName}${hint === undefined ? "" : ` (${hint})`}`,
      options.cause === undefined ? undefined : { cause: options.cause },
    );
    this.name = "NvmlError";
    this.fn = fn;
    this.code = code;
    this.codeName = codeName;
    if (options.gpu !== undefined) this.gpu = options.gpu;
    if (hint !== undefined) this.hint = hint;
  }
}

/** Options of {@linkcode NvmlLibraryError}. */
export interface NvmlLibraryErrorOptions {
  /** The library path that was tried, if any. */
  path?: string;
  /** Underlying error (e.g. the dlopen failure). */
  cause?: unknown;
}

/**
 * The NVML library cannot be found or loaded (no driver installed, wrong path, missing required
 * symbol). The CLI maps it to exit code 3.
 */
export class NvmlLibraryError extends Error {
  /** Why loading failed, e.g. the dlopen error text. */
  readonly detail: string;
  /** The library path that was tried, if any. */
  readonly path?: string;

  constructor(detail: string, options: NvmlLibraryErrorOptions = {}) {
    super(
      `NVIDIA driver not found: cannot load libnvidia-ml.so.1 (${detail}). ` +
        "Install the NVIDIA driver or pass --nvml-library /abs/path/libnvidia-ml.so.1",
      options.cause === undefined ? undefined : { cause: options.cause },
    );
    this.name = "NvmlLibraryError";
    this.detail = detail;
    if (options.path !== undefined) this.path = options.path;
  }
}

/** True when `err` is an {@linkcode NvmlError} with code NOT_SUPPORTED (e.g. no software power limits). */
export function isNotSupported(err: unknown): boolean {
  return err instanceof NvmlError && err.code === NvmlReturn.NOT_SUPPORTED;
}

/** `NVML NO_PERMISSION (run as root or with CAP_SYS_ADMIN)` for an NvmlError, else its message. */
export function describeNvmlError(err: unknown): string {
  if (err instanceof NvmlError) return `NVML ${err.codeName}${err.hint ? ` (${err.hint})` : ""}`;
  return err instanceof Error ? err.message : String(err);
}
