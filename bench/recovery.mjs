// Connection state recovery figures (--recovery-ms), socket.io-client 4.8 against the release
// binary:
//
// 1. reconnects: a 3-node cluster; C websocket clients, each in one of G rooms and holding an
//    offset, go through ROUNDS forced reconnects (C x ROUNDS in all, 1,000 by default): every
//    client's transport is closed at once, K broadcasts per room are sent from the nodes in turn
//    while they are away, then every client reconnects to the next node (round robin: its
//    session lives on the node it left). A reconnect succeeds when the client gets
//    `recovered === true`, the same socket id and exactly the K broadcasts of its room for that
//    round, in order. Also counted: recovered with a missing or duplicated packet, fresh
//    sessions, errors.
//    Then the same with broadcasts flowing all along (every room gets one every TICK ms, from
//    the three nodes in turn, numbered per room): across every reconnect, each client must get
//    each broadcast of its room exactly once (counted: missing, duplicated, out of order).
// 2. memory: one node; N clients (2 rooms each, one broadcast received) are disconnected and
//    their sessions kept. Figures: the store's own accounting (ioswarm_recovery_session_bytes /
//    sessions), and the RSS of that node minus the RSS of a node with recovery off after the
//    same clients came and went, per session.
//
//   cargo build --release --bin ioswarm
//   (cd tests/e2e && npm ci)             # socket.io-client comes from there
//   node bench/recovery.mjs              # C=100 ROUNDS=10 G=10 K=3 N=5000
//
// The clients share the machine's cores with the nodes. Timings live here, not in tests.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
process.env.IOSWARM_BIN ??= path.join(ROOT, "target/release/ioswarm");
const { startCluster } = await import("../tests/cluster-process.mjs");
const { ServerProcess, BIN } = await import("../tests/server-process.mjs");
const require = createRequire(path.join(ROOT, "tests/e2e/package.json"));
const { io } = require("socket.io-client");

const C = Number(process.env.C ?? 100);
const ROUNDS = Number(process.env.ROUNDS ?? 10);
const G = Number(process.env.G ?? 10);
const K = Number(process.env.K ?? 3);
const N = Number(process.env.N ?? 5000);
const TICK = Number(process.env.TICK ?? 20);
const WAIT_MS = 10_000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function admin(node, method, pathname, body) {
  const res = await fetch(node.adminUrl + pathname, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return res.text();
}

function connect(url, opts = {}) {
  const socket = io(url, { forceNew: true, reconnection: false, transports: ["websocket"], timeout: WAIT_MS, ...opts });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", reject);
  });
}

function until(predicate, ms) {
  const deadline = Date.now() + ms;
  return (async () => {
    while (!predicate()) {
      if (Date.now() > deadline) return false;
      await sleep(10);
    }
    return true;
  })();
}

function metric(text, name) {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : NaN;
}

function rssKiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

async function reconnects() {
  const cluster = await startCluster(3, {
    flags: ["--recovery-ms", "60000", "--client-rooms", "--log", "warn"],
    readyMs: 60_000,
  });
  const nodes = cluster.nodes;
  const counts = { ok: 0, gap: 0, fresh: 0, error: 0 };
  const clients = [];
  try {
    for (let i = 0; i < C; i++) {
      const node = i % 3;
      const socket = await connect(nodes[node].url);
      const room = `g${i % G}`;
      await socket.emitWithAck("ioswarm:join", room);
      const got = [];
      socket.on("news", (round, k) => got.push(`${round}.${k}`));
      clients.push({ socket, room, node, id: socket.id, got });
    }
    // Every client holds an offset before the first blip.
    await admin(nodes[0], "POST", "/v1/emit", { event: "news", args: [-1, 0] });
    await until(() => clients.every((c) => c.got.length === 1), WAIT_MS);
    const started = Date.now();
    for (let round = 0; round < ROUNDS; round++) {
      for (const c of clients) c.got.length = 0;
      const gone = clients.map((c) => new Promise((r) => c.socket.once("disconnect", r)));
      for (const c of clients) c.socket.io.engine.close();
      await Promise.all(gone);
      for (let k = 0; k < K; k++) {
        for (let g = 0; g < G; g++) {
          await admin(nodes[(g + k + round) % 3], "POST", "/v1/emit", { rooms: [`g${g}`], event: "news", args: [round, k] });
        }
      }
      await Promise.all(
        clients.map(async (c) => {
          c.node = (c.node + 1) % 3;
          c.socket.io.uri = nodes[c.node].url;
          try {
            await new Promise((resolve, reject) => {
              c.socket.once("connect", resolve);
              c.socket.once("connect_error", reject);
              c.socket.connect();
            });
          } catch {
            counts.error++;
            return;
          }
          if (!c.socket.recovered || c.socket.id !== c.id) {
            counts.fresh++;
            c.id = c.socket.id;
            await c.socket.emitWithAck("ioswarm:join", c.room);
            return;
          }
          const want = Array.from({ length: K }, (_, k) => `${round}.${k}`);
          await until(() => c.got.length >= K, 2000);
          await sleep(20);
          if (JSON.stringify(c.got) === JSON.stringify(want)) counts.ok++;
          else {
            counts.gap++;
            if (process.env.DEBUG && counts.gap <= 5) console.error("mismatch", c.socket.id, c.room, JSON.stringify(c.got), JSON.stringify(want));
          }
        }),
      );
    }
    const seconds = (Date.now() - started) / 1000;
    for (const c of clients) c.socket.disconnect();
    const metrics = await Promise.all(nodes.map((n) => admin(n, "GET", "/metrics")));
    const fetched = metrics.map((m) => metric(m, 'ioswarm_recovery_transfers_total{kind="fetched"}')).reduce((a, b) => a + b, 0);
    const results = {};
    for (const m of metrics) {
      for (const [, result, n] of m.matchAll(/^ioswarm_recovery_attempts_total\{result="([a-z_]+)"\} (\d+)$/gm)) {
        results[result] = (results[result] ?? 0) + Number(n);
      }
    }
    const live = await stream(nodes);
    return { counts, total: C * ROUNDS, seconds, fetched, results, live };
  } finally {
    for (const c of clients) c.socket.disconnect();
    await cluster.stop();
  }
}

/** Reconnects with broadcasts flowing all along; checks exactly-once delivery per client. */
async function stream(nodes) {
  const clients = [];
  const counts = { recovered: 0, fresh: 0, error: 0 };
  for (let i = 0; i < C; i++) {
    const n = i % 3;
    const socket = await connect(nodes[n].url);
    const room = i % G;
    await socket.emitWithAck("ioswarm:join", `live${room}`);
    const seqs = [];
    socket.on("live", (_room, seq) => seqs.push(seq));
    clients.push({ socket, room, node: n, id: socket.id, seqs, fresh: false });
  }
  const next = new Array(G).fill(0);
  let running = true;
  let sent = 0;
  const emitter = (async () => {
    while (running) {
      const tick = Date.now();
      await Promise.all(
        Array.from({ length: G }, (_, g) => {
          const seq = next[g]++;
          sent++;
          return admin(nodes[(g + seq) % 3], "POST", "/v1/emit", { rooms: [`live${g}`], event: "live", args: [g, seq] });
        }),
      );
      await sleep(Math.max(0, TICK - (Date.now() - tick)));
    }
  })();
  await sleep(300);
  for (let round = 0; round < ROUNDS; round++) {
    const gone = clients.map((c) => new Promise((r) => c.socket.once("disconnect", r)));
    for (const c of clients) c.socket.io.engine.close();
    await Promise.all(gone);
    await sleep(100);
    await Promise.all(
      clients.map(async (c) => {
        c.node = (c.node + 1) % 3;
        c.socket.io.uri = nodes[c.node].url;
        try {
          await new Promise((resolve, reject) => {
            c.socket.once("connect", resolve);
            c.socket.once("connect_error", reject);
            c.socket.connect();
          });
        } catch {
          counts.error++;
          c.fresh = true;
          return;
        }
        if (c.socket.recovered && c.socket.id === c.id) counts.recovered++;
        else {
          counts.fresh++;
          c.fresh = true;
        }
      }),
    );
    await sleep(200);
  }
  await sleep(300);
  running = false;
  await emitter;
  await sleep(1000);
  const check = { missing: 0, duplicated: 0, outOfOrder: 0, delivered: 0, clientsExact: 0 };
  for (const c of clients) {
    c.socket.disconnect();
    if (c.fresh || c.seqs.length === 0) continue;
    const first = c.seqs[0];
    const last = next[c.room] - 1;
    const unique = new Set(c.seqs);
    const missing = last - first + 1 - unique.size;
    const duplicated = c.seqs.length - unique.size;
    // Broadcasts from one node keep their order; across nodes there is no order to keep.
    let outOfOrder = 0;
    const lastOf = new Map();
    for (const seq of c.seqs) {
      const origin = (c.room + seq) % 3;
      if (lastOf.has(origin) && seq < lastOf.get(origin)) outOfOrder++;
      lastOf.set(origin, seq);
    }
    check.missing += missing;
    check.duplicated += duplicated;
    check.outOfOrder += outOfOrder;
    check.delivered += c.seqs.length;
    if (missing === 0 && duplicated === 0) check.clientsExact++;
  }
  return { counts, check, sent, total: C * ROUNDS };
}

async function node(flags) {
  const args = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--redis-listen", "127.0.0.1:0", "--client-rooms", "--log", "warn", ...flags];
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("IOSWARM_")));
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env });
  return new ServerProcess(child, [BIN, ...args].join(" ")).ready;
}

/** RSS of a node after N clients joined 2 rooms, got a broadcast and were disconnected. */
async function memory(flags) {
  const server = await node(flags);
  const before = rssKiB(server.child.pid);
  const sockets = [];
  try {
    for (let i = 0; i < N; i += 100) {
      const batch = await Promise.all(Array.from({ length: Math.min(100, N - i) }, () => connect(server.url)));
      await Promise.all(batch.map((s, j) => s.emitWithAck("ioswarm:join", [`room-${(i + j) % 50}`, `user-${i + j}`])));
      sockets.push(...batch);
    }
    let got = 0;
    for (const s of sockets) s.once("news", () => got++);
    await admin(server, "POST", "/v1/emit", { event: "news", args: ["hello"] });
    await until(() => got === sockets.length, WAIT_MS);
    const gone = sockets.map((s) => new Promise((r) => s.once("disconnect", r)));
    for (const s of sockets) s.io.engine.close();
    await Promise.all(gone);
    await sleep(1500);
    const text = await admin(server, "GET", "/metrics");
    return {
      rss: rssKiB(server.child.pid),
      before,
      sessions: metric(text, "ioswarm_recovery_sessions"),
      sessionBytes: metric(text, "ioswarm_recovery_session_bytes"),
      logBytes: metric(text, "ioswarm_recovery_log_bytes"),
    };
  } finally {
    await server.stop();
  }
}

const r = await reconnects();
console.log(`\n## Forced reconnects over 3 nodes (C=${C} clients x ROUNDS=${ROUNDS}, G=${G} rooms, K=${K} broadcasts per room missed each time)\n`);
console.log("| reconnects | recovered, exact packets | recovered, missing or extra packet | fresh session | error | success rate | sessions fetched from another node | wall time |");
console.log("|---|---|---|---|---|---|---|---|");
console.log(
  `| ${r.total} | ${r.counts.ok} | ${r.counts.gap} | ${r.counts.fresh} | ${r.counts.error} | ${((100 * r.counts.ok) / r.total).toFixed(1)} % | ${r.fetched} | ${r.seconds.toFixed(1)} s |`,
);
console.log(`\nioswarm_recovery_attempts_total over the 3 nodes: ${JSON.stringify(r.results)}`);
const l = r.live;
console.log(`\n## The same with broadcasts flowing all along (one per room every ${TICK} ms, ${G} rooms, from the 3 nodes in turn)\n`);
console.log("| reconnects | recovered | fresh | error | broadcasts sent | delivered | missing | duplicated | out of order (same origin node) | clients with every broadcast exactly once |");
console.log("|---|---|---|---|---|---|---|---|---|---|");
console.log(
  `| ${l.total} | ${l.counts.recovered} | ${l.counts.fresh} | ${l.counts.error} | ${l.sent} | ${l.check.delivered} | ${l.check.missing} | ${l.check.duplicated} | ${l.check.outOfOrder} | ${l.check.clientsExact} / ${C} |`,
);

const off = await memory([]);
const on = await memory(["--recovery-ms", "600000"]);
const perSession = ((on.rss - off.rss) * 1024) / on.sessions;
console.log(`\n## Memory per disconnected recoverable session (N=${N}, 2 rooms each, one node)\n`);
console.log("| node | sessions kept | RSS after the clients left | accounted session bytes | accounted log bytes |");
console.log("|---|---|---|---|---|");
console.log(`| --recovery-ms 0 | 0 | ${(off.rss / 1024).toFixed(1)} MiB | - | - |`);
console.log(`| --recovery-ms 600000 | ${on.sessions} | ${(on.rss / 1024).toFixed(1)} MiB | ${on.sessionBytes} | ${on.logBytes} |`);
console.log(
  `\nper session: RSS difference ${perSession.toFixed(0)} bytes; accounted ${(on.sessionBytes / on.sessions).toFixed(0)} bytes`,
);
