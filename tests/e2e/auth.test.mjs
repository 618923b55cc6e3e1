// Authentication on CONNECT ([auth] in the TOML file): JWTs from the CONNECT payload, the query
// string or a cookie (HS256, RS256, ES256), issuer and audience checks, the claims as
// socket.data, the connect hook (200 / 401 / hang / down / bad JSON, bounded concurrency), the
// cross-site hijacking guard on handshakes, and configuration errors that stop the node.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import jwt from "jsonwebtoken";
import WebSocket from "ws";
import { Ctx, TARGET, connectError, once, runToExit, waitFor, configFiles, ioswarmOnly } from "./harness.mjs";

const T = { timeout: 30_000 };
// The reference server (Node socket.io) has no [auth] table.

const SECRET = "s3cret-shared-with-the-app";
const APP = "https://app.example";
const EVIL = "https://evil.example";
const now = () => Math.floor(Date.now() / 1000);
const sign = (claims, key = SECRET, options = {}) =>
  jwt.sign({ exp: now() + 600, ...claims }, key, { algorithm: "HS256", ...options });

/** `config(...lines)` writes the TOML lines to a fresh file and returns the --config flags. */
const { dir, flags: config } = configFiles("auth");

/** `GET /v1/sockets` of namespace `nsp`. */
async function sockets(server, nsp = "/") {
  const res = await server.admin("GET", `/v1/sockets?nsp=${encodeURIComponent(nsp)}`);
  assert.equal(res.status, 200, res.text);
  return res.json.sockets;
}

/** The value of `name{labels}` in `/metrics` (0 when absent). */
async function metric(server, series) {
  const res = await fetch(`${server.adminUrl}/metrics`);
  const line = (await res.text()).split("\n").find((l) => l.startsWith(series + " "));
  return line ? Number(line.split(" ")[1]) : 0;
}

/** Opens a raw Engine.IO WebSocket handshake with `headers`; resolves "open" or the HTTP status. */
function rawWebSocket(server, headers) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://${server.addr}/socket.io/?EIO=4&transport=websocket`, { headers });
    ws.on("open", () => {
      ws.close();
      resolve("open");
    });
    ws.on("unexpected-response", (_req, res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    ws.on("error", (err) => resolve({ error: err.message }));
  });
}

/** A polling handshake with `headers`; resolves {status, text}. */
async function pollingHandshake(server, headers) {
  const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, { headers });
  return { status: res.status, text: await res.text() };
}

async function refused(ctx, url, opts) {
  return (await connectError(ctx.client(url, opts))).message;
}

ioswarmOnly("[auth] JWT (HS256) from the CONNECT payload, the query or a cookie", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({
      flags: config(
        "[auth]",
        `jwt_secret = "${SECRET}"`,
        'token_from = ["auth", "query", "cookie:session_jwt"]',
        `allowed_origins = ["${APP}"]`,
      ),
    });
  });
  afterEach(() => ctx.resetClients(server, ["/"]));
  after(() => ctx.cleanup());

  test("a token in auth, in the query and in a cookie connects; the claims are socket.data", T, async () => {
    const viaAuth = await ctx.connect(server.url, { auth: { token: sign({ sub: "u1", role: "staff" }) } });
    const viaQuery = await ctx.connect(server.url, { query: { token: sign({ sub: "u2" }) } });
    const viaCookie = await ctx.connect(server.url, {
      transports: ["websocket"],
      extraHeaders: { cookie: `theme=dark; session_jwt=${sign({ sub: "u3" })}` },
    });
    const byId = Object.fromEntries((await sockets(server)).map((s) => [s.id, s.data]));
    assert.equal(byId[viaAuth.id].sub, "u1");
    assert.equal(byId[viaAuth.id].role, "staff");
    assert.equal(typeof byId[viaAuth.id].exp, "number");
    assert.equal(byId[viaQuery.id].sub, "u2");
    assert.equal(byId[viaCookie.id].sub, "u3");
  });

  test("forged, expired, alg none, malformed and missing tokens get connect_error unauthorized", T, async () => {
    const unsigned = jwt.sign({ sub: "u1", exp: now() + 600 }, null, { algorithm: "none" });
    for (const [name, opts] of [
      ["forged (wrong secret)", { auth: { token: sign({ sub: "u1" }, "not-the-secret") } }],
      ["expired", { auth: { token: sign({ sub: "u1", exp: now() - 120 }) } }],
      ["not yet valid", { auth: { token: sign({ sub: "u1", nbf: now() + 600 }) } }],
      ["alg none", { auth: { token: unsigned } }],
      ["HS512", { auth: { token: sign({ sub: "u1" }, SECRET, { algorithm: "HS512" }) } }],
      ["malformed", { auth: { token: "not.a.jwt" } }],
      ["missing", {}],
      ["in another cookie", { extraHeaders: { cookie: `other=${sign({ sub: "u1" })}` } }],
    ]) {
      assert.equal(await refused(ctx, server.url, opts), "unauthorized", name);
    }
    assert.deepEqual(await sockets(server), [], "no refused client was let in");
    assert.ok((await metric(server, 'ioswarm_auth_rejected_total{reason="expired_token"}')) >= 1);
    assert.ok((await metric(server, 'ioswarm_auth_rejected_total{reason="missing_token"}')) >= 1);
  });

  test("a refused client changes nothing for the connected ones", T, async () => {
    const good = await ctx.connect(server.url, { auth: { token: sign({ sub: "u1" }) } });
    assert.equal(await refused(ctx, server.url, { auth: { token: "forged" } }), "unauthorized");
    const got = once(good, "news");
    assert.equal((await server.emit({ event: "news", args: [1] })).json.recipients, 1);
    assert.deepEqual(await got, [1]);
  });

  test("a handshake from a foreign Origin with the victim's cookie gets 403; the app's origin passes", T, async () => {
    const cookie = `session_jwt=${sign({ sub: "victim" })}`;
    const foreign = await rawWebSocket(server, { Origin: EVIL, Cookie: cookie });
    assert.equal(foreign.status, 403);
    assert.deepEqual(JSON.parse(foreign.body), { code: 4, message: "Forbidden" });
    const polling = await pollingHandshake(server, { Origin: EVIL, Cookie: cookie });
    assert.equal(polling.status, 403);
    assert.deepEqual(JSON.parse(polling.text), { code: 4, message: "Forbidden" });
    assert.equal(await rawWebSocket(server, { Origin: APP, Cookie: cookie }), "open");
    assert.equal((await pollingHandshake(server, { Origin: APP, Cookie: cookie })).status, 200);
    assert.ok((await metric(server, 'ioswarm_auth_rejected_total{reason="origin"}')) >= 2);
    // A socket.io client (no Origin) still connects with the cookie.
    await ctx.connect(server.url, { transports: ["websocket"], extraHeaders: { cookie } });
  });
});

ioswarmOnly("[auth] issuer, audience and token_from", () => {
  const ctx = new Ctx();
  afterEach(() => ctx.cleanup());

  test("jwt_issuer and jwt_audience must match; token_from limits where the token is read", T, async () => {
    const server = await ctx.server({
      flags: config(
        "[auth]",
        `jwt_secret = "${SECRET}"`,
        'jwt_issuer = "https://app"',
        'jwt_audience = "ioswarm"',
        'token_from = ["query"]',
      ),
    });
    const good = { sub: "u1", iss: "https://app", aud: "ioswarm" };
    await ctx.connect(server.url, { query: { token: sign(good) } });
    for (const [name, claims] of [
      ["wrong issuer", { ...good, iss: "https://evil" }],
      ["wrong audience", { ...good, aud: "other" }],
      ["no issuer", { sub: "u1", aud: "ioswarm" }],
      ["no audience", { sub: "u1", iss: "https://app" }],
    ]) {
      assert.equal(await refused(ctx, server.url, { query: { token: sign(claims) } }), "unauthorized", name);
    }
    // token_from = ["query"]: a good token in the CONNECT payload is not looked at.
    assert.equal(await refused(ctx, server.url, { auth: { token: sign(good) } }), "unauthorized");
  });

  test("without [auth], nothing is checked and socket.data is empty", T, async () => {
    const server = await ctx.server();
    const s = await ctx.connect(server.url);
    assert.deepEqual((await sockets(server)).find((x) => x.id === s.id).data, {});
  });
});

ioswarmOnly("[auth] jwt_public_key: RS256 and ES256", () => {
  const ctx = new Ctx();
  afterEach(() => ctx.cleanup());

  for (const [alg, type, options] of [
    ["RS256", "rsa", { modulusLength: 2048 }],
    ["ES256", "ec", { namedCurve: "P-256" }],
  ]) {
    test(`${alg}: a token signed with the private key connects; HS256 with the public key is refused`, T, async () => {
      const { publicKey, privateKey } = generateKeyPairSync(type, {
        ...options,
        publicKeyEncoding: { type: "spki", format: "pem" },
        privateKeyEncoding: { type: "pkcs8", format: "pem" },
      });
      const keyFile = path.join(dir, `${alg}.pem`);
      writeFileSync(keyFile, publicKey);
      const server = await ctx.server({ flags: config("[auth]", `jwt_public_key = "${keyFile}"`) });
      const s = await ctx.connect(server.url, { auth: { token: sign({ sub: alg }, privateKey, { algorithm: alg }) } });
      assert.equal((await sockets(server)).find((x) => x.id === s.id).data.sub, alg);
      // Algorithm confusion: the public key (public!) as an HMAC secret.
      const confused = sign({ sub: "attacker" }, Buffer.from(publicKey), { algorithm: "HS256" });
      assert.equal(await refused(ctx, server.url, { auth: { token: confused } }), "unauthorized");
      // Signed by another key of the same type.
      const other = generateKeyPairSync(type, options).privateKey;
      assert.equal(
        await refused(ctx, server.url, { auth: { token: sign({ sub: "x" }, other, { algorithm: alg }) } }),
        "unauthorized",
      );
    });
  }
});

/**
 * A connect hook on `127.0.0.1:0`. What it answers depends on the client's `auth.mode`: `ok`
 * (200 with data and rooms), `deny` (401 with a message), `hang` (never answers), `bad` (200 with
 * a body that is not JSON), `fail` (500), `slow` (200 after 300 ms). It records every request
 * body and the most requests it had in flight at once.
 */
async function hookServer() {
  const hook = { requests: [], inFlight: 0, maxInFlight: 0, hanging: [] };
  hook.server = http.createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8").on("data", (d) => (body += d));
    req.on("end", () => {
      const parsed = JSON.parse(body);
      hook.requests.push(parsed);
      hook.inFlight += 1;
      hook.maxInFlight = Math.max(hook.maxInFlight, hook.inFlight);
      const reply = (status, text) => {
        hook.inFlight -= 1;
        res.writeHead(status, { "content-type": "application/json" }).end(text);
      };
      const mode = parsed.auth?.mode ?? "ok";
      const user = parsed.auth?.user ?? "7";
      if (mode === "ok") {
        reply(200, JSON.stringify({ data: { uid: user, name: `user ${user}` }, rooms: [`user:${user}`] }));
      } else if (mode === "deny") reply(401, JSON.stringify({ message: "session expired" }));
      else if (mode === "bad") reply(200, "<html>not json</html>");
      else if (mode === "fail") reply(500, JSON.stringify({ message: "boom" }));
      else if (mode === "slow") setTimeout(() => reply(200, JSON.stringify({ data: { uid: user } })), 300);
      else hook.hanging.push(res); // hang
    });
  });
  await new Promise((resolve) => hook.server.listen(0, "127.0.0.1", resolve));
  hook.url = `http://127.0.0.1:${hook.server.address().port}/socket-auth`;
  hook.close = () => {
    for (const res of hook.hanging) res.destroy();
    hook.server.closeAllConnections();
    return new Promise((resolve) => hook.server.close(resolve));
  };
  return hook;
}

ioswarmOnly("[auth] connect_hook", () => {
  const ctx = new Ctx();
  let hook;
  let server;
  before(async () => {
    hook = await hookServer();
    server = await ctx.server({
      flags: config(
        "[auth]",
        `connect_hook = "${hook.url}"`,
        "connect_hook_timeout_ms = 2000",
        'namespaces = ["/"]',
        `allowed_origins = ["${APP}"]`,
      ),
    });
  });
  afterEach(() => ctx.resetClients(server, ["/", "/public"]));
  after(async () => {
    await ctx.cleanup();
    await hook.close();
  });

  test("200 accepts: the hook's data is socket.data and its rooms are joined", T, async () => {
    const before = hook.requests.length;
    const s = await ctx.connect(server.url, {
      auth: { mode: "ok", user: "42" },
      query: { page: "home" },
      extraHeaders: { cookie: "PHPSESSID=abc123", "user-agent": "e2e-agent", "x-forwarded-for": "10.0.0.9" },
    });
    const [sent] = hook.requests.slice(before);
    assert.equal(sent.nsp, "/");
    assert.deepEqual(sent.auth, { mode: "ok", user: "42" });
    assert.equal(sent.query.page, "home");
    assert.equal(sent.query.EIO, "4");
    assert.equal(sent.headers.cookie, "PHPSESSID=abc123");
    assert.equal(sent.headers["user-agent"], "e2e-agent");
    assert.equal(sent.headers["x-forwarded-for"], "10.0.0.9");
    assert.match(sent.address, /^127\.0\.0\.1:\d+$/);
    assert.equal(sent.claims, null);

    const listed = (await sockets(server)).find((x) => x.id === s.id);
    assert.deepEqual(listed.data, { uid: "42", name: "user 42" });
    assert.deepEqual(listed.rooms, ["user:42"]);
    const got = once(s, "alert");
    assert.equal((await server.emit({ rooms: ["user:42"], event: "alert", args: ["for you"] })).json.recipients, 1);
    assert.deepEqual(await got, ["for you"]);
  });

  test("401 refuses with the app's message", T, async () => {
    assert.equal(await refused(ctx, server.url, { auth: { mode: "deny" } }), "session expired");
  });

  test("5xx and a body that is not JSON refuse with auth unavailable", T, async () => {
    const before = await metric(server, 'ioswarm_auth_hook_requests_total{result="bad_reply"}');
    assert.equal(await refused(ctx, server.url, { auth: { mode: "fail" } }), "auth unavailable");
    assert.equal(await refused(ctx, server.url, { auth: { mode: "bad" } }), "auth unavailable");
    assert.equal(await metric(server, 'ioswarm_auth_hook_requests_total{result="bad_reply"}'), before + 2);
  });

  test("a hook that hangs times out with auth unavailable and delays no one else", T, async () => {
    const hanging = ctx.client(server.url, { auth: { mode: "hang" } });
    let settled = false;
    const verdict = connectError(hanging).finally(() => (settled = true));
    const started = Date.now();
    await waitFor(() => hook.hanging.length > 0, "the hook holds the hanging request");
    // While it hangs: a namespace without auth and a client the hook answers at once connect,
    // before the hanging client is refused.
    await ctx.connect(`${server.url}/public`);
    await ctx.connect(server.url, { auth: { mode: "ok", user: "8" } });
    assert.equal(settled, false, "the other clients waited behind the hanging hook");
    assert.equal((await verdict).message, "auth unavailable");
    const waited = Date.now() - started;
    assert.ok(waited >= 1900 && waited < 6000, `timed out after ${waited} ms, connect_hook_timeout_ms is 2000`);
    assert.ok((await metric(server, 'ioswarm_auth_hook_requests_total{result="timeout"}')) >= 1);
  });

  test("a foreign Origin is refused with 403 before the hook is called", T, async () => {
    const before = hook.requests.length;
    const foreign = await rawWebSocket(server, { Origin: EVIL, Cookie: "PHPSESSID=victim" });
    assert.equal(foreign.status, 403);
    assert.equal((await pollingHandshake(server, { Origin: EVIL, Cookie: "PHPSESSID=victim" })).status, 403);
    assert.equal(await rawWebSocket(server, { Origin: APP, Cookie: "PHPSESSID=victim" }), "open");
    assert.equal(hook.requests.length, before, "the hook was called for a refused handshake");
  });

  test("a page the node served itself (its Origin is the node's own) passes without allowed_origins", T, async () => {
    // What a browser sends from a page of --static: Origin http://<the Host it asked>.
    const own = `http://${server.addr}`;
    assert.equal(await rawWebSocket(server, { Origin: own }), "open");
    assert.equal((await pollingHandshake(server, { Origin: own })).status, 200);
    // The same host on another port, or https on this plain listener, is another origin.
    const otherPort = `http://127.0.0.1:${server.port === 1 ? 2 : 1}`;
    assert.equal((await rawWebSocket(server, { Origin: otherPort })).status, 403);
    assert.equal((await rawWebSocket(server, { Origin: `https://${server.addr}` })).status, 403);
  });
});

ioswarmOnly("[auth] connect_hook: down, after a JWT, bounded concurrency", () => {
  const ctx = new Ctx();
  let hook;
  before(async () => {
    hook = await hookServer();
  });
  afterEach(() => ctx.cleanup());
  after(() => hook.close());

  test("a hook that is down refuses with auth unavailable", T, async () => {
    // Down: it drops every connection unanswered. (A closed port is not used: another listener,
    // the node's own included, may take it between the close and the request.)
    const down = net.createServer((socket) => socket.destroy());
    await new Promise((resolve) => down.listen(0, "127.0.0.1", resolve));
    const port = down.address().port;
    try {
      const server = await ctx.server({ flags: config("[auth]", `connect_hook = "http://127.0.0.1:${port}/auth"`) });
      assert.equal(await refused(ctx, server.url, { auth: {} }), "auth unavailable");
      assert.ok((await metric(server, 'ioswarm_auth_hook_requests_total{result="unreachable"}')) >= 1);
    } finally {
      await new Promise((resolve) => down.close(resolve));
    }
  });

  test("after a JWT, the hook gets the claims and its data is merged over them", T, async () => {
    const server = await ctx.server({
      flags: config("[auth]", `jwt_secret = "${SECRET}"`, `connect_hook = "${hook.url}"`),
    });
    const before = hook.requests.length;
    // The hook is not called for a token that is refused.
    assert.equal(await refused(ctx, server.url, { auth: { token: "forged", mode: "ok" } }), "unauthorized");
    assert.equal(hook.requests.length, before);
    const s = await ctx.connect(server.url, { auth: { token: sign({ sub: "u9", uid: "from-token" }), mode: "ok", user: "9" } });
    assert.equal(hook.requests.at(-1).claims.sub, "u9");
    const data = (await sockets(server)).find((x) => x.id === s.id).data;
    assert.equal(data.sub, "u9");
    assert.equal(data.uid, "9", "the hook's data wins over a claim of the same name");
    assert.equal(data.name, "user 9");
  });

  test("connect_hook_concurrency bounds the requests in flight", T, async () => {
    const server = await ctx.server({
      flags: config("[auth]", `connect_hook = "${hook.url}"`, "connect_hook_concurrency = 2"),
    });
    hook.maxInFlight = 0;
    await Promise.all(Array.from({ length: 6 }, (_, i) => ctx.connect(server.url, { auth: { mode: "slow", user: `${i}` } })));
    assert.equal(hook.maxInFlight, 2);
  });
});

ioswarmOnly("[auth] configuration errors stop the node with a message naming the setting", () => {
  const badPem = path.join(dir, "bad.pem");
  writeFileSync(badPem, "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n");
  for (const [name, lines, setting] of [
    ["a bad PEM", [`jwt_public_key = "${badPem}"`], "auth.jwt_public_key"],
    ["an unreadable key file", ['jwt_public_key = "/nonexistent/key.pem"'], "auth.jwt_public_key"],
    ["both a secret and a key", ['jwt_secret = "s"', `jwt_public_key = "${badPem}"`], "auth.jwt_public_key"],
    ["an unknown key", ['jwt_secret = "s"', 'jwt_secert = "s"'], "jwt_secert"],
    ["an empty token_from", ['jwt_secret = "s"', "token_from = []"], "auth.token_from"],
    ["an unknown token source", ['jwt_secret = "s"', 'token_from = ["header"]'], "auth.token_from"],
    ["a hook URL that is not http(s)", ['connect_hook = "ftp://app/auth"'], "auth.connect_hook"],
    ["a zero hook timeout", ['connect_hook = "http://127.0.0.1:1/a"', "connect_hook_timeout_ms = 0"], "auth.connect_hook_timeout_ms"],
    ["a jwt option without a key", ['jwt_issuer = "https://app"'], "auth.jwt_issuer"],
  ]) {
    test(`${name}`, T, async () => {
      const res = await runToExit(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", ...config("[auth]", ...lines)]);
      assert.equal(res.signal, null, "the node had to be killed: it did not stop by itself");
      assert.notEqual(res.code, 0);
      assert.doesNotMatch(res.stdout, /ioswarm ready/);
      assert.ok(res.stderr.includes(setting), `stderr does not name ${setting}: ${res.stderr}`);
    });
  }

  test("--auth-token together with [auth] is refused", T, async () => {
    const res = await runToExit([
      "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--auth-token", "t",
      ...config("[auth]", 'jwt_secret = "s"'),
    ]);
    assert.notEqual(res.code, 0);
    assert.ok(res.stderr.includes("auth_token"), res.stderr);
  });
});
