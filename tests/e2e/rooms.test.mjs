// ioswarm:join / ioswarm:leave (--client-rooms) and ioswarm:to (--client-relay).
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { Ctx, call, QUIET_MS, record, sleep, waitFor } from "./harness.mjs";

const T = { timeout: 20_000 };


describe("rooms with --client-rooms", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--client-rooms"] });
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  for (const transport of ["polling", "websocket"]) {
    test(`join and leave answer with the sorted room list over ${transport}`, T, async () => {
      const s = await ctx.connect(server.url, { transports: [transport] });
      assert.deepEqual(await call(s, "ioswarm:join", "a"), [{ rooms: ["a"] }]);
      assert.deepEqual(await call(s, "ioswarm:join", ["c", "b"]), [{ rooms: ["a", "b", "c"] }]);
      assert.deepEqual(await call(s, "ioswarm:join", "a"), [{ rooms: ["a", "b", "c"] }], "joining twice is idempotent");
      assert.deepEqual(await call(s, "ioswarm:leave", "b"), [{ rooms: ["a", "c"] }]);
      assert.deepEqual(await call(s, "ioswarm:leave", "not-a-member"), [{ rooms: ["a", "c"] }]);
      assert.deepEqual(await call(s, "ioswarm:leave", ["a", "c"]), [{ rooms: [] }]);
    });
  }

  test("the room list never contains the socket's own id", T, async () => {
    const s = await ctx.connect(server.url);
    const [reply] = await call(s, "ioswarm:join", "x");
    assert.ok(!reply.rooms.includes(s.id));
    assert.deepEqual(reply, { rooms: ["x"] });
  });

  test("GET /v1/sockets shows the joined rooms", T, async () => {
    const s = await ctx.connect(server.url, { transports: ["websocket"] });
    await call(s, "ioswarm:join", ["blue", "green"]);
    const res = await server.admin("GET", "/v1/sockets?nsp=/");
    assert.equal(res.status, 200);
    const entry = res.json.sockets.find((x) => x.id === s.id);
    assert.ok(entry, `socket ${s.id} missing from ${res.text}`);
    assert.ok(entry.rooms.includes("blue") && entry.rooms.includes("green"), res.text);
  });

  test("rooms are per namespace", T, async () => {
    const root = await ctx.connect(server.url, { transports: ["websocket"] });
    const chat = root.io.socket("/chat");
    ctx.clients.push(chat);
    await waitFor(() => chat.connected, "/chat connected");
    await call(root, "ioswarm:join", "lobby");
    assert.deepEqual(await call(chat, "ioswarm:join", "other"), [{ rooms: ["other"] }]);
  });
});

describe("rooms without --client-rooms", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server();
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  test("join and leave are forbidden", T, async () => {
    const s = await ctx.connect(server.url);
    assert.deepEqual(await call(s, "ioswarm:join", "a"), [{ error: "forbidden" }]);
    assert.deepEqual(await call(s, "ioswarm:leave", "a"), [{ error: "forbidden" }]);
    // And the socket really is in no room: an admin emit to "a" reaches nobody.
    const res = await server.emit({ rooms: ["a"], event: "x", args: [] });
    assert.equal(res.json.recipients, 0);
  });
});

describe("relay with --client-rooms --client-relay", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--client-rooms", "--client-relay"] });
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  for (const [ta, tb] of [
    ["polling", "websocket"],
    ["websocket", "polling"],
    ["websocket", "websocket"],
  ]) {
    test(`ioswarm:to reaches room members only, not the sender (${ta} -> ${tb})`, T, async () => {
      const a = await ctx.connect(server.url, { transports: [ta] });
      const b = await ctx.connect(server.url, { transports: [tb] });
      const c = await ctx.connect(server.url, { transports: [tb] });
      await call(a, "ioswarm:join", "r");
      await call(b, "ioswarm:join", "r");
      await call(c, "ioswarm:join", "elsewhere");
      const gotA = record(a, "hello");
      const gotB = record(b, "hello");
      const gotC = record(c, "hello");
      assert.deepEqual(await call(a, "ioswarm:to", "r", "hello", { x: 1 }, "two"), [{ recipients: 1 }]);
      await waitFor(() => gotB.length > 0, "b receives hello");
      await sleep(QUIET_MS);
      assert.deepEqual(gotB, [[{ x: 1 }, "two"]]);
      assert.deepEqual(gotA, [], "the sender does not receive its own relay");
      assert.deepEqual(gotC, [], "non-members do not receive the relay");
    });
  }

  test("relay carries binary arguments", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const b = await ctx.connect(server.url, { transports: ["polling"] });
    await call(a, "ioswarm:join", "bin");
    await call(b, "ioswarm:join", "bin");
    const got = record(b, "blob");
    const payload = { file: Buffer.from([0, 1, 2, 255]), name: "f" };
    assert.deepEqual(await call(a, "ioswarm:to", "bin", "blob", payload, Buffer.from("raw")), [{ recipients: 1 }]);
    await waitFor(() => got.length > 0, "b receives blob");
    const [[obj, raw]] = got;
    assert.ok(Buffer.isBuffer(obj.file), `expected a Buffer, got ${obj.file?.constructor?.name}`);
    assert.deepEqual([...obj.file], [0, 1, 2, 255]);
    assert.equal(obj.name, "f");
    assert.ok(Buffer.isBuffer(raw));
    assert.equal(raw.toString(), "raw");
  });

  test("relay without an ack is delivered too", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const b = await ctx.connect(server.url, { transports: ["websocket"] });
    await call(a, "ioswarm:join", "quiet");
    await call(b, "ioswarm:join", "quiet");
    const got = record(b, "ping-me");
    a.emit("ioswarm:to", "quiet", "ping-me", 42);
    await waitFor(() => got.length > 0, "b receives ping-me");
    assert.deepEqual(got, [[42]]);
  });

  test("recipients counts every other member", T, async () => {
    const members = [];
    for (let i = 0; i < 4; i++) {
      const s = await ctx.connect(server.url, { transports: ["websocket"] });
      await call(s, "ioswarm:join", "four");
      members.push(s);
    }
    const got = members.map((m) => record(m, "hi"));
    assert.deepEqual(await call(members[0], "ioswarm:to", "four", "hi"), [{ recipients: 3 }]);
    await waitFor(() => got.slice(1).every((g) => g.length === 1), "three members receive hi");
    await sleep(QUIET_MS);
    assert.deepEqual(got.map((g) => g.length), [0, 1, 1, 1]);
  });

  test("a sender outside the room is forbidden and nothing is delivered", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const b = await ctx.connect(server.url, { transports: ["websocket"] });
    await call(b, "ioswarm:join", "private");
    const got = record(b, "sneak");
    assert.deepEqual(await call(a, "ioswarm:to", "private", "sneak", 1), [{ error: "forbidden" }]);
    await sleep(QUIET_MS);
    assert.deepEqual(got, []);
  });
});

describe("relay without --client-relay", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--client-rooms"] });
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  test("ioswarm:to is forbidden even for room members", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const b = await ctx.connect(server.url, { transports: ["websocket"] });
    await call(a, "ioswarm:join", "r");
    await call(b, "ioswarm:join", "r");
    const got = record(b, "hello");
    assert.deepEqual(await call(a, "ioswarm:to", "r", "hello", 1), [{ error: "forbidden" }]);
    await sleep(QUIET_MS);
    assert.deepEqual(got, []);
  });
});
