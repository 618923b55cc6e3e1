// Node socket.io 4.8 peer for the ioswarm cluster benchmarks: one process of a cluster whose
// processes share broadcasts through @socket.io/redis-adapter on one redis-server.
//
// Usage: node server.mjs --redis HOST:PORT [--listen HOST:PORT]   (listen default 127.0.0.1:0)
//
// The ioswarm:* events are those of peers/node (handlers.mjs there). A socket.io Redis emitter
// PUBLISHing `["emitter", packet, {rooms, except, flags}]` (msgpack) on `socket.io#/#ROOM#` reaches
// the members of ROOM on every process (the adapter pattern-subscribes to `socket.io#/#*`).
//
// Once listening and connected to redis it prints exactly one line to stdout:
//   node-cluster-peer ready socketio=127.0.0.1:41234 pid=12345
// SIGINT / SIGTERM close the server and the redis connections and exit 0.

import { createServer } from "node:http";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

import { listenAndServe, parseArgs, registerHandlers, serverOptions } from "../node/handlers.mjs";

const args = parseArgs(process.argv, ["redis"]);
if (!args.redis) {
  console.error("--redis HOST:PORT is required");
  process.exit(2);
}
const pubClient = createClient({ url: `redis://${args.redis}` });
const subClient = pubClient.duplicate();
for (const client of [pubClient, subClient]) {
  client.on("error", (err) => console.error(`redis: ${err.message}`));
}
await Promise.all([pubClient.connect(), subClient.connect()]);

const httpServer = createServer();
const io = new Server(httpServer, { ...serverOptions, adapter: createAdapter(pubClient, subClient) });
registerHandlers(io);
listenAndServe("node-cluster-peer", io, httpServer, args, async () => {
  await Promise.allSettled([pubClient.quit(), subClient.quit()]);
});
