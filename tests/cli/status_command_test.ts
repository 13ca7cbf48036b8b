import assert from "node:assert/strict";
import { formatStatusTable, statusToJson } from "../../src/cli/status_command.ts";
import type { GpuStatus } from "../../src/reconcile/gpu_status.ts";

function status(index: number, overrides: Partial<GpuStatus> = {}): GpuStatus {
  return {
    index,
    uuid: `GPU-${index}`,
    name: "NVIDIA H100 80GB HBM3",
    pciBusId: `00000000:1${index}:00.0`,
    drawMw: 118_596,
    limitMw: 250_000,
    enforcedMw: 250_000,
    defaultMw: 700_000,
    minMw: 200_000,
    maxMw: 700_000,
    energyMj: 3_420_324,
    managed: true,
    baselineMw: 650_000,
    appliedMw: 250_000,
    desiredMw: 250_000,
    desiredReason: "caps file default",
    desiredKind: "file",
    supported: true,
    enforced: true,
    ...overrides,
  };
}

Deno.test("status table: one row per GPU, watts, draw to 0.1 W, baseline when managed", () => {
  const text = formatStatusTable([
    status(0),
    status(1, { managed: false, baselineMw: null, drawMw: null, enforcedMw: null }),
  ]);
  const [header, row0, row1] = text.split("\n");
  assert.match(
    header,
    /^GPU\s+UUID\s+NAME\s+DRAW W\s+LIMIT W\s+ENFORCED W\s+DEFAULT W\s+MIN-MAX W\s+MANAGED$/,
  );
  assert.match(
    row0,
    /^0\s+GPU-0\s+NVIDIA H100 80GB HBM3\s+118\.6\s+250\s+250\s+700\s+200-700\s+yes \(baseline 650 W\)$/,
  );
  assert.match(row1, /^1\s+GPU-1\s+.*\s+-\s+250\s+-\s+700\s+200-700\s+no$/);
});

Deno.test("status table: a GPU whose limits cannot be read shows the error line", () => {
  const text = formatStatusTable([
    status(0, { limitMw: null, minMw: null, maxMw: null, error: "NVML GPU_IS_LOST" }),
  ]);
  assert.match(text.split("\n")[1], /\berror\b/);
  assert.match(text, /GPU 0 \(GPU-0\): NVML GPU_IS_LOST/);
});

Deno.test("status --json speaks watts and joules, like the metrics", () => {
  const j = statusToJson(status(0));
  assert.equal(j.powerLimitWatts, 250);
  assert.equal(j.powerDrawWatts, 118.596);
  assert.equal(j.energyJoules, 3420.324);
  assert.equal(j.baselineWatts, 650);
  assert.equal(j.managed, true);
  assert.equal("error" in j, false);
});

Deno.test("status: an unsupported GPU says so in the table and in JSON, and is not an error", () => {
  const s = status(2, {
    supported: false,
    managed: false,
    baselineMw: null,
    appliedMw: null,
    limitMw: null,
    enforcedMw: null,
    minMw: null,
    maxMw: null,
    defaultMw: null,
    enforced: null,
  });
  const table = formatStatusTable([status(0), s]);
  assert.match(table.split("\n")[2], /GPU-2 .* - {2,}unsupported$/);
  assert.doesNotMatch(table, /---/);
  assert.doesNotMatch(table, /error/);
  const json = statusToJson(s);
  assert.equal(json.unsupported, true);
  assert.equal(json.powerLimitSupported, false);
  assert.equal(json.enforced, null);
  assert.equal(statusToJson(status(0)).unsupported, undefined);
  assert.equal(statusToJson(status(0)).enforced, true);
});
