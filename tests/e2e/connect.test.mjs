// Transports, upgrade, heartbeat, reconnection and CORS as seen by socket.io-client 4.8.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { Ctx, call, connected, once, sleep, startServer, waitFor, WAIT_MS } from "./harness.mjs";

const T = { timeout: 20_000 };

describe("transports", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server();
  });
  afterEach(() => {
    for (const c of ctx.clients) c.disconnect();
    ctx.clients = [];
  });
  after(() => ctx.cleanup());

  test("connects over long-polling only and exchanges an event", T, async () => {
    const socket = await ctx.connect(server.url, { transports: ["polling"], upgrade: false });
    assert.equal(socket.io.engine.transport.name, "polling");
    assert.equal(typeof socket.id, "string");
    assert.ok(socket.id.length > 0);
    assert.deepEqual(await call(socket, "ioswarm:echo", "over polling"), ["over polling"]);
    assert.equal(socket.io.engine.transport.name, "polling");
  });

  test("connects over websocket only and exchanges an event", T, async () => {
    const socket = await ctx.connect(server.url, { transports: ["websocket"] });
    assert.equal(socket.io.engine.transport.name, "websocket");
    assert.deepEqual(await call(socket, "ioswarm:echo", "over websocket"), ["over websocket"]);
  });

  test("default transports start with polling and upgrade to websocket", T, async () => {
    const socket = ctx.client(server.url);
    const upgraded = once(socket.io.engine, "upgrade");
    await connected(socket);
    await upgraded;
    assert.equal(socket.io.engine.transport.name, "websocket");
    // The session survives the upgrade: same Socket.IO id, events still flow.
    const id = socket.id;
    assert.deepEqual(await call(socket, "ioswarm:echo", { after: "upgrade" }), [{ after: "upgrade" }]);
    assert.equal(socket.id, id);
    assert.ok(socket.connected);
  });

  test("packets queued during the upgrade are not lost", T, async () => {
    const socket = ctx.client(server.url);
    await connected(socket);
    // Fire acks immediately, while the upgrade is most likely in progress.
    const replies = await Promise.all(
      Array.from({ length: 20 }, (_, i) => call(socket, "ioswarm:echo", i)),
    );
    assert.deepEqual(replies, Array.from({ length: 20 }, (_, i) => [i]));
    await waitFor(() => socket.io.engine.transport.name === "websocket", "upgrade to websocket");
  });

  test("Socket.IO ids are unique and differ from the Engine.IO id", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const b = await ctx.connect(server.url, { transports: ["polling"] });
    assert.notEqual(a.id, b.id);
    assert.notEqual(a.id, a.io.engine.id);
    assert.notEqual(b.id, b.io.engine.id);
  });

  test("a client disconnect is clean and the server keeps serving", T, async () => {
    const a = await ctx.connect(server.url, { transports: ["websocket"] });
    const reason = once(a, "disconnect");
    a.disconnect();
    assert.equal((await reason)[0], "io client disconnect");
    const b = await ctx.connect(server.url, { transports: ["polling"] });
    assert.deepEqual(await call(b, "ioswarm:echo", "still up"), ["still up"]);
  });
});

describe("heartbeat", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  for (const transport of ["polling", "websocket"]) {
    test(`server pings every --ping-interval-ms over ${transport} and the client stays connected`, T, async () => {
      const server = await ctx.server({ flags: ["--ping-interval-ms", "200", "--ping-timeout-ms", "300"] });
      const socket = await ctx.connect(server.url, { transports: [transport] });
      let pings = 0;
      socket.io.on("ping", () => pings++);
      let disconnected = null;
      socket.on("disconnect", (r) => (disconnected = r));
      await sleep(1300);
      assert.equal(disconnected, null, `client disconnected: ${disconnected}`);
      assert.ok(pings >= 3, `expected at least 3 pings in 1.3 s with a 200 ms interval, got ${pings}`);
      assert.deepEqual(await call(socket, "ioswarm:echo", "alive"), ["alive"]);
    });
  }
});

describe("handshake", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  test("the open packet advertises the configured timings and payload limit", T, async () => {
    const server = await ctx.server({
      flags: ["--ping-interval-ms", "12345", "--ping-timeout-ms", "2345", "--max-payload", "54321"],
    });
    const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, {
      signal: AbortSignal.timeout(WAIT_MS),
    });
    assert.equal(res.status, 200);
    const body = await res.text();
    assert.equal(body[0], "0", `expected an open packet, got ${body}`);
    const open = JSON.parse(body.slice(1));
    assert.deepEqual(Object.keys(open).sort(), ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
    assert.deepEqual(open.upgrades, ["websocket"]);
    assert.equal(open.pingInterval, 12345);
    assert.equal(open.pingTimeout, 2345);
    assert.equal(open.maxPayload, 54321);
    // The client as a whole works with these values.
    const socket = await ctx.connect(server.url);
    assert.ok(socket.connected);
  });
});

describe("CORS", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  const handshake = (server) =>
    fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, {
      headers: { Origin: "https://app.example" },
      signal: AbortSignal.timeout(WAIT_MS),
    });

  test("no CORS headers by default", T, async () => {
    const server = await ctx.server();
    const res = await handshake(server);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("access-control-allow-origin"), null);
    await res.text();
  });

  test("--cors-origin allows the listed origin", T, async () => {
    const server = await ctx.server({ flags: ["--cors-origin", "https://app.example"] });
    const res = await handshake(server);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("access-control-allow-origin"), "https://app.example");
    await res.text();
  });
});

describe("CORS preflight and wildcard", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  test("--cors-origin answers the preflight of an allowed origin", T, async () => {
    const server = await ctx.server({ flags: ["--cors-origin", "https://a.example,https://app.example"] });
    const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, {
      method: "OPTIONS",
      headers: { Origin: "https://app.example", "Access-Control-Request-Method": "POST" },
      signal: AbortSignal.timeout(WAIT_MS),
    });
    await res.text();
    assert.ok(res.status >= 200 && res.status < 300, `preflight status ${res.status}`);
    assert.equal(res.headers.get("access-control-allow-origin"), "https://app.example");
    const methods = (res.headers.get("access-control-allow-methods") ?? "").toUpperCase();
    assert.ok(methods.includes("POST") || methods === "*", `allow-methods: ${methods}`);
  });

  test("--cors-origin does not allow other origins", T, async () => {
    const server = await ctx.server({ flags: ["--cors-origin", "https://app.example"] });
    const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, {
      headers: { Origin: "https://evil.example" },
      signal: AbortSignal.timeout(WAIT_MS),
    });
    await res.text();
    assert.notEqual(res.headers.get("access-control-allow-origin"), "https://evil.example");
    assert.notEqual(res.headers.get("access-control-allow-origin"), "*");
  });

  test("--cors-origin '*' allows any origin", T, async () => {
    const server = await ctx.server({ flags: ["--cors-origin", "*"] });
    const res = await fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, {
      headers: { Origin: "https://anything.example" },
      signal: AbortSignal.timeout(WAIT_MS),
    });
    await res.text();
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("access-control-allow-origin"), "*");
  });
});

describe("reconnection", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  for (const transport of ["polling", "websocket"]) {
    test(`a ${transport} client reconnects after the server restarts on the same port`, T, async () => {
      const first = await startServer();
      ctx.servers.push(first);
      const socket = await ctx.connect(first.url, {
        transports: [transport],
        reconnection: true,
        reconnectionDelay: 100,
        reconnectionDelayMax: 200,
        randomizationFactor: 0,
      });
      const firstId = socket.id;
      // Let a polling client park its next GET (as it does when idle): only then can the server
      // answer it with a close packet. Stopping the server in the gap between two polls gives
      // "transport error" with socket.io 4.8 itself.
      await call(socket, "ioswarm:echo", "idle");
      await sleep(150);
      const disconnected = once(socket, "disconnect");
      const { code } = await first.stop();
      assert.equal(code, 0);
      assert.equal((await disconnected)[0], "transport close");

      // Let the client fail at least once against the closed port.
      await sleep(300);
      const reconnected = once(socket.io, "reconnect", WAIT_MS * 2);
      await ctx.server({ listen: first.addr });
      await reconnected;
      await waitFor(() => socket.connected, "socket connected again");
      assert.notEqual(socket.id, firstId, "a new server hands out a new session");
      assert.deepEqual(await call(socket, "ioswarm:echo", "back"), ["back"]);
    });
  }
});
