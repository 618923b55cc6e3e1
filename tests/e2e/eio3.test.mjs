// socket.io 1.x/2.x-era pages: npm socket.io-client 2.5 (Engine.IO 3, Socket.IO protocol 4) over
// polling, WebSocket and the upgrade between them: connect, namespaces, rooms, broadcasts (text
// and binary), acks both ways, the client-driven heartbeat, refusals in the 2.x shape; next to
// socket.io-client 4.8 in the same rooms; on one node and across a 3-node cluster. The wire
// framing itself (length-prefixed payloads, binary payloads) is checked with raw HTTP requests.
// `--allow-eio3=false` refuses these clients as socket.io 4 does without `allowEIO3`.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import ioV2 from "socket.io-client-v2";
import { startCluster } from "../cluster-process.mjs";
import {
  Ctx,
  QUIET_MS,
  ServerProcess,
  WAIT_MS,
  call,
  configFiles,
  ioswarmOnly,
  once,
  record,
  sleep,
  waitFor,
} from "./harness.mjs";

const T = { timeout: 30_000 };
// Short heartbeat timings, so that "longer than pingInterval + pingTimeout" takes a second.
const PING = ["--ping-interval-ms", "300", "--ping-timeout-ms", "200"];
const MODES = {
  "polling only": { transports: ["polling"] },
  "websocket only": { transports: ["websocket"] },
  "polling, then the upgrade to websocket": {},
};

/** The 2.x clients of one suite, disconnected when it ends. */
class V2 {
  constructor() {
    this.sockets = [];
  }

  /** A 2.x client (not yet connected): no reconnection, a manager of its own. */
  client(url, opts = {}) {
    const socket = ioV2(url, { forceNew: true, reconnection: false, timeout: WAIT_MS, ...opts });
    this.sockets.push(socket);
    return socket;
  }

  /** A 2.x client once it is connected; rejects on an `error` (refusal) or `connect_error`. */
  async connect(url, opts = {}) {
    const socket = this.client(url, opts);
    await v2Connected(socket);
    return socket;
  }

  cleanup() {
    for (const s of this.sockets.splice(0)) s.close();
  }
}

function v2Connected(socket) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no connect within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    for (const event of ["error", "connect_error"]) {
      socket.once(event, (err) => {
        clearTimeout(timer);
        reject(new Error(`${event}: ${JSON.stringify(err?.message ?? err)}`));
      });
    }
  });
}

/** Emits with an ack callback (2.x has no emitWithAck) and resolves with the ack's arguments. */
function v2Call(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ack for "${event}" within ${WAIT_MS} ms`)), WAIT_MS);
    socket.emit(event, ...args, (...reply) => {
      clearTimeout(timer);
      resolve(reply);
    });
  });
}

/** Whether `socket` is in `nsp` on `server`, by the id the 2.x client made for itself. */
async function listed(server, socket, nsp = "/") {
  const res = await server.admin("GET", `/v1/sockets?nsp=${encodeURIComponent(nsp)}`);
  return res.json.sockets.some((s) => s.id === socket.id);
}

/** The engine's transport once any upgrade has settled (`polling` or `websocket`). */
async function settledTransport(socket, upgrades) {
  const engine = socket.io.engine;
  if (upgrades) {
    if (engine.transport.name !== "websocket") await once(engine, "upgrade");
  } else {
    await sleep(QUIET_MS);
  }
  return engine.transport.name;
}

describe("socket.io-client 2.x on one node", () => {
  const ctx = new Ctx();
  const v2 = new V2();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--client-rooms", "--client-relay", ...PING] });
  });
  afterEach(async () => {
    v2.cleanup();
    await ctx.resetClients(server);
  });
  after(() => ctx.cleanup());

  for (const [mode, opts] of Object.entries(MODES)) {
    describe(mode, () => {
      test("connects to / by itself; its id (the session id) is the one the server lists", T, async () => {
        const s = await v2.connect(server.url, opts);
        assert.equal(s.id, s.io.engine.id);
        assert.ok(await listed(server, s), "the server lists the client's own id");
        assert.equal(await settledTransport(s, opts.transports === undefined), opts.transports?.[0] ?? "websocket");
        // The id is also the socket's room: an emit to it reaches the client.
        const got = record(s, "direct");
        assert.equal((await server.emit({ rooms: [s.id], event: "direct", args: [1] })).json.recipients, 1);
        await waitFor(() => got.length === 1, "the emit to the socket's id arrives");
        assert.deepEqual(got, [[1]]);
      });

      test("client→server ack: ioswarm:echo answers text, numbers, objects and binary", T, async () => {
        const s = await v2.connect(server.url, opts);
        const [text, blob, obj, n] = await v2Call(s, "ioswarm:echo", "é😀", Buffer.from([0, 1, 255]), { nested: { b: Buffer.from("hi") } }, 1.5);
        assert.equal(text, "é😀");
        assert.ok(Buffer.isBuffer(blob));
        assert.deepEqual([...blob], [0, 1, 255]);
        assert.deepEqual(obj.nested.b.toString(), "hi");
        assert.equal(n, 1.5);
      });

      test("server→client ack: an admin emit with ack collects the 2.x client's answer", T, async () => {
        const s = await v2.connect(server.url, opts);
        s.on("question", (q, ack) => ack(`answer to ${q}`, 42));
        const res = await server.emit({ rooms: [s.id], event: "question", args: ["life"], ackTimeoutMs: WAIT_MS });
        assert.equal(res.status, 200, res.text);
        assert.deepEqual(res.json, { recipients: 1, acks: [["answer to life", 42]], timedOut: 0 });
      });

      test("joins a room with ioswarm:join and gets what is emitted to it, text and binary", T, async () => {
        const s = await v2.connect(server.url, opts);
        assert.deepEqual(await v2Call(s, "ioswarm:join", ["news", "other"]), [{ rooms: ["news", "other"] }]);
        const got = record(s, "headline");
        const res = await server.emit({ rooms: ["news"], event: "headline", args: ["text", { n: 1 }] });
        assert.equal(res.json.recipients, 1);
        // Binary reaches the room through a 4.x client's relay.
        const relay = await ctx.connect(server.url, { transports: ["websocket"] });
        await call(relay, "ioswarm:join", "news");
        assert.deepEqual(await call(relay, "ioswarm:to", "news", "headline", Buffer.from([7, 8, 9])), [{ recipients: 1 }]);
        await waitFor(() => got.length === 2, "both broadcasts arrive");
        assert.deepEqual(got[0], ["text", { n: 1 }]);
        assert.ok(Buffer.isBuffer(got[1][0]));
        assert.deepEqual([...got[1][0]], [7, 8, 9]);
        assert.deepEqual(await v2Call(s, "ioswarm:leave", "news"), [{ rooms: ["other"] }]);
      });

      test("a namespace with a query string, next to /", T, async () => {
        const chat = await v2.connect(`${server.url}/chat`, { ...opts, query: { room: "lobby" } });
        // The 2.x client names its socket of another namespace itself.
        assert.equal(chat.id, `/chat#${chat.io.engine.id}`);
        assert.deepEqual(await v2Call(chat, "ioswarm:echo", "in chat"), ["in chat"]);
        const got = record(chat, "chat-news");
        const res = await server.emit({ nsp: "/chat", event: "chat-news", args: ["for chat"] });
        assert.equal(res.json.recipients, 1);
        await waitFor(() => got.length === 1, "the /chat broadcast arrives");
        assert.deepEqual(got, [["for chat"]]);
      });

      test("heartbeat: the client's pings are answered and an idle client stays connected", T, async () => {
        const s = await v2.connect(server.url, opts);
        let pongs = 0;
        s.on("pong", () => (pongs += 1));
        let disconnected = null;
        s.on("disconnect", (reason) => (disconnected = reason));
        // Three times pingInterval + pingTimeout (300 + 200 ms) without any message.
        await sleep(1500);
        assert.equal(disconnected, null);
        assert.ok(s.connected);
        assert.ok(pongs >= 2, `the server answered the pings (${pongs} pongs)`);
        assert.deepEqual(await v2Call(s, "ioswarm:echo", "alive"), ["alive"]);
      });
    });
  }

  for (const transports of [["polling"], ["websocket"]]) {
    test(`forceBase64 over ${transports[0]}: binary both ways as base64 text`, T, async () => {
      const s = await v2.connect(server.url, { transports, forceBase64: true });
      const [blob] = await v2Call(s, "ioswarm:echo", Buffer.from([1, 2, 3, 250]));
      assert.ok(Buffer.isBuffer(blob));
      assert.deepEqual([...blob], [1, 2, 3, 250]);
    });
  }

  test("a client disconnecting leaves the server with no socket for it", T, async () => {
    const s = await v2.connect(server.url, { transports: ["websocket"] });
    assert.ok(await listed(server, s));
    const id = s.id;
    s.close();
    await waitFor(async () => !(await server.admin("GET", "/v1/sockets?nsp=/")).json.sockets.some((x) => x.id === id), "the socket is gone");
  });
});

describe("socket.io-client 2.x and 4.x in the same room", () => {
  const ctx = new Ctx();
  const v2 = new V2();
  let server;
  let clients;
  before(async () => {
    server = await ctx.server({ flags: ["--client-rooms", "--client-relay", ...PING] });
    clients = {
      "2.x polling": await v2.connect(server.url, { transports: ["polling"] }),
      "2.x websocket": await v2.connect(server.url, { transports: ["websocket"] }),
      "2.x upgraded": await v2.connect(server.url),
      "4.x polling": await ctx.connect(server.url, { transports: ["polling"] }),
      "4.x websocket": await ctx.connect(server.url, { transports: ["websocket"] }),
    };
    for (const [name, s] of Object.entries(clients)) {
      const join = name.startsWith("2") ? v2Call(s, "ioswarm:join", "mixed") : call(s, "ioswarm:join", "mixed");
      assert.deepEqual(await join, [{ rooms: ["mixed"] }]);
    }
  });
  after(() => {
    v2.cleanup();
    return ctx.cleanup();
  });

  test("an admin emit reaches every client with the same arguments", T, async () => {
    const got = Object.fromEntries(Object.entries(clients).map(([name, s]) => [name, record(s, "all")]));
    const args = ["hello", { a: [1, 2.5, null, true], é: "😀" }];
    assert.equal((await server.emit({ rooms: ["mixed"], event: "all", args })).json.recipients, 5);
    await waitFor(() => Object.values(got).every((g) => g.length === 1), "every client receives it");
    for (const [name, g] of Object.entries(got)) assert.deepEqual(g, [args], name);
  });

  test("binary relayed by a 4.x client reaches the 2.x clients, and the other way round", T, async () => {
    const got = Object.fromEntries(Object.entries(clients).map(([name, s]) => [name, record(s, "bin")]));
    const payload = { seq: 1, blob: Buffer.from([0, 1, 2, 253]) };
    assert.deepEqual(await call(clients["4.x websocket"], "ioswarm:to", "mixed", "bin", payload, "tail"), [{ recipients: 4 }]);
    assert.deepEqual(await v2Call(clients["2.x polling"], "ioswarm:to", "mixed", "bin", { seq: 2, blob: Buffer.from("v2") }), [
      { recipients: 4 },
    ]);
    await waitFor(
      () => Object.entries(got).every(([name, g]) => g.length === (name === "4.x websocket" || name === "2.x polling" ? 1 : 2)),
      "every other client receives each relay",
    );
    await sleep(QUIET_MS);
    for (const [name, g] of Object.entries(got)) {
      const seqs = g.map(([p]) => p.seq).sort();
      assert.deepEqual(seqs, name === "4.x websocket" ? [2] : name === "2.x polling" ? [1] : [1, 2], name);
      for (const [p] of g) {
        assert.ok(Buffer.isBuffer(p.blob), `${name} gets a Buffer`);
        assert.deepEqual(p.blob, p.seq === 1 ? payload.blob : Buffer.from("v2"), name);
      }
    }
  });

  test("an emit with ack to the room collects the answers of both generations", T, async () => {
    for (const [name, s] of Object.entries(clients)) s.on("ping?", (ack) => ack(name));
    const res = await server.emit({ rooms: ["mixed"], event: "ping?", args: [], ackTimeoutMs: WAIT_MS });
    assert.equal(res.json.recipients, 5);
    assert.equal(res.json.timedOut, 0);
    assert.deepEqual(res.json.acks.map(([n]) => n).sort(), Object.keys(clients).sort());
  });
});

/** A raw Engine.IO 3 session over HTTP long-polling (what a 2.x page's XHR transport sends). */
class RawV3 {
  constructor(server, query = "") {
    this.base = `${server.url}/socket.io/?EIO=3&transport=polling${query}`;
  }

  async handshake() {
    const res = await this.get(this.base);
    assert.equal(res.status, 200);
    const [open] = res.packets;
    assert.ok(open.startsWith("0"), `open packet: ${open}`);
    this.open = JSON.parse(open.slice(1));
    this.url = `${this.base}&sid=${this.open.sid}`;
    return res;
  }

  /** GET: status, content type, and the payload's packets (text packets as strings, binary as Buffers). */
  async get(url = this.url) {
    const res = await fetch(url, { signal: AbortSignal.timeout(WAIT_MS) });
    const type = res.headers.get("content-type");
    const body = Buffer.from(await res.arrayBuffer());
    return { status: res.status, type, body, packets: res.status === 200 ? decodePayload(body, type) : [] };
  }

  async post(body, type = "text/plain;charset=UTF-8") {
    const res = await fetch(this.url, { method: "POST", body, headers: { "content-type": type }, signal: AbortSignal.timeout(WAIT_MS) });
    return { status: res.status, text: await res.text() };
  }

  /** GETs until a packet matching `predicate` arrived; returns every packet seen. */
  async until(predicate) {
    const seen = [];
    while (!seen.some(predicate)) {
      const res = await this.get();
      assert.equal(res.status, 200);
      seen.push(...res.packets);
    }
    return seen;
  }
}

/** `<length>:<packet>` with JavaScript string lengths, or the binary framing. */
function decodePayload(body, type) {
  const packets = [];
  if (type === "application/octet-stream") {
    let i = 0;
    while (i < body.length) {
      const isText = body[i] === 0;
      let digits = "";
      for (i += 1; body[i] !== 255; i++) digits += String(body[i]);
      const len = Number(digits);
      const data = body.subarray(i + 1, i + 1 + len);
      packets.push(isText ? data.toString("utf8") : data);
      i += 1 + len;
    }
    return packets;
  }
  const text = body.toString("utf8");
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(":", i);
    const len = Number(text.slice(i, colon));
    packets.push(text.slice(colon + 1, colon + 1 + len));
    i = colon + 1 + len;
  }
  return packets;
}

/** `<length>:<packet>` for each text packet. */
const framed = (...packets) => packets.map((p) => `${p.length}:${p}`).join("");

describe("Engine.IO 3 on the wire (raw HTTP long-polling)", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: PING });
  });
  after(() => ctx.cleanup());

  test("the handshake answers a length-prefixed open packet and / is connected by the server", T, async () => {
    const raw = new RawV3(server);
    const res = await raw.handshake();
    assert.match(res.type, /^text\/plain/);
    assert.match(res.body.toString(), /^\d+:0\{/);
    assert.deepEqual(raw.open.upgrades, ["websocket"]);
    assert.equal(raw.open.pingInterval, 300);
    assert.equal(raw.open.pingTimeout, 200);
    // The CONNECT of "/" comes without the client asking, and without a payload.
    const seen = [...res.packets.slice(1), ...(res.packets.includes("40") ? [] : await raw.until((p) => p === "40"))];
    assert.ok(seen.includes("40"), JSON.stringify(seen));
  });

  test("the client pings, the server pongs; lengths count UTF-16 units", T, async () => {
    const raw = new RawV3(server);
    await raw.handshake();
    await raw.until((p) => p === "40");
    const echo = '42["ioswarm:echo","é😀"]';
    // A ping and an event (with an ack id) in one payload.
    const sent = await raw.post(framed("2", '421["ioswarm:echo","é😀"]'));
    assert.equal(sent.status, 200, sent.text);
    const seen = await raw.until((p) => p.startsWith("431"));
    assert.ok(seen.includes("3"), `a pong: ${JSON.stringify(seen)}`);
    assert.ok(seen.includes('431["é😀"]'), JSON.stringify(seen));
    assert.equal(framed(echo).split(":")[0], String(echo.length));
  });

  test("binary: a base64 packet from the client, a binary payload back (the client takes binary)", T, async () => {
    const raw = new RawV3(server);
    await raw.handshake();
    await raw.until((p) => p === "40");
    const header = '451-1["ioswarm:echo",{"_placeholder":true,"num":0}]';
    const sent = await raw.post(framed(header, `b4${Buffer.from([1, 2, 3]).toString("base64")}`));
    assert.equal(sent.status, 200, sent.text);
    let res;
    do {
      res = await raw.get();
    } while (res.packets.length === 0 || res.packets.every((p) => p === "3"));
    assert.equal(res.type, "application/octet-stream");
    const i = res.packets.findIndex((p) => typeof p === "string" && p.startsWith("461-1"));
    assert.equal(res.packets[i], '461-1[{"_placeholder":true,"num":0}]');
    // A binary packet keeps its type byte (4, message) before the data.
    assert.deepEqual([...res.packets[i + 1]], [4, 1, 2, 3]);
  });

  test("with b64=1 the binary answer is base64 text in a text payload", T, async () => {
    const raw = new RawV3(server, "&b64=1");
    await raw.handshake();
    await raw.until((p) => p === "40");
    const header = '451-1["ioswarm:echo",{"_placeholder":true,"num":0}]';
    await raw.post(framed(header, `b4${Buffer.from([9]).toString("base64")}`));
    const seen = await raw.until((p) => p.startsWith("b4"));
    assert.ok(seen.includes('461-1[{"_placeholder":true,"num":0}]'), JSON.stringify(seen));
    assert.ok(seen.includes("b4CQ=="), JSON.stringify(seen));
  });

  test("a session whose client stops pinging ends after pingInterval + pingTimeout", T, async () => {
    const raw = new RawV3(server);
    await raw.handshake();
    await raw.until((p) => p === "40");
    // Nothing for three times 300 + 200 ms: the session is gone.
    await sleep(1500);
    const res = await raw.get();
    assert.equal(res.status, 400);
    assert.deepEqual(JSON.parse(res.body.toString()), { code: 1, message: "Session ID unknown" });
  });

  test("a protocol 4 request on a protocol 3 session is a bad request", T, async () => {
    const raw = new RawV3(server);
    await raw.handshake();
    const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling&sid=${raw.open.sid}`);
    assert.equal(res.status, 400);
    assert.deepEqual(await res.json(), { code: 3, message: "Bad request" });
  });
});

describe("refusals in the 2.x shape", () => {
  const ctx = new Ctx();
  const v2 = new V2();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--auth-token", "s3cret", "--namespaces", "/,/chat"] });
  });
  afterEach(() => v2.cleanup());
  after(() => ctx.cleanup());

  for (const transports of [["polling"], ["websocket"]]) {
    test(`--auth-token over ${transports[0]}: the handshake query is the auth of /`, T, async () => {
      const s = await v2.connect(server.url, { transports, query: { token: "s3cret" } });
      assert.deepEqual(await v2Call(s, "ioswarm:echo", "in"), ["in"]);
      const chat = await v2.connect(`${server.url}/chat`, { transports, query: { token: "s3cret" } });
      assert.deepEqual(await v2Call(chat, "ioswarm:echo", "in chat"), ["in chat"]);
    });

    test(`--auth-token over ${transports[0]}: a wrong token gets the error "unauthorized" as a string`, T, async () => {
      const s = v2.client(server.url, { transports, query: { token: "nope" } });
      let connected = false;
      s.on("connect", () => (connected = true));
      assert.deepEqual(await once(s, "error"), ["unauthorized"]);
      const chat = v2.client(`${server.url}/chat`, { transports, query: { token: "nope" } });
      assert.deepEqual(await once(chat, "error"), ["unauthorized"]);
      await sleep(QUIET_MS);
      assert.equal(connected, false);
    });
  }

  test("a namespace outside --namespaces gets the error {message: \"Invalid namespace\"}", T, async () => {
    const s = v2.client(`${server.url}/other`, { query: { token: "s3cret" } });
    assert.deepEqual(await once(s, "error"), [{ message: "Invalid namespace" }]);
  });
});

describe("--allow-eio3=false", () => {
  const ctx = new Ctx();
  const v2 = new V2();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--allow-eio3=false"] });
  });
  after(() => {
    v2.cleanup();
    return ctx.cleanup();
  });

  test("a protocol 3 handshake gets 400 Unsupported protocol version; protocol 4 still connects", T, async () => {
    for (const transport of ["polling"]) {
      const res = await fetch(`${server.url}/socket.io/?EIO=3&transport=${transport}`);
      assert.equal(res.status, 400);
      assert.deepEqual(await res.json(), { code: 5, message: "Unsupported protocol version" });
    }
    const s = v2.client(server.url, { transports: ["polling"] });
    const [err] = await once(s, "connect_error");
    assert.ok(err instanceof Error);
    const v4 = await ctx.connect(server.url);
    assert.deepEqual(await call(v4, "ioswarm:echo", 1), [1]);
  });

  test("a 2.x client over websocket is refused as well", T, async () => {
    const s = v2.client(server.url, { transports: ["websocket"] });
    await once(s, "connect_error");
    assert.equal(s.connected, false);
  });
});

describe("by default protocol 3 is accepted", () => {
  const ctx = new Ctx();
  before(async () => {});
  after(() => ctx.cleanup());

  test("a protocol 3 handshake gets its open packet", T, async () => {
    const server = await ctx.server();
    const res = await fetch(`${server.url}/socket.io/?EIO=3&transport=polling`);
    assert.equal(res.status, 200);
    assert.match(await res.text(), /^\d+:0\{"sid":/);
  });
});

ioswarmOnly("2.x clients with room rules, forwarding rules and metrics", () => {
  const ctx = new Ctx();
  const v2 = new V2();
  const { flags: config } = configFiles("eio3");
  afterEach(() => v2.cleanup());
  after(() => ctx.cleanup());

  test("[[rooms.rule]]: a 2.x page joins with its own event; refused rooms answer forbidden", T, async () => {
    const server = await ctx.server({
      flags: config(
        "[[rooms.rule]]",
        'event = "AlertToggle::join"',
        'join = "ROOM::ExtraImportantUpdates"',
        "[[rooms.rule]]",
        'event = "chat:join"',
        'join = "{arg0}"',
        'allow = ["chat:*"]',
      ),
    });
    const s = await v2.connect(server.url, { transports: ["polling"] });
    const w = await v2.connect(server.url, { transports: ["websocket"] });
    assert.deepEqual(await v2Call(s, "AlertToggle::join"), [{ rooms: ["ROOM::ExtraImportantUpdates"] }]);
    assert.deepEqual(await v2Call(w, "chat:join", "chat:lobby"), [{ rooms: ["chat:lobby"] }]);
    assert.deepEqual(await v2Call(w, "chat:join", "admin"), [{ error: "forbidden" }]);
    assert.deepEqual(await v2Call(w, "chat:join", s.id), [{ error: "forbidden" }]);
    const alerts = record(s, "alert");
    const lobby = record(w, "msg");
    assert.equal((await server.emit({ rooms: ["ROOM::ExtraImportantUpdates"], event: "alert", args: ["!"] })).json.recipients, 1);
    assert.equal((await server.emit({ rooms: ["chat:lobby"], event: "msg", args: ["hi"] })).json.recipients, 1);
    await waitFor(() => alerts.length === 1 && lobby.length === 1, "both rooms' emits arrive");
    assert.deepEqual([alerts, lobby], [[["!"]], [["hi"]]]);
  });

  test("[[forward]]: a 2.x client's event (binary too) reaches the webhook, whose reply acks and emits", T, async () => {
    const http = await import("node:http");
    const requests = [];
    const app = http.createServer((req, res) => {
      let body = "";
      req.setEncoding("utf8").on("data", (d) => (body += d));
      req.on("end", () => {
        const msg = JSON.parse(body);
        requests.push(msg);
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ ack: ["stored"], emit: [{ rooms: ["fans"], event: "upload", args: [msg.args[0]] }] }));
      });
    });
    await new Promise((r) => app.listen(0, "127.0.0.1", r));
    try {
      const server = await ctx.server({
        flags: [
          "--client-rooms",
          ...config("[[forward]]", 'events = ["upload"]', `url = "http://127.0.0.1:${app.address().port}/hook"`),
        ],
      });
      const sender = await v2.connect(server.url, { transports: ["polling"] });
      const fan = await v2.connect(server.url, { transports: ["websocket"] });
      const fan4 = await ctx.connect(server.url, { transports: ["websocket"] });
      await v2Call(fan, "ioswarm:join", "fans");
      await call(fan4, "ioswarm:join", "fans");
      const got = [record(fan, "upload"), record(fan4, "upload")];
      assert.deepEqual(await v2Call(sender, "upload", "photo.png", Buffer.from([1, 2])), ["stored"]);
      assert.equal(requests.length, 1);
      assert.deepEqual(requests[0].args, ["photo.png", { _binary: "AQI=" }]);
      assert.equal(requests[0].socket.id, sender.id);
      await waitFor(() => got.every((g) => g.length === 1), "the webhook's emit reaches both fans");
      assert.deepEqual(got, [[["photo.png"]], [["photo.png"]]]);
    } finally {
      await new Promise((r) => app.close(r));
    }
  });

  test("ioswarm_engine_eio3_connections counts the open protocol 3 sessions", T, async () => {
    const server = await ctx.server();
    const gauge = async () => {
      const text = await (await fetch(`${server.adminUrl}/metrics`)).text();
      return Number(text.split("\n").find((l) => l.startsWith("ioswarm_engine_eio3_connections ")).split(" ")[1]);
    };
    assert.equal(await gauge(), 0);
    const a = await v2.connect(server.url, { transports: ["polling"] });
    await v2.connect(server.url, { transports: ["websocket"] });
    await ctx.connect(server.url);
    await waitFor(async () => (await gauge()) === 2, "two protocol 3 sessions");
    a.close();
    await waitFor(async () => (await gauge()) === 1, "one left");
  });
});

ioswarmOnly("socket.io-client 2.x across a 3-node cluster", () => {
  const ctx = new Ctx();
  const v2 = new V2();
  let cluster;
  before(async () => {
    cluster = await startCluster(3, { flags: ["--client-rooms", "--client-relay", ...PING], Process: ServerProcess });
  });
  afterEach(() => v2.cleanup());
  after(async () => {
    v2.cleanup();
    await ctx.cleanup();
    await cluster?.stop();
  });

  test("2.x clients on nodes 2 and 3 get broadcasts, text and binary, made on node 1", { timeout: 60_000 }, async () => {
    const [n1, n2, n3] = cluster.nodes;
    const a = await v2.connect(n2.url, { transports: ["polling"] });
    const b = await v2.connect(n3.url, { transports: ["websocket"] });
    const c = await v2.connect(n3.url);
    const d = await ctx.connect(n1.url, { transports: ["websocket"] });
    for (const s of [a, b, c]) await v2Call(s, "ioswarm:join", "x");
    await call(d, "ioswarm:join", "x");
    const got = [a, b, c].map((s) => record(s, "news"));
    // Room interest reaches the other nodes within a few milliseconds; retry until it has.
    await waitFor(async () => (await n1.emit({ rooms: ["x"], event: "warmup", args: [] })).json.forwardedTo?.length === 2, "node 1 forwards room x to nodes 2 and 3");
    assert.equal((await n1.emit({ rooms: ["x"], event: "news", args: ["text", { n: 1 }] })).status, 200);
    const [relayed] = await call(d, "ioswarm:to", "x", "news", Buffer.from([5, 6]));
    assert.equal(typeof relayed.recipients, "number", JSON.stringify(relayed));
    await waitFor(() => got.every((g) => g.length === 2), "each 2.x client gets both");
    for (const g of got) {
      assert.deepEqual(g[0], ["text", { n: 1 }]);
      assert.ok(Buffer.isBuffer(g[1][0]));
      assert.deepEqual([...g[1][0]], [5, 6]);
    }
  });

  test("a 2.x client's own id reaches it from another node; acks come back across nodes", { timeout: 60_000 }, async () => {
    const [n1, , n3] = cluster.nodes;
    const s = await v2.connect(n3.url, { transports: ["websocket"] });
    s.on("question", (q, ack) => ack(`from node 3: ${q}`));
    const got = record(s, "direct");
    await waitFor(async () => {
      await n1.emit({ rooms: [s.id], event: "direct", args: ["hi"] });
      return got.length > 0;
    }, "the emit to the 2.x socket's id arrives from node 1");
    assert.deepEqual(got[0], ["hi"]);
    const res = await n1.emit({ rooms: [s.id], event: "question", args: ["q"], ackTimeoutMs: WAIT_MS });
    assert.deepEqual(res.json.acks, [["from node 3: q"]]);
    assert.equal(res.json.timedOut, 0);
  });
});
