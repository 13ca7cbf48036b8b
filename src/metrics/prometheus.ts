/**
 * Prometheus implementation of {@link Telemetry}: counters and histograms fed by agent events,
 * per-GPU gauges filled from a status callback at scrape time.
 *
 * prom-client is imported through deep paths only: its package root also loads http, zlib and
 * cluster (about +10 MiB RSS). The lib files are CommonJS whose `module.exports` is the class, so
 * they arrive as untyped default imports; the types come from a type-only import of the package
 * root, which is erased at runtime.
 */

import RegistryClass from "prom-client/lib/registry.js";
import CounterClass from "prom-client/lib/counter.js";
import GaugeClass from "prom-client/lib/gauge.js";
import HistogramClass from "prom-client/lib/histogram.js";
import type { Counter, Gauge, Histogram, Registry } from "prom-client";
import { getLogger } from "@logtape/logtape";
import type { GpuStatus } from "../reconcile/gpu_status.ts";
import type { BudgetInfo, CapChange, Telemetry } from "./telemetry.ts";

const Registry_: typeof Registry = RegistryClass;
const Counter_: typeof Counter = CounterClass;
const Gauge_: typeof Gauge = GaugeClass;
const Histogram_: typeof Histogram = HistogramClass;

/** Common prefix of every metric name. */
export const METRIC_PREFIX = "gpu_power_agent_";

/** Buckets of `gpu_power_agent_reconcile_duration_seconds` (a pass is mostly NVML calls). */
export const RECONCILE_DURATION_BUCKETS: readonly number[] = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
];

/** Buckets of `gpu_power_agent_reaction_latency_seconds` (debounce, watch delay, pass). */
export const REACTION_LATENCY_BUCKETS: readonly number[] = [
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
];

/** Most distinct label sets kept per counter with free-form labels; the rest count as "other". */
const MAX_LABEL_SETS = 64;
/** Longest label value kept; longer values are truncated. */
const MAX_LABEL_VALUE_LENGTH = 128;

/**
 * The per-GPU facts the scrape needs: the fields of `GpuStatus` it reads (power values
 * milliwatts, energy millijoules; null when unsupported or unreadable: the series is omitted;
 * `error` set → `gpu_read_error` 1).
 */
export type GpuStatusLike = Pick<
  GpuStatus,
  | "index"
  | "uuid"
  | "name"
  | "pciBusId"
  | "drawMw"
  | "limitMw"
  | "enforcedMw"
  | "defaultMw"
  | "minMw"
  | "maxMw"
  | "energyMj"
  | "managed"
  | "baselineMw"
  | "desiredMw"
  | "supported"
  | "enforced"
  | "error"
>;

/** Labels of `gpu_power_agent_build_info`. */
export interface BuildInfo {
  /** Agent version. */
  version: string;
  /** `Deno.version.deno`. */
  denoVersion: string;
  /** NVIDIA driver version (`GpuControl.driverVersion()`). */
  driverVersion: string;
}

/** Options of {@link createPrometheusTelemetry}. */
export interface PrometheusTelemetryOptions {
  buildInfo: BuildInfo;
  /** Per-GPU facts, called once per scrape. GPUs absent from the result lose their series. */
  statuses?: () => GpuStatusLike[];
  /** Seconds since the desired-cap source last synced; null (series omitted) if never. */
  staleness?: () => number | null;
  /**
   * Epoch milliseconds of the last successful reconcile pass; null (series omitted) if none.
   * Without it, the value comes from `reconcileCompleted` events.
   */
  lastReconcileMs?: () => number | null;
  /**
   * The kubelet's PodResources as the pod → GPU mapping sees them; null (series omitted) when
   * the mapping does not use them.
   */
  podResources?: () => PodResourcesState | null;
}

/** What the PodResources metrics show. */
export interface PodResourcesState {
  /** The last List answered. */
  up: boolean;
  /** Epoch milliseconds of the last List that answered; null before the first. */
  lastSuccessMs: number | null;
}

/** {@link Telemetry} backed by a private prom-client registry. */
export interface PrometheusTelemetry extends Telemetry {
  /** Render every metric in the Prometheus text format (calls the callbacks). */
  metrics(): Promise<string>;
  /** Content type of {@link PrometheusTelemetry.metrics} output. */
  readonly contentType: string;
  /** Count one failure of the metrics HTTP server (`accept`, `handler`, `connection_limit`…). */
  metricsServerError(reason: string): void;
}

type GpuLabel = "gpu" | "uuid" | "name";
const GPU_LABELS: GpuLabel[] = ["gpu", "uuid", "name"];

/** Per-GPU gauges in watts, keyed by the status field (milliwatts) they show. */
const GPU_WATT_GAUGES = [
  ["desiredMw", "gpu_desired_power_limit_watts", "Power limit the agent wants on the GPU."],
  ["limitMw", "gpu_power_limit_watts", "Power management limit currently applied to the GPU."],
  [
    "enforcedMw",
    "gpu_enforced_power_limit_watts",
    "Power limit the driver enforces (may be lower than the applied limit).",
  ],
  ["defaultMw", "gpu_default_power_limit_watts", "Vendor default power limit of the GPU."],
  ["minMw", "gpu_min_power_limit_watts", "Smallest settable power limit of the GPU."],
  ["maxMw", "gpu_max_power_limit_watts", "Largest settable power limit of the GPU."],
  [
    "baselineMw",
    "gpu_baseline_power_limit_watts",
    "Power limit the GPU had before the agent first changed it (restored when unmanaged).",
  ],
  ["drawMw", "gpu_power_draw_watts", "Current power draw of the GPU."],
] as const;

type WattField = typeof GPU_WATT_GAUGES[number][0];

/** Per-GPU 0/1 gauges: name, help, and the value (null/undefined: no series for that GPU). */
const GPU_FLAG_GAUGES: [string, string, (s: GpuStatusLike) => boolean | null | undefined][] = [
  [
    "gpu_managed",
    "1 when the agent has changed the GPU's power limit (verified) and not restored it, else 0.",
    (s) => s.managed,
  ],
  [
    "gpu_enforced",
    "1 when the GPU holds the power limit the agent wants on it, 0 when it does not; " +
    "absent while unknown (desired caps unknown).",
    (s) => s.enforced,
  ],
  [
    "gpu_power_limit_supported",
    "0 when the GPU does not support software power limits (NVML NOT_SUPPORTED), else 1.",
    (s) => s.supported !== false,
  ],
  [
    "gpu_read_error",
    "1 when some power facts of the GPU could not be read at this scrape, else 0.",
    (s) => s.error !== undefined,
  ],
];

/** Counters fed by agent events: field → name, help, label names. */
const COUNTERS = {
  capChanges: [
    "cap_changes_total",
    "Power limit changes written to GPUs, by kind (apply, drift, restore).",
    ["kind"],
  ],
  clamps: [
    "clamps_total",
    "Requested power limits clamped to the GPU's min/max, by direction.",
    ["direction"],
  ],
  nvmlErrors: [
    "nvml_errors_total",
    "Failed NVML calls, by function and return code.",
    ["function", "code"],
  ],
  sourceErrors: [
    "source_errors_total",
    "Errors of the desired-cap source, by source and reason.",
    ["source", "reason"],
  ],
  metricsServerErrors: [
    "metrics_server_errors_total",
    "Failures of the /metrics HTTP server (the agent keeps running), by reason.",
    ["reason"],
  ],
  invalidRequests: [
    "invalid_requests_total",
    "Rejected power-limit requests, by reason.",
    ["reason"],
  ],
  safeDefaults: [
    "safe_default_applications_total",
    "Times the safe default cap was chosen for a GPU.",
    [],
  ],
  restores: [
    "restores_total",
    "GPUs restored to their baseline power limit, by reason.",
    ["reason"],
  ],
  driftCorrections: [
    "drift_corrections_total",
    "Power limits re-applied after something else changed them.",
    [],
  ],
  configReloads: ["config_reloads_total", "Caps file reloads, by result.", ["result"]],
  reconcilePasses: ["reconcile_passes_total", "Reconcile passes, by result.", ["result"]],
} as const;

type Counters = { [K in keyof typeof COUNTERS]: Counter<typeof COUNTERS[K][2][number]> };

/**
 * Label-less gauges that are absent until there is a value: field → name, help. The node power
 * budget's are set by each pass and removed when it goes away; PodResources' only while the
 * pod → GPU mapping uses them.
 */
const OPTIONAL_GAUGES = {
  lastSuccess: [
    "last_successful_reconcile_timestamp_seconds",
    "Unix time of the last successful reconcile pass (absent before the first).",
  ],
  staleness: [
    "source_staleness_seconds",
    "Seconds since the desired-cap source last synced (absent if it never did).",
  ],
  budget: [
    "node_power_budget_watts",
    "Node power budget in force (smaller of caps file budget and node annotation).",
  ],
  allocated: [
    "node_power_allocated_watts",
    "Sum of the power limits of all GPUs after the last pass (read back), counted against " +
    "the node power budget.",
  ],
  overBudget: [
    "node_power_over_budget",
    "1 when even every capped GPU at its minimum does not fit the node power budget, else 0.",
  ],
  podResourcesUp: [
    "pod_resources_up",
    "1 when the last List of the kubelet's PodResources answered, 0 while it fails (pod → GPU " +
    "allocations are frozen meanwhile).",
  ],
  podResourcesLastSuccess: [
    "pod_resources_last_success_timestamp_seconds",
    "Unix time of the last List of the kubelet's PodResources that answered.",
  ],
} as const;

type OptionalGauges = Record<keyof typeof OPTIONAL_GAUGES, Gauge>;

/** Build one metric per table row, keyed like the table. */
function fromTable<T extends Record<string, readonly unknown[]>, M>(
  table: T,
  make: (row: T[keyof T]) => M,
): Record<keyof T, M> {
  return Object.fromEntries(
    Object.entries(table).map(([key, row]) => [key, make(row as T[keyof T])]),
  ) as Record<keyof T, M>;
}

/**
 * Create a {@link PrometheusTelemetry} with its own registry (no global state, no default
 * process metrics beyond `process_resident_memory_bytes` and `process_start_time_seconds`).
 */
export function createPrometheusTelemetry(
  options: PrometheusTelemetryOptions,
): PrometheusTelemetry {
  return new PrometheusTelemetryImpl(options);
}

class PrometheusTelemetryImpl implements PrometheusTelemetry {
  #options: PrometheusTelemetryOptions;
  #registry: Registry;
  #scrape: Promise<unknown> = Promise.resolve();
  #labelSets = new Map<string, Set<string>>();
  #lastSuccessMs: number | null = null;

  #counters: Counters;
  #gauges: OptionalGauges;
  #reconcileDuration: Histogram;
  #reactionLatency: Histogram;
  #wattGauges: [WattField, Gauge<GpuLabel>][];
  #energy: Counter<GpuLabel>;
  #flagGauges: [(s: GpuStatusLike) => boolean | null | undefined, Gauge<GpuLabel>][];

  constructor(options: PrometheusTelemetryOptions) {
    this.#options = options;
    this.#registry = new Registry_();
    const registers = [this.#registry];
    const counter = <T extends string>(name: string, help: string, labelNames: T[]) =>
      new Counter_<T>({ name: METRIC_PREFIX + name, help, labelNames, registers });
    const gauge = <T extends string>(name: string, help: string, labelNames: T[]) =>
      new Gauge_<T>({ name: METRIC_PREFIX + name, help, labelNames, registers });

    const { version, denoVersion, driverVersion } = options.buildInfo;
    gauge("build_info", "Build information; the value is always 1.", [
      "version",
      "deno_version",
      "driver_version",
    ]).set({
      version: version || "unknown",
      deno_version: denoVersion || "unknown",
      driver_version: driverVersion || "unknown",
    }, 1);

    this.#wattGauges = GPU_WATT_GAUGES.map(([field, name, help]) => [
      field,
      gauge(name, help, GPU_LABELS),
    ]);
    this.#energy = counter(
      "gpu_energy_joules_total",
      "Energy consumed by the GPU since the driver was loaded (resets on driver reload).",
      GPU_LABELS,
    );
    this.#flagGauges = GPU_FLAG_GAUGES.map(([name, help, value]) => [
      value,
      gauge(name, help, GPU_LABELS),
    ]);
    this.#counters = fromTable(
      COUNTERS,
      ([name, help, labels]) => counter(name, help, [...labels]),
    ) as Counters;
    this.#reconcileDuration = new Histogram_({
      name: METRIC_PREFIX + "reconcile_duration_seconds",
      help: "Duration of reconcile passes.",
      buckets: [...RECONCILE_DURATION_BUCKETS],
      registers,
    });
    this.#reactionLatency = new Histogram_({
      name: METRIC_PREFIX + "reaction_latency_seconds",
      help: "Time from a desired-cap change being observed to the cap being set.",
      buckets: [...REACTION_LATENCY_BUCKETS],
      registers,
    });
    this.#gauges = fromTable(OPTIONAL_GAUGES, ([name, help]) => {
      const g = gauge(name, help, []);
      g.remove({});
      return g;
    });

    new Gauge_({
      name: "process_resident_memory_bytes",
      help: "Resident memory size in bytes.",
      registers,
      collect() {
        this.set(Deno.memoryUsage().rss);
      },
    });
    new Gauge_({
      name: "process_start_time_seconds",
      help: "Start time of the process since unix epoch in seconds.",
      registers,
    }).set(Math.floor(performance.timeOrigin) / 1000);

    // Series with a closed set of label values exist from the start (0), so rate() and
    // absent-vs-zero behave from the first scrape.
    for (const kind of ["apply", "drift", "restore"]) this.#counters.capChanges.inc({ kind }, 0);
    for (const direction of ["up", "down"]) this.#counters.clamps.inc({ direction }, 0);
    for (const reason of ["unmanaged", "shutdown", "startup", "command"]) {
      this.#counters.restores.inc({ reason }, 0);
    }
    for (const result of ["success", "failure"]) {
      this.#counters.configReloads.inc({ result }, 0);
      this.#counters.reconcilePasses.inc({ result }, 0);
    }
  }

  get contentType(): string {
    return this.#registry.contentType;
  }

  metrics(): Promise<string> {
    // Scrapes run one at a time so a second scrape cannot refill the per-GPU gauges while the
    // first is rendering them.
    const run = this.#scrape.then(() => this.#render());
    this.#scrape = run.catch(() => {});
    return run;
  }

  async #render(): Promise<string> {
    this.#fillGpuGauges();
    this.#fillOptional(this.#gauges.staleness, "staleness", this.#options.staleness, 1);
    if (this.#options.podResources) {
      const read = this.#options.podResources;
      let state: PodResourcesState | null = null;
      this.#fillOptional(this.#gauges.podResourcesUp, "PodResources state", () => {
        state = read();
        return state === null ? null : state.up ? 1 : 0;
      }, 1);
      this.#fillOptional(
        this.#gauges.podResourcesLastSuccess,
        "PodResources last success",
        () => (state as PodResourcesState | null)?.lastSuccessMs ?? null,
        1 / 1000,
      );
    }
    if (this.#options.lastReconcileMs) {
      this.#fillOptional(
        this.#gauges.lastSuccess,
        "last reconcile",
        this.#options.lastReconcileMs,
        1 / 1000,
      );
    }
    return await this.#registry.metrics();
  }

  #fillOptional(
    gauge: Gauge,
    what: string,
    read: (() => number | null) | undefined,
    scale: number,
  ): void {
    let value: number | null = null;
    try {
      value = read ? read() : null;
    } catch (error) {
      getLogger(["gpu-power-agent", "metrics"]).warn(
        "Metrics scrape: cannot read {what}: {error}",
        { what, error: String(error) },
      );
    }
    if (typeof value === "number" && Number.isFinite(value)) gauge.set(value * scale);
    else gauge.remove({});
  }

  #fillGpuGauges(): void {
    for (const [, gauge] of this.#wattGauges) gauge.reset();
    this.#energy.reset();
    for (const [, gauge] of this.#flagGauges) gauge.reset();
    if (!this.#options.statuses) return;
    let statuses: GpuStatusLike[];
    try {
      statuses = this.#options.statuses();
    } catch (error) {
      getLogger(["gpu-power-agent", "metrics"]).warn(
        "Metrics scrape: cannot collect GPU status, per-GPU metrics omitted: {error}",
        { error: String(error) },
      );
      return;
    }
    for (const status of statuses) {
      const labels = { gpu: String(status.index), uuid: status.uuid, name: status.name };
      for (const [value, gauge] of this.#flagGauges) {
        const flag = value(status);
        if (flag !== null && flag !== undefined) gauge.set(labels, flag ? 1 : 0);
      }
      for (const [field, gauge] of this.#wattGauges) {
        const mw = status[field];
        if (typeof mw === "number" && Number.isFinite(mw)) gauge.set(labels, mw / 1000);
      }
      const mj = status.energyMj;
      if (typeof mj === "number" && Number.isFinite(mj) && mj >= 0) {
        // The driver's counter is monotonic until the driver reloads, which is a counter reset
        // in Prometheus terms; so the series carries the driver's value as is.
        this.#energy.inc(labels, mj / 1000);
      }
    }
  }

  /** Keep label cardinality bounded when callers pass free-form strings. */
  #bounded<T extends string>(metric: string, labels: Record<T, string>): Record<T, string> {
    const clean = {} as Record<T, string>;
    for (const key in labels) {
      clean[key] = String(labels[key]).slice(0, MAX_LABEL_VALUE_LENGTH);
    }
    const seen = this.#labelSets.get(metric) ?? new Set<string>();
    this.#labelSets.set(metric, seen);
    const key = JSON.stringify(clean);
    if (seen.has(key)) return clean;
    if (seen.size < MAX_LABEL_SETS) {
      seen.add(key);
      return clean;
    }
    const other = {} as Record<T, string>;
    for (const name in clean) other[name] = "other";
    return other;
  }

  #safely(event: string, fn: () => void): void {
    try {
      fn();
    } catch (error) {
      getLogger(["gpu-power-agent", "metrics"]).warn("Cannot record {event} metric: {error}", {
        event,
        error: String(error),
      });
    }
  }

  capChanged(change: CapChange): void {
    this.#safely("capChanged", () => {
      this.#counters.capChanges.inc({ kind: change.kind });
      if (change.kind === "drift") this.#counters.driftCorrections.inc();
      if (change.kind === "restore") {
        this.#counters.restores.inc(
          this.#bounded("restores", { reason: change.restoreReason ?? "unknown" }),
        );
      }
    });
  }

  clamped(direction: "up" | "down"): void {
    this.#safely("clamped", () => this.#counters.clamps.inc({ direction }));
  }

  nvmlError(fn: string, code: string): void {
    this.#safely(
      "nvmlError",
      () => this.#counters.nvmlErrors.inc(this.#bounded("nvml", { function: fn, code })),
    );
  }

  sourceError(source: string, reason: string): void {
    this.#safely(
      "sourceError",
      () => this.#counters.sourceErrors.inc(this.#bounded("source", { source, reason })),
    );
  }

  metricsServerError(reason: string): void {
    this.#safely(
      "metricsServerError",
      () => this.#counters.metricsServerErrors.inc(this.#bounded("metrics_server", { reason })),
    );
  }

  invalidRequest(reason: string): void {
    this.#safely(
      "invalidRequest",
      () => this.#counters.invalidRequests.inc(this.#bounded("invalid", { reason })),
    );
  }

  safeDefaultApplied(): void {
    this.#safely("safeDefaultApplied", () => this.#counters.safeDefaults.inc());
  }

  configReload(result: "success" | "failure"): void {
    this.#safely("configReload", () => this.#counters.configReloads.inc({ result }));
  }

  reconcileCompleted(info: { durationSeconds: number; ok: boolean; atMs: number }): void {
    this.#safely("reconcileCompleted", () => {
      this.#counters.reconcilePasses.inc({ result: info.ok ? "success" : "failure" });
      if (Number.isFinite(info.durationSeconds) && info.durationSeconds >= 0) {
        this.#reconcileDuration.observe(info.durationSeconds);
      }
      if (info.ok && Number.isFinite(info.atMs) && !this.#options.lastReconcileMs) {
        this.#lastSuccessMs = Math.max(this.#lastSuccessMs ?? 0, info.atMs);
        this.#gauges.lastSuccess.set(this.#lastSuccessMs / 1000);
      }
    });
  }

  reactionLatency(seconds: number): void {
    this.#safely("reactionLatency", () => {
      if (Number.isFinite(seconds) && seconds >= 0) this.#reactionLatency.observe(seconds);
    });
  }

  budgetAllocated(info: BudgetInfo): void {
    this.#safely("budgetAllocated", () => {
      const { budgetMw, allocatedMw } = info;
      if (typeof budgetMw !== "number" || !Number.isFinite(budgetMw)) {
        for (const g of [this.#gauges.budget, this.#gauges.allocated, this.#gauges.overBudget]) {
          g.remove({});
        }
        return;
      }
      this.#gauges.budget.set(budgetMw / 1000);
      if (Number.isFinite(allocatedMw)) this.#gauges.allocated.set(allocatedMw / 1000);
      else this.#gauges.allocated.remove({});
      this.#gauges.overBudget.set(info.overBudget ? 1 : 0);
    });
  }
}
