// @socket.io/redis-emitter broadcasts reach socket.io-client 2.x pages (Engine.IO 3) exactly as
// they reach 4.x ones: text and binary arguments, rooms, a socket's own id, namespaces and
// socketsJoin, over polling and WebSocket, with node-redis 4, node-redis 6 (RESP3) and ioredis 5.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import ioV2 from "socket.io-client-v2";
import { Ctx, REDIS_CLIENTS, WAIT_MS, once, probe, record, waitFor } from "./harness.mjs";

/** Connected 2.x clients of this file, closed after each test. */
const v2Sockets = [];

async function connectV2(server, nsp = "/", opts = {}) {
  const socket = ioV2(server.url + (nsp === "/" ? "" : nsp), { forceNew: true, reconnection: false, timeout: WAIT_MS, ...opts });
  v2Sockets.push(socket);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no connect to ${nsp} within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once("error", (err) => reject(new Error(`error: ${JSON.stringify(err)}`)));
    socket.once("connect_error", (err) => reject(new Error(`connect_error: ${err.message}`)));
  });
  return socket;
}

/** `ioswarm:join` from a 2.x client (no emitWithAck there). */
function joinV2(socket, rooms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no ack for ioswarm:join")), WAIT_MS);
    socket.emit("ioswarm:join", rooms, (res) => {
      clearTimeout(timer);
      if (!res?.rooms) reject(new Error(`ioswarm:join refused: ${JSON.stringify(res)}`));
      else resolve(res.rooms);
    });
  });
}

/** Emits with `emit` every 50 ms until `got` (a `record` array) has something. */
async function emitUntil(emit, got, message) {
  await waitFor(async () => {
    emit();
    await new Promise((r) => setTimeout(r, 50));
    return got.length > 0;
  }, message);
}

describe("the Redis emitter and socket.io-client 2.x", () => {
  const t = new Ctx();
  let server;
  before(async () => {
    server = await t.server();
  });
  afterEach(async () => {
    for (const s of v2Sockets.splice(0)) s.close();
    await t.resetClients();
  });
  after(() => t.cleanup());

  for (const flavour of Object.keys(REDIS_CLIENTS)) {
    test(`emitter over ${flavour}: text and binary to a room reach 2.x and 4.x clients alike`, async () => {
      const emitter = await t.emitter(server, flavour);
      const pages = [
        await connectV2(server, "/", { transports: ["polling"] }),
        await connectV2(server, "/", { transports: ["websocket"] }),
        await t.connect(server, "/", { transports: ["polling"] }),
        await t.connect(server, "/", { transports: ["websocket"] }),
      ];
      await probe(emitter, pages[3]);
      await Promise.all(pages.map((p, i) => (i < 2 ? joinV2(p, "news") : p.timeout(WAIT_MS).emitWithAck("ioswarm:join", "news"))));
      const got = pages.map((p) => record(p, "headline"));
      emitter.to("news").emit("headline", "text é😀", { n: 1, list: [1.5, null] });
      emitter.to("news").emit("headline", Buffer.from([0, 1, 255]), { nested: Buffer.from("hi") });
      await waitFor(() => got.every((g) => g.length === 2), "every page receives both broadcasts");
      for (const [i, g] of got.entries()) {
        assert.deepEqual(g[0], ["text é😀", { n: 1, list: [1.5, null] }], `page ${i}`);
        const [blob, { nested }] = g[1];
        assert.deepEqual([...Buffer.from(blob)], [0, 1, 255], `page ${i}`);
        assert.equal(Buffer.from(nested).toString(), "hi", `page ${i}`);
      }
    });
  }

  test("to a 2.x page's own id, socketsJoin on it, and a namespace", async () => {
    const emitter = await t.emitter(server, "node-redis 4");
    const page = await connectV2(server, "/", { transports: ["websocket"] });
    const chat = await connectV2(server, "/chat", { transports: ["polling"] });
    await probe(emitter, page);
    const direct = once(page, "direct");
    emitter.to(page.id).emit("direct", "just you");
    assert.deepEqual(await direct, ["just you"]);

    emitter.in(page.id).socketsJoin("late");
    const late = record(page, "late-news");
    await emitUntil(() => emitter.to("late").emit("late-news", 1), late, "the page joined by socketsJoin receives the room's broadcast");

    const inChat = record(chat, "chat-news");
    await emitUntil(() => emitter.of("/chat").emit("chat-news", Buffer.from("bin")), inChat, "the /chat broadcast reaches the 2.x page of /chat");
    assert.equal(Buffer.from(inChat[0][0]).toString(), "bin");
  });

  test("in another namespace a 2.x page's id is /chat#<session id>: to, except and socketsJoin on it", async () => {
    const emitter = await t.emitter(server, "node-redis 4");
    const chat = await connectV2(server, "/chat", { transports: ["websocket"] });
    const other = await connectV2(server, "/chat", { transports: ["polling"] });
    assert.equal(chat.id, `/chat#${chat.io.engine.id}`, "the id the page tells its app");
    const toChat = emitter.of("/chat");
    await probe(toChat, chat);
    const got = record(chat, "direct");
    const gotOther = record(other, "direct");
    toChat.to(chat.id).emit("direct", "just you");
    toChat.except(chat.id).emit("direct", "the others");
    await waitFor(() => got.length === 1 && gotOther.length === 1, "each page gets its one message");
    assert.deepEqual([got, gotOther], [[["just you"]], [["the others"]]]);

    toChat.in(chat.id).socketsJoin("chat-late");
    const late = record(chat, "late-news");
    const lateOther = record(other, "late-news");
    await emitUntil(() => toChat.to("chat-late").emit("late-news", 1), late, "the page joined by socketsJoin receives the room's broadcast");
    assert.deepEqual(lateOther, [], "socketsJoin joined that page only");
  });
});
