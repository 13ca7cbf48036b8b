/**
 * Client of the kubelet's PodResources v1 API (`v1.PodResourcesLister` on
 * `/var/lib/kubelet/pod-resources/kubelet.sock`): which devices the kubelet allocated to each
 * container of each pod on this node. With the NVIDIA device plugin the device IDs are GPU UUIDs
 * or MIG device UUIDs (see `pod_resources_devices.ts` for the mapping to GPUs).
 *
 * Transport: `grpc_unary.ts` (node:http2 + gRPC framing, one session per call); codec:
 * `pod_resources_proto.ts` (the few messages used, written for this project; see there why). Every call has a deadline and a bound on the
 * answer's size, and every failure is a {@linkcode PodResourcesError} that says what to do.
 *
 * Permissions: reading the socket needs `--allow-read` and `--allow-write` on the socket path and
 * `--allow-net=unix:<path>` (measured under Deno 2.9.6; see `permission_set.ts`).
 *
 * @module
 */

import {
  DEFAULT_GRPC_MAX_RESPONSE_BYTES,
  DEFAULT_GRPC_TIMEOUT_MS,
  GrpcCallError,
  type GrpcFailure,
  GrpcStatus,
  grpcUnaryCall,
} from "./grpc_unary.ts";
import {
  type ContainerDevicesMessage,
  decodeAllocatableResourcesResponse,
  decodeGetPodResourcesResponse,
  decodeListPodResourcesResponse,
  encodeGetPodResourcesRequest,
  POD_RESOURCES_METHODS,
  type PodResourcesMessage,
} from "./pod_resources_proto.ts";

/** Where the kubelet serves the PodResources API. */
export const DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock";

/** Devices of one resource allocated to a container (e.g. `nvidia.com/gpu`: GPU UUIDs). */
export interface DeviceAllocation {
  resourceName: string;
  deviceIds: readonly string[];
}

/** One container and its allocated devices. */
export interface ContainerAllocation {
  name: string;
  devices: readonly DeviceAllocation[];
}

/** One pod on this node and what the kubelet allocated to its containers. */
export interface PodAllocation {
  namespace: string;
  name: string;
  containers: readonly ContainerAllocation[];
}

/** A PodResources call that failed: which method, on which socket, why, and what to do. */
export class PodResourcesError extends Error {
  override name = "PodResourcesError";
  /** Kind of failure (see `GrpcFailure`), or `decode` for an undecodable answer. */
  readonly failure: GrpcFailure | "decode";
  /** gRPC status of the answer, when the kubelet sent one. */
  readonly grpcStatus: number | null;
  /** The socket called. */
  readonly socketPath: string;

  constructor(
    method: string,
    socketPath: string,
    options: { failure: GrpcFailure | "decode"; detail: string; grpcStatus?: number | null },
    cause?: unknown,
  ) {
    const hint = hintFor(options.failure, options.grpcStatus ?? null, cause);
    super(
      `PodResources ${method} on ${socketPath} failed: ${options.detail}${
        hint ? ` (${hint})` : ""
      }`,
      { cause },
    );
    this.failure = options.failure;
    this.grpcStatus = options.grpcStatus ?? null;
    this.socketPath = socketPath;
  }
}

function causes(error: unknown): unknown[] {
  const chain: unknown[] = [];
  for (let e = error; e !== undefined && e !== null && chain.length < 8; e = (e as Error).cause) {
    chain.push(e);
  }
  return chain;
}

function hintFor(failure: string, grpcStatus: number | null, cause: unknown): string {
  const chain = causes(cause);
  if (chain.some((e) => e instanceof Deno.errors.NotCapable)) {
    return "the agent's permission set does not include the socket; start it with " +
      "--pod-gpu-mapping pod-resources (or auto) and --pod-resources-socket";
  }
  const absent = chain.some((e) =>
    e instanceof Deno.errors.NotFound || (e as { code?: unknown }).code === "ENOENT"
  );
  if (failure === "unavailable" && absent) {
    return "no socket: mount the host's /var/lib/kubelet/pod-resources into the agent's pod";
  }
  if (failure === "unavailable") return "the kubelet is not answering; it may be restarting";
  if (failure === "deadline") return "the kubelet did not answer in time; it may be overloaded";
  if (grpcStatus === GrpcStatus.UNIMPLEMENTED) {
    return "this kubelet does not offer the method (Get needs the KubeletPodResourcesGet gate)";
  }
  if (failure === "too-large") return "more pods than the response bound allows";
  return "";
}

/** Options of {@linkcode createPodResourcesClient}. */
export interface PodResourcesClientOptions {
  /** Socket path (default {@linkcode DEFAULT_POD_RESOURCES_SOCKET}). */
  socketPath?: string;
  /** Deadline per call, milliseconds (default 2000). */
  timeoutMs?: number;
  /** Largest accepted answer, bytes (default 4 MiB). */
  maxResponseBytes?: number;
}

/** The three calls of `v1.PodResourcesLister`. */
export interface PodResourcesClient {
  /** The socket this client calls. */
  readonly socketPath: string;
  /** Every pod on the node with its containers' devices (`List`). */
  list(): Promise<PodAllocation[]>;
  /** One pod (`Get`; kubelet 1.27+ with KubeletPodResourcesGet); null when the kubelet sent none. */
  get(namespace: string, name: string): Promise<PodAllocation | null>;
  /** Every device the kubelet can allocate (`GetAllocatableResources`). */
  allocatable(): Promise<DeviceAllocation[]>;
}

function devicesOf(devices: readonly ContainerDevicesMessage[]): DeviceAllocation[] {
  return devices.map((d) => ({ resourceName: d.resourceName, deviceIds: [...d.deviceIds] }));
}

function podOf(pod: PodResourcesMessage): PodAllocation {
  return {
    namespace: pod.namespace,
    name: pod.name,
    containers: pod.containers.map((c) => ({ name: c.name, devices: devicesOf(c.devices) })),
  };
}

/** A client of the PodResources socket; it holds no connection between calls. */
export function createPodResourcesClient(
  options: PodResourcesClientOptions = {},
): PodResourcesClient {
  const socketPath = options.socketPath ?? DEFAULT_POD_RESOURCES_SOCKET;
  const callOptions = {
    timeoutMs: options.timeoutMs ?? DEFAULT_GRPC_TIMEOUT_MS,
    maxResponseBytes: options.maxResponseBytes ?? DEFAULT_GRPC_MAX_RESPONSE_BYTES,
  };

  async function call<T>(
    method: keyof typeof POD_RESOURCES_METHODS,
    request: Uint8Array,
    decode: (bytes: Uint8Array) => T,
  ): Promise<T> {
    const name = POD_RESOURCES_METHODS[method].split("/").at(-1)!;
    let bytes: Uint8Array;
    try {
      bytes = await grpcUnaryCall(socketPath, POD_RESOURCES_METHODS[method], request, callOptions);
    } catch (error) {
      if (!(error instanceof GrpcCallError)) throw error;
      throw new PodResourcesError(name, socketPath, {
        failure: error.failure,
        detail: error.message,
        grpcStatus: error.grpcStatus,
      }, error);
    }
    try {
      return decode(bytes);
    } catch (error) {
      throw new PodResourcesError(name, socketPath, {
        failure: "decode",
        detail: `undecodable answer: ${(error as Error).message}`,
      }, error);
    }
  }

  const empty = new Uint8Array(0);
  return {
    socketPath,
    async list() {
      return (await call("list", empty, decodeListPodResourcesResponse)).map(podOf);
    },
    async get(namespace, name) {
      const request = encodeGetPodResourcesRequest(name, namespace);
      const pod = await call("get", request, decodeGetPodResourcesResponse);
      return pod ? podOf(pod) : null;
    },
    async allocatable() {
      return devicesOf(await call("allocatable", empty, decodeAllocatableResourcesResponse));
    },
  };
}
