/**
 * Shared setup of the Kubernetes source tests: fake API server + kubeconfig + fake proc root +
 * fake GPUs + recording telemetry, wired through the real client library.
 */
import type { Clock } from "../../src/clock.ts";
import type { Telemetry } from "../../src/metrics/telemetry.ts";
import { type GpuView, gpuViews } from "../../src/sources/cap_source.ts";
import { observeGpus } from "../../src/reconcile/observe.ts";
import { reconcilePass } from "../../src/reconcile/pass.ts";
import type { PassReport } from "../../src/reconcile/report.ts";
import { loadJournal } from "../../src/state/journal.ts";
import {
  createKubernetesCapSource,
  type KubernetesCapSource,
  type KubernetesSourceOptions,
} from "../../src/sources/kubernetes.ts";
import { FakeGpuControl, fakeH100 } from "../helpers/fake_gpu_control.ts";
import {
  type FakeApiServer,
  type FakeApiServerOptions,
  startFakeApiServer,
} from "../helpers/k8s_api_server.ts";

export const KEY = "dynamo.nvidia.com/gpu-power-limit";
export const NODE = "node-a";
export const SAFE_MW = 500_000;

/** Telemetry that records calls as `method:arg`. */
export function recordingTelemetry(): Telemetry & { calls: string[]; count(p: string): number } {
  const calls: string[] = [];
  const rec = (name: string) => (arg?: unknown) => {
    calls.push(arg === undefined || typeof arg === "object" ? name : `${name}:${arg}`);
  };
  return {
    calls,
    count: (p: string) => calls.filter((c) => c === p || c.startsWith(`${p}:`)).length,
    capChanged: rec("capChanged"),
    clamped: rec("clamped"),
    nvmlError: rec("nvmlError"),
    sourceError: (source: string, reason: string) => calls.push(`sourceError:${source}:${reason}`),
    invalidRequest: rec("invalidRequest"),
    safeDefaultApplied: rec("safeDefaultApplied"),
    configReload: rec("configReload"),
    reconcileCompleted: rec("reconcileCompleted"),
    reactionLatency: rec("reactionLatency"),
    budgetAllocated: rec("budgetAllocated"),
  };
}

/** Poll `predicate` every 5 ms; throw with `what` after `timeoutMs`. */
export async function waitFor(
  predicate: () => boolean,
  what: string,
  timeoutMs = 4000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Everything a source test needs. */
export interface K8sFixture extends AsyncDisposable {
  server: FakeApiServer;
  source: KubernetesCapSource;
  gpu: FakeGpuControl;
  telemetry: ReturnType<typeof recordingTelemetry>;
  dir: string;
  procRoot: string;
  /** onChange calls so far. */
  changes(): number;
  /** GpuViews of the fake GPUs (PIDs observed as the reconciler does). */
  views(): GpuView[];
  /**
   * One reconcile pass as the agent runs it (observe with PIDs → desired → plan → actuate on the
   * fake GPUs → source.report), returning desired() as a plain object uuid → mW (throws when null).
   */
  caps(): Record<string, number>;
  /** Report of the last pass run by `caps()`. */
  lastReport(): PassReport | null;
  /** Put process `pid` of pod `uid` on GPU `index` (cgroup file + NVML pid). */
  runProcess(pid: number, uid: string, index: number): Promise<void>;
  /** Remove process `pid` from GPU `index` (and its /proc entry). */
  stopProcess(pid: number, index: number): Promise<void>;
}

/** Options of `setupK8s`. */
export interface SetupOptions {
  server?: FakeApiServerOptions;
  source?: Partial<KubernetesSourceOptions>;
  gpus?: number;
  /** Do not call start(). */
  noStart?: boolean;
}

export const GPU0 = fakeH100(0).uuid;
export const GPU1 = fakeH100(1).uuid;

/** Start a fake API server and a Kubernetes source against it. */
export async function setupK8s(options: SetupOptions = {}): Promise<K8sFixture> {
  const server = await startFakeApiServer(options.server);
  const dir = await Deno.makeTempDir({ prefix: "k8s-source-test-" });
  const procRoot = `${dir}/proc`;
  await Deno.mkdir(procRoot);
  const kubeconfigPath = await server.writeKubeconfig(dir);
  const gpu = new FakeGpuControl(
    Array.from({ length: options.gpus ?? 2 }, (_, i) => fakeH100(i)),
  );
  const telemetry = recordingTelemetry();
  const source = await createKubernetesCapSource({
    nodeName: NODE,
    annotation: KEY,
    safeDefaultMw: SAFE_MW,
    procRoot,
    kubeconfigPath,
    events: true,
    telemetry,
    staleAfterMs: 60_000,
    backoff: { initialMs: 10, maxMs: 40 },
    requestTimeoutMs: 1000,
    probeIntervalMs: 20,
    probeMaxMs: 40,
    random: () => 0.5,
    ...options.source,
  });
  const journal = loadJournal(`${dir}/state`);
  let last: PassReport | null = null;
  let changes = 0;
  if (!options.noStart) await source.start(() => changes++);
  // Observed as the reconcile loop does: what the source says it needs.
  const observe = () =>
    observeGpus(gpu, { pids: source.needsPids, migDevices: source.needsMigDevices });
  const views = () => gpuViews(observe());
  return {
    server,
    source,
    gpu,
    telemetry,
    dir,
    procRoot,
    changes: () => changes,
    views,
    lastReport: () => last,
    caps() {
      const observation = observe();
      const desired = source.desired(gpuViews(observation));
      if (desired === null) throw new Error("desired() returned null");
      last = reconcilePass(gpu, desired, { journal, telemetry, observation });
      source.report(last.gpus);
      return Object.fromEntries([...desired].map(([uuid, cap]) => [uuid, cap.mw]));
    },
    async runProcess(pid, uid, index) {
      await Deno.mkdir(`${procRoot}/${pid}`, { recursive: true });
      await Deno.writeTextFile(
        `${procRoot}/${pid}/cgroup`,
        `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${
          uid.replaceAll("-", "_")
        }.slice/cri-containerd-${pid}.scope\n`,
      );
      gpu.setPids(index, [...gpu.computePids(index), pid]);
    },
    async stopProcess(pid, index) {
      gpu.setPids(index, gpu.computePids(index).filter((p) => p !== pid));
      await Deno.remove(`${procRoot}/${pid}`, { recursive: true });
    },
    async [Symbol.asyncDispose]() {
      await source.stop();
      await server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A clock whose timers only fire when the test says so; records requested delays. */
export class ManualClock implements Clock {
  delays: number[] = [];
  #timers = new Map<number, { fn: () => void; ms: number }>();
  #next = 1;
  now(): number {
    return 1_000_000;
  }
  setTimeout(fn: () => void, ms: number): number {
    const id = this.#next++;
    this.#timers.set(id, { fn, ms });
    this.delays.push(ms);
    return id;
  }
  clearTimeout(id: number): void {
    this.#timers.delete(id);
  }
  /** Pending timers' delays. */
  pending(): number[] {
    return [...this.#timers.values()].map((t) => t.ms);
  }
  /** Fire the pending timer with this delay. */
  fire(ms: number): void {
    for (const [id, t] of this.#timers) {
      if (t.ms === ms) {
        this.#timers.delete(id);
        t.fn();
        return;
      }
    }
    throw new Error(`no pending timer of ${ms} ms (pending: ${this.pending().join(", ")})`);
  }
}
