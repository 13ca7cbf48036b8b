/**
 * The systemd unit, run for real: `systemd-nspawn` boots systemd (PID 1 of a throw-away container
 * over this machine's /usr, `--volatile=yes`), the unit is installed there by `systemd/install.sh`
 * unchanged, and `tests/deploy/systemd_nspawn_driver.sh` drives it with systemctl against the
 * fake NVML: start applies the caps, `systemctl reload` re-reads the caps file, `systemctl stop`
 * restores every baseline, `kill -9` of the main PID → `ExecStopPost` restores, the hardening is
 * in force (bounding set CAP_SYS_ADMIN only, NoNewPrivs, read-only /etc, writable state dir) and
 * the agent's journal holds no warning.
 *
 * No compiled binary can be built here (no denort), so /usr/local/bin/gpu-power-agent is a
 * two-line wrapper that runs `deno run --no-config <the flags baked into the binary>` of the
 * agent's bundle (`deno task bundle`, what `deno task compile` compiles): the same code,
 * permission set, V8 flags and `--quiet` as the binary (`bakedFlags()`).
 * The only additions to the installed unit are a drop-in pointing the fake NVML at its state
 * file (`FAKE_NVML_STATE`, `ReadWritePaths=` for it) and `DENO_DIR` at the read-only module cache.
 *
 * Needs `systemd-nspawn` (Debian `systemd-container`), `nsenter`, and root; fails with the reason,
 * never skips, when the container cannot boot.
 *
 * @module
 */
import { deepStrictEqual, doesNotMatch, equal, match, ok } from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { bakedFlags } from "../../src/permissions/compile.ts";
import { SYSTEMD_LAYOUT } from "../../src/permissions/layouts.ts";
import { buildFakeNvml } from "../fake_nvml/build.ts";
import { makeFakeState, writeFakeState } from "../helpers/fake_state.ts";
import { agentBundle } from "../helpers/agent_bundle.ts";

const REPO = fileURLToPath(new URL("../../", import.meta.url)).replace(/\/$/, "");
const DRIVER = `${REPO}/tests/deploy/systemd_nspawn_driver.sh`;
/**
 * Where the checkout appears in the container. Not its host path: the container's systemd mounts
 * a tmpfs on /tmp (and /var/tmp), which would hide a checkout that lives there (a CI clone).
 */
/** The agent's bundle in the container (the wrapper "binary" runs its main.js). */
const BUNDLE_IN_CONTAINER = "/opt/gpu-power-agent-bundle";
/** Where the agent finds the fake library: one of the driver directories the binary searches. */
const NVML_IN_CONTAINER = "/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1";
const BOOT_TIMEOUT_MS = 150_000;

async function output(cmd: string, args: string[]): Promise<string> {
  let out;
  try {
    out = await new Deno.Command(cmd, { args, stdin: "null" }).output();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new Error(`${cmd} not found: install the Debian package systemd-container`);
    }
    throw error;
  }
  const text = new TextDecoder().decode(out.stdout);
  if (out.code !== 0) {
    throw new Error(
      `${cmd} ${args.join(" ")} exited ${out.code}: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return text;
}

/** Deno's module cache directory (`deno info --json`), bound read-only into the container. */
async function denoDir(): Promise<string> {
  const info = JSON.parse(await output(Deno.execPath(), ["info", "--json"])) as {
    denoDir: string;
  };
  return info.denoDir;
}

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

interface Booted {
  /** Driver step name → `ok` | `timeout` | `failed <why>`. */
  steps: Map<string, string>;
  /** Host directory bound to /out in the container (inside the test's temp directory). */
  out: string;
}

/** Install the unit into an /etc overlay, boot the container, let the driver run, collect /out. */
async function bootAndDrive(): Promise<Booted> {
  if (Deno.uid() !== 0) throw new Error("systemd-nspawn needs root; run the tests as root");
  await output("systemd-nspawn", ["--version"]);
  const lib = await buildFakeNvml();
  const tmp = await Deno.makeTempDir({ prefix: "gpa-nspawn-" });
  const [root, bin, out, fake, driverDir] = ["root", "bin", "out", "fake", "driver"].map((d) =>
    `${tmp}/${d}`
  );
  for (const d of [root, bin, out, fake, driverDir]) await Deno.mkdir(d, { recursive: true });

  // The "binary": deno run with exactly the flags `deno task compile` bakes in.
  const denoBin = Deno.execPath();
  const wrapper = `${bin}/gpu-power-agent`;
  await Deno.writeTextFile(
    wrapper,
    `#!/bin/sh\nexec /opt/deno/${denoBin.split("/").pop()} run --cached-only --no-config ${
      bakedFlags().map(shellQuote).join(" ")
    } ${BUNDLE_IN_CONTAINER}/main.js "$@"\n`,
  );
  await Deno.chmod(wrapper, 0o755);
  const install = await new Deno.Command("sh", {
    args: [`${REPO}/systemd/install.sh`, "--binary", wrapper],
    env: { DESTDIR: root, PATH: "/usr/bin:/bin" },
    stdin: "null",
  }).output();
  equal(install.code, 0, new TextDecoder().decode(install.stderr));
  await Deno.writeTextFile(
    `${root}${SYSTEMD_LAYOUT.capsFile}`,
    "version: 1\ngpus:\n  - index: 0\n    watts: 250\n  - index: 1\n    watts: 300\n",
  );
  writeFakeState(`${fake}/state.json`, makeFakeState(2));

  const units = `${root}/etc/systemd/system`;
  await Deno.mkdir(`${units}/gpu-power-agent.service.d`, { recursive: true });
  await Deno.writeTextFile(
    `${units}/gpu-power-agent.service.d/fake-nvml.conf`,
    "[Service]\n" +
      "Environment=FAKE_NVML_STATE=/var/lib/fake-nvml/state.json " +
      "FAKE_NVML_LOG=/var/lib/fake-nvml/set.log DENO_DIR=/opt/deno-dir DENO_NO_UPDATE_CHECK=1\n" +
      "ReadWritePaths=/var/lib/fake-nvml\n",
  );
  await Deno.copyFile(DRIVER, `${driverDir}/driver.sh`);
  await Deno.chmod(`${driverDir}/driver.sh`, 0o755);
  await Deno.writeTextFile(
    `${units}/test-driver.service`,
    "[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\n" +
      "ExecStart=/bin/sh -c '/opt/driver/driver.sh >/out/driver.log 2>&1; systemctl poweroff'\n",
  );
  await Deno.mkdir(`${units}/multi-user.target.wants`, { recursive: true });
  await Deno.symlink(
    "../test-driver.service",
    `${units}/multi-user.target.wants/test-driver.service`,
  );

  const denoDirPath = await denoDir();
  const args = [
    "-D",
    "/",
    "--volatile=yes",
    "--keep-unit",
    "--register=no",
    "--private-network",
    `--overlay=/etc:${root}/etc:/etc`,
    `--bind-ro=${bin}:/usr/local/bin`,
    `--bind-ro=${driverDir}:/opt/driver`,
    `--bind=${out}:/out`,
    `--bind=${fake}:/var/lib/fake-nvml`,
    `--bind-ro=${(await agentBundle()).dir}:${BUNDLE_IN_CONTAINER}`,
    `--bind-ro=${denoBin.slice(0, denoBin.lastIndexOf("/"))}:/opt/deno`,
    `--bind-ro=${denoDirPath}:/opt/deno-dir`,
    `--bind-ro=${lib}:${NVML_IN_CONTAINER}`,
    "-b",
  ];
  // Boot; the driver unit powers the container off when it is done.
  const child = new Deno.Command("systemd-nspawn", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { SYSTEMD_COLORS: "0" },
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), BOOT_TIMEOUT_MS);
  const result = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  const consoleText = dec.decode(result.stdout) + dec.decode(result.stderr);
  let stepsText = "";
  try {
    stepsText = await Deno.readTextFile(`${out}/steps.txt`);
  } catch {
    throw new Error(
      `systemd-nspawn (exit ${result.code}) ran no driver step: the container did not boot ` +
        `or the driver unit did not start.\n${consoleText.slice(-4000)}`,
    );
  }
  const steps = new Map<string, string>();
  for (const line of stepsText.split("\n")) {
    const m = /^STEP (\S+) (.*)$/.exec(line);
    if (m) steps.set(m[1], m[2]);
  }
  return { steps, out };
}

Deno.test({
  name: "systemd (nspawn): start caps, reload re-reads, stop and kill -9 restore, hardening holds",
  // The container's own processes (systemd, journald) are outside this process: no leaks here.
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const { steps, out } = await bootAndDrive();
    try {
      assertScenario(steps, out);
    } finally {
      await Deno.remove(out.slice(0, out.lastIndexOf("/")), { recursive: true });
    }
  },
});

function assertScenario(steps: Map<string, string>, out: string): void {
  const read = (name: string) => Deno.readTextFileSync(`${out}/${name}`);
  const tail = (name: string) => {
    try {
      return read(name).slice(-3000);
    } catch {
      return "(none)";
    }
  };
  const context = () =>
    `steps: ${JSON.stringify([...steps])}\n--- driver.log\n${tail("driver.log")}\n` +
    `--- journal\n${tail("journal.txt")}`;
  for (
    const name of [
      "start-applied",
      "etc-read-only",
      "state-writable",
      "reload-applied",
      "stop-restored",
      "restart-applied",
      "kill9-restored",
      "kill9-reapplied",
      "final-stop",
      "done",
    ]
  ) {
    equal(steps.get(name), "ok", `step ${name}: ${steps.get(name)}\n${context()}`);
  }

  // Bounding set CAP_SYS_ADMIN (bit 21) only, no_new_privs.
  const status = read("proc-status.txt");
  match(status, /^CapBnd:\s+0000000000200000$/m, status);
  match(status, /^NoNewPrivs:\s+1$/m, status);
  const etcWrite = read("etc-write.txt");
  match(etcWrite, /\/etc\/probe: Read-only file system/, etcWrite);
  match(etcWrite, /\/etc\/gpu-power-agent\/probe: Read-only file system/, etcWrite);
  equal(read("after-stop.txt").trim(), "inactive");

  const journal = read("journal.txt");
  match(journal, /SIGHUP: reloading the caps source/, context());
  match(journal, /SIGTERM: stopping; restoring every GPU/, context());
  // ExecStopPost after kill -9: the restore command put both GPUs back.
  match(journal, /Main process exited, code=killed, status=9\/KILL/, context());
  match(journal, /400 W → 700 W \(restore to baseline: restore command\)/, context());
  // A clean journal from the agent: no Deno warning (e.g. "Failed to compile FFI turbocall" per
  // NVML symbol under MemoryDenyWriteExecute), no warning or error logged by the agent. (systemd's
  // own lines, e.g. about cgroup v1 on this host, are not the agent's.)
  doesNotMatch(
    journal,
    /turbocall|^Warning|^error: |\b(?:WARN|ERROR)\s+gpu-power-agent|NotCapable|panicked/m,
    context(),
  );

  // The set log as the fake NVML wrote it: caps, reload, stop, restart, kill -9 restore, restart.
  const sets = read("set.log").trim().split("\n").map((l) => l.split(" ").slice(2).join(" "));
  const gpu0 = sets.filter((s) => s.startsWith("GPU-00000000-0000-0000-0000-000000000000"))
    .map((s) => Number(s.split(" ")[1]) / 1000);
  deepStrictEqual(gpu0, [250, 400, 700, 400, 700, 400, 700], sets.join("\n"));
  ok(sets.length >= 12, sets.join("\n"));
}
