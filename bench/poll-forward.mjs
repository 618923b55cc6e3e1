// What relaying a request to the node that holds its session costs (no sticky sessions): the
// same requests, in the same run, sent to the session's own node (local) or to another node of a
// 3-node cluster (relayed over QUIC to the owner and back), alternating one local, one relayed.
// Prints p50 / p99 per kind and the difference (the added latency):
//
// - `POST`: a polling POST carrying one message (no answer owed), until its `ok`;
// - `GET (ready)`: a polling GET that finds an ack already queued, until its payload;
// - `emit → ack (polling)`: a client's round trip over long-polling: a GET is parked first, then
//   the POST of `ioswarm:echo` with an ack id, until the parked GET returns the ack (both
//   requests relayed in the relayed case);
// - `emit → ack (WebSocket)`: the same round trip on a WebSocket session whose upgrade reached
//   the session's node (local) or another node (relayed: the frames go through a QUIC tunnel).
//
//   cargo build --release --bin ioswarm
//   (cd tests/e2e && npm ci)        # `ws` comes from there
//   node bench/poll-forward.mjs     # N=2000 WARMUP=200 IOSWARM_BIN=target/release/ioswarm
//
// Clients and the three nodes share the machine's cores: compare the two columns of one run,
// not runs on different machines. Timings live here, not in tests.
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(ROOT, "tests/e2e/package.json"));
const WebSocket = require("ws");

const N = Number(process.env.N ?? 2000);
const WARMUP = Number(process.env.WARMUP ?? 200);
process.env.IOSWARM_BIN = path.resolve(process.env.IOSWARM_BIN ?? path.join(ROOT, "target/release/ioswarm"));
// Imported after IOSWARM_BIN is set: the helper reads it when loaded.
const { startCluster } = await import("../tests/cluster-process.mjs");

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

/** One HTTP request; resolves with `{status, body}`. */
function request(url, method = "GET", body) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

const eio = (node, sid) => `${node.url}/socket.io/?EIO=4&transport=polling${sid ? `&sid=${sid}` : ""}`;

async function expect(promise, status, body, what) {
  const res = await promise;
  if (res.status !== status || (body !== undefined && res.body !== body)) {
    throw new Error(`${what}: got ${res.status} ${JSON.stringify(res.body.slice(0, 200))}, expected ${status} ${body ?? ""}`);
  }
  return res;
}

/** A polling session opened on `node` and connected to `/`. */
async function openSession(node) {
  const open = await expect(request(eio(node)), 200, undefined, "handshake");
  const sid = JSON.parse(open.body.slice(1)).sid;
  await expect(request(eio(node, sid), "POST", "40"), 200, "ok", "CONNECT");
  await expect(request(eio(node, sid)), 200, undefined, "CONNECT reply");
  return sid;
}

const now = () => process.hrtime.bigint();
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;

let ackId = 0;

/** The three polling measurements on session `sid` (held by `owner`) through `via`. */
async function pollingRound(owner, via, sid, out) {
  // POST alone.
  let t0 = now();
  await expect(request(eio(via, sid), "POST", '42["bench"]'), 200, "ok", "POST");
  out.post.push(ms(t0));
  // GET that finds its answer queued (the POST goes to the owner, untimed).
  let id = ++ackId;
  await expect(request(eio(owner, sid), "POST", `42${id}["ioswarm:echo"]`), 200, "ok", "POST echo");
  t0 = now();
  await expect(request(eio(via, sid)), 200, `43${id}[]`, "GET ready");
  out.get.push(ms(t0));
  // Emit → ack: the GET parked first, then the POST, both through `via`.
  id = ++ackId;
  const parked = request(eio(via, sid));
  await pause(5);
  t0 = now();
  await expect(request(eio(via, sid), "POST", `42${id}["ioswarm:echo"]`), 200, "ok", "POST echo");
  await expect(parked, 200, `43${id}[]`, "parked GET");
  out.echo.push(ms(t0));
}

/**
 * Gives a GET just sent time to be parked on the owner before the timed POST: the pause (well
 * above a relayed request's latency) keeps the timed part free of the GET's own trip.
 */
function pause(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** A WebSocket session: handshake on `owner`, upgrade through `via`. Resolves with a sender. */
async function openWebSocket(owner, via) {
  const sid = await openSession(owner);
  const ws = new WebSocket(`${via.url.replace(/^http/, "ws")}/socket.io/?EIO=4&transport=websocket&sid=${sid}`);
  const waiting = [];
  ws.on("message", (data) => {
    const text = data.toString();
    if (text === "2") return ws.send("3");
    const next = waiting.shift();
    if (next) next(text);
  });
  const nextMessage = () => new Promise((resolve) => waiting.push(resolve));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  ws.send("2probe");
  if ((await nextMessage()) !== "3probe") throw new Error("no 3probe");
  ws.send("5");
  return {
    ws,
    async echo() {
      const id = ++ackId;
      const got = nextMessage();
      const t0 = now();
      ws.send(`42${id}["ioswarm:echo"]`);
      const text = await got;
      if (text !== `43${id}[]`) throw new Error(`WebSocket echo: ${text}`);
      return ms(t0);
    },
  };
}

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function row(name, local, relayed) {
  const [l, r] = [local, relayed].map((xs) => [...xs].sort((a, b) => a - b));
  const cells = [quantile(l, 0.5), quantile(l, 0.99), quantile(r, 0.5), quantile(r, 0.99)];
  const added = [cells[2] - cells[0], cells[3] - cells[1]];
  return `| ${name} | ${[...cells, ...added].map((v) => v.toFixed(3)).join(" | ")} |`;
}

// No heartbeat during the run: a ping would answer a GET in place of the ack being timed.
const cluster = await startCluster(3, { flags: ["--log", "warn", "--ping-interval-ms", "3600000"] });
try {
  const [owner, via] = cluster.nodes;
  const sid = await openSession(owner);
  const local = { post: [], get: [], echo: [], ws: [] };
  const relayed = { post: [], get: [], echo: [], ws: [] };
  const wsLocal = await openWebSocket(owner, owner);
  const wsRelayed = await openWebSocket(owner, via);
  for (let i = 0; i < WARMUP + N; i++) {
    const keep = i >= WARMUP;
    const [l, r] = keep ? [local, relayed] : [{ post: [], get: [], echo: [], ws: [] }, { post: [], get: [], echo: [], ws: [] }];
    await pollingRound(owner, owner, sid, l);
    await pollingRound(owner, via, sid, r);
    l.ws.push(await wsLocal.echo());
    r.ws.push(await wsRelayed.echo());
  }
  wsLocal.ws.close();
  wsRelayed.ws.close();
  console.log(`\n3-node cluster on one machine, ${N} samples each (after ${WARMUP} warm-up), milliseconds\n`);
  console.log("| request | local p50 | local p99 | relayed p50 | relayed p99 | added p50 | added p99 |");
  console.log("|---|---|---|---|---|---|---|");
  console.log(row("POST", local.post, relayed.post));
  console.log(row("GET (ready)", local.get, relayed.get));
  console.log(row("emit → ack (polling)", local.echo, relayed.echo));
  console.log(row("emit → ack (WebSocket)", local.ws, relayed.ws));
} finally {
  agent.destroy();
  await cluster.stop();
}
