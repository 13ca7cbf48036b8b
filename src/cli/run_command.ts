/**
 * `run`: wire a caps source, NVML, the journal, the reconcile loop, metrics and signals together,
 * and keep the GPUs where the source wants them until SIGTERM/SIGINT, then restore baselines.
 */
import { getLogger } from "@logtape/logtape";
import type { CommandContext } from "./context.ts";
import { EXIT } from "./context.ts";
import type { AgentOptions } from "./flags.ts";
import { UsageError } from "./flags.ts";
import { wattsToMw } from "./units.ts";
import type { CapSource } from "../sources/cap_source.ts";
import type { GpuControl } from "../nvml/gpu_control.ts";
import { openNvmlGpuControl } from "../nvml/nvml_gpu_control.ts";
import { type Journal, JournalReadError, loadJournal } from "../state/journal.ts";
import { acquireStateLock, StateDirError, type StateLock } from "../state/state_lock.ts";
import { restoreAll } from "../reconcile/restore.ts";
import { installRunSignals, type RunSignals, STOPPED, unlessStopped } from "./signals.ts";
import { ReconcileLoop } from "../reconcile/loop.ts";
import { collectGpuStatus } from "../reconcile/gpu_status.ts";
import { noopTelemetry, type Telemetry } from "../metrics/telemetry.ts";
import { systemClock } from "../clock.ts";
import { collectGarbage } from "../permissions/runtime.ts";
import { readiness, sourceStalenessSeconds } from "./readiness.ts";
import { readCapsFile } from "../sources/caps_file.ts";
import { parseGpuResourceNames } from "../sources/pod_resources_devices.ts";

const VERSION = "0.1.0";
/** Longest wait for stopping the source or the HTTP server after the GPUs are restored. */
const SHUTDOWN_STEP_MS = 2000;

/** Wait for `p`, but at most `ms`; errors are ignored (used on shutdown only). */
async function bounded(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<void>((resolve) => timer = setTimeout(resolve, ms));
  await Promise.race([p.catch(() => {}), limit]);
  clearTimeout(timer);
}

/** Which source `run` uses, validated against the flags it needs. */
export function selectSource(options: AgentOptions): "file" | "kubernetes" {
  const source = options.source ?? (options.capsFile ? "file" : undefined);
  if (!source) {
    throw new UsageError(
      "run needs --caps-file PATH (file mode) or --source kubernetes (DaemonSet mode)",
    );
  }
  if (source === "file" && !options.capsFile) {
    throw new UsageError("--source file needs --caps-file PATH");
  }
  if (source === "kubernetes") {
    if (!options.nodeName) {
      throw new UsageError(
        "kubernetes mode needs the node name: pass --node-name NAME or set NODE_NAME " +
          "(in a DaemonSet, from the downward API: spec.nodeName)",
      );
    }
    if (options.safeDefaultWatts === undefined || options.safeDefaultWatts <= 0) {
      throw new UsageError(
        "kubernetes mode needs --safe-default-watts WATTS (> 0): the cap for GPUs whose pods " +
          "disagree or ask for an invalid value",
      );
    }
    if (
      options.minWatts !== undefined && options.maxWatts !== undefined &&
      options.minWatts > options.maxWatts
    ) {
      throw new UsageError("--min-watts must not be greater than --max-watts");
    }
  }
  if (options.interval <= 0) throw new UsageError("--interval must be > 0 seconds");
  if (!(options.enforceGrace >= 0)) throw new UsageError("--enforce-grace must be >= 0 seconds");
  return source;
}

/** A source; the file source also reloads on SIGHUP. */
type SourceWithReload = CapSource & { reload?: () => void | Promise<void> };

async function createSource(
  kind: "file" | "kubernetes",
  opts: { options: AgentOptions; telemetry: Telemetry },
): Promise<SourceWithReload> {
  const o = opts.options;
  if (kind === "file") {
    const { createFileCapSource } = await import("../sources/file.ts");
    return createFileCapSource(o.capsFile!, { telemetry: opts.telemetry });
  }
  // Loaded only in Kubernetes mode: the client library is large.
  const { createKubernetesCapSource } = await import("../sources/kubernetes.ts");
  const pods = await createKubernetesCapSource({
    nodeName: o.nodeName!,
    namespace: o.namespace,
    annotation: o.annotation,
    safeDefaultMw: wattsToMw(o.safeDefaultWatts!),
    allowedNamespaces: o.allowedNamespaces?.split(",").map((s) => s.trim()).filter((s) => s),
    minMw: o.minWatts === undefined ? undefined : wattsToMw(o.minWatts),
    maxMw: o.maxWatts === undefined ? undefined : wattsToMw(o.maxWatts),
    procRoot: o.procRoot,
    kubeconfigPath: o.kubeconfig,
    events: o.events,
    telemetry: opts.telemetry,
    clock: systemClock,
    staleAfterMs: o.staleAfter * 1000,
    podGpuMapping: o.podGpuMapping,
    podResourcesSocket: o.podResourcesSocket,
    gpuResourceNames: parseGpuResourceNames(o.gpuResourceNames),
  });
  if (!o.capsFile && !o.nodeBudgetAnnotation) return pods;
  // The caps file is the node policy; the node annotation a node power budget.
  const { NodePolicyCapSource } = await import("../sources/node_policy_source.ts");
  const { createFileCapSource } = await import("../sources/file.ts");
  return new NodePolicyCapSource({
    pods,
    ...(o.capsFile
      ? { policy: createFileCapSource(o.capsFile, { telemetry: opts.telemetry }) }
      : {}),
    ...(o.nodeBudgetAnnotation
      ? { budgetWatch: { client: pods.client, nodeName: o.nodeName!, telemetry: opts.telemetry } }
      : {}),
  });
}

/** What the metrics callbacks read; filled in as the agent starts. */
interface LiveState {
  loop?: ReconcileLoop;
  source?: SourceWithReload;
}

/** Run `run` until a termination signal (or after one pass with --once). */
export async function runCommand(ctx: CommandContext): Promise<number> {
  // First thing: a stop or reload during start-up must not kill the agent (see signals.ts).
  const signals = installRunSignals({ early: ctx.earlySignals });
  // Released by the kernel when the process exits, SIGKILL included.
  let lock: StateLock | undefined;
  try {
    // The caps file is validated before any GPU is touched (invalid at start: exit 2).
    // With --source kubernetes the caps file is the node policy: validated the same way.
    selectSource(ctx.options);
    if (ctx.options.capsFile) await readCapsFile(ctx.options.capsFile);
    // One writer per state dir; also proves the dir is usable (exit 2 if not). A dry run writes
    // nothing and may run beside the service.
    if (!ctx.options.dryRun) lock = acquireStateLock(ctx.options.stateDir, { command: "run" });
    return await runLocked(ctx, signals);
  } finally {
    signals.dispose();
    lock?.release();
  }
}

async function runLocked(ctx: CommandContext, signals: RunSignals): Promise<number> {
  const o = ctx.options;
  const log = getLogger(["gpu-power-agent", "run"]);
  const kind = selectSource(o);

  // Dry run is decided here: a read-only journal makes every pass and restore plan only.
  const journal = loadRunJournal(o);
  const gpu = openNvmlGpuControl(ctx.nvmlLibraryPath);
  const live: LiveState = {};
  const prom = o.metricsAddress !== "off" && !o.once
    ? (await import("../metrics/prometheus.ts")).createPrometheusTelemetry({
      buildInfo: {
        version: VERSION,
        denoVersion: Deno.version.deno,
        driverVersion: gpu.driverVersion(),
      },
      statuses: () =>
        collectGpuStatus(gpu, {
          journal,
          desired: live.loop?.lastDesired,
          enforced: (uuid) => live.loop?.outcomeOf(uuid)?.enforced ?? null,
          unsupported: (uuid) => live.loop?.isUnsupported(uuid) ?? false,
        }),
      staleness: () =>
        live.source ? sourceStalenessSeconds(live.source.health(), Date.now()) : null,
      podResources: () => {
        const health = live.source?.podResourcesHealth?.() ?? null;
        return health && { up: health.problem === null, lastSuccessMs: health.lastSuccessMs };
      },
    })
    : undefined;
  const telemetry: Telemetry = prom ?? noopTelemetry;
  const stopDuringStartup = (source?: SourceWithReload) =>
    restoreDuringStartup(gpu, { journal, telemetry, options: o, signals, source });

  const created = await unlessStopped(signals, createSource(kind, { options: o, telemetry }));
  if (created === STOPPED) return await stopDuringStartup();
  const source = created;
  live.source = source;
  const started = await unlessStopped(signals, source.start(() => live.loop?.trigger()));
  if (started === STOPPED) return await stopDuringStartup(source);
  log.info("Caps source {source} ready; {count} GPU(s) on driver {driver}", {
    source: source.name,
    count: gpu.listGpus().length,
    driver: gpu.driverVersion(),
  });

  const loop = new ReconcileLoop(gpu, source, {
    journal,
    telemetry,
    clock: systemClock,
    intervalMs: o.interval * 1000,
    restoreTo: o.restoreTo,
    // Give back what a burst of changes grew (see AGENT_V8_FLAGS: --expose-gc).
    afterBurst: { afterMs: 5000, minPasses: 10, run: collectGarbage },
    // The dry-run plan goes to stdout: the same text `check` prints.
    printPlan: (lines) => {
      ctx.io.out(`dry run: plan at ${new Date().toISOString()} (nothing is changed):`);
      for (const line of lines) ctx.io.out(`  ${line}`);
    },
  });
  live.loop = loop;

  if (o.once) {
    try {
      return loop.runOnce().ok ? EXIT.ok : EXIT.failure;
    } finally {
      // Events about this pass's outcomes are sent before the source stops.
      const flush = (source as { flushEvents?: () => Promise<void> }).flushEvents;
      if (flush) await bounded(flush.call(source), SHUTDOWN_STEP_MS);
      await source.stop();
      gpu.close();
    }
  }

  const server = prom
    ? await (await import("../metrics/server.ts")).startHealthServer(o.metricsAddress, {
      metrics: () => prom.metrics(),
      contentType: prom.contentType,
      onError: (reason) => prom.metricsServerError(reason),
      ready: () =>
        readiness({
          health: source.health(),
          enforcement: loop.enforcement(),
          nowMs: Date.now(),
          staleAfterMs: o.staleAfter * 1000,
          enforceGraceMs: o.enforceGrace * 1000,
        }),
    })
    : null;
  if (server) {
    log.info("Serving /metrics, /healthz and /readyz on {host}:{port}", {
      host: server.hostname,
      port: server.port,
    });
  }

  const code = await untilStopped(loop, {
    signals,
    reload: () => source.reload?.(),
    cleanup: async () => {
      // GPUs are restored by then; nothing here may keep the process from exiting.
      await bounded(source.stop(), SHUTDOWN_STEP_MS);
      if (server) await bounded(server.close(), SHUTDOWN_STEP_MS);
      gpu.close();
    },
  });
  log.info("Stopped");
  return code;
}

/**
 * The journal `run` starts from, before NVML is opened. One that exists but cannot be read is
 * configuration, like an invalid caps file: exit 2 at start (restarting cannot help, and starting
 * empty would lose the baselines it holds).
 */
function loadRunJournal(o: AgentOptions): Journal {
  try {
    return loadJournal(o.stateDir, { readOnly: o.dryRun });
  } catch (err) {
    if (err instanceof JournalReadError) {
      throw new StateDirError(o.stateDir, err.message, { cause: err });
    }
    throw err;
  }
}

/** Options of {@linkcode restoreDuringStartup}. */
interface StartupStopOptions {
  journal: Journal;
  telemetry: Telemetry;
  options: AgentOptions;
  signals: RunSignals;
  /** The source, when it was created (it may still be starting). */
  source?: SourceWithReload;
}

/**
 * A stop signal during start-up: restore what the journal holds (a crashed predecessor's caps),
 * stop the source and exit 0 (1 if a GPU could not be restored).
 */
async function restoreDuringStartup(gpu: GpuControl, opts: StartupStopOptions): Promise<number> {
  const log = getLogger(["gpu-power-agent", "run"]);
  log.info("{signal} during start-up: restoring every GPU in the journal, then exiting", {
    signal: opts.signals.stopSignal(),
  });
  let code: number = EXIT.ok;
  if (!opts.journal.readOnly) {
    const report = restoreAll(gpu, {
      journal: opts.journal,
      reason: "shutdown",
      restoreTo: opts.options.restoreTo,
      telemetry: opts.telemetry,
    });
    if (!report.ok) code = EXIT.failure;
  }
  if (opts.source) await bounded(opts.source.stop(), SHUTDOWN_STEP_MS);
  gpu.close();
  log.info("Stopped");
  return code;
}

/** Options of {@linkcode untilStopped}. */
interface UntilStoppedOptions {
  /** Installed at start; the first SIGTERM/SIGINT stops the loop. */
  signals: RunSignals;
  /** SIGHUP handler (the file source re-reads its file). */
  reload: () => void | Promise<void>;
  /** Runs after the GPUs were restored. */
  cleanup: () => Promise<void>;
}

/**
 * Start the loop and wait for SIGTERM/SIGINT; then restore every GPU the agent changed and
 * clean up. SIGHUP reloads. Returns the exit code (1 if a GPU could not be restored).
 */
async function untilStopped(loop: ReconcileLoop, options: UntilStoppedOptions): Promise<number> {
  const log = getLogger(["gpu-power-agent", "run"]);
  options.signals.onReload(() => {
    log.info("SIGHUP: reloading the caps source");
    Promise.resolve(options.reload()).catch((err) =>
      log.error("Reload failed: {error}", { error: (err as Error).message })
    );
  });
  loop.start();
  const signal = await options.signals.stopped;
  log.info("{signal}: stopping; restoring every GPU the agent changed", { signal });
  let code: number = EXIT.ok;
  try {
    const restored = await loop.stop({ restore: true });
    if (restored && !restored.ok) code = EXIT.failure;
  } catch (err) {
    log.error("Shutdown failed: {error}", { error: (err as Error).message });
    code = EXIT.failure;
  }
  await options.cleanup();
  return code;
}
