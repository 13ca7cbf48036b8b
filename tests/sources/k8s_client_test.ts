import assert from "node:assert/strict";
import { KubeConfigError } from "../../src/sources/kubeconfig.ts";
import {
  KubeApiError,
  type KubeClient,
  loadKubeClient,
} from "../../src/sources/kubernetes_client.ts";
import { type FakeApiServer, startFakeApiServer } from "../helpers/k8s_api_server.ts";
import { kubeconfigText } from "../helpers/kubeconfig_text.ts";
import {
  generateTestPki,
  startTlsFront,
  type TestPki,
  type TlsFront,
} from "../helpers/tls_front.ts";

/** A one-context kubeconfig for `server`, extra cluster fields and `user`. */
function kubeconfigYaml(
  options: { server: string; cluster?: Record<string, unknown>; user: Record<string, unknown> },
): string {
  return kubeconfigText({
    cluster: { server: options.server, ...options.cluster },
    user: options.user,
  });
}

const b64 = (text: string) => btoa(text);

async function withServer(
  fn: (
    ctx: { url: string; dir: string; kubeconfig: string; token: string; server: FakeApiServer },
  ) => Promise<void>,
  options: { requireToken?: boolean } = {},
): Promise<void> {
  const server = await startFakeApiServer({ token: "s3cret", ...options });
  const dir = await Deno.makeTempDir({ prefix: "k8s-client-test-" });
  try {
    server.addPod({ name: "p", namespace: "ml" });
    const kubeconfig = await server.writeKubeconfig(dir);
    await fn({ url: server.url, dir, kubeconfig, token: server.token, server });
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("k8s client: a kubeconfig with a bearer token and a plain http:// server works", async () => {
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

/** Replace a file the way the kubelet rotates a projected token: write aside, rename over. */
async function rotate(path: string, text: string): Promise<void> {
  await Deno.writeTextFile(`${path}.new`, text);
  await Deno.rename(`${path}.new`, path);
}

Deno.test("k8s client: a rotated tokenFile (relative to the kubeconfig) is re-read; the server sees the new token", async () => {
  await withServer(async ({ url, dir, token, server }) => {
    await Deno.mkdir(`${dir}/secrets`);
    await Deno.writeTextFile(`${dir}/secrets/token`, `${token}\n`);
    const path = `${dir}/kubeconfig-tokenfile`;
    await Deno.writeTextFile(
      path,
      kubeconfigYaml({ server: url, user: { tokenFile: "secrets/token" } }),
    );
    const client = await loadKubeClient({ kubeconfigPath: path });
    try {
      const list = await client.getJson("/api/v1/namespaces/ml/pods") as { items: unknown[] };
      assert.equal(list.items.length, 1);
      server.token = "rotated-token-2";
      await rotate(`${dir}/secrets/token`, "rotated-token-2\n");
      await client.getJson("/api/v1/namespaces/ml/pods");
      server.token = "t3";
      await rotate(`${dir}/secrets/token`, "t3");
      await client.getJson("/api/v1/pods");
      assert.equal(server.counters.unauthorized, 0);
      // A token file that disappears: the request fails (retried by the informer), not the agent.
      await Deno.remove(`${dir}/secrets/token`);
      await assert.rejects(() => client.getJson("/api/v1/pods"), (error: unknown) => {
        assert.ok(error instanceof KubeApiError);
        assert.equal(error.status, 0);
        assert.match(error.message, /authentication failed before GET .*bearer token file/);
        return true;
      });
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
          new RegExp(`Cannot read kubeconfig ${dir}/nope: .*Pass --kubeconfig`),
        );
        return true;
      },
    );
    await Deno.writeTextFile(`${dir}/empty`, "apiVersion: v1\nkind: Config\n");
    await assert.rejects(
      () => loadKubeClient({ kubeconfigPath: `${dir}/empty` }),
      /has no usable current-context/,
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

Deno.test("k8s client: a two-file KUBECONFIG merges like kubectl (first definition and first current-context win)", async () => {
  await withServer(async ({ url, dir, token, server }) => {
    const first = `${dir}/first.yaml`;
    const second = `${dir}/second.yaml`;
    await Deno.writeTextFile(
      first,
      [
        "apiVersion: v1",
        "kind: Config",
        "current-context: x",
        "clusters:",
        `  - {name: c, cluster: {server: "${url}"}}`,
        "contexts:",
        "  - {name: x, context: {cluster: c, user: u}}",
      ].join("\n"),
    );
    await Deno.writeTextFile(
      second,
      JSON.stringify({
        apiVersion: "v1",
        "current-context": "y",
        clusters: [{ name: "c", cluster: { server: "http://127.0.0.1:1" } }],
        contexts: [{ name: "y", context: { cluster: "c", user: "u" } }],
        users: [{ name: "u", user: { token } }],
      }),
    );
    const saved = Deno.env.get("KUBECONFIG");
    try {
      for (
        const load of [
          () => loadKubeClient({ kubeconfigPath: `${first}:${second}` }),
          () => {
            Deno.env.set("KUBECONFIG", `${first}:${second}`);
            return loadKubeClient();
          },
        ]
      ) {
        const client = await load();
        try {
          assert.equal(client.context, "x");
          assert.equal(client.server, url);
          const list = await client.getJson("/api/v1/pods") as { items: unknown[] };
          assert.equal(list.items.length, 1);
        } finally {
          client.close();
        }
      }
      assert.equal(server.counters.unauthorized, 0);
    } finally {
      if (saved === undefined) Deno.env.delete("KUBECONFIG");
      else Deno.env.set("KUBECONFIG", saved);
    }
  });
});

/** The fake API server behind a TLS front, with a fresh PKI. */
async function withTls(
  options: { requireClientCert: boolean; hostname?: string },
  fn: (ctx: { server: FakeApiServer; front: TlsFront; pki: TestPki; dir: string }) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "k8s-client-tls-" });
  // With client certificates, the front authenticates: no bearer token needed.
  const server = await startFakeApiServer({
    token: "tls-token",
    requireToken: !options.requireClientCert,
  });
  let front: TlsFront | undefined;
  try {
    server.addPod({ name: "p", namespace: "ml" });
    const pki = await generateTestPki(dir);
    front = await startTlsFront(pki, {
      targetPort: server.port,
      requireClientCert: options.requireClientCert,
      hostname: options.hostname,
    });
    await fn({ server, front, pki, dir });
  } finally {
    await front?.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function podCount(client: KubeClient): Promise<number> {
  const list = await client.getJson("/api/v1/pods") as { items: unknown[] };
  return list.items.length;
}

Deno.test("k8s client: https with certificate-authority (file) and a bearer token", async () => {
  await withTls({ requireClientCert: false }, async ({ front, pki, dir }) => {
    const path = `${dir}/kubeconfig`;
    await Deno.writeTextFile(
      path,
      kubeconfigYaml({
        server: front.url,
        cluster: { "certificate-authority": "ca.crt" }, // relative to the kubeconfig
        user: { token: "tls-token" },
      }),
    );
    const client = await loadKubeClient({ kubeconfigPath: path });
    try {
      assert.equal(await podCount(client), 1);
    } finally {
      client.close();
    }
    // The same server, a CA that did not sign its certificate: the request fails.
    await Deno.writeTextFile(
      path,
      kubeconfigYaml({
        server: front.url,
        cluster: { "certificate-authority-data": b64(pki.pem(pki.otherCaCert)) },
        user: { token: "tls-token" },
      }),
    );
    const untrusted = await loadKubeClient({ kubeconfigPath: path, requestTimeoutMs: 5_000 });
    try {
      await assert.rejects(() => untrusted.getJson("/api/v1/pods"), (error: unknown) => {
        assert.ok(error instanceof KubeApiError);
        assert.equal(error.status, 0);
        return true;
      });
    } finally {
      untrusted.close();
    }
  });
});

Deno.test("k8s client: https with a client certificate (mutual TLS): -data and relative files", async () => {
  await withTls({ requireClientCert: true }, async ({ front, pki, dir }) => {
    const inline = `${dir}/inline.yaml`;
    await Deno.writeTextFile(
      inline,
      kubeconfigYaml({
        server: front.url,
        cluster: { "certificate-authority-data": b64(pki.pem(pki.caCert)) },
        user: {
          "client-certificate-data": b64(pki.pem(pki.clientCert)),
          "client-key-data": b64(pki.pem(pki.clientKey)),
        },
      }),
    );
    await Deno.mkdir(`${dir}/conf/creds`, { recursive: true });
    await Deno.copyFile(pki.clientCert, `${dir}/conf/creds/agent.crt`);
    await Deno.copyFile(pki.clientKey, `${dir}/conf/creds/agent.key`);
    const files = `${dir}/conf/kubeconfig`;
    await Deno.writeTextFile(
      files,
      kubeconfigYaml({
        server: front.url,
        cluster: { "certificate-authority": "../ca.crt" },
        user: { "client-certificate": "creds/agent.crt", "client-key": "creds/agent.key" },
      }),
    );
    for (const path of [inline, files]) {
      const client = await loadKubeClient({ kubeconfigPath: path });
      try {
        assert.equal(await podCount(client), 1);
      } finally {
        client.close();
      }
    }
    assert.deepEqual(front.clients, ["gpu-power-agent", "gpu-power-agent"]);
    // Without a client certificate, or with one from another CA, the handshake is refused.
    for (
      const user of [{}, { "client-certificate": pki.strangerCert, "client-key": pki.strangerKey }]
    ) {
      const path = `${dir}/rejected.yaml`;
      await Deno.writeTextFile(
        path,
        kubeconfigYaml({
          server: front.url,
          cluster: { "certificate-authority": pki.caCert },
          user,
        }),
      );
      const client = await loadKubeClient({ kubeconfigPath: path, requestTimeoutMs: 5_000 });
      try {
        await assert.rejects(() => podCount(client), (error: unknown) => {
          assert.ok(error instanceof KubeApiError);
          assert.equal(error.status, 0);
          return true;
        });
      } finally {
        client.close();
      }
    }
    assert.equal(front.clients.length, 2);
  });
});

Deno.test("k8s client: in-cluster service account with an IPv6 KUBERNETES_SERVICE_HOST", async () => {
  await withTls(
    { requireClientCert: false, hostname: "::1" },
    async ({ server, front, pki, dir }) => {
      const sa = `${dir}/serviceaccount`;
      await Deno.mkdir(sa);
      await Deno.copyFile(pki.caCert, `${sa}/ca.crt`);
      await Deno.writeTextFile(`${sa}/token`, "tls-token");
      const names = ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"];
      const saved = Object.fromEntries(names.map((k) => [k, Deno.env.get(k)]));
      try {
        Deno.env.set("KUBERNETES_SERVICE_HOST", "::1");
        Deno.env.set("KUBERNETES_SERVICE_PORT", String(front.port));
        Deno.env.delete("KUBECONFIG");
        const client = await loadKubeClient({ serviceAccountDir: sa });
        try {
          assert.equal(client.server, `https://[::1]:${front.port}`);
          assert.equal(client.context, "inClusterContext");
          assert.equal(await podCount(client), 1);
          // The projected token rotates: the next request carries the new one.
          server.token = "rotated";
          await rotate(`${sa}/token`, "rotated");
          assert.equal(await podCount(client), 1);
          assert.equal(server.counters.unauthorized, 0);
        } finally {
          client.close();
        }
      } finally {
        for (const [k, v] of Object.entries(saved)) {
          if (v === undefined) Deno.env.delete(k);
          else Deno.env.set(k, v);
        }
      }
    },
  );
});

Deno.test("k8s client: refused kubeconfigs fail at load with what to do instead", async () => {
  const dir = await Deno.makeTempDir({ prefix: "k8s-client-refused-" });
  try {
    const cases: Array<[string, Record<string, unknown>, Record<string, unknown>, RegExp]> = [
      ["exec", {}, { exec: { command: "aws" } }, /exec plugin.*never gets subprocess/],
      ["auth-provider", {}, { "auth-provider": { name: "gcp" } }, /auth-provider plugin/],
      ["basic", {}, { username: "admin", password: "pw" }, /basic auth \(username\/password\)/],
      [
        "insecure",
        { "insecure-skip-tls-verify": true },
        { token: "t" },
        /insecure-skip-tls-verify is not supported.*set certificate-authority\(-data\)/,
      ],
      [
        "server-name",
        { "tls-server-name": "kubernetes.default.svc" },
        { token: "t" },
        /tls-server-name "kubernetes.default.svc" differs from the host/,
      ],
    ];
    for (const [name, cluster, user, message] of cases) {
      const path = `${dir}/${name}.yaml`;
      await Deno.writeTextFile(
        path,
        kubeconfigYaml({ server: "https://127.0.0.1:6443", cluster, user }),
      );
      await assert.rejects(() => loadKubeClient({ kubeconfigPath: path }), (error: unknown) => {
        assert.ok(error instanceof KubeConfigError, name);
        assert.match(error.message, message, name);
        return true;
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
