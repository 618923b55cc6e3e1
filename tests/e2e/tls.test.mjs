// TLS (--tls-cert / --tls-key, --redis-tls-cert / --redis-tls-key) with real certificates made by
// the openssl CLI: socket.io-client over https:// and wss:// trusting a test CA (polling,
// websocket, upgrade), a client that does not trust the CA is refused, SIGHUP swaps the
// certificate for new connections while open ones stay, invalid replacement files keep the old
// one, configuration errors stop the node naming the setting, and the Redis port over TLS.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import tls from "node:tls";
import { after, afterEach, before, describe, test } from "node:test";
import { Ctx, TARGET, call, connectError, runToExit, waitFor, QUIET_MS, WAIT_MS } from "./harness.mjs";

const T = { timeout: 30_000 };
// Against the reference server (IOSWARM_E2E_TARGET=reference) this file defines no tests: it
// has no TLS flags, and the runner counts skipped tests as failures.
const suite = TARGET === "ioswarm" ? describe : () => {};

const dir = mkdtempSync(path.join(tmpdir(), "ioswarm-tls-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const file = (name) => path.join(dir, name);

/** Runs openssl; a missing openssl or a failed command fails the test (never skips it). */
function openssl(...args) {
  const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
  if (r.error) throw new Error(`openssl is required for the TLS tests (apt-get install openssl): ${r.error.message}`);
  assert.equal(r.status, 0, `openssl ${args.join(" ")}\n${r.stderr}`);
}

/** A CA `<name>-ca.pem` / `.key` and a server certificate `<name>.pem` / `.key` it signed, for
 * localhost and 127.0.0.1. */
function makePki(name) {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", `${name}-ca.key`, "-out", `${name}-ca.pem`, "-days", "2",
    "-subj", `/CN=ioswarm test CA ${name}`,
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  openssl("req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", "/CN=localhost");
  writeFileSync(file(`${name}.ext`),
    "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
  openssl("x509", "-req", "-in", `${name}.csr`, "-CA", `${name}-ca.pem`, "-CAkey", `${name}-ca.key`,
    "-set_serial", String(Date.now()), "-days", "2", "-out", `${name}.pem`, "-extfile", `${name}.ext`);
  return { ca: readFileSync(file(`${name}-ca.pem`), "utf8"), cert: file(`${name}.pem`), key: file(`${name}.key`) };
}

/** The node's live files: what --tls-cert / --tls-key name, replaced before a SIGHUP. */
function install(pki, prefix = "live") {
  copyFileSync(pki.cert, file(`${prefix}.pem`));
  copyFileSync(pki.key, file(`${prefix}.key`));
  return { cert: file(`${prefix}.pem`), key: file(`${prefix}.key`) };
}

const httpsUrl = (server, host = "127.0.0.1") => `https://${host}:${server.port}`;

async function metric(server, line) {
  const res = await server.admin("GET", "/metrics");
  const found = res.text.split("\n").find((l) => l.startsWith(line + " "));
  return found === undefined ? undefined : Number(found.split(" ").pop());
}

suite("TLS on the Socket.IO listener", () => {
  let A;
  let B;
  before(() => {
    A = makePki("a");
    B = makePki("b");
  });
  const t = new Ctx();
  afterEach(() => t.cleanup());

  test("https polling, wss websocket and polling→websocket upgrade, trusting the test CA", T, async () => {
    const live = install(A);
    const server = await t.server({ flags: ["--tls-cert", live.cert, "--tls-key", live.key] });
    for (const [host, transports] of [
      ["localhost", ["polling"]],
      ["127.0.0.1", ["websocket"]],
      ["localhost", ["polling", "websocket"]],
    ]) {
      const client = await t.connect(httpsUrl(server, host), { transports, ca: A.ca });
      if (transports.length === 2 && client.io.engine.transport.name !== "websocket") {
        await new Promise((resolve) => client.io.engine.once("upgrade", resolve));
      }
      assert.equal(client.io.engine.transport.name, transports.at(-1), `${transports}`);
      assert.deepEqual(await call(client, "ioswarm:echo", "over tls", { n: 1 }), ["over tls", { n: 1 }]);
    }
  });

  test("a client that does not trust the CA, or speaks plain HTTP, is refused", T, async () => {
    const live = install(A);
    const server = await t.server({ flags: ["--tls-cert", live.cert, "--tls-key", live.key] });
    for (const transports of [["polling"], ["websocket"]]) {
      const err = await connectError(t.client(httpsUrl(server), { transports }));
      assert.ok(err, `${transports}`);
      const wrongCa = await connectError(t.client(httpsUrl(server), { transports, ca: B.ca }));
      assert.ok(wrongCa, `${transports}`);
    }
    await connectError(t.client(`http://127.0.0.1:${server.port}`, { transports: ["polling"] }));
    await waitFor(async () => (await metric(server, 'ioswarm_tls_handshake_errors_total{listener="socketio"}')) >= 5,
      "handshake errors counted");
  });

  test("SIGHUP: new connections get the new certificate, open ones stay; invalid files keep the old one", T, async () => {
    const live = install(A);
    const server = await t.server({ flags: ["--tls-cert", live.cert, "--tls-key", live.key] });
    // A WebSocket keeps its TCP connection, hence its TLS session. (A polling client opens new
    // connections as it goes, so it sees the new certificate, signed by a CA it does not trust
    // here: a renewal from the same CA is what it can follow.)
    const open = await t.connect(httpsUrl(server), { transports: ["websocket"], ca: A.ca });
    const reloads = (result) => metric(server, `ioswarm_tls_reloads_total{result="${result}"}`);
    assert.equal(await reloads("ok"), 0);

    install(B);
    server.child.kill("SIGHUP");
    await waitFor(async () => (await reloads("ok")) === 1, "the reload is counted");
    assert.equal(server.exitCode, undefined, "SIGHUP does not stop the node");
    assert.deepEqual(await call(open, "ioswarm:echo", "still open"), ["still open"]);
    const fresh = await t.connect(httpsUrl(server), { transports: ["websocket"], ca: B.ca });
    assert.deepEqual(await call(fresh, "ioswarm:echo", "new cert"), ["new cert"]);
    await connectError(t.client(httpsUrl(server), { transports: ["websocket"], ca: A.ca }));
    await connectError(t.client(httpsUrl(server), { transports: ["polling"], ca: A.ca }));

    // A certificate replaced without its key, then an unreadable key: both refused, B stays.
    copyFileSync(A.cert, live.cert);
    server.child.kill("SIGHUP");
    await waitFor(async () => (await reloads("error")) === 1, "the failed reload is counted");
    rmSync(live.key);
    server.child.kill("SIGHUP");
    await waitFor(async () => (await reloads("error")) === 2, "the second failed reload is counted");
    await waitFor(() => server.stderr.includes("not reloaded"), "the failed reload is logged");
    assert.match(server.stderr, /tls_key/);
    assert.equal(server.exitCode, undefined, "the node keeps running");
    const stillB = await t.connect(httpsUrl(server), { transports: ["polling", "websocket"], ca: B.ca });
    assert.deepEqual(await call(stillB, "ioswarm:echo", "old cert kept"), ["old cert kept"]);
    await connectError(t.client(httpsUrl(server), { transports: ["websocket"], ca: A.ca }));
    assert.deepEqual(await call(open, "ioswarm:echo", "still open"), ["still open"]);
  });

  test("configuration errors stop the node, naming the setting", T, async () => {
    const base = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    const cases = [
      [["--tls-cert", A.cert], /tls_key/],
      [["--tls-key", A.key], /tls_cert/],
      [["--tls-cert", file("missing.pem"), "--tls-key", A.key], /`tls_cert`.*missing\.pem/],
      [["--tls-cert", A.key, "--tls-key", A.key], /`tls_cert`.*no PEM certificate/],
      [["--tls-cert", A.cert, "--tls-key", A.cert], /`tls_key`.*no PEM private key/],
      [["--tls-cert", A.cert, "--tls-key", B.key], /`tls_key`.*does not match/],
      [["--redis-tls-cert", A.cert, "--redis-tls-key", B.key], /`redis_tls_key`.*does not match/],
      [["--redis-tls-cert", A.cert], /redis_tls_key/],
    ];
    for (const [flags, expected] of cases) {
      const r = await runToExit([...base, ...flags]);
      assert.notEqual(r.code, 0, `${flags.join(" ")} exited with ${r.code}`);
      assert.doesNotMatch(r.stdout, /ioswarm ready/, flags.join(" "));
      assert.match(r.stderr, expected, `${flags.join(" ")}:\n${r.stderr}`);
    }
  });
});

suite("TLS on the Redis-protocol port", () => {
  let A;
  let B;
  before(() => {
    A = makePki("redis");
    B = makePki("redis-b");
  });
  const t = new Ctx();
  afterEach(() => t.cleanup());

  /** Sends `request` on `socket` and collects what comes back until close or `ms`. */
  function exchange(socket, request, ms = WAIT_MS) {
    return new Promise((resolve) => {
      let got = Buffer.alloc(0);
      const done = () => {
        clearTimeout(timer);
        socket.destroy();
        resolve(got.toString("latin1"));
      };
      const timer = setTimeout(done, ms);
      socket.on("data", (d) => {
        got = Buffer.concat([got, d]);
        if (got.includes("\r\n") && got.toString("latin1").startsWith("+")) done();
      });
      socket.on("error", done);
      socket.on("close", done);
      socket.write(request);
    });
  }

  async function securePing(host, port, ca) {
    const secure = tls.connect({ host, port, ca, servername: "localhost" });
    await new Promise((resolve, reject) => secure.once("secureConnect", resolve).once("error", reject));
    return exchange(secure, "PING\r\n");
  }

  test("SIGHUP reloads the Redis port's certificate too", T, async () => {
    const live = install(A, "redis-reload");
    const server = await t.server({ flags: ["--redis-tls-cert", live.cert, "--redis-tls-key", live.key] });
    const { host, port } = server.redis;
    assert.equal(await securePing(host, port, A.ca), "+PONG\r\n");
    install(B, "redis-reload");
    server.child.kill("SIGHUP");
    await waitFor(async () => (await metric(server, 'ioswarm_tls_reloads_total{result="ok"}')) === 1, "reload counted");
    assert.equal(await securePing(host, port, B.ca), "+PONG\r\n");
    await assert.rejects(securePing(host, port, A.ca));
  });

  test("PING over TLS gets +PONG; a plain TCP client gets no Redis reply", T, async () => {
    const live = install(A, "redis-live");
    const server = await t.server({ flags: ["--redis-tls-cert", live.cert, "--redis-tls-key", live.key] });
    const { host, port } = server.redis;
    const secure = tls.connect({ host, port, ca: A.ca, servername: "localhost" });
    await new Promise((resolve, reject) => secure.once("secureConnect", resolve).once("error", reject));
    assert.equal(await exchange(secure, "PING\r\n"), "+PONG\r\n");

    const plain = net.connect({ host, port });
    await new Promise((resolve, reject) => plain.once("connect", resolve).once("error", reject));
    const reply = await exchange(plain, "PING\r\n", QUIET_MS * 3);
    assert.ok(!reply.includes("PONG"), JSON.stringify(reply));

    // The Socket.IO listener stays plain HTTP.
    const res = await fetch(`http://${server.addr}/socket.io/?EIO=4&transport=polling`);
    assert.equal(res.status, 200);

    const untrusting = tls.connect({ host, port, servername: "localhost" });
    const err = await new Promise((resolve) => untrusting.once("error", resolve).once("secureConnect", () => resolve(null)));
    untrusting.destroy();
    assert.ok(err, "a client that does not trust the CA is refused");
  });
});
