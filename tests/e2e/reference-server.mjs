#!/usr/bin/env node
// Reference implementation of the `ioswarm` binary contract (docs/binary-spec.md) on top of the
// official socket.io 4.8 server.
//
// It exists so the end-to-end suites (tests/e2e and tests/python) can be validated against real
// socket.io behaviour: run them with IOSWARM_E2E_TARGET=reference. CI runs them against the Rust
// binary. Only the parts of the contract the tests exercise are implemented; everything here
// should read as a description of what ioswarm must do.
//
// Usage: node reference-server.mjs [--config FILE] [--listen ADDR] [--admin-listen ADDR] [--ping-interval-ms N]
//        [--ping-timeout-ms N] [--max-payload N] [--connect-timeout-ms N] [--upgrade-timeout-ms N]
//        [--cors-origin ORIGINS] [--namespaces /,/chat] [--auth-token TOKEN] [--client-rooms]
//        [--client-relay] [--allow-eio3[=BOOL]] [--recovery-ms N]

import { readFileSync } from "node:fs";
import http from "node:http";
import { Server } from "socket.io";

const VALUE_FLAGS = new Set([
  "listen",
  "admin-listen",
  "ping-interval-ms",
  "ping-timeout-ms",
  "max-payload",
  "connect-timeout-ms",
  "upgrade-timeout-ms",
  "cors-origin",
  "namespaces",
  "auth-token",
  "recovery-ms",
]);
const BOOL_FLAGS = new Set(["client-rooms", "client-relay", "allow-eio3"]);

const DEFAULTS = {
  listen: "0.0.0.0:3000",
  "admin-listen": "127.0.0.1:9464",
  "ping-interval-ms": "25000",
  "ping-timeout-ms": "20000",
  "max-payload": "1000000",
  "connect-timeout-ms": "45000",
  "upgrade-timeout-ms": "10000",
  "cors-origin": "",
  namespaces: "",
  "auth-token": "",
  "client-rooms": false,
  "client-relay": false,
  // socket.io 1.x/2.x clients (Engine.IO 3) are accepted unless --allow-eio3=false.
  "allow-eio3": true,
  "recovery-ms": "0",
};
const NUMERIC = ["ping-interval-ms", "ping-timeout-ms", "max-payload", "connect-timeout-ms", "upgrade-timeout-ms", "recovery-ms"];

function setFlag(cfg, name, value, source) {
  if (BOOL_FLAGS.has(name)) {
    if (typeof value === "boolean") cfg[name] = value;
    else if (value === undefined || value === "true" || value === "1") cfg[name] = true;
    else if (value === "false" || value === "0") cfg[name] = false;
    else throw new Error(`invalid boolean for ${name} in ${source}: ${value}`);
  } else if (VALUE_FLAGS.has(name)) {
    if (value === undefined) throw new Error(`${name} needs a value (${source})`);
    cfg[name] = Array.isArray(value) ? value.join(",") : String(value);
  } else {
    throw new Error(`unknown setting ${name} (${source})`);
  }
}

// Just enough TOML for flat `key = value` files (strings, booleans, integers, string arrays).
function parseToml(text, file) {
  const out = {};
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.replace(/^\s+|\s+$/g, "");
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([A-Za-z0-9_-]+)\s*=\s*(.+)$/.exec(line);
    if (!m) throw new Error(`${file}:${i + 1}: cannot parse: ${line}`);
    out[m[1]] = JSON.parse(m[2].replace(/^'(.*)'$/, (_, x) => JSON.stringify(x)));
  }
  return out;
}

// Precedence: defaults < --config file (snake_case keys) < IOSWARM_<FLAG> environment < flags.
function parseArgs(argv) {
  const cfg = { ...DEFAULTS };
  const flags = [];
  let configFile;
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    if (!arg.startsWith("--")) throw new Error(`unexpected argument ${arg}`);
    arg = arg.slice(2);
    let value;
    const eq = arg.indexOf("=");
    if (eq >= 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === "config") {
      configFile = value ?? argv[++i];
      continue;
    }
    if (VALUE_FLAGS.has(arg) && value === undefined) value = argv[++i];
    flags.push([arg, value]);
  }
  configFile ??= process.env.IOSWARM_CONFIG;
  if (configFile) {
    for (const [key, value] of Object.entries(parseToml(readFileSync(configFile, "utf8"), configFile))) {
      setFlag(cfg, key.replaceAll("_", "-"), value, configFile);
    }
  }
  for (const name of [...VALUE_FLAGS, ...BOOL_FLAGS]) {
    const env = `IOSWARM_${name.toUpperCase().replaceAll("-", "_")}`;
    if (process.env[env] !== undefined) setFlag(cfg, name, process.env[env], env);
  }
  for (const [name, value] of flags) setFlag(cfg, name, value, `--${name}`);
  for (const name of NUMERIC) {
    if (!/^[0-9]+$/.test(cfg[name])) throw new Error(`invalid setting ${name}: ${cfg[name]}`);
  }
  return cfg;
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

let cfg;
try {
  cfg = parseArgs(process.argv.slice(2));
} catch (e) {
  process.stderr.write(`error: invalid configuration: ${e.message}\n`);
  process.exit(2);
}
const allowlist = cfg.namespaces
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);
const corsOrigins = cfg["cors-origin"]
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);

const metrics = { connections: 0, acceptedTotal: 0, rejectedTotal: 0, eventsTotal: 0, emitsTotal: 0 };

// Requests outside /socket.io/ get a 404 (engine.io forwards them to this handler).
const httpServer = http.createServer((req, res) => {
  res.writeHead(404, { "Content-Type": "text/plain" });
  res.end("not found");
});
const io = new Server(httpServer, {
  path: "/socket.io/",
  serveClient: false,
  pingInterval: Number(cfg["ping-interval-ms"]),
  pingTimeout: Number(cfg["ping-timeout-ms"]),
  maxHttpBufferSize: Number(cfg["max-payload"]),
  connectTimeout: Number(cfg["connect-timeout-ms"]),
  upgradeTimeout: Number(cfg["upgrade-timeout-ms"]),
  allowEIO3: cfg["allow-eio3"],
  // socket.io's connection state recovery (its in-memory adapter), as --recovery-ms turns it on.
  connectionStateRecovery:
    Number(cfg["recovery-ms"]) > 0
      ? { maxDisconnectionDuration: Number(cfg["recovery-ms"]), skipMiddlewares: true }
      : undefined,
  cors:
    corsOrigins.length === 0
      ? undefined
      : { origin: corsOrigins.includes("*") ? "*" : corsOrigins },
});

function roomsOf(socket) {
  return [...socket.rooms].filter((r) => r !== socket.id).sort();
}

function asRoomList(arg) {
  if (typeof arg === "string") return [arg];
  if (Array.isArray(arg) && arg.every((r) => typeof r === "string")) return arg;
  return null;
}

function splitAck(args) {
  if (args.length > 0 && typeof args[args.length - 1] === "function") {
    return [args.slice(0, -1), args[args.length - 1]];
  }
  return [args, null];
}

const BUILTIN = new Set(["ioswarm:echo", "ioswarm:join", "ioswarm:leave", "ioswarm:to"]);

function setupNamespace(nsp) {
  if (cfg["auth-token"]) {
    nsp.use((socket, next) => {
      // A 2.x client (Engine.IO 3) is connected to "/" by the server with no auth of its own:
      // ioswarm's contract takes the handshake's query (`io(url, {query: {token}})`) as its auth.
      // For other namespaces socket.io already reads its auth from the CONNECT's query string.
      const root = socket.conn.protocol === 3 && nsp.name === "/";
      const auth = root ? socket.handshake.query : socket.handshake.auth;
      if (auth && auth.token === cfg["auth-token"]) return next();
      metrics.rejectedTotal++;
      next(new Error("unauthorized"));
    });
  }
  nsp.on("connection", (socket) => {
    metrics.connections++;
    metrics.acceptedTotal++;
    socket.on("disconnect", () => {
      metrics.connections--;
    });

    socket.onAny((event, ...rest) => {
      metrics.eventsTotal++;
      if (BUILTIN.has(event)) return;
      const [, ack] = splitAck(rest);
      if (ack) ack();
    });

    socket.on("ioswarm:echo", (...rest) => {
      const [args, ack] = splitAck(rest);
      if (ack) ack(...args);
    });

    const roomOp = (join) => (...rest) => {
      const [args, ack] = splitAck(rest);
      const reply = ack ?? (() => {});
      if (!cfg["client-rooms"]) return reply({ error: "forbidden" });
      const rooms = asRoomList(args[0]);
      if (rooms === null) return reply({ error: "bad request" });
      if (join) socket.join(rooms);
      else rooms.forEach((r) => socket.leave(r));
      reply({ rooms: roomsOf(socket) });
    };
    socket.on("ioswarm:join", roomOp(true));
    socket.on("ioswarm:leave", roomOp(false));

    socket.on("ioswarm:to", async (...rest) => {
      const [args, ack] = splitAck(rest);
      const reply = ack ?? (() => {});
      const [room, event, ...payload] = args;
      if (!cfg["client-relay"] || typeof room !== "string" || !socket.rooms.has(room)) {
        return reply({ error: "forbidden" });
      }
      if (typeof event !== "string") return reply({ error: "bad request" });
      const recipients = (await socket.to(room).fetchSockets()).length;
      socket.to(room).emit(event, ...payload);
      reply({ recipients });
    });
  });
}

if (allowlist.length > 0) {
  for (const name of allowlist) setupNamespace(io.of(name));
} else {
  setupNamespace(io.of("/"));
  // Every namespace is accepted.
  setupNamespace(io.of(/^\/.*/));
}

// ---------------------------------------------------------------------------------------------
// Admin listener.

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function namespaceSockets(name) {
  const nsp = io._nsps.get(name);
  return nsp ? [...nsp.sockets.values()] : [];
}

function selectSockets(name, rooms, except) {
  const excluded = new Set();
  for (const s of namespaceSockets(name)) {
    if (except.some((r) => s.rooms.has(r))) excluded.add(s);
  }
  return namespaceSockets(name).filter(
    (s) => !excluded.has(s) && (rooms.length === 0 || rooms.some((r) => s.rooms.has(r))),
  );
}

async function handleEmit(req, res) {
  let body;
  try {
    body = JSON.parse(await readBody(req));
  } catch (e) {
    return sendJson(res, 400, { error: `invalid JSON: ${e.message}` });
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return sendJson(res, 400, { error: "body must be a JSON object" });
  }
  const nsp = body.nsp ?? "/";
  const rooms = body.rooms ?? [];
  const except = body.except ?? [];
  const args = body.args ?? [];
  const ackTimeoutMs = body.ackTimeoutMs ?? null;
  if (typeof body.event !== "string" || body.event === "") {
    return sendJson(res, 400, { error: "missing event" });
  }
  if (
    typeof nsp !== "string" ||
    !Array.isArray(rooms) ||
    !Array.isArray(except) ||
    !Array.isArray(args) ||
    (ackTimeoutMs !== null && typeof ackTimeoutMs !== "number")
  ) {
    return sendJson(res, 400, { error: "invalid field type" });
  }
  metrics.emitsTotal++;
  const targets = selectSockets(nsp, rooms, except);
  if (ackTimeoutMs === null && io.opts.connectionStateRecovery) {
    // A broadcast, as ioswarm sends it: socket.io's recovery logs broadcasts only (and appends
    // their offsets), not per-socket emits.
    let op = io.of(nsp).to(rooms).except(except);
    if (body.volatile) op = op.volatile;
    op.emit(body.event, ...args);
    return sendJson(res, 200, { recipients: targets.length });
  }
  if (ackTimeoutMs === null) {
    for (const s of targets) {
      (body.volatile ? s.volatile : s).emit(body.event, ...args);
    }
    return sendJson(res, 200, { recipients: targets.length });
  }
  const acks = [];
  let timedOut = 0;
  await Promise.all(
    targets.map(
      (s) =>
        new Promise((resolve) => {
          (body.volatile ? s.volatile : s)
            .timeout(ackTimeoutMs)
            .emit(body.event, ...args, (err, ...ackArgs) => {
              if (err) timedOut++;
              else acks.push(ackArgs);
              resolve();
            });
        }),
    ),
  );
  sendJson(res, 200, { recipients: targets.length, acks, timedOut });
}

function renderMetrics() {
  return [
    "# HELP ioswarm_connections Connected Socket.IO sockets.",
    "# TYPE ioswarm_connections gauge",
    `ioswarm_connections ${metrics.connections}`,
    "# HELP ioswarm_connections_accepted_total Accepted Socket.IO connections.",
    "# TYPE ioswarm_connections_accepted_total counter",
    `ioswarm_connections_accepted_total ${metrics.acceptedTotal}`,
    "# HELP ioswarm_connections_rejected_total Rejected Socket.IO connections.",
    "# TYPE ioswarm_connections_rejected_total counter",
    `ioswarm_connections_rejected_total ${metrics.rejectedTotal}`,
    "# HELP ioswarm_events_received_total Events received from clients.",
    "# TYPE ioswarm_events_received_total counter",
    `ioswarm_events_received_total ${metrics.eventsTotal}`,
    "# HELP ioswarm_admin_emits_total Admin emits.",
    "# TYPE ioswarm_admin_emits_total counter",
    `ioswarm_admin_emits_total ${metrics.emitsTotal}`,
    "",
  ].join("\n");
}

const adminServer = http.createServer((req, res) => {
  const url = new URL(req.url, "http://admin");
  const route = `${req.method} ${url.pathname}`;
  (async () => {
    switch (route) {
      case "GET /healthz":
        res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
        return res.end("ok");
      case "GET /metrics":
        res.writeHead(200, { "Content-Type": "text/plain; version=0.0.4; charset=utf-8" });
        return res.end(renderMetrics());
      case "POST /v1/emit":
        return handleEmit(req, res);
      case "GET /v1/sockets": {
        const nsp = url.searchParams.get("nsp") ?? "/";
        const sockets = namespaceSockets(nsp).map((s) => ({ id: s.id, rooms: [...s.rooms].sort(), data: s.data }));
        return sendJson(res, 200, { sockets });
      }
      default:
        return sendJson(res, 404, { error: "not found" });
    }
  })().catch((e) => sendJson(res, 500, { error: String(e) }));
});

// ---------------------------------------------------------------------------------------------
// Start and stop.

let stopping = false;
async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`reference-server: ${signal}, shutting down\n`);
  const hardStop = setTimeout(() => {
    process.stderr.write("reference-server: shutdown deadline passed\n");
    process.exit(1);
  }, 5000);
  hardStop.unref();
  adminServer.close();
  adminServer.closeAllConnections();
  // Closes every Engine.IO connection (a pending poll is answered with a close packet, websockets
  // get a close frame), then the HTTP listener. Connections whose peer does not finish the close
  // handshake within a second are dropped.
  const drop = setTimeout(() => {
    for (const s of rawSockets) s.destroy();
  }, 1000);
  await io.close();
  clearTimeout(drop);
  process.exit(0);
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));

const rawSockets = new Set();
httpServer.on("connection", (s) => {
  rawSockets.add(s);
  s.on("close", () => rawSockets.delete(s));
});

await listen(httpServer, cfg.listen);
await listen(adminServer, cfg["admin-listen"]);
process.stdout.write(
  `ioswarm ready socketio=${formatAddr(httpServer)} admin=${formatAddr(adminServer)}\n`,
);
