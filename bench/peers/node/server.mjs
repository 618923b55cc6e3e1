// Node socket.io 4.8 peer server for the ioswarm benchmarks.
//
// Usage: node server.mjs [--listen HOST:PORT]   (default 127.0.0.1:0; env PEER_LISTEN too)
//
// Speaks the same contract as the ioswarm binary for the events the benchmarks use
// (docs/binary-spec.md):
//   ioswarm:join  (room | [rooms], ack) -> ack({ rooms: [every room except the socket's own id, sorted] })
//   ioswarm:leave (room | [rooms], ack) -> same shape
//   ioswarm:echo  (...args, ack)        -> ack(...args)
//   ioswarm:to    (room, event, ...args, ack?) -> broadcasts event(...args) to room except the sender,
//                 then ack({ recipients: n }); ack({ error: "forbidden" }) when the sender is not in room
// Any other event is ignored (acked with no arguments when the client asked for an ack).
//
// Once listening it prints exactly one line to stdout:
//   node-peer ready socketio=127.0.0.1:41234 pid=12345
// SIGINT / SIGTERM close the server and exit 0.

import { createServer } from "node:http";
import { Server } from "socket.io";

function parseListen(argv) {
  let listen = process.env.PEER_LISTEN || "127.0.0.1:0";
  for (let i = 2; i < argv.length; i++) {
    if (argv[i] === "--listen" && i + 1 < argv.length) {
      listen = argv[++i];
    } else if (argv[i].startsWith("--listen=")) {
      listen = argv[i].slice("--listen=".length);
    } else {
      console.error(`unknown argument: ${argv[i]}`);
      process.exit(2);
    }
  }
  const colon = listen.lastIndexOf(":");
  if (colon < 0) {
    console.error(`--listen must be HOST:PORT, got ${listen}`);
    process.exit(2);
  }
  return { host: listen.slice(0, colon), port: Number(listen.slice(colon + 1)) };
}

function roomList(arg) {
  if (typeof arg === "string") return [arg];
  if (Array.isArray(arg) && arg.every((r) => typeof r === "string")) return arg;
  return null;
}

function otherRooms(socket) {
  return [...socket.rooms].filter((r) => r !== socket.id).sort();
}

const { host, port } = parseListen(process.argv);
const httpServer = createServer();
// Defaults match the ioswarm binary: pingInterval 25 s, pingTimeout 20 s, maxPayload 1 MB,
// no per-message deflate, no CORS headers.
const io = new Server(httpServer, {
  serveClient: false,
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 1e6,
  connectTimeout: 45000,
});

io.on("connection", (socket) => {
  socket.on("ioswarm:join", (arg, ack) => {
    if (typeof ack !== "function") return;
    const rooms = roomList(arg);
    if (rooms === null) return ack({ error: "bad rooms" });
    socket.join(rooms);
    ack({ rooms: otherRooms(socket) });
  });
  socket.on("ioswarm:leave", (arg, ack) => {
    if (typeof ack !== "function") return;
    const rooms = roomList(arg);
    if (rooms === null) return ack({ error: "bad rooms" });
    for (const r of rooms) socket.leave(r);
    ack({ rooms: otherRooms(socket) });
  });
  socket.on("ioswarm:echo", (...args) => {
    const ack = args.length > 0 && typeof args[args.length - 1] === "function" ? args.pop() : null;
    if (ack) ack(...args);
  });
  socket.on("ioswarm:to", (room, event, ...args) => {
    const ack = args.length > 0 && typeof args[args.length - 1] === "function" ? args.pop() : null;
    if (typeof room !== "string" || typeof event !== "string") return ack && ack({ error: "bad arguments" });
    if (!socket.rooms.has(room)) return ack && ack({ error: "forbidden" });
    socket.to(room).emit(event, ...args);
    if (ack) {
      const members = io.of("/").adapter.rooms.get(room);
      ack({ recipients: members ? members.size - 1 : 0 });
    }
  });
  socket.onAny((event, ...args) => {
    if (event.startsWith("ioswarm:")) return;
    const ack = args.length > 0 ? args[args.length - 1] : null;
    if (typeof ack === "function") ack();
  });
});

httpServer.listen(port, host, () => {
  const addr = httpServer.address();
  process.stdout.write(`node-peer ready socketio=${addr.address}:${addr.port} pid=${process.pid}\n`);
});

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  io.close(() => process.exit(0));
  // Bounded: never hang on shutdown.
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
