// Reference conformance server for tests/conformance.rs (docs/conformance.md), built on the upstream
// Node implementations (socket.io 4.8 / engine.io 6.6), as the upstream protocol test suites use.
//
//   node conformance-server.mjs [PORT]     (PORT 0 or absent with $PORT unset: 3000)
//
// Prints `listening on <port>` once ready. Raw Engine.IO echo at /engine.io/, Socket.IO at
// /socket.io/ with namespaces "/" and "/custom".
import { createServer } from "node:http";
import { Server as EngineServer } from "engine.io";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? process.env.PORT ?? 3000);

const options = {
  pingInterval: 300,
  pingTimeout: 200,
  maxHttpBufferSize: 1e6,
  cors: { origin: "*" },
};

const httpServer = createServer();

// Raw Engine.IO: echo every message, text as text and binary as binary.
const engine = new EngineServer({ ...options });
engine.attach(httpServer, { path: "/engine.io", destroyUpgrade: false });
engine.on("connection", (socket) => {
  socket.on("message", (data) => socket.send(data));
});

// Socket.IO.
const io = new Server(httpServer, {
  ...options,
  path: "/socket.io",
  connectTimeout: 1000,
  destroyUpgrade: false,
});

function setup(nsp) {
  nsp.on("connection", (socket) => {
    socket.emit("auth", socket.handshake.auth);
    socket.on("message", (...args) => socket.emit("message-back", ...args));
    socket.on("message-with-ack", (...args) => {
      const ack = args.pop();
      ack(...args);
    });
  });
}
setup(io.of("/"));
setup(io.of("/custom"));

httpServer.listen(port, () => {
  console.log(`listening on ${httpServer.address().port}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    engine.close();
    httpServer.close();
    process.exit(0);
  });
}
