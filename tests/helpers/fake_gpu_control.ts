/**
 * In-memory `GpuControl` for tests of the reconciler, sources and CLI: no FFI, no files.
 *
 * It mimics the driver where it matters: out-of-range `setLimit` fails with INVALID_ARGUMENT,
 * failures throw the real `NvmlError` (src/nvml/errors.ts), and every call is counted so tests
 * can assert that a steady-state pass writes nothing.
 */
import { NvmlError } from "../../src/nvml/errors.ts";
import { NvmlReturn } from "../../src/nvml/return_codes.ts";
import type {
  GpuControl,
  GpuIdentity,
  PowerLimits,
  PowerSample,
} from "../../src/nvml/gpu_control.ts";

/** Methods of the fake that can be made to fail. */
export type FakeGpuMethod =
  | "readLimits"
  | "readSample"
  | "setLimit"
  | "computePids"
  | "migDeviceUuids";

/** Description of one simulated GPU; omitted fields get H100-like defaults. */
export interface FakeGpuSpec {
  uuid: string;
  name?: string;
  /** NVML index; defaults to the position in the constructor list. */
  index?: number;
  pciBusId?: string;
  /** Current limit (default: defaultMw). */
  limitMw?: number;
  minMw?: number;
  maxMw?: number;
  defaultMw?: number;
  /** Enforced limit: a number pins it, null = unsupported, omitted = follows limitMw. */
  enforcedMw?: number | null;
  drawMw?: number | null;
  energyMj?: number | null;
  pids?: number[];
  /** UUIDs of the GPU's MIG devices (default none: MIG off). */
  migDeviceUuids?: string[];
}

/** One successful `setLimit` call. */
export interface FakeWrite {
  index: number;
  mw: number;
}

/** Options of `failOn`. */
export interface FailOnOptions {
  /** Fail only this many times, then succeed again (default: until `clearFailures`). */
  times?: number;
}

/** NVML function names the fake reports for each method (as the real binding would). */
export const FAKE_NVML_FUNCTIONS: Readonly<Record<FakeGpuMethod, string>> = Object.freeze({
  readLimits: "nvmlDeviceGetPowerManagementLimit",
  readSample: "nvmlDeviceGetPowerUsage",
  setLimit: "nvmlDeviceSetPowerManagementLimit",
  computePids: "nvmlDeviceGetComputeRunningProcesses_v3",
  migDeviceUuids: "nvmlDeviceGetMigDeviceHandleByIndex",
});

/** The real `NvmlError` for an NVML code name, as the binding would throw it. */
function nvmlError(fn: string, codeName: string, gpu?: string): NvmlError {
  const code = (NvmlReturn as Record<string, number>)[codeName];
  if (code === undefined) throw new Error(`fake GPU: unknown NVML code ${codeName}`);
  return new NvmlError(fn, code, gpu === undefined ? {} : { gpu });
}

interface FakeGpuState {
  identity: GpuIdentity;
  limitMw: number;
  minMw: number;
  maxMw: number;
  defaultMw: number;
  enforcedMw: number | null | undefined;
  drawMw: number | null;
  energyMj: number | null;
  pids: number[];
  migDeviceUuids: string[];
  ignoreSets: boolean;
}

interface Failure {
  codeName: string;
  remaining: number;
}

/** An H100-like spec (200–700 W, default 700 W) for GPU `index`, with overrides. */
export function fakeH100(index: number, overrides: Partial<FakeGpuSpec> = {}): FakeGpuSpec {
  const hex = index.toString(16).padStart(2, "0");
  return {
    uuid: `GPU-00000000-0000-0000-0000-0000000000${hex}`,
    name: "NVIDIA H100 80GB HBM3",
    index,
    pciBusId: `00000000:${(0x18 + index).toString(16).padStart(2, "0")}:00.0`,
    limitMw: 700_000,
    minMw: 200_000,
    maxMw: 700_000,
    defaultMw: 700_000,
    drawMw: 95_000,
    energyMj: 0,
    pids: [],
    ...overrides,
  };
}

/** In-memory GPUs behind the `GpuControl` interface. */
export class FakeGpuControl implements GpuControl {
  /** Every successful `setLimit`, in order. */
  readonly writes: FakeWrite[] = [];
  /** Calls per method (failed calls included). */
  readonly calls: Record<FakeGpuMethod | "listGpus", number> = {
    listGpus: 0,
    readLimits: 0,
    readSample: 0,
    setLimit: 0,
    computePids: 0,
    migDeviceUuids: 0,
  };
  #gpus: FakeGpuState[] = [];
  #failures = new Map<string, Failure>();
  #listFailure: string | null = null;
  #closed = false;
  #driverVersion: string;

  constructor(specs: FakeGpuSpec[], options: { driverVersion?: string } = {}) {
    this.#driverVersion = options.driverVersion ?? "580.159.04";
    specs.forEach((spec, position) => this.addGpu({ index: position, ...spec }));
  }

  /** Number of `readLimits` calls so far. */
  get readCount(): number {
    return this.calls.readLimits;
  }

  /** True once `close()` was called. */
  get closed(): boolean {
    return this.#closed;
  }

  driverVersion(): string {
    return this.#driverVersion;
  }

  listGpus(): GpuIdentity[] {
    this.calls.listGpus++;
    if (this.#listFailure) {
      throw nvmlError("nvmlDeviceGetCount_v2", this.#listFailure);
    }
    return this.#gpus.map((g) => ({ ...g.identity }));
  }

  readLimits(index: number): PowerLimits {
    this.calls.readLimits++;
    const g = this.#check(index, "readLimits");
    return {
      limitMw: g.limitMw,
      enforcedMw: g.enforcedMw === undefined ? g.limitMw : g.enforcedMw,
      defaultMw: g.defaultMw,
      minMw: g.minMw,
      maxMw: g.maxMw,
    };
  }

  readSample(index: number): PowerSample {
    this.calls.readSample++;
    const g = this.#check(index, "readSample");
    return { drawMw: g.drawMw, energyMj: g.energyMj };
  }

  setLimit(index: number, mw: number): void {
    this.calls.setLimit++;
    const g = this.#check(index, "setLimit");
    if (!Number.isInteger(mw) || mw < g.minMw || mw > g.maxMw) {
      throw nvmlError(FAKE_NVML_FUNCTIONS.setLimit, "INVALID_ARGUMENT", g.identity.uuid);
    }
    if (!g.ignoreSets) g.limitMw = mw;
    this.writes.push({ index, mw });
  }

  computePids(index: number): number[] {
    this.calls.computePids++;
    return [...this.#check(index, "computePids").pids];
  }

  migDeviceUuids(index: number): string[] {
    this.calls.migDeviceUuids++;
    return [...this.#check(index, "migDeviceUuids").migDeviceUuids];
  }

  close(): void {
    this.#closed = true;
  }

  /** Make `method` fail on GPU `index` with NVML code `codeName` (e.g. `NO_PERMISSION`). */
  failOn(
    index: number,
    method: FakeGpuMethod,
    codeName: string,
    options: FailOnOptions = {},
  ): void {
    this.#failures.set(`${index}:${method}`, {
      codeName,
      remaining: options.times ?? Infinity,
    });
  }

  /** Make `listGpus` fail (null clears). */
  failListGpus(codeName: string | null): void {
    this.#listFailure = codeName;
  }

  /** Remove injected failures for one GPU (or all GPUs). */
  clearFailures(index?: number): void {
    if (index === undefined) {
      this.#failures.clear();
      return;
    }
    for (const key of [...this.#failures.keys()]) {
      if (key.startsWith(`${index}:`)) this.#failures.delete(key);
    }
  }

  /** Make `setLimit` on GPU `index` succeed without changing the limit (read-back mismatch). */
  ignoreSets(index: number, ignore = true): void {
    this.#state(index).ignoreSets = ignore;
  }

  /** Change the limit behind the agent's back (someone ran `nvidia-smi -pl`). */
  setExternalLimit(index: number, mw: number): void {
    this.#state(index).limitMw = mw;
  }

  /** Current limit of GPU `index` (not counted as a read). */
  limitOf(index: number): number {
    return this.#state(index).limitMw;
  }

  /** Replace the compute PIDs of GPU `index`. */
  setPids(index: number, pids: number[]): void {
    this.#state(index).pids = [...pids];
  }

  /** Replace the MIG device UUIDs of GPU `index` (empty: MIG off). */
  setMigDeviceUuids(index: number, uuids: string[]): void {
    this.#state(index).migDeviceUuids = [...uuids];
  }

  /** Change power draw / energy of GPU `index`. */
  setSample(index: number, sample: Partial<PowerSample>): void {
    const g = this.#state(index);
    if (sample.drawMw !== undefined) g.drawMw = sample.drawMw;
    if (sample.energyMj !== undefined) g.energyMj = sample.energyMj;
  }

  /** Add a GPU (hot-plug / driver reload). Index defaults to the next free one. */
  addGpu(spec: FakeGpuSpec): void {
    const index = spec.index ??
      this.#gpus.reduce((max, g) => Math.max(max, g.identity.index + 1), 0);
    if (this.#gpus.some((g) => g.identity.index === index || g.identity.uuid === spec.uuid)) {
      throw new Error(`fake GPU index ${index} or uuid ${spec.uuid} already present`);
    }
    const defaultMw = spec.defaultMw ?? 700_000;
    this.#gpus.push({
      identity: {
        index,
        uuid: spec.uuid,
        name: spec.name ?? "NVIDIA H100 80GB HBM3",
        pciBusId: spec.pciBusId ??
          `00000000:${(0x18 + index).toString(16).padStart(2, "0")}:00.0`,
      },
      limitMw: spec.limitMw ?? defaultMw,
      minMw: spec.minMw ?? 200_000,
      maxMw: spec.maxMw ?? 700_000,
      defaultMw,
      enforcedMw: spec.enforcedMw,
      drawMw: spec.drawMw === undefined ? 95_000 : spec.drawMw,
      energyMj: spec.energyMj === undefined ? 0 : spec.energyMj,
      pids: [...(spec.pids ?? [])],
      migDeviceUuids: [...(spec.migDeviceUuids ?? [])],
      ignoreSets: false,
    });
    this.#gpus.sort((a, b) => a.identity.index - b.identity.index);
  }

  /** Remove a GPU by index or UUID (it vanishes from `listGpus`; calls on it fail NOT_FOUND). */
  removeGpu(indexOrUuid: number | string): void {
    const before = this.#gpus.length;
    this.#gpus = this.#gpus.filter((g) =>
      typeof indexOrUuid === "number"
        ? g.identity.index !== indexOrUuid
        : g.identity.uuid !== indexOrUuid
    );
    if (this.#gpus.length === before) throw new Error(`fake GPU ${indexOrUuid} not present`);
  }

  #state(index: number): FakeGpuState {
    const g = this.#gpus.find((s) => s.identity.index === index);
    if (!g) throw new Error(`fake GPU index ${index} not present`);
    return g;
  }

  #check(index: number, method: FakeGpuMethod): FakeGpuState {
    const fn = FAKE_NVML_FUNCTIONS[method];
    const g = this.#gpus.find((s) => s.identity.index === index);
    if (!g) throw nvmlError(fn, "NOT_FOUND", `index ${index}`);
    const failure = this.#failures.get(`${index}:${method}`);
    if (failure && failure.remaining > 0) {
      failure.remaining--;
      throw nvmlError(fn, failure.codeName, g.identity.uuid);
    }
    return g;
  }
}
