// A 3-node cluster behind HAProxy with `balance roundrobin` and no stickiness: every request of
// a client (each long-poll GET, each POST, the WebSocket upgrade) may reach any node, and the
// node that does not hold the session relays it to the one that does (src/engineio/relay.rs,
// src/cluster/relay.rs). Real socket.io-client 4.8 clients, polling-only and default (polling,
// then the upgrade to WebSocket), exchange messages both ways for LB_TEST_SECONDS (default 45;
// "a few minutes" with e.g. LB_TEST_SECONDS=180): no connect_error, no disconnect, the same
// session from start to end, every message received exactly once and in order. Then the node
// holding some sessions is killed: their requests get `400 Session ID unknown` from the others
// and the clients reconnect. Needs the `haproxy` binary (Debian package `haproxy`).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { after, before, test } from "node:test";
import { startCluster } from "../cluster-process.mjs";
import { ServerProcess, WAIT_MS, call, ioswarmOnly, sleep, waitFor } from "../e2e/harness.mjs";

// socket.io-client from tests/e2e's dependencies (this suite has none of its own).
const { io } = createRequire(new URL("../e2e/package.json", import.meta.url))("socket.io-client");

const SECONDS = Number(process.env.LB_TEST_SECONDS ?? 45);
// Debian installs it in /usr/sbin, which is not on every user's PATH.
const HAPROXY = process.env.HAPROXY_BIN ?? (existsSync("/usr/sbin/haproxy") ? "/usr/sbin/haproxy" : "haproxy");
/** Clients of each kind. */
const PER_KIND = 10;
/** Server → client: one admin emit every this many ms, round robin over the nodes. */
const TICK_MS = 100;
/** Client → clients: each client relays one message to the room every this many ms. */
const CHAT_MS = 250;
/** Short heartbeats, so that many pings and pongs cross the relay during the run. */
const NODE_FLAGS = ["--client-rooms", "--client-relay", "--ping-interval-ms", "3000", "--ping-timeout-ms", "5000"];

/** A TCP port on 127.0.0.1 that was free a moment ago. */
function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** The node id a session (or socket) id names: its first four characters, base64url. */
function tagOf(id) {
  const raw = Buffer.from(id.slice(0, 4), "base64url");
  return (raw[0] << 16) | (raw[1] << 8) | raw[2];
}

/** One `name value` sample of a Prometheus text (labels as written, e.g. `{result="ok"}`). */
async function metric(node, name) {
  const text = await fetch(`${node.adminUrl}/metrics`, { signal: AbortSignal.timeout(WAIT_MS) }).then((r) => r.text());
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line ? Number(line.slice(name.length + 1)) : 0;
}

/** HAProxy in front of `nodes`: round robin per request, no stickiness, health checks on /healthz. */
class Balancer {
  constructor(nodes, port, dir) {
    const servers = nodes.map(
      (n, i) => `  server n${i + 1} ${n.addr} check port ${n.adminAddr.split(":").pop()} inter 300 fall 2 rise 1`,
    );
    const cfg = [
      "global",
      "  maxconn 2000",
      "defaults",
      "  mode http",
      "  timeout connect 2s",
      "  timeout client 60s",
      "  timeout server 60s",
      "  timeout tunnel 1h",
      "  retries 3",
      "  option redispatch",
      "  retry-on conn-failure empty-response",
      "frontend socketio",
      `  bind 127.0.0.1:${port}`,
      "  default_backend nodes",
      "backend nodes",
      "  balance roundrobin",
      "  option httpchk GET /healthz",
      ...servers,
      "",
    ].join("\n");
    this.cfgFile = path.join(dir, "haproxy.cfg");
    writeFileSync(this.cfgFile, cfg);
    this.url = `http://127.0.0.1:${port}`;
    this.stderr = "";
    this.child = spawn(HAPROXY, ["-f", this.cfgFile, "-db"], { stdio: ["ignore", "pipe", "pipe"] });
    this.child.stderr.setEncoding("utf8").on("data", (d) => (this.stderr = (this.stderr + d).slice(-20_000)));
    this.child.stdout.resume();
    this.exited = new Promise((resolve) => this.child.on("exit", resolve));
    this.spawnError = new Promise((resolve) => this.child.on("error", resolve));
  }

  /** Resolves once handshakes through HAProxy succeed on every node (each one's id is seen). */
  async ready(count) {
    const deadline = Date.now() + 20_000;
    const seen = new Set();
    while (seen.size < count) {
      const failed = await Promise.race([this.spawnError, sleep(0).then(() => null)]);
      if (failed) throw new Error(`cannot run ${HAPROXY} (install the haproxy package): ${failed.message}`);
      if (Date.now() > deadline) throw new Error(`HAProxy never reached all ${count} nodes:\n${this.stderr}`);
      try {
        const res = await fetch(`${this.url}/socket.io/?EIO=4&transport=polling`, { signal: AbortSignal.timeout(2000) });
        const body = await res.text();
        if (res.status === 200) seen.add(tagOf(JSON.parse(body.slice(1)).sid));
      } catch {
        // Not listening yet, or a node not yet marked up.
      }
      await sleep(50);
    }
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      await within(this.exited, 3000, "HAProxy exit").catch(() => this.child.kill("SIGKILL"));
    }
  }
}

/** A client through the balancer, with everything it observes recorded. */
class Client {
  constructor(index, url, opts) {
    this.index = index;
    this.kind = opts.transports ? "polling" : "default";
    this.errors = [];
    this.ticks = new Map(); // origin node → seqs received
    this.chats = new Map(); // sender index → seqs received
    this.sent = 0;
    this.socket = io(url, { forceNew: true, reconnection: false, timeout: WAIT_MS, ...opts });
    this.socket.on("connect_error", (e) => this.errors.push(`connect_error: ${e.message}`));
    this.socket.on("disconnect", (reason) => this.errors.push(`disconnect: ${reason}`));
    this.socket.on("tick", (origin, seq) => push(this.ticks, origin, seq));
    this.socket.on("chat", (from, seq) => push(this.chats, from, seq));
  }

  async connect() {
    await waitFor(() => this.socket.connected || this.errors.length > 0, `client ${this.index} connects`);
    assert.deepEqual(this.errors, [], `client ${this.index}`);
    this.sid = this.socket.io.engine.id;
    const [joined] = await call(this.socket, "ioswarm:join", "lb");
    assert.deepEqual(joined, { rooms: ["lb"] });
  }

  chat() {
    this.socket.emit("ioswarm:to", "lb", "chat", this.index, this.sent++);
  }
}

function push(map, key, value) {
  if (!map.has(key)) map.set(key, []);
  map.get(key).push(value);
}

const range = (n) => Array.from({ length: n }, (_, i) => i);

/** `promise`, or a failure saying `what` did not happen within `ms` (the timer never lingers). */
async function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

ioswarmOnly("behind HAProxy (round robin, no sticky sessions)", () => {
  let cluster;
  let lb;
  let dir;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "ioswarm-haproxy-"));
    cluster = await startCluster(3, { Process: ServerProcess, flags: NODE_FLAGS });
    lb = new Balancer(cluster.nodes, await freeTcpPort(), dir);
    await lb.ready(3);
  });

  after(async () => {
    await lb?.stop();
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test(`polling-only and default clients exchange messages for ${SECONDS} s: no session error, nothing lost, order kept`, { timeout: (SECONDS + 180) * 1000 }, async (t) => {
    const clients = [];
    for (let i = 0; i < 2 * PER_KIND; i++) {
      clients.push(new Client(i, lb.url, i < PER_KIND ? { transports: ["polling"] } : {}));
    }
    await Promise.all(clients.map((c) => c.connect()));
    // Sessions are held by every node (handshakes are spread too), and every room member is
    // known to every node before the first message.
    assert.equal(new Set(clients.map((c) => tagOf(c.sid))).size, 3, "sessions on all three nodes");
    await cluster.waitConverged();

    const ticks = [0, 0, 0];
    const tickErrors = [];
    const stopAt = Date.now() + SECONDS * 1000;
    const chatTimer = setInterval(() => clients.forEach((c) => c.chat()), CHAT_MS);
    let turn = 0;
    while (Date.now() < stopAt) {
      const origin = turn++ % 3;
      const seq = ticks[origin];
      const res = await cluster.nodes[origin].emit({ nsp: "/", event: "tick", args: [origin, seq] });
      if (res.status === 200) ticks[origin]++;
      else tickErrors.push(`${res.status} ${res.text}`);
      await sleep(TICK_MS);
    }
    clearInterval(chatTimer);
    assert.deepEqual(tickErrors, []);

    // Everything sent arrives (the wait ends as soon as it has).
    const complete = () =>
      clients.every(
        (c) =>
          ticks.every((n, origin) => (c.ticks.get(origin)?.length ?? 0) >= n) &&
          clients.every((s) => s === c || (c.chats.get(s.index)?.length ?? 0) >= s.sent),
      );
    await waitFor(complete, "every message reaches every client", 60_000).catch(() => {});

    for (const c of clients) {
      const who = `client ${c.index} (${c.kind}, session of node ${tagOf(c.sid)})`;
      assert.deepEqual(c.errors, [], who);
      assert.equal(c.socket.io.engine.id, c.sid, `${who} kept its session`);
      for (const [origin, n] of ticks.entries()) {
        assert.deepEqual(c.ticks.get(origin) ?? [], range(n), `${who}: emits of node ${origin + 1}, once each, in order`);
      }
      for (const s of clients) {
        if (s === c) continue;
        assert.deepEqual(c.chats.get(s.index) ?? [], range(s.sent), `${who}: messages of client ${s.index}`);
      }
    }
    // The default clients upgraded, most of them through another node than their session's.
    for (const c of clients.filter((c) => c.kind === "default")) {
      assert.equal(c.socket.io.engine.transport.name, "websocket", `client ${c.index} upgraded`);
    }
    // Requests were relayed: every node answered some for others, none failed.
    for (const node of cluster.nodes) {
      assert.ok((await metric(node, 'ioswarm_cluster_relay_served_total{kind="poll"}')) > 0, `node ${node.nodeId} served relayed polls`);
      assert.ok((await metric(node, 'ioswarm_cluster_relay_served_total{kind="post"}')) > 0, `node ${node.nodeId} served relayed posts`);
      for (const result of ["owner_gone", "busy", "timeout"]) {
        assert.equal(await metric(node, `ioswarm_cluster_relayed_requests_total{result="${result}"}`), 0, `node ${node.nodeId} ${result}`);
      }
    }
    const tunnels = await Promise.all(cluster.nodes.map((n) => metric(n, 'ioswarm_cluster_relay_served_total{kind="websocket"}')));
    assert.ok(tunnels.reduce((a, b) => a + b) > 0, `WebSockets tunnelled to their node: ${tunnels}`);

    const relayed = await Promise.all(cluster.nodes.map((n) => metric(n, 'ioswarm_cluster_relayed_requests_total{result="ok"}')));
    const delivered = clients.reduce((sum, c) => sum + [...c.ticks.values(), ...c.chats.values()].reduce((n, l) => n + l.length, 0), 0);
    t.diagnostic(
      `${SECONDS} s: ${ticks.reduce((a, b) => a + b)} server emits and ${clients.reduce((n, c) => n + c.sent, 0)} client ` +
        `messages, ${delivered} deliveries; requests relayed per node ${relayed.join("/")}, WebSockets tunnelled ${tunnels.join("/")}`,
    );

    for (const c of clients) c.socket.disconnect();
  });

  test("the node holding a session is killed: its requests get 400 Session ID unknown and the client reconnects", { timeout: 120_000 }, async () => {
    const victim = cluster.nodes[2];
    const survivor = cluster.nodes[0];
    // Polling clients until at least two sessions are held by the node that will die.
    const sockets = [];
    const owned = () => sockets.filter((s) => s.connected && tagOf(s.io.engine.id) === victim.nodeId);
    while (owned().length < 2) {
      assert.ok(sockets.length < 30, "handshakes never reached the third node");
      const socket = io(lb.url, {
        forceNew: true,
        transports: ["polling"],
        reconnectionDelay: 100,
        reconnectionDelayMax: 500,
        timeout: WAIT_MS,
      });
      sockets.push(socket);
      await waitFor(() => socket.connected, "a client connects");
    }
    const doomed = owned();
    const oldSids = doomed.map((s) => s.io.engine.id);
    const reconnected = doomed.map((s) => new Promise((resolve) => s.io.once("reconnect", resolve)));

    victim.kill();
    await victim.exited;

    // What a client of the dead node gets from a node that is alive, whichever it reached.
    const res = await fetch(`${survivor.url}/socket.io/?EIO=4&transport=polling&sid=${oldSids[0]}`, {
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(res.status, 400);
    assert.deepEqual(await res.json(), { code: 1, message: "Session ID unknown" });

    await within(Promise.all(reconnected), 60_000, "the reconnect of every client of the dead node");
    for (const [i, s] of doomed.entries()) {
      await waitFor(() => s.connected, "the client is connected again", 30_000);
      assert.notEqual(s.io.engine.id, oldSids[i], "a new session");
      assert.notEqual(tagOf(s.io.engine.id), victim.nodeId, "held by a live node");
    }
    // And it works: an emit from a live node reaches every reconnected client.
    const got = doomed.map((s) => new Promise((resolve) => s.once("after-kill", resolve)));
    await waitFor(async () => (await survivor.emit({ nsp: "/", event: "after-kill", args: [1] })).status === 200, "emit");
    await within(Promise.all(got), WAIT_MS * 2, "an emit after the reconnect");
    for (const s of sockets) s.disconnect();
  });
});

// ---- Raw Engine.IO requests sent to chosen nodes (no balancer) ---------------------------------

/** The polling URL of `node`, for session `sid` (none: a handshake). */
const eio = (node, sid) => `${node.url}/socket.io/?EIO=4&transport=polling${sid ? `&sid=${sid}` : ""}`;

/** One polling request; resolves with `{status, text}`. */
async function poll(node, sid, { method = "GET", body, signal } = {}) {
  const res = await fetch(eio(node, sid), { method, body, signal: signal ?? AbortSignal.timeout(WAIT_MS * 2) });
  return { status: res.status, text: await res.text() };
}

/** A session opened on `node` and connected to `/` there; returns its id. */
async function session(node) {
  const open = await poll(node);
  assert.equal(open.status, 200, open.text);
  const sid = JSON.parse(open.text.slice(1)).sid;
  assert.equal(tagOf(sid), node.nodeId, "the session id names the node that opened it");
  assert.deepEqual(await poll(node, sid, { method: "POST", body: "40" }), { status: 200, text: "ok" });
  assert.match((await poll(node, sid)).text, /^40\{"sid":/);
  return sid;
}

/** How many relayed GETs `node` has started serving for its sessions. */
async function servedPolls(node) {
  return metric(node, 'ioswarm_cluster_relay_served_total{kind="poll"}');
}

const UNKNOWN = { status: 400, text: JSON.stringify({ code: 1, message: "Session ID unknown" }) };

ioswarmOnly("relayed requests get the owner's answers (3 nodes, no balancer)", () => {
  let cluster;
  // Node 1 relays with the default bound, node 2 at most one request per peer, node 3 none.
  const LIMITS = { 1: [], 2: ["--cluster-relay-max-in-flight", "1"], 3: ["--cluster-relay-max-in-flight", "0"] };

  before(async () => {
    cluster = await startCluster(3, { Process: ServerProcess, nodeFlags: (id) => LIMITS[id] });
  });
  after(async () => {
    await cluster?.stop();
  });

  test("polling through another node: messages both ways, 413, duplicate GET, unknown ids", async () => {
    const [n1, n2] = cluster.nodes;
    const sid = await session(n2);
    // A message and its ack, each through node 1.
    assert.deepEqual(await poll(n1, sid, { method: "POST", body: '421["ioswarm:echo","a",{"b":[1,2]}]' }), { status: 200, text: "ok" });
    assert.deepEqual(await poll(n1, sid), { status: 200, text: '431["a",{"b":[1,2]}]' });
    // maxPayload holds on the way in, as on the owner.
    assert.equal((await poll(n1, sid, { method: "POST", body: "4" + "x".repeat(1_000_000) })).status, 413);
    // A GET that is not the session's only one closes it, wherever each arrived.
    const before = await servedPolls(n2);
    const first = poll(n1, sid);
    await waitFor(async () => (await servedPolls(n2)) > before, "the first GET is parked on node 2");
    assert.deepEqual(await poll(n2, sid), { status: 400, text: JSON.stringify({ code: 3, message: "Bad request" }) });
    assert.deepEqual(await first, { status: 200, text: "1" });
    assert.deepEqual(await poll(n1, sid), UNKNOWN);
    // Ids of no session: one of node 2's, one naming a node that does not exist.
    assert.deepEqual(await poll(n1, "AAAC" + "x".repeat(16)), UNKNOWN);
    assert.deepEqual(await poll(n1, "AAAJ" + "x".repeat(16)), UNKNOWN);
  });

  test("an Engine.IO 3 session (socket.io 2.x) through another node; a request in the other revision is refused as on the owner", async () => {
    const [n1, n2] = cluster.nodes;
    const v3 = (node, sid) => `${node.url}/socket.io/?EIO=3&transport=polling&b64=1${sid ? `&sid=${sid}` : ""}`;
    /** The packets of a protocol 3 text payload (`<length>:<packet>`, JavaScript string lengths). */
    const packets = (text) => {
      const out = [];
      for (let i = 0; i < text.length; ) {
        const colon = text.indexOf(":", i);
        const len = Number(text.slice(i, colon));
        out.push(text.slice(colon + 1, colon + 1 + len));
        i = colon + 1 + len;
      }
      return out;
    };
    const open = packets(await (await fetch(v3(n2))).text());
    const sid = JSON.parse(open[0].slice(1)).sid;
    assert.equal(tagOf(sid), n2.nodeId);
    const message = '421["ioswarm:echo","a"]';
    const post = await fetch(v3(n1, sid), { method: "POST", body: `${message.length}:${message}` });
    assert.deepEqual([post.status, await post.text()], [200, "ok"]);
    const seen = [...open.slice(1)];
    while (!seen.includes('431["a"]')) {
      const res = await fetch(v3(n1, sid), { signal: AbortSignal.timeout(WAIT_MS) });
      assert.equal(res.status, 200);
      seen.push(...packets(await res.text()));
    }
    assert.deepEqual(await poll(n1, sid), { status: 400, text: JSON.stringify({ code: 3, message: "Bad request" }) });
  });

  test("a GET whose client goes away is abandoned on the owner: the next GET is served", async () => {
    const [n1, n2] = cluster.nodes;
    const sid = await session(n2);
    const before = await servedPolls(n2);
    const abort = new AbortController();
    const gone = poll(n1, sid, { signal: abort.signal }).catch((e) => e);
    await waitFor(async () => (await servedPolls(n2)) > before, "the GET is parked on node 2");
    abort.abort();
    assert.equal((await gone).name, "AbortError");
    await waitFor(async () => (await metric(n1, "ioswarm_cluster_relay_in_flight")) === 0, "node 1 lets go of it");
    const next = poll(n1, sid);
    assert.deepEqual(await poll(n1, sid, { method: "POST", body: '422["ioswarm:echo","b"]' }), { status: 200, text: "ok" });
    assert.deepEqual(await next, { status: 200, text: '432["b"]' });
  });

  test("--cluster-relay-max-in-flight: 1 refuses a second parked GET to a node with 503, 0 relays nothing, the default both", async () => {
    const [n1, n2, n3] = cluster.nodes;
    const [a, b] = [await session(n1), await session(n1)];
    const [c, d] = [await session(n2), await session(n2)];
    // Node 2 (bound 1): A is relayed and parked, B is refused at once.
    const served = await servedPolls(n1);
    const parkedA = poll(n2, a);
    await waitFor(async () => (await servedPolls(n1)) > served, "A parked on node 1");
    assert.deepEqual(await poll(n2, b), { status: 503, text: JSON.stringify({ code: 3, message: "Server at capacity" }) });
    // Node 3 (0): nothing is relayed, as with a sticky balancer.
    assert.deepEqual(await poll(n3, b), UNKNOWN);
    // Node 1 (default): two GETs parked on node 2 at once.
    const parkedC = poll(n1, c);
    const parkedD = poll(n1, d);
    await waitFor(async () => (await metric(n1, "ioswarm_cluster_relay_in_flight")) === 2, "both relayed by node 1");
    for (const [sid, parked, ackId] of [[a, parkedA, 5], [c, parkedC, 6], [d, parkedD, 7]]) {
      const owner = cluster.nodes[tagOf(sid) - 1];
      assert.deepEqual(await poll(owner, sid, { method: "POST", body: `42${ackId}["ioswarm:echo"]` }), { status: 200, text: "ok" });
      assert.deepEqual(await parked, { status: 200, text: `43${ackId}[]` });
    }
  });

  test("a GET parked through a node that shuts down is answered with a noop; the session goes on", async () => {
    const [n1, n2] = cluster.nodes;
    const sid = await session(n2);
    const served = await servedPolls(n2);
    const parked = poll(n1, sid);
    await waitFor(async () => (await servedPolls(n2)) > served, "the GET is parked on node 2");
    const stopped = n1.stop();
    assert.deepEqual(await parked, { status: 200, text: "6" });
    await stopped;
    assert.deepEqual(await poll(n2, sid, { method: "POST", body: '428["ioswarm:echo"]' }), { status: 200, text: "ok" });
    assert.deepEqual(await poll(n2, sid), { status: 200, text: "438[]" });
  });
});
