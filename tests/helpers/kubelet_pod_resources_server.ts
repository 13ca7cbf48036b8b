/**
 * An in-test kubelet PodResources v1 server on a unix socket, driven by the tests: it answers
 * `List`, `Get` and `GetAllocatableResources` with the pods the test sets, and can restart
 * (gracefully with GOAWAY, or by resetting connections), refuse (a dead socket file), disappear
 * (no socket), hang (accept calls, never answer) and report any device IDs (unknown ones too).
 *
 * The server itself runs in a Node child process (kubelet_pod_resources_server.mjs): a
 * `node:http2` server hosted by Deno 2.9.6 aborts in nghttp2 within a few hundred sessions. The
 * answers are encoded here with the agent's own protobuf schema and sent to it as bytes.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { Buffer } from "node:buffer";
import { POD_RESOURCES_METHODS } from "../../src/sources/pod_resources_proto.ts";
import { encodeWithProtobufjs, type PodResourcesMessageName } from "./pod_resources_protobufjs.ts";
import type { DeviceAllocation, PodAllocation } from "../../src/sources/pod_resources.ts";

const encodeBase64 = (bytes: Uint8Array) => Buffer.from(bytes).toString("base64");

const SCRIPT = fileURLToPath(new URL("./kubelet_pod_resources_server.mjs", import.meta.url));

type Answer = { body: string } | { status: number; message: string };

/** Options of {@linkcode KubeletPodResourcesServer.stop}. */
export interface StopOptions {
  /** Send GOAWAY (a clean kubelet shutdown) instead of resetting connections (a crash). */
  graceful?: boolean;
  /** Leave the socket file behind, so that connecting is refused, instead of removing it. */
  leaveSocket?: boolean;
}

/** The fake kubelet; create with {@linkcode startKubeletPodResourcesServer}. */
export class KubeletPodResourcesServer {
  /** The socket the server listens on. */
  readonly socketPath: string;
  /** The temp directory holding the socket (removed by `close`). */
  readonly dir: string;
  #child: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #lines: AsyncIterator<string>;
  #pods: PodAllocation[] = [];
  #allocatable: DeviceAllocation[] = [];
  #failures = new Map<string, Answer>();

  constructor(dir: string, child: Deno.ChildProcess, lines: AsyncIterator<string>) {
    this.dir = dir;
    this.socketPath = `${dir}/kubelet.sock`;
    this.#child = child;
    this.#writer = child.stdin.getWriter();
    this.#lines = lines;
  }

  /** Pods (and their devices) that List and Get report from now on. */
  async setPods(pods: readonly PodAllocation[]): Promise<void> {
    this.#pods = structuredClone([...pods]) as PodAllocation[];
    await this.#sendAnswers();
  }

  /** Devices GetAllocatableResources reports from now on. */
  async setAllocatable(devices: readonly DeviceAllocation[]): Promise<void> {
    this.#allocatable = structuredClone([...devices]) as DeviceAllocation[];
    await this.#sendAnswers();
  }

  /** Make `method` answer with gRPC status `status` (null: answer normally again). */
  async failWith(
    method: keyof typeof POD_RESOURCES_METHODS,
    status: number | null,
    message = "injected failure",
  ): Promise<void> {
    if (status === null) this.#failures.delete(method);
    else this.#failures.set(method, { status, message });
    await this.#sendAnswers();
  }

  /** Accept calls but never answer them (true), or answer again (false). */
  async hang(hang = true): Promise<void> {
    await this.#command({ cmd: "hang", hang });
  }

  /** Stop listening, like a kubelet going down. */
  async stop(options: StopOptions = {}): Promise<void> {
    await this.#command({ cmd: "stop", ...options });
  }

  /** Listen again after {@linkcode stop}. */
  async start(): Promise<void> {
    await this.#command({ cmd: "start" });
  }

  /** Stop, then start: a kubelet restart. */
  async restart(options: StopOptions = {}): Promise<void> {
    await this.stop(options);
    await this.start();
  }

  /** How many calls of each method were answered (hung calls are not counted). */
  async calls(): Promise<Record<keyof typeof POD_RESOURCES_METHODS, number>> {
    const answer = await this.#command({ cmd: "calls" });
    const calls = answer.calls as Record<string, number>;
    return {
      list: calls[POD_RESOURCES_METHODS.list] ?? 0,
      get: calls[POD_RESOURCES_METHODS.get] ?? 0,
      allocatable: calls[POD_RESOURCES_METHODS.allocatable] ?? 0,
    };
  }

  /** Ends the server process and removes the socket directory. */
  async close(): Promise<void> {
    try {
      await this.#writer.close();
    } catch {
      // already closed
    }
    await this.#child.status;
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #sendAnswers(): Promise<void> {
    const body = (name: PodResourcesMessageName, message: Record<string, unknown>): Answer => ({
      body: encodeBase64(encodeWithProtobufjs(name, message)),
    });
    const answers: Record<string, Answer> = {
      [POD_RESOURCES_METHODS.list]: body("ListPodResourcesResponse", {
        podResources: this.#pods.map(withUnreadFields),
      }),
      [POD_RESOURCES_METHODS.allocatable]: body("AllocatableResourcesResponse", {
        devices: this.#allocatable,
        cpuIds: [0, 1, 2, 3],
        memory: [{ memoryType: "memory", size: 2 ** 40 }],
      }),
      // The kubelet answers Get of an unknown pod with an error (gRPC UNKNOWN).
      [POD_RESOURCES_METHODS.get]: { status: 2, message: "pod not found" },
    };
    const get: Record<string, Answer> = {};
    for (const pod of this.#pods) {
      const request = encodeWithProtobufjs("GetPodResourcesRequest", {
        podName: pod.name,
        podNamespace: pod.namespace,
      });
      get[encodeBase64(request)] = body("GetPodResourcesResponse", {
        podResources: withUnreadFields(pod),
      });
    }
    const keyed: Record<string, Record<string, Answer>> = { [POD_RESOURCES_METHODS.get]: get };
    for (const [method, failure] of this.#failures) {
      const path = POD_RESOURCES_METHODS[method as keyof typeof POD_RESOURCES_METHODS];
      answers[path] = failure;
      delete keyed[path];
    }
    await this.#command({ cmd: "answers", answers, keyed });
  }

  async #command(command: Record<string, unknown>): Promise<Record<string, unknown>> {
    await this.#writer.write(new TextEncoder().encode(JSON.stringify(command) + "\n"));
    const next = await this.#lines.next();
    if (next.done) throw new Error("the test kubelet exited");
    const answer = JSON.parse(next.value) as Record<string, unknown>;
    if (answer.ok !== true) throw new Error(`test kubelet: ${answer.error}`);
    return answer;
  }
}

/** A pod as a newer kubelet sends it: with CPU ids, memory, topology the agent skips. */
function withUnreadFields(pod: PodAllocation): Record<string, unknown> {
  return {
    ...pod,
    cpuIds: [4, 5],
    memory: [{ memoryType: "hugepages-2Mi", size: 2 ** 33, topology: { nodes: [{ ID: 1 }] } }],
    containers: pod.containers.map((container) => ({
      ...container,
      cpuIds: [4, 2 ** 40],
      devices: container.devices.map((devices) => ({
        ...devices,
        topology: { nodes: [{ ID: 0 }, { ID: 1 }] },
      })),
      dynamicResources: [{ claimName: "claim", claimNamespace: pod.namespace }],
    })),
  };
}

async function* linesOf(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let buffered = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    let newline;
    while ((newline = buffered.indexOf("\n")) !== -1) {
      yield buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
    }
  }
}

/** Starts a test kubelet on `<new temp dir>/kubelet.sock`, answering with `pods`. */
export async function startKubeletPodResourcesServer(
  pods: readonly PodAllocation[] = [],
): Promise<KubeletPodResourcesServer> {
  const dir = await Deno.makeTempDir({ prefix: "kubelet-pod-resources-" });
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("node", {
      args: [SCRIPT, `${dir}/kubelet.sock`],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    if (error instanceof Deno.errors.NotFound) {
      throw new Error("node not found: the in-test kubelet runs under Node.js; install nodejs");
    }
    throw error;
  }
  const lines = linesOf(child.stdout);
  const ready = await lines.next();
  if (ready.done) {
    await child.status;
    await Deno.remove(dir, { recursive: true });
    throw new Error("the test kubelet exited before listening");
  }
  const server = new KubeletPodResourcesServer(dir, child, lines);
  await server.setPods(pods);
  return server;
}

/** A pod with one container `main` holding `deviceIds` of `resourceName`. */
export function gpuPod(
  namespace: string,
  name: string,
  deviceIds: readonly string[],
  resourceName = "nvidia.com/gpu",
): PodAllocation {
  return {
    namespace,
    name,
    containers: [{ name: "main", devices: [{ resourceName, deviceIds: [...deviceIds] }] }],
  };
}
