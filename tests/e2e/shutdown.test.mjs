// SIGTERM: connected clients see "transport close" and the process exits with status 0.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { Ctx, call, connected, once, sleep, waitFor, WAIT_MS } from "./harness.mjs";

describe("shutdown", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  test("SIGTERM closes every client with 'transport close' and exits 0", { timeout: 20_000 }, async () => {
    const server = await ctx.server({ flags: ["--client-rooms"] });
    const clients = [
      await ctx.connect(server.url, { transports: ["polling"] }),
      await ctx.connect(server.url, { transports: ["websocket"] }),
      await ctx.connect(`${server.url}/chat`, { transports: ["websocket"] }),
    ];
    const upgraded = ctx.client(server.url);
    await connected(upgraded);
    await waitFor(() => upgraded.io.engine.transport.name === "websocket", "upgrade to websocket");
    clients.push(upgraded);
    // Idle clients: every polling client has parked its next GET (see connect.test.mjs).
    await Promise.all(clients.map((c) => call(c, "ioswarm:echo", "idle")));
    await sleep(150);
    const reasons = clients.map((c) => once(c, "disconnect", WAIT_MS * 2).then((args) => args[0]));
    const { code, signal } = await server.stop();
    assert.equal(signal, null, `killed by ${signal}; stderr:\n${server.stderr.slice(-2000)}`);
    assert.equal(code, 0, `exit code ${code}; stderr:\n${server.stderr.slice(-2000)}`);
    assert.deepEqual(await Promise.all(reasons), ["transport close", "transport close", "transport close", "transport close"]);
  });

  test("SIGINT exits 0 too", { timeout: 20_000 }, async () => {
    const server = await ctx.server();
    const c = await ctx.connect(server.url, { transports: ["websocket"] });
    await call(c, "ioswarm:echo", "idle");
    const reason = once(c, "disconnect", WAIT_MS * 2);
    server.child.kill("SIGINT");
    const { code } = await server.exited;
    assert.equal(code, 0);
    assert.equal((await reason)[0], "transport close");
  });

  test("after shutdown the ports are closed", { timeout: 20_000 }, async () => {
    const server = await ctx.server();
    await server.stop();
    await assert.rejects(fetch(`${server.adminUrl}/healthz`, { signal: AbortSignal.timeout(2000) }));
    await assert.rejects(fetch(`${server.url}/socket.io/?EIO=4&transport=polling`, { signal: AbortSignal.timeout(2000) }));
  });
});
