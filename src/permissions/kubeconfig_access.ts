/**
 * What a kubeconfig makes the agent touch: the files it references (CA, client certificate and
 * key, token file) and the addresses it connects to (API server, proxy). The launcher turns
 * these into `--allow-read` and `--allow-net` entries. The kubeconfig is read by the agent's
 * own loader (`sources/kubeconfig.ts`), so the launcher refuses exactly what the agent would.
 *
 * @module
 */

import {
  inClusterServer,
  KubeConfigError,
  resolveKubeconfig,
  serverHostPort as hostPort,
} from "../sources/kubeconfig.ts";

/** Files and addresses a kubeconfig's current context needs. */
export interface KubeconfigAccess {
  /** Absolute paths of the files the current context references. */
  files: string[];
  /** `host:port` of the API server and of its proxy, if any. */
  servers: string[];
}

/** A kubeconfig the agent cannot use under its permission set. */
export class KubeconfigAccessError extends Error {
  override name = "KubeconfigAccessError";
}

function rethrow(error: unknown): never {
  if (error instanceof KubeConfigError) {
    throw new KubeconfigAccessError(error.message, { cause: error });
  }
  throw error;
}

/** `https://host:port/…` → `host:port` (default port 443 for https, 80 for http). */
export function serverHostPort(server: string, what = "server"): string {
  try {
    return hostPort(server, what);
  } catch (error) {
    rethrow(error);
  }
}

/** `host:port` the agent connects to in a pod (IPv6 bracketed), as the agent's loader builds it. */
export function inClusterHostPort(host: string, port: string): string {
  return serverHostPort(inClusterServer(host, port));
}

/**
 * Reads the kubeconfig file(s) (merged like kubectl: the first file to define a name wins) and
 * returns what the current context needs. Relative file references are resolved against the
 * kubeconfig that holds them. Throws {@linkcode KubeconfigAccessError} for an unreadable file,
 * no current context, and everything the agent's loader refuses (exec / auth-provider plugins:
 * the agent never gets subprocess permission; basic auth; https without verification).
 */
export async function kubeconfigAccess(paths: readonly string[]): Promise<KubeconfigAccess> {
  try {
    const config = await resolveKubeconfig(paths);
    const servers = [hostPort(config.server)];
    if (config.proxyUrl) servers.push(hostPort(config.proxyUrl, "proxy-url"));
    return { files: config.files, servers: [...new Set(servers)] };
  } catch (error) {
    rethrow(error);
  }
}
