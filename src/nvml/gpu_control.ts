/**
 * The narrow seam between the agent and the GPUs. The NVML implementation lives in
 * `nvml_gpu_control.ts`; tests use an in-memory fake (`tests/helpers/fake_gpu_control.ts`).
 *
 * All power values are milliwatts. Methods throw `NvmlError` (src/nvml/errors.ts) on failure.
 * GPUs are addressed by NVML index for calls; UUID is the stable identity used everywhere else.
 */

/** Identity of one physical GPU, as enumerated by the driver. */
export interface GpuIdentity {
  /** NVML index (0-based). */
  index: number;
  /** Stable identity, e.g. `GPU-8d5b1c2e-…`. */
  uuid: string;
  /** Marketing name, e.g. `NVIDIA H100 80GB HBM3`. */
  name: string;
  /** PCI bus id, e.g. `00000000:18:00.0`. */
  pciBusId: string;
}

/** Power-limit facts of one GPU, all milliwatts. */
export interface PowerLimits {
  /** Current power management limit (nvmlDeviceGetPowerManagementLimit). */
  limitMw: number;
  /** Limit the driver actually enforces (may be lower, e.g. a BMC limit); null if unsupported. */
  enforcedMw: number | null;
  /** Vendor default limit. */
  defaultMw: number;
  /** Smallest settable limit. */
  minMw: number;
  /** Largest settable limit. */
  maxMw: number;
}

/** Instantaneous telemetry of one GPU; each field null when the driver does not support it. */
export interface PowerSample {
  /** Power draw in milliwatts. */
  drawMw: number | null;
  /** Energy since driver load, millijoules. */
  energyMj: number | null;
}

/** Narrow interface over NVML used by the reconciler, the sources and the CLI. */
export interface GpuControl {
  /** Driver version string, e.g. `580.159.04`. */
  driverVersion(): string;
  /** Enumerate GPUs now (cheap; called once per reconcile pass). */
  listGpus(): GpuIdentity[];
  /** Read limit, enforced limit, default and min/max constraints. */
  readLimits(index: number): PowerLimits;
  /** Read power draw and energy counter. */
  readSample(index: number): PowerSample;
  /** Set the power management limit (needs root / CAP_SYS_ADMIN). */
  setLimit(index: number, mw: number): void;
  /** PIDs of compute processes on this GPU, MIG instances rolled up, deduplicated. */
  computePids(index: number): number[];
  /**
   * UUIDs of the GPU's MIG devices (`MIG-…`), in slot order; empty when MIG is off, unsupported,
   * or the library lacks the MIG functions. Maps a kubelet-allocated MIG device to its GPU.
   */
  migDeviceUuids(index: number): string[];
  /** Release the library (nvmlShutdown). Idempotent. */
  close(): void;
}
