/**
 * Each shipped permission set (file: baked into the binary; kubernetes: the container command)
 * denies what the agent must never do, while allowing what it needs. The probe runs under the
 * exact flags (see shipped_sets.ts for the parameterised paths).
 */
import { deepStrictEqual, equal } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import type { ProbeOp, ProbeOutcome } from "./probe.ts";
import { freePort, runDeno, type ShippedSet, shippedSets } from "./shipped_sets.ts";

const PROBE = fileURLToPath(new URL("./probe.ts", import.meta.url));

/** A system library that is not NVML (dlopen must be denied). */
function otherLibrary(): string {
  for (
    const path of [
      "/lib/x86_64-linux-gnu/libc.so.6",
      "/lib/aarch64-linux-gnu/libc.so.6",
      "/usr/lib64/libc.so.6",
      "/lib64/libc.so.6",
    ]
  ) {
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // next
    }
  }
  throw new Error("no libc.so.6 found to probe dlopen with");
}

async function runProbe(set: ShippedSet, ops: ProbeOp[]): Promise<Record<string, ProbeOutcome>> {
  const result = await runDeno([...set.runArgs, PROBE, JSON.stringify(ops)], {
    SECRET_TOKEN: "s3cr3t",
  });
  equal(result.code, 0, `probe failed under the ${set.name} set:\n${result.stderr}`);
  return JSON.parse(result.stdout.trim().split("\n").at(-1)!);
}

function mustBeDenied(set: ShippedSet): ProbeOp[] {
  const otherPort = freePort();
  return [
    { label: "read /etc/shadow", op: "read", path: "/etc/shadow" },
    { label: "read /etc/passwd", op: "read", path: "/etc/passwd" },
    { label: "write outside the state dir", op: "write", path: `${set.dir}/outside.txt` },
    { label: "write /etc", op: "write", path: "/etc/gpu-power-agent-probe" },
    { label: "write next to the caps file", op: "write", path: `${set.capsFile}.new` },
    { label: "connect to another port", op: "connect", hostname: "127.0.0.1", port: otherPort },
    { label: "connect to another host", op: "connect", hostname: "127.0.0.2", port: 443 },
    { label: "listen elsewhere", op: "listen", hostname: "127.0.0.1", port: otherPort },
    { label: "read unlisted env HOME", op: "env", name: "HOME" },
    { label: "read unlisted env SECRET_TOKEN", op: "env", name: "SECRET_TOKEN" },
    { label: "spawn a subprocess", op: "run", command: "true" },
    { label: "spawn sh", op: "run", command: "/bin/sh" },
    { label: "dlopen another library", op: "dlopen", path: otherLibrary() },
    { label: "os release", op: "sys", api: "osRelease" },
    { label: "hostname", op: "sys", api: "hostname" },
  ];
}

function mustBeAllowed(set: ShippedSet): ProbeOp[] {
  const ops: ProbeOp[] = [
    { label: "write the journal", op: "write", path: `${set.stateDir}/journal.json` },
    { label: "read the journal", op: "read", path: `${set.stateDir}/journal.json` },
    { label: "dlopen NVML", op: "dlopen", path: set.lib },
    {
      label: "listen on the metrics address",
      op: "listen",
      hostname: "127.0.0.1",
      port: set.metricsPort,
    },
    { label: "read a flag variable", op: "env", name: "GPU_POWER_AGENT_STATE_DIR" },
    { label: "read NVML_LIBRARY_PATH", op: "env", name: "NVML_LIBRARY_PATH" },
  ];
  if (set.name === "file") {
    ops.push({ label: "read the caps file", op: "read", path: set.capsFile });
  } else {
    ops.push(
      { label: "read the proc root", op: "read", path: `${set.procRoot}/missing/cgroup` },
      { label: "read the SA token", op: "read", path: `${set.serviceAccountDir}/token` },
      {
        label: "connect to the API server",
        op: "connect",
        hostname: "127.0.0.1",
        port: set.apiPort,
      },
      { label: "read KUBERNETES_SERVICE_HOST", op: "env", name: "KUBERNETES_SERVICE_HOST" },
    );
  }
  return ops;
}

for (const name of ["file", "kubernetes"] as const) {
  Deno.test(`${name} permission set denies what the agent must never do`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "gpa-sandbox-" });
    try {
      const set = (await shippedSets(dir))[name];
      const denied = mustBeDenied(set);
      const allowed = mustBeAllowed(set);
      const results = await runProbe(set, [...denied, ...allowed]);
      const expected: Record<string, ProbeOutcome> = {};
      for (const op of denied) expected[op.label] = "denied";
      for (const op of allowed) expected[op.label] = "allowed";
      deepStrictEqual(results, expected);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("file permission set: the caps file's directory is readable, not writable", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpa-sandbox-" });
  try {
    const set = (await shippedSets(dir)).file;
    const etc = set.capsFile.slice(0, set.capsFile.lastIndexOf("/"));
    await Deno.writeTextFile(`${etc}/other.yaml`, "version: 1\n");
    const results = await runProbe(set, [
      { label: "read a sibling (rename target)", op: "read", path: `${etc}/other.yaml` },
      { label: "write the caps file", op: "write", path: set.capsFile },
    ]);
    deepStrictEqual(results, {
      "read a sibling (rename target)": "allowed",
      "write the caps file": "denied",
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
