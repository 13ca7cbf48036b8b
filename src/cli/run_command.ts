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
import { loadJournal } from "../state/journal.ts";
import { ReconcileLoop } from "../reconcile/loop.ts";
import { collectGpuStatus } from "../reconcile/gpu_status.ts";
import { noopTelemetry, type Telemetry } from "../metrics/telemetry.ts";
import { systemClock } from "../reconcile/clock.ts";
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
  return source;
}

/** A source; the file source also reloads on SIGHUP. */
type SourceWithReload = CapSource & { reload?: () => void | Promise<void> };

async function createSource(
  kind: "file" | "kubernetes",
  gpu: GpuControl,
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
    gpu,
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

/** Run `run` until a termination signal (or after one pass with --once). */
export async function runCommand(ctx: CommandContext): Promise<number> {
  const o = ctx.options;
  const log = getLogger(["gpu-power-agent", "run"]);
  const kind = selectSource(o);

  // The caps file is validated before any GPU is touched (invalid at start: exit 2).
  if (kind === "file") await readCapsFile(o.capsFile!);

  const gpu = openNvmlGpuControl(ctx.nvmlLibraryPath);
  const journal = loadJournal(o.stateDir, { dryRun: o.dryRun });
  let loop: ReconcileLoop | undefined;
  let trigger: () => void = () => {};
  let telemetry: Telemetry = noopTelemetry;
  let prom: { metrics(): Promise<string>; contentType?: string } | undefined;
  let source: SourceWithReload | undefined;
  if (o.metricsAddress !== "off" && !o.once) {
    const { createPrometheusTelemetry } = await import("../metrics/prometheus.ts");
    const p = createPrometheusTelemetry({
      buildInfo: {
        version: VERSION,
        denoVersion: Deno.version.deno,
        driverVersion: gpu.driverVersion(),
      },
      statuses: () => collectGpuStatus(gpu, { journal, desired: loop?.lastDesired ?? undefined }),
      staleness: () => (source ? sourceStalenessSeconds(source.health(), Date.now()) : null),
    });
    telemetry = p;
    prom = p;
  }
  source = await createSource(kind, gpu, { options: o, telemetry });
  await source.start(() => trigger());
  log.info("Caps source {source} ready; {count} GPU(s) on driver {driver}", {
    source: source.name,
    count: gpu.listGpus().length,
    driver: gpu.driverVersion(),
  });

  loop = new ReconcileLoop(gpu, source, {
    journal,
    telemetry,
    clock: systemClock,
    intervalMs: o.interval * 1000,
    restoreTo: o.restoreTo,
    dryRun: o.dryRun,
  });
  const theLoop = loop;
  const theSource = source;
  trigger = () => theLoop.trigger();

  if (o.once) {
    try {
      const report = await theLoop.runOnce();
      return report.ok ? EXIT.ok : EXIT.failure;
    } finally {
      await source.stop();
      gpu.close();
    }
  }

  let server: { close(): Promise<void>; hostname: string; port: number } | null = null;
  if (prom) {
    const { startHealthServer } = await import("../metrics/server.ts");
    const metrics = prom;
    server = await startHealthServer(o.metricsAddress, {
      metrics: () => metrics.metrics(),
      contentType: metrics.contentType,
      ready: () =>
        readiness({
          lastSuccessMs: theLoop.lastSuccessMs,
          health: theSource.health(),
          nowMs: Date.now(),
          staleAfterMs: o.staleAfter * 1000,
        }),
    });
    log.info("Serving /metrics, /healthz and /readyz on {host}:{port}", {
      host: server!.hostname,
      port: server!.port,
    });
  }

  const done = Promise.withResolvers<number>();
  let stopping = false;
  const onStop = (signal: Deno.Signal) => {
    if (stopping) return;
    stopping = true;
    log.info("{signal}: stopping; restoring every GPU the agent changed", { signal });
    (async () => {
      let code: number = EXIT.ok;
      try {
        const restored = await theLoop.stop({ restore: !o.dryRun });
        if (restored && !restored.ok) code = EXIT.failure;
      } catch (err) {
        log.error("Shutdown failed: {error}", { error: (err as Error).message });
        code = EXIT.failure;
      }
      // GPUs are restored above; nothing below may keep the process from exiting.
      await bounded(theSource.stop(), SHUTDOWN_STEP_MS);
      if (server) await bounded(server.close(), SHUTDOWN_STEP_MS);
      gpu.close();
      done.resolve(code);
    })();
  };
  const onHup = () => {
    log.info("SIGHUP: reloading the caps source");
    Promise.resolve(theSource.reload?.()).catch((err) =>
      log.error("Reload failed: {error}", { error: (err as Error).message })
    );
  };
  const sigterm = () => onStop("SIGTERM");
  const sigint = () => onStop("SIGINT");
  Deno.addSignalListener("SIGTERM", sigterm);
  Deno.addSignalListener("SIGINT", sigint);
  Deno.addSignalListener("SIGHUP", onHup);

  await theLoop.start();
  const code = await done.promise;
  Deno.removeSignalListener("SIGTERM", sigterm);
  Deno.removeSignalListener("SIGINT", sigint);
  Deno.removeSignalListener("SIGHUP", onHup);
  log.info("Stopped");
  return code;
}
