/**
 * Informer for the pods of one node: the list/watch loop of `kubernetes_list_watch.ts` over
 * `spec.nodeName=<node>` (optionally in one namespace), with pods trimmed to the fields the agent
 * reads (`KubePod`) as they are parsed.
 */
import type { KubeClient } from "./kubernetes_client.ts";
import {
  ListWatch,
  type ListWatchHandlers,
  type ListWatchTuning,
} from "./kubernetes_list_watch.ts";
import type { ContainerResourceSpec } from "./pod_resources_devices.ts";

/** The fields of a core/v1 Pod the agent reads. */
export interface KubePod {
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    resourceVersion?: string;
    annotations?: Record<string, string>;
    deletionTimestamp?: string;
  };
  spec?: {
    nodeName?: string;
    /** Read for their GPU resource requests (PodResources mapping: which pods to wait for). */
    containers?: ContainerResourceSpec[];
    initContainers?: ContainerResourceSpec[];
  };
  status?: { phase?: string };
}

/** Options of `PodInformer`. */
export interface PodInformerOptions extends ListWatchTuning {
  nodeName: string;
  /** Watch only this namespace (matches namespace-scoped RBAC). */
  namespace?: string;
  handlers: ListWatchHandlers<KubePod>;
  /**
   * Annotations kept on each pod (the rest are dropped as pods are parsed); default: all.
   */
  annotationKeys?: readonly string[];
}

/** Pod informer for one node: the list/watch loop over its pods. `start()` once, `stop()` to end. */
export class PodInformer extends ListWatch<KubePod> {
  constructor(client: KubeClient, options: PodInformerOptions) {
    const { nodeName, namespace, annotationKeys, ...tuning } = options;
    super(client, {
      ...tuning,
      path: namespace ? `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods` : "/api/v1/pods",
      fieldSelector: `spec.nodeName=${nodeName}`,
      trim: (value) => trimPod(value, annotationKeys),
      noun: "pod",
      source: "kubernetes",
      whileFailing: "caps stay as they are",
    });
  }

  /** Path of the pods collection this informer reads. */
  get podsPath(): string {
    return this.path;
  }
}

/**
 * The fields of a Pod the agent reads, copied out of a parsed object so the rest can be
 * collected (`annotationKeys`: the annotations to keep; all when undefined). Null when the
 * object is not a pod (no uid, name or namespace).
 */
export function trimPod(value: unknown, annotationKeys?: readonly string[]): KubePod | null {
  const object = value as {
    metadata?: Record<string, unknown>;
    spec?: Record<string, unknown>;
    status?: Record<string, unknown>;
  } | null;
  const m = object?.metadata;
  if (
    typeof m !== "object" || m === null || typeof m.uid !== "string" ||
    typeof m.name !== "string" || typeof m.namespace !== "string"
  ) {
    return null;
  }
  const metadata: KubePod["metadata"] = { name: m.name, namespace: m.namespace, uid: m.uid };
  if (typeof m.resourceVersion === "string") metadata.resourceVersion = m.resourceVersion;
  if (typeof m.deletionTimestamp === "string") metadata.deletionTimestamp = m.deletionTimestamp;
  const annotations = m.annotations as Record<string, unknown> | undefined;
  if (typeof annotations === "object" && annotations !== null) {
    const kept: Record<string, string> = {};
    let any = false;
    for (const key of annotationKeys ?? Object.keys(annotations)) {
      const v = annotations[key];
      if (typeof v === "string") {
        kept[key] = v;
        any = true;
      }
    }
    if (any) metadata.annotations = kept;
  }
  const pod: KubePod = { metadata };
  const nodeName = object?.spec?.nodeName;
  if (typeof nodeName === "string") pod.spec = { nodeName };
  // Which extended resources (GPUs, MIG devices) the containers ask for: a GPU pod's event makes
  // the PodResources mapping ask the kubelet for its devices. cpu/memory are not kept.
  for (const field of ["containers", "initContainers"] as const) {
    const kept = trimContainers(object?.spec?.[field]);
    if (kept) pod.spec = { ...pod.spec, [field]: kept };
  }
  const phase = object?.status?.phase;
  if (typeof phase === "string") pod.status = { phase };
  return pod;
}

/** Containers reduced to their extended-resource (`vendor/name`) limits and requests; null if none. */
function trimContainers(value: unknown): ContainerResourceSpec[] | null {
  if (!Array.isArray(value)) return null;
  const out: ContainerResourceSpec[] = [];
  for (const container of value) {
    const resources = (container as { resources?: Record<string, unknown> } | null)?.resources;
    const limits = extendedResources(resources?.limits);
    const requests = extendedResources(resources?.requests);
    if (limits || requests) {
      out.push({ resources: { ...(limits ? { limits } : {}), ...(requests ? { requests } : {}) } });
    }
  }
  return out.length > 0 ? out : null;
}

function extendedResources(value: unknown): Record<string, string> | null {
  if (typeof value !== "object" || value === null) return null;
  let kept: Record<string, string> | null = null;
  for (const [name, quantity] of Object.entries(value)) {
    if (name.includes("/") && (typeof quantity === "string" || typeof quantity === "number")) {
      (kept ??= {})[name] = String(quantity);
    }
  }
  return kept;
}
