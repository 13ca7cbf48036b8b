import assert from "node:assert/strict";
import { podUidFromCgroup, readPodUidOfPid } from "../../src/sources/cgroup.ts";

const UID = "cafe0001-dead-0002-beef-0003";

const MAPPED: Array<[string, string]> = [
  [
    "v1 systemd guaranteed containerd",
    "11:devices:/kubepods.slice/kubepods-podcafe0001_dead_0002_beef_0003.slice/cri-containerd-abc.scope",
  ],
  [
    "v1 systemd besteffort containerd",
    "10:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podcafe0001_dead_0002_beef_0003.slice/cri-containerd-abc.scope",
  ],
  [
    "v1 cgroupfs burstable docker",
    "10:memory:/kubepods/burstable/podcafe0001-dead-0002-beef-0003/abc123",
  ],
  ["v2 cgroupfs containerd", "0::/kubepods/podcafe0001-dead-0002-beef-0003/cri-containerd-abc"],
  [
    "v2 systemd burstable cri-o",
    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podcafe0001_dead_0002_beef_0003.slice/crio-0123abcd.scope",
  ],
  [
    "v1 cgroupfs besteffort cri-o",
    "4:pids:/kubepods/besteffort/podcafe0001-dead-0002-beef-0003/crio-0123abcd",
  ],
  [
    "v2 cgroup namespace relative path",
    "0::/../../kubepods-besteffort-podcafe0001_dead_0002_beef_0003.slice/cri-containerd-abc.scope",
  ],
  [
    "kind / kubelet-in-docker nesting",
    "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-podcafe0001_dead_0002_beef_0003.slice/cri-containerd-abc.scope",
  ],
  [
    "first match wins across lines (v1, pod on a later line)",
    [
      "12:pids:/system.slice/containerd.service",
      "11:devices:/kubepods/burstable/podcafe0001-dead-0002-beef-0003/abc",
      "10:memory:/kubepods/burstable/pod11111111-2222-3333-4444-555555555555/abc",
      "",
    ].join("\n"),
  ],
];

for (const [name, text] of MAPPED) {
  Deno.test(`podUidFromCgroup: ${name}`, () => {
    assert.equal(podUidFromCgroup(text), UID);
  });
}

Deno.test("podUidFromCgroup: keeps the UID's case", () => {
  assert.equal(
    podUidFromCgroup("0::/kubepods/podCAFE0001-DEAD-0002-BEEF-0003/abc"),
    "CAFE0001-DEAD-0002-BEEF-0003",
  );
});

Deno.test("podUidFromCgroup: static pod hash UID", () => {
  assert.equal(
    podUidFromCgroup(
      "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0123456789abcdef0123456789abcdef.slice/cri-containerd-x.scope",
    ),
    "0123456789abcdef0123456789abcdef",
  );
});

const UNMAPPED: Array<[string, string]> = [
  ["host service", "11:devices:/system.slice/kubelet.service"],
  ["empty file", ""],
  ["v2 root", "0::/"],
  ["user session", "0::/user.slice/user-1000.slice/session-3.scope"],
  ["pod-like segment outside kubepods", "0::/system.slice/podcafe0001-dead-0002-beef-0003"],
  ["kubepods QoS slice without pod", "0::/kubepods.slice/kubepods-burstable.slice"],
  ["malformed UID", "0::/kubepods/podnot-a-uid/abc"],
  ["garbage", "no colons here\n:::\n"],
];

for (const [name, text] of UNMAPPED) {
  Deno.test(`podUidFromCgroup: ${name} → null`, () => {
    assert.equal(podUidFromCgroup(text), null);
  });
}

Deno.test("readPodUidOfPid: reads <procRoot>/<pid>/cgroup; vanished pid → undefined", async () => {
  const root = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${root}/42`);
    await Deno.writeTextFile(`${root}/42/cgroup`, `0::/kubepods/pod${UID}/abc\n`);
    await Deno.mkdir(`${root}/43`);
    await Deno.writeTextFile(`${root}/43/cgroup`, "0::/system.slice/sshd.service\n");
    assert.equal(readPodUidOfPid(root, 42), UID);
    assert.equal(readPodUidOfPid(root, 43), null);
    assert.equal(readPodUidOfPid(root, 44), undefined);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("readPodUidOfPid: a FIFO, /dev/zero or an oversized file → undefined at once (bounded, never blocks)", async () => {
  const root = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${root}/50`);
    const made = await new Deno.Command("mkfifo", { args: [`${root}/50/cgroup`] }).output();
    assert.equal(made.code, 0, "mkfifo is needed by this test");
    await Deno.mkdir(`${root}/51`);
    await Deno.symlink("/dev/zero", `${root}/51/cgroup`);
    await Deno.mkdir(`${root}/52`);
    // Over 64 KiB, with a pod line at the end that an unbounded read would find.
    await Deno.writeTextFile(
      `${root}/52/cgroup`,
      "1:cpu:/x\n".repeat(8000) + `0::/kubepods/pod${UID}/abc\n`,
    );
    assert.equal(readPodUidOfPid(root, 50), undefined);
    assert.equal(readPodUidOfPid(root, 51), undefined);
    assert.equal(readPodUidOfPid(root, 52), undefined);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
