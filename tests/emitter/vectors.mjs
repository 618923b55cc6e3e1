// Prints what @socket.io/redis-emitter 5.1 publishes for a few calls, as `channel  hex-or-json`.
// The output is pasted into the unit tests of src/emitter/decode.rs (`npm run vectors`).
import { Emitter } from "@socket.io/redis-emitter";
import notepack from "notepack.io";

const published = [];
const fakeRedis = {
  publish(channel, msg) {
    published.push([channel, msg]);
    return Promise.resolve(1);
  },
};
const emitter = new Emitter(fakeRedis);

const cases = {
  emit_all: () => emitter.emit("hello", "world", 1, 2.5, -3, null, true, { a: [1, "x"] }),
  emit_room: () => emitter.to("room1").emit("ev", 42),
  emit_rooms_except: () => emitter.to(["r1", "r2"]).except("r3").emit("ev"),
  emit_nsp: () => emitter.of("/custom").emit("ev", "x"),
  emit_binary: () => emitter.emit("bin", Buffer.from([1, 2, 3]), { nested: Buffer.from([255]) }),
  emit_typed_array: () => emitter.emit("ta", new Uint8Array([9, 8])),
  emit_volatile: () => emitter.volatile.emit("v"),
  emit_compress: () => emitter.compress(false).to("r").emit("c"),
  emit_date: () => emitter.emit("date", new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678)), new Date(0)),
  emit_undefined: () => emitter.emit("u", undefined, { k: undefined, j: 1 }),
  emit_big: () => emitter.emit("big", 2 ** 40, -(2 ** 40), 0.1, 65535, -129),
  sockets_join: () => emitter.in("r1").except("r2").socketsJoin(["a", "b"]),
  sockets_join_one: () => emitter.socketsJoin("a"),
  sockets_leave: () => emitter.socketsLeave("a"),
  disconnect: () => emitter.to("r1").disconnectSockets(true),
  server_side_emit: () => emitter.serverSideEmit("hello", "world", 1),
};

for (const [name, fn] of Object.entries(cases)) {
  published.length = 0;
  fn();
  for (const [channel, msg] of published) {
    if (typeof msg === "string") {
      console.log(`${name}\t${channel}\t${msg}`);
    } else {
      console.log(`${name}\t${channel}\t${msg.toString("hex")}\t${JSON.stringify(notepack.decode(msg))}`);
    }
  }
}
