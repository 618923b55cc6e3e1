// Forwarding rules ([[forward]] in the TOML config): client events and $connect / $disconnect
// reach the application by webhook (whose reply acks, emits cluster-wide, joins, leaves or
// disconnects) or on a Redis channel (PSUBSCRIBE socket.io-events#*); failures answer the
// client's ack with {"error": …}; a per-client rate limit; configuration errors stop the node.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import jwt from "jsonwebtoken";
import {
  BIN,
  Ctx,
  QUIET_MS,
  ServerProcess,
  TARGET,
  call,
  cleanEnv,
  configFiles,
  ioswarmOnly,
  once,
  record,
  runToExit,
  sleep,
  waitFor,
} from "./harness.mjs";

const T = { timeout: 30_000 };
// The reference server (Node socket.io) has no [[forward]] table.

const SECRET = "forward-test-secret";
const token = (sub) => jwt.sign({ sub, exp: Math.floor(Date.now() / 1000) + 600 }, SECRET, { algorithm: "HS256" });

/** `config(...lines)` writes the TOML lines to a fresh file and returns the --config flags. */
const { flags: config } = configFiles("forward");

/** The value of `series` in `/metrics` (0 when absent). */
async function metric(server, series) {
  const res = await fetch(`${server.adminUrl}/metrics`);
  const line = (await res.text()).split("\n").find((l) => l.startsWith(series + " "));
  return line ? Number(line.split(" ")[1]) : 0;
}

/**
 * The application's webhook: records every request and answers by event name, the way a PHP
 * or Rails controller would.
 */
async function startApp() {
  const app = { requests: [], hanging: [], clicks: 0, failDisconnects: 0 };
  app.server = http.createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8").on("data", (d) => (body += d));
    req.on("end", () => {
      const msg = JSON.parse(body);
      app.requests.push(msg);
      const reply = (status, value) =>
        res.writeHead(status, { "content-type": "application/json" }).end(typeof value === "string" ? value : JSON.stringify(value));
      switch (msg.event) {
        case "document::clicked":
          app.clicks += 1;
          return reply(200, { ack: ["ok"], emit: [{ event: "Analytics::counter", args: [app.clicks] }] });
        case "room:join":
          return reply(200, { join: [msg.args[0]], ack: ["joined"] });
        case "room:leave":
          return reply(200, { leave: [msg.args[0]], ack: ["left"] });
        case "room:bad":
          return reply(200, { join: [msg.socket.id, "x".repeat(300), "fine"], ack: ["tried"] });
        case "message": {
          // The chat flow: broadcast to the room (not back to the sender), ack the sender.
          const { room, text } = msg.args[0];
          return reply(200, {
            emit: [{ rooms: [room], except: [msg.socket.id], event: "message", args: [{ from: msg.socket.data.sub, text }] }],
            ack: ["Message received!"],
          });
        }
        case "bye":
          return reply(200, { ack: ["bye"], disconnect: true });
        case "fail":
          return reply(500, { message: "boom" });
        case "bad":
          return reply(200, "<html>not json</html>");
        case "delay":
          return setTimeout(() => reply(200, { ack: ["delayed"] }), 150);
        case "slow":
          app.hanging.push(res);
          return;
        case "$disconnect":
          if (app.failDisconnects > 0) {
            app.failDisconnects -= 1;
            return reply(503, "{}");
          }
          return reply(200, {});
        default:
          return reply(204, "");
      }
    });
  });
  await new Promise((resolve) => app.server.listen(0, "127.0.0.1", resolve));
  app.url = `http://127.0.0.1:${app.server.address().port}/socket-events`;
  app.of = (event) => app.requests.filter((r) => r.event === event);
  app.close = () => {
    for (const res of app.hanging) res.destroy();
    app.server.closeAllConnections();
    return new Promise((resolve) => app.server.close(resolve));
  };
  return app;
}

/** A raw RESP connection that PSUBSCRIBEs `pattern`; collects [channel, message] pairs. */
async function psubscribe(port, pattern) {
  const socket = net.connect(port, "127.0.0.1");
  await once(socket, "connect");
  const sub = { messages: [], socket };
  let buf = Buffer.alloc(0);
  socket.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    // Frames: *N\r\n then N bulk strings ($len\r\n…\r\n) or integers (:n\r\n).
    for (;;) {
      const items = [];
      let at = 0;
      const line = () => {
        const end = buf.indexOf("\r\n", at);
        if (end < 0) return null;
        const text = buf.subarray(at, end).toString("utf8");
        at = end + 2;
        return text;
      };
      const head = line();
      if (head === null || !head.startsWith("*")) return;
      let complete = true;
      for (let i = 0; i < Number(head.slice(1)); i++) {
        const h = line();
        if (h === null) { complete = false; break; }
        if (h.startsWith(":")) { items.push(Number(h.slice(1))); continue; }
        const len = Number(h.slice(1));
        if (buf.length < at + len + 2) { complete = false; break; }
        items.push(buf.subarray(at, at + len).toString("utf8"));
        at += len + 2;
      }
      if (!complete) return;
      buf = buf.subarray(at);
      if (items[0] === "pmessage") sub.messages.push([items[2], items[3]]);
      if (items[0] === "psubscribe") sub.ready = true;
    }
  });
  socket.write(`*2\r\n$10\r\nPSUBSCRIBE\r\n$${Buffer.byteLength(pattern)}\r\n${pattern}\r\n`);
  await waitFor(() => sub.ready, "PSUBSCRIBE confirmed");
  return sub;
}

ioswarmOnly("[[forward]] webhooks and channels (single node)", () => {
  const ctx = new Ctx();
  let app;
  let server;
  before(async () => {
    app = await startApp();
  });
  after(async () => {
    await ctx.cleanup();
    await app.close();
  });
  afterEach(() => ctx.resetClients(server, ["/"]));

  before(async () => {
    server = await ctx.server({
      flags: config(
        "[auth]",
        `jwt_secret = "${SECRET}"`,
        "[[forward]]",
        'nsp = "/"',
        'events = ["document::clicked", "room:*", "message", "bye", "fail", "bad", "slow", "delay", "$connect", "$disconnect"]',
        `url = "${app.url}"`,
        "timeout_ms = 500",
        "retry_ms = 10000",
        "[[forward]]",
        'events = ["Thing::*"]',
        'channel = "socket.io-events"',
      ),
    });
  });

  const page = (sub, opts = {}) => ctx.connect(server.url, { auth: { token: token(sub) }, ...opts });

  test("click tracking: the webhook gets the event with the socket; its ack and emit reach the pages", T, async () => {
    const a = await page("u1");
    const b = await page("u2", { transports: ["websocket"] });
    const countsA = record(a, "Analytics::counter");
    const countsB = record(b, "Analytics::counter");
    const before = app.clicks;
    const ack = await call(a, "document::clicked", { x: 10, y: 20 });
    assert.deepEqual(ack, ["ok"]);
    const req = app.of("document::clicked").at(-1);
    assert.equal(req.nsp, "/");
    assert.deepEqual(req.args, [{ x: 10, y: 20 }]);
    assert.equal(req.socket.id, a.id);
    assert.equal(req.socket.data.sub, "u1", "socket.data (the JWT claims) is forwarded");
    assert.deepEqual(req.socket.rooms, []);
    assert.equal(req.node, null);
    await waitFor(() => countsA.length === 1 && countsB.length === 1, "every page gets Analytics::counter");
    assert.deepEqual(countsB[0], [before + 1]);
  });

  test("binary arguments are forwarded as base64 with a marker", T, async () => {
    const a = await page("u1");
    assert.deepEqual(await call(a, "document::clicked", Buffer.from([0, 1, 2, 255]), "x"), ["ok"]);
    assert.deepEqual(app.of("document::clicked").at(-1).args, [{ _binary: "AAEC/w==" }, "x"]);
  });

  test("join / leave / disconnect replies apply to the sending socket; bad rooms are skipped", T, async () => {
    const a = await page("u1");
    const sockets = async () => (await server.admin("GET", "/v1/sockets")).json.sockets.find((s) => s.id === a.id);
    assert.deepEqual(await call(a, "room:join", "chat:lobby"), ["joined"]);
    assert.deepEqual((await sockets()).rooms, ["chat:lobby"]);
    assert.deepEqual(await call(a, "document::clicked"), ["ok"]);
    assert.deepEqual(app.of("document::clicked").at(-1).socket.rooms, ["chat:lobby"]);
    assert.deepEqual(await call(a, "room:leave", "chat:lobby"), ["left"]);
    assert.deepEqual((await sockets()).rooms, []);
    assert.deepEqual(await call(a, "room:bad"), ["tried"]);
    assert.deepEqual((await sockets()).rooms, ["fine"], "a socket-id room and a 300-byte room are refused");
    const gone = once(a, "disconnect");
    assert.deepEqual(await call(a, "bye"), ["bye"]);
    assert.equal((await gone)[0], "io server disconnect");
  });

  test("one socket's events reach the webhook in the order sent, each after the previous reply", T, async () => {
    const a = await page("u1");
    const order = [];
    const first = call(a, "delay").then((r) => order.push(["delay", r]));
    const second = call(a, "document::clicked").then((r) => order.push(["click", r]));
    await Promise.all([first, second]);
    assert.deepEqual(order, [["delay", ["delayed"]], ["click", ["ok"]]]);
    const mine = app.requests.filter((r) => r.socket.id === a.id && r.event !== "$connect").map((r) => r.event);
    assert.deepEqual(mine, ["delay", "document::clicked"]);
  });

  test("chat: the app broadcasts to the room and acks 'Message received!'", T, async () => {
    const [alice, bob, carol] = [await page("alice"), await page("bob"), await page("carol")];
    await call(alice, "room:join", "chat:rust");
    await call(bob, "room:join", "chat:rust");
    const gotAlice = record(alice, "message");
    const gotBob = record(bob, "message");
    const gotCarol = record(carol, "message");
    assert.deepEqual(await call(alice, "message", { room: "chat:rust", text: "hi" }), ["Message received!"]);
    await waitFor(() => gotBob.length === 1, "bob gets the message");
    assert.deepEqual(gotBob[0], [{ from: "alice", text: "hi" }]);
    await sleep(QUIET_MS);
    assert.equal(gotAlice.length, 0, "not echoed to the sender");
    assert.equal(gotCarol.length, 0, "not sent outside the room");
  });

  test("500, bad JSON and timeout answer {error}; a hanging webhook does not hold up other clients", T, async () => {
    const a = await page("u1");
    const b = await page("u2");
    const before = await metric(server, 'ioswarm_forward_requests_total{result="bad_status"}');
    assert.deepEqual(await call(a, "fail"), [{ error: "webhook error" }]);
    assert.deepEqual(await call(a, "bad"), [{ error: "bad webhook reply" }]);
    let slowDone = false;
    const slow = call(a, "slow").finally(() => (slowDone = true));
    await waitFor(() => app.hanging.length > 0, "the slow request reaches the app");
    assert.deepEqual(await call(b, "document::clicked"), ["ok"], "another client is served meanwhile");
    assert.equal(slowDone, false, "served while the slow request still hangs");
    assert.deepEqual(await slow, [{ error: "webhook timeout" }]);
    assert.equal(await metric(server, 'ioswarm_forward_requests_total{result="bad_status"}'), before + 1);
    assert.ok((await metric(server, 'ioswarm_forward_requests_total{result="timeout"}')) >= 1);
    assert.ok((await metric(server, 'ioswarm_forward_requests_total{result="bad_reply"}')) >= 1);
  });

  test("events no rule matches are acked with nothing and not forwarded", T, async () => {
    const a = await page("u1");
    // The page's own $connect is on its way too: count from after it.
    await waitFor(() => app.of("$connect").some((r) => r.socket.id === a.id), "$connect arrives");
    const n = app.requests.length;
    assert.deepEqual(await call(a, "not:forwarded", 1), []);
    assert.deepEqual(await call(a, "ioswarm:echo", 1), [1], "built-in events keep precedence");
    assert.deepEqual(await call(a, "$connect"), [], "a client cannot pose as a lifecycle event");
    await sleep(QUIET_MS);
    assert.equal(app.requests.length, n);
  });

  test("$connect and $disconnect reach the webhook, with the reason; a failed $disconnect is retried", T, async () => {
    const a = await page("u7");
    await waitFor(() => app.of("$connect").some((r) => r.socket.id === a.id), "$connect arrives");
    assert.equal(app.of("$connect").find((r) => r.socket.id === a.id).socket.data.sub, "u7");
    const id = a.id;
    a.disconnect();
    await waitFor(() => app.of("$disconnect").some((r) => r.socket.id === id), "$disconnect arrives");
    const req = app.of("$disconnect").find((r) => r.socket.id === id);
    assert.equal(req.reason, "client namespace disconnect");
    assert.deepEqual(req.args, ["client namespace disconnect"]);

    const retriesBefore = await metric(server, "ioswarm_forward_retries_total");
    const b = await page("u8");
    const idB = b.id;
    app.failDisconnects = 1;
    b.disconnect();
    await waitFor(() => app.of("$disconnect").filter((r) => r.socket.id === idB).length === 2, "the retry arrives");
    assert.equal(app.failDisconnects, 0, "the first POST got the 503");
    assert.equal(await metric(server, "ioswarm_forward_retries_total"), retriesBefore + 1);
  });

  test("the Redis channel: PSUBSCRIBE socket.io-events#* gets <channel>#<nsp>#<event> with the JSON", T, async () => {
    const sub = await psubscribe(server.redis.port, "socket.io-events#*");
    try {
      const a = await page("u1");
      assert.deepEqual(await call(a, "Thing::update", { id: 3, name: "lamp" }), []);
      await waitFor(() => sub.messages.length === 1, "the worker gets the event");
      const [channel, text] = sub.messages[0];
      assert.equal(channel, "socket.io-events#/#Thing::update");
      const msg = JSON.parse(text);
      assert.equal(msg.event, "Thing::update");
      assert.deepEqual(msg.args, [{ id: 3, name: "lamp" }]);
      assert.equal(msg.socket.id, a.id);
      assert.equal(msg.socket.data.sub, "u1");
    } finally {
      sub.socket.destroy();
    }
  });
});

ioswarmOnly("[[forward]] limits and failures", () => {
  const ctx = new Ctx();
  afterEach(() => ctx.cleanup());

  test("the per-client rate limit refuses the excess with an ack error and counts it", T, async () => {
    const server = await ctx.server({
      flags: config("[[forward]]", 'events = ["tick"]', 'channel = "ev"', "max_events_per_s = 1", "burst = 3"),
    });
    const a = await ctx.connect(server.url);
    const b = await ctx.connect(server.url);
    const acks = [];
    for (let i = 0; i < 5; i++) acks.push(await call(a, "tick", i));
    assert.deepEqual(acks.slice(0, 3), [[], [], []]);
    assert.deepEqual(acks.slice(3), [[{ error: "rate limited" }], [{ error: "rate limited" }]]);
    assert.deepEqual(await call(b, "tick"), [], "another client has its own budget");
    assert.equal(await metric(server, "ioswarm_forward_rate_limited_total"), 2);
    await sleep(1100);
    assert.deepEqual(await call(a, "tick"), [], "the budget refills");
  });

  test("a webhook that is down answers {error} and the others keep working", T, async () => {
    const closed = http.createServer();
    await new Promise((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = closed.address().port;
    await new Promise((resolve) => closed.close(resolve));
    const server = await ctx.server({
      flags: config("[[forward]]", 'events = ["click"]', `url = "http://127.0.0.1:${port}/x"`, "timeout_ms = 2000"),
    });
    const a = await ctx.connect(server.url);
    assert.deepEqual(await call(a, "click"), [{ error: "webhook unavailable" }]);
    assert.deepEqual(await call(a, "ioswarm:echo", 2), [2]);
    assert.ok((await metric(server, 'ioswarm_forward_requests_total{result="unreachable"}')) >= 1);
  });

  test("a full queue refuses with busy", T, async () => {
    const app = await startApp();
    try {
      const server = await ctx.server({
        flags: config("[[forward]]", 'events = ["slow"]', `url = "${app.url}"`, "concurrency = 1", "queue = 1", "timeout_ms = 3000"),
      });
      const a = await ctx.connect(server.url);
      const first = call(a, "slow");
      const second = call(a, "slow");
      await waitFor(() => app.hanging.length === 1, "the first request is in flight");
      assert.deepEqual(await call(a, "slow"), [{ error: "busy" }]);
      assert.equal(await metric(server, 'ioswarm_forward_requests_total{result="busy"}'), 1);
      for (const res of app.hanging) res.writeHead(200).end(JSON.stringify({ ack: ["done"] }));
      assert.deepEqual(await first, ["done"]);
      await waitFor(() => app.hanging.length === 2, "the queued request goes once a slot is free");
      app.hanging[1].writeHead(200).end(JSON.stringify({ ack: ["done"] }));
      assert.deepEqual(await second, ["done"]);
    } finally {
      await app.close();
    }
  });

  const bad = [
    [["[[forward]]", 'events = ["a"]'], "forward[0].url"],
    [["[[forward]]", 'events = ["a"]', 'url = "http://127.0.0.1:1/x"', 'channel = "c"'], "forward[0].url"],
    [["[[forward]]", 'events = ["a"]', 'url = "ftp://x/"'], "forward[0].url"],
    [["[[forward]]", "events = []", 'channel = "c"'], "forward[0].events"],
    [["[[forward]]", 'events = ["a", ""]', 'channel = "c"'], "forward[0].events[1]"],
    [["[[forward]]", 'events = ["a[b"]', 'channel = "c"'], "forward[0].events[0]"],
    [["[[forward]]", 'events = ["a"]', 'channel = "c"', "[[forward]]", 'events = ["a"]', 'url = "http://x/"', "timeout_ms = 0"], "forward[1].timeout_ms"],
    [["[[forward]]", 'events = ["a"]', 'url = "http://x/"', "timeout_ms = 999999999"], "forward[0].timeout_ms"],
    [["[[forward]]", 'events = ["a"]', 'channel = "c"', "bogus = 1"], "bogus"],
  ];
  for (const [lines, setting] of bad) {
    test(`a bad [[forward]] stops the node naming ${setting}`, T, async () => {
      const res = await runToExit(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", ...config(...lines)]);
      assert.equal(res.signal, null, "the node had to be killed: it did not stop by itself");
      assert.notEqual(res.code, 0);
      assert.doesNotMatch(res.stdout, /ioswarm ready/);
      assert.ok(res.stderr.includes(setting), `stderr does not name ${setting}: ${res.stderr}`);
    });
  }
});

ioswarmOnly("[[forward]] on a two-node cluster", () => {
  const ctx = new Ctx();
  const cdir = mkdtempSync(path.join(tmpdir(), "ioswarm-forward-cluster-"));
  let app;
  after(async () => {
    await ctx.cleanup();
    if (app) await app.close();
    rmSync(cdir, { recursive: true, force: true });
  });

  let ca;
  const creds = (id) => {
    if (!ca) {
      ca = path.join(cdir, "ca");
      const res = spawnSync(BIN, ["cluster", "init-ca", "--dir", ca], { encoding: "utf8" });
      assert.equal(res.status, 0, res.stderr);
    }
    const out = path.join(cdir, `creds${id}`);
    const res = spawnSync(BIN, ["cluster", "issue", "--ca", ca, "--node-id", String(id), "--out", out], { encoding: "utf8" });
    assert.equal(res.status, 0, res.stderr);
    return out;
  };
  async function node(id, flags) {
    const args = [
      "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--redis-listen", "127.0.0.1:0",
      "--node-id", String(id), "--cluster-credentials", creds(id), "--cluster-listen", "127.0.0.1:0",
      "--data-dir", mkdtempSync(path.join(cdir, `data${id}-`)), ...flags,
    ];
    const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: cleanEnv() });
    const server = new ServerProcess(child, [BIN, ...args].join(" "), { readyMs: 60_000 });
    ctx.servers.push(server);
    await server.ready;
    return server;
  }

  test("a webhook's emit and a channel's PUBLISH reach the other node", { timeout: 120_000 }, async () => {
    app = await startApp();
    const flags = config(
      "[[forward]]", 'events = ["document::clicked"]', `url = "${app.url}"`,
      "[[forward]]", 'events = ["Thing::*"]', 'channel = "socket.io-events"',
    );
    const n1 = await node(1, flags);
    const n2 = await node(2, [...flags, "--join", n1.addrs.cluster]);
    await waitFor(async () => {
      const res = await n1.admin("GET", "/cluster");
      return res.json.members.some((m) => m.node_id === 2 && m.connected && m.liveness === "alive");
    }, "node 2 is alive for node 1", 30_000);
    const sub = await psubscribe(n2.redis.port, "socket.io-events#*");
    try {
      const clicker = await ctx.connect(n1.url);
      const viewer = await ctx.connect(n2.url);
      const counts = record(viewer, "Analytics::counter");
      // A page on node 2 gets the counter the app emitted in its reply to node 1.
      await waitFor(async () => {
        assert.deepEqual(await call(clicker, "document::clicked"), ["ok"]);
        return counts.length > 0;
      }, "the emit reaches node 2", 20_000);
      assert.equal(app.of("document::clicked").at(-1).node, 1);
      // A worker subscribed on node 2 gets what a client of node 1 sent.
      await waitFor(async () => {
        await call(clicker, "Thing::update", { id: 1 });
        return sub.messages.length > 0;
      }, "the PUBLISH reaches node 2's subscriber", 20_000);
      const [channel, text] = sub.messages[0];
      assert.equal(channel, "socket.io-events#/#Thing::update");
      assert.equal(JSON.parse(text).node, 1);
    } finally {
      sub.socket.destroy();
    }
  });
});
