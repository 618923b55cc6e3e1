// Node socket.io 4.8 peer server for the ioswarm benchmarks (one process).
//
// Usage: node server.mjs [--listen HOST:PORT]   (default 127.0.0.1:0; env PEER_LISTEN too)
//
// Speaks the same contract as the ioswarm binary for the events the benchmarks use
// (docs/binary-spec.md; the handlers live in handlers.mjs, shared with peers/node-cluster).
//
// Once listening it prints exactly one line to stdout:
//   node-peer ready socketio=127.0.0.1:41234 pid=12345
// SIGINT / SIGTERM close the server and exit 0.

import { createServer } from "node:http";
import { Server } from "socket.io";

import { listenAndServe, parseArgs, registerHandlers, serverOptions } from "./handlers.mjs";

const args = parseArgs(process.argv);
const httpServer = createServer();
const io = new Server(httpServer, serverOptions);
registerHandlers(io);
listenAndServe("node-peer", io, httpServer, args);
