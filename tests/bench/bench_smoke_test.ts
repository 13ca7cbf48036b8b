/**
 * `deno task bench --quick --json` runs end to end and prints ONE JSON object of the documented
 * shape on stdout (figures of the smoke configuration are meaningless and not checked). This is
 * what keeps the benchmark from rotting.
 *
 * @module
 */
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { REPO_ROOT } from "../helpers/agent_process.ts";
import { benchOptions, type BenchReport, benchTable, RESULT_KEYS } from "./agent_bench.ts";

function checkShape(report: BenchReport): void {
  deepStrictEqual(Object.keys(report).sort(), ["agent", "date", "deno", "machine", "results"]);
  equal(report.agent, "bundle", "the bench measures the agent as it ships");
  ok(!Number.isNaN(Date.parse(report.date)), `date: ${report.date}`);
  equal(typeof report.machine, "string");
  equal(report.deno, Deno.version.deno);
  deepStrictEqual(report.results.map((r) => r.mode), ["file", "kubernetes"]);
  for (const result of report.results) {
    deepStrictEqual(Object.keys(result).sort(), [...RESULT_KEYS].sort(), result.mode);
    for (const key of RESULT_KEYS) {
      if (key === "mode") continue;
      const value = result[key];
      ok(
        value === null || (typeof value === "number" && Number.isFinite(value) && value >= 0),
        `${result.mode}.${key} = ${JSON.stringify(value)}: a number ≥ 0 or null`,
      );
    }
    for (const key of ["reaction_ms_p50", "vmrss_mib_start", "vmhwm_mib_sustained"] as const) {
      equal(typeof result[key], "number", `${result.mode}.${key} is measured in every mode`);
    }
  }
  const [file, kubernetes] = report.results;
  equal(file.list_requests, null);
  equal(file.watch_requests, null);
  equal(file.api_recovery_ms_p99, null);
  equal(typeof kubernetes.list_requests, "number");
  equal(typeof kubernetes.watch_requests, "number");
}

Deno.test("deno task bench --quick --json: one JSON object of the documented shape", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "bench", "--quick", "--json"],
    cwd: REPO_ROOT,
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1" },
    stdin: "null",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  equal(out.code, 0, stderr);
  const lines = stdout.split("\n").filter((l) => l !== "");
  equal(lines.length, 1, `stdout must be one JSON line, got:\n${stdout}`);
  const report = JSON.parse(lines[0]) as BenchReport;
  checkShape(report);
  ok(benchTable(report).includes("| desired change → GPU, p99 (ms) |"));
  ok(benchTable(report).endsWith(", agent from the bundle"));
});

Deno.test("bench options: defaults are the documented sustained load, --quick is seconds", () => {
  const full = benchOptions([]);
  equal(full.sustainSeconds, 600);
  equal(full.afterSeconds, 60);
  equal(full.fileEditsPerSecond, 2);
  ok(full.podEventsPerSecond >= 20);
  deepStrictEqual(full.modes, ["file", "kubernetes"]);
  const quick = benchOptions(["--quick", "--json", "--agent-env", "A=b=c"]);
  ok(quick.sustainSeconds <= 5 && quick.afterSeconds <= 5);
  equal(quick.json, true);
  equal(quick.reconcile, false);
  deepStrictEqual(quick.agentEnv, { A: "b=c" });
  equal(benchOptions(["--sustain-seconds", "30"]).sustainSeconds, 30);
  equal(full.sources, false, "the bundle by default");
  equal(benchOptions(["--sources"]).sources, true);
  // Steady cost: changes timed after untimed ones that run each code path once.
  equal(full.changes, 200);
  equal(full.warmupChanges, 20);
  equal(benchOptions(["--warmup-changes", "0"]).warmupChanges, 0);
});
