// Connection state recovery (--recovery-ms) with the real socket.io-client 4.8: a client whose
// connection dies gets the same socket id, rooms and data back, then the broadcasts it missed in
// order, and `socket.recovered` is true. On one node (a network blip: the client closes its
// transport and reconnects) and across a 3-node cluster (reconnecting to another node directly
// or through an HAProxy round-robin balancer, the node left draining on SIGTERM, the node killed
// with kill -9). The single-node cases the reference server (socket.io 4.8's own recovery) also
// passes run against it too.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { io } from "socket.io-client";
import { startCluster } from "../cluster-process.mjs";
import { Ctx, ServerProcess, call, configFiles, connected, ioswarmOnly, once, record, sleep, waitFor, TARGET, WAIT_MS } from "./harness.mjs";

const T = { timeout: 30_000 };
const RECOVERY = ["--recovery-ms", "60000", "--client-rooms"];
const WS = { transports: ["websocket"] };

/** The sockets `server` lists in `nsp` (cluster-wide on a cluster node). */
async function sockets(server, nsp = "/") {
  const res = await server.admin("GET", `/v1/sockets?nsp=${encodeURIComponent(nsp)}`);
  assert.equal(res.status, 200, res.text);
  return res.json.sockets;
}

/** The rooms of socket `id` as `server` lists them, its own id left out, sorted. */
async function roomsOf(server, id) {
  const socket = (await sockets(server)).find((s) => s.id === id);
  assert.ok(socket, `socket ${id} is listed`);
  return socket.rooms.filter((r) => r !== id).sort();
}

/**
 * A network blip: the client's transport ends (the client keeps its private id and last
 * offset); resolves with the disconnect reason once `server` no longer lists the socket.
 */
async function blip(server, socket) {
  const id = socket.id;
  const gone = once(socket, "disconnect");
  socket.io.engine.close();
  const [reason] = await gone;
  await waitFor(async () => !(await sockets(server)).some((s) => s.id === id), "the server drops the socket");
  return reason;
}

/** Reconnects a client whose connection ended (reconnection is off in these tests). */
async function reconnect(socket, ms = WAIT_MS) {
  socket.connect();
  return connected(socket, ms);
}

/** The first argument of each recorded event (socket.io-client passes the offset after it). */
const firsts = (got) => got.map((args) => args[0]);

/**
 * `firsts(got)` with the events from index `from` on in ascending order: for broadcasts sent by
 * different nodes one after the other, which the cluster forwards independently (no order
 * between origins is promised), while those before `from` must have kept their order.
 */
const byOrigin = (got, from) => {
  const all = firsts(got);
  return [...all.slice(0, from), ...all.slice(from).sort((a, b) => a - b)];
};

describe("connection state recovery (one node)", () => {
  const ctx = new Ctx();
  afterEach(() => ctx.cleanup());

  test("a blip gives back the same id and rooms, then the missed broadcasts in order", T, async () => {
    const server = await ctx.server({ flags: RECOVERY });
    const c = await ctx.connect(server.url, WS);
    assert.equal(c.recovered, false);
    await call(c, "ioswarm:join", ["r", "s"]);
    const news = record(c, "news");
    await server.emit({ rooms: ["r"], event: "news", args: [1] });
    await waitFor(() => news.length === 1, "news 1");
    assert.equal(typeof news[0].at(-1), "string", "a recoverable broadcast carries its offset last");
    const id = c.id;

    // The client's own view of closing its transport.
    assert.equal(await blip(server, c), "forced close");
    await server.emit({ rooms: ["r"], event: "news", args: [2] });
    await server.emit({ rooms: ["other"], event: "news", args: [3] });
    await server.emit({ event: "news", args: [4] });
    await server.emit({ rooms: [id], event: "news", args: [5] });
    await server.emit({ rooms: ["r"], except: ["s"], event: "news", args: [6] });
    await server.emit({ nsp: "/chat", event: "news", args: [7] });
    await reconnect(c);
    assert.equal(c.recovered, true);
    assert.equal(c.id, id);
    await waitFor(() => news.length === 4, "the missed broadcasts");
    assert.deepEqual(firsts(news), [1, 2, 4, 5]);
    assert.deepEqual(await roomsOf(server, id), ["r", "s"]);
    await server.emit({ rooms: ["s"], event: "news", args: [8] });
    await waitFor(() => news.length === 5, "a broadcast to a recovered room");
    assert.deepEqual(firsts(news), [1, 2, 4, 5, 8]);

    // Recovered twice in a row, the second time with nothing missed.
    await blip(server, c);
    await reconnect(c);
    assert.equal(c.recovered, true);
    assert.equal(c.id, id);
    await server.emit({ rooms: ["r"], event: "news", args: [9] });
    await waitFor(() => news.length === 6, "news 9");
    assert.deepEqual(firsts(news), [1, 2, 4, 5, 8, 9]);
    if (TARGET === "ioswarm") {
      const metrics = (await server.admin("GET", "/metrics")).text;
      assert.match(metrics, /^ioswarm_recovery_attempts_total\{result="recovered"\} 2$/m);
    }
  });

  test("a long-polling client is recovered the same way", T, async () => {
    const server = await ctx.server({ flags: RECOVERY });
    const c = await ctx.connect(server.url, { transports: ["polling"] });
    await call(c, "ioswarm:join", "r");
    const news = record(c, "news");
    await server.emit({ rooms: ["r"], event: "news", args: [1] });
    await waitFor(() => news.length === 1, "news 1");
    const id = c.id;
    await blip(server, c);
    await server.emit({ rooms: ["r"], event: "news", args: [2] });
    await server.emit({ rooms: ["r"], event: "news", args: [3] });
    await reconnect(c);
    assert.equal(c.recovered, true);
    assert.equal(c.id, id);
    await waitFor(() => news.length === 3, "the missed broadcasts");
    assert.deepEqual(firsts(news), [1, 2, 3]);
  });

  test("a client that never received a broadcast is recovered too", T, async () => {
    const server = await ctx.server({ flags: RECOVERY });
    const c = await ctx.connect(server.url, WS);
    await call(c, "ioswarm:join", "r");
    const id = c.id;
    const news = record(c, "news");
    await blip(server, c);
    await server.emit({ rooms: ["r"], event: "news", args: ["missed"] });
    await reconnect(c);
    // socket.io 4.8 recovers only a client holding an offset.
    if (TARGET === "reference") return assert.equal(c.recovered, false);
    assert.equal(c.recovered, true);
    assert.equal(c.id, id);
    await waitFor(() => news.length === 1, "the missed broadcast");
    assert.deepEqual(firsts(news), ["missed"]);
  });

  test("after --recovery-ms the session is gone: a fresh socket", T, async () => {
    const server = await ctx.server({ flags: ["--recovery-ms", "800", "--client-rooms"] });
    const c = await ctx.connect(server.url, WS);
    await call(c, "ioswarm:join", "r");
    const news = record(c, "news");
    await server.emit({ rooms: ["r"], event: "news", args: [1] });
    await waitFor(() => news.length === 1, "news 1");
    const id = c.id;
    await blip(server, c);
    await server.emit({ rooms: ["r"], event: "news", args: [2] });
    await sleep(1300);
    await reconnect(c);
    assert.equal(c.recovered, false);
    assert.notEqual(c.id, id);
    assert.deepEqual(await roomsOf(server, c.id), []);
    await sleep(200);
    assert.deepEqual(firsts(news), [1], "nothing is replayed to a fresh session");
  });

  test("a private id that is not the client's own gives a fresh socket, never another's", T, async () => {
    const server = await ctx.server({ flags: RECOVERY });
    const victim = await ctx.connect(server.url, WS);
    await call(victim, "ioswarm:join", "secret-room");
    const news = record(victim, "news");
    await server.emit({ rooms: ["secret-room"], event: "news", args: [1] });
    await waitFor(() => news.length === 1, "news 1");
    const forged = (id) => ({ pid: `${id}${"A".repeat(20)}`, offset: news[0].at(-1) });

    // While the victim is connected.
    const thief = await ctx.connect(server.url, { ...WS, auth: forged(victim.id) });
    assert.notEqual(thief.id, victim.id);
    assert.deepEqual(await roomsOf(server, thief.id), []);
    assert.equal(victim.connected, true);

    // While the victim is away: the forged attempt leaves its session alone.
    const id = victim.id;
    await blip(server, victim);
    const thief2 = await ctx.connect(server.url, { ...WS, auth: forged(id) });
    assert.notEqual(thief2.id, id);
    const stolen = record(thief2, "news");
    await server.emit({ rooms: ["secret-room"], event: "news", args: [2] });
    await reconnect(victim);
    assert.equal(victim.recovered, true);
    assert.equal(victim.id, id);
    await waitFor(() => news.length === 2, "the victim gets what it missed");
    assert.deepEqual(firsts(stolen), []);

    // Garbage in the auth object is no recovery attempt at all.
    const odd = await ctx.connect(server.url, { ...WS, auth: { pid: 42, offset: { x: 1 } } });
    assert.equal(odd.recovered, false);
  });

  test("without --recovery-ms nothing changes: no private id, no offset, no recovery", T, async () => {
    const server = await ctx.server({ flags: ["--client-rooms"] });
    const c = await ctx.connect(server.url, WS);
    await call(c, "ioswarm:join", "r");
    const news = record(c, "news");
    await server.emit({ rooms: ["r"], event: "news", args: [1] });
    await waitFor(() => news.length === 1, "news 1");
    assert.deepEqual(news[0], [1]);
    assert.equal(c._pid, undefined);
    const id = c.id;
    await blip(server, c);
    await reconnect(c);
    assert.ok(!c.recovered);
    assert.notEqual(c.id, id);
  });
});

ioswarmOnly("connection state recovery: bounds, takeover, auth data, forwarding, presence", () => {
  const ctx = new Ctx();
  const files = configFiles("recovery");
  afterEach(() => ctx.cleanup());

  /** A client in room "r" that received one broadcast (so it holds an offset). */
  async function member(server) {
    const c = await ctx.connect(server.url, WS);
    await call(c, "ioswarm:join", "r");
    const got = record(c, "news");
    await server.emit({ rooms: [c.id], event: "news", args: [0] });
    await waitFor(() => got.length === 1, "first broadcast");
    return { c, got, id: c.id };
  }

  test("--recovery-max-packets: a client that missed more gets a fresh session", T, async () => {
    const server = await ctx.server({ flags: [...RECOVERY, "--recovery-max-packets", "2"] });
    const { c, got, id } = await member(server);
    await blip(server, c);
    for (const n of [1, 2]) await server.emit({ rooms: ["r"], event: "news", args: [n] });
    await reconnect(c);
    assert.equal(c.recovered, true, "two missed: recovered");
    await waitFor(() => got.length === 3, "two missed broadcasts");
    await blip(server, c);
    for (const n of [3, 4, 5]) await server.emit({ rooms: ["r"], event: "news", args: [n] });
    await reconnect(c);
    assert.equal(c.recovered, false, "three missed: fresh");
    assert.notEqual(c.id, id);
    await sleep(200);
    assert.deepEqual(firsts(got), [0, 1, 2]);
    const metrics = (await server.admin("GET", "/metrics")).text;
    assert.match(metrics, /^ioswarm_recovery_attempts_total\{result="too_many"\} 1$/m);
  });

  test("--recovery-max-bytes: more missed bytes give a fresh session", T, async () => {
    const server = await ctx.server({ flags: [...RECOVERY, "--recovery-max-bytes", "3000"] });
    const { c, got } = await member(server);
    const big = "x".repeat(2000);
    await blip(server, c);
    await server.emit({ rooms: ["r"], event: "news", args: [big] });
    await reconnect(c);
    assert.equal(c.recovered, true, "2 KB missed: recovered");
    await waitFor(() => got.length === 2, "the big broadcast");
    await blip(server, c);
    await server.emit({ rooms: ["r"], event: "news", args: [big] });
    await server.emit({ rooms: ["r"], event: "news", args: [big] });
    await reconnect(c);
    assert.equal(c.recovered, false, "4 KB missed: fresh");
  });

  test("--recovery-max-sessions: the session closest to expiry is dropped first", T, async () => {
    const server = await ctx.server({ flags: [...RECOVERY, "--recovery-max-sessions", "1"] });
    const a = await member(server);
    const b = await member(server);
    await blip(server, a.c);
    await blip(server, b.c);
    await reconnect(a.c);
    await reconnect(b.c);
    assert.equal(a.c.recovered, false, "a's session was dropped for b's");
    assert.equal(b.c.recovered, true);
    assert.equal(b.c.id, b.id);
    const metrics = (await server.admin("GET", "/metrics")).text;
    assert.match(metrics, /^ioswarm_recovery_sessions_dropped_total\{reason="evicted"\} 1$/m);
  });

  test("--recovery-log-bytes: broadcasts evicted while a client was away give a fresh session", T, async () => {
    for (const [logBytes, recovered] of [["65536", true], ["4096", false]]) {
      const server = await ctx.server({ flags: [...RECOVERY, "--recovery-log-bytes", logBytes] });
      const { c } = await member(server);
      await blip(server, c);
      for (let i = 0; i < 10; i++) await server.emit({ rooms: ["elsewhere"], event: "news", args: ["y".repeat(500)] });
      await reconnect(c);
      assert.equal(c.recovered, recovered, `--recovery-log-bytes ${logBytes}`);
    }
  });

  test("a client back before its old connection was found dead takes its session over", T, async () => {
    const server = await ctx.server({ flags: RECOVERY });
    const { c: old, id } = await member(server);
    const oldGone = once(old, "disconnect");
    // What socket.io-client sends on reconnect, from a second client: the old connection is
    // still open as far as the server knows.
    const again = ctx.client(server.url, { ...WS, auth: { pid: old._pid, offset: old._lastOffset } });
    const got = record(again, "news");
    await connected(again);
    assert.equal(again.id, id);
    await oldGone;
    assert.deepEqual(await roomsOf(server, id), ["r"]);
    assert.equal((await sockets(server)).filter((s) => s.id === id).length, 1);
    await server.emit({ rooms: ["r"], event: "news", args: [1] });
    await waitFor(() => got.length === 1, "a broadcast to the room reaches the new connection");
  });

  test("[auth] data stays, presence counts once, and forwarding sees $disconnect then $connect (recovered)", T, async () => {
    const hooks = [];
    const app = http.createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        hooks.push(JSON.parse(body));
        res.writeHead(200, { "content-type": "application/json" });
        res.end("{}");
      });
    });
    await new Promise((resolve) => app.listen(0, "127.0.0.1", resolve));
    after(() => app.close());
    const hookUrl = `http://127.0.0.1:${app.address().port}/hook`;
    const config = files.flags(
      "[auth]",
      `connect_hook = "${hookUrl}"`,
      "[[presence]]",
      'key = "users:count"',
      "[[forward]]",
      'events = ["$connect", "$disconnect"]',
      `url = "${hookUrl}"`,
    );
    const server = await ctx.server({ flags: [...RECOVERY, ...config] });
    // The connect hook (same URL) grants data; the lifecycle events come after.
    const c = await ctx.connect(server.url, { ...WS, auth: { user: "ada" } });
    const id = c.id;
    const data = (await sockets(server))[0].data;
    assert.deepEqual(data, {});
    const count = async () => (await server.admin("GET", "/v1/presence?key=users:count")).json.value;
    await waitFor(async () => (await count()) === 1, "users:count 1");
    await blip(server, c);
    await waitFor(async () => (await count()) === 0, "users:count 0 while away");
    await reconnect(c);
    assert.equal(c.recovered, true);
    assert.equal(c.id, id);
    await waitFor(async () => (await count()) === 1, "users:count 1 once recovered");
    await sleep(300);
    assert.equal(await count(), 1, "a recovered socket is counted once");
    await waitFor(() => hooks.filter((h) => h.event).length === 3, "three lifecycle events");
    const lifecycle = hooks.filter((h) => h.event).map((h) => [h.event, h.reason ?? null, h.recovered ?? false, h.socket.id]);
    assert.deepEqual(lifecycle, [
      ["$connect", null, false, id],
      ["$disconnect", "transport close", false, id],
      ["$connect", null, true, id],
    ]);
    // The connect hook ran once: a recovered socket skips the CONNECT checks (its private id is proof).
    assert.equal(hooks.filter((h) => !h.event).length, 1);
  });
});

/** A free TCP port on 127.0.0.1 (for HAProxy's listener). */
async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** HAProxy in front of `nodes`, round robin per connection; resolves with its URL and process. */
async function balancer(dir, nodes) {
  const port = await freePort();
  const cfg = path.join(dir, "haproxy.cfg");
  writeFileSync(
    cfg,
    [
      "defaults",
      "  mode http",
      "  timeout connect 2s",
      "  timeout client 60s",
      "  timeout server 60s",
      "  timeout tunnel 1h",
      "frontend socketio",
      `  bind 127.0.0.1:${port}`,
      "  default_backend nodes",
      "backend nodes",
      "  balance roundrobin",
      ...nodes.map((n, i) => `  server n${i + 1} ${n.addr}`),
      "",
    ].join("\n"),
  );
  // Debian's haproxy (.ci/run installs it) lives in /usr/sbin, not always on a user's PATH.
  const bin = existsSync("/usr/sbin/haproxy") ? "/usr/sbin/haproxy" : "haproxy";
  const child = spawn(bin, ["-db", "-f", cfg], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    () => new Promise((resolve) => net.connect(port, "127.0.0.1").on("connect", function () { this.destroy(); resolve(true); }).on("error", () => resolve(false))),
    `haproxy listening (${stderr})`,
  );
  return { url, child };
}

ioswarmOnly("connection state recovery across 3 nodes", () => {
  let cluster;
  let haproxy;
  const clients = [];
  before(async () => {
    cluster = await startCluster(3, {
      flags: [...RECOVERY, "--cluster-timeout-ms", "2000", "--shutdown-grace-ms", "8000"],
      Process: ServerProcess,
    });
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    haproxy?.child.kill();
    await cluster?.stop();
  });

  function client(url, opts = {}) {
    const socket = io(url, { forceNew: true, reconnection: false, timeout: WAIT_MS, ...WS, ...opts });
    clients.push(socket);
    return socket;
  }

  /** Where `id` is connected, as the cluster tells it (a node id). */
  async function nodeOf(id) {
    const socket = (await sockets(cluster.running[0])).find((s) => s.id === id);
    return socket?.node;
  }

  /** A client of `node` in room "r" that received one broadcast. */
  async function member(node) {
    const c = client(node.url);
    await connected(c);
    await call(c, "ioswarm:join", "r");
    const got = record(c, "news");
    // Room interest is gossiped: until the other nodes know `node` has members in "r", their
    // broadcasts to "r" do not go there. Wait until a broadcast from each of them arrives.
    const probes = record(c, "probe");
    for (const other of cluster.running.filter((n) => n !== node)) {
      const before = probes.length;
      await waitFor(async () => {
        if (probes.length === before) await other.emit({ rooms: ["r"], event: "probe" });
        return probes.length > before;
      }, `node ${other.url} forwarding room r`);
    }
    await node.emit({ rooms: [c.id], event: "news", args: [0] });
    await waitFor(() => got.length === 1, "first broadcast");
    return { c, got, id: c.id };
  }

  /** Sends the client's next connection to `url` (what a balancer does to a reconnect). */
  function moveTo(socket, url) {
    socket.io.uri = url;
  }

  test("a client reconnecting to another node gets its session from the node it left", T, async () => {
    const [n1, n2, n3] = cluster.nodes;
    const { c, got, id } = await member(n1);
    await blip(n1, c);
    await n2.emit({ rooms: ["r"], event: "news", args: [1] });
    await n3.emit({ rooms: [id], event: "news", args: [2] });
    moveTo(c, n2.url);
    await reconnect(c);
    assert.equal(c.recovered, true);
    assert.equal(c.id, id);
    await waitFor(() => got.length === 3, "the broadcasts missed while away");
    // Nodes 2 and 3 forward to node 1 independently: their broadcasts may reach it in either
    // order (each node's own broadcasts keep theirs).
    assert.deepEqual(byOrigin(got, 1), [0, 1, 2]);
    assert.equal(await nodeOf(id), 2);
    // Its rooms and its own id (which names node 1) now reach it on node 2, from every node.
    await n1.emit({ rooms: ["r"], event: "news", args: [3] });
    await waitFor(() => got.length === 4, "a room broadcast from node 1");
    await n3.emit({ rooms: [id], event: "news", args: [4] });
    await n1.emit({ rooms: [id], event: "news", args: [5] });
    await waitFor(() => got.length === 6, "broadcasts to its id from nodes 3 and 1");
    assert.deepEqual(byOrigin(got, 4), [0, 1, 2, 3, 4, 5]);

    // And on to node 3, from a session recovered once already.
    await blip(n2, c);
    await n1.emit({ rooms: ["r"], event: "news", args: [6] });
    moveTo(c, n3.url);
    await reconnect(c);
    assert.equal(c.recovered, true);
    assert.equal(c.id, id);
    await waitFor(() => got.length === 7, "news 6");
    assert.equal(await nodeOf(id), 3);
    c.disconnect();
  });

  test("through an HAProxy round-robin balancer: the reconnect lands on the next node", T, async () => {
    haproxy = await balancer(cluster.dir, cluster.nodes);
    const c = client(haproxy.url);
    await connected(c);
    const id = c.id;
    await call(c, "ioswarm:join", "r");
    const got = record(c, "news");
    const first = await nodeOf(id);
    const origin = cluster.nodes[first - 1];
    await origin.emit({ rooms: ["r"], event: "news", args: [1] });
    await waitFor(() => got.length === 1, "news 1");
    await blip(origin, c);
    await origin.emit({ rooms: ["r"], event: "news", args: [2] });
    await reconnect(c);
    assert.equal(c.recovered, true);
    assert.equal(c.id, id);
    const second = await nodeOf(id);
    assert.notEqual(second, first, "round robin sent the reconnect to another node");
    await waitFor(() => got.length === 2, "news 2");
    assert.deepEqual(firsts(got), [1, 2]);
    c.disconnect();
  });

  test("SIGTERM: the draining node hands its sessions to a peer before it exits", { timeout: 60_000 }, async () => {
    const [n1, n2, n3] = cluster.nodes;
    const a = await member(n3);
    const b = await member(n3);
    const gone = [once(a.c, "disconnect", WAIT_MS * 3), once(b.c, "disconnect", WAIT_MS * 3)];
    const { code } = await n3.stop();
    assert.equal(code, 0, n3.stderr.slice(-2000));
    assert.deepEqual((await Promise.all(gone)).map((args) => args[0]), ["transport close", "transport close"]);
    assert.match(n3.stderr, /recoverable sessions handed to the peers.*kept=2/);
    await cluster.waitConverged();
    // Broadcast after the node is gone: the peer that holds the sessions logs it for them.
    await n1.emit({ rooms: ["r"], event: "news", args: [1] });
    moveTo(a.c, n1.url);
    moveTo(b.c, n2.url);
    await reconnect(a.c);
    await reconnect(b.c);
    for (const { c, got, id } of [a, b]) {
      assert.equal(c.recovered, true);
      assert.equal(c.id, id);
      await waitFor(() => got.length === 2, "the broadcast sent after the node exited");
      assert.deepEqual(firsts(got), [0, 1]);
    }
    a.c.disconnect();
    b.c.disconnect();
  });

  test("kill -9: the dead node's sessions are lost, its clients get fresh sessions", { timeout: 60_000 }, async () => {
    const [n1, n2] = cluster.nodes;
    const { c, got, id } = await member(n2);
    const gone = once(c, "disconnect", WAIT_MS * 2);
    n2.kill();
    await gone;
    await n1.emit({ rooms: ["r"], event: "news", args: [1] });
    moveTo(c, n1.url);
    await reconnect(c, WAIT_MS * 2);
    assert.equal(c.recovered, false);
    assert.notEqual(c.id, id);
    assert.deepEqual(await roomsOf(n1, c.id), []);
    await sleep(200);
    assert.deepEqual(firsts(got), [0], "nothing of the old session reaches the fresh one");
  });
});

ioswarmOnly("--recovery-lookups", () => {
  let cluster;
  const clients = [];
  before(async () => {
    // Node 2 never asks the other nodes for a session it does not hold; node 1 does (default).
    cluster = await startCluster(2, {
      flags: RECOVERY,
      nodeFlags: (id) => (id === 2 ? ["--recovery-lookups", "0"] : []),
      Process: ServerProcess,
    });
  });
  after(async () => {
    for (const c of clients) c.disconnect();
    await cluster?.stop();
  });

  /** A client of `from` whose connection blipped, reconnected to `to`. */
  async function moved(from, to) {
    const c = io(from.url, { forceNew: true, reconnection: false, timeout: WAIT_MS, ...WS });
    clients.push(c);
    await connected(c);
    const id = c.id;
    await blip(from, c);
    c.io.uri = to.url;
    await reconnect(c);
    return { c, id };
  }

  test("0: a client whose session another node holds gets a fresh one (busy); by default it is recovered", T, async () => {
    const [n1, n2] = cluster.nodes;
    const fresh = await moved(n1, n2);
    assert.equal(fresh.c.recovered, false);
    assert.notEqual(fresh.c.id, fresh.id);
    const scrape = (await n2.admin("GET", "/metrics")).text;
    assert.match(scrape, /^ioswarm_recovery_attempts_total\{result="busy"\} 1$/m);

    const kept = await moved(n2, n1);
    assert.equal(kept.c.recovered, true);
    assert.equal(kept.c.id, kept.id);
  });
});
