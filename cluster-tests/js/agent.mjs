// The cluster tests' Node agent: real socket.io-client 4.8, @socket.io/redis-emitter 5.1 and
// node-redis 4 peers, driven by the Rust tests (cluster-tests/src/agent.rs) over JSON lines.
//
// Protocol: one request per stdin line, `{"id": N, "cmd": "...", ...params}`; one reply per
// request on stdout, `{"id": N, "ok": true, "result": ...}` or `{"id": N, "ok": false,
// "error": "..."}`. Requests run concurrently; replies may come out of order. On start the agent
// prints `{"id": 0, "ok": true, "result": {"agent": "ready"}}`. Nothing else is written to stdout;
// diagnostics go to stderr. When stdin closes, everything is closed and the agent exits.
//
// Clients and reconnection: every socket.io client is created with `reconnection: false` and the
// agent reconnects it itself, because a socket.io-client Manager can only reconnect to the URL it
// was created with. A client gets a list of URLs (`urls`); after a disconnect that the server or
// the network caused (not "io server disconnect" / "io client disconnect", after which
// socket.io-client would not reconnect either) the agent creates a new Manager for the NEXT URL
// in the list (round robin), and on `connect_error` moves on to the next one after a short
// backoff. With a single URL it keeps retrying that URL (a restarted node comes back on it). On
// every (re)connection the client joins again, with `ioswarm:join`, the rooms it was asked to
// join (what an application does on `connect`), and only then counts as `ready`.
//
// Every event a client receives is recorded with a timestamp and the index of the URL it was
// connected to; when the server asks for an acknowledgement, the client answers with
// `ackReply` (default: its own client id).

import { createInterface } from "node:readline";
import { Emitter } from "@socket.io/redis-emitter";
import { createClient } from "redis";
import { io } from "socket.io-client";

const DEFAULT_WAIT_MS = 15_000;
const RECONNECT_DELAY_MS = 100;
const RECONNECT_BACKOFF_MS = 250;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (...args) => process.stderr.write(`[agent ${new Date().toISOString()}] ${args.join(" ")}\n`);

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout: ${what} did not complete within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function waitFor(predicate, ms, describe) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timeout after ${ms} ms waiting for ${describe()}`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------------------------------------
// socket.io clients

/** @type {Map<string, Client>} */
const clients = new Map();
let clientSeq = 0;

class Client {
  constructor(id, urls, { nsp = "/", transports = ["websocket"], reconnect = true, ackReply, auth } = {}) {
    this.id = id;
    this.urls = urls;
    this.nsp = nsp;
    this.transports = transports;
    this.reconnect = reconnect;
    this.ackReply = ackReply === undefined ? id : ackReply;
    this.auth = auth;
    this.urlIndex = 0;
    this.rooms = new Set();
    this.events = [];
    this.connects = 0;
    this.disconnects = [];
    this.errors = [];
    this.ready = false;
    this.closed = false;
    this.socket = null;
    this.timer = null;
  }

  open() {
    if (this.closed) return;
    const url = this.urls[this.urlIndex];
    const opts = { forceNew: true, reconnection: false, transports: this.transports, timeout: 5000 };
    if (this.auth !== undefined) opts.auth = this.auth;
    const socket = io(url.replace(/\/$/, "") + this.nsp, opts);
    this.socket = socket;
    socket.on("connect", () => this.onConnect(socket));
    socket.on("disconnect", (reason) => this.onDisconnect(socket, reason));
    socket.on("connect_error", (err) => this.onConnectError(socket, err));
    socket.onAny((event, ...args) => {
      if (socket !== this.socket) return;
      let ack = null;
      if (args.length > 0 && typeof args[args.length - 1] === "function") ack = args.pop();
      this.events.push({ event, args, t: Date.now(), url: this.urlIndex });
      if (ack) ack(this.ackReply);
    });
  }

  async onConnect(socket) {
    if (socket !== this.socket) return;
    this.connects += 1;
    const index = this.urlIndex;
    if (this.rooms.size > 0) {
      try {
        await call(socket, "ioswarm:join", [...this.rooms]);
      } catch (e) {
        this.errors.push(`rejoin after connect to ${this.urls[index]}: ${e.message}`);
        // The connection is of no use without its rooms: drop it and try again.
        if (socket === this.socket) socket.disconnect();
        this.schedule(RECONNECT_BACKOFF_MS, true);
        return;
      }
    }
    if (socket === this.socket && socket.connected) this.ready = true;
  }

  onDisconnect(socket, reason) {
    if (socket !== this.socket) return;
    this.ready = false;
    this.disconnects.push({ reason, t: Date.now(), url: this.urlIndex });
    if (this.closed || !this.reconnect) return;
    if (reason === "io server disconnect" || reason === "io client disconnect") return;
    this.schedule(RECONNECT_DELAY_MS, true);
  }

  onConnectError(socket, err) {
    if (socket !== this.socket) return;
    this.ready = false;
    this.errors.push(`connect_error (${this.urls[this.urlIndex]}): ${err.message}`);
    if (this.errors.length > 50) this.errors.splice(0, this.errors.length - 50);
    if (this.closed || !this.reconnect) return;
    this.schedule(RECONNECT_BACKOFF_MS, true);
  }

  /** Opens a new connection after `ms`, to the next URL when `next`. */
  schedule(ms, next) {
    if (this.timer) return;
    const old = this.socket;
    this.socket = null;
    if (old) {
      old.removeAllListeners();
      old.offAny();
      old.disconnect();
    }
    this.timer = setTimeout(() => {
      this.timer = null;
      if (next) this.urlIndex = (this.urlIndex + 1) % this.urls.length;
      this.open();
    }, ms);
  }

  close() {
    this.closed = true;
    this.ready = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.socket) this.socket.disconnect();
  }

  status() {
    return {
      connected: Boolean(this.socket?.connected),
      ready: this.ready,
      sid: this.socket?.connected ? this.socket.id : null,
      url: this.urls[this.urlIndex],
      urlIndex: this.urlIndex,
      connects: this.connects,
      disconnects: this.disconnects.map((d) => d.reason),
      rooms: [...this.rooms],
      errors: this.errors.slice(-5),
    };
  }
}

/** Emits with an ack and resolves with ALL ack arguments. */
function call(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(DEFAULT_WAIT_MS).emit(event, ...args, (err, ...resp) => {
      if (err) reject(new Error(`no ack for "${event}" within ${DEFAULT_WAIT_MS} ms`));
      else resolve(resp);
    });
  });
}

function pick(ids) {
  const list = ids ?? [...clients.keys()];
  return list.map((id) => {
    const c = clients.get(id);
    if (!c) throw new Error(`unknown client ${id}`);
    return c;
  });
}

function readySocket(c) {
  if (!c.ready || !c.socket?.connected) throw new Error(`client ${c.id} is not connected (${JSON.stringify(c.status())})`);
  return c.socket;
}

// ---------------------------------------------------------------------------------------------
// Redis connections (node-redis 4) and emitters

/** @type {Map<string, {client: any, messages: any[]}>} */
const redisConns = new Map();
/** @type {Map<string, {client: any, emitter: Emitter}>} */
const emitters = new Map();

async function openRedis(url) {
  const client = createClient({
    url,
    socket: { connectTimeout: 5000, reconnectStrategy: (retries) => Math.min(100 * (retries + 1), 1000) },
  });
  client.on("error", (e) => log(`redis ${url}: ${e.message}`));
  await withTimeout(client.connect(), 10_000, `connect to ${url}`);
  return client;
}

function conn(name) {
  const c = redisConns.get(name);
  if (!c) throw new Error(`unknown redis connection ${name}`);
  return c;
}

async function emitterFor(url) {
  let e = emitters.get(url);
  if (!e) {
    const client = await openRedis(url);
    e = { client, emitter: new Emitter(client) };
    emitters.set(url, e);
  }
  return e.emitter;
}

/** `emitter[.of(nsp)][.to(rooms)][.except(rooms)]` as a request describes it. */
function target(emitter, { nsp, to, except }) {
  let op = nsp && nsp !== "/" ? emitter.of(nsp) : emitter;
  if (to && to.length > 0) op = op.to(to);
  if (except && except.length > 0) op = op.except(except);
  return op;
}

function reply(value) {
  // node-redis returns Buffers only when asked to; keep replies JSON-friendly anyway.
  if (Buffer.isBuffer(value)) return value.toString("utf8");
  if (Array.isArray(value)) return value.map(reply);
  return value;
}

// ---------------------------------------------------------------------------------------------
// Background loops (a publisher emitting continuously)

/** @type {Map<string, {stop: boolean, sent: number, errors: string[], done: Promise<void>}>} */
const loops = new Map();

// ---------------------------------------------------------------------------------------------
// Commands

const commands = {
  ping: async () => "pong",

  /** `{urls, count, nsp?, transports?, reconnect?, ackReply?, prefix?, timeoutMs?}` → `{clients, sids}` */
  connect: async ({ urls, count = 1, nsp, transports, reconnect, ackReply, auth, prefix = "c", timeoutMs = DEFAULT_WAIT_MS }) => {
    if (!Array.isArray(urls) || urls.length === 0) throw new Error("connect needs urls: [url, ...]");
    const made = [];
    for (let i = 0; i < count; i++) {
      const id = `${prefix}${clientSeq++}`;
      const c = new Client(id, urls, { nsp, transports, reconnect, ackReply, auth });
      clients.set(id, c);
      made.push(c);
      c.open();
    }
    await waitFor(
      () => made.every((c) => c.ready),
      timeoutMs,
      () => `clients to connect: ${JSON.stringify(made.filter((c) => !c.ready).map((c) => [c.id, c.status()]))}`,
    );
    return { clients: made.map((c) => c.id), sids: made.map((c) => c.socket.id) };
  },

  /** `{clients, rooms}`: `ioswarm:join` on each client; the rooms are joined again after a reconnect. */
  join: async ({ clients: ids, rooms }) => {
    const list = Array.isArray(rooms) ? rooms : [rooms];
    return Promise.all(
      pick(ids).map(async (c) => {
        const [ack] = await call(readySocket(c), "ioswarm:join", list);
        for (const r of list) c.rooms.add(r);
        return { client: c.id, ack };
      }),
    );
  },

  leave: async ({ clients: ids, rooms }) => {
    const list = Array.isArray(rooms) ? rooms : [rooms];
    return Promise.all(
      pick(ids).map(async (c) => {
        const [ack] = await call(readySocket(c), "ioswarm:leave", list);
        for (const r of list) c.rooms.delete(r);
        return { client: c.id, ack };
      }),
    );
  },

  /** `{client, room, event, args}`: `ioswarm:to`; resolves with the ack's first argument. */
  to: async ({ client, room, event, args = [] }) => {
    const [c] = pick([client]);
    const [ack] = await call(readySocket(c), "ioswarm:to", room, event, ...args);
    return ack;
  },

  /** `{client, event, args}`: a plain emit with an ack; resolves with all ack arguments. */
  emit: async ({ client, event, args = [] }) => {
    const [c] = pick([client]);
    return call(readySocket(c), event, ...args);
  },

  /** `{clients?, event?}` → `{id: [{event, args, t, url}]}` */
  events: async ({ clients: ids, event }) =>
    Object.fromEntries(pick(ids).map((c) => [c.id, c.events.filter((e) => event === undefined || e.event === event)])),

  /** `{clients?, event?}` → `{id: n}` */
  counts: async ({ clients: ids, event }) =>
    Object.fromEntries(
      pick(ids).map((c) => [c.id, c.events.filter((e) => event === undefined || e.event === event).length]),
    ),

  /** `{clients?}`: forgets the recorded events. */
  clear: async ({ clients: ids }) => {
    for (const c of pick(ids)) c.events = [];
    return null;
  },

  status: async ({ clients: ids }) => Object.fromEntries(pick(ids).map((c) => [c.id, c.status()])),

  /** `{clients?, timeoutMs?}`: waits until every listed client is connected with its rooms joined. */
  wait_ready: async ({ clients: ids, timeoutMs = DEFAULT_WAIT_MS }) => {
    const list = pick(ids);
    await waitFor(
      () => list.every((c) => c.ready),
      timeoutMs,
      () => `clients to be ready: ${JSON.stringify(list.filter((c) => !c.ready).map((c) => [c.id, c.status()]))}`,
    );
    return Object.fromEntries(list.map((c) => [c.id, c.status()]));
  },

  /** `{clients, event, count, timeoutMs?}`: waits until each client has at least `count` `event`s. */
  wait_events: async ({ clients: ids, event, count = 1, timeoutMs = DEFAULT_WAIT_MS }) => {
    const list = pick(ids);
    const n = (c) => c.events.filter((e) => e.event === event).length;
    await waitFor(
      () => list.every((c) => n(c) >= count),
      timeoutMs,
      () =>
        `${count} "${event}" events on every client: ${JSON.stringify(
          Object.fromEntries(list.map((c) => [c.id, { got: n(c), status: c.status() }])),
        )}`,
    );
    return Object.fromEntries(list.map((c) => [c.id, n(c)]));
  },

  /** `{clients?}`: disconnects the clients (no reconnection). */
  close_clients: async ({ clients: ids }) => {
    for (const c of pick(ids)) {
      c.close();
      clients.delete(c.id);
    }
    return null;
  },

  /**
   * `{redis, op, nsp?, to?, except?, event?, args?, rooms?, close?}` with op one of `emit`,
   * `socketsJoin`, `socketsLeave`, `disconnectSockets`, `serverSideEmit`: one
   * @socket.io/redis-emitter call publishing into the node at `redis` (a redis:// URL).
   */
  emitter: async ({ redis, op, nsp, to, except, event, args = [], rooms, close = false }) => {
    const t = target(await emitterFor(redis), { nsp, to, except });
    switch (op) {
      case "emit":
        t.emit(event, ...args);
        break;
      case "socketsJoin":
        t.socketsJoin(rooms);
        break;
      case "socketsLeave":
        t.socketsLeave(rooms);
        break;
      case "disconnectSockets":
        t.disconnectSockets(close);
        break;
      case "serverSideEmit":
        t.serverSideEmit(event, ...args);
        break;
      default:
        throw new Error(`unknown emitter op ${op}`);
    }
    // The emitter's PUBLISH is fire-and-forget; a PING on the same connection returns once the
    // node has read it.
    await withTimeout(emitters.get(redis).client.ping(), 10_000, `PING after ${op} on ${redis}`);
    return null;
  },

  /** `{conn, url}`: opens a node-redis connection named `conn`. */
  redis_open: async ({ conn: name, url }) => {
    if (redisConns.has(name)) throw new Error(`redis connection ${name} already open`);
    const client = await openRedis(url);
    redisConns.set(name, { client, messages: [] });
    return null;
  },

  /** `{conn, args, timeoutMs?}`: one command; the reply, or an error (Redis error or timeout). */
  redis: async ({ conn: name, args, timeoutMs = DEFAULT_WAIT_MS }) => {
    const c = conn(name);
    return reply(await withTimeout(c.client.sendCommand(args.map(String)), timeoutMs, `${args.join(" ")}`));
  },

  /** `{conn, channels?, patterns?}`: SUBSCRIBE / PSUBSCRIBE; messages are collected. */
  subscribe: async ({ conn: name, channels = [], patterns = [] }) => {
    const c = conn(name);
    for (const ch of channels) {
      await c.client.subscribe(ch, (message, channel) =>
        c.messages.push({ kind: "message", channel, message, t: Date.now() }),
      );
    }
    for (const p of patterns) {
      await c.client.pSubscribe(p, (message, channel) =>
        c.messages.push({ kind: "pmessage", pattern: p, channel, message, t: Date.now() }),
      );
    }
    return null;
  },

  unsubscribe: async ({ conn: name, channels = [], patterns = [] }) => {
    const c = conn(name);
    if (channels.length > 0) await c.client.unsubscribe(channels);
    if (patterns.length > 0) await c.client.pUnsubscribe(patterns);
    return null;
  },

  /** `{conn}` → the collected pub/sub messages. */
  messages: async ({ conn: name }) => conn(name).messages,

  redis_close: async ({ conn: name }) => {
    const c = conn(name);
    redisConns.delete(name);
    await c.client.disconnect().catch(() => {});
    return null;
  },

  /**
   * `{urls, connsPerUrl, perConn, key, timeoutMs?}`: `connsPerUrl` connections to each URL, all
   * at once, each sending `perConn` INCRs one after another. → `{ok, errors, maxSeen, replies}`
   * where `replies` is every reply value, to check that no value was handed out twice.
   */
  incr_load: async ({ urls, connsPerUrl = 1, perConn = 1, key, timeoutMs = 60_000 }) => {
    const opened = [];
    try {
      for (const url of urls) for (let i = 0; i < connsPerUrl; i++) opened.push(await openRedis(url));
      const errors = [];
      const replies = [];
      await withTimeout(
        Promise.all(
          opened.map(async (client) => {
            for (let i = 0; i < perConn; i++) {
              try {
                replies.push(Number(await client.sendCommand(["INCR", key])));
              } catch (e) {
                errors.push(e.message);
              }
            }
          }),
        ),
        timeoutMs,
        "the INCR load",
      );
      return { ok: replies.length, errors: errors.slice(0, 10), errorCount: errors.length, replies };
    } finally {
      for (const c of opened) await c.disconnect().catch(() => {});
    }
  },

  /**
   * `{name, urls, connsPerUrl, key}`: connections that each send `INCR key`, wait for the answer
   * and send the next, until `incr_stop`; a failed INCR (error reply, connection lost) is
   * counted and retried after `pauseMs`.
   */
  incr_start: async ({ name, urls, connsPerUrl = 1, key, pauseMs = 50 }) => {
    if (loops.has(name)) throw new Error(`loop ${name} already running`);
    const opened = [];
    for (const url of urls) for (let i = 0; i < connsPerUrl; i++) opened.push(await openRedis(url));
    const state = { stop: false, opened, replies: [], errors: [], errorCount: 0 };
    state.done = Promise.all(
      opened.map(async (client) => {
        while (!state.stop) {
          try {
            state.replies.push(Number(await client.sendCommand(["INCR", key])));
          } catch (e) {
            state.errorCount += 1;
            if (state.errors.length < 10) state.errors.push(e.message);
            await sleep(pauseMs);
          }
        }
      }),
    );
    loops.set(name, state);
    return { conns: opened.length };
  },

  /**
   * `{name}`: stops an `incr_start` load: lets the INCRs under way finish (5 s), then closes the
   * connections (an INCR still queued, e.g. for a node that is gone, fails). →
   * `{ok, replies, errorCount, errors}`
   */
  incr_stop: async ({ name }) => {
    const state = loops.get(name);
    if (!state) throw new Error(`no loop ${name}`);
    state.stop = true;
    await Promise.race([state.done, sleep(5000)]);
    await Promise.all(state.opened.map((c) => c.disconnect().catch(() => {})));
    await withTimeout(state.done, 60_000, `the INCR load ${name} to stop`);
    loops.delete(name);
    return { ok: state.replies.length, replies: state.replies, errorCount: state.errorCount, errors: state.errors };
  },

  /**
   * `{urls, connsPerUrl, key}`: every connection sends `SET key <its name> NX` at the same
   * moment. → `[{conn, url, reply}]`
   */
  setnx_race: async ({ urls, connsPerUrl = 1, key }) => {
    const opened = [];
    try {
      for (const url of urls) {
        for (let i = 0; i < connsPerUrl; i++) opened.push({ url, name: `${url}#${i}`, client: await openRedis(url) });
      }
      return await Promise.all(
        opened.map(async ({ url, name, client }) => {
          try {
            return { conn: name, url, reply: reply(await client.sendCommand(["SET", key, name, "NX"])) };
          } catch (e) {
            return { conn: name, url, error: e.message };
          }
        }),
      );
    } finally {
      for (const c of opened) await c.client.disconnect().catch(() => {});
    }
  },

  /** `{method?, url, body?, timeoutMs?}` → `{status, body}` (for nodes in another network namespace). */
  http: async ({ method = "GET", url, body, timeoutMs = 10_000 }) => {
    const res = await fetch(url, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs),
    });
    return { status: res.status, body: await res.text() };
  },

  /**
   * `{name, redis, nsp?, to?, except?, event, intervalMs}`: emits `event(seq)` through the
   * emitter every `intervalMs` until `loop_stop`.
   */
  loop_start: async ({ name, redis, nsp, to, except, event, intervalMs = 50 }) => {
    if (loops.has(name)) throw new Error(`loop ${name} already running`);
    const emitter = await emitterFor(redis);
    const state = { stop: false, sent: 0, errors: [] };
    state.done = (async () => {
      while (!state.stop) {
        try {
          target(emitter, { nsp, to, except }).emit(event, state.sent);
          state.sent += 1;
        } catch (e) {
          state.errors.push(e.message);
        }
        await sleep(intervalMs);
      }
    })();
    loops.set(name, state);
    return null;
  },

  loop_stop: async ({ name }) => {
    const state = loops.get(name);
    if (!state) throw new Error(`no loop ${name}`);
    state.stop = true;
    await state.done;
    loops.delete(name);
    return { sent: state.sent, errors: state.errors.slice(0, 10) };
  },
};

async function closeAll() {
  for (const s of loops.values()) s.stop = true;
  for (const c of clients.values()) c.close();
  for (const c of redisConns.values()) await c.client.disconnect().catch(() => {});
  for (const e of emitters.values()) await e.client.disconnect().catch(() => {});
}

function send(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

process.on("unhandledRejection", (e) => log(`unhandled rejection: ${e?.stack ?? e}`));
process.on("uncaughtException", (e) => log(`uncaught exception: ${e?.stack ?? e}`));

const rl = createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  if (line.trim() === "") return;
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    log(`bad request line ${line}: ${e.message}`);
    return;
  }
  const { id, cmd, ...params } = req;
  const handler = commands[cmd];
  if (!handler) {
    send({ id, ok: false, error: `unknown command ${cmd}` });
    return;
  }
  try {
    const result = await handler(params);
    send({ id, ok: true, result: result === undefined ? null : result });
  } catch (e) {
    send({ id, ok: false, error: e?.message ?? String(e) });
  }
});
rl.on("close", async () => {
  await closeAll();
  process.exit(0);
});

send({ id: 0, ok: true, result: { agent: "ready" } });
