import assert from "node:assert/strict";
import {
  createPodResourcesClient,
  type PodResourcesClient,
  PodResourcesError,
} from "../../src/sources/pod_resources.ts";
import {
  gpuPod,
  type KubeletPodResourcesServer,
  startKubeletPodResourcesServer,
} from "../helpers/kubelet_pod_resources_server.ts";

const UUID0 = "GPU-00000000-0000-0000-0000-000000000000";
const UUID1 = "GPU-00000000-0000-0000-0000-000000000001";

async function withKubelet(
  fn: (server: KubeletPodResourcesServer, client: PodResourcesClient) => Promise<void>,
  clientOptions: { timeoutMs?: number; maxResponseBytes?: number } = {},
): Promise<void> {
  await using server = await startKubeletPodResourcesServer([
    gpuPod("ml", "trainer", [UUID0]),
    gpuPod("ml", "server", [UUID1]),
  ]);
  await fn(server, createPodResourcesClient({ socketPath: server.socketPath, ...clientOptions }));
}

async function rejectsWith(
  promise: Promise<unknown>,
  expected: { failure: string; message?: RegExp; grpcStatus?: number },
): Promise<PodResourcesError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof PodResourcesError, `expected a PodResourcesError, got ${caught}`);
  assert.equal(caught.failure, expected.failure, caught.message);
  if (expected.message) assert.match(caught.message, expected.message);
  if (expected.grpcStatus !== undefined) assert.equal(caught.grpcStatus, expected.grpcStatus);
  return caught;
}

Deno.test("List returns every pod with its containers' devices", async () => {
  await withKubelet(async (server, client) => {
    assert.deepEqual(await client.list(), [
      gpuPod("ml", "trainer", [UUID0]),
      gpuPod("ml", "server", [UUID1]),
    ]);
    const mixed = {
      namespace: "ml",
      name: "mixed",
      containers: [
        { name: "init", devices: [] },
        {
          name: "main",
          devices: [
            { resourceName: "example.com/fpga", deviceIds: ["fpga0"] },
            { resourceName: "nvidia.com/mig-1g.10gb", deviceIds: ["MIG-a", "MIG-b"] },
          ],
        },
      ],
    };
    await server.setPods([mixed, { namespace: "kube-system", name: "dns", containers: [] }]);
    assert.deepEqual(await client.list(), [
      mixed,
      { namespace: "kube-system", name: "dns", containers: [] },
    ]);
    await server.setPods([]);
    assert.deepEqual(await client.list(), []);
    assert.equal((await server.calls()).list, 3);
  });
});

Deno.test("Get returns one pod; an unknown pod is the kubelet's error", async () => {
  await withKubelet(async (_server, client) => {
    assert.deepEqual(await client.get("ml", "server"), gpuPod("ml", "server", [UUID1]));
    await rejectsWith(client.get("ml", "nope"), {
      failure: "status",
      grpcStatus: 2,
      message: /PodResources Get on .*kubelet\.sock failed: gRPC status 2: pod not found/,
    });
  });
});

Deno.test("GetAllocatableResources returns the node's devices", async () => {
  await withKubelet(async (server, client) => {
    const devices = [{ resourceName: "nvidia.com/gpu", deviceIds: [UUID0, UUID1] }];
    await server.setAllocatable(devices);
    assert.deepEqual(await client.allocatable(), devices);
  });
});

Deno.test("a kubelet that hangs fails the call at its deadline", async () => {
  await withKubelet(async (server, client) => {
    await server.hang();
    await rejectsWith(client.list(), {
      failure: "deadline",
      message: /List .* failed: no answer within 200 ms \(the kubelet did not answer in time/,
    });
    await server.hang(false);
    assert.equal((await client.list()).length, 2);
  }, { timeoutMs: 200 });
});

Deno.test("a refused or absent socket is 'unavailable' with what to do", async () => {
  await withKubelet(async (server, client) => {
    await server.stop({ leaveSocket: true });
    assert.ok(Deno.statSync(server.socketPath).isSocket);
    await rejectsWith(client.list(), { failure: "unavailable", message: /may be restarting/ });
    await server.start();
    await server.stop();
    await rejectsWith(client.list(), {
      failure: "unavailable",
      message: /no socket: mount the host's \/var\/lib\/kubelet\/pod-resources/,
    });
    await server.start();
    assert.equal((await client.list()).length, 2);
  });
});

Deno.test("an error status and an oversized answer are errors, not crashes", async () => {
  await withKubelet(async (server, client) => {
    await server.failWith("list", 14, "shutting down");
    await rejectsWith(client.list(), {
      failure: "status",
      grpcStatus: 14,
      message: /gRPC status 14: shutting down/,
    });
    await server.failWith("list", null);
    await server.setPods(
      Array.from({ length: 50 }, (_, i) => gpuPod("ml", `pod-${i}`, [UUID0])),
    );
    await rejectsWith(client.list(), { failure: "too-large", message: /exceeds 1024 bytes/ });
  }, { maxResponseBytes: 1024 });
});

Deno.test("kubelet restarts (GOAWAY and connection reset) mid-call: 16 of 16 survived (8 each)", async () => {
  await withKubelet(async (server, client) => {
    for (let round = 0; round < 16; round++) {
      const graceful = round % 2 === 0;
      await server.hang();
      const inFlight = rejectsWith(client.list(), { failure: "unavailable" });
      // Let the call reach the server before it goes away.
      await new Promise((resolve) => setTimeout(resolve, 50));
      await server.restart({ graceful });
      await server.hang(false);
      await inFlight;
      assert.equal((await client.list()).length, 2, `round ${round}`);
    }
  }, { timeoutMs: 5_000 });
});
