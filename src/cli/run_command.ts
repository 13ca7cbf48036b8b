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
import { openNvmlGpuControl } from "../nvml/nvml_gpu_control.ts";
import { loadJournal } from "../state/journal.ts";
import { ReconcileLoop } from "../reconcile/loop.ts";
import { collectGpuStatus } from "../reconcile/gpu_status.ts";
import { noopTelemetry, type Telemetry } from "../metrics/telemetry.ts";
import { systemClock } from "../clock.ts";
import { readiness, sourceStalenessSeconds } from "./readiness.ts";
import { readCapsFile } from "../sources/caps_file.ts";

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
  return await createKubernetesCapSource({
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
  });
}

/** What the metrics callbacks read; filled in as the agent starts. */
interface LiveState {
  loop?: ReconcileLoop;
  source?: SourceWithReload;
}

/** Run `run` until a termination signal (or after one pass with --once). */
export async function runCommand(ctx: CommandContext): Promise<number> {
  const o = ctx.options;
  const log = getLogger(["gpu-power-agent", "run"]);
  const kind = selectSource(o);

  // The caps file is validated before any GPU is touched (invalid at start: exit 2).
  if (kind === "file") await readCapsFile(o.capsFile!);

  const gpu = openNvmlGpuControl(ctx.nvmlLibraryPath);
  const journal = loadJournal(o.stateDir, { dryRun: o.dryRun });
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
    })
    : undefined;
  const telemetry: Telemetry = prom ?? noopTelemetry;

  const source = await createSource(kind, { options: o, telemetry });
  live.source = source;
  await source.start(() => live.loop?.trigger());
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
    dryRun: o.dryRun,
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
    dryRun: o.dryRun,
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

/** Options of {@linkcode untilStopped}. */
interface UntilStoppedOptions {
  dryRun: boolean;
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
  const done = Promise.withResolvers<number>();
  let stopping = false;
  const onStop = (signal: Deno.Signal) => {
    if (stopping) return; // e.g. Ctrl-C reaches both the launcher and the agent
    stopping = true;
    log.info("{signal}: stopping; restoring every GPU the agent changed", { signal });
    (async () => {
      let code: number = EXIT.ok;
      try {
        const restored = await loop.stop({ restore: !options.dryRun });
        if (restored && !restored.ok) code = EXIT.failure;
      } catch (err) {
        log.error("Shutdown failed: {error}", { error: (err as Error).message });
        code = EXIT.failure;
      }
      await options.cleanup();
      done.resolve(code);
    })();
  };
  const onHup = () => {
    log.info("SIGHUP: reloading the caps source");
    Promise.resolve(options.reload()).catch((err) =>
      log.error("Reload failed: {error}", { error: (err as Error).message })
    );
  };
  const sigterm = () => onStop("SIGTERM");
  const sigint = () => onStop("SIGINT");
  Deno.addSignalListener("SIGTERM", sigterm);
  Deno.addSignalListener("SIGINT", sigint);
  Deno.addSignalListener("SIGHUP", onHup);
  try {
    loop.start();
    return await done.promise;
  } finally {
    Deno.removeSignalListener("SIGTERM", sigterm);
    Deno.removeSignalListener("SIGINT", sigint);
    Deno.removeSignalListener("SIGHUP", onHup);
  }
}
