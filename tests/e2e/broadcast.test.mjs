// Fan-out: many clients in a room each receive a broadcast exactly once.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Ctx, call, QUIET_MS, record, sleep, waitFor } from "./harness.mjs";

const N = 50;

describe(`broadcast to ${N} clients`, () => {
  const ctx = new Ctx();
  let server;
  let members;
  let outsiders;
  before(async () => {
    server = await ctx.server({ flags: ["--client-rooms", "--client-relay"] });
    members = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        ctx.connect(server.url, { transports: [i % 2 ? "websocket" : "polling"] }),
      ),
    );
    await Promise.all(members.map((s) => call(s, "ioswarm:join", "big")));
    outsiders = await Promise.all(
      Array.from({ length: 3 }, () => ctx.connect(server.url, { transports: ["websocket"] })),
    );
  });
  after(() => ctx.cleanup());

  test("admin emit to the room: every member exactly once, outsiders never", { timeout: 30_000 }, async () => {
    const got = members.map((s) => record(s, "fanout"));
    const gotOut = outsiders.map((s) => record(s, "fanout"));
    const res = await server.emit({ rooms: ["big"], event: "fanout", args: ["hello", Buffer.from("x").toString("base64")] });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, { recipients: N });
    await waitFor(() => got.every((g) => g.length >= 1), `all ${N} members receive fanout`, 15_000);
    await sleep(QUIET_MS);
    got.forEach((g, i) => assert.deepEqual(g, [["hello", "eA=="]], `member ${i}`));
    gotOut.forEach((g) => assert.deepEqual(g, []));
  });

  test("client relay to the room: every other member exactly once", { timeout: 30_000 }, async () => {
    const got = members.map((s) => record(s, "relayed"));
    const payload = { seq: 1, blob: Buffer.from([1, 2, 3]) };
    assert.deepEqual(await call(members[0], "ioswarm:to", "big", "relayed", payload), [{ recipients: N - 1 }]);
    await waitFor(() => got.slice(1).every((g) => g.length >= 1), `all ${N - 1} other members receive relayed`, 15_000);
    await sleep(QUIET_MS);
    assert.deepEqual(got[0], []);
    for (const g of got.slice(1)) {
      assert.equal(g.length, 1);
      assert.equal(g[0][0].seq, 1);
      assert.deepEqual([...g[0][0].blob], [1, 2, 3]);
    }
  });

  test("a burst of ordered broadcasts arrives complete and in order", { timeout: 30_000 }, async () => {
    const got = members.map((s) => record(s, "seq"));
    for (let i = 0; i < 20; i++) {
      const res = await server.emit({ rooms: ["big"], event: "seq", args: [i] });
      assert.equal(res.json.recipients, N);
    }
    await waitFor(() => got.every((g) => g.length >= 20), "every member receives 20 packets", 15_000);
    await sleep(QUIET_MS);
    const expected = Array.from({ length: 20 }, (_, i) => [i]);
    got.forEach((g, i) => assert.deepEqual(g, expected, `member ${i}`));
  });
});

// More recipients than one thread flushes at once (the server splits such a broadcast over its
// worker threads): each client still gets every packet once, in the order they were sent.
const WIDE = 300;

describe(`broadcast to ${WIDE} clients`, () => {
  const ctx = new Ctx();
  let server;
  let members;
  before(async () => {
    server = await ctx.server({ flags: ["--client-rooms", "--client-relay"] });
    members = await Promise.all(Array.from({ length: WIDE }, () => ctx.connect(server.url, { transports: ["websocket"] })));
    // Everyone in "wide"; member i also in "pair-i", and so is members[0], the publisher.
    await Promise.all(members.map((s, i) => call(s, "ioswarm:join", i === 0 ? "wide" : ["wide", `pair-${i}`])));
    await call(members[0], "ioswarm:join", members.slice(1).map((_, i) => `pair-${i + 1}`));
  });
  after(() => ctx.cleanup());

  test("a burst relayed without waiting arrives complete and in order, then a direct emit after it", { timeout: 60_000 }, async () => {
    const got = members.map((s) => {
      const events = [];
      s.onAny((event, ...args) => events.push([event, ...args]));
      return events;
    });
    const publisher = members[0];
    for (let i = 0; i < 30; i++) publisher.emit("ioswarm:to", "wide", "seq", i);
    // Then to each member alone (a broadcast too small to split): it must come after the burst.
    for (let i = 1; i < WIDE; i++) publisher.emit("ioswarm:to", `pair-${i}`, "last", "done");
    await waitFor(() => got.slice(1).every((g) => g.length >= 31), `all ${WIDE - 1} members receive 31 packets`, 30_000);
    await sleep(QUIET_MS);
    const expected = [...Array.from({ length: 30 }, (_, i) => ["seq", i]), ["last", "done"]];
    got.slice(1).forEach((g, i) => assert.deepEqual(g, expected, `member ${i + 1}`));
    assert.deepEqual(got[0], [], "the publisher is not in its own broadcast");
  });
});
