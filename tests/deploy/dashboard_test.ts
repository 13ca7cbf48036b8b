/**
 * The Grafana dashboard (deploy/grafana/gpu-power-agent.json): type-checked against
 * `@grafana/schema` (`satisfies` below, under `deno check` / `deno test`), and every metric name
 * of every query against a real scrape of the agent.
 */
import { deepStrictEqual, ok } from "node:assert/strict";
import type { Dashboard, VariableModel, VariableType } from "@grafana/schema";
import dashboardJson from "../../deploy/grafana/gpu-power-agent.json" with { type: "json" };
import { exposedMetricNames, scrapeAgent } from "../helpers/agent_scrape.ts";
import { metricNameProblems } from "./promql_names.ts";

/**
 * `Dashboard`, except that a variable's `type` is a plain string: a JSON import widens string
 * literals, so that one union-typed field is checked against {@linkcode VARIABLE_TYPES} below.
 */
type DashboardJson = Omit<Dashboard, "templating"> & {
  templating?: { list?: Array<Omit<VariableModel, "type"> & { type: string }> };
};

const dashboard = dashboardJson satisfies DashboardJson;

/** Every `VariableType` of the schema (the `Record` makes the list complete). */
const VARIABLE_TYPES: Record<VariableType, true> = {
  query: true,
  adhoc: true,
  groupby: true,
  constant: true,
  datasource: true,
  interval: true,
  textbox: true,
  custom: true,
  system: true,
  snapshot: true,
  switch: true,
};

Deno.test("dashboard: variables are of the schema's types, panels query Prometheus", () => {
  for (const variable of dashboard.templating.list) {
    ok(variable.type in VARIABLE_TYPES, `variable ${variable.name}: type ${variable.type}`);
  }
  const titles = dashboard.panels.map((p) => p.title);
  deepStrictEqual(new Set(titles).size, titles.length, "panel titles are unique");
  for (const panel of dashboard.panels) {
    ok(panel.targets.length > 0, `${panel.title}: no query`);
    deepStrictEqual(panel.datasource, { type: "prometheus", uid: "${datasource}" }, panel.title);
  }
});

Deno.test("dashboard: every metric of every query exists in a scrape of the agent", async () => {
  const exposed = exposedMetricNames(await scrapeAgent());
  const exprs = [
    ...dashboard.panels.flatMap((panel) =>
      panel.targets.map((t) => ({ where: `panel "${panel.title}" ${t.refId}`, expr: t.expr }))
    ),
    ...dashboard.templating.list.flatMap((v) =>
      typeof v.query === "object" ? [{ where: `variable ${v.name}`, expr: v.query.query }] : []
    ),
  ];
  ok(exprs.length > 20);
  deepStrictEqual(metricNameProblems(exprs, exposed), []);
});

Deno.test("dashboard shows desired, applied, enforced, draw, energy, managed, budget, latency, PodResources, errors", () => {
  const all = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr)).join("\n");
  for (
    const name of [
      "gpu_power_agent_gpu_desired_power_limit_watts",
      "gpu_power_agent_gpu_power_limit_watts",
      "gpu_power_agent_gpu_enforced_power_limit_watts",
      "gpu_power_agent_gpu_enforced",
      "gpu_power_agent_gpu_power_draw_watts",
      "gpu_power_agent_gpu_energy_joules_total",
      "gpu_power_agent_gpu_managed",
      "gpu_power_agent_node_power_budget_watts",
      "gpu_power_agent_node_power_allocated_watts",
      "gpu_power_agent_reconcile_duration_seconds_bucket",
      "gpu_power_agent_nvml_errors_total",
      "gpu_power_agent_pod_resources_up",
      "gpu_power_agent_metrics_server_errors_total",
    ]
  ) {
    ok(new RegExp(`\\b${name}\\b`).test(all), `no panel shows ${name}`);
  }
});
