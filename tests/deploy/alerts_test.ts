/**
 * The alert rules (deploy/prometheus/gpu-power-agent.rules.yaml, the chart's
 * files/gpu-power-agent.rules.yaml): `promtool check rules`, `promtool test rules` with series
 * that make every alert fire and others that must not, and every metric name against a real
 * scrape of the agent. Needs promtool (Debian `prometheus`); fails, never skips, without it.
 */
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { exposedMetricNames, scrapeAgent } from "../helpers/agent_scrape.ts";
import { metricNameProblems, metricNames } from "./promql_names.ts";

const RULES = fileURLToPath(
  new URL("../../deploy/prometheus/gpu-power-agent.rules.yaml", import.meta.url),
);
const RULE_TESTS = fileURLToPath(new URL("./gpu-power-agent.rules.test.yaml", import.meta.url));

// deno-lint-ignore no-explicit-any
type Obj = Record<string, any>;

async function promtool(args: string[]): Promise<{ code: number; output: string }> {
  let out;
  try {
    out = await new Deno.Command("promtool", { args, stdin: "null" }).output();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new Error(
        "promtool not found on PATH: install the Debian package `prometheus`; .ci/run installs it",
      );
    }
    throw error;
  }
  const decoder = new TextDecoder();
  return { code: out.code, output: decoder.decode(out.stdout) + decoder.decode(out.stderr) };
}

async function rules(): Promise<Obj[]> {
  const file = parse(await Deno.readTextFile(RULES));
  return file.groups.flatMap((group: Obj) => group.rules);
}

Deno.test("promtool check rules accepts the rules file", async () => {
  const { code, output } = await promtool(["check", "rules", RULES]);
  equal(code, 0, output);
  ok(output.includes("SUCCESS: 9 rules found"), output);
});

Deno.test("promtool test rules: every alert fires on its series and only there", async () => {
  const { code, output } = await promtool(["test", "rules", RULE_TESTS]);
  equal(code, 0, output);
  ok(output.includes("SUCCESS"), output);
});

Deno.test("every alert has a firing and a silent test case", async () => {
  const alerts = (await rules()).map((r) => r.alert).filter(Boolean).sort();
  deepStrictEqual(alerts, [
    "GpuNodeOverPowerBudget",
    "GpuPowerAgentAbsent",
    "GpuPowerAgentMetricsServerErrors",
    "GpuPowerAgentNotReady",
    "GpuPowerAgentNvmlErrors",
    "GpuPowerAgentPodResourcesDown",
    "GpuPowerCapNotEnforced",
    "GpuPowerDriftRepeating",
    "GpuPowerSourceStale",
  ]);
  const cases = parse(await Deno.readTextFile(RULE_TESTS)).tests
    .flatMap((t: Obj) => t.alert_rule_test ?? []);
  for (const alert of alerts) {
    const mine = cases.filter((c: Obj) => c.alertname === alert);
    ok(mine.some((c: Obj) => c.exp_alerts?.length > 0), `${alert}: no case where it fires`);
    ok(mine.some((c: Obj) => (c.exp_alerts ?? []).length === 0), `${alert}: no silent case`);
  }
  for (const rule of await rules()) {
    ok(rule.labels?.severity, `${rule.alert}: severity label`);
    ok(rule.annotations?.summary && rule.annotations?.description, `${rule.alert}: annotations`);
  }
});

Deno.test("metricNames finds the selected metrics, not functions, labels or keywords", () => {
  deepStrictEqual(
    metricNames(
      'count by (node) (kube_node_status_capacity{resource="nvidia_com_gpu"} > 0)\n' +
        'unless on (node) count by (node) (up{job="gpu-power-agent"} == 1)',
    ),
    ["kube_node_status_capacity", "up"],
  );
  deepStrictEqual(
    metricNames(
      "histogram_quantile(0.99, sum by (instance, le) " +
        '(rate(a_bucket{instance=~"$instance"}[$__rate_interval]))) and on (uuid) b',
    ),
    ["a_bucket", "b"],
  );
  deepStrictEqual(metricNames('label_values(c{instance=~"$instance"}, gpu)'), ["c"]);
});

Deno.test("every metric of the alert rules exists in a scrape of the agent", async () => {
  const exposed = exposedMetricNames(await scrapeAgent());
  ok(exposed.has("gpu_power_agent_cap_changes_total"), "the scrape has the agent's metrics");
  const exprs = (await rules()).map((r) => ({ where: `alert ${r.alert}`, expr: r.expr }));
  deepStrictEqual(metricNameProblems(exprs, exposed), []);
  deepStrictEqual(
    metricNameProblems([{ where: "x", expr: "gpu_power_agent_no_such_metric" }], exposed),
    ["x: gpu_power_agent_no_such_metric is not a metric of the agent's /metrics"],
  );
});
