import { createPrometheusTelemetry } from "./src/metrics/prometheus.ts";
const t = createPrometheusTelemetry({
  buildInfo: { version: "0.1.0", denoVersion: Deno.version.deno, driverVersion: "580.1" },
  statuses: () => [{ index: 0, uuid: "GPU-a", name: "NVIDIA H100", pciBusId: "x", drawMw: 123456, limitMw: 250000, enforcedMw: 250000, defaultMw: 700000, minMw: 200000, maxMw: 700000, energyMj: 5000000, managed: true, baselineMw: 700000, desiredMw: 250000 }],
  staleness: () => 3,
});
t.clamped("down"); t.nvmlError("nvmlDeviceSetPowerManagementLimit", "NO_PERMISSION");
t.reconcileCompleted({ durationSeconds: 0.002, ok: true, atMs: Date.now() });
t.reactionLatency(0.3); t.sourceError("kubernetes", "list failed"); t.invalidRequest("not a number");
t.capChanged({uuid:"GPU-a",index:0,name:"x",fromMw:1,toMw:2,kind:"restore",reason:"r",restoreReason:"shutdown"});
const text = await t.metrics();
console.log(text);
