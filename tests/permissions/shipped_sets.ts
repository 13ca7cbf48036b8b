/**
 * The two shipped permission sets, as `deno run` argument lists a test can execute:
 *
 * - `file`: exactly what `deno task compile` bakes into the binary ({@linkcode bakedFlags}:
 *   `--no-prompt`, permission flags, `--v8-flags=--jitless`) and compiles (the bundle, no config).
 * - `kubernetes`: exactly what the container runs ({@linkcode CONTAINER_RUNTIME_FLAGS} and
 *   {@linkcode containerPermissionSet}, as in the Dockerfile and the DaemonSet).
 *
 * Both run the agent's bundle ({@linkcode ShippedSet.entry}, built from the current sources),
 * as the binary and the image do.
 *
 * Only paths and addresses are parameterised, because a test cannot use the real ones: the
 * state dir, caps file, proc root and service-account dir are temporary directories, the NVML
 * library is the fake one (still passed as a candidate list, like the shipped sets), the metrics
 * address and API server are free loopback ports, and the bundle is built in a temporary
 * directory.
 *
 * @module
 */

import { bakedFlags } from "../../src/permissions/compile.ts";
import {
  CONTAINER_RUNTIME_FLAGS,
  containerPermissionSet,
} from "../../src/permissions/manifests.ts";
import { toDenoFlags } from "../../src/permissions/permission_set.ts";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { agentBundle } from "../helpers/agent_bundle.ts";

/** A free TCP port on 127.0.0.1 (closed again; the test binds it right after). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Temporary paths and the argument prefix of one shipped set. */
export interface ShippedSet {
  name: "file" | "kubernetes";
  dir: string;
  lib: string;
  stateDir: string;
  capsFile: string;
  procRoot: string;
  serviceAccountDir: string;
  metricsPort: number;
  apiPort: number;
  /** `run <runtime + permission flags>` — append the entry point and its arguments. */
  runArgs: string[];
  /** The agent's entry point as shipped: the bundle's `main.js`. */
  entry: string;
}

/** Build both shipped sets over fresh temporary directories below `dir`. */
export async function shippedSets(dir: string): Promise<Record<"file" | "kubernetes", ShippedSet>> {
  const lib = await buildFakeNvml();
  const { entry } = await agentBundle();
  const make = async (name: "file" | "kubernetes"): Promise<ShippedSet> => {
    const base = `${dir}/${name}`;
    const set: Omit<ShippedSet, "runArgs" | "entry"> = {
      name,
      dir: base,
      lib,
      stateDir: `${base}/state`,
      capsFile: `${base}/etc/caps.yaml`,
      procRoot: `${base}/proc`,
      serviceAccountDir: `${base}/serviceaccount`,
      metricsPort: freePort(),
      apiPort: freePort(),
    };
    for (const d of [set.stateDir, `${base}/etc`, set.procRoot, set.serviceAccountDir]) {
      await Deno.mkdir(d, { recursive: true });
    }
    await Deno.writeTextFile(set.capsFile, "version: 1\ndefault: {watts: 300}\n");
    const runArgs = name === "file"
      ? [
        "run",
        ...bakedFlags({
          stateDir: set.stateDir,
          capsFile: set.capsFile,
          metricsAddress: `127.0.0.1:${set.metricsPort}`,
          nvmlLibraryPath: [lib],
        }),
        "--no-config",
      ]
      : [
        "run",
        ...CONTAINER_RUNTIME_FLAGS,
        ...toDenoFlags(containerPermissionSet({
          apiServer: `127.0.0.1:${set.apiPort}`,
          metricsAddress: `127.0.0.1:${set.metricsPort}`,
          stateDir: set.stateDir,
          procRoot: set.procRoot,
          serviceAccountDir: set.serviceAccountDir,
          nvmlLibraryPath: [lib],
        })),
      ];
    return { ...set, runArgs, entry };
  };
  return { file: await make("file"), kubernetes: await make("kubernetes") };
}

/** Run `deno <args>` to completion. */
export async function runDeno(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [...args],
    env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...env },
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
