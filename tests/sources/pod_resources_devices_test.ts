import assert from "node:assert/strict";
import {
  DEFAULT_GPU_RESOURCE_NAMES,
  gpuOfDeviceId,
  gpuResourceMatcher,
  mapAllocationsToGpus,
  migParentTable,
  parseGpuResourceNames,
  podRequestsGpuResource,
  UnknownDeviceWarnings,
} from "../../src/sources/pod_resources_devices.ts";
import { gpuPod } from "../helpers/kubelet_pod_resources_server.ts";

const GPU0 = "GPU-00000000-0000-0000-0000-000000000000";
const GPU1 = "GPU-00000000-0000-0000-0000-000000000001";
const MIG_A = "MIG-aaaaaaaa-0000-0000-0000-000000000000";
const MIG_B = "MIG-bbbbbbbb-0000-0000-0000-000000000000";
const GPUS = [
  { uuid: GPU0, migDeviceUuids: [] },
  { uuid: GPU1, migDeviceUuids: [MIG_A, MIG_B] },
];

Deno.test("resource names: defaults, parsing, prefix patterns", () => {
  const tracked = gpuResourceMatcher();
  assert.deepEqual(DEFAULT_GPU_RESOURCE_NAMES, ["nvidia.com/gpu", "nvidia.com/mig-*"]);
  assert.ok(tracked("nvidia.com/gpu"));
  assert.ok(tracked("nvidia.com/mig-1g.10gb"));
  assert.ok(!tracked("nvidia.com/gpu.shared"));
  assert.ok(!tracked("amd.com/gpu"));
  assert.deepEqual(parseGpuResourceNames(" nvidia.com/gpu , nvidia.com/gpu.shared,"), [
    "nvidia.com/gpu",
    "nvidia.com/gpu.shared",
  ]);
  assert.deepEqual(parseGpuResourceNames("nvidia.com/*"), ["nvidia.com/*"]);
  for (const bad of ["", ",", "gpu", "nvidia.com/", "nvidia.com/g*u", "Nvidia.com/gpu", "a b/c"]) {
    assert.throws(() => parseGpuResourceNames(bad), Error, bad);
  }
});

Deno.test("device IDs: GPU UUID, time-slicing replica, MIG (both forms), unknown", () => {
  const uuids = new Set([GPU0, GPU1]);
  const parents = migParentTable(GPUS);
  assert.deepEqual([...parents], [[MIG_A, GPU1], [MIG_B, GPU1]]);
  assert.equal(gpuOfDeviceId(GPU0, uuids, parents), GPU0);
  assert.equal(gpuOfDeviceId(`${GPU0}::3`, uuids, parents), GPU0);
  assert.equal(gpuOfDeviceId(MIG_B, uuids, parents), GPU1);
  assert.equal(gpuOfDeviceId(`MIG-${GPU1}/7/0`, uuids, parents), GPU1);
  assert.equal(
    gpuOfDeviceId("MIG-GPU-ffffffff-0000-0000-0000-000000000000/7/0", uuids, parents),
    null,
  );
  assert.equal(gpuOfDeviceId("GPU-ffffffff-0000-0000-0000-000000000000", uuids, parents), null);
  assert.equal(gpuOfDeviceId("0", uuids, parents), null, "index device IDs are not mapped");
  assert.equal(gpuOfDeviceId(`${GPU0}::x`, uuids, parents), null);
});

Deno.test("allocations map to GPUs: shared GPUs list every pod, others are ignored", () => {
  const result = mapAllocationsToGpus([
    gpuPod("ml", "b-replica", [`${GPU0}::1`]),
    gpuPod("ml", "a-replica", [`${GPU0}::0`]),
    gpuPod("inf", "mig-user", [MIG_A, MIG_B], "nvidia.com/mig-1g.10gb"),
    gpuPod("ml", "fpga", ["fpga0"], "example.com/fpga"),
    gpuPod("ml", "other-node", ["GPU-ffffffff-0000-0000-0000-000000000000"]),
    {
      namespace: "ml",
      name: "two-containers",
      containers: [
        { name: "a", devices: [{ resourceName: "nvidia.com/gpu", deviceIds: [GPU1] }] },
        { name: "b", devices: [{ resourceName: "nvidia.com/gpu", deviceIds: [GPU1] }] },
      ],
    },
    { namespace: "kube-system", name: "dns", containers: [] },
  ], { gpus: GPUS });
  assert.deepEqual(Object.fromEntries(result.podsByGpu), {
    [GPU0]: [{ namespace: "ml", name: "a-replica" }, { namespace: "ml", name: "b-replica" }],
    [GPU1]: [{ namespace: "inf", name: "mig-user" }, { namespace: "ml", name: "two-containers" }],
  });
  assert.deepEqual(result.unknown, [{
    deviceId: "GPU-ffffffff-0000-0000-0000-000000000000",
    resourceName: "nvidia.com/gpu",
    pod: { namespace: "ml", name: "other-node" },
  }]);
});

Deno.test("a configured resource list replaces the defaults", () => {
  const allocations = [
    gpuPod("ml", "shared", [GPU0], "nvidia.com/gpu.shared"),
    gpuPod("ml", "whole", [GPU1]),
  ];
  const result = mapAllocationsToGpus(allocations, {
    gpus: GPUS,
    resourceNames: ["nvidia.com/gpu.shared"],
  });
  assert.deepEqual([...result.podsByGpu.keys()], [GPU0]);
});

Deno.test("unknown device IDs are reported once each", () => {
  const warnings = new UnknownDeviceWarnings(2);
  const unknown = (deviceId: string) => ({
    deviceId,
    resourceName: "nvidia.com/gpu",
    pod: { namespace: "ml", name: "p" },
  });
  assert.deepEqual(warnings.fresh([unknown("x"), unknown("x"), unknown("y")]).length, 2);
  assert.deepEqual(warnings.fresh([unknown("x"), unknown("y")]), []);
  assert.deepEqual(warnings.fresh([unknown("z")]), [unknown("z")], "bounded memory starts over");
});

Deno.test("podRequestsGpuResource reads limits and requests", () => {
  assert.ok(podRequestsGpuResource([{}, { resources: { limits: { "nvidia.com/gpu": "1" } } }]));
  assert.ok(podRequestsGpuResource([{ resources: { requests: { "nvidia.com/mig-1g.10gb": 1 } } }]));
  assert.ok(!podRequestsGpuResource([{ resources: { limits: { cpu: "1" } } }, {}]));
  assert.ok(!podRequestsGpuResource([{ resources: null }]));
  assert.ok(
    podRequestsGpuResource([{ resources: { limits: { "nvidia.com/gpu.shared": "1" } } }], [
      "nvidia.com/gpu.shared",
    ]),
  );
});
