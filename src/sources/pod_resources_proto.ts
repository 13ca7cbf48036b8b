/**
 * Protobuf codec of the few kubelet PodResources v1 messages the agent uses
 * (`k8s.io/kubelet/pkg/apis/podresources/v1/api.proto`, package `v1`), written for this project.
 *
 * Why not a protobuf library: protobufjs (light build, reflection from a JSON schema) measured
 * +7.6 MiB VmHWM in a Deno process that already loads the agent's other npm modules (mean of 4
 * runs, Deno 2.9.6), about a tenth of the agent's memory budget, for three small answers. This
 * decoder reads only the fields the agent needs and skips every other field by its wire type, so
 * newer kubelets (CPU ids, memory, topology, dynamic resources) decode fine. The in-test kubelet
 * encodes its answers with protobufjs, an independent implementation (tests/helpers).
 *
 * Field numbers (api.proto):
 * - ListPodResourcesResponse: 1 repeated PodResources pod_resources
 * - GetPodResourcesRequest: 1 string pod_name, 2 string pod_namespace
 * - GetPodResourcesResponse: 1 PodResources pod_resources
 * - AllocatableResourcesResponse: 1 repeated ContainerDevices devices
 * - PodResources: 1 string name, 2 string namespace, 3 repeated ContainerResources containers
 * - ContainerResources: 1 string name, 2 repeated ContainerDevices devices
 * - ContainerDevices: 1 string resource_name, 2 repeated string device_ids
 *
 * @module
 */

/** `/v1.PodResourcesLister/<Method>` paths. */
export const POD_RESOURCES_METHODS = Object.freeze({
  list: "/v1.PodResourcesLister/List",
  get: "/v1.PodResourcesLister/Get",
  allocatable: "/v1.PodResourcesLister/GetAllocatableResources",
});

/** `v1.ContainerDevices` (proto3: absent fields are defaults). */
export interface ContainerDevicesMessage {
  resourceName: string;
  deviceIds: readonly string[];
}

/** `v1.ContainerResources`. */
export interface ContainerResourcesMessage {
  name: string;
  devices: readonly ContainerDevicesMessage[];
}

/** `v1.PodResources`. */
export interface PodResourcesMessage {
  name: string;
  namespace: string;
  containers: readonly ContainerResourcesMessage[];
}

/** A malformed protobuf message. */
export class ProtoDecodeError extends Error {
  override name = "ProtoDecodeError";
}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LENGTH = 2;
const WIRE_FIXED32 = 5;

const utf8 = new TextDecoder();
const utf8Encoder = new TextEncoder();

/** Reads fields of one message; every read is bounded by the message's end. */
class Reader {
  #bytes: Uint8Array;
  #pos = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  get done(): boolean {
    return this.#pos >= this.#bytes.byteLength;
  }

  /** A varint as a number (exact up to 2^53; only lengths and tags are used as numbers). */
  varint(): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.#pos >= this.#bytes.byteLength) throw new ProtoDecodeError("truncated varint");
      const byte = this.#bytes[this.#pos++];
      value += (byte & 0x7f) * scale;
      if ((byte & 0x80) === 0) return value;
      scale *= 128;
    }
    throw new ProtoDecodeError("varint longer than 10 bytes");
  }

  /** The next field's number and wire type. */
  tag(): { field: number; wire: number } {
    const tag = this.varint();
    const field = Math.floor(tag / 8);
    if (field === 0) throw new ProtoDecodeError("field number 0");
    return { field, wire: tag % 8 };
  }

  bytes(): Uint8Array {
    const length = this.varint();
    if (length > this.#bytes.byteLength - this.#pos) {
      throw new ProtoDecodeError("length-delimited field runs past the message");
    }
    const out = this.#bytes.subarray(this.#pos, this.#pos + length);
    this.#pos += length;
    return out;
  }

  string(): string {
    return utf8.decode(this.bytes());
  }

  skip(wire: number): void {
    const advance = (n: number) => {
      if (n > this.#bytes.byteLength - this.#pos) throw new ProtoDecodeError("truncated field");
      this.#pos += n;
    };
    switch (wire) {
      case WIRE_VARINT:
        this.varint();
        return;
      case WIRE_FIXED64:
        advance(8);
        return;
      case WIRE_LENGTH:
        this.bytes();
        return;
      case WIRE_FIXED32:
        advance(4);
        return;
      default:
        throw new ProtoDecodeError(`unsupported wire type ${wire}`);
    }
  }
}

/**
 * Decodes the fields of one message: `read` is called for each field with a known number and
 * the expected wire type; everything else is skipped.
 */
function fields(
  bytes: Uint8Array,
  known: Record<number, number>,
  read: (field: number, reader: Reader) => void,
): void {
  const reader = new Reader(bytes);
  while (!reader.done) {
    const { field, wire } = reader.tag();
    const expected = known[field];
    if (expected === undefined) {
      reader.skip(wire);
      continue;
    }
    if (wire !== expected) {
      throw new ProtoDecodeError(`field ${field} has wire type ${wire}, expected ${expected}`);
    }
    read(field, reader);
  }
}

function containerDevices(bytes: Uint8Array): ContainerDevicesMessage {
  let resourceName = "";
  const deviceIds: string[] = [];
  fields(bytes, { 1: WIRE_LENGTH, 2: WIRE_LENGTH }, (field, r) => {
    if (field === 1) resourceName = r.string();
    else deviceIds.push(r.string());
  });
  return { resourceName, deviceIds };
}

function containerResources(bytes: Uint8Array): ContainerResourcesMessage {
  let name = "";
  const devices: ContainerDevicesMessage[] = [];
  fields(bytes, { 1: WIRE_LENGTH, 2: WIRE_LENGTH }, (field, r) => {
    if (field === 1) name = r.string();
    else devices.push(containerDevices(r.bytes()));
  });
  return { name, devices };
}

function podResources(bytes: Uint8Array): PodResourcesMessage {
  let name = "";
  let namespace = "";
  const containers: ContainerResourcesMessage[] = [];
  fields(bytes, { 1: WIRE_LENGTH, 2: WIRE_LENGTH, 3: WIRE_LENGTH }, (field, r) => {
    if (field === 1) name = r.string();
    else if (field === 2) namespace = r.string();
    else containers.push(containerResources(r.bytes()));
  });
  return { name, namespace, containers };
}

/** `v1.ListPodResourcesResponse` → its pods. Throws {@linkcode ProtoDecodeError}. */
export function decodeListPodResourcesResponse(bytes: Uint8Array): PodResourcesMessage[] {
  const pods: PodResourcesMessage[] = [];
  fields(bytes, { 1: WIRE_LENGTH }, (_field, r) => pods.push(podResources(r.bytes())));
  return pods;
}

/** `v1.GetPodResourcesResponse` → its pod, or null when absent. */
export function decodeGetPodResourcesResponse(bytes: Uint8Array): PodResourcesMessage | null {
  let pod: PodResourcesMessage | null = null;
  fields(bytes, { 1: WIRE_LENGTH }, (_field, r) => pod = podResources(r.bytes()));
  return pod;
}

/** `v1.AllocatableResourcesResponse` → its devices. */
export function decodeAllocatableResourcesResponse(bytes: Uint8Array): ContainerDevicesMessage[] {
  const devices: ContainerDevicesMessage[] = [];
  fields(bytes, { 1: WIRE_LENGTH }, (_field, r) => devices.push(containerDevices(r.bytes())));
  return devices;
}

function encodeVarint(value: number, out: number[]): void {
  while (value >= 0x80) {
    out.push((value % 128) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
}

/** `v1.GetPodResourcesRequest` (1: pod_name, 2: pod_namespace). */
export function encodeGetPodResourcesRequest(podName: string, podNamespace: string): Uint8Array {
  const out: number[] = [];
  for (const [field, text] of [[1, podName], [2, podNamespace]] as const) {
    if (text === "") continue; // proto3 default
    const bytes = utf8Encoder.encode(text);
    encodeVarint(field * 8 + WIRE_LENGTH, out);
    encodeVarint(bytes.byteLength, out);
    out.push(...bytes);
  }
  return new Uint8Array(out);
}
