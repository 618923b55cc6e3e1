// Presence ([[presence]] in the TOML config): live counts a node derives from its sockets,
// readable with GET on the Redis port and GET /v1/presence, and announced to pages. The
// multi-node behaviour (sums over nodes, a killed node leaving the counts) is in
// cluster-tests/tests/presence.rs.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, afterEach, describe, test } from "node:test";
import jwt from "jsonwebtoken";
import { Ctx, TARGET, call, connected, record, runToExit, waitFor, WAIT_MS, ioswarmOnly } from "./harness.mjs";

const T = { timeout: 30_000 };

/** Sends one command over RESP2 on a fresh connection and returns the raw reply. */
export function redisRaw(port, args, host = "127.0.0.1") {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, host);
    let got = "";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no reply to ${args.join(" ")}: ${JSON.stringify(got)}`));
    }, WAIT_MS);
    socket.on("error", reject);
    socket.on("data", (d) => {
      got += d.toString("utf8");
      // One complete reply: a line, or a bulk string with its body.
      const bulk = /^\$(-?\d+)\r\n/.exec(got);
      if ((bulk && (bulk[1] === "-1" || got.length >= bulk[0].length + Number(bulk[1]) + 2)) || (!bulk && got.endsWith("\r\n"))) {
        clearTimeout(timer);
        socket.end();
        resolve(got);
      }
    });
    socket.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join("")}`);
  });
}

ioswarmOnly("presence (single node)", () => {
  const ctx = new Ctx();
  const dir = mkdtempSync(path.join(tmpdir(), "ioswarm-presence-"));
  afterEach(() => ctx.cleanup());
  after(() => rmSync(dir, { recursive: true, force: true }));

  function config(name, text) {
    const file = path.join(dir, name);
    writeFileSync(file, text);
    return file;
  }

  test("users:count follows the connected sockets: GET, /v1/presence and the page event", T, async () => {
    const file = config(
      "count.toml",
      ['client_rooms = true', "[[presence]]", 'key = "users:count"', 'event = "users:count"', ""].join("\n"),
    );
    const server = await ctx.server({ flags: ["--config", file] });
    const port = server.redis.port;
    assert.equal(await redisRaw(port, ["GET", "users:count"]), "$1\r\n0\r\n");
    const first = await ctx.connect(server.url, { transports: ["websocket"] });
    const seen = record(first, "users:count");
    const others = [];
    for (let i = 0; i < 4; i++) others.push(await ctx.connect(server.url, { transports: i % 2 ? ["polling"] : ["websocket"] }));
    await waitFor(async () => (await redisRaw(port, ["GET", "users:count"])) === "$1\r\n5\r\n", "GET users:count = 5");
    await waitFor(() => seen.length > 0 && seen.at(-1)[0] === 5, "the page was told 5");
    const res = await fetch(`${server.adminUrl}/v1/presence?key=users:count`);
    assert.deepEqual(await res.json(), { key: "users:count", value: 5 });
    others[0].disconnect();
    others[1].disconnect();
    await waitFor(async () => (await redisRaw(port, ["GET", "users:count"])) === "$1\r\n3\r\n", "GET users:count = 3");
    await waitFor(() => seen.at(-1)[0] === 3, "the page was told 3");
    // Bursts coalesce: at most max_rate_per_s (10) announcements a second, and the last one is the value.
    assert.ok(seen.length <= 10, `${seen.length} announcements`);
    assert.deepEqual(await redisRaw(port, ["TTL", "users:count"]), ":-1\r\n");
    assert.deepEqual(await redisRaw(port, ["EXISTS", "users:count"]), ":1\r\n");
    // Kept by ioswarm only: an app's leftover INCR shows up as an error.
    assert.match(await redisRaw(port, ["INCR", "users:count"]), /^-ERR 'users:count' is a presence key/);
    // Other keys are the ordinary store.
    assert.equal(await redisRaw(port, ["SET", "other", "x"]), "+OK\r\n");
    assert.equal(await redisRaw(port, ["GET", "other"]), "$1\r\nx\r\n");
  });

  test("a room pattern keeps one key per room, and /v1/presence lists who is in it", T, async () => {
    const file = config(
      "rooms.toml",
      [
        "client_rooms = true",
        "[[presence]]",
        'key = "room-users"',
        'room = "ROOM::*"',
        'event = "room-users"',
        "max_rate_per_s = 5",
        "",
      ].join("\n"),
    );
    const server = await ctx.server({ flags: ["--config", file] });
    const port = server.redis.port;
    const a = [await ctx.connect(server.url), await ctx.connect(server.url)];
    const b = await ctx.connect(server.url);
    const outside = await ctx.connect(server.url);
    const told = record(a[0], "room-users");
    const toldOutside = record(outside, "room-users");
    for (const s of a) await call(s, "ioswarm:join", "ROOM::a");
    await call(b, "ioswarm:join", ["ROOM::b", "other"]);
    await waitFor(async () => (await redisRaw(port, ["GET", "room-users:ROOM::a"])) === "$1\r\n2\r\n", "ROOM::a = 2");
    assert.equal(await redisRaw(port, ["GET", "room-users:ROOM::b"]), "$1\r\n1\r\n");
    assert.equal(await redisRaw(port, ["GET", "room-users:ROOM::empty"]), "$1\r\n0\r\n");
    assert.equal(await redisRaw(port, ["GET", "room-users:other"]), "$-1\r\n", "not a presence key: the ordinary store");
    const res = await (await fetch(`${server.adminUrl}/v1/presence?key=room-users:ROOM::a`)).json();
    assert.equal(res.value, 2);
    assert.equal(res.room, "ROOM::a");
    assert.deepEqual(res.sockets.map((s) => s.id).sort(), a.map((s) => s.id).sort());
    await waitFor(() => told.length > 0 && told.at(-1)[0] === 2, "members of ROOM::a told 2");
    assert.deepEqual(toldOutside, [], "a socket in no counted room is told nothing");
    const all = await (await fetch(`${server.adminUrl}/v1/presence`)).json();
    assert.deepEqual(all.values, { "room-users:ROOM::a": 2, "room-users:ROOM::b": 1 });
  });

  test("a page whose arrival leaves the value unchanged is told it too (a second tab of one user)", T, async () => {
    const secret = "presence-test-secret";
    const file = config(
      "unique.toml",
      [
        "[auth]",
        `jwt_secret = "${secret}"`,
        "[[presence]]",
        'key = "users:online"',
        'unique = "sub"',
        'event = "users:online"',
        "[[presence]]",
        'key = "watching"',
        'room = "doc:*"',
        'unique = "sub"',
        'event = "watching"',
        "",
      ].join("\n"),
    );
    const server = await ctx.server({ flags: ["--config", file, "--client-rooms"] });
    const as = (sub) => ({ auth: { token: jwt.sign({ sub, exp: Math.floor(Date.now() / 1000) + 600 }, secret) } });
    /** A client that records `event` from its first packet on. */
    async function tab(sub, event) {
      const socket = ctx.client(server.url, as(sub));
      const seen = record(socket, event);
      await connected(socket);
      return { socket, seen };
    }
    const first = await tab("42", "users:online");
    await waitFor(() => first.seen.at(-1)?.[0] === 1, "the first tab was told 1");
    // The same user in a second tab: still one user online, and the new tab is told so.
    const second = await tab("42", "users:online");
    await waitFor(() => second.seen.length > 0, "the second tab was told the count");
    assert.deepEqual(second.seen, [[1]]);
    assert.deepEqual(first.seen, [[1]], "the first tab is not told again");

    // Rooms alike: the user joins doc:1 in both tabs; the second join changes nothing.
    const watching = [record(first.socket, "watching"), record(second.socket, "watching")];
    await call(first.socket, "ioswarm:join", "doc:1");
    await waitFor(() => watching[0].length > 0, "the first tab was told who watches doc:1");
    await call(second.socket, "ioswarm:join", "doc:1");
    await waitFor(() => watching[1].length > 0, "the second tab was told who watches doc:1");
    assert.deepEqual(watching, [[[1]], [[1]]]);
  });

  test("without [[presence]] the keys are ordinary and /v1/presence is 404", T, async () => {
    const server = await ctx.server();
    await ctx.connect(server.url);
    assert.equal(await redisRaw(server.redis.port, ["GET", "users:count"]), "$-1\r\n");
    assert.equal((await fetch(`${server.adminUrl}/v1/presence`)).status, 404);
  });

  test("invalid [[presence]] entries stop the node, naming the setting", T, async () => {
    for (const [text, field] of [
      ['[[presence]]\nkey = "a b"\n', "presence[0].key"],
      ['[[presence]]\nkey = "k"\nmax_rate_per_s = 0\n', "presence[0].max_rate_per_s"],
      ['[[presence]]\nkey = "k"\nevent = "disconnect"\n', "presence[0].event"],
      ['[[presence]]\nkey = "k"\n[[presence]]\nkey = "k"\n', "presence[1].key"],
      ['[[presence]]\nkey = "k"\nbogus = 1\n', "bogus"],
    ]) {
      const file = config(`bad-${field}.toml`, text);
      const res = await runToExit(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config", file]);
      assert.notEqual(res.code, 0, text);
      assert.ok(res.stderr.includes(field), `${field} not named in:\n${res.stderr}`);
    }
  });
});
