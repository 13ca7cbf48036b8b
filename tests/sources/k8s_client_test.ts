import assert from "node:assert/strict";
import {
  KubeApiError,
  KubeConfigError,
  loadKubeClient,
} from "../../src/sources/kubernetes_client.ts";
import {
  BUNDLE_STUBS,
  KUBERNETES_CLIENT_SPECIFIER,
  postProcessBundle,
} from "../../src/sources/kubernetes_kubeconfig_build.ts";
import { startFakeApiServer } from "../helpers/k8s_api_server.ts";

async function withServer(
  fn: (ctx: { url: string; dir: string; kubeconfig: string; token: string }) => Promise<void>,
): Promise<void> {
  const server = await startFakeApiServer({ token: "s3cret" });
  const dir = await Deno.makeTempDir({ prefix: "k8s-client-test-" });
  try {
    server.addPod({ name: "p", namespace: "ml" });
    const kubeconfig = await server.writeKubeconfig(dir);
    await fn({ url: server.url, dir, kubeconfig, token: server.token });
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("k8s client: the library loads the kubeconfig and authenticates (bearer token)", async () => {
  await withServer(async ({ url, kubeconfig }) => {
    const client = await loadKubeClient({ kubeconfigPath: kubeconfig });
    try {
      assert.equal(client.server, url);
      assert.equal(client.context, "fake");
      const list = await client.getJson("/api/v1/pods", {
        fieldSelector: "spec.nodeName=node-a",
      }) as { items: unknown[] };
      assert.equal(list.items.length, 1);
    } finally {
      client.close();
    }
  });
});

Deno.test("k8s client: wrong token → KubeApiError 401 with a hint", async () => {
  await withServer(async ({ dir }) => {
    const server2 = await startFakeApiServer({ token: "other" });
    try {
      const kubeconfig = await server2.writeKubeconfig(dir, { token: "wrong" });
      const client = await loadKubeClient({ kubeconfigPath: kubeconfig });
      try {
        await assert.rejects(() => client.getJson("/api/v1/pods"), (error: unknown) => {
          assert.ok(error instanceof KubeApiError);
          assert.equal(error.status, 401);
          assert.equal(error.reason, "Unauthorized");
          assert.match(error.message, /HTTP 401.*credentials rejected/);
          return true;
        });
      } finally {
        client.close();
      }
    } finally {
      await server2.close();
    }
  });
});

Deno.test("k8s client: token file auth (in-cluster shape) goes through the library", async () => {
  await withServer(async ({ url, dir, token }) => {
    await Deno.writeTextFile(`${dir}/token`, token);
    const path = `${dir}/kubeconfig-tokenfile`;
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        apiVersion: "v1",
        clusters: [{ name: "c", cluster: { server: url, "insecure-skip-tls-verify": true } }],
        // The shape loadFromCluster() builds for the in-cluster service account token.
        users: [{
          name: "u",
          user: { "auth-provider": { name: "tokenFile", config: { tokenFile: `${dir}/token` } } },
        }],
        contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
        "current-context": "x",
      }),
    );
    const client = await loadKubeClient({ kubeconfigPath: path });
    try {
      const list = await client.getJson("/api/v1/namespaces/ml/pods") as { items: unknown[] };
      assert.equal(list.items.length, 1);
    } finally {
      client.close();
    }
  });
});

Deno.test("k8s client: the npm package module works the same (library: npm)", async () => {
  await withServer(async ({ url, kubeconfig }) => {
    const client = await loadKubeClient({ kubeconfigPath: kubeconfig, library: "npm" });
    try {
      assert.equal(client.server, url);
      const list = await client.getJson("/api/v1/pods") as { items: unknown[] };
      assert.equal(list.items.length, 1);
    } finally {
      client.close();
    }
  });
});

Deno.test("k8s client: missing or broken kubeconfig → KubeConfigError naming the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(
      () => loadKubeClient({ kubeconfigPath: `${dir}/nope` }),
      (error: unknown) => {
        assert.ok(error instanceof KubeConfigError);
        assert.match(
          error.message,
          new RegExp(`Cannot load the Kubernetes configuration from ${dir}/nope`),
        );
        return true;
      },
    );
    await Deno.writeTextFile(`${dir}/empty`, "apiVersion: v1\nkind: Config\n");
    await assert.rejects(
      () => loadKubeClient({ kubeconfigPath: `${dir}/empty` }),
      /no current cluster/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("k8s client: no configuration anywhere → clear KubeConfigError", async () => {
  const dir = await Deno.makeTempDir();
  const saved = Object.fromEntries(
    ["HOME", "KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"].map((k) => [
      k,
      Deno.env.get(k),
    ]),
  );
  try {
    Deno.env.set("HOME", dir);
    Deno.env.delete("KUBECONFIG");
    Deno.env.delete("KUBERNETES_SERVICE_HOST");
    Deno.env.delete("KUBERNETES_SERVICE_PORT");
    await assert.rejects(() => loadKubeClient(), (error: unknown) => {
      assert.ok(error instanceof KubeConfigError);
      assert.match(error.message, /No Kubernetes configuration: .*--kubeconfig, KUBECONFIG/);
      return true;
    });
    // KUBECONFIG is honoured when set.
    const server = await startFakeApiServer();
    try {
      Deno.env.set("KUBECONFIG", await server.writeKubeconfig(dir));
      const client = await loadKubeClient();
      assert.equal(client.server, server.url);
      client.close();
    } finally {
      await server.close();
    }
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) Deno.env.delete(k);
      else Deno.env.set(k, v);
    }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("k8s client: https with insecure-skip-tls-verify is refused with advice", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/kubeconfig`;
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        apiVersion: "v1",
        clusters: [{
          name: "c",
          cluster: { server: "https://127.0.0.1:1", "insecure-skip-tls-verify": true },
        }],
        users: [{ name: "u", user: { token: "t" } }],
        contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
        "current-context": "x",
      }),
    );
    const client = await loadKubeClient({ kubeconfigPath: path });
    await assert.rejects(
      () => client.getJson("/api/v1/pods"),
      (error: unknown) => {
        assert.ok(error instanceof KubeConfigError);
        assert.match(
          error.message,
          /insecure-skip-tls-verify is not supported.*certificate-authority/,
        );
        return true;
      },
    );
    client.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("k8s client: unreachable server → KubeApiError status 0", async () => {
  const server = await startFakeApiServer();
  const dir = await Deno.makeTempDir();
  try {
    const path = await server.writeKubeconfig(dir);
    await server.close();
    const client = await loadKubeClient({ kubeconfigPath: path, requestTimeoutMs: 500 });
    await assert.rejects(() => client.getJson("/api/v1/pods"), (error: unknown) => {
      assert.ok(error instanceof KubeApiError);
      assert.equal(error.status, 0);
      assert.match(error.message, /GET \/api\/v1\/pods on http:\/\/127\.0\.0\.1:\d+ failed/);
      return true;
    });
    client.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("k8s bundle: post-processing stubs the left-out imports and rejects surprises", () => {
  const body = [
    'import fs from "node:fs";',
    ...BUNDLE_STUBS.map((s) => s.line),
    "// ../../x/node_modules/.deno/js-yaml@5.5.0/node_modules/js-yaml/index.js",
    "export { KubeConfig };",
  ].join("\n");
  const out = postProcessBundle(body);
  assert.match(out, /^\/\/ deno-fmt-ignore-file\n\/\/ deno-lint-ignore-file\n/);
  assert.ok(out.includes('import fs from "node:fs";'));
  for (const stub of BUNDLE_STUBS) assert.ok(!out.includes(stub.line));
  assert.ok(out.includes("// node_modules/.deno/js-yaml@5.5.0/"));
  assert.throws(() => postProcessBundle(body.replace(BUNDLE_STUBS[0].line, "")), /not found/);
  assert.throws(
    () => postProcessBundle(`${body}\nimport x from "undici-types";`),
    /unexpected imports remain/,
  );
});

Deno.test("k8s bundle: built from the library version pinned in deno.json", async () => {
  const denoJson = JSON.parse(
    await Deno.readTextFile(new URL("../../deno.json", import.meta.url)),
  ) as { imports: Record<string, string> };
  const pinned = denoJson.imports["@kubernetes/client-node"];
  assert.ok(KUBERNETES_CLIENT_SPECIFIER.startsWith(`${pinned}/`), "generator specifier");
  const bundle = await Deno.readTextFile(
    new URL("../../src/sources/kubernetes_kubeconfig_bundle.js", import.meta.url),
  );
  const header = bundle.slice(0, 600);
  assert.ok(header.includes(KUBERNETES_CLIENT_SPECIFIER), "bundle header names the version");
  assert.ok(header.includes(`@ts-self-types="${pinned}/dist/config.d.ts"`));
  const version = pinned.split("@").pop();
  assert.ok(
    bundle.includes(`@kubernetes+client-node@${version}/`),
    "bundle made from that version",
  );
});

Deno.test("k8s client: a KUBECONFIG-style list of files is merged", async () => {
  await withServer(async ({ url, dir, token }) => {
    const clusters = `${dir}/clusters.json`;
    const users = `${dir}/users.json`;
    await Deno.writeTextFile(
      clusters,
      JSON.stringify({
        apiVersion: "v1",
        clusters: [{ name: "c", cluster: { server: url, "insecure-skip-tls-verify": true } }],
        contexts: [{ name: "x", context: { cluster: "c", user: "u" } }],
        "current-context": "x",
      }),
    );
    await Deno.writeTextFile(
      users,
      JSON.stringify({ apiVersion: "v1", users: [{ name: "u", user: { token } }] }),
    );
    const client = await loadKubeClient({ kubeconfigPath: `${clusters}:${users}` });
    try {
      assert.equal(client.context, "x");
      const list = await client.getJson("/api/v1/pods") as { items: unknown[] };
      assert.equal(list.items.length, 1);
    } finally {
      client.close();
    }
  });
});
