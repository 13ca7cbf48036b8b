/**
 * An in-test Kubernetes API server (Deno.serve on 127.0.0.1) with just what the agent uses:
 * pods LIST/WATCH (cluster-wide and namespaced, fieldSelector, resourceVersion, chunked
 * `watch=true` streams with ADDED/MODIFIED/DELETED/BOOKMARK/ERROR 410), nodes LIST/WATCH the same
 * way (`/api/v1/nodes`, fieldSelector `metadata.name`; `addNode`/`setNodeAnnotation` change them)
 * and Event creation.
 * Bearer-token auth, fault switches, and request counters so tests can assert "one LIST then
 * one WATCH". All traffic stays on 127.0.0.1.
 */

/** A pod as the fake stores it (only the fields the agent reads, plus what tests set). */
export interface FakePod {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    resourceVersion?: string;
    annotations?: Record<string, string>;
    deletionTimestamp?: string;
    labels?: Record<string, string>;
  };
  spec: { nodeName?: string; [key: string]: unknown };
  status: { phase?: string; [key: string]: unknown };
}

/** A node as the fake stores it (metadata only: what the agent reads). */
export interface FakeNode {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    uid: string;
    resourceVersion?: string;
    annotations?: Record<string, string>;
    labels?: Record<string, string>;
  };
}

/** What `addPod` needs; uid, phase and node get defaults. */
export interface FakePodInput {
  name: string;
  namespace?: string;
  uid?: string;
  nodeName?: string;
  annotations?: Record<string, string>;
  phase?: string;
  /** Resource limits of the pod's one container `main` (e.g. `{"nvidia.com/gpu": "1"}`). */
  limits?: Record<string, string>;
}

/**
 * A failure mode: an HTTP status with a Status body, never answering, a dropped connection, or
 * (watches) `gone`: 200 with an ERROR 410 event, whatever the resourceVersion.
 */
export type Fault = 401 | 403 | 404 | 410 | 500 | 503 | "hang" | "drop" | "gone";

/** Which request kinds a fault applies to. */
export interface FaultSwitches {
  list?: Fault;
  watch?: Fault;
  events?: Fault;
  /** Node LIST and WATCH (pods' `list`/`watch` switches do not apply to nodes). */
  nodeList?: Fault;
  nodeWatch?: Fault;
}

/** One request the fake received. */
export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  kind: "list" | "watch" | "event" | "other";
  /** `pods` or `nodes` for list/watch requests. */
  resource?: Resource;
  /** Status answered (0 while a watch/hang is still open). */
  status: number;
}

/** Options of `startFakeApiServer`. */
export interface FakeApiServerOptions {
  /** Bearer token clients must send (default `test-token`). */
  token?: string;
  /**
   * `false`: accept requests without a bearer token (a TLS front in the test authenticates
   * them by client certificate). Default true.
   */
  requireToken?: boolean;
  /** Port to listen on (default: any free port). */
  port?: number;
  /** Node name used by `addPod` when the input has none (default `node-a`). */
  defaultNodeName?: string;
  /** How a too-old watch resourceVersion is answered: ERROR event (default) or HTTP 410. */
  goneAs?: "event" | "http";
  /** Namespaced RBAC: cluster-wide pod requests answer 403; only this namespace is allowed. */
  rbacNamespace?: string;
  /** RBAC without nodes: node requests answer 403. */
  nodesForbidden?: boolean;
}

type Resource = "pods" | "nodes";

interface Watcher {
  id: number;
  resource: Resource;
  namespace?: string;
  selector: Selector;
  bookmarks: boolean;
  controller: ReadableStreamDefaultController<Uint8Array>;
  timer?: ReturnType<typeof setTimeout>;
  closed: boolean;
}

interface HistoryEntry {
  rv: number;
  type: "ADDED" | "MODIFIED" | "DELETED";
  resource: Resource;
  pod: FakePod | FakeNode;
}

type Selector = Array<[string, string]>;

const encoder = new TextEncoder();

function clone<T>(value: T): T {
  return structuredClone(value);
}

function parseSelector(text: string | null): Selector {
  if (!text) return [];
  return text.split(",").filter((s) => s).map((term) => {
    const i = term.indexOf("=");
    const key = term.slice(0, i).trim();
    const value = term.slice(i + 1).replace(/^=/, "").trim();
    return [key, value] as [string, string];
  });
}

function fieldOf(object: FakePod | FakeNode, key: string): string | undefined {
  if (!("spec" in object)) return key === "metadata.name" ? object.metadata.name : undefined;
  const pod = object;
  switch (key) {
    case "spec.nodeName":
      return pod.spec.nodeName ?? "";
    case "metadata.namespace":
      return pod.metadata.namespace;
    case "metadata.name":
      return pod.metadata.name;
    case "status.phase":
      return pod.status.phase ?? "";
    default:
      return undefined;
  }
}

function matches(object: FakePod | FakeNode, selector: Selector, namespace?: string): boolean {
  if (namespace !== undefined && "namespace" in object.metadata) {
    if (object.metadata.namespace !== namespace) return false;
  }
  return selector.every(([key, value]) => fieldOf(object, key) === value);
}

function statusBody(code: number, reason: string, message: string): string {
  return JSON.stringify({
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason,
    code,
  });
}

const REASONS: Record<number, string> = {
  401: "Unauthorized",
  403: "Forbidden",
  404: "NotFound",
  410: "Expired",
  500: "InternalError",
  503: "ServiceUnavailable",
};

/** A running fake API server. */
export class FakeApiServer {
  /** Requests so far by kind. `activeWatches` is the number of open watch streams now. */
  /** `lists`/`watches` count pod requests; `nodeLists`/`nodeWatches` node requests. */
  readonly counters = {
    lists: 0,
    watches: 0,
    nodeLists: 0,
    nodeWatches: 0,
    events: 0,
    requests: 0,
    unauthorized: 0,
  };
  /** Every request, in order. */
  readonly requests: RecordedRequest[] = [];
  /** Bodies of created Events, in order. */
  readonly events: Array<Record<string, unknown>> = [];
  /** Bearer token clients must send; a test may change it (token rotation). */
  token: string;
  /** Node used by `addPod` when none is given. */
  readonly defaultNodeName: string;

  #options: FakeApiServerOptions;
  #server?: Deno.HttpServer;
  #port = 0;
  #rv = 1000;
  #compactedRv = 0;
  #pods = new Map<string, FakePod>();
  #nodes = new Map<string, FakeNode>();
  #history: HistoryEntry[] = [];
  #watchers = new Set<Watcher>();
  #hanging = new Set<() => void>();
  #faults: FaultSwitches = {};
  #nextId = 1;
  #uidCounter = 0;

  constructor(options: FakeApiServerOptions = {}) {
    this.#options = options;
    this.token = options.token ?? "test-token";
    this.defaultNodeName = options.defaultNodeName ?? "node-a";
  }

  /** `http://127.0.0.1:<port>`. */
  get url(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  get port(): number {
    return this.#port;
  }

  /** Current resourceVersion. */
  get resourceVersion(): number {
    return this.#rv;
  }

  /** Number of watch streams open now. */
  get activeWatches(): number {
    return this.#watchers.size;
  }

  /** True while listening. */
  get running(): boolean {
    return this.#server !== undefined;
  }

  /** Listen (again) — on the previous port after `stop()`. */
  start(): Promise<void> {
    if (this.#server) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#server = Deno.serve({
      hostname: "127.0.0.1",
      port: this.#port || this.#options.port || 0,
      onListen: (addr) => {
        this.#port = addr.port;
        resolve();
      },
      onError: () => new Response(statusBody(500, "InternalError", "fake error"), { status: 500 }),
    }, (request) => this.#handle(request));
    return promise;
  }

  /** Stop listening and cut every open stream (simulated outage); state is kept. */
  async stop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    this.dropWatches();
    for (const release of [...this.#hanging]) release();
    await server.shutdown();
  }

  /** Stop for good. */
  async close(): Promise<void> {
    await this.stop();
  }

  /** Set (or clear with `{}`) fault switches. */
  setFaults(faults: FaultSwitches): void {
    this.#faults = { ...faults };
    for (const release of [...this.#hanging]) release();
  }

  /** Namespaced RBAC (cluster-wide pod requests → 403), or undefined for cluster-wide RBAC. */
  setRbacNamespace(namespace: string | undefined): void {
    this.#options = { ...this.#options, rbacNamespace: namespace };
  }

  /** RBAC without (true) or with (false) read access to nodes. */
  setNodesForbidden(forbidden: boolean): void {
    this.#options = { ...this.#options, nodesForbidden: forbidden };
  }

  /** Write a kubeconfig pointing at this server (plain http + bearer token); returns its path. */
  async writeKubeconfig(dir: string, options: { token?: string } = {}): Promise<string> {
    const path = `${dir}/kubeconfig`;
    const config = {
      apiVersion: "v1",
      kind: "Config",
      clusters: [{
        name: "fake",
        cluster: { server: this.url },
      }],
      users: [{ name: "agent", user: { token: options.token ?? this.token } }],
      contexts: [{ name: "fake", context: { cluster: "fake", user: "agent" } }],
      "current-context": "fake",
    };
    await Deno.writeTextFile(path, JSON.stringify(config, null, 2));
    return path;
  }

  /** A pod by namespace/name (a copy), or undefined. */
  getPod(namespace: string, name: string): FakePod | undefined {
    const pod = this.#pods.get(`${namespace}/${name}`);
    return pod ? clone(pod) : undefined;
  }

  /** Create a pod (ADDED). Returns a copy with uid and resourceVersion. */
  addPod(input: FakePodInput): FakePod {
    const namespace = input.namespace ?? "default";
    const key = `${namespace}/${input.name}`;
    if (this.#pods.has(key)) throw new Error(`fake pod ${key} already exists`);
    const n = ++this.#uidCounter;
    const pod: FakePod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        name: input.name,
        namespace,
        uid: input.uid ?? `00000000-0000-4000-8000-${n.toString(16).padStart(12, "0")}`,
        annotations: input.annotations ? { ...input.annotations } : undefined,
      },
      spec: {
        nodeName: input.nodeName ?? this.defaultNodeName,
        ...(input.limits
          ? { containers: [{ name: "main", resources: { limits: { ...input.limits } } }] }
          : {}),
      },
      status: { phase: input.phase ?? "Running" },
    };
    this.#pods.set(key, pod);
    this.#record("ADDED", pod);
    return clone(pod);
  }

  /** Change a pod in place (MODIFIED). */
  modifyPod(namespace: string, name: string, change: (pod: FakePod) => void): FakePod {
    const pod = this.#pods.get(`${namespace}/${name}`);
    if (!pod) throw new Error(`fake pod ${namespace}/${name} not found`);
    change(pod);
    this.#record("MODIFIED", pod);
    return clone(pod);
  }

  /** Set (string) or remove (undefined) one annotation (MODIFIED). */
  setAnnotation(namespace: string, name: string, key: string, value: string | undefined): void {
    this.modifyPod(namespace, name, (pod) => {
      const annotations = { ...(pod.metadata.annotations ?? {}) };
      if (value === undefined) delete annotations[key];
      else annotations[key] = value;
      pod.metadata.annotations = annotations;
    });
  }

  /** Set the pod phase (MODIFIED). */
  setPhase(namespace: string, name: string, phase: string): void {
    this.modifyPod(namespace, name, (pod) => {
      pod.status.phase = phase;
    });
  }

  /** Delete a pod (DELETED). */
  deletePod(namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    const pod = this.#pods.get(key);
    if (!pod) throw new Error(`fake pod ${key} not found`);
    this.#pods.delete(key);
    this.#record("DELETED", pod);
  }

  /** A node by name (a copy), or undefined. */
  getNode(name: string): FakeNode | undefined {
    const node = this.#nodes.get(name);
    return node ? clone(node) : undefined;
  }

  /** Create a node (ADDED). Returns a copy with uid and resourceVersion. */
  addNode(name: string, options: { annotations?: Record<string, string> } = {}): FakeNode {
    if (this.#nodes.has(name)) throw new Error(`fake node ${name} already exists`);
    const n = ++this.#uidCounter;
    const node: FakeNode = {
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name,
        uid: `00000000-0000-4000-9000-${n.toString(16).padStart(12, "0")}`,
        annotations: options.annotations ? { ...options.annotations } : undefined,
      },
    };
    this.#nodes.set(name, node);
    this.#record("ADDED", node, "nodes");
    return clone(node);
  }

  /** Set (string) or remove (undefined) one annotation of a node (MODIFIED). */
  setNodeAnnotation(name: string, key: string, value: string | undefined): void {
    const node = this.#nodes.get(name);
    if (!node) throw new Error(`fake node ${name} not found`);
    const annotations = { ...(node.metadata.annotations ?? {}) };
    if (value === undefined) delete annotations[key];
    else annotations[key] = value;
    node.metadata.annotations = annotations;
    this.#record("MODIFIED", node, "nodes");
  }

  /** Delete a node (DELETED). */
  deleteNode(name: string): void {
    const node = this.#nodes.get(name);
    if (!node) throw new Error(`fake node ${name} not found`);
    this.#nodes.delete(name);
    this.#record("DELETED", node, "nodes");
  }

  /** Send a BOOKMARK with the current resourceVersion to watches that asked for bookmarks. */
  bookmark(): void {
    for (const w of this.#watchers) {
      if (!w.bookmarks) continue;
      this.#send(w, {
        type: "BOOKMARK",
        object: {
          kind: w.resource === "nodes" ? "Node" : "Pod",
          apiVersion: "v1",
          metadata: {
            resourceVersion: String(this.#rv),
            annotations: { "k8s.io/initial-events-end": "true" },
          },
        },
      });
    }
  }

  /** Forget history: watches from any resourceVersion below the current one get 410 Gone. */
  compact(): void {
    this.#compactedRv = this.#rv;
    this.#history = [];
  }

  /** Compact, then send ERROR 410 to every open watch and close it. */
  expireWatches(): void {
    this.compact();
    for (const w of [...this.#watchers]) {
      this.#send(w, {
        type: "ERROR",
        object: JSON.parse(statusBody(410, "Expired", "too old resource version")),
      });
      this.#closeWatcher(w);
    }
  }

  /** Cut every open watch stream abruptly (connection dropped mid-stream). */
  dropWatches(): void {
    for (const w of [...this.#watchers]) {
      w.closed = true;
      this.#watchers.delete(w);
      if (w.timer !== undefined) clearTimeout(w.timer);
      try {
        w.controller.error(new Error("connection dropped by fake API server"));
      } catch {
        // Already closed.
      }
    }
  }

  /** End every open watch normally (as at its timeoutSeconds). */
  endWatches(): void {
    for (const w of [...this.#watchers]) this.#closeWatcher(w);
  }

  #record(type: HistoryEntry["type"], pod: FakePod | FakeNode, resource: Resource = "pods"): void {
    this.#rv++;
    pod.metadata.resourceVersion = String(this.#rv);
    const snapshot = clone(pod);
    this.#history.push({ rv: this.#rv, type, resource, pod: snapshot });
    for (const w of this.#watchers) {
      if (w.resource === resource && matches(snapshot, w.selector, w.namespace)) {
        this.#send(w, { type, object: snapshot });
      }
    }
  }

  #send(w: Watcher, event: unknown): void {
    if (w.closed) return;
    try {
      w.controller.enqueue(encoder.encode(JSON.stringify(event) + "\n"));
    } catch {
      this.#closeWatcher(w);
    }
  }

  #closeWatcher(w: Watcher): void {
    if (w.closed) return;
    w.closed = true;
    this.#watchers.delete(w);
    if (w.timer !== undefined) clearTimeout(w.timer);
    try {
      w.controller.close();
    } catch {
      // Already closed or errored.
    }
  }

  async #handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const query = Object.fromEntries(url.searchParams);
    const m = /^\/api\/v1\/(?:namespaces\/([^/]+)\/)?(pods|events)$|^\/api\/v1\/(nodes)$/.exec(
      url.pathname,
    );
    const isWatch = url.searchParams.get("watch") === "true" ||
      url.searchParams.get("watch") === "1";
    const resource: Resource | undefined = m?.[3] === "nodes"
      ? "nodes"
      : m?.[2] === "pods"
      ? "pods"
      : undefined;
    const kind: RecordedRequest["kind"] = !m
      ? "other"
      : m[2] === "events" && request.method === "POST"
      ? "event"
      : resource !== undefined && request.method === "GET"
      ? (isWatch ? "watch" : "list")
      : "other";
    const record: RecordedRequest = {
      method: request.method,
      path: url.pathname,
      query,
      kind,
      status: 0,
    };
    if (resource !== undefined && kind !== "other") record.resource = resource;
    this.requests.push(record);
    this.counters.requests++;
    const nodes = resource === "nodes";
    if (kind === "list") this.counters[nodes ? "nodeLists" : "lists"]++;
    if (kind === "watch") this.counters[nodes ? "nodeWatches" : "watches"]++;
    if (kind === "event") this.counters.events++;
    const respond = (status: number, body: string, headers: HeadersInit = {}) => {
      record.status = status;
      return new Response(body, {
        status,
        headers: { "content-type": "application/json", ...headers },
      });
    };
    const fail = (code: number, message: string) =>
      respond(code, statusBody(code, REASONS[code] ?? "Unknown", message));

    const authorization = request.headers.get("authorization");
    if (this.#options.requireToken === false && authorization === null) {
      // Authenticated by the TLS front (client certificate).
    } else if (authorization !== `Bearer ${this.token}`) {
      this.counters.unauthorized++;
      return fail(401, "Unauthorized");
    }
    if (kind === "other") return fail(404, `the server could not find ${url.pathname}`);

    const fault = kind === "list"
      ? (nodes ? this.#faults.nodeList : this.#faults.list)
      : kind === "watch"
      ? (nodes ? this.#faults.nodeWatch : this.#faults.watch)
      : this.#faults.events;
    if (fault === "hang") {
      await new Promise<void>((resolve) => {
        const release = () => {
          this.#hanging.delete(release);
          resolve();
        };
        // Released by setFaults() or stop() (the client gives up on its own timeout).
        this.#hanging.add(release);
      });
      return fail(503, "hung request released");
    }
    if (fault === "drop") {
      record.status = 200;
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(encoder.encode(kind === "watch" ? "" : '{"kind":"Pod'));
          controller.error(new Error("connection dropped by fake API server"));
        },
      });
      return new Response(body, { status: 200, headers: { "content-type": "application/json" } });
    }
    if (typeof fault === "number") return fail(fault, `injected fault ${fault}`);
    if (fault === "gone") {
      record.status = 200;
      return respond(
        200,
        JSON.stringify({
          type: "ERROR",
          object: JSON.parse(statusBody(410, "Expired", "too old resource version")),
        }) + "\n",
      );
    }

    const namespace = m![1] ? decodeURIComponent(m![1]) : undefined;
    const rbac = this.#options.rbacNamespace;
    if (nodes && this.#options.nodesForbidden) {
      return fail(
        403,
        'nodes is forbidden: User "system:serviceaccount:gpu-power-agent:agent" cannot ' +
          `${kind} resource "nodes" in API group "" at the cluster scope`,
      );
    }
    if (!nodes && rbac !== undefined && namespace !== rbac) {
      return fail(
        403,
        `pods is forbidden: User "system:serviceaccount:${rbac}:agent" cannot list resource ` +
          `"pods" in API group "" ${
            namespace ? `in the namespace "${namespace}"` : "at the cluster scope"
          }`,
      );
    }

    if (kind === "event") {
      const body = await request.json() as Record<string, unknown>;
      this.events.push(body);
      return respond(201, JSON.stringify({ ...body, kind: "Event", apiVersion: "v1" }));
    }

    const selector = parseSelector(url.searchParams.get("fieldSelector"));
    if (kind === "list") {
      const all: Array<FakePod | FakeNode> = nodes
        ? [...this.#nodes.values()]
        : [...this.#pods.values()];
      const items = all.filter((p) => matches(p, selector, namespace));
      return respond(
        200,
        JSON.stringify({
          kind: nodes ? "NodeList" : "PodList",
          apiVersion: "v1",
          metadata: { resourceVersion: String(this.#rv) },
          items,
        }),
      );
    }
    return this.#watch(request, { namespace, selector, record, resource: resource! });
  }

  #watch(
    request: Request,
    options: {
      namespace?: string;
      selector: Selector;
      record: RecordedRequest;
      resource: Resource;
    },
  ): Response {
    const url = new URL(request.url);
    const rvParam = url.searchParams.get("resourceVersion");
    const fromRv = rvParam === null || rvParam === "" || rvParam === "0" ? null : Number(rvParam);
    if (fromRv !== null && fromRv < this.#compactedRv && this.#options.goneAs === "http") {
      options.record.status = 410;
      return new Response(statusBody(410, "Expired", "too old resource version"), {
        status: 410,
        headers: { "content-type": "application/json" },
      });
    }
    options.record.status = 200;
    const timeoutSeconds = Number(url.searchParams.get("timeoutSeconds") ?? "0");
    let watcher: Watcher | undefined;
    const body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        watcher = {
          id: this.#nextId++,
          resource: options.resource,
          namespace: options.namespace,
          selector: options.selector,
          bookmarks: url.searchParams.get("allowWatchBookmarks") === "true",
          controller,
          closed: false,
        };
        if (fromRv !== null && fromRv < this.#compactedRv) {
          this.#send(watcher, {
            type: "ERROR",
            object: JSON.parse(statusBody(410, "Expired", `too old resource version: ${fromRv}`)),
          });
          watcher.closed = true;
          controller.close();
          return;
        }
        this.#watchers.add(watcher);
        if (fromRv === null) {
          const current = options.resource === "nodes" ? this.#nodes : this.#pods;
          for (const pod of current.values()) {
            if (matches(pod, options.selector, options.namespace)) {
              this.#send(watcher, { type: "ADDED", object: clone(pod) });
            }
          }
        } else {
          for (const entry of this.#history) {
            if (
              entry.rv > fromRv && entry.resource === options.resource &&
              matches(entry.pod, options.selector, options.namespace)
            ) {
              this.#send(watcher, { type: entry.type, object: clone(entry.pod) });
            }
          }
        }
        if (timeoutSeconds > 0) {
          const w = watcher;
          w.timer = setTimeout(() => this.#closeWatcher(w), timeoutSeconds * 1000);
        }
      },
      cancel: () => {
        if (watcher) {
          watcher.closed = true;
          this.#watchers.delete(watcher);
          if (watcher.timer !== undefined) clearTimeout(watcher.timer);
        }
      },
    });
    return new Response(body, {
      status: 200,
      headers: { "content-type": "application/json" },
    });
  }
}

/** Start a fake API server on 127.0.0.1 (any free port unless `options.port`). */
export async function startFakeApiServer(
  options: FakeApiServerOptions = {},
): Promise<FakeApiServer> {
  const server = new FakeApiServer(options);
  await server.start();
  return server;
}
