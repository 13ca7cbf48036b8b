/**
 * The kubernetes permission set with a PodResources socket grants exactly what reading it needs
 * (measured under Deno 2.9.6: read + write on the socket path and net `unix:<path>`), and without
 * it the socket is out of reach.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import {
  type AgentPermissionOptions,
  agentPermissions,
  toDenoFlags,
} from "../../src/permissions/permission_set.ts";
import { gpuPod, startKubeletPodResourcesServer } from "../helpers/kubelet_pod_resources_server.ts";

const PROBE = fileURLToPath(new URL("./pod_resources_probe.ts", import.meta.url));
const CONFIG = fileURLToPath(new URL("../../deno.json", import.meta.url));

async function probe(
  socketPath: string,
  options: Partial<AgentPermissionOptions>,
): Promise<{ pods?: number; error?: string }> {
  const set = agentPermissions("kubernetes", {
    nvmlLibraryPath: "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    stateDir: "/var/lib/gpu-power-agent",
    ...options,
  });
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "--config", CONFIG, ...toDenoFlags(set), PROBE, socketPath],
    stdin: "null",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(stdout);
}

Deno.test("the PodResources socket is reachable with its grant, and only then", async () => {
  await using kubelet = await startKubeletPodResourcesServer([gpuPod("ml", "a", ["GPU-0"])]);
  const socket = kubelet.socketPath;
  const set = agentPermissions("kubernetes", {
    nvmlLibraryPath: "/lib/libnvidia-ml.so.1",
    stateDir: "/s",
    podResourcesSocket: socket,
  });
  assert.ok(set.read.includes(socket) && set.write.includes(socket));
  assert.ok(set.net.includes(`unix:${socket}`));
  assert.ok(!set.read.includes(kubelet.dir), "the socket, not its directory");

  assert.deepEqual(await probe(socket, { podResourcesSocket: socket }), { pods: 1 });
  const without = await probe(socket, {});
  assert.match(without.error ?? "", /Requires read access/);
  assert.match(without.error ?? "", /permission set does not include the socket/);

  await kubelet.stop();
  const absent = await probe(socket, { podResourcesSocket: socket });
  assert.match(absent.error ?? "", /no socket: mount the host's/, "absent, not a permission error");
});

Deno.test("file mode never grants the socket", () => {
  const set = agentPermissions("file", {
    nvmlLibraryPath: "/lib/libnvidia-ml.so.1",
    stateDir: "/s",
    podResourcesSocket: "/var/lib/kubelet/pod-resources/kubelet.sock",
  });
  assert.ok(!set.read.some((p) => p.includes("kubelet")));
  assert.ok(!set.net.some((p) => p.startsWith("unix:")));
});
