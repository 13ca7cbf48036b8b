/**
 * Where the shipped artifacts put things. The permission sets baked into the binary (systemd)
 * and written into the container entrypoint / DaemonSet are computed from these paths, so a
 * path changes here or nowhere.
 *
 * @module
 */

/** Bare-metal install: compiled binary + systemd unit (`systemd/install.sh`). */
export const SYSTEMD_LAYOUT = Object.freeze({
  /** The compiled binary. */
  binary: "/usr/local/bin/gpu-power-agent",
  /** The unit file. */
  unit: "/etc/systemd/system/gpu-power-agent.service",
  /** Created by install.sh; read-only for the agent (no `ConfigurationDirectory=`, which would make it writable). */
  configDir: "/etc/gpu-power-agent",
  /** The caps file the unit passes with `--caps-file`. */
  capsFile: "/etc/gpu-power-agent/caps.yaml",
  /** `StateDirectory=gpu-power-agent`: the journal. */
  stateDir: "/var/lib/gpu-power-agent",
  /** Metrics only on loopback by default. */
  metricsAddress: "127.0.0.1:9402",
});

/** Container image (`deploy/Dockerfile`) and DaemonSet. */
export const CONTAINER_LAYOUT = Object.freeze({
  /** Project files in the image. */
  appDir: "/app",
  /** The bundle built in the image (`deno task bundle`, see `bundle.ts`). */
  bundleDir: "/app/dist/agent",
  /** Entry point in the image: the bundle's, run with `--no-config`. */
  mainModule: "/app/dist/agent/main.js",
  /** Deno's cache in the image (filled at build time). */
  denoDir: "/deno-dir",
  /** hostPath volume with the journal. */
  stateDir: "/var/lib/gpu-power-agent",
  /** hostPID: the container's /proc shows the host's processes. */
  procRoot: "/proc",
  /** Scraped by Prometheus on the pod IP. */
  metricsAddress: "0.0.0.0:9402",
  /** Host of `--metrics-address` (the Helm chart adds its `metrics.port`). */
  metricsHost: "0.0.0.0",
  /** Mount of the node policy ConfigMap (Helm `nodePolicy`). */
  nodePolicyDir: "/etc/gpu-power-agent/policy",
  /** The node policy caps file, passed as `--caps-file`. */
  nodePolicyFile: "/etc/gpu-power-agent/policy/caps.yaml",
  /** The kubelet's PodResources API directory (hostPath, read-only). */
  podResourcesDir: "/var/lib/kubelet/pod-resources",
  /** The kubelet's PodResources socket, passed as `--pod-resources-socket`. */
  podResourcesSocket: "/var/lib/kubelet/pod-resources/kubelet.sock",
});
