import assert from "node:assert/strict";
import {
  acquireStateLock,
  LOCK_FILE,
  readLockHolder,
  StateDirError,
  StateLockError,
} from "../../src/state/state_lock.ts";

Deno.test("the lock is exclusive, records the holder's PID and can be taken again once released", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpa-lock-" });
  try {
    const stateDir = `${dir}/state`;
    const lock = acquireStateLock(stateDir, { command: "run" });
    assert.equal((await Deno.stat(stateDir)).mode! & 0o777, 0o700);
    assert.equal(await Deno.readTextFile(`${stateDir}/${LOCK_FILE}`), `${Deno.pid}\n`);
    assert.equal(readLockHolder(stateDir), Deno.pid);
    // flock is per open file: a second open, even in this process, is refused.
    assert.throws(
      () => acquireStateLock(stateDir, { command: "restore" }),
      (e: unknown) =>
        e instanceof StateLockError && e.holderPid === Deno.pid &&
        e.message.startsWith(
          `Cannot restore: the state directory ${stateDir} is in use by gpu-power-agent PID ` +
            `${Deno.pid} `,
        ),
    );
    lock.release();
    lock.release(); // idempotent
    acquireStateLock(stateDir, { command: "run" }).release();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the lock dies with its process (SIGKILL): no stale lock", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpa-lock-" });
  try {
    const holder = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `import { acquireStateLock } from ${
          JSON.stringify(new URL("../../src/state/state_lock.ts", import.meta.url).href)
        };
         acquireStateLock(${JSON.stringify(dir)}, { command: "run" });
         console.log("locked");
         setTimeout(() => {}, 60000);`,
      ],
      stdout: "piped",
    }).spawn();
    const reader = holder.stdout.getReader();
    assert.match(new TextDecoder().decode((await reader.read()).value), /locked/);
    assert.throws(() => acquireStateLock(dir, { command: "run" }), StateLockError);
    holder.kill("SIGKILL");
    await holder.status;
    reader.releaseLock();
    await holder.stdout.cancel();
    acquireStateLock(dir, { command: "run" }).release();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an unusable state dir is a StateDirError naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpa-lock-" });
  try {
    await Deno.writeTextFile(`${dir}/file`, "");
    assert.throws(
      () => acquireStateLock(`${dir}/file/state`, { command: "run" }),
      (e: unknown) =>
        e instanceof StateDirError &&
        e.message.startsWith(`State directory ${dir}/file/state is not usable`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
