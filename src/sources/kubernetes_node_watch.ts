/**
 * Watch one annotation of this node (`gpu-power-agent.io/power-budget-watts`): the list/watch
 * loop of `kubernetes_list_watch.ts` over `/api/v1/nodes?fieldSelector=metadata.name=<node>`
 * (backoff, 3 s cap while the API server is unreachable, healthy-watch reset and object bounds
 * as for pods). `onChange` fires only when the annotation's value changes (node status updates
 * do not wake the agent). In steady state: one open watch, no polls.
 */
import type { SourceHealth } from "./cap_source.ts";
import { KubeApiError, type KubeClient } from "./kubernetes_client.ts";
import {
  ListWatch,
  type ListWatchStats,
  type ListWatchTuning,
  type WatchEventType,
} from "./kubernetes_list_watch.ts";

/** The nodes collection. */
const NODES_PATH = "/api/v1/nodes";

/** Options of {@link NodeAnnotationWatcher}. */
export interface NodeAnnotationWatcherOptions extends ListWatchTuning {
  /** This node's name (`spec.nodeName` of the agent's pod, `--node-name`). */
  nodeName: string;
  /** The annotation key to follow. */
  annotation: string;
  /** Called with the new value (undefined: absent, or the node is gone) when it changes. */
  onChange: (value: string | undefined) => void;
}

/** What is kept of a Node: its name and the followed annotation's value. */
interface NodeAnnotation {
  name: string;
  value: string | undefined;
}

/** Follows one annotation of one node. `start()` once, `stop()` to end. */
export class NodeAnnotationWatcher {
  #loop: ListWatch<NodeAnnotation>;
  #nodeName: string;
  #onChange: (value: string | undefined) => void;
  #value: string | undefined;

  constructor(client: KubeClient, options: NodeAnnotationWatcherOptions) {
    const { nodeName, annotation, onChange, ...tuning } = options;
    this.#nodeName = nodeName;
    this.#onChange = onChange;
    this.#loop = new ListWatch(client, {
      ...tuning,
      path: NODES_PATH,
      fieldSelector: `metadata.name=${nodeName}`,
      trim: (value) => trimNode(value, annotation),
      handlers: {
        replace: (nodes) => this.#update(nodes.find((n) => n.name === nodeName)),
        event: (type, node) => this.#event(type, node),
      },
      noun: "node",
      source: "kubernetes-node",
      whileFailing: "the node budget annotation keeps its last value",
      problemPrefix: "node ",
      describeError: rbacHint,
    });
  }

  /** The annotation's value now (undefined: absent, node unknown, or not listed yet). */
  get value(): string | undefined {
    return this.#value;
  }

  /** Freshness: synced after the first LIST; problem while list/watch fails. */
  health(): SourceHealth {
    return this.#loop.health();
  }

  /** Counters. */
  stats(): ListWatchStats {
    return this.#loop.stats();
  }

  /** Begin; resolves after the first LIST attempt (failures are retried in the background). */
  start(): Promise<void> {
    return this.#loop.start();
  }

  /** Stop: aborts the open request and waits for the loop to end. Idempotent. */
  stop(): Promise<void> {
    return this.#loop.stop();
  }

  #event(type: WatchEventType, node: NodeAnnotation): void {
    if (node.name !== this.#nodeName) return;
    this.#update(type === "DELETED" ? undefined : node);
  }

  /** Take the annotation from `node` (undefined: no such node) and report a change. */
  #update(node: NodeAnnotation | undefined): void {
    const value = node?.value;
    if (value === this.#value) return;
    this.#value = value;
    this.#onChange(value);
  }
}

/** Name and one annotation of a Node; null when the object has no name. */
function trimNode(value: unknown, annotation: string): NodeAnnotation | null {
  const metadata = (value as { metadata?: { name?: unknown; annotations?: unknown } } | null)
    ?.metadata;
  if (typeof metadata?.name !== "string") return null;
  const raw = (metadata.annotations as Record<string, unknown> | undefined)?.[annotation];
  return { name: metadata.name, value: typeof raw === "string" ? raw : undefined };
}

/** A 403's hint names what the node watch needs (the client's names the pods' RBAC). */
function rbacHint(error: unknown): string {
  const message = ((error as Error).message ?? String(error)).replace(/ \(RBAC: .*\)$/, "");
  if (!(error instanceof KubeApiError && error.status === 403)) return message;
  return `${message} (RBAC: the service account needs get/list/watch on nodes; see the README's ` +
    "node power budget section, or turn the node budget annotation off)";
}
