#!/usr/bin/env node
// Reference for the emitter suites: what an ioswarm node with `--redis-listen` does, built from
// the official pieces. socket.io 4.8 + @socket.io/redis-adapter 8.3 on a real `redis-server`
// that this script starts on a free port (the "Redis ingress" of the reference); emitters and
// plain Redis clients talk to that redis-server, and the adapter turns emitter traffic into
// socket.io traffic exactly like a Node deployment does.
//
// It follows the binary contract (docs/binary-spec.md) for the parts the suites use: the ready
// line (plus ` redis=IP:PORT`), `ioswarm:join` / `ioswarm:leave` / `ioswarm:echo`,
// `--client-rooms`, every namespace accepted, admin `GET /healthz` and `GET /v1/sockets?nsp=`.
//
// Usage: node reference-server.mjs --listen ADDR --admin-listen ADDR --redis-listen ADDR
//        [--client-rooms] [other ioswarm flags are accepted and ignored]
// Needs `redis-server` on PATH (Debian package redis-server).

import { spawn } from "node:child_process";
import http from "node:http";
import net from "node:net";
import { createAdapter } from "@socket.io/redis-adapter";
import notepack from "notepack.io";
import { createClient } from "redis";
import { Server } from "socket.io";

const cfg = { listen: "0.0.0.0:3000", "admin-listen": "127.0.0.1:9464", "redis-listen": "127.0.0.1:6379", "client-rooms": false };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  let arg = argv[i];
  if (!arg.startsWith("--")) throw new Error(`unexpected argument ${arg}`);
  arg = arg.slice(2);
  let value;
  const eq = arg.indexOf("=");
  if (eq >= 0) [arg, value] = [arg.slice(0, eq), arg.slice(eq + 1)];
  if (arg === "client-rooms" || arg === "client-relay") {
    cfg[arg] = value === undefined ? true : value !== "false";
  } else {
    cfg[arg] = value ?? argv[++i];
  }
}

function splitAddr(addr) {
  const i = addr.lastIndexOf(":");
  let host = addr.slice(0, i);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  return { host, port: Number(addr.slice(i + 1)) };
}

function formatAddr(server) {
  const a = server.address();
  return a.family === "IPv6" ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

function listen(server, addr) {
  const { host, port } = splitAddr(addr);
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
}

async function freePort(host) {
  const s = net.createServer();
  await listen(s, `${host}:0`);
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

// ---- redis-server ----------------------------------------------------------------------------

const redisAddr = splitAddr(cfg["redis-listen"]);
const redisPort = redisAddr.port === 0 ? await freePort(redisAddr.host) : redisAddr.port;
const redis = spawn(
  "redis-server",
  ["--port", String(redisPort), "--bind", redisAddr.host, "--save", "", "--appendonly", "no", "--protected-mode", "no"],
  { stdio: ["ignore", "ignore", "inherit"] },
);
redis.on("exit", (code, signal) => {
  if (!stopping) {
    process.stderr.write(`reference-server: redis-server exited (${code ?? signal})\n`);
    process.exit(1);
  }
});
const killRedis = () => redis.exitCode === null && redis.kill("SIGKILL");
process.on("exit", killRedis);

async function connectRedis() {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const client = createClient({ socket: { host: redisAddr.host, port: redisPort, reconnectStrategy: false } });
    client.on("error", () => {});
    try {
      await client.connect();
      return client;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
const pubClient = await connectRedis();
const subClient = pubClient.duplicate();
subClient.on("error", () => {});
await subClient.connect();

// notepack with one change: a payload that is not msgpack is dropped instead of throwing out of
// the adapter's message handler (which would kill the process). ioswarm must survive garbage too.
const parser = {
  encode: (v) => notepack.encode(v),
  decode(msg) {
    try {
      return notepack.decode(msg);
    } catch (e) {
      process.stderr.write(`reference-server: dropping undecodable message: ${e.message}\n`);
      return ["", undefined, {}];
    }
  },
};

// ---- socket.io -------------------------------------------------------------------------------

const httpServer = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
// allowEIO3: socket.io 1.x/2.x clients (Engine.IO 3) are accepted, as ioswarm does by default.
const io = new Server(httpServer, {
  serveClient: false,
  allowEIO3: true,
  adapter: createAdapter(pubClient, subClient, { parser }),
});

function splitAck(args) {
  if (args.length > 0 && typeof args[args.length - 1] === "function") return [args.slice(0, -1), args.at(-1)];
  return [args, () => {}];
}
const roomsOf = (socket) => [...socket.rooms].filter((r) => r !== socket.id).sort();

function setupNamespace(nsp) {
  nsp.on("connection", (socket) => {
    socket.on("ioswarm:echo", (...rest) => {
      const [args, ack] = splitAck(rest);
      ack(...args);
    });
    const roomOp = (joining) => (...rest) => {
      const [args, ack] = splitAck(rest);
      if (!cfg["client-rooms"]) return ack({ error: "forbidden" });
      const rooms = typeof args[0] === "string" ? [args[0]] : args[0];
      if (!Array.isArray(rooms) || !rooms.every((r) => typeof r === "string")) return ack({ error: "bad request" });
      if (joining) socket.join(rooms);
      else rooms.forEach((r) => socket.leave(r));
      ack({ rooms: roomsOf(socket) });
    };
    socket.on("ioswarm:join", roomOp(true));
    socket.on("ioswarm:leave", roomOp(false));
  });
  // serverSideEmit from an emitter arrives here; the binary contract has no way to show it to
  // clients, so the reference only logs it.
  nsp.on("hello", (...args) => process.stderr.write(`reference-server: server-side event hello ${JSON.stringify(args)}\n`));
}
setupNamespace(io.of("/"));
setupNamespace(io.of(/^\/.*/));

// ---- admin -----------------------------------------------------------------------------------

const adminServer = http.createServer((req, res) => {
  const url = new URL(req.url, "http://admin");
  const send = (status, body) => {
    res.writeHead(status, { "Content-Type": "application/json" });
    res.end(JSON.stringify(body));
  };
  if (req.method === "GET" && url.pathname === "/healthz") {
    res.writeHead(200, { "Content-Type": "text/plain" });
    return res.end("ok");
  }
  if (req.method === "GET" && url.pathname === "/v1/sockets") {
    const nsp = io._nsps.get(url.searchParams.get("nsp") ?? "/");
    const sockets = nsp ? [...nsp.sockets.values()].map((s) => ({ id: s.id, rooms: [...s.rooms].sort() })) : [];
    return send(200, { sockets });
  }
  send(404, { error: "not found" });
});

// ---- start / stop ----------------------------------------------------------------------------

let stopping = false;
async function shutdown() {
  if (stopping) return;
  stopping = true;
  setTimeout(() => process.exit(1), 5000).unref();
  adminServer.close();
  adminServer.closeAllConnections();
  await io.close();
  await Promise.allSettled([pubClient.quit(), subClient.quit()]);
  killRedis();
  process.exit(0);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

await listen(httpServer, cfg.listen);
await listen(adminServer, cfg["admin-listen"]);
process.stdout.write(
  `ioswarm ready socketio=${formatAddr(httpServer)} admin=${formatAddr(adminServer)} redis=${redisAddr.host}:${redisPort}\n`,
);
