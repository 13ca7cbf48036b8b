/**
 * Sandbox probe: run under a permission set, it attempts each operation given as JSON in
 * `Deno.args[0]` and prints one JSON object `{ "<label>": outcome }`, where outcome is
 * `"allowed"` (the operation passed Deno's permission check: it succeeded or failed for another
 * reason, e.g. connection refused), `"denied"` (Deno threw NotCapable) or `"error: <name>"`
 * (something else went wrong before the check could be observed).
 *
 * @module
 */

/** One operation the probe attempts. */
export type ProbeOp =
  | { label: string; op: "read"; path: string }
  | { label: string; op: "write"; path: string }
  | { label: string; op: "listen"; hostname: string; port: number }
  | { label: string; op: "connect"; hostname: string; port: number }
  | { label: string; op: "env"; name: string }
  | { label: string; op: "run"; command: string }
  | { label: string; op: "dlopen"; path: string }
  | { label: string; op: "sys"; api: "osRelease" | "hostname" | "networkInterfaces" };

/** Outcome of one operation. */
export type ProbeOutcome = "allowed" | "denied" | `error: ${string}`;

async function attempt(op: ProbeOp): Promise<void> {
  switch (op.op) {
    case "read":
      await Deno.readFile(op.path);
      return;
    case "write":
      await Deno.writeTextFile(op.path, "probe\n");
      return;
    case "listen": {
      const listener = Deno.listen({ hostname: op.hostname, port: op.port });
      listener.close();
      return;
    }
    case "connect": {
      const conn = await Deno.connect({ hostname: op.hostname, port: op.port });
      conn.close();
      return;
    }
    case "env":
      Deno.env.get(op.name);
      return;
    case "run":
      await new Deno.Command(op.command, { stdout: "null", stderr: "null" }).output();
      return;
    case "dlopen":
      Deno.dlopen(op.path, {}).close();
      return;
    case "sys":
      Deno[op.api]();
      return;
  }
}

/** Attempt `op` and classify the result. */
export async function probe(op: ProbeOp): Promise<ProbeOutcome> {
  try {
    await attempt(op);
    return "allowed";
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) return "denied";
    // Past the permission check: the OS or the peer said no (refused, missing file, ...).
    if (
      error instanceof Deno.errors.ConnectionRefused || error instanceof Deno.errors.NotFound ||
      error instanceof Deno.errors.AddrInUse
    ) {
      return "allowed";
    }
    return `error: ${(error as Error).name}: ${(error as Error).message}`;
  }
}

if (import.meta.main) {
  const ops = JSON.parse(Deno.args[0]) as ProbeOp[];
  const results: Record<string, ProbeOutcome> = {};
  for (const op of ops) results[op.label] = await probe(op);
  console.log(JSON.stringify(results));
}
