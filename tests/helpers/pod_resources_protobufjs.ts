/**
 * The kubelet's PodResources v1 messages for the in-test kubelet, encoded with protobufjs
 * (reflection from a schema declared here): an implementation independent of the agent's own
 * decoder (src/sources/pod_resources_proto.ts), and with fields the agent does not read (CPU ids,
 * memory, topology, dynamic resources), as newer kubelets send them.
 *
 * @module
 */

import protobuf from "protobufjs/light.js";

const repeated = (type: string, id: number) => ({ rule: "repeated", type, id });

const SCHEMA = {
  nested: {
    v1: {
      nested: {
        ListPodResourcesResponse: { fields: { podResources: repeated("PodResources", 1) } },
        GetPodResourcesRequest: {
          fields: { podName: { type: "string", id: 1 }, podNamespace: { type: "string", id: 2 } },
        },
        GetPodResourcesResponse: { fields: { podResources: { type: "PodResources", id: 1 } } },
        AllocatableResourcesResponse: {
          fields: {
            devices: repeated("ContainerDevices", 1),
            cpuIds: repeated("int64", 2),
            memory: repeated("ContainerMemory", 3),
          },
        },
        PodResources: {
          fields: {
            name: { type: "string", id: 1 },
            namespace: { type: "string", id: 2 },
            containers: repeated("ContainerResources", 3),
            cpuIds: repeated("int64", 4),
            memory: repeated("ContainerMemory", 5),
          },
        },
        ContainerResources: {
          fields: {
            name: { type: "string", id: 1 },
            devices: repeated("ContainerDevices", 2),
            cpuIds: repeated("int64", 3),
            memory: repeated("ContainerMemory", 4),
            dynamicResources: repeated("DynamicResource", 5),
          },
        },
        ContainerMemory: {
          fields: {
            memoryType: { type: "string", id: 1 },
            size: { type: "uint64", id: 2 },
            topology: { type: "TopologyInfo", id: 3 },
          },
        },
        ContainerDevices: {
          fields: {
            resourceName: { type: "string", id: 1 },
            deviceIds: repeated("string", 2),
            topology: { type: "TopologyInfo", id: 3 },
          },
        },
        TopologyInfo: { fields: { nodes: repeated("NUMANode", 1) } },
        NUMANode: { fields: { ID: { type: "int64", id: 1 } } },
        DynamicResource: {
          fields: {
            claimName: { type: "string", id: 2 },
            claimNamespace: { type: "string", id: 3 },
          },
        },
      },
    },
  },
};

const root = protobuf.Root.fromJSON(SCHEMA);

/** Message names of the schema. */
export type PodResourcesMessageName =
  | "ListPodResourcesResponse"
  | "GetPodResourcesRequest"
  | "GetPodResourcesResponse"
  | "AllocatableResourcesResponse";

/** Encodes `message` (a plain object with camelCase field names) as `v1.<name>`. */
export function encodeWithProtobufjs(
  name: PodResourcesMessageName,
  message: Record<string, unknown>,
): Uint8Array {
  const type = root.lookupType(`v1.${name}`);
  const error = type.verify(message);
  if (error) throw new Error(`v1.${name}: ${error}`);
  return type.encode(type.fromObject(message)).finish();
}
