// One test per setting of the README's Configuration and cluster Flags tables that no other suite
// proves (the map of setting -> test is docs/settings-tests.md). Each test starts the binary with
// the setting at a non-default value and asserts what a client, a Redis client or an operator
// observes, so that it fails if the setting were ignored.
//
// These settings are ioswarm's own (the Redis broker, the send queue, the cluster, ...): the
// reference server (IOSWARM_E2E_TARGET=reference) does not implement them, so this file registers
// its tests only against the ioswarm binary.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import dgram from "node:dgram";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, describe, test } from "node:test";
import WebSocket from "ws";
import {
  BIN,
  Ctx,
  ServerProcess,
  TARGET,
  call,
  cleanEnv,
  connectError,
  once,
  sleep,
  waitFor,
  WAIT_MS,
} from "./harness.mjs";

const T = { timeout: 30_000 };
const SEP = "\x1e";

async function get(url, init = {}) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(WAIT_MS) });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

/** Raw long-polling session on `/socket.io/`, connected to namespace `/`. */
async function pollingSocket(server) {
  const open = await get(`${server.url}/socket.io/?EIO=4&transport=polling`);
  assert.equal(open.status, 200, open.text);
  const sid = JSON.parse(open.text.slice(1)).sid;
  const url = `${server.url}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(sid)}`;
  const post = await get(url, { method: "POST", body: "40" });
  assert.equal(post.text, "ok");
  const connect = await get(url);
  assert.match(connect.text, /^40\{"sid":"[^"]+"\}$/);
  return { url, id: JSON.parse(connect.text.slice(2)).sid };
}

/** The ids of the sockets the admin API lists in `/`. */
async function socketIds(server) {
  const res = await server.admin("GET", "/v1/sockets?nsp=/");
  assert.equal(res.status, 200, res.text);
  return res.json.sockets.map((s) => s.id);
}

/** Waits until the admin API no longer lists any socket in `/`. */
async function noSockets(server, what) {
  await waitFor(async () => (await socketIds(server)).length === 0, what);
}

/** The value of one Prometheus sample (0 when absent). */
async function metric(server, name, labels = "") {
  const res = await fetch(`${server.adminUrl}/metrics`, { signal: AbortSignal.timeout(WAIT_MS) });
  const text = await res.text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}${labels} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

/**
 * A raw Engine.IO WebSocket client connected to `/` that stops reading its socket once
 * connected, as a client on a stalled network does. Resolves with {ws, id, messages}: `messages`
 * collects what arrives once the test resumes reading (`ws._socket.resume()`).
 */
async function stalledWebSocket(server) {
  const ws = new WebSocket(`${server.url.replace(/^http/, "ws")}/socket.io/?EIO=4&transport=websocket`);
  ws.on("error", () => {});
  const messages = [];
  let wake = () => {};
  ws.on("message", (data) => {
    messages.push(data.toString());
    wake();
  });
  const next = async () => {
    const deadline = Date.now() + WAIT_MS;
    while (messages.length === 0) {
      if (Date.now() > deadline) throw new Error("no websocket message");
      await new Promise((r) => {
        wake = r;
        setTimeout(r, 50);
      });
    }
    return messages.shift();
  };
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  assert.equal((await next())[0], "0");
  ws.send("40");
  const reply = await next();
  assert.match(reply, /^40\{"sid":"[^"]+"\}$/);
  ws._socket.pause();
  return { ws, id: JSON.parse(reply.slice(2)).sid, messages };
}

/** One Redis reply line (simple string, error or integer) per command sent on a raw TCP socket. */
async function redisSession(addr) {
  const socket = net.connect(addr.port, addr.host);
  await new Promise((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  let buf = "";
  socket.setEncoding("utf8").on("data", (d) => (buf += d));
  return {
    async send(line) {
      socket.write(`${line}\r\n`);
      const deadline = Date.now() + WAIT_MS;
      while (!buf.includes("\r\n")) {
        if (Date.now() > deadline) throw new Error(`no reply to ${line}`);
        await sleep(10);
      }
      const i = buf.indexOf("\r\n");
      const reply = buf.slice(0, i);
      buf = buf.slice(i + 2);
      return reply;
    },
    close: () => socket.destroy(),
  };
}

/** A UDP port free right now on every interface. */
async function freeUdpPort() {
  const sock = dgram.createSocket("udp4");
  await new Promise((resolve) => sock.bind(0, "0.0.0.0", resolve));
  const { port } = sock.address();
  await new Promise((resolve) => sock.close(resolve));
  return port;
}

if (TARGET === "ioswarm") {
  describe("--path", () => {
    const ctx = new Ctx();
    after(() => ctx.cleanup());

    test("--path /rt/ serves Socket.IO on /rt/ and nothing on /socket.io/", T, async () => {
      const server = await ctx.server({ flags: ["--path", "/rt/"] });
      const s = await ctx.connect(server.url, { path: "/rt/", transports: ["websocket"] });
      assert.deepEqual(await call(s, "ioswarm:echo", "on /rt/"), ["on /rt/"]);
      const p = await ctx.connect(server.url, { path: "/rt/", transports: ["polling"] });
      assert.deepEqual(await call(p, "ioswarm:echo", "polling"), ["polling"]);
      assert.equal((await get(`${server.url}/socket.io/?EIO=4&transport=polling`)).status, 404);
      const lost = ctx.client(server.url, { transports: ["polling"] });
      await connectError(lost);
    });

    test("by default /rt/ is not served", T, async () => {
      const server = await ctx.server();
      assert.equal((await get(`${server.url}/rt/?EIO=4&transport=polling`)).status, 404);
      assert.equal((await get(`${server.url}/socket.io/?EIO=4&transport=polling`)).status, 200);
    });
  });

  describe("--max-attachments", () => {
    const ctx = new Ctx();
    after(() => ctx.cleanup());
    const bufs = (n) => Array.from({ length: n }, (_, i) => Buffer.from([i]));

    test("--max-attachments 2: a packet with 3 binary attachments closes the connection", T, async () => {
      const server = await ctx.server({ flags: ["--max-attachments", "2"] });
      const s = await ctx.connect(server.url, { transports: ["websocket"] });
      const echoed = await call(s, "ioswarm:echo", ...bufs(2));
      assert.deepEqual(echoed.map((b) => [...b]), [[0], [1]]);
      const reason = once(s, "disconnect");
      s.emit("ioswarm:echo", ...bufs(3));
      assert.match((await reason)[0], /^(transport close|parse error)$/);
      await noSockets(server, "the server drops the client");
    });

    test("by default 3 attachments are echoed", T, async () => {
      const server = await ctx.server();
      const s = await ctx.connect(server.url, { transports: ["websocket"] });
      const echoed = await call(s, "ioswarm:echo", ...bufs(3));
      assert.deepEqual(echoed.map((b) => [...b]), [[0], [1], [2]]);
    });
  });

  describe("--max-connections", () => {
    const ctx = new Ctx();
    after(() => ctx.cleanup());

    test("--max-connections 1: a second client is not served until the first leaves", T, async () => {
      const server = await ctx.server({ flags: ["--max-connections", "1"] });
      const first = await ctx.connect(server.url, { transports: ["websocket"] });
      const second = ctx.client(server.url, { transports: ["websocket"], timeout: 1500 });
      assert.match((await connectError(second)).message, /timeout/);
      first.disconnect();
      const third = await ctx.connect(server.url, { transports: ["websocket"] });
      assert.deepEqual(await call(third, "ioswarm:echo", "served"), ["served"]);
    });

    test("by default a second client is served at once", T, async () => {
      const server = await ctx.server();
      await ctx.connect(server.url, { transports: ["websocket"] });
      const second = await ctx.connect(server.url, { transports: ["websocket"], timeout: 1500 });
      assert.ok(second.connected);
    });
  });

  describe("send queue bounds", () => {
    const ctx = new Ctx();
    after(() => ctx.cleanup());

    // A long-polling client with no GET waiting: everything emitted to it stays in its queue.
    async function queueUp(flags, count, arg) {
      const server = await ctx.server({ flags });
      const client = await pollingSocket(server);
      for (let i = 0; i < count; i++) {
        const res = await server.emit({ event: "e", args: [i, arg] });
        assert.equal(res.status, 200, res.text);
      }
      return { server, client };
    }

    test("--send-queue-max-packets 4: a fifth queued packet disconnects the client", T, async () => {
      const { server, client } = await queueUp(["--send-queue-max-packets", "4"], 5, "x");
      await noSockets(server, "the overflowing client is disconnected");
      assert.equal((await get(client.url)).status, 400);
      assert.ok((await metric(server, "ioswarm_engine_connections_closed_total", '{reason="overflow"}')) >= 1);
    });

    test("by default five queued packets are delivered", T, async () => {
      const { server, client } = await queueUp([], 5, "x");
      assert.deepEqual(await socketIds(server), [client.id]);
      const res = await get(client.url);
      assert.equal(res.status, 200);
      assert.equal(res.text.split(SEP).filter((p) => p.startsWith('42["e"')).length, 5);
    });

    test("--send-queue-max-bytes 4096: 3 queued packets of 1.5 kB disconnect the client", T, async () => {
      const flags = ["--send-queue-max-bytes", "4096", "--volatile-drop-bytes", "1024"];
      const { server, client } = await queueUp(flags, 3, "y".repeat(1500));
      await noSockets(server, "the overflowing client is disconnected");
      assert.equal((await get(client.url)).status, 400);
    });

    test("what waits in a send queue shows on ioswarm_engine_queued_packets and _bytes until a GET takes it", T, async () => {
      const { server, client } = await queueUp([], 3, "z".repeat(1000));
      assert.equal(await metric(server, "ioswarm_engine_queued_packets"), 3);
      assert.ok((await metric(server, "ioswarm_engine_queued_bytes")) > 3000);
      assert.equal((await get(client.url)).status, 200);
      assert.equal(await metric(server, "ioswarm_engine_queued_packets"), 0);
      assert.equal(await metric(server, "ioswarm_engine_queued_bytes"), 0);
    });

    test("by default 3 queued packets of 1.5 kB are delivered", T, async () => {
      const { server, client } = await queueUp([], 3, "y".repeat(1500));
      const res = await get(client.url);
      assert.equal(res.status, 200);
      assert.equal(res.text.split(SEP).filter((p) => p.startsWith('42["e"')).length, 3);
    });
  });

  describe("--volatile-drop-bytes", () => {
    const ctx = new Ctx();
    after(() => ctx.cleanup());
    const blob = "v".repeat(60 * 1024);

    // Emits volatile packets of 60 KiB to a client that stopped reading, `count` of them or until
    // `done()`: 300 of them (18 MB) are far more than the kernel's socket buffers hold.
    async function flood(server, count, done = async () => false) {
      let sent = 0;
      while (sent < count && !(await done())) {
        const res = await server.emit({ event: "v", args: [sent, blob], volatile: true });
        assert.equal(res.status, 200, res.text);
        sent++;
      }
      return sent;
    }

    test("below the queue bound, volatile packets for a stalled client are dropped and it stays connected", T, async () => {
      const server = await ctx.server({
        flags: ["--send-queue-max-bytes", "262144", "--volatile-drop-bytes", "1024"],
      });
      const { ws, id, messages } = await stalledWebSocket(server);
      const sent = await flood(server, 300);
      assert.deepEqual(await socketIds(server), [id], "the stalled client was disconnected");
      // A last non-volatile packet, then the client reads again: it gets some of the volatile
      // packets (those the kernel buffered), not all of them, and then the last one.
      assert.equal((await server.emit({ event: "end", args: [] })).status, 200);
      ws._socket.resume();
      await waitFor(() => messages.includes('42["end"]'), "the non-volatile packet after the flood arrives");
      const got = messages.filter((m) => m.startsWith('42["v",')).length;
      assert.ok(got > 0 && got < sent, `received ${got} of ${sent} volatile packets`);
      assert.deepEqual(await socketIds(server), [id]);
      ws.terminate();
    });

    test("at the queue bound, volatile packets fill the queue and the stalled client is disconnected", T, async () => {
      const server = await ctx.server({
        flags: ["--send-queue-max-bytes", "262144", "--volatile-drop-bytes", "262144"],
      });
      const { ws } = await stalledWebSocket(server);
      await flood(server, 300, async () => (await socketIds(server)).length === 0);
      await noSockets(server, "the stalled client is disconnected by the queue bound");
      ws.terminate();
    });
  });

  describe("--max-rooms-per-socket", () => {
    const ctx = new Ctx();
    after(() => ctx.cleanup());

    test("--max-rooms-per-socket 2: two rooms besides the socket's own, a third is refused", T, async () => {
      const server = await ctx.server({ flags: ["--client-rooms", "--max-rooms-per-socket", "2"] });
      const s = await ctx.connect(server.url, { transports: ["websocket"] });
      assert.deepEqual(await call(s, "ioswarm:join", ["a", "b"]), [{ rooms: ["a", "b"] }]);
      assert.deepEqual(await call(s, "ioswarm:join", "c"), [{ error: "too many rooms" }]);
      const res = await server.admin("GET", "/v1/sockets?nsp=/");
      assert.deepEqual(res.json.sockets[0].rooms.sort(), ["a", "b"]);
      // Leaving one makes room again.
      assert.deepEqual(await call(s, "ioswarm:leave", "a"), [{ rooms: ["b"] }]);
      assert.deepEqual(await call(s, "ioswarm:join", "c"), [{ rooms: ["b", "c"] }]);
    });

    test("by default a third room is joined", T, async () => {
      const server = await ctx.server({ flags: ["--client-rooms"] });
      const s = await ctx.connect(server.url, { transports: ["websocket"] });
      assert.deepEqual(await call(s, "ioswarm:join", ["a", "b", "c"]), [{ rooms: ["a", "b", "c"] }]);
    });
  });

  describe("--requirepass", () => {
    const ctx = new Ctx();
    after(() => ctx.cleanup());

    test("--requirepass: NOAUTH until AUTH with the password, WRONGPASS for another", T, async () => {
      const server = await ctx.server({ flags: ["--requirepass", "s3cret"] });
      const r = await redisSession(server.redis);
      try {
        assert.equal(await r.send("PING"), "-NOAUTH Authentication required.");
        assert.equal(await r.send("PUBLISH socket.io#/# x"), "-NOAUTH Authentication required.");
        assert.match(await r.send("AUTH wrong"), /^-WRONGPASS /);
        assert.equal(await r.send("AUTH s3cret"), "+OK");
        assert.equal(await r.send("PING"), "+PONG");
      } finally {
        r.close();
      }
    });

    test("by default no AUTH is needed", T, async () => {
      const server = await ctx.server();
      const r = await redisSession(server.redis);
      try {
        assert.equal(await r.send("PING"), "+PONG");
      } finally {
        r.close();
      }
    });
  });

  describe("--shutdown-grace-ms", () => {
    const ctx = new Ctx();
    after(() => ctx.cleanup());

    // A client that stopped reading with megabytes queued for it keeps its connection task busy,
    // so SIGTERM has to give up on it when the grace period ends.
    async function stopWithStalledClient(flags) {
      const server = await ctx.server({ flags });
      const { ws } = await stalledWebSocket(server);
      const blob = "s".repeat(60 * 1024);
      for (let i = 0; i < 100; i++) await server.emit({ event: "s", args: [blob] });
      const start = Date.now();
      const { code, signal } = await server.stop(30_000);
      ws.terminate();
      return { code, signal, ms: Date.now() - start };
    }

    test("--shutdown-grace-ms 300: SIGTERM exits soon despite a stalled client", T, async () => {
      const { code, signal, ms } = await stopWithStalledClient(["--shutdown-grace-ms", "300"]);
      assert.equal(signal, null);
      assert.equal(code, 0);
      assert.ok(ms < 3000, `exit took ${ms} ms with a 300 ms grace period (the default is 5000)`);
    });

    test("--shutdown-grace-ms 4000: SIGTERM waits for the stalled client", T, async () => {
      const { code, signal, ms } = await stopWithStalledClient(["--shutdown-grace-ms", "4000"]);
      assert.equal(signal, null);
      assert.equal(code, 0);
      assert.ok(ms >= 3500, `exit took only ${ms} ms with a 4000 ms grace period`);
    });
  });

  describe("--log", () => {
    const ctx = new Ctx();
    after(() => ctx.cleanup());

    test("--log warn hides the info lines the default shows", T, async () => {
      const quiet = await ctx.server({ flags: ["--log", "warn"] });
      const normal = await ctx.server();
      await Promise.all([quiet.stop(), normal.stop()]);
      assert.match(normal.stderr, /ioswarm node ready/);
      assert.doesNotMatch(quiet.stderr, /ioswarm node ready/);
      assert.doesNotMatch(quiet.stderr, /INFO/);
    });

    test("--log ioswarm=debug shows debug lines the default hides", T, async () => {
      const verbose = await ctx.server({ flags: ["--log", "ioswarm=debug"] });
      const normal = await ctx.server();
      for (const server of [verbose, normal]) {
        const s = await ctx.connect(server.url, { transports: ["websocket"] });
        await call(s, "ioswarm:echo", "x");
        s.disconnect();
      }
      await Promise.all([verbose.stop(), normal.stop()]);
      assert.match(verbose.stderr, /DEBUG/);
      assert.doesNotMatch(normal.stderr, /DEBUG/);
    });
  });

  describe("cluster flags", () => {
    const ctx = new Ctx();
    const dir = mkdtempSync(path.join(tmpdir(), "ioswarm-settings-cluster-"));
    after(async () => {
      await ctx.cleanup();
      rmSync(dir, { recursive: true, force: true });
    });
    let ca;
    const creds = (id) => {
      if (!ca) {
        ca = path.join(dir, "ca");
        const res = spawnSync(BIN, ["cluster", "init-ca", "--dir", ca], { encoding: "utf8" });
        assert.equal(res.status, 0, res.stderr);
      }
      const out = path.join(dir, `creds${id}-${Math.random().toString(36).slice(2)}`);
      const res = spawnSync(BIN, ["cluster", "issue", "--ca", ca, "--node-id", String(id), "--out", out], {
        encoding: "utf8",
      });
      assert.equal(res.status, 0, res.stderr);
      return out;
    };

    /** Starts cluster node `id`; ready once it is a member (which may take a while on a busy machine). */
    async function node(id, flags) {
      const args = [
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--redis-listen", "127.0.0.1:0",
        "--node-id", String(id), "--cluster-credentials", creds(id),
        "--data-dir", mkdtempSync(path.join(dir, `data${id}-`)), ...flags,
      ];
      if (!flags.includes("--cluster-listen")) args.push("--cluster-listen", "127.0.0.1:0");
      const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: cleanEnv() });
      const server = new ServerProcess(child, [BIN, ...args].join(" "), { readyMs: 60_000 });
      ctx.servers.push(server);
      await server.ready;
      return server;
    }

    async function members(server) {
      const res = await server.admin("GET", "/cluster");
      assert.equal(res.status, 200, res.text);
      return res.json.members;
    }

    async function connectedPair(flags1, join = (a) => a.addrs.cluster) {
      const a = await node(1, flags1);
      const b = await node(2, ["--join", join(a)]);
      for (const [s, peer] of [[a, 2], [b, 1]]) {
        await waitFor(
          async () => (await members(s)).some((m) => m.node_id === peer && m.connected && m.liveness === "alive"),
          `node ${peer} is alive for its peer`,
          30_000,
        );
      }
      return [a, b];
    }

    test("--advertise: peers know the node by the advertised address, not the bound one", { timeout: 120_000 }, async () => {
      const port = await freeUdpPort();
      const [a, b] = await connectedPair(
        ["--cluster-listen", `0.0.0.0:${port}`, "--advertise", `127.0.0.1:${port}`],
        () => `127.0.0.1:${port}`,
      );
      const self = (await members(a)).find((m) => m.self);
      assert.equal(self.addr, `127.0.0.1:${port}`);
      const seen = (await members(b)).find((m) => m.node_id === 1);
      assert.equal(seen.addr, `127.0.0.1:${port}`, "without --advertise it would be 0.0.0.0");
      // The cluster works through it: a socket on node 2 is listed from node 1.
      const s = await ctx.connect(b.url, { transports: ["websocket"] });
      const res = await a.admin("GET", "/v1/sockets?nsp=/");
      assert.deepEqual(res.json.sockets.map((x) => x.id), [s.id]);
      assert.deepEqual(res.json.missingNodes, []);
    });

    test("--cluster-timeout-ms: a cluster-wide request gives up on a silent node after that long", { timeout: 120_000 }, async () => {
      const [a, b] = await connectedPair(["--cluster-timeout-ms", "1500"]);
      const s = await ctx.connect(b.url, { transports: ["websocket"] });
      const before = await a.admin("GET", "/v1/sockets?nsp=/");
      assert.deepEqual(before.json, { sockets: [{ id: s.id, rooms: [], node: 2, data: {} }], missingNodes: [] });
      // Node 2 stops answering (but stays a live member for the next second or so).
      b.child.kill("SIGSTOP");
      try {
        const start = Date.now();
        const res = await a.admin("GET", "/v1/sockets?nsp=/");
        const ms = Date.now() - start;
        assert.equal(res.status, 200, res.text);
        assert.deepEqual(res.json, { sockets: [], missingNodes: [2] });
        assert.ok(ms >= 1400, `answered after ${ms} ms: it did not wait for node 2`);
        assert.ok(ms < 4500, `answered after ${ms} ms: the default 5000 ms, not 1500`);
      } finally {
        b.child.kill("SIGCONT");
      }
    });
  });
}
