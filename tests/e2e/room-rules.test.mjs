// Room rules ([[rooms.rule]] in the --config file): the page's own event names join and leave
// rooms, `allow` globs bound what a client may pick, a socket never captures another socket's id
// room, `when` conditions over the socket data, and invalid rules stopping the node at start.
// ioswarm only: the reference server has no rule table.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, afterEach, before, describe, test } from "node:test";
import { Ctx, QUIET_MS, TARGET, call, record, runToExit, sleep, waitFor, configFiles, ioswarmOnly } from "./harness.mjs";

const T = { timeout: 20_000 };
const { file: configFile } = configFiles("room-rules");

const RULES = `
[[rooms.rule]]
event = "AlertToggle::join"
join = "ROOM::ExtraImportantUpdates"

[[rooms.rule]]
event = "AlertToggle::leave"
leave = "ROOM::ExtraImportantUpdates"

[[rooms.rule]]
event = "chat:join"
join = "{arg0}"
allow = ["chat:*"]

[[rooms.rule]]
event = "chat:leave"
leave = "{arg0}"
allow = ["chat:*"]

[[rooms.rule]]
event = "grab"
join = "{arg0}"
allow = ["*"]

[[rooms.rule]]
event = "follow"
join = "user:{arg0}:public"
allow = ["user:*:public"]
when = "claims.role == 'staff'"

[[rooms.rule]]
event = "me"
join = "user:{sub}"
`;

ioswarmOnly("room rules", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--config", configFile(RULES)] });
  });
  afterEach(() => ctx.resetClients(server));
  after(() => ctx.cleanup());

  async function roomsOf(id) {
    const res = await server.admin("GET", "/v1/sockets?nsp=/");
    return res.json.sockets.find((s) => s.id === id)?.rooms;
  }

  const ALERTS = "ROOM::ExtraImportantUpdates";

  for (const transport of ["polling", "websocket"]) {
    test(`the alert toggle: the page's own events join and leave a fixed room (${transport})`, T, async () => {
      const page = await ctx.connect(server.url, { transports: [transport] });
      const bystander = await ctx.connect(server.url, { transports: [transport] });
      const got = record(page, "alert");
      const missed = record(bystander, "alert");

      assert.deepEqual(await call(page, "AlertToggle::join"), [{ rooms: [ALERTS] }]);
      const sent = await server.emit({ rooms: [ALERTS], event: "alert", args: ["disk full"] });
      assert.deepEqual(sent.json, { recipients: 1 });
      await waitFor(() => got.length === 1, "the alert reaches the page");
      assert.deepEqual(got, [["disk full"]]);

      assert.deepEqual(await call(page, "AlertToggle::leave"), [{ rooms: [] }]);
      const after = await server.emit({ rooms: [ALERTS], event: "alert", args: ["cpu hot"] });
      assert.deepEqual(after.json, { recipients: 0 });
      await sleep(QUIET_MS);
      assert.deepEqual(got, [["disk full"]], "no alert after AlertToggle::leave");
      assert.deepEqual(missed, [], "a socket that never toggled gets nothing");
    });
  }

  test("a page that emits without an ack is joined all the same", T, async () => {
    const page = await ctx.connect(server.url);
    page.emit("AlertToggle::join");
    await waitFor(async () => (await roomsOf(page.id))?.includes(ALERTS), "joined through the rule");
    page.emit("AlertToggle::leave");
    await waitFor(async () => (await roomsOf(page.id))?.length === 0, "left through the rule");
  });

  test("chat:join joins allowed rooms and refuses the others, changing nothing", T, async () => {
    const s = await ctx.connect(server.url);
    assert.deepEqual(await call(s, "chat:join", "chat:lobby"), [{ rooms: ["chat:lobby"] }]);
    assert.deepEqual(await call(s, "chat:join", "admin:secrets"), [{ error: "forbidden" }]);
    assert.deepEqual(await roomsOf(s.id), ["chat:lobby"], "the refused join changed nothing");
    for (const bad of [{ room: "chat:x" }, ["chat:x"], true, ""]) {
      assert.deepEqual(await call(s, "chat:join", bad), [{ error: "forbidden" }], JSON.stringify(bad));
    }
    assert.deepEqual(await call(s, "chat:join", "chat:b"), [{ rooms: ["chat:b", "chat:lobby"] }], "sorted");
    assert.deepEqual(await call(s, "chat:leave", "chat:lobby"), [{ rooms: ["chat:b"] }]);
    assert.deepEqual(await call(s, "chat:leave", "admin:secrets"), [{ error: "forbidden" }]);

    const sent = await server.emit({ rooms: ["admin:secrets"], event: "leak", args: [] });
    assert.deepEqual(sent.json, { recipients: 0 });
  });

  test("no rule lets a socket join another socket's id room", T, async () => {
    const victim = await ctx.connect(server.url);
    const thief = await ctx.connect(server.url);
    const stolen = record(thief, "private");
    assert.deepEqual(await call(thief, "grab", victim.id), [{ error: "forbidden" }]);
    assert.deepEqual(await call(thief, "grab", thief.id), [{ error: "forbidden" }], "not even its own id");
    assert.deepEqual(await call(thief, "grab", "anything-else"), [{ rooms: ["anything-else"] }], "allow = ['*'] works");
    assert.deepEqual(await call(thief, "ioswarm:join", victim.id), [{ error: "forbidden" }], "no --client-rooms");
    const sent = await server.emit({ rooms: [victim.id], event: "private", args: ["for the victim"] });
    assert.deepEqual(sent.json, { recipients: 1 });
    await sleep(QUIET_MS);
    assert.deepEqual(stolen, []);
  });

  test("`when` and data templates refuse sockets without matching data", T, async () => {
    // Nothing sets socket.data yet without [auth] (JWT / connect hook); the positive cases are
    // unit tests in src/rules.
    const s = await ctx.connect(server.url);
    assert.deepEqual(await call(s, "follow", "bob"), [{ error: "forbidden" }]);
    assert.deepEqual(await call(s, "me"), [{ error: "forbidden" }]);
    assert.deepEqual(await roomsOf(s.id), []);
  });

  test("events no rule names keep today's behaviour", T, async () => {
    const s = await ctx.connect(server.url);
    assert.deepEqual(await call(s, "something:else", "x"), []);
    assert.deepEqual(await call(s, "ioswarm:echo", "x"), ["x"]);
  });
});

ioswarmOnly("room rules with --client-rooms", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  test("the built-in ioswarm:join / ioswarm:leave set works beside the rules", T, async () => {
    const server = await ctx.server({ flags: ["--config", configFile(RULES), "--client-rooms"] });
    const s = await ctx.connect(server.url);
    assert.deepEqual(await call(s, "ioswarm:join", ["b", "a"]), [{ rooms: ["a", "b"] }]);
    assert.deepEqual(await call(s, "AlertToggle::join"), [{ rooms: ["ROOM::ExtraImportantUpdates", "a", "b"] }]);
    assert.deepEqual(await call(s, "ioswarm:leave", "a"), [{ rooms: ["ROOM::ExtraImportantUpdates", "b"] }]);
    assert.deepEqual(await call(s, "ioswarm:join", ""), [{ error: "expected a room name or an array of room names" }]);
  });

  test("client_rooms = true in the file enables it too", T, async () => {
    const server = await ctx.server({ flags: ["--config", configFile(`client_rooms = true\n${RULES}`)] });
    const s = await ctx.connect(server.url);
    assert.deepEqual(await call(s, "ioswarm:join", "x"), [{ rooms: ["x"] }]);
    assert.deepEqual(await call(s, "chat:join", "admin:secrets"), [{ error: "forbidden" }]);
  });
});

ioswarmOnly("invalid room rules stop the node at start", () => {
  for (const [name, toml, needle] of [
    ["join and leave in one rule", '[[rooms.rule]]\nevent = "t"\njoin = "r"\nleave = "r"\n', "rooms.rule[0]"],
    ["an unknown rule key", '[[rooms.rule]]\nevent = "t"\njoin = "r"\nroom = "x"\n', "unknown field `room`"],
    ["a template naming an unknown placeholder", '[[rooms.rule]]\nevent = "t"\njoin = "u:{who am i}"\n', "rooms.rule[0].join"],
    ["a bad when", '[[rooms.rule]]\nevent = "t"\njoin = "r"\nwhen = "claims.role = \'x\'"\n', "rooms.rule[0].when"],
    ["an {arg0} room without allow", '[[rooms.rule]]\nevent = "t"\njoin = "{arg0}"\n', "rooms.rule[0].allow"],
    ["a bad allow glob", '[[rooms.rule]]\nevent = "t"\njoin = "{arg0}"\nallow = ["[a-z]"]\n', "rooms.rule[0].allow[0]"],
    ["a reserved event", '[[rooms.rule]]\nevent = "disconnect"\njoin = "r"\n', "rooms.rule[0].event"],
    [
      "a duplicate event",
      '[[rooms.rule]]\nevent = "t"\njoin = "r"\n[[rooms.rule]]\nevent = "t"\nleave = "r"\n',
      "rooms.rule[1].event",
    ],
  ]) {
    test(`${name}`, T, async () => {
      const res = await runToExit(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--config", configFile(toml)]);
      assert.equal(res.signal, null, "the node had to be killed: it did not stop by itself");
      assert.notEqual(res.code, 0);
      assert.doesNotMatch(res.stdout, /ioswarm ready/);
      assert.ok(res.stderr.includes(needle), `stderr does not name ${needle}:\n${res.stderr}`);
    });
  }
});

ioswarmOnly("room rules over JWT claims ([auth] + when + data templates)", () => {
  const ctx = new Ctx();
  afterEach(() => ctx.cleanup());

  test("staff may follow, users may not; {sub} and rooms_on_connect come from the token", T, async () => {
    const { default: jwt } = await import("jsonwebtoken");
    const secret = "rules-secret";
    const file = configFile(
      `[auth]\njwt_secret = "${secret}"\nrooms_on_connect = ["user:{sub}", "org:{org_id}"]\n` +
        `[[rooms.rule]]\nevent = "follow"\njoin = "user:{arg0}:public"\nwhen = "claims.role == 'staff'"\n` +
        `[[rooms.rule]]\nevent = "me"\njoin = "inbox:{sub}"\n`,
    );
    const server = await ctx.server({ flags: ["--config", file] });
    const sign = (claims) => jwt.sign(claims, secret, { algorithm: "HS256", expiresIn: 600 });
    const staff = await ctx.connect(server.url, { auth: { token: sign({ sub: "ann", role: "staff", org_id: 7 }) } });
    const user = await ctx.connect(server.url, { auth: { token: sign({ sub: "bob", role: "user" }) } });
    // rooms_on_connect: org:{org_id} is skipped for bob (no such claim).
    assert.deepEqual(await call(staff, "me"), [{ rooms: ["inbox:ann", "org:7", "user:ann"] }]);
    assert.deepEqual(await call(user, "me"), [{ rooms: ["inbox:bob", "user:bob"] }]);
    assert.deepEqual(await call(staff, "follow", "carl"), [{ rooms: ["inbox:ann", "org:7", "user:ann", "user:carl:public"] }]);
    assert.deepEqual(await call(user, "follow", "carl"), [{ error: "forbidden" }]);
    // What a backend sends to user:ann reaches ann only.
    const annGot = record(staff, "dm");
    const bobGot = record(user, "dm");
    const res = await fetch(`${server.adminUrl}/v1/emit`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ rooms: ["user:ann"], event: "dm", args: ["hi ann"] }),
    });
    assert.equal((await res.json()).recipients, 1);
    await waitFor(() => annGot.length === 1, "ann's message");
    await sleep(QUIET_MS);
    assert.deepEqual(bobGot, []);
  });
});
