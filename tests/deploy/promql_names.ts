/**
 * Metric names in PromQL expressions (alert rules, dashboard queries), and the check that each
 * one exists: in a scrape of the agent, or among the documented external metrics.
 */

/** Metrics of other exporters the alert rules rely on (documented in the rules file). */
export const EXTERNAL_METRICS: ReadonlySet<string> = new Set([
  "up", // Prometheus, per target
  "kube_node_status_capacity", // kube-state-metrics v2
  "kube_pod_status_ready",
  "kube_pod_info",
]);

const KEYWORDS = new Set([
  "and",
  "or",
  "unless",
  "bool",
  "offset",
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "inf",
  "nan",
]);

/** The metric names an expression selects (Grafana `$variables` allowed). */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/\$\{?\w+\}?/g, "x") // Grafana variables
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""') // string literals
    .replace(/\blabel_values\(\s*([^,()]*(?:\{[^}]*\})?)\s*,\s*\w+\s*\)/g, "$1") // Grafana
    .replace(/\{[^}]*\}/g, "{}") // label matchers
    .replace(/\[[^\]]*\]/g, "") // range and subquery selectors
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, "") // label lists
    .replace(/\b\d+(\.\d+)?([eE][+-]?\d+|[smhdwy]|ms)?\b/g, "0"); // numbers, durations
  const names = new Set<string>();
  for (const match of stripped.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const name = match[0];
    const next = stripped.slice(match.index! + name.length).trimStart()[0];
    if (next === "(" || KEYWORDS.has(name.toLowerCase())) continue; // function or keyword
    names.add(name);
  }
  return [...names];
}

/**
 * Problems with the metric names of `exprs` given the names a scrape of the agent exposes: every
 * name that is neither exposed nor a documented external metric.
 */
export function metricNameProblems(
  exprs: Iterable<{ where: string; expr: string }>,
  exposed: ReadonlySet<string>,
): string[] {
  const problems: string[] = [];
  for (const { where, expr } of exprs) {
    for (const name of metricNames(expr)) {
      if (exposed.has(name) || EXTERNAL_METRICS.has(name)) {
        continue;
      }
      problems.push(`${where}: ${name} is not a metric of the agent's /metrics`);
    }
  }
  return problems;
}
