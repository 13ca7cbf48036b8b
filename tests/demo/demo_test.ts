import { equal, ok } from "node:assert/strict";
import { bannerText, useColor } from "./demo.ts";
import { REPO_ROOT } from "../helpers/agent_process.ts";

Deno.test("demo headings: bold only on a terminal without NO_COLOR", () => {
  equal(useColor({ isTerminal: true }), true);
  equal(useColor({ isTerminal: true, noColor: "" }), true);
  equal(useColor({ isTerminal: true, noColor: "1" }), false);
  equal(useColor({ isTerminal: false }), false);
  equal(bannerText("status", true), "\n\x1b[1m== status\x1b[0m");
  equal(bannerText("status", false), "\n== status");
});

Deno.test("deno task demo into a pipe prints no ANSI escapes", async () => {
  const env: Record<string, string> = { ...Deno.env.toObject(), DENO_NO_UPDATE_CHECK: "1" };
  delete env.NO_COLOR;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "demo"],
    cwd: REPO_ROOT,
    env,
    clearEnv: true,
    stdin: "null",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  equal(out.code, 0, new TextDecoder().decode(out.stderr));
  ok(stdout.includes("\n== status after the agent"), stdout);
  ok(!stdout.includes("\x1b"), `ANSI escape in piped output:\n${JSON.stringify(stdout)}`);
});
