// The admin listener: /healthz, /metrics, /v1/emit targeting, /v1/sockets.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { Ctx, call, QUIET_MS, record, sleep, waitFor } from "./harness.mjs";

const T = { timeout: 20_000 };


describe("admin endpoints", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--client-rooms"] });
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  test("GET /healthz answers 200 ok", T, async () => {
    const res = await server.admin("GET", "/healthz");
    assert.equal(res.status, 200);
    assert.equal(res.text.trim(), "ok");
  });

  test("GET /metrics is Prometheus text with ioswarm_ series", T, async () => {
    await ctx.connect(server.url);
    const res = await server.admin("GET", "/metrics");
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain/);
    const series = res.text.split("\n").filter((l) => l.startsWith("ioswarm_"));
    assert.ok(series.length > 0, `no line starts with ioswarm_:\n${res.text}`);
    for (const line of series) {
      assert.match(line, /^ioswarm_[a-z0-9_]+(\{[^}]*\})? -?[0-9.eE+-]+|NaN|[+-]Inf$/, `bad sample line: ${line}`);
    }
  });

  test("the socket.io listener does not serve the admin API", T, async () => {
    const res = await fetch(`${server.url}/v1/emit`, {
      method: "POST",
      body: JSON.stringify({ event: "x" }),
      signal: AbortSignal.timeout(5000),
    });
    assert.notEqual(res.status, 200);
    await res.text();
  });

  test("POST /v1/emit with no rooms reaches every socket of the namespace", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["polling"] });
    const b = await ctx.connect(server.url, { transports: ["websocket"] });
    const ga = record(a, "news");
    const gb = record(b, "news");
    const res = await server.emit({ nsp: "/", rooms: [], except: [], event: "news", args: [1, "x", { y: [true] }] });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, { recipients: 2 });
    await waitFor(() => ga.length && gb.length, "both receive news");
    await sleep(QUIET_MS);
    assert.deepEqual(ga, [[1, "x", { y: [true] }]]);
    assert.deepEqual(gb, [[1, "x", { y: [true] }]]);
  });

  test("nsp, rooms, except and args default when omitted", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const ga = record(a, "bare");
    const res = await server.emit({ event: "bare" });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, { recipients: 1 });
    await waitFor(() => ga.length, "bare received");
    assert.deepEqual(ga, [[]]);
  });

  test("rooms is a union (each socket once) and except removes members", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] }); // r1
    const b = await ctx.connect(server.url, { transports: ["polling"] }); // r1, r2, r3
    const c = await ctx.connect(server.url, { transports: ["websocket"] }); // none
    const d = await ctx.connect(server.url, { transports: ["websocket"] }); // r3
    await call(a, "ioswarm:join", "r1");
    await call(b, "ioswarm:join", ["r1", "r2", "r3"]);
    await call(d, "ioswarm:join", "r3");
    const got = [a, b, c, d].map((s) => record(s, "m"));

    let res = await server.emit({ rooms: ["r1", "r3"], event: "m", args: ["union"] });
    assert.deepEqual(res.json, { recipients: 3 });
    res = await server.emit({ rooms: ["r1"], except: ["r2"], event: "m", args: ["except"] });
    assert.deepEqual(res.json, { recipients: 1 });
    res = await server.emit({ except: ["r3"], event: "m", args: ["all-but-r3"] });
    assert.deepEqual(res.json, { recipients: 2 });
    await waitFor(() => got[0].length === 3 && got[1].length === 1 && got[2].length === 1 && got[3].length === 1, "deliveries");
    await sleep(QUIET_MS);
    assert.deepEqual(got[0], [["union"], ["except"], ["all-but-r3"]]);
    assert.deepEqual(got[1], [["union"]]);
    assert.deepEqual(got[2], [["all-but-r3"]]);
    assert.deepEqual(got[3], [["union"]]);
  });

  test("a socket id is a room: target and exclude single sockets", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const b = await ctx.connect(server.url, { transports: ["websocket"] });
    const ga = record(a, "direct");
    const gb = record(b, "direct");
    assert.deepEqual((await server.emit({ rooms: [a.id], event: "direct", args: ["to-a"] })).json, { recipients: 1 });
    assert.deepEqual((await server.emit({ except: [a.id], event: "direct", args: ["not-a"] })).json, { recipients: 1 });
    await waitFor(() => ga.length && gb.length, "deliveries");
    await sleep(QUIET_MS);
    assert.deepEqual(ga, [["to-a"]]);
    assert.deepEqual(gb, [["not-a"]]);
  });

  test("volatile emits are accepted and reach idle websocket clients", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const ga = record(a, "tick");
    const res = await server.emit({ event: "tick", args: [1], volatile: true });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, { recipients: 1 });
    await waitFor(() => ga.length, "tick received");
    assert.deepEqual(ga, [[1]]);
  });

  test("an unknown namespace has no recipients", T, async () => {
    await ctx.connect(server.url);
    const res = await server.emit({ nsp: "/nobody", event: "x", args: [] });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.recipients, 0);
  });

  for (const [name, body] of [
    ["invalid JSON", "{not json"],
    ["a missing event", JSON.stringify({ nsp: "/", args: [] })],
    ["a non-object body", "[1,2]"],
  ]) {
    test(`POST /v1/emit with ${name} is a 400 with an error`, T, async () => {
      const res = await server.admin("POST", "/v1/emit", body);
      assert.equal(res.status, 400, res.text);
      assert.equal(typeof res.json?.error, "string", `body: ${res.text}`);
      assert.ok(res.json.error.length > 0);
    });
  }

  test("GET /v1/sockets lists connected sockets per namespace", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const b = await ctx.connect(`${server.url}/chat`, { transports: ["polling"] });
    const root = await server.admin("GET", "/v1/sockets?nsp=/");
    assert.equal(root.status, 200);
    assert.deepEqual(root.json.sockets.map((s) => s.id), [a.id]);
    assert.ok(Array.isArray(root.json.sockets[0].rooms));
    const chat = await server.admin("GET", `/v1/sockets?nsp=${encodeURIComponent("/chat")}`);
    assert.deepEqual(chat.json.sockets.map((s) => s.id), [b.id]);
    a.disconnect();
    await waitFor(async () => (await server.admin("GET", "/v1/sockets?nsp=/")).json.sockets.length === 0, "a removed from /v1/sockets");
  });
});
