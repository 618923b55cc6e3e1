// @socket.io/redis-emitter 5.1 over node-redis 4, node-redis 6 (RESP3) and ioredis 5, publishing
// to the server's Redis ingress; socket.io-client 4.8 clients observe the result.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Manager } from "socket.io-client";
import { Ctx, QUIET_MS, REDIS_CLIENTS, WAIT_MS, join, once, probe, record, sleep, waitFor } from "./harness.mjs";

for (const flavour of Object.keys(REDIS_CLIENTS)) {
  describe(`emitter over ${flavour}`, () => {
    const t = new Ctx();
    let server;
    let emitter;

    before(async () => {
      server = await t.server();
      emitter = await t.emitter(server, flavour);
    });
    after(() => t.cleanup());

    /** `n` clients of `nsp`, ready to receive the emitter's broadcasts. */
    async function clients(n, nsp = "/") {
      const sockets = [];
      for (let i = 0; i < n; i++) sockets.push(await t.connect(server, nsp));
      await probe(nsp === "/" ? emitter : emitter.of(nsp), sockets[0]);
      return sockets;
    }

    test("emit to every client of the namespace", async () => {
      const [a, b] = await clients(2);
      const got = Promise.all([once(a, "news"), once(b, "news")]);
      emitter.emit("news", "hello", 1, 2.5, { x: [true, null] });
      for (const args of await got) assert.deepEqual(args, ["hello", 1, 2.5, { x: [true, null] }]);
      await t.resetClients();
    });

    test("to(room) and in(room) reach the room only", async () => {
      const [a, b] = await clients(2);
      await join(a, "r1");
      const gotB = record(b, "ev");
      const first = once(a, "ev");
      emitter.to("r1").emit("ev", "to");
      assert.deepEqual(await first, ["to"]);
      const second = once(a, "ev");
      emitter.in("r1").emit("ev", "in");
      assert.deepEqual(await second, ["in"]);
      await sleep(QUIET_MS);
      assert.deepEqual(gotB, []);
      await t.resetClients();
    });

    test("several rooms with except: each target once, excluded never", async () => {
      const [a, b, c, d] = await clients(4);
      await join(a, "r1");
      await join(b, ["r2", "r1"]);
      await join(c, ["r1", "r3"]);
      const got = [a, b, c, d].map((s) => record(s, "multi"));
      emitter.to(["r1", "r2"]).except("r3").emit("multi", 7);
      await waitFor(() => got[0].length > 0 && got[1].length > 0, "a and b receive");
      await sleep(QUIET_MS);
      assert.deepEqual(got, [[[7]], [[7]], [], []]);
      await t.resetClients();
    });

    test("except without rooms reaches everyone else", async () => {
      const [a, b] = await clients(2);
      await join(b, "muted");
      const gotB = record(b, "all-but");
      const gotA = once(a, "all-but");
      emitter.except("muted").emit("all-but");
      assert.deepEqual(await gotA, []);
      await sleep(QUIET_MS);
      assert.deepEqual(gotB, []);
      await t.resetClients();
    });

    test("of(namespace) reaches that namespace only", async () => {
      const [root] = await clients(1);
      const [custom] = await clients(1, "/custom");
      const gotRoot = record(root, "nsp");
      const got = once(custom, "nsp");
      emitter.of("/custom").emit("nsp", "custom only");
      assert.deepEqual(await got, ["custom only"]);
      // A room inside the other namespace.
      await join(custom, "cr");
      const inRoom = once(custom, "nsp-room");
      emitter.of("/custom").to("cr").emit("nsp-room", 1);
      assert.deepEqual(await inRoom, [1]);
      await sleep(QUIET_MS);
      assert.deepEqual(gotRoot, []);
      await t.resetClients();
    });

    test("socketsJoin, then emit to the joined room", async () => {
      const [a, b] = await clients(2);
      emitter.in(a.id).socketsJoin(["joined", "joined2"]);
      await waitFor(async () => (await server.roomsOf(a.id))?.includes("joined2"), "a is in the joined rooms");
      assert.deepEqual((await server.roomsOf(b.id)).filter((r) => r !== b.id), []);
      const gotB = record(b, "j");
      const got = once(a, "j");
      emitter.to("joined").emit("j", "after join");
      assert.deepEqual(await got, ["after join"]);
      // socketsJoin for everyone, targeted with except.
      emitter.except("joined").socketsJoin("late");
      await waitFor(async () => (await server.roomsOf(b.id))?.includes("late"), "b joins late");
      assert.equal((await server.roomsOf(a.id)).includes("late"), false);
      await sleep(QUIET_MS);
      assert.deepEqual(gotB, []);
      await t.resetClients();
    });

    test("socketsLeave, then emit to the left room", async () => {
      const [a, b] = await clients(2);
      await join(a, ["stay", "go"]);
      await join(b, ["go"]);
      emitter.in(a.id).socketsLeave("go");
      await waitFor(async () => !(await server.roomsOf(a.id))?.includes("go"), "a left the room");
      assert.ok((await server.roomsOf(a.id)).includes("stay"));
      const gotA = record(a, "left");
      const got = once(b, "left");
      emitter.to("go").emit("left");
      assert.deepEqual(await got, []);
      await sleep(QUIET_MS);
      assert.deepEqual(gotA, []);
      await t.resetClients();
    });

    test("disconnectSockets: the client sees io server disconnect", async () => {
      const [a, b] = await clients(2);
      await join(a, "kick");
      const reason = once(a, "disconnect");
      emitter.in("kick").disconnectSockets();
      assert.equal((await reason)[0], "io server disconnect");
      assert.equal(b.connected, true);
      // The others are still served.
      const got = once(b, "still");
      emitter.emit("still", "here");
      assert.deepEqual(await got, ["here"]);
      await t.resetClients();
    });

    test("disconnectSockets(close) closes the whole connection, without close only the namespace", async () => {
      await clients(1, "/custom");
      const pair = async () => {
        const manager = new Manager(server.url, { reconnection: false, timeout: WAIT_MS });
        const root = manager.socket("/");
        const custom = manager.socket("/custom");
        t.clients.push(root, custom);
        await Promise.all([once(root, "connect"), once(custom, "connect")]);
        return [root, custom];
      };
      const [root1, custom1] = await pair();
      const gone1 = once(root1, "disconnect");
      emitter.in(root1.id).disconnectSockets(false);
      assert.equal((await gone1)[0], "io server disconnect");
      await sleep(QUIET_MS);
      assert.equal(custom1.connected, true, "the other namespace of the same connection stays");

      const [root2, custom2] = await pair();
      const gone2 = [once(root2, "disconnect"), once(custom2, "disconnect")];
      emitter.in(root2.id).disconnectSockets(true);
      assert.equal((await gone2[0])[0], "io server disconnect");
      // socket.io sends DISCONNECT to every namespace of the connection before closing it; a
      // bare transport close is as good for the user.
      assert.ok(["io server disconnect", "transport close"].includes((await gone2[1])[0]), "the whole connection is closed");
      await t.resetClients();
    });

    test("binary arguments arrive as Buffers", async () => {
      const [a] = await clients(1);
      const got = once(a, "bin");
      const big = Buffer.alloc(70_000, 7);
      emitter.emit("bin", Buffer.from([1, 2, 3]), { nested: Buffer.from([255]), n: 1 }, "text", new Uint8Array([9, 8]), big);
      const [buf, obj, text, typed, large] = await got;
      assert.ok(Buffer.isBuffer(buf), `got ${typeof buf}`);
      assert.deepEqual([...buf], [1, 2, 3]);
      assert.ok(Buffer.isBuffer(obj.nested));
      assert.deepEqual([...obj.nested], [255]);
      assert.equal(obj.n, 1);
      assert.equal(text, "text");
      assert.ok(Buffer.isBuffer(typed));
      assert.deepEqual([...typed], [9, 8]);
      assert.ok(large.equals(big));
      await t.resetClients();
    });

    test("JSON values keep their types (dates become ISO strings)", async () => {
      const [a] = await clients(1);
      const got = once(a, "types");
      emitter.emit("types", 0, -1, 2 ** 40, 0.5, "ünïcode", [], {}, null, false, new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678)));
      assert.deepEqual(await got, [0, -1, 2 ** 40, 0.5, "ünïcode", [], {}, null, false, "2024-01-02T03:04:05.678Z"]);
      await t.resetClients();
    });

    test("volatile emits reach connected clients", async () => {
      const [a] = await clients(1);
      const got = once(a, "vol");
      emitter.volatile.emit("vol", 1);
      assert.deepEqual(await got, [1]);
      await t.resetClients();
    });

    test("serverSideEmit is accepted and the server keeps serving", async () => {
      const [a] = await clients(1);
      emitter.serverSideEmit("hello", "world", 1);
      emitter.of("/nobody-here").serverSideEmit("hello", 2);
      const got = once(a, "after-sse");
      emitter.emit("after-sse", "ok");
      assert.deepEqual(await got, ["ok"]);
      assert.ok(server.alive);
      await t.resetClients();
    });

    test("garbage on emitter channels is dropped; the server keeps serving", async () => {
      const [a] = await clients(1);
      const raw = await t.redisClient(server, flavour);
      const garbage = [
        ["socket.io#/#", Buffer.from("not msgpack")],
        ["socket.io#/#", Buffer.from([0x93, 0xc1])],
        ["socket.io#/#", Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff])],
        ["socket.io#/#", Buffer.from([0x93, 0xa1, 0x78, 0x83, 0xa4])],
        ["socket.io#/#room#", Buffer.alloc(0)],
        ["socket.io-request#/#", Buffer.from("{not json")],
        ["socket.io-request#/#", Buffer.from('{"type":42}')],
        ["socket.io-request#/#", Buffer.from("[1,2]")],
        ["socket.io-request#/#", Buffer.from([0xc1])],
      ];
      for (const [channel, payload] of garbage) await raw.publish(channel, payload);
      const got = once(a, "survived");
      emitter.emit("survived", 1);
      assert.deepEqual(await got, [1]);
      assert.ok(server.alive);
      await t.resetClients();
    });
  });
}

describe("emitter traffic is ordinary pub/sub too", () => {
  const t = new Ctx();
  after(() => t.cleanup());

  test("a subscriber sees the emitter's messages byte for byte", async () => {
    const server = await t.server();
    const sub = await t.redisClient(server, "ioredis 5");
    const seen = [];
    sub.on("pmessageBuffer", (_pattern, channel, message) => seen.push([channel.toString(), message]));
    await sub.psubscribe("socket.io*");
    const emitter = await t.emitter(server, "node-redis 4");
    emitter.to("room").emit("ev", Buffer.from([1]));
    emitter.socketsJoin("x");
    await waitFor(() => seen.length >= 2, "the subscriber receives both messages", WAIT_MS);
    assert.equal(seen[0][0], "socket.io#/#room#");
    assert.equal(seen[0][1].toString("hex"), "93a7656d697474657283a47479706502a46461746192a26576c40101a36e7370a12f83a5726f6f6d7391a4726f6f6da5666c61677380a665786365707490");
    assert.equal(seen[1][0], "socket.io-request#/#");
    assert.equal(seen[1][1].toString(), '{"type":2,"opts":{"rooms":[],"except":[]},"rooms":["x"]}');
  });
});
