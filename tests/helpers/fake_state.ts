/**
 * Typed access to the fake NVML library's state file (see tests/fake_nvml/fake_nvml.c).
 *
 * @module
 */

/** A compute process on a fake GPU or MIG device. */
export interface FakeProcess {
  pid: number;
  /** Bytes of GPU memory used (default 0). */
  usedGpuMemory?: number;
}

/** A MIG device of a fake GPU. */
export interface FakeMigDevice {
  /** MIG UUID, e.g. `MIG-…`. */
  uuid: string;
  /** Name (default `<parent name> MIG`). */
  name?: string;
  processes?: FakeProcess[];
  /** NVML function name → return code for calls on this MIG handle. */
  fail?: Record<string, number>;
}

/** One fake GPU. */
export interface FakeGpu {
  uuid: string;
  name: string;
  pciBusId: string;
  minLimitMw: number;
  maxLimitMw: number;
  defaultLimitMw: number;
  limitMw: number;
  /** Enforced limit (default `limitMw`); `null` makes the call return NOT_SUPPORTED. */
  enforcedLimitMw?: number | null;
  /** Power draw; absent = NOT_SUPPORTED. */
  powerUsageMw?: number;
  /** Energy counter; absent = NOT_SUPPORTED. */
  energyMj?: number;
  processes?: FakeProcess[];
  /** NVML function name → return code for calls on this GPU. */
  fail?: Record<string, number>;
  /** MIG devices; MIG mode is on when non-empty; `null` = empty slot. */
  migDevices?: (FakeMigDevice | null)[];
  /** Test hook: adds n processes (pids 90000+) after the sizing call, once per state load. */
  growProcessesOnSecondCall?: number;
  /** Test hook: the process list never fits (every call answers INSUFFICIENT_SIZE). */
  processesAlwaysInsufficient?: boolean;
}

/** Whole fake state file. */
export interface FakeState {
  driverVersion: string;
  gpus: FakeGpu[];
  /** NVML function name → return code for non-device calls (nvmlInit_v2, …). */
  fail?: Record<string, number>;
}

/** A realistic H100 SXM at index `index` (0..9 give distinct UUIDs and bus ids). */
export function makeGpu(index: number, overrides: Partial<FakeGpu> = {}): FakeGpu {
  return {
    uuid: `GPU-00000000-0000-0000-0000-00000000000${index}`,
    name: "NVIDIA H100 80GB HBM3",
    pciBusId: `00000000:1${index}:00.0`,
    minLimitMw: 200000,
    maxLimitMw: 700000,
    defaultLimitMw: 700000,
    limitMw: 700000,
    powerUsageMw: 95000,
    energyMj: 0,
    processes: [],
    ...overrides,
  };
}

/** A state with `gpuCount` default GPUs (and driver 580.159.04). */
export function makeFakeState(gpuCount: number, overrides: Partial<FakeState> = {}): FakeState {
  return {
    driverVersion: "580.159.04",
    gpus: Array.from({ length: gpuCount }, (_, index) => makeGpu(index)),
    ...overrides,
  };
}

/** Writes the state atomically (temp file in the same directory, then rename). */
export function writeFakeState(path: string, state: FakeState): void {
  const temp = `${path}.${Deno.pid}.${crypto.randomUUID()}.partial`;
  try {
    Deno.writeTextFileSync(temp, JSON.stringify(state, null, 2) + "\n");
    Deno.renameSync(temp, path);
  } catch (error) {
    try {
      Deno.removeSync(temp);
    } catch {
      // already renamed or never written
    }
    throw error;
  }
}

/** Reads the state file (as the fake last wrote it, or as a test wrote it). */
export function readFakeState(path: string): FakeState {
  return JSON.parse(Deno.readTextFileSync(path)) as FakeState;
}

/** Reads and changes the state in one step: `update` edits the object in place. */
export function updateFakeState(path: string, update: (state: FakeState) => void): FakeState {
  const state = readFakeState(path);
  update(state);
  writeFakeState(path, state);
  return state;
}

/** A temp directory holding a fake state file and a set log (see {@linkcode createFakeNvmlDir}). */
export interface FakeNvmlDir {
  /** The temp directory. */
  dir: string;
  /** `<dir>/state.json` (FAKE_NVML_STATE). */
  statePath: string;
  /** `<dir>/set.log` (FAKE_NVML_LOG; created by the first successful set). */
  logPath: string;
  /** Environment for a process using the fake library. */
  env: { FAKE_NVML_STATE: string; FAKE_NVML_LOG: string };
  /** Lines of the set log (`<epoch ms> set <uuid> <mW>`); empty when nothing was set. */
  readLog(): string[];
  /** Removes the directory. */
  cleanup(): void;
}

/** Creates a temp directory with `state` written to `state.json`. */
export function createFakeNvmlDir(state: FakeState): FakeNvmlDir {
  const dir = Deno.makeTempDirSync({ prefix: "fake-nvml-" });
  const statePath = `${dir}/state.json`;
  const logPath = `${dir}/set.log`;
  writeFakeState(statePath, state);
  return {
    dir,
    statePath,
    logPath,
    env: { FAKE_NVML_STATE: statePath, FAKE_NVML_LOG: logPath },
    readLog() {
      try {
        return Deno.readTextFileSync(logPath).split("\n").filter((line) => line !== "");
      } catch (error) {
        if (error instanceof Deno.errors.NotFound) return [];
        throw error;
      }
    },
    cleanup() {
      Deno.removeSync(dir, { recursive: true });
    },
  };
}
