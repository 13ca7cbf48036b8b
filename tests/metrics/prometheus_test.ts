import assert from "node:assert/strict";
import {
  createPrometheusTelemetry,
  type GpuStatusLike,
  type PrometheusTelemetryOptions,
} from "../../src/metrics/prometheus.ts";
import type { GpuStatus } from "../../src/reconcile/gpu_status.ts";
import { findSamples, promtoolCheck, sampleValue } from "./exposition.ts";

const P = "gpu_power_agent_";
const buildInfo = { version: "1.2.3", denoVersion: "2.9.6", driverVersion: "580.159.04" };

function gpu(index: number, overrides: Partial<GpuStatusLike> = {}): GpuStatusLike {
  return {
    index,
    uuid: `GPU-0000000${index}-aaaa-bbbb-cccc-dddddddddddd`,
    name: "NVIDIA H100 80GB HBM3",
    pciBusId: `00000000:1${index}:00.0`,
    drawMw: 123_456,
    limitMw: 700_000,
    enforcedMw: 700_000,
    defaultMw: 700_000,
    minMw: 200_000,
    maxMw: 700_000,
    energyMj: 5_000_000,
    managed: false,
    baselineMw: null,
    desiredMw: null,
    supported: true,
    enforced: null,
    ...overrides,
  };
}

function labelsOf(status: GpuStatusLike): Record<string, string> {
  return { gpu: String(status.index), uuid: status.uuid, name: status.name };
}

function telemetry(options: Partial<PrometheusTelemetryOptions> = {}) {
  return createPrometheusTelemetry({ buildInfo, ...options });
}

Deno.test("event counters count what happened", async () => {
  const t = telemetry();
  t.clamped("down");
  t.clamped("down");
  t.clamped("up");
  const change = { uuid: "GPU-x", index: 0, name: "H100", fromMw: 700_000, toMw: 250_000 };
  t.capChanged({ ...change, kind: "apply", reason: "caps file default" });
  t.capChanged({ ...change, kind: "drift", reason: "caps file default" });
  t.capChanged({ ...change, kind: "drift", reason: "caps file default" });
  t.capChanged({ ...change, kind: "restore", reason: "shutdown", restoreReason: "shutdown" });
  t.nvmlError("nvmlDeviceSetPowerManagementLimit", "NO_PERMISSION");
  t.nvmlError("nvmlDeviceSetPowerManagementLimit", "NO_PERMISSION");
  t.sourceError("kubernetes", "list_failed");
  t.invalidRequest("not_a_number");
  t.safeDefaultApplied();
  t.configReload("success");
  t.configReload("failure");
  t.configReload("failure");
  const text = await t.metrics();

  assert.equal(sampleValue(text, `${P}clamps_total`, { direction: "down" }), 2);
  assert.equal(sampleValue(text, `${P}clamps_total`, { direction: "up" }), 1);
  assert.equal(sampleValue(text, `${P}cap_changes_total`, { kind: "apply" }), 1);
  assert.equal(sampleValue(text, `${P}cap_changes_total`, { kind: "drift" }), 2);
  assert.equal(sampleValue(text, `${P}cap_changes_total`, { kind: "restore" }), 1);
  assert.equal(sampleValue(text, `${P}drift_corrections_total`), 2);
  assert.equal(sampleValue(text, `${P}restores_total`, { reason: "shutdown" }), 1);
  assert.equal(sampleValue(text, `${P}restores_total`, { reason: "unmanaged" }), 0);
  assert.equal(
    sampleValue(text, `${P}nvml_errors_total`, {
      function: "nvmlDeviceSetPowerManagementLimit",
      code: "NO_PERMISSION",
    }),
    2,
  );
  assert.equal(
    sampleValue(text, `${P}source_errors_total`, { source: "kubernetes", reason: "list_failed" }),
    1,
  );
  assert.equal(sampleValue(text, `${P}invalid_requests_total`, { reason: "not_a_number" }), 1);
  assert.equal(sampleValue(text, `${P}safe_default_applications_total`), 1);
  assert.equal(sampleValue(text, `${P}config_reloads_total`, { result: "success" }), 1);
  assert.equal(sampleValue(text, `${P}config_reloads_total`, { result: "failure" }), 2);
  assert.equal(
    sampleValue(text, `${P}build_info`, {
      version: "1.2.3",
      deno_version: "2.9.6",
      driver_version: "580.159.04",
    }),
    1,
  );
});

Deno.test("reconcile events fill histograms and the last-success timestamp", async () => {
  const t = telemetry();
  let text = await t.metrics();
  assert.equal(sampleValue(text, `${P}last_successful_reconcile_timestamp_seconds`), undefined);

  t.reconcileCompleted({ durationSeconds: 0.002, ok: true, atMs: 1_700_000_000_000 });
  t.reconcileCompleted({ durationSeconds: 0.3, ok: false, atMs: 1_700_000_001_000 });
  t.reactionLatency(0.3);
  t.reactionLatency(12);
  text = await t.metrics();

  const duration = `${P}reconcile_duration_seconds`;
  assert.equal(sampleValue(text, `${duration}_count`), 2);
  assert.equal(sampleValue(text, `${duration}_sum`), 0.302);
  assert.equal(sampleValue(text, `${duration}_bucket`, { le: "0.0005" }), 0);
  assert.equal(sampleValue(text, `${duration}_bucket`, { le: "0.0025" }), 1);
  assert.equal(sampleValue(text, `${duration}_bucket`, { le: "1" }), 2);
  const latency = `${P}reaction_latency_seconds`;
  assert.equal(sampleValue(text, `${latency}_bucket`, { le: "0.5" }), 1);
  assert.equal(sampleValue(text, `${latency}_bucket`, { le: "10" }), 1);
  assert.equal(sampleValue(text, `${latency}_bucket`, { le: "30" }), 2);
  assert.equal(sampleValue(text, `${P}reconcile_passes_total`, { result: "success" }), 1);
  assert.equal(sampleValue(text, `${P}reconcile_passes_total`, { result: "failure" }), 1);
  // The failed pass does not move the last-success timestamp.
  assert.equal(
    sampleValue(text, `${P}last_successful_reconcile_timestamp_seconds`),
    1_700_000_000,
  );
});

Deno.test("callbacks for last reconcile and staleness are read at scrape time", async () => {
  let lastMs: number | null = null;
  let staleness: number | null = null;
  const t = telemetry({ lastReconcileMs: () => lastMs, staleness: () => staleness });
  let text = await t.metrics();
  assert.equal(sampleValue(text, `${P}last_successful_reconcile_timestamp_seconds`), undefined);
  assert.equal(sampleValue(text, `${P}source_staleness_seconds`), undefined);

  lastMs = 1_700_000_123_500;
  staleness = 42.5;
  text = await t.metrics();
  assert.equal(
    sampleValue(text, `${P}last_successful_reconcile_timestamp_seconds`),
    1_700_000_123.5,
  );
  assert.equal(sampleValue(text, `${P}source_staleness_seconds`), 42.5);

  staleness = null;
  text = await t.metrics();
  assert.equal(sampleValue(text, `${P}source_staleness_seconds`), undefined);
});

Deno.test("PodResources gauges: absent when unused, 1/0 and the last answer's time", async () => {
  let state: { up: boolean; lastSuccessMs: number | null } | null = null;
  const t = telemetry({ podResources: () => state });
  let text = await t.metrics();
  assert.equal(sampleValue(text, `${P}pod_resources_up`), undefined);
  assert.equal(sampleValue(text, `${P}pod_resources_last_success_timestamp_seconds`), undefined);

  state = { up: false, lastSuccessMs: null };
  text = await t.metrics();
  assert.equal(sampleValue(text, `${P}pod_resources_up`), 0, "never answered");
  assert.equal(sampleValue(text, `${P}pod_resources_last_success_timestamp_seconds`), undefined);

  state = { up: true, lastSuccessMs: 1_700_000_000_250 };
  text = await t.metrics();
  assert.equal(sampleValue(text, `${P}pod_resources_up`), 1);
  assert.equal(
    sampleValue(text, `${P}pod_resources_last_success_timestamp_seconds`),
    1_700_000_000.25,
  );
  state = { up: false, lastSuccessMs: 1_700_000_000_250 };
  text = await t.metrics();
  assert.equal(sampleValue(text, `${P}pod_resources_up`), 0, "failing: frozen");
  assert.equal(
    sampleValue(text, `${P}pod_resources_last_success_timestamp_seconds`),
    1_700_000_000.25,
  );
});

Deno.test("per-GPU gauges show watts from milliwatts and follow the GPU list", async () => {
  const managed = gpu(0, {
    limitMw: 250_000,
    enforcedMw: 240_000,
    managed: true,
    baselineMw: 700_000,
    desiredMw: 250_000,
  });
  const unmanaged = gpu(1, { drawMw: null, energyMj: null, enforcedMw: null });
  let statuses = [managed, unmanaged];
  const t = telemetry({ statuses: () => statuses });
  let text = await t.metrics();

  const g0 = labelsOf(managed);
  const g1 = labelsOf(unmanaged);
  assert.equal(sampleValue(text, `${P}gpu_power_limit_watts`, g0), 250);
  assert.equal(sampleValue(text, `${P}gpu_desired_power_limit_watts`, g0), 250);
  assert.equal(sampleValue(text, `${P}gpu_enforced_power_limit_watts`, g0), 240);
  assert.equal(sampleValue(text, `${P}gpu_default_power_limit_watts`, g0), 700);
  assert.equal(sampleValue(text, `${P}gpu_min_power_limit_watts`, g0), 200);
  assert.equal(sampleValue(text, `${P}gpu_max_power_limit_watts`, g0), 700);
  assert.equal(sampleValue(text, `${P}gpu_baseline_power_limit_watts`, g0), 700);
  assert.equal(sampleValue(text, `${P}gpu_power_draw_watts`, g0), 123.456);
  assert.equal(sampleValue(text, `${P}gpu_energy_joules_total`, g0), 5000);
  assert.equal(sampleValue(text, `${P}gpu_managed`, g0), 1);
  assert.equal(sampleValue(text, `${P}gpu_read_error`, g0), 0);

  assert.equal(sampleValue(text, `${P}gpu_power_limit_watts`, g1), 700);
  assert.equal(sampleValue(text, `${P}gpu_managed`, g1), 0);
  // Unmanaged: no desired, no baseline; unsupported readings: no series either.
  assert.equal(sampleValue(text, `${P}gpu_desired_power_limit_watts`, g1), undefined);
  assert.equal(sampleValue(text, `${P}gpu_baseline_power_limit_watts`, g1), undefined);
  assert.equal(sampleValue(text, `${P}gpu_power_draw_watts`, g1), undefined);
  assert.equal(sampleValue(text, `${P}gpu_energy_joules_total`, g1), undefined);
  assert.equal(sampleValue(text, `${P}gpu_enforced_power_limit_watts`, g1), undefined);

  // The limit moves and GPU 1 disappears: its series go, GPU 0's value follows.
  statuses = [{ ...managed, limitMw: 300_000, energyMj: 6_500_000 }];
  text = await t.metrics();
  assert.equal(sampleValue(text, `${P}gpu_power_limit_watts`, g0), 300);
  assert.equal(sampleValue(text, `${P}gpu_energy_joules_total`, g0), 6500);
  assert.deepEqual(findSamples(text, `${P}gpu_power_limit_watts`, { gpu: "1" }), []);
  assert.deepEqual(findSamples(text, `${P}gpu_managed`, { gpu: "1" }), []);
  assert.ok(!text.includes(unmanaged.uuid), "no series of the removed GPU remain");

  // A driver reload resets the energy counter: the series restarts, as a Prometheus counter does.
  statuses = [{ ...managed, energyMj: 1000 }];
  text = await t.metrics();
  assert.equal(sampleValue(text, `${P}gpu_energy_joules_total`, g0), 1);
});

Deno.test("a GPU whose facts could not be read keeps only the series it has", async () => {
  // As collectGpuStatus reports a failed readLimits: limit fields null, error set.
  const broken = gpu(0, {
    error: "cannot read power limits: NVML nvmlDeviceGetPowerManagementLimit failed: GPU_IS_LOST",
    limitMw: null,
    enforcedMw: null,
    defaultMw: null,
    minMw: null,
    maxMw: null,
    managed: true,
    desiredMw: 250_000,
    baselineMw: 700_000,
  });
  const text = await telemetry({ statuses: () => [broken] }).metrics();
  const labels = labelsOf(broken);
  assert.equal(sampleValue(text, `${P}gpu_read_error`, labels), 1);
  assert.equal(sampleValue(text, `${P}gpu_managed`, labels), 1);
  assert.equal(sampleValue(text, `${P}gpu_desired_power_limit_watts`, labels), 250);
  assert.equal(sampleValue(text, `${P}gpu_baseline_power_limit_watts`, labels), 700);
  assert.equal(sampleValue(text, `${P}gpu_power_draw_watts`, labels), 123.456);
  assert.equal(sampleValue(text, `${P}gpu_energy_joules_total`, labels), 5000);
  for (const name of ["power_limit", "enforced_power_limit", "default_power_limit"]) {
    assert.equal(sampleValue(text, `${P}gpu_${name}_watts`, labels), undefined, name);
  }
  assert.equal(sampleValue(text, `${P}gpu_min_power_limit_watts`, labels), undefined);
  assert.equal(sampleValue(text, `${P}gpu_max_power_limit_watts`, labels), undefined);
});

Deno.test("GpuStatus from collectGpuStatus is accepted as is", () => {
  const status: GpuStatus = {
    ...gpu(3),
    appliedMw: null,
    desiredReason: null,
    desiredKind: null,
  };
  const like: GpuStatusLike = status; // compile-time check that the shapes stay compatible
  assert.equal(like.index, 3);
});

Deno.test("a throwing status callback drops per-GPU series but the scrape succeeds", async () => {
  let fail = false;
  const t = telemetry({
    statuses: () => {
      if (fail) throw new Error("NVML gone");
      return [gpu(0)];
    },
  });
  assert.equal(sampleValue(await t.metrics(), `${P}gpu_managed`, { gpu: "0" }), 0);
  fail = true;
  const text = await t.metrics();
  assert.deepEqual(findSamples(text, `${P}gpu_managed`), []);
  assert.equal(sampleValue(text, `${P}build_info`), 1);
});

Deno.test("node power budget gauges: absent without a budget, watts, 0/1 over budget", async () => {
  const t = telemetry();
  const names = ["budget_watts", "allocated_watts", "over_budget"].map((n) =>
    `${P}node_power_${n}`
  );
  const values = async () => {
    const text = await t.metrics();
    return names.map((name) => sampleValue(text, name));
  };
  assert.deepEqual(await values(), [undefined, undefined, undefined]);
  t.budgetAllocated({ budgetMw: 4_000_000, allocatedMw: 4_000_000, overBudget: false });
  assert.deepEqual(await values(), [4000, 4000, 0]);
  t.budgetAllocated({ budgetMw: 1_000_500, allocatedMw: 1_600_000, overBudget: true });
  assert.deepEqual(await values(), [1000.5, 1600, 1]);
  t.budgetAllocated({ budgetMw: null, allocatedMw: 1_600_000, overBudget: false });
  assert.deepEqual(await values(), [undefined, undefined, undefined]);
  t.budgetAllocated({ budgetMw: 2_000_000, allocatedMw: Number.NaN, overBudget: false });
  assert.deepEqual(await values(), [2000, undefined, 0]);
});

Deno.test("telemetry methods never throw on odd input", async () => {
  const t = telemetry();
  t.reactionLatency(Number.NaN);
  t.reactionLatency(-1);
  t.reconcileCompleted({ durationSeconds: Number.POSITIVE_INFINITY, ok: true, atMs: Number.NaN });
  const text = await t.metrics();
  assert.equal(sampleValue(text, `${P}reaction_latency_seconds_count`), 0);
  assert.equal(sampleValue(text, `${P}reconcile_duration_seconds_count`), 0);
});

Deno.test("free-form label values are bounded", async () => {
  const t = telemetry();
  for (let i = 0; i < 100; i++) t.invalidRequest(`reason ${i}`);
  t.invalidRequest("reason 3");
  t.sourceError("kubernetes", "x".repeat(1000));
  const text = await t.metrics();
  const series = findSamples(text, `${P}invalid_requests_total`);
  assert.equal(series.length, 65);
  assert.equal(sampleValue(text, `${P}invalid_requests_total`, { reason: "reason 3" }), 2);
  assert.equal(sampleValue(text, `${P}invalid_requests_total`, { reason: "other" }), 36);
  const [source] = findSamples(text, `${P}source_errors_total`);
  assert.equal(source.labels.reason.length, 128);
});

Deno.test("instances are independent (no global registry)", async () => {
  const a = telemetry();
  const b = telemetry();
  a.clamped("down");
  assert.equal(sampleValue(await a.metrics(), `${P}clamps_total`, { direction: "down" }), 1);
  assert.equal(sampleValue(await b.metrics(), `${P}clamps_total`, { direction: "down" }), 0);
  assert.equal(a.contentType, "text/plain; version=0.0.4; charset=utf-8");
});

Deno.test("promtool check metrics reports no problems on the full output", async () => {
  const t = telemetry({
    statuses: () => [
      gpu(0, { managed: true, desiredMw: 250_000, baselineMw: 700_000, limitMw: 250_000 }),
      gpu(1, { name: 'Odd "name" with \\ and\nnewline' }),
      gpu(2, { error: "lost", limitMw: null, minMw: null, maxMw: null }),
    ],
    staleness: () => 1.5,
    podResources: () => ({ up: true, lastSuccessMs: 1_700_000_000_000 }),
  });
  t.clamped("down");
  t.capChanged({
    uuid: "GPU-x",
    index: 0,
    name: "H100",
    fromMw: 1,
    toMw: 2,
    kind: "restore",
    reason: "r",
    restoreReason: "unmanaged",
  });
  t.nvmlError("nvmlDeviceGetPowerUsage", "NOT_SUPPORTED");
  t.sourceError("file", "parse_error");
  t.invalidRequest("above_max");
  t.safeDefaultApplied();
  t.configReload("success");
  t.reconcileCompleted({ durationSeconds: 0.004, ok: true, atMs: Date.now() });
  t.reactionLatency(0.2);
  t.budgetAllocated({ budgetMw: 4_000_000, allocatedMw: 3_999_999, overBudget: false });
  const text = await t.metrics();
  assert.equal(sampleValue(text, `${P}node_power_budget_watts`), 4000);
  const { code, output } = await promtoolCheck(text);
  assert.equal(output, "", `promtool output:\n${output}`);
  assert.equal(code, 0);
  assert.equal(findSamples(text, `${P}gpu_power_limit_watts`).length, 2);
  assert.ok((sampleValue(text, "process_resident_memory_bytes") ?? 0) > 1_000_000);
});
