/**
 * TLS for the in-test API server: a throwaway PKI made with `openssl` (a CA, a server
 * certificate for 127.0.0.1 / ::1 / localhost, a client certificate), and a TLS front that
 * terminates TLS (optionally requiring a client certificate signed by the CA) and pipes the
 * bytes to the plain-HTTP fake API server. `Deno.serve` can serve TLS but cannot ask for or
 * verify a client certificate, so the front uses `node:tls` (`requestCert: true`).
 *
 * @module
 */

import net from "node:net";
import tls from "node:tls";

/** PEM files of the test PKI (absolute paths) and their contents. */
export interface TestPki {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A second CA that signed nothing the server trusts. */
  otherCaCert: string;
  /** A client certificate signed by the other CA (the front rejects it). */
  strangerCert: string;
  strangerKey: string;
  pem: (path: string) => string;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
      .output();
  } catch (error) {
    // A missing tool fails the test (never a skip).
    throw new Error(`openssl is needed by this test: ${(error as Error).message}`);
  }
  if (!output.success) {
    throw new Error(`openssl ${args.join(" ")} failed: ${new TextDecoder().decode(output.stderr)}`);
  }
}

async function issue(
  dir: string,
  options: { name: string; cn: string; ca: string; ext: string },
): Promise<void> {
  const { name, cn, ca, ext } = options;
  const words = (text: string) => text.split(" ");
  await openssl(dir, [
    ...words(`req -newkey rsa:2048 -nodes -keyout ${name}.key -out ${name}.csr -subj`),
    `/CN=${cn}`,
  ]);
  await Deno.writeTextFile(`${dir}/${name}.ext`, `${ext}\n`);
  await openssl(
    dir,
    words(
      `x509 -req -in ${name}.csr -CA ${ca}.crt -CAkey ${ca}.key -CAcreateserial -out ${name}.crt ` +
        `-days 2 -extfile ${name}.ext`,
    ),
  );
}

/** Make a CA, a server certificate (127.0.0.1, ::1, localhost) and client certificates in `dir`. */
export async function generateTestPki(dir: string): Promise<TestPki> {
  for (const ca of ["ca", "other-ca"]) {
    await openssl(dir, [
      ..."req -x509 -newkey rsa:2048 -nodes -days 2".split(" "),
      ...["-keyout", `${ca}.key`, "-out", `${ca}.crt`, "-subj", `/CN=${ca}`],
    ]);
  }
  await issue(dir, {
    name: "server",
    cn: "kube-apiserver",
    ca: "ca",
    ext: "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost",
  });
  await issue(dir, {
    name: "client",
    cn: "gpu-power-agent",
    ca: "ca",
    ext: "extendedKeyUsage=clientAuth",
  });
  await issue(dir, {
    name: "stranger",
    cn: "stranger",
    ca: "other-ca",
    ext: "extendedKeyUsage=clientAuth",
  });
  return {
    dir,
    caCert: `${dir}/ca.crt`,
    serverCert: `${dir}/server.crt`,
    serverKey: `${dir}/server.key`,
    clientCert: `${dir}/client.crt`,
    clientKey: `${dir}/client.key`,
    otherCaCert: `${dir}/other-ca.crt`,
    strangerCert: `${dir}/stranger.crt`,
    strangerKey: `${dir}/stranger.key`,
    pem: (path) => Deno.readTextFileSync(path),
  };
}

/** A running TLS front. */
export interface TlsFront {
  /** `https://127.0.0.1:PORT` (or `https://[::1]:PORT`). */
  url: string;
  port: number;
  /** Common names of the verified client certificates, one per accepted connection. */
  clients: string[];
  close(): Promise<void>;
}

/**
 * Terminate TLS on `hostname` (default 127.0.0.1, any free port) with the PKI's server
 * certificate and pipe each connection to `127.0.0.1:targetPort`. With `requireClientCert`,
 * a connection without a client certificate signed by the PKI's CA is refused in the handshake.
 */
export async function startTlsFront(
  pki: TestPki,
  options: { targetPort: number; requireClientCert?: boolean; hostname?: string },
): Promise<TlsFront> {
  const clients: string[] = [];
  const sockets = new Set<net.Socket>();
  const requireClientCert = options.requireClientCert ?? false;
  const server = tls.createServer({
    key: pki.pem(pki.serverKey),
    cert: pki.pem(pki.serverCert),
    ca: pki.pem(pki.caCert),
    requestCert: requireClientCert,
    rejectUnauthorized: requireClientCert,
  }, (socket) => {
    if (requireClientCert) {
      const cn = socket.getPeerCertificate()?.subject?.CN;
      clients.push(Array.isArray(cn) ? cn.join(",") : String(cn));
    }
    const upstream = net.connect(options.targetPort, "127.0.0.1");
    sockets.add(socket);
    sockets.add(upstream);
    socket.pipe(upstream);
    upstream.pipe(socket);
    const end = () => {
      socket.destroy();
      upstream.destroy();
      sockets.delete(socket);
      sockets.delete(upstream);
    };
    socket.on("error", end);
    upstream.on("error", end);
    socket.on("close", end);
    upstream.on("close", end);
  });
  server.on("tlsClientError", () => {});
  const hostname = options.hostname ?? "127.0.0.1";
  await new Promise<void>((resolve) => server.listen(0, hostname, () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `https://${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`,
    port,
    clients,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
