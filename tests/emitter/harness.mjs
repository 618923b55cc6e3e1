// Test harness for the emitter suite: starts the server under test (socket.io + Redis ingress),
// connects socket.io clients, and builds @socket.io/redis-emitter instances over real Redis
// clients (node-redis 4, node-redis 6 with RESP3, ioredis 5).
//
// Target selection (env):
//   IOSWARM_E2E_TARGET=ioswarm (default)  spawn $IOSWARM_BIN (default target/debug/ioswarm; see ../server-process.mjs)
//   IOSWARM_E2E_TARGET=reference           spawn `node reference-server.mjs` (socket.io 4.8 +
//                                          @socket.io/redis-adapter on a real redis-server)
//
// Every server is started with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
// --redis-listen 127.0.0.1:0 [flags]` and is ready once it printed
// `ioswarm ready socketio=IP:PORT admin=IP:PORT redis=IP:PORT` on stdout.

import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Emitter } from "@socket.io/redis-emitter";
import { Redis } from "ioredis";
import { createClient as createClient4 } from "redis";
import { createClient as createClient6 } from "redis6";
import { io } from "socket.io-client";
import { ServerProcess as BaseProcess, command as targetCommand } from "../server-process.mjs";

export { BIN, TARGET } from "../server-process.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Default time to wait for anything a test expects to observe. */
export const WAIT_MS = 5000;
/** Time to wait before concluding that something did NOT happen. */
export const QUIET_MS = 300;

function command(flags) {
  return targetCommand(HERE, flags);
}

/** Starts a server with `--client-rooms` and the given extra flags. */
export async function startServer(flags = []) {
  const [cmd, args] = command([
    "--listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
    "--redis-listen",
    "127.0.0.1:0",
    "--client-rooms",
    ...flags,
  ]);
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env } });
  const server = new ServerProcess(child, [cmd, ...args].join(" "));
  await server.ready;
  return server;
}

export class ServerProcess extends BaseProcess {
  async admin(pathname) {
    const res = await fetch(this.adminUrl + pathname, { signal: AbortSignal.timeout(WAIT_MS) });
    return { status: res.status, json: await res.json().catch(() => undefined) };
  }

  /** The rooms of socket `id` in `nsp` per the admin API (undefined if not connected). */
  async roomsOf(id, nsp = "/") {
    const res = await this.admin(`/v1/sockets?nsp=${encodeURIComponent(nsp)}`);
    return res.json?.sockets?.find((s) => s.id === id)?.rooms;
  }
}

/**
 * The Redis clients the emitter runs over. Each factory returns `{client, close}` with a
 * connected client; `client` is what `new Emitter(client)` takes.
 */
export const REDIS_CLIENTS = {
  "node-redis 4": async ({ host, port }) => {
    const client = createClient4({ socket: { host, port, reconnectStrategy: false } });
    client.on("error", () => {});
    await client.connect();
    return { client, close: () => client.quit() };
  },
  "node-redis 6 (RESP3)": async ({ host, port }) => {
    const client = createClient6({ RESP: 3, socket: { host, port, reconnectStrategy: false } });
    client.on("error", () => {});
    await client.connect();
    return { client, close: () => client.quit() };
  },
  "ioredis 5": async ({ host, port }) => {
    const client = new Redis({ host, port, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
    client.on("error", () => {});
    await client.connect();
    return { client, close: () => client.quit() };
  },
};

/** Tracks servers, socket.io clients and Redis clients of one suite so they are cleaned up. */
export class Ctx {
  constructor() {
    this.servers = [];
    this.clients = [];
    this.redis = [];
  }

  async server(flags) {
    const s = await startServer(flags);
    this.servers.push(s);
    return s;
  }

  /** A connected socket.io client of `nsp` on `server`. */
  async connect(server, nsp = "/", opts = {}) {
    const socket = io(server.url + (nsp === "/" ? "" : nsp), {
      forceNew: true,
      reconnection: false,
      timeout: WAIT_MS,
      ...opts,
    });
    this.clients.push(socket);
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no connect to ${nsp} within ${WAIT_MS} ms`)), WAIT_MS);
      socket.once("connect", () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once("connect_error", (err) => {
        clearTimeout(timer);
        reject(new Error(`connect_error: ${err.message}`));
      });
    });
    return socket;
  }

  /** A Redis client of `flavour` (a key of REDIS_CLIENTS) connected to the server's ingress. */
  async redisClient(server, flavour) {
    const c = await REDIS_CLIENTS[flavour](server.redis);
    this.redis.push(c);
    return c.client;
  }

  /** An @socket.io/redis-emitter over a new Redis client of `flavour`. */
  async emitter(server, flavour) {
    return new Emitter(await this.redisClient(server, flavour));
  }

  async resetClients() {
    for (const c of this.clients) c.disconnect();
    this.clients = [];
  }

  async cleanup() {
    await this.resetClients();
    for (const r of this.redis.splice(0)) await r.close().catch(() => {});
    await Promise.all(this.servers.splice(0).map((s) => s.stop()));
  }
}

/** Joins `rooms` through the server's `ioswarm:join` handler. */
export async function join(socket, rooms) {
  const res = await socket.timeout(WAIT_MS).emitWithAck("ioswarm:join", rooms);
  if (!res?.rooms) throw new Error(`ioswarm:join refused: ${JSON.stringify(res)}`);
  return res.rooms;
}

/** Records every `event` received by `socket`; returns the live array of args arrays. */
export function record(socket, event) {
  const got = [];
  socket.on(event, (...args) => got.push(args));
  return got;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `predicate` until true or `ms` elapsed; throws `message` on timeout. */
export async function waitFor(predicate, message, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${message}`);
    await sleep(20);
  }
}

/** Resolves with the args of the next `event` on `emitter`. */
export function once(emitter, event, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, handler);
      reject(new Error(`no "${event}" within ${ms} ms`));
    }, ms);
    const handler = (...args) => {
      clearTimeout(timer);
      emitter.off(event, handler);
      resolve(args);
    };
    emitter.on(event, handler);
  });
}

/**
 * Emits a probe through `emitter` (already `.of(nsp)`) every 50 ms until `socket` receives one:
 * the server is then subscribed and processing that namespace's channel.
 */
export async function probe(emitter, socket, ms = WAIT_MS) {
  let got = false;
  const handler = () => {
    got = true;
  };
  socket.on("ioswarm-test:probe", handler);
  try {
    const deadline = Date.now() + ms;
    while (!got) {
      if (Date.now() > deadline) throw new Error("the emitter's probe never reached the client");
      emitter.emit("ioswarm-test:probe");
      await sleep(50);
    }
  } finally {
    await sleep(100); // let late probes arrive before the test starts recording
    socket.off("ioswarm-test:probe", handler);
  }
}
