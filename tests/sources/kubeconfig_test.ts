import assert from "node:assert/strict";
import {
  inClusterConfig,
  inClusterServer,
  KubeConfigError,
  MAX_KUBE_FILE_BYTES,
  resolveKubeconfig,
  TOKEN_REFRESH_MS,
  TokenSource,
} from "../../src/sources/kubeconfig.ts";
import { kubeconfigText } from "../helpers/kubeconfig_text.ts";

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "gpa-kubeconfig-loader-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("kubeconfig: merge order, relative paths against the naming file, -data over files", async () => {
  await withDir(async (dir) => {
    await Deno.mkdir(`${dir}/a`);
    await Deno.mkdir(`${dir}/b`);
    await Deno.writeTextFile(
      `${dir}/a/config`,
      `apiVersion: v1
kind: Config
current-context: prod
contexts:
  - {name: prod, context: {cluster: prod, user: agent}}
clusters:
  - name: prod
    cluster:
      server: https://api.prod.example:6443/
      certificate-authority: pki/ca.crt
`,
    );
    await Deno.writeTextFile(
      `${dir}/b/config`,
      `apiVersion: v1
current-context: other
contexts:
  - {name: prod, context: {cluster: elsewhere, user: nobody}}
clusters:
  - {name: prod, cluster: {server: https://ignored.example}}
users:
  - name: agent
    user:
      client-certificate: certs/agent.crt
      client-key-data: ${btoa("KEY PEM")}
      client-key: certs/ignored.key
      tokenFile: ../token
`,
    );
    const config = await resolveKubeconfig([`${dir}/a/config`, `${dir}/b/config`]);
    assert.equal(config.context, "prod");
    assert.equal(config.server, "https://api.prod.example:6443");
    assert.deepEqual(config.ca, { file: `${dir}/a/pki/ca.crt` });
    assert.deepEqual(config.clientCert, { file: `${dir}/b/certs/agent.crt` });
    assert.deepEqual(config.clientKey, { data: "KEY PEM" });
    assert.equal(config.tokenFile, `${dir}/token`);
    assert.deepEqual(config.files, [
      `${dir}/a/pki/ca.crt`,
      `${dir}/b/certs/agent.crt`,
      `${dir}/token`,
    ]);
  });
});

Deno.test("kubeconfig: http:// needs no CA and ignores insecure-skip-tls-verify; a static token wins over tokenFile", async () => {
  await withDir(async (dir) => {
    await Deno.writeTextFile(
      `${dir}/config`,
      kubeconfigText({
        cluster: {
          server: "http://127.0.0.1:8080",
          "insecure-skip-tls-verify": true,
          "certificate-authority": "/nope/ca.crt",
        },
        user: { token: "t", tokenFile: "/nope/token" },
      }),
    );
    const config = await resolveKubeconfig([`${dir}/config`]);
    assert.equal(config.server, "http://127.0.0.1:8080");
    assert.equal(config.ca, undefined);
    assert.equal(config.token, "t");
    assert.equal(config.tokenFile, undefined);
    assert.deepEqual(config.files, []);
  });
});

Deno.test("kubeconfig: refused and broken configurations say what to do", async () => {
  await withDir(async (dir) => {
    const write = async (name: string, cluster: object, user: object) => {
      await Deno.writeTextFile(
        `${dir}/${name}`,
        kubeconfigText({ cluster: { ...cluster }, user: { ...user } }),
      );
      return [`${dir}/${name}`];
    };
    const https = { server: "https://10.0.0.1:6443" };
    const cases: Array<[string, object, object, RegExp]> = [
      ["exec", https, { exec: { command: "gke-gcloud-auth-plugin" } }, /exec plugin/],
      ["provider", https, { "auth-provider": { name: "oidc" } }, /auth-provider plugin/],
      ["basic", https, { username: "a", password: "b" }, /basic auth/],
      ["insecure", { ...https, "insecure-skip-tls-verify": true }, {}, /insecure-skip-tls-verify/],
      ["sni", { ...https, "tls-server-name": "api.example" }, {}, /tls-server-name "api.example"/],
      ["half", https, { "client-certificate": "a.crt" }, /without a key/],
      ["scheme", { server: "unix:///run/k8s.sock" }, {}, /must be an https:\/\/ or http:\/\//],
      ["noserver", {}, {}, /names no cluster with a server/],
      ["base64", https, { "client-certificate-data": "%%%", "client-key-data": "a" }, /base64/],
    ];
    for (const [name, cluster, user, message] of cases) {
      await assert.rejects(resolveKubeconfig(await write(name, cluster, user)), (error) => {
        assert.ok(error instanceof KubeConfigError, name);
        assert.match((error as Error).message, message, name);
        return true;
      });
    }
    // tls-server-name naming the server's own host is harmless.
    const same = await resolveKubeconfig(
      await write("same", { ...https, "tls-server-name": "10.0.0.1" }, { token: "t" }),
    );
    assert.equal(same.server, "https://10.0.0.1:6443");
    await Deno.writeTextFile(`${dir}/huge`, "#".repeat(MAX_KUBE_FILE_BYTES + 1));
    await assert.rejects(resolveKubeconfig([`${dir}/huge`]), /Cannot read kubeconfig .*larger/);
    await Deno.writeTextFile(`${dir}/bad`, "clusters: [unclosed");
    await assert.rejects(resolveKubeconfig([`${dir}/bad`]), /Cannot read kubeconfig .*bad/);
  });
});

Deno.test("in-cluster: IPv6 hosts are bracketed; files come from the service account dir", () => {
  assert.equal(inClusterServer("::1", "443"), "https://[::1]:443");
  assert.equal(inClusterServer("10.96.0.1", "443"), "https://10.96.0.1:443");
  const vars: Record<string, string> = {
    KUBERNETES_SERVICE_HOST: "fd00:10:96::1",
    KUBERNETES_SERVICE_PORT: "443",
  };
  const config = inClusterConfig({ serviceAccountDir: "/sa", env: (k) => vars[k] });
  assert.deepEqual(config, {
    context: "inClusterContext",
    server: "https://[fd00:10:96::1]:443",
    ca: { file: "/sa/ca.crt" },
    tokenFile: "/sa/token",
    files: ["/sa/ca.crt", "/sa/token"],
  });
  assert.equal(inClusterConfig({ env: () => undefined }), undefined);
});

Deno.test("token file: re-read when it changes and at least every TOKEN_REFRESH_MS", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/token`;
    await Deno.writeTextFile(path, "one\n");
    let now = 0;
    const tokens = new TokenSource({ tokenFile: path }, () => now);
    assert.equal(await tokens.get(), "one");
    // Same size, same mtime, same inode (written in place within the same millisecond is
    // possible): the periodic re-read catches it.
    const info = await Deno.stat(path);
    await Deno.writeTextFile(path, "two\n");
    await Deno.utime(path, info.atime!, info.mtime!);
    now = TOKEN_REFRESH_MS - 1;
    assert.equal(await tokens.get(), "one");
    now = TOKEN_REFRESH_MS;
    assert.equal(await tokens.get(), "two");
    await Deno.writeTextFile(`${path}.new`, "three-longer");
    await Deno.rename(`${path}.new`, path);
    assert.equal(await tokens.get(), "three-longer");
    await Deno.writeTextFile(path, "   \n");
    await assert.rejects(tokens.get(), /bearer token file .*token: the file is empty/);
    assert.equal(await new TokenSource({ token: "static" }).get(), "static");
    assert.equal(await new TokenSource({}).get(), undefined);
  });
});
