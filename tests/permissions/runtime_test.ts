import assert from "node:assert/strict";
import { AGENT_V8_FLAGS, collectGarbage } from "../../src/permissions/runtime.ts";

Deno.test("runtime: the agent's flags expose a full collection; collectGarbage is a no-op without them", async () => {
  // This test process runs without --expose-gc: nothing to call, nothing thrown.
  assert.equal(typeof (globalThis as { gc?: unknown }).gc, "undefined");
  collectGarbage();
  const code = `import { collectGarbage } from ${
    JSON.stringify(
      new URL("../../src/permissions/runtime.ts", import.meta.url).href,
    )
  };
    const before = typeof globalThis.gc;
    collectGarbage();
    console.log(before, typeof WebAssembly);`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", `--v8-flags=${AGENT_V8_FLAGS.join(",")}`, code],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  // gc() is there; WebAssembly is not (--lite-mode implies --jitless).
  assert.equal(new TextDecoder().decode(out.stdout).trim(), "function undefined");
});
