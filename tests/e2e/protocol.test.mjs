// Wire-level checks with raw HTTP long-polling and raw WebSockets (no socket.io client): what any
// Engine.IO v4 / Socket.IO v5 client implementation observes on the wire.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { Ctx, call, ioswarmOnly, sleep, waitFor, WAIT_MS } from "./harness.mjs";

const T = { timeout: 20_000 };
const SEP = "\x1e";

async function get(url, init = {}) {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(WAIT_MS) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text };
}

/** Raw long-polling Engine.IO session. */
class Polling {
  constructor(base) {
    this.base = base;
  }
  async open() {
    const res = await get(`${this.base}/socket.io/?EIO=4&transport=polling`);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.text[0], "0", `expected open packet, got ${res.text}`);
    this.handshake = JSON.parse(res.text.slice(1));
    this.sid = this.handshake.sid;
    this.openResponse = res;
    return this;
  }
  url() {
    return `${this.base}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(this.sid)}`;
  }
  async send(...packets) {
    const res = await get(this.url(), {
      method: "POST",
      body: packets.join(SEP),
      headers: { "content-type": "text/plain;charset=UTF-8" },
    });
    return res;
  }
  /** One GET; returns the packets of the payload. */
  async poll() {
    const res = await get(this.url());
    assert.equal(res.status, 200, `poll failed: ${res.status} ${res.text}`);
    return res.text.split(SEP);
  }
  /** GETs until `pred(packet)` matched, skipping pings (answered) and noops. */
  async pollUntil(pred, limit = 10) {
    const seen = [];
    for (let i = 0; i < limit; i++) {
      for (const p of await this.poll()) {
        seen.push(p);
        if (p === "2") await this.send("3");
        if (pred(p)) return { packet: p, seen };
      }
    }
    throw new Error(`no matching packet; saw ${JSON.stringify(seen)}`);
  }
}

/** Raw WebSocket Engine.IO connection; collects text messages. */
function openWs(base, sid) {
  const url = `${base.replace(/^http/, "ws")}/socket.io/?EIO=4&transport=websocket${sid ? `&sid=${sid}` : ""}`;
  const ws = new WebSocket(url);
  const messages = [];
  const waiters = [];
  ws.closed = new Promise((resolve) => ws.on("close", (code) => resolve(code)));
  ws.on("error", () => {});
  ws.on("message", (data, isBinary) => {
    const m = isBinary ? data : data.toString();
    messages.push(m);
    for (const w of [...waiters]) w();
  });
  ws.opened = new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  /** Resolves with the next message matching `pred` (answering pings). */
  ws.next = (pred = () => true, ms = WAIT_MS) =>
    new Promise((resolve, reject) => {
      const check = () => {
        while (messages.length) {
          const m = messages.shift();
          if (m === "2") ws.send("3");
          if (pred(m)) {
            waiters.splice(waiters.indexOf(check), 1);
            clearTimeout(timer);
            resolve(m);
            return;
          }
        }
      };
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(check), 1);
        reject(new Error(`no matching websocket message within ${ms} ms`));
      }, ms);
      waiters.push(check);
      check();
    });
  return ws;
}

async function closedWithin(ws, ms) {
  const code = await Promise.race([ws.closed, sleep(ms).then(() => "open")]);
  return code !== "open";
}

describe("Engine.IO handshake and errors", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    // Without Engine.IO 3 (accepted by default: eio3.test.mjs), so that EIO=3 gets code 5.
    server = await ctx.server({ flags: ["--max-payload", "2000", "--allow-eio3=false"] });
  });
  after(() => ctx.cleanup());

  test("polling handshake: open packet, content type", T, async () => {
    const p = await new Polling(server.url).open();
    assert.deepEqual(Object.keys(p.handshake).sort(), ["maxPayload", "pingInterval", "pingTimeout", "sid", "upgrades"]);
    assert.equal(typeof p.handshake.sid, "string");
    assert.deepEqual(p.handshake.upgrades, ["websocket"]);
    assert.equal(p.handshake.pingInterval, 25000);
    assert.equal(p.handshake.pingTimeout, 20000);
    assert.equal(p.handshake.maxPayload, 2000);
    assert.match(p.openResponse.headers.get("content-type"), /^text\/plain; ?charset=utf-8$/i);
  });

  test("websocket handshake: open packet without upgrades", T, async () => {
    const ws = openWs(server.url);
    const open = await ws.next();
    assert.equal(open[0], "0");
    const h = JSON.parse(open.slice(1));
    assert.deepEqual(h.upgrades, []);
    assert.equal(h.maxPayload, 2000);
    ws.close();
  });

  for (const [name, query, init, code, message, status] of [
    ["an unsupported EIO version", "EIO=3&transport=polling", {}, 5, "Unsupported protocol version", 400],
    ["an unknown transport", "EIO=4&transport=carrier-pigeon", {}, 0, "Transport unknown", 400],
    ["an unknown sid", "EIO=4&transport=polling&sid=does-not-exist", {}, 1, "Session ID unknown", 400],
    ["a POST handshake", "EIO=4&transport=polling", { method: "POST", body: "40" }, 2, "Bad handshake method", 400],
  ]) {
    test(`${name} is rejected with code ${code}`, T, async () => {
      const res = await get(`${server.url}/socket.io/?${query}`, init);
      assert.equal(res.status, status, res.text);
      assert.match(res.headers.get("content-type") ?? "", /^application\/json/);
      assert.deepEqual(JSON.parse(res.text), { code, message });
    });
  }

  test("a POST over --max-payload is answered 413", T, async () => {
    const p = await new Polling(server.url).open();
    const res = await p.send(`4${"x".repeat(4000)}`);
    assert.equal(res.status, 413);
  });
});

describe("Socket.IO over raw transports", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--namespaces", "/,/custom"] });
  });
  after(() => ctx.cleanup());

  test("polling: CONNECT reply carries only a sid different from the Engine.IO sid", T, async () => {
    const p = await new Polling(server.url).open();
    assert.equal((await p.send("40")).text, "ok");
    const { packet } = await p.pollUntil((x) => x.startsWith("40"));
    const data = JSON.parse(packet.slice(2));
    assert.deepEqual(Object.keys(data), ["sid"]);
    assert.notEqual(data.sid, p.sid);
  });

  test("polling: several packets in one POST are all processed; acks keep numbers as sent", T, async () => {
    const p = await new Polling(server.url).open();
    // Events may only follow once the namespace CONNECT was answered.
    await p.send("40");
    await p.pollUntil((x) => x.startsWith("40"));
    await p.send('421["ioswarm:echo",1,2.5,100,"a\\u001eb"]', '422["ioswarm:echo",{"k":[true,null]}]');
    const { seen } = await p.pollUntil((x) => x.startsWith("432"));
    assert.ok(seen.includes('431[1,2.5,100,"a\\u001eb"]') || seen.includes('431[1,2.5,100,"a\u001eb"]'), JSON.stringify(seen));
    assert.ok(seen.includes('432[{"k":[true,null]}]'), JSON.stringify(seen));
  });

  test("polling: a binary ack comes back as a base64 packet", T, async () => {
    const p = await new Polling(server.url).open();
    // BINARY_EVENT with one attachment, sent as a `b<base64>` polling packet.
    await p.send("40");
    await p.pollUntil((x) => x.startsWith("40"));
    await p.send('451-7["ioswarm:echo",{"_placeholder":true,"num":0}]', `b${Buffer.from([1, 2, 3]).toString("base64")}`);
    const { seen } = await p.pollUntil((x) => x.startsWith("b"));
    const header = seen.find((x) => x.startsWith("461-7"));
    assert.ok(header, JSON.stringify(seen));
    assert.deepEqual(JSON.parse(header.slice("461-7".length)), [{ _placeholder: true, num: 0 }]);
    assert.deepEqual([...Buffer.from(seen[seen.indexOf(header) + 1].slice(1), "base64")], [1, 2, 3]);
  });

  test("websocket: binary attachments are raw binary frames", T, async () => {
    const ws = openWs(server.url);
    await ws.next((m) => m[0] === "0");
    ws.send("40/custom,");
    await ws.next((m) => typeof m === "string" && m.startsWith("40/custom,"));
    ws.send('451-/custom,9["ioswarm:echo","x",{"_placeholder":true,"num":0}]');
    ws.send(Buffer.from([0xde, 0xad]));
    const header = await ws.next((m) => typeof m === "string" && m.startsWith("461-"));
    assert.equal(header, '461-/custom,9["x",{"_placeholder":true,"num":0}]');
    const att = await ws.next();
    assert.ok(Buffer.isBuffer(att));
    assert.deepEqual([...att], [0xde, 0xad]);
    ws.close();
  });

  test("unknown namespace: CONNECT_ERROR and the connection stays open", T, async () => {
    const ws = openWs(server.url);
    await ws.next((m) => m[0] === "0");
    ws.send("40/nope,");
    assert.equal(await ws.next((m) => m.startsWith("44")), '44/nope,{"message":"Invalid namespace"}');
    ws.send("40");
    assert.match(await ws.next((m) => m.startsWith("40")), /^40\{"sid":"[^"]+"\}$/);
    ws.close();
  });

  test("41 leaves the namespace but keeps the Engine.IO connection", T, async () => {
    const ws = openWs(server.url);
    await ws.next((m) => m[0] === "0");
    ws.send("40");
    await ws.next((m) => m.startsWith("40"));
    ws.send("41");
    assert.equal(await closedWithin(ws, 500), false);
    ws.send("40");
    await ws.next((m) => m.startsWith("40"));
    ws.close();
  });

  for (const bad of ["4abc", '42{}', '42abc["x"]', "42[]", '42[{"not":"a name"}]', "40"]) {
    test(`an invalid packet ${JSON.stringify(bad)} closes the connection`, T, async () => {
      const ws = openWs(server.url);
      await ws.next((m) => m[0] === "0");
      ws.send("40");
      await ws.next((m) => m.startsWith("40"));
      ws.send(bad);
      assert.equal(await closedWithin(ws, 3000), true, "connection still open");
    });
  }
});

describe("Engine.IO timers", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({
      flags: ["--ping-interval-ms", "300", "--ping-timeout-ms", "200", "--connect-timeout-ms", "500"],
    });
  });
  after(() => ctx.cleanup());

  test("a client that never answers pings is dropped", T, async () => {
    const p = await new Polling(server.url).open();
    await p.send("40");
    // Never answer: the session must be gone after pingInterval + pingTimeout.
    await sleep(1200);
    const res = await get(p.url());
    if (res.status === 200) {
      // A response queued before the close may still be delivered once; then the session is gone.
      const again = await get(p.url());
      assert.equal(again.status, 400, `session still alive: ${again.text}`);
    } else {
      assert.equal(res.status, 400);
    }
  });

  test("a websocket that answers pings stays open", T, async () => {
    const ws = openWs(server.url);
    await ws.next((m) => m[0] === "0");
    ws.send("40");
    await ws.next((m) => m.startsWith("40"));
    let pings = 0;
    const deadline = Date.now() + 1200;
    while (Date.now() < deadline) {
      try {
        await ws.next((m) => m === "2", deadline - Date.now());
        pings++;
      } catch {
        break;
      }
    }
    assert.ok(pings >= 2, `got ${pings} pings`);
    assert.equal(await closedWithin(ws, 10), false);
    ws.close();
  });

  test("a connection without a Socket.IO CONNECT is closed after --connect-timeout-ms", T, async () => {
    const ws = openWs(server.url);
    await ws.next((m) => m[0] === "0");
    // Keep answering pings so only the connect timeout can close it.
    ws.next((m) => false, 3000).catch(() => {});
    assert.equal(await closedWithin(ws, 2500), true, "still open after 2.5 s with a 500 ms connect timeout");
  });
});

/**
 * A polling client connected to `/` with a GET parked, then a WebSocket that probed the upgrade
 * (`2probe` answered `3probe`) but has not sent `5`. Returns the polling client `p`, the probing
 * `ws`, the parked GET `pending` and the socket id `sid`.
 */
async function probed(server) {
  const p = await new Polling(server.url).open();
  await p.send("40");
  const { packet } = await p.pollUntil((x) => x.startsWith("40"));
  const sid = JSON.parse(packet.slice(2)).sid;
  const pending = get(p.url()); // parked GET
  await sleep(100);
  const ws = openWs(server.url, p.sid);
  await ws.opened;
  ws.send("2probe");
  assert.equal(await ws.next(), "3probe");
  return { p, ws, pending, sid };
}

describe("polling to websocket upgrade", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server();
  });
  after(() => ctx.cleanup());

  test("probe, noop for the pending poll, upgrade, then polling is refused", T, async () => {
    const { p, ws, pending } = await probed(server);
    const parked = await pending;
    assert.equal(parked.status, 200);
    assert.equal(parked.text, "6");
    ws.send("5");
    await sleep(100);
    ws.send('421["ioswarm:echo","upgraded"]');
    assert.equal(await ws.next((m) => m.startsWith("43")), '431["upgraded"]');
    const after = await get(p.url());
    assert.equal(after.status, 400);
    ws.close();
  });
});

// The admin API closes the connection; the reference server has no admin API.
ioswarmOnly("a server close during a polling to websocket upgrade", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server();
  });
  after(() => ctx.cleanup());

  test("a server close during the upgrade: the client still gets the DISCONNECT, on the new WebSocket", T, async () => {
    const { ws, pending, sid } = await probed(server);
    assert.equal((await pending).text, "6");
    // The application closes the connection while the client pauses polling to upgrade.
    const res = await server.admin("POST", "/v1/sockets/disconnect", { nsp: "/", rooms: [sid], close: true });
    assert.equal(res.json.affected, 1, res.text);
    ws.send("5");
    assert.equal(await ws.next((m) => m.startsWith("41")), "41");
    assert.equal(await closedWithin(ws, 3000), true, "the WebSocket closes after the DISCONNECT");
  });
});

describe("polling misuse", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server();
  });
  after(() => ctx.cleanup());

  test("a second concurrent GET is refused and closes the session", T, async () => {
    const p = await new Polling(server.url).open();
    await p.send("40");
    await p.pollUntil((x) => x.startsWith("40"));
    const first = get(p.url());
    await sleep(100);
    const second = await get(p.url());
    assert.equal(second.status, 400);
    const firstRes = await first;
    // The parked GET is answered (with a close packet) and the session is gone.
    assert.equal(firstRes.status, 200);
    assert.ok(firstRes.text.split(SEP).includes("1"), `expected a close packet, got ${JSON.stringify(firstRes.text)}`);
    assert.equal((await get(p.url())).status, 400);
  });
});

describe("upgrade edge cases", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server({ flags: ["--upgrade-timeout-ms", "300"] });
  });
  after(() => ctx.cleanup());

  test("an upgrade that never completes is dropped after --upgrade-timeout-ms; polling goes on", T, async () => {
    const p = await new Polling(server.url).open();
    await p.send("40");
    await p.pollUntil((x) => x.startsWith("40"));
    const ws = openWs(server.url, p.sid);
    await ws.opened;
    ws.send("2probe");
    assert.equal(await ws.next(), "3probe");
    // Never send "5".
    assert.equal(await closedWithin(ws, 3000), true, "probe websocket still open");
    await p.send('421["ioswarm:echo","still polling"]');
    const { packet } = await p.pollUntil((x) => x.startsWith("43"));
    assert.equal(packet, '431["still polling"]');
  });

  test("a second websocket for an upgraded session is closed; the first keeps working", T, async () => {
    const p = await new Polling(server.url).open();
    await p.send("40");
    await p.pollUntil((x) => x.startsWith("40"));
    const ws = openWs(server.url, p.sid);
    await ws.opened;
    ws.send("2probe");
    assert.equal(await ws.next(), "3probe");
    ws.send("5");
    await sleep(100);
    const intruder = openWs(server.url, p.sid);
    intruder.opened.catch(() => {});
    assert.equal(await closedWithin(intruder, 3000), true, "second websocket still open");
    ws.send('421["ioswarm:echo","first"]');
    assert.equal(await ws.next((m) => m.startsWith("43")), '431["first"]');
    ws.close();
  });
});

describe("limits and slow consumers", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  test("a websocket message over --max-payload closes that connection only", T, async () => {
    const server = await ctx.server({ flags: ["--max-payload", "2000"] });
    const other = await ctx.connect(server.url, { transports: ["websocket"] });
    const big = await ctx.connect(server.url, { transports: ["websocket"] });
    const reason = new Promise((resolve) => big.once("disconnect", resolve));
    big.emit("ioswarm:echo", "x".repeat(5000));
    assert.match(await Promise.race([reason, sleep(3000).then(() => "still connected")]), /^transport (close|error)$/);
    assert.deepEqual(await call(other, "ioswarm:echo", "fine"), ["fine"]);
  });

  test("a client that stops reading does not stall broadcasts to the others", { timeout: 30_000 }, async () => {
    const server = await ctx.server({ flags: ["--client-rooms"] });
    // Raw websocket client that joins the room and then stops reading from its socket.
    const slow = openWs(server.url);
    await slow.next((m) => m[0] === "0");
    slow.send("40");
    await slow.next((m) => m.startsWith("40"));
    slow.send('421["ioswarm:join","hot"]');
    await slow.next((m) => m.startsWith("431"));
    slow._socket.pause();

    const fast = [];
    for (const transport of ["websocket", "polling", "websocket"]) {
      const s = await ctx.connect(server.url, { transports: [transport] });
      await call(s, "ioswarm:join", "hot");
      fast.push(s);
    }
    const counts = fast.map(() => 0);
    fast.forEach((s, i) => s.on("flood", () => counts[i]++));
    const blob = "y".repeat(16 * 1024);
    const total = 300; // ~5 MB per client
    for (let i = 0; i < total; i++) {
      const res = await server.emit({ rooms: ["hot"], event: "flood", args: [i, blob] });
      assert.equal(res.status, 200);
    }
    await waitFor(() => counts.every((c) => c === total), `every reading client receives ${total} packets (got ${counts})`, 20_000);
    slow.terminate();
  });
});
