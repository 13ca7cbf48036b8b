/**
 * End to end, Kubernetes mode over mutual TLS: `deno task agent` reads a kubeconfig whose CA,
 * client certificate and key are files named relative to it, derives the agent's read and net
 * permissions from it with the same loader the agent uses, and the permission-scoped agent
 * presents the client certificate to the in-test API server (behind a TLS front that requires
 * one) and caps the annotated pod's GPU.
 */
import assert from "node:assert/strict";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { makeGpu, readFakeState, writeFakeState } from "../helpers/fake_state.ts";
import { kubernetesRunArgs, spawnAgent, waitFor } from "../helpers/agent_process.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";
import { generateTestPki, startTlsFront } from "../helpers/tls_front.ts";

const UID = "cafe0001-dead-0002-beef-0003";

Deno.test("kubernetes mode over mutual TLS: relative cert files in the kubeconfig, scoped agent", async () => {
  const lib = await buildFakeNvml();
  const dir = await Deno.makeTempDir({ prefix: "gpa-e2e-k8s-tls-" });
  const api = await startFakeApiServer({ defaultNodeName: "gpu-node-1", requireToken: false });
  await Deno.mkdir(`${dir}/kube/pki`, { recursive: true });
  const pki = await generateTestPki(`${dir}/kube/pki`);
  const front = await startTlsFront(pki, { targetPort: api.port, requireClientCert: true });
  const statePath = `${dir}/nvml.json`;
  writeFakeState(statePath, {
    driverVersion: "580.159.04",
    gpus: [makeGpu(0, { processes: [{ pid: 4242, usedGpuMemory: 1 << 30 }] })],
  });
  await Deno.mkdir(`${dir}/proc/4242`, { recursive: true });
  await Deno.writeTextFile(`${dir}/proc/4242/cgroup`, `0::/kubepods/pod${UID}/abc\n`);
  api.addPod({
    name: "llm",
    namespace: "inference",
    uid: UID,
    annotations: { "dynamo.nvidia.com/gpu-power-limit": "250" },
  });
  const kubeconfig = `${dir}/kube/config`;
  await Deno.writeTextFile(
    kubeconfig,
    `apiVersion: v1
kind: Config
current-context: mtls
clusters:
  - name: c
    cluster: {server: "${front.url}", certificate-authority: pki/ca.crt}
users:
  - name: agent
    user: {client-certificate: pki/client.crt, client-key: pki/client.key}
contexts:
  - name: mtls
    context: {cluster: c, user: agent}
`,
  );
  const agent = spawnAgent([
    ...kubernetesRunArgs({
      kubeconfig,
      nodeName: "gpu-node-1",
      procRoot: `${dir}/proc`,
      nvmlLibrary: lib,
      stateDir: `${dir}/state`,
      metricsAddress: "off",
    }),
    "--no-events",
  ], { env: { FAKE_NVML_STATE: statePath } });
  try {
    await waitFor(
      () => readFakeState(statePath).gpus[0].limitMw === 250_000,
      "annotation applied over mTLS",
    );
    assert.ok(front.clients.length >= 1 && front.clients.every((cn) => cn === "gpu-power-agent"));
    assert.equal(api.counters.lists, 1);
    agent.kill("SIGTERM");
    assert.equal((await agent.status()).code, 0, agent.output());
  } finally {
    agent.killTree("SIGKILL");
    await agent.status();
    await front.close();
    await api.close();
    await Deno.remove(dir, { recursive: true });
  }
});
