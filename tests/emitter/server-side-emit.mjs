// Used by tests/emitter_server_side.rs: publishes serverSideEmit requests with the real
// @socket.io/redis-emitter over node-redis 4 to the Redis-protocol port given as argv[2].
import { createClient } from "redis";
import { Emitter } from "@socket.io/redis-emitter";

const port = Number(process.argv[2]);
const client = createClient({ url: `redis://127.0.0.1:${port}` });
await client.connect();
const emitter = new Emitter(client);
emitter.serverSideEmit("hello", 1, "two", { three: [3] });
emitter.of("/custom").serverSideEmit("ping", Buffer.from([1, 2, 3]));
// The emitter publishes without waiting; a round trip makes sure both PUBLISHes were sent.
await client.ping();
await client.quit();
