// Operating a node: the admin token, JSON logs, draining on SIGTERM (--drain-ms,
// --drain-spread-ms) and the one shutdown deadline (--shutdown-grace-ms).
import assert from "node:assert/strict";
import { after, afterEach, describe, test } from "node:test";
import { Ctx, TARGET, call, once, record, runToExit, waitFor, WAIT_MS, ioswarmOnly } from "./harness.mjs";

const T = { timeout: 30_000 };
// The reference server (Node socket.io) does not implement these operational settings.

async function adminFetch(server, method, pathname, { token, body } = {}) {
  const headers = {};
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(server.adminUrl + pathname, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  return { status: res.status, text: await res.text(), headers: res.headers };
}

ioswarmOnly("admin API access (--admin-token)", () => {
  const ctx = new Ctx();
  afterEach(() => ctx.cleanup());

  test("with a token, /v1 and /cluster need the bearer token; /metrics and /healthz stay open", T, async () => {
    const server = await ctx.server({ flags: ["--admin-token", "letmein"] });
    const client = await ctx.connect(server.url, { transports: ["websocket"] });
    const got = record(client, "news");
    const emit = { event: "news", args: ["hi"] };
    for (const token of [undefined, "wrong", "letmei", "letmein "]) {
      const res = await adminFetch(server, "POST", "/v1/emit", { token, body: emit });
      if (token === "letmein ") {
        // Surrounding whitespace in the header value is not part of the token.
        assert.equal(res.status, 200);
        continue;
      }
      assert.equal(res.status, 401, `token ${token}`);
      assert.equal(res.headers.get("www-authenticate"), "Bearer");
      assert.match(res.text, /unauthorized/);
    }
    assert.equal((await adminFetch(server, "GET", "/v1/sockets")).status, 401);
    assert.equal((await adminFetch(server, "GET", "/cluster")).status, 401);
    assert.equal((await adminFetch(server, "POST", "/cluster/remove", { body: { node_id: 2 } })).status, 401);
    const ok = await adminFetch(server, "POST", "/v1/emit", { token: "letmein", body: emit });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(JSON.parse(ok.text).recipients, 1);
    await waitFor(() => got.length === 2, "both authorized emits delivered");
    assert.deepEqual(got, [["hi"], ["hi"]]);
    assert.equal((await adminFetch(server, "GET", "/metrics")).status, 200);
    assert.equal((await adminFetch(server, "GET", "/healthz")).status, 200);
  });

  test("IOSWARM_ADMIN_TOKEN sets it too; without a token the API is open on loopback", T, async () => {
    const guarded = await ctx.server({ env: { IOSWARM_ADMIN_TOKEN: "from-env" } });
    assert.equal((await adminFetch(guarded, "GET", "/v1/sockets")).status, 401);
    assert.equal((await adminFetch(guarded, "GET", "/v1/sockets", { token: "from-env" })).status, 200);
    const open = await ctx.server();
    assert.equal((await adminFetch(open, "GET", "/v1/sockets")).status, 200);
  });

  test("an admin listener beyond loopback without a token stops the node, naming both flags", T, async () => {
    const res = await runToExit(["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"]);
    assert.equal(res.signal, null, "the node had to be killed: it did not stop by itself");
    assert.notEqual(res.code, 0);
    assert.doesNotMatch(res.stdout, /ioswarm ready/);
    assert.match(res.stderr, /--admin-listen/);
    assert.match(res.stderr, /--admin-token/);
    // With a token the same listener is accepted.
    const server = await ctx.server({ adminListen: "0.0.0.0:0", flags: ["--admin-token", "t"] });
    const port = server.adminAddr.split(":").pop();
    const res2 = await fetch(`http://127.0.0.1:${port}/v1/sockets`, { signal: AbortSignal.timeout(WAIT_MS) });
    assert.equal(res2.status, 401);
  });
});

ioswarmOnly("logging (--log-format, --log)", () => {
  const ctx = new Ctx();
  afterEach(() => ctx.cleanup());

  test("--log-format json prints one JSON object per log line", T, async () => {
    const server = await ctx.server({ flags: ["--log-format", "json", "--log", "debug"] });
    await ctx.connect(server.url, { transports: ["websocket"] });
    await server.stop();
    const lines = server.stderr.split("\n").filter((l) => l.length > 0);
    assert.ok(lines.length >= 3, `too few log lines:\n${server.stderr}`);
    for (const line of lines) {
      const obj = JSON.parse(line); // throws on a line that is not one JSON object
      assert.equal(typeof obj, "object");
      assert.ok(obj.level && obj.timestamp && obj.fields, line);
    }
    assert.ok(lines.some((l) => JSON.parse(l).fields.message === "ioswarm node ready"));
  });

  test("--log-format text (the default) prints plain lines", T, async () => {
    const server = await ctx.server();
    await server.stop();
    const lines = server.stderr.split("\n").filter((l) => l.length > 0);
    assert.ok(lines.some((l) => / INFO .*ioswarm node ready/.test(l)), server.stderr);
    assert.ok(lines.every((l) => !l.startsWith("{")), server.stderr);
  });
});

ioswarmOnly("draining on SIGTERM (--drain-ms, --drain-spread-ms, --shutdown-grace-ms)", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  test("/healthz fails at once while clients keep being served for --drain-ms", T, async () => {
    const server = await ctx.server({ flags: ["--drain-ms", "1500", "--shutdown-grace-ms", "6000"] });
    const client = await ctx.connect(server.url, { transports: ["websocket"] });
    const got = record(client, "news");
    const closed = once(client, "disconnect", WAIT_MS * 2);
    assert.equal((await adminFetch(server, "GET", "/healthz")).status, 200);
    const signalled = Date.now();
    server.child.kill("SIGTERM");
    await waitFor(async () => (await adminFetch(server, "GET", "/healthz")).status === 503, "/healthz 503", 1000);
    // Still serving: the admin API, broadcasts, acks, and new clients.
    const res = await adminFetch(server, "POST", "/v1/emit", { body: { event: "news", args: ["during drain"] } });
    assert.equal(res.status, 200);
    await waitFor(() => got.length === 1, "broadcast during the drain");
    assert.deepEqual(await call(client, "ioswarm:echo", "still here"), ["still here"]);
    const late = await ctx.connect(server.url, { transports: ["polling"] });
    assert.deepEqual(await call(late, "ioswarm:echo", 1), [1]);
    const [reason] = await closed;
    const after = Date.now() - signalled;
    assert.equal(reason, "transport close");
    assert.ok(after >= 1400, `closed ${after} ms after SIGTERM, before --drain-ms`);
    const { code } = await server.exited;
    assert.equal(code, 0);
  });

  test("--drain-spread-ms closes clients spread over time, not all at once", T, async () => {
    const server = await ctx.server({ flags: ["--drain-spread-ms", "2000", "--shutdown-grace-ms", "8000"] });
    const clients = [];
    for (let i = 0; i < 10; i++) clients.push(await ctx.connect(server.url, { transports: ["websocket"] }));
    const times = clients.map((c) => once(c, "disconnect", WAIT_MS * 2).then(() => Date.now()));
    const signalled = Date.now();
    server.child.kill("SIGTERM");
    const at = (await Promise.all(times)).map((t) => t - signalled).sort((a, b) => a - b);
    // Evenly spread over 2 s: the first within the first quarter, the last after 1.5 s.
    assert.ok(at[0] < 800, `first close at ${at[0]} ms`);
    assert.ok(at[9] - at[0] >= 1500, `closes spread over ${at[9] - at[0]} ms only: ${at}`);
    assert.equal((await server.exited).code, 0);
  });

  test("without drain settings every client is closed at once", T, async () => {
    const server = await ctx.server();
    const clients = [];
    for (let i = 0; i < 5; i++) clients.push(await ctx.connect(server.url, { transports: ["websocket"] }));
    const times = clients.map((c) => once(c, "disconnect", WAIT_MS * 2).then(() => Date.now()));
    server.child.kill("SIGTERM");
    const at = await Promise.all(times);
    assert.ok(Math.max(...at) - Math.min(...at) < 500, `closes spread over ${Math.max(...at) - Math.min(...at)} ms`);
  });

  test("drain settings that do not fit in --shutdown-grace-ms stop the node at start", T, async () => {
    const res = await runToExit(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--drain-ms", "5000"]);
    assert.notEqual(res.code, 0);
    assert.match(res.stderr, /drain_ms/);
    assert.match(res.stderr, /shutdown_grace_ms/);
  });

  test("the whole shutdown, drain included, ends within --shutdown-grace-ms", T, async () => {
    // One deadline from SIGTERM to exit (it used to be up to three times the grace period).
    const server = await ctx.server({ flags: ["--drain-ms", "500", "--shutdown-grace-ms", "2500"] });
    const clients = [];
    for (let i = 0; i < 3; i++) clients.push(await ctx.connect(server.url, { transports: ["websocket"] }));
    const signalled = Date.now();
    server.child.kill("SIGTERM");
    const { code, signal } = await server.exited;
    const took = Date.now() - signalled;
    assert.equal(signal, null);
    assert.equal(code, 0);
    assert.ok(took < 2500 + 1500, `exited ${took} ms after SIGTERM with --shutdown-grace-ms 2500`);
    assert.ok(took >= 450, `exited ${took} ms after SIGTERM, before --drain-ms`);
  });
});

ioswarmOnly("acknowledgement wait (--ack-timeout-ms)", () => {
  const ctx = new Ctx();
  afterEach(() => ctx.cleanup());

  async function clients(server) {
    const silent = await ctx.connect(server.url, { transports: ["websocket"] });
    silent.on("ask", () => {}); // never answers
    const polite = await ctx.connect(server.url, { transports: ["websocket"] });
    polite.on("ask", (who, ack) => ack(`yes ${who}`));
  }

  test("an emit with ack and no timeout of its own waits --ack-timeout-ms", T, async () => {
    const server = await ctx.server({ flags: ["--ack-timeout-ms", "700"] });
    await clients(server);
    const started = Date.now();
    const res = await adminFetch(server, "POST", "/v1/emit", { body: { event: "ask", args: ["me"], ack: true } });
    const took = Date.now() - started;
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(JSON.parse(res.text), { recipients: 2, acks: [["yes me"]], timedOut: 1 });
    assert.ok(took >= 650, `answered after ${took} ms, before --ack-timeout-ms`);
    assert.ok(took < WAIT_MS, `answered after ${took} ms`);
    // ackTimeoutMs in the request overrides the server's default.
    const started2 = Date.now();
    const res2 = await adminFetch(server, "POST", "/v1/emit", { body: { event: "ask", args: ["x"], ackTimeoutMs: 100 } });
    assert.deepEqual(JSON.parse(res2.text), { recipients: 2, acks: [["yes x"]], timedOut: 1 });
    assert.ok(Date.now() - started2 < 650, "the request's own ackTimeoutMs was used");
  });

  test("the default wait (10 s) is longer", T, async () => {
    const server = await ctx.server();
    await clients(server);
    await assert.rejects(
      fetch(`${server.adminUrl}/v1/emit`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ event: "ask", args: ["me"], ack: true }),
        signal: AbortSignal.timeout(2000),
      }),
      /TimeoutError|aborted/,
    );
  });
});
