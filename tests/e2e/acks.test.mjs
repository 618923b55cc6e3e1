// Acknowledgements in both directions: ioswarm:echo (client -> server) and admin emits with
// ackTimeoutMs (server -> clients).
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { Ctx, call, once, waitFor } from "./harness.mjs";

const T = { timeout: 20_000 };


const sortJson = (arr) => [...arr].sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y)));

describe("ioswarm:echo", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server();
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  for (const transport of ["polling", "websocket"]) {
    test(`echoes JSON arguments unchanged over ${transport}`, T, async () => {
      const s = await ctx.connect(server.url, { transports: [transport] });
      const args = [1, -2.5, "two", true, null, { three: [3, { four: "4" }] }, [], {}, "ünïcødé ✓ \u2028", "😀𝄞 surrogate pairs", "\u001e separator", 1e21];
      assert.deepEqual(await call(s, "ioswarm:echo", ...args), args);
      assert.deepEqual(await call(s, "ioswarm:echo"), [], "no arguments -> empty ack");
    });

    test(`echoes binary arguments as Buffers over ${transport}`, T, async () => {
      const s = await ctx.connect(server.url, { transports: [transport] });
      const bytes = Buffer.from([0, 1, 2, 3, 254, 255]);
      const reply = await call(s, "ioswarm:echo", bytes, "text", Buffer.alloc(0));
      assert.equal(reply.length, 3);
      assert.ok(Buffer.isBuffer(reply[0]), `got ${reply[0]?.constructor?.name}`);
      assert.ok(bytes.equals(reply[0]));
      assert.equal(reply[1], "text");
      assert.ok(Buffer.isBuffer(reply[2]));
      assert.equal(reply[2].length, 0);
    });

    test(`echoes nested binary inside objects and arrays over ${transport}`, T, async () => {
      const s = await ctx.connect(server.url, { transports: [transport] });
      const big = Buffer.alloc(100_000, 7);
      const input = {
        name: "file",
        meta: { chunks: [Buffer.from("a"), Buffer.from("bc")], size: 3 },
        list: [1, { deep: Buffer.from([9, 8, 7]) }],
        big,
      };
      const [out] = await call(s, "ioswarm:echo", input);
      assert.equal(out.name, "file");
      assert.equal(out.meta.size, 3);
      assert.ok(out.meta.chunks.every((c) => Buffer.isBuffer(c)));
      assert.deepEqual(out.meta.chunks.map((c) => c.toString()), ["a", "bc"]);
      assert.equal(out.list[0], 1);
      assert.ok(Buffer.isBuffer(out.list[1].deep));
      assert.deepEqual([...out.list[1].deep], [9, 8, 7]);
      assert.ok(Buffer.isBuffer(out.big));
      assert.ok(big.equals(out.big));
    });
  }

  test("concurrent acks are matched to the right requests", T, async () => {
    const s = await ctx.connect(server.url, { transports: ["websocket"] });
    const replies = await Promise.all(
      Array.from({ length: 100 }, (_, i) => call(s, "ioswarm:echo", i, i % 3 === 0 ? Buffer.from([i]) : `s${i}`)),
    );
    replies.forEach(([n, x], i) => {
      assert.equal(n, i);
      if (i % 3 === 0) assert.deepEqual([...x], [i]);
      else assert.equal(x, `s${i}`);
    });
  });

  test("echo works in a non-root namespace", T, async () => {
    const s = await ctx.connect(`${server.url}/chat`);
    assert.deepEqual(await call(s, "ioswarm:echo", "chat", Buffer.from("b")).then(([a, b]) => [a, b.toString()]), [
      "chat",
      "b",
    ]);
  });

  test("an unknown event with an ack is acked with no arguments", T, async () => {
    const s = await ctx.connect(server.url);
    assert.deepEqual(await call(s, "some:event", { a: 1 }), []);
    // ...and without an ack it is silently ignored (the connection stays usable).
    s.emit("another:event", 1, 2, 3);
    assert.deepEqual(await call(s, "ioswarm:echo", "ok"), ["ok"]);
  });
});

describe("admin emit with ackTimeoutMs", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--client-rooms"] });
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  test("collects every client's ack arguments and counts the client that never answers", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const b = await ctx.connect(server.url, { transports: ["polling"] });
    const silent = await ctx.connect(server.url, { transports: ["websocket"] });
    const received = [];
    a.on("question", (q, cb) => {
      received.push(["a", q]);
      cb("a-answer", 1);
    });
    b.on("question", (q, cb) => {
      received.push(["b", q]);
      cb({ from: "b", ok: true });
    });
    silent.on("question", (q) => {
      received.push(["silent", q]);
      // never calls the callback
    });
    const started = Date.now();
    const res = await server.emit({ event: "question", args: [{ n: 42 }], ackTimeoutMs: 700 });
    const elapsed = Date.now() - started;
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.recipients, 3);
    assert.equal(res.json.timedOut, 1);
    assert.deepEqual(sortJson(res.json.acks), sortJson([["a-answer", 1], [{ from: "b", ok: true }]]));
    assert.ok(elapsed >= 600, `answered after ${elapsed} ms, before the 700 ms ack timeout`);
    assert.deepEqual(
      sortJson(received),
      sortJson([
        ["a", { n: 42 }],
        ["b", { n: 42 }],
        ["silent", { n: 42 }],
      ]),
    );
  });

  test("answers as soon as every ack arrived", T, async () => {
    const clients = [];
    for (const transport of ["websocket", "polling", "websocket"]) {
      const s = await ctx.connect(server.url, { transports: [transport] });
      await call(s, "ioswarm:join", "fast");
      s.on("q", (x, cb) => cb(x * 2, s.id));
      clients.push(s);
    }
    const started = Date.now();
    const res = await server.emit({ rooms: ["fast"], event: "q", args: [21], ackTimeoutMs: 8000 });
    const elapsed = Date.now() - started;
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.recipients, 3);
    assert.equal(res.json.timedOut, 0);
    assert.deepEqual(sortJson(res.json.acks), sortJson(clients.map((c) => [42, c.id])));
    assert.ok(elapsed < 5000, `took ${elapsed} ms although every client answered at once`);
  });

  test("an ack with no arguments is an empty array", T, async () => {
    const s = await ctx.connect(server.url, { transports: ["websocket"] });
    await call(s, "ioswarm:join", "empty");
    s.on("q", (cb) => cb());
    const res = await server.emit({ rooms: ["empty"], event: "q", args: [], ackTimeoutMs: 3000 });
    assert.deepEqual(res.json, { recipients: 1, acks: [[]], timedOut: 0 });
  });

  test("no recipients: answers at once with empty acks", T, async () => {
    const res = await server.emit({ rooms: ["nobody-here"], event: "q", args: [], ackTimeoutMs: 8000 });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, { recipients: 0, acks: [], timedOut: 0 });
  });

  test("a client that disconnects before answering counts as timed out", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    await call(a, "ioswarm:join", "leaver");
    const gotIt = once(a, "q");
    const pending = server.emit({ rooms: ["leaver"], event: "q", args: [], ackTimeoutMs: 1000 });
    await gotIt;
    a.disconnect();
    const res = await pending;
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.recipients, 1);
    assert.deepEqual(res.json.acks, []);
    assert.equal(res.json.timedOut, 1);
  });

  test("acks from a non-root namespace", T, async () => {
    const s = await ctx.connect(`${server.url}/chat`, { transports: ["polling"] });
    s.on("q", (cb) => cb("from chat"));
    await waitFor(() => s.connected, "connected");
    const res = await server.emit({ nsp: "/chat", event: "q", args: [], ackTimeoutMs: 3000 });
    assert.deepEqual(res.json, { recipients: 1, acks: [["from chat"]], timedOut: 0 });
  });
});
