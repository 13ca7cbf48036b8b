import assert from "node:assert/strict";
import {
  decodeAllocatableResourcesResponse,
  decodeGetPodResourcesResponse,
  decodeListPodResourcesResponse,
  encodeGetPodResourcesRequest,
  ProtoDecodeError,
} from "../../src/sources/pod_resources_proto.ts";
import { encodeWithProtobufjs } from "../helpers/pod_resources_protobufjs.ts";

const LONG = "x".repeat(300); // lengths above 127 take two varint bytes

Deno.test("List answers encoded by protobufjs decode, unknown fields skipped", () => {
  const bytes = encodeWithProtobufjs("ListPodResourcesResponse", {
    podResources: [
      {
        name: LONG,
        namespace: "ml",
        cpuIds: [1, 2 ** 40],
        memory: [{ memoryType: "memory", size: 2 ** 50, topology: { nodes: [{ ID: 3 }] } }],
        containers: [
          { name: "init" },
          {
            name: "main",
            cpuIds: [7],
            devices: [
              {
                resourceName: "nvidia.com/gpu",
                deviceIds: ["GPU-a", "GPU-b::2"],
                topology: { nodes: [{ ID: 0 }] },
              },
              { resourceName: "nvidia.com/mig-1g.10gb", deviceIds: ["MIG-ü"] },
            ],
            dynamicResources: [{ claimName: "c", claimNamespace: "ml" }],
          },
        ],
      },
      { name: "empty" },
    ],
  });
  assert.deepEqual(decodeListPodResourcesResponse(bytes), [
    {
      name: LONG,
      namespace: "ml",
      containers: [
        { name: "init", devices: [] },
        {
          name: "main",
          devices: [
            { resourceName: "nvidia.com/gpu", deviceIds: ["GPU-a", "GPU-b::2"] },
            { resourceName: "nvidia.com/mig-1g.10gb", deviceIds: ["MIG-ü"] },
          ],
        },
      ],
    },
    { name: "empty", namespace: "", containers: [] },
  ]);
  assert.deepEqual(decodeListPodResourcesResponse(new Uint8Array()), []);
});

Deno.test("Get: request bytes equal protobufjs', an absent pod decodes to null", () => {
  assert.deepEqual(
    [...encodeGetPodResourcesRequest(LONG, "ml")],
    [...encodeWithProtobufjs("GetPodResourcesRequest", { podName: LONG, podNamespace: "ml" })],
  );
  assert.deepEqual(encodeGetPodResourcesRequest("", ""), new Uint8Array());
  assert.equal(decodeGetPodResourcesResponse(new Uint8Array()), null);
  const bytes = encodeWithProtobufjs("GetPodResourcesResponse", {
    podResources: { name: "p", namespace: "ml" },
  });
  assert.deepEqual(decodeGetPodResourcesResponse(bytes), {
    name: "p",
    namespace: "ml",
    containers: [],
  });
});

Deno.test("allocatable devices decode; CPU ids and memory are skipped", () => {
  const bytes = encodeWithProtobufjs("AllocatableResourcesResponse", {
    devices: [{ resourceName: "nvidia.com/gpu", deviceIds: ["GPU-a"] }],
    cpuIds: [0, 1],
    memory: [{ memoryType: "memory", size: 1 }],
  });
  assert.deepEqual(decodeAllocatableResourcesResponse(bytes), [
    { resourceName: "nvidia.com/gpu", deviceIds: ["GPU-a"] },
  ]);
});

Deno.test("malformed messages are ProtoDecodeErrors, never garbage or a hang", () => {
  const cases: [string, number[], RegExp][] = [
    ["length past the end", [0x0a, 0x05, 0x01], /runs past the message/],
    ["truncated varint", [0x0a, 0x80], /truncated varint/],
    ["overlong varint", [0x10, ...Array(11).fill(0xff)], /longer than 10 bytes/],
    ["pod_resources as a varint", [0x08, 0x01], /field 1 has wire type 0, expected 2/],
    ["group wire type", [0x13], /unsupported wire type 3/],
    ["field number 0", [0x02, 0x00], /field number 0/],
    ["truncated fixed64", [0x11, 0x01, 0x02], /truncated field/],
  ];
  for (const [label, bytes, message] of cases) {
    assert.throws(
      () => decodeListPodResourcesResponse(new Uint8Array(bytes)),
      (error: unknown) => error instanceof ProtoDecodeError && message.test(error.message),
      label,
    );
  }
  // A malformed nested message fails the whole answer.
  assert.throws(
    () => decodeListPodResourcesResponse(new Uint8Array([0x0a, 0x02, 0x1a, 0x05])),
    ProtoDecodeError,
  );
});
