/**
 * Map a process to the Kubernetes pod it runs in, from `/proc/<pid>/cgroup`.
 *
 * Handles cgroup v1 (one line per hierarchy; the first line naming a pod wins) and v2
 * (`0::/…`), the systemd cgroup driver
 * (`…/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/…`) and the
 * cgroupfs driver (`/kubepods/burstable/pod<uid>/…`), every QoS class, and any runtime
 * (containerd `cri-containerd-….scope`, cri-o `crio-…`, docker): only the pod segment matters.
 * Paths relative to a cgroup namespace (`0::/../../kubepods-…`) work too.
 */
import { READ_LIMITS, readBoundedTextSync } from "../state/bounded_read.ts";

/**
 * Pod UIDs are UUIDs (`8-4-4-4-12` hex) or, for static pods, a 32-hex-digit hash; accept any
 * dash-separated hex of a sane length so unusual generators still map.
 */
const UID_SHAPE = /^[0-9a-fA-F]+(?:-[0-9a-fA-F]+)*$/;
/** systemd driver: `kubepods-pod<uid>.slice`, `kubepods-besteffort-pod<uid>.slice`, … */
const SYSTEMD_POD = /^(?:[A-Za-z0-9_.-]*-)?pod([0-9a-fA-F_-]+)\.slice$/;
/** cgroupfs driver: `pod<uid>`. */
const CGROUPFS_POD = /^pod([0-9a-fA-F-]+)$/;

function normalizeUid(raw: string): string | null {
  // systemd escapes `-` in unit names, so the kubelet writes the UID with underscores.
  const uid = raw.replaceAll("_", "-");
  return uid.length >= 8 && uid.length <= 64 && UID_SHAPE.test(uid) ? uid : null;
}

function podUidFromPath(path: string): string | null {
  let underKubepods = false;
  for (const segment of path.split("/")) {
    if (segment.includes("kubepods")) {
      underKubepods = true;
    }
    if (!underKubepods) continue;
    const match = SYSTEMD_POD.exec(segment) ?? CGROUPFS_POD.exec(segment);
    if (match) {
      const uid = normalizeUid(match[1]);
      if (uid) return uid;
    }
  }
  return null;
}

/**
 * The pod UID named by the content of a `/proc/<pid>/cgroup` file, in the case the kubelet
 * wrote it, or null when no line names a Kubernetes pod. Pure.
 */
export function podUidFromCgroup(text: string): string | null {
  for (const line of text.split("\n")) {
    // `hierarchy-ID:controller-list:cgroup-path`; the path itself may contain `:`.
    const first = line.indexOf(":");
    const second = first < 0 ? -1 : line.indexOf(":", first + 1);
    if (second < 0) continue;
    const uid = podUidFromPath(line.slice(second + 1).trim());
    if (uid) return uid;
  }
  return null;
}

/**
 * The pod UID of process `pid` read from `<procRoot>/<pid>/cgroup`: a UID, `null` when the
 * process is not in a pod (host process), or `undefined` when the file cannot be read (the
 * process exited, or we may not read it) or is not a regular file of at most 64 KiB
 * (`READ_LIMITS.cgroup`; `/proc` files report size 0, so the read itself is bounded). Never
 * throws, never blocks on a FIFO.
 */
export function readPodUidOfPid(procRoot: string, pid: number): string | null | undefined {
  let text: string;
  try {
    const path = `${procRoot}/${pid}/cgroup`;
    text = readBoundedTextSync(path, { limit: READ_LIMITS.cgroup, what: "cgroup file" }).text;
  } catch {
    return undefined;
  }
  return podUidFromCgroup(text);
}
