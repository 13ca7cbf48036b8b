/**
 * A one-context kubeconfig for tests: cluster `c`, user `u`, context `x` (current), as JSON (a
 * subset of YAML, so the loader parses it like any kubeconfig).
 *
 * @module
 */

/** The kubeconfig text for `cluster` (with its `server`) and `user`. */
export function kubeconfigText(
  options: { cluster: Record<string, unknown>; user?: Record<string, unknown> },
): string {
  return JSON.stringify({
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "c", cluster: options.cluster }],
    users: [{ name: "u", user: options.user ?? {} }],
    contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
    "current-context": "x",
  });
}
