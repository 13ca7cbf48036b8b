/**
 * The protobuf messages of the kubelet's PodResources v1 API (`v1.PodResourcesLister`, from
 * `k8s.io/kubelet/pkg/apis/podresources/v1/api.proto`) that the agent uses, declared in code for
 * protobufjs' reflection (`Root.fromJSON`): no generated code, no copied `.proto`.
 *
 * Only the fields the agent reads are declared; protobufjs skips the others on the wire (CPU ids,
 * memory, topology, dynamic resources), so newer kubelets decode fine. Field names are camelCase
 * here; only the field numbers matter on the wire.
 *
 * @module
 */

import protobuf from "protobufjs/light.js";

/** `/v1.PodResourcesLister/<Method>` paths. */
export const POD_RESOURCES_METHODS = Object.freeze({
  list: "/v1.PodResourcesLister/List",
  get: "/v1.PodResourcesLister/Get",
  allocatable: "/v1.PodResourcesLister/GetAllocatableResources",
});

const repeated = (type: string, id: number) => ({ rule: "repeated", type, id });

const SCHEMA = {
  nested: {
    v1: {
      nested: {
        ListPodResourcesRequest: { fields: {} },
        ListPodResourcesResponse: { fields: { podResources: repeated("PodResources", 1) } },
        GetPodResourcesRequest: {
          fields: { podName: { type: "string", id: 1 }, podNamespace: { type: "string", id: 2 } },
        },
        GetPodResourcesResponse: { fields: { podResources: { type: "PodResources", id: 1 } } },
        AllocatableResourcesRequest: { fields: {} },
        AllocatableResourcesResponse: { fields: { devices: repeated("ContainerDevices", 1) } },
        PodResources: {
          fields: {
            name: { type: "string", id: 1 },
            namespace: { type: "string", id: 2 },
            containers: repeated("ContainerResources", 3),
          },
        },
        ContainerResources: {
          fields: {
            name: { type: "string", id: 1 },
            devices: repeated("ContainerDevices", 2),
          },
        },
        ContainerDevices: {
          fields: {
            resourceName: { type: "string", id: 1 },
            deviceIds: repeated("string", 2),
          },
        },
      },
    },
  },
};

/** `v1.ContainerDevices` as decoded (proto3: absent fields are defaults). */
export interface ContainerDevicesMessage {
  resourceName: string;
  deviceIds: readonly string[];
}

/** `v1.ContainerResources` as decoded. */
export interface ContainerResourcesMessage {
  name: string;
  devices: readonly ContainerDevicesMessage[];
}

/** `v1.PodResources` as decoded. */
export interface PodResourcesMessage {
  name: string;
  namespace: string;
  containers: readonly ContainerResourcesMessage[];
}

/** `v1.ListPodResourcesResponse`. */
export interface ListPodResourcesResponseMessage {
  podResources: readonly PodResourcesMessage[];
}

/** `v1.GetPodResourcesRequest`. */
export interface GetPodResourcesRequestMessage {
  podName: string;
  podNamespace: string;
}

/** `v1.GetPodResourcesResponse`; `podResources` is absent when the kubelet sent none. */
export interface GetPodResourcesResponseMessage {
  podResources?: PodResourcesMessage;
}

/** `v1.AllocatableResourcesResponse`. */
export interface AllocatableResourcesResponseMessage {
  devices: readonly ContainerDevicesMessage[];
}

/** Message name → its TypeScript shape. */
export interface PodResourcesMessages {
  ListPodResourcesRequest: Record<string, never>;
  ListPodResourcesResponse: ListPodResourcesResponseMessage;
  GetPodResourcesRequest: GetPodResourcesRequestMessage;
  GetPodResourcesResponse: GetPodResourcesResponseMessage;
  AllocatableResourcesRequest: Record<string, never>;
  AllocatableResourcesResponse: AllocatableResourcesResponseMessage;
  PodResources: PodResourcesMessage;
}

const root = protobuf.Root.fromJSON(SCHEMA);
const TO_OBJECT: protobuf.IConversionOptions = { arrays: true, defaults: true };

/** Encodes a PodResources message (the agent's requests; the test kubelet's answers). */
export function encodePodResourcesMessage<K extends keyof PodResourcesMessages>(
  name: K,
  message: PodResourcesMessages[K],
): Uint8Array {
  const type = root.lookupType(`v1.${name}`);
  return type.encode(type.fromObject(message)).finish();
}

/**
 * Decodes a PodResources message into plain objects with every repeated field present (an empty
 * array when absent) and strings defaulted to "". Throws on malformed bytes.
 */
export function decodePodResourcesMessage<K extends keyof PodResourcesMessages>(
  name: K,
  bytes: Uint8Array,
): PodResourcesMessages[K] {
  const type = root.lookupType(`v1.${name}`);
  const decoded = type.toObject(type.decode(bytes), TO_OBJECT);
  if (name === "GetPodResourcesResponse" && decoded.podResources === null) {
    delete decoded.podResources;
  }
  return decoded as PodResourcesMessages[K];
}
