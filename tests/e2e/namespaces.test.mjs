// Namespaces, the --namespaces allowlist and --auth-token.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { Manager } from "socket.io-client";
import { Ctx, call, connected, connectError, once, QUIET_MS, sleep } from "./harness.mjs";

const T = { timeout: 20_000 };


describe("namespaces without an allowlist", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server();
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  for (const transport of ["polling", "websocket"]) {
    test(`"/" and "/chat" share one Engine.IO connection over ${transport}`, T, async () => {
      const root = await ctx.connect(server.url, { transports: [transport] });
      // Same manager => same Engine.IO connection, multiplexed namespaces (the socket auto-connects).
      const chat = root.io.socket("/chat");
      ctx.clients.push(chat);
        await once(chat, "connect");
      assert.equal(root.io.engine, chat.io.engine);
      assert.notEqual(root.id, chat.id);
      assert.deepEqual(await call(chat, "ioswarm:echo", "in chat"), ["in chat"]);
      assert.deepEqual(await call(root, "ioswarm:echo", "in root"), ["in root"]);
    });
  }

  test("any namespace is accepted when no allowlist is configured", T, async () => {
    const s = await ctx.connect(`${server.url}/whatever/nested`);
    assert.deepEqual(await call(s, "ioswarm:echo", 1), [1]);
  });

  test("leaving one namespace keeps the other one connected", T, async () => {
    const root = await ctx.connect(server.url, { transports: ["websocket"] });
    const chat = root.io.socket("/chat");
    ctx.clients.push(chat);
    await once(chat, "connect");
    let rootDisconnected = null;
    root.on("disconnect", (r) => (rootDisconnected = r));
    chat.disconnect();
    await sleep(QUIET_MS);
    assert.equal(rootDisconnected, null);
    assert.ok(root.connected);
    assert.deepEqual(await call(root, "ioswarm:echo", "still here"), ["still here"]);
  });

  test("two namespaces opened at once on one connection both connect, whatever the upgrade's timing", { timeout: 60_000 }, async () => {
    // The second CONNECT's reply can be queued while the first one is being written to the new
    // WebSocket; it once waited there until the next ping (25 s). Many tries, ten at a time,
    // land some of them in that window.
    let left = 300;
    const one = async () => {
      const manager = new Manager(server.url, { reconnection: false, timeout: 5_000 });
      const sockets = [manager.socket("/"), manager.socket("/chat")];
      try {
        await Promise.all(sockets.map((s) => connected(s)));
      } finally {
        for (const s of sockets) s.disconnect();
      }
    };
    await Promise.all(Array.from({ length: 10 }, async () => {
      while (left-- > 0) await one();
    }));
  });

  test("events do not cross namespaces", T, async () => {
    const root = await ctx.connect(server.url, { transports: ["websocket"] });
    const chat = await ctx.connect(`${server.url}/chat`, { transports: ["websocket"] });
    const gotRoot = [];
    const gotChat = [];
    root.on("news", (...a) => gotRoot.push(a));
    chat.on("news", (...a) => gotChat.push(a));
    const res = await server.emit({ nsp: "/chat", event: "news", args: ["for chat"] });
    assert.equal(res.status, 200);
    assert.equal(res.json.recipients, 1);
    await sleep(QUIET_MS);
    assert.deepEqual(gotChat, [["for chat"]]);
    assert.deepEqual(gotRoot, []);
  });
});

describe("namespace allowlist", () => {
  const ctx = new Ctx();
  afterEach(() => ctx.resetClients());
  after(() => ctx.cleanup());

  test('--namespaces / rejects "/chat" with "Invalid namespace"', T, async () => {
    const server = await ctx.server({ flags: ["--namespaces", "/"] });
    const chat = ctx.client(`${server.url}/chat`);
    const err = await connectError(chat);
    assert.equal(err.message, "Invalid namespace");
    assert.equal(chat.connected, false);
    const root = await ctx.connect(server.url);
    assert.deepEqual(await call(root, "ioswarm:echo", "ok"), ["ok"]);
  });

  test("a rejected namespace does not close the shared connection", T, async () => {
    const server = await ctx.server({ flags: ["--namespaces", "/"] });
    const root = await ctx.connect(server.url, { transports: ["websocket"] });
    const bad = root.io.socket("/nope");
    ctx.clients.push(bad);
    let rootDisconnected = null;
    root.on("disconnect", (r) => (rootDisconnected = r));
    const [err] = await once(bad, "connect_error");
    assert.equal(err.message, "Invalid namespace");
    await sleep(QUIET_MS);
    assert.equal(rootDisconnected, null);
    assert.deepEqual(await call(root, "ioswarm:echo", "alive"), ["alive"]);
  });

  test("--namespaces /,/chat accepts both and rejects others", T, async () => {
    const server = await ctx.server({ flags: ["--namespaces", "/,/chat"] });
    const root = await ctx.connect(server.url);
    const chat = await ctx.connect(`${server.url}/chat`);
    assert.ok(root.connected && chat.connected);
    const other = ctx.client(`${server.url}/other`);
    assert.equal((await connectError(other)).message, "Invalid namespace");
  });
});

describe("--auth-token", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--auth-token", "s3cret"] });
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  for (const transport of ["polling", "websocket"]) {
    test(`the right token is accepted over ${transport}`, T, async () => {
      const s = await ctx.connect(server.url, { transports: [transport], auth: { token: "s3cret" } });
      assert.deepEqual(await call(s, "ioswarm:echo", "authed"), ["authed"]);
    });
  }

  test("extra auth fields next to the right token are fine", T, async () => {
    const s = await ctx.connect(server.url, { auth: { token: "s3cret", user: "ada" } });
    assert.ok(s.connected);
  });

  test('a wrong token gets connect_error "unauthorized"', T, async () => {
    const s = ctx.client(server.url, { auth: { token: "wrong" } });
    const err = await connectError(s);
    assert.equal(err.message, "unauthorized");
    assert.equal(s.connected, false);
  });

  test('a missing token gets connect_error "unauthorized"', T, async () => {
    const s = ctx.client(server.url);
    assert.equal((await connectError(s)).message, "unauthorized");
  });

  test('a non-string token gets connect_error "unauthorized"', T, async () => {
    const s = ctx.client(server.url, { auth: { token: 12345 } });
    assert.equal((await connectError(s)).message, "unauthorized");
  });

  test("the token is required in every namespace", T, async () => {
    const bad = ctx.client(`${server.url}/chat`, { auth: {} });
    assert.equal((await connectError(bad)).message, "unauthorized");
    const good = await ctx.connect(`${server.url}/chat`, { auth: { token: "s3cret" } });
    assert.ok(good.connected);
  });

  test("a rejected client can retry with the right token on the same connection", T, async () => {
    const s = ctx.client(server.url, { auth: { token: "wrong" } });
    await connectError(s);
    s.auth = { token: "s3cret" };
    s.connect();
    await once(s, "connect");
    assert.deepEqual(await call(s, "ioswarm:echo", "second try"), ["second try"]);
  });
});
