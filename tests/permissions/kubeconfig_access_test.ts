import { deepStrictEqual, rejects, throws } from "node:assert/strict";
import {
  inClusterHostPort,
  kubeconfigAccess,
  KubeconfigAccessError,
  serverHostPort,
} from "../../src/permissions/kubeconfig_access.ts";
import { kubeconfigText } from "../helpers/kubeconfig_text.ts";

async function withDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "gpa-kubeconfig-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("server URLs map to host:port with scheme default ports", () => {
  deepStrictEqual(serverHostPort("https://10.96.0.1"), "10.96.0.1:443");
  deepStrictEqual(serverHostPort("http://127.0.0.1:8080/prefix"), "127.0.0.1:8080");
  deepStrictEqual(serverHostPort("https://[fd00::1]:6443"), "[fd00::1]:6443");
  throws(() => serverHostPort("not a url"), KubeconfigAccessError);
});

Deno.test("current context: server, proxy and referenced files (relative to the kubeconfig)", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/config`,
      `apiVersion: v1
kind: Config
current-context: prod
clusters:
  - name: prod
    cluster:
      server: https://api.prod.example:6443
      certificate-authority: certs/ca.crt
      proxy-url: http://proxy.example:3128
  - name: other
    cluster: {server: https://other.example}
users:
  - name: agent
    user:
      client-certificate: /etc/agent/cert.pem
      client-key: certs/key.pem
      tokenFile: token
contexts:
  - name: prod
    context: {cluster: prod, user: agent}
`,
    );
    deepStrictEqual(await kubeconfigAccess([`${dir}/config`]), {
      files: [`${dir}/certs/ca.crt`, "/etc/agent/cert.pem", `${dir}/certs/key.pem`, `${dir}/token`],
      servers: ["api.prod.example:6443", "proxy.example:3128"],
    });
  });
});

Deno.test("several kubeconfig files merge like kubectl: first definition wins", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/a`,
      JSON.stringify({
        "current-context": "x",
        contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
      }),
    );
    await Deno.writeTextFile(
      `${dir}/b`,
      JSON.stringify({
        clusters: [{ name: "c", cluster: { server: "https://b.example:8443" } }],
        users: [{ name: "u", user: { token: "t" } }],
        "current-context": "ignored",
      }),
    );
    deepStrictEqual(await kubeconfigAccess([`${dir}/a`, `${dir}/b`]), {
      files: [],
      servers: ["b.example:8443"],
    });
  });
});

Deno.test("exec plugins, missing contexts and unreadable files are clear errors", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/exec`,
      JSON.stringify({
        "current-context": "x",
        contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
        clusters: [{ name: "c", cluster: { server: "https://a:443" } }],
        users: [{ name: "u", user: { exec: { command: "aws" } } }],
      }),
    );
    await rejects(kubeconfigAccess([`${dir}/exec`]), /exec plugin.*never gets subprocess/);
    await Deno.writeTextFile(`${dir}/none`, "apiVersion: v1\nkind: Config\n");
    await rejects(kubeconfigAccess([`${dir}/none`]), /no usable current-context/);
    await rejects(kubeconfigAccess([`${dir}/missing`]), /Cannot read kubeconfig .*missing/);
  });
});

Deno.test("the launcher refuses what the agent's loader refuses, with the same message", async () => {
  await withDir(async (dir) => {
    const write = async (name: string, cluster: object, user: object) => {
      await Deno.writeTextFile(
        `${dir}/${name}`,
        kubeconfigText({
          cluster: { server: "https://a.example:6443", ...cluster },
          user: { ...user },
        }),
      );
      return [`${dir}/${name}`];
    };
    await rejects(
      kubeconfigAccess(await write("basic", {}, { username: "u", password: "p" })),
      (error) => error instanceof KubeconfigAccessError && /basic auth/.test(error.message),
    );
    await rejects(
      kubeconfigAccess(await write("insecure", { "insecure-skip-tls-verify": true }, {})),
      /insecure-skip-tls-verify is not supported/,
    );
    // Inline (-data) material needs no read permission: only the kubeconfig itself.
    deepStrictEqual(
      await kubeconfigAccess(
        await write("inline", { "certificate-authority-data": btoa("CA") }, {
          "client-certificate-data": btoa("C"),
          "client-key-data": btoa("K"),
        }),
      ),
      { files: [], servers: ["a.example:6443"] },
    );
  });
});

Deno.test("in-cluster API server address as the agent's loader builds it (IPv6 bracketed)", () => {
  deepStrictEqual(inClusterHostPort("10.96.0.1", "443"), "10.96.0.1:443");
  deepStrictEqual(inClusterHostPort("fd00:10:96::1", "443"), "[fd00:10:96::1]:443");
});
