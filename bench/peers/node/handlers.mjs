// The ioswarm:* event contract (docs/binary-spec.md) and the listen/shutdown plumbing shared by
// the Node peers: peers/node/server.mjs (one process) and peers/node-cluster/server.mjs (several
// processes on @socket.io/redis-adapter). No dependency of its own: each server passes its `Server`.
//
//   ioswarm:join  (room | [rooms], ack) -> ack({ rooms: [every room except the socket's own id, sorted] })
//   ioswarm:leave (room | [rooms], ack) -> same shape
//   ioswarm:echo  (...args, ack)        -> ack(...args)
//   ioswarm:to    (room, event, ...args, ack?) -> broadcasts event(...args) to room except the sender,
//                 then ack({ recipients: n }) (this process's members); ack({ error: "forbidden" })
//                 when the sender is not in room
// Any other event is ignored (acked with no arguments when the client asked for an ack).

/// `--listen HOST:PORT` (default 127.0.0.1:0; env PEER_LISTEN too) and any `--NAME VALUE` listed in
/// `extra` (returned by name). Exits 2 on anything else.
export function parseArgs(argv, extra = []) {
  const out = { listen: process.env.PEER_LISTEN || "127.0.0.1:0" };
  const names = ["listen", ...extra];
  for (let i = 2; i < argv.length; i++) {
    const arg = argv[i];
    const name = names.find((n) => arg === `--${n}` || arg.startsWith(`--${n}=`));
    if (name === undefined) {
      console.error(`unknown argument: ${arg}`);
      process.exit(2);
    }
    if (arg === `--${name}`) {
      if (i + 1 >= argv.length) {
        console.error(`--${name} needs a value`);
        process.exit(2);
      }
      out[name] = argv[++i];
    } else {
      out[name] = arg.slice(`--${name}=`.length);
    }
  }
  const colon = out.listen.lastIndexOf(":");
  if (colon < 0) {
    console.error(`--listen must be HOST:PORT, got ${out.listen}`);
    process.exit(2);
  }
  out.host = out.listen.slice(0, colon);
  out.port = Number(out.listen.slice(colon + 1));
  return out;
}

/// Server options matching the ioswarm binary's defaults: pingInterval 25 s, pingTimeout 20 s,
/// maxPayload 1 MB, no per-message deflate, no CORS headers.
export const serverOptions = {
  serveClient: false,
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 1e6,
  connectTimeout: 45000,
};

function roomList(arg) {
  if (typeof arg === "string") return [arg];
  if (Array.isArray(arg) && arg.every((r) => typeof r === "string")) return arg;
  return null;
}

function otherRooms(socket) {
  return [...socket.rooms].filter((r) => r !== socket.id).sort();
}

/// Registers the ioswarm:* events on every connection of `io`'s main namespace.
export function registerHandlers(io) {
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
}

/// Listens on host:port, prints `NAME ready socketio=ADDR pid=PID` once, and closes `io` then
/// exits 0 on SIGINT / SIGTERM (bounded: never hangs on shutdown). `onStop` runs before exiting.
export function listenAndServe(name, io, httpServer, { host, port }, onStop = async () => {}) {
  httpServer.listen(port, host, () => {
    const addr = httpServer.address();
    process.stdout.write(`${name} ready socketio=${addr.address}:${addr.port} pid=${process.pid}\n`);
  });
  let stopping = false;
  function stop() {
    if (stopping) return;
    stopping = true;
    setTimeout(() => process.exit(0), 3000).unref();
    io.close(() => {
      onStop()
        .catch(() => {})
        .finally(() => process.exit(0));
    });
  }
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
