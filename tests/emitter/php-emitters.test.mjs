// PHP emitters against the server's Redis ingress: the socket.io 1.x emitter of 2014
// (../php/old-emitter.php: `[packet, opts]` on `socket.io#emitter`, binary as rewritten msgpack
// raw) and today's format (../php/emitter.php: `[uid, packet, opts]` on `socket.io#<nsp>#`), both
// run by Debian's php-cli with php-redis and php-msgpack. socket.io-client 4.8 clients observe.
//
// Needs `php` with the redis and msgpack extensions (.ci/run installs php-cli, php-redis and
// php-msgpack); without them every test here fails.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { Ctx, QUIET_MS, TARGET, WAIT_MS, join, once, record, sleep, waitFor } from "./harness.mjs";

const PHP_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../php");

/**
 * Runs `php <script> <port>` with the JSON list `emits` on stdin (a large binary argument does
 * not fit in argv); resolves with its stdout lines, rejects with its stderr.
 */
function php(script, port, emits) {
  return new Promise((resolve, reject) => {
    const child = execFile(
      "php",
      [path.join(PHP_DIR, script), String(port)],
      { timeout: WAIT_MS, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`php ${script} failed: ${err.message}\n${stderr}`));
        else resolve(stdout.trim().split("\n"));
      },
    );
    child.stdin.end(JSON.stringify(emits));
  });
}

/** Fails (not skips) unless php-cli with phpredis and msgpack-php is installed. */
async function requirePhp() {
  const code = 'exit(extension_loaded("redis") && extension_loaded("msgpack") ? 0 : 1);';
  await new Promise((resolve, reject) =>
    execFile("php", ["-r", code], (err) =>
      err
        ? reject(new Error(`php-cli with the redis and msgpack extensions is required (apt-get install php-cli php-redis php-msgpack): ${err.message}`))
        : resolve(),
    ),
  );
}

const bin = (buf) => ({ $binary: Buffer.from(buf).toString("hex") });

/** `n` bytes that are not UTF-8 and hold neither 0xda nor 0xdb (which the old emitter corrupts). */
function binary(n, seed = 0) {
  return Buffer.from(Array.from({ length: n }, (_, i) => 0x80 | ((i + seed) % 0x50)));
}

/** The value of `ioswarm_emitter_messages_total{result=...}` on the server's /metrics. */
async function emitterCount(server, result) {
  const res = await fetch(server.adminUrl + "/metrics", { signal: AbortSignal.timeout(WAIT_MS) });
  const line = (await res.text())
    .split("\n")
    .find((l) => l.startsWith("ioswarm_emitter_messages_total{") && l.includes(`result="${result}"`));
  return line ? Number(line.split(" ").pop()) : 0;
}

/** Shared set-up: a server, two clients of `/` (the first in room r1) and one of `/chat`. */
function setup(t) {
  const s = {};
  before(async () => {
    await requirePhp();
    s.server = await t.server();
    s.a = await t.connect(s.server);
    s.b = await t.connect(s.server);
    s.chat = await t.connect(s.server, "/chat");
    await join(s.a, "r1");
  });
  after(() => t.cleanup());
  return s;
}

/**
 * Emits `probe` through `script` until `socket` receives one (the reference server's adapter
 * subscribes asynchronously; ioswarm executes every PUBLISH at once).
 */
async function probe(script, server, socket, extra = {}) {
  let got = false;
  const handler = () => {
    got = true;
  };
  socket.on("ioswarm-test:probe", handler);
  try {
    const deadline = Date.now() + WAIT_MS;
    while (!got) {
      if (Date.now() > deadline) throw new Error(`the probe of ${script} never reached the client`);
      await php(script, server.redis.port, [{ event: "ioswarm-test:probe", ...extra }]);
      await sleep(50);
    }
  } finally {
    await sleep(100);
    socket.off("ioswarm-test:probe", handler);
  }
}

// socket.io-redis 8 no longer reads `socket.io#emitter`, so the reference server cannot run these.
for (const packer of [
  { name: "msgpack-php without str 8 (2014)", str8: false },
  { name: "msgpack-php with str 8", str8: true },
]) {
  (TARGET === "ioswarm" ? describe : () => {})(`socket.io 1.x PHP emitter, ${packer.name}`, () => {
    const t = new Ctx();
    const s = setup(t);
    const emit = (...emits) => php("old-emitter.php", s.server.redis.port, emits.map((e) => ({ str8: packer.str8, ...e })));

    test("a text event reaches every client of the namespace", async () => {
      const got = Promise.all([once(s.a, "news"), once(s.b, "news")]);
      const chat = record(s.chat, "news");
      const [hex] = await emit({ event: "news", args: ["hello", 1, 2.5, { x: [true, null] }, "t".repeat(40)] });
      // The message really is the 2014 shape: a two-element array, no uid.
      assert.equal(hex.slice(0, 2), "92");
      for (const args of await got) assert.deepEqual(args, ["hello", 1, 2.5, { x: [true, null] }, "t".repeat(40)]);
      await sleep(QUIET_MS);
      assert.deepEqual(chat, []);
    });

    test("in(room) reaches the room only", async () => {
      const gotB = record(s.b, "ev");
      const got = once(s.a, "ev");
      await emit({ event: "ev", rooms: ["r1"], args: ["to r1"] });
      assert.deepEqual(await got, ["to r1"]);
      await sleep(QUIET_MS);
      assert.deepEqual(gotB, []);
    });

    test("binary arguments arrive as Buffers with their bytes, text as text", async () => {
      const short = Buffer.from([0x80, 0xff, 0x00, 0x01, 0xfe]);
      const [b40, b300, b70k] = [binary(40), binary(300, 3), binary(70_000, 5)];
      const long = "a text of more than thirty-two bytes, é";
      const got = Promise.all([once(s.a, "file"), once(s.b, "file")]);
      const [hex] = await emit({ event: "file", args: [bin(short), long, bin(b40), bin(b300), 7, bin(b70k)] });
      // Rewritten: raw 16 (0xda) became 0xd8, raw 32 (0xdb) 0xd9.
      const msg = Buffer.from(hex, "hex");
      assert.ok(msg.includes(0xd8) && !msg.includes(0xda) && !msg.includes(0xdb), hex.slice(0, 80));
      for (const args of await got) {
        assert.equal(args.length, 6);
        for (const i of [0, 2, 3, 5]) assert.ok(Buffer.isBuffer(args[i]), `arg ${i} is ${typeof args[i]}`);
        assert.deepEqual([args[0], args[2], args[3], args[5]], [short, b40, b300, b70k]);
        assert.deepEqual([args[1], args[4]], [long, 7]);
      }
    });

    test("of(namespace) reaches that namespace only, with or without its leading slash", async () => {
      const root = [record(s.a, "nsp"), record(s.b, "nsp")];
      for (const nsp of ["/chat", "chat"]) {
        const got = once(s.chat, "nsp");
        await emit({ event: "nsp", nsp, args: [nsp, bin([0x90, 0x91])] });
        const [name, buf] = await got;
        assert.deepEqual([name, buf], [nsp, Buffer.from([0x90, 0x91])]);
      }
      await sleep(QUIET_MS);
      assert.deepEqual(root, [[], []]);
    });

    test("no nsp (the first versions), a custom key and flags reach `/`", async () => {
      const chat = record(s.chat, "plain");
      const got = once(s.a, "plain");
      await emit({ event: "plain", nsp: null, args: ["no nsp"] });
      assert.deepEqual(await got, ["no nsp"]);
      const keyed = once(s.b, "keyed");
      await emit({ event: "keyed", key: "myapp", flags: ["broadcast", "json"], args: [{ k: "v" }] });
      assert.deepEqual(await keyed, [{ k: "v" }]);
      await sleep(QUIET_MS);
      assert.deepEqual(chat, []);
    });

    test("garbage on socket.io#emitter is counted as invalid; the server keeps serving", async () => {
      const before = await emitterCount(s.server, "invalid");
      const raw = await t.redisClient(s.server, "ioredis 5");
      for (const payload of [Buffer.from("not msgpack"), Buffer.from([0x92, 0xc1]), Buffer.from([0x92, 0xa1, 0x78, 0x80])]) {
        await raw.publish("socket.io#emitter", payload);
      }
      await waitFor(async () => (await emitterCount(s.server, "invalid")) >= before + 3, "3 more invalid messages");
      const got = once(s.a, "survived");
      await emit({ event: "survived", args: [1] });
      assert.deepEqual(await got, [1]);
      assert.ok(s.server.alive);
    });
  });
}

describe("PHP emitter of today's format", () => {
  const t = new Ctx();
  const s = setup(t);
  const emit = (...emits) => php("emitter.php", s.server.redis.port, emits);

  before(async () => {
    await probe("emitter.php", s.server, s.a);
    await probe("emitter.php", s.server, s.chat, { nsp: "/chat" });
  });

  test("a text event reaches every client of the namespace", async () => {
    const got = Promise.all([once(s.a, "news"), once(s.b, "news")]);
    const chat = record(s.chat, "news");
    const [line] = await emit({ event: "news", args: ["hello", 1, 2.5, { x: [true, null] }, "t".repeat(40)] });
    assert.ok(line.startsWith("socket.io#/# 93"), line.slice(0, 40));
    for (const args of await got) assert.deepEqual(args, ["hello", 1, 2.5, { x: [true, null] }, "t".repeat(40)]);
    await sleep(QUIET_MS);
    assert.deepEqual(chat, []);
  });

  test("to(room) publishes on the room's channel and reaches the room only", async () => {
    const gotB = record(s.b, "ev");
    const got = once(s.a, "ev");
    const [line] = await emit({ event: "ev", rooms: ["r1"], args: ["to r1"] });
    assert.ok(line.startsWith("socket.io#/#r1# "), line.slice(0, 40));
    assert.deepEqual(await got, ["to r1"]);
    await sleep(QUIET_MS);
    assert.deepEqual(gotB, []);
  });

  test("except skips the room", async () => {
    const gotA = record(s.a, "but");
    const got = once(s.b, "but");
    await emit({ event: "but", except: ["r1"], args: [] });
    assert.deepEqual(await got, []);
    await sleep(QUIET_MS);
    assert.deepEqual(gotA, []);
  });

  // msgpack-php has no `bin`: the bytes travel as a str that is not UTF-8, which ioswarm turns
  // into a binary attachment and socket.io-redis (notepack) into a mangled string.
  (TARGET === "ioswarm" ? test : () => {})("binary arguments arrive as Buffers with their bytes", async () => {
    const [b5, b300, b70k] = [Buffer.from([0x80, 0xff, 0x00, 0xda, 0xdb]), binary(300), binary(70_000, 1)];
    const got = once(s.a, "file");
    await emit({ event: "file", args: [bin(b5), "name.bin", bin(b300), bin(b70k)] });
    const args = await got;
    for (const i of [0, 2, 3]) assert.ok(Buffer.isBuffer(args[i]), `arg ${i} is ${typeof args[i]}`);
    assert.deepEqual(args, [b5, "name.bin", b300, b70k]);
  });

  test("of(namespace) reaches that namespace only", async () => {
    const root = record(s.a, "nsp");
    const got = once(s.chat, "nsp");
    await emit({ event: "nsp", nsp: "/chat", args: ["chat"] });
    assert.deepEqual(await got, ["chat"]);
    await sleep(QUIET_MS);
    assert.deepEqual(root, []);
  });
});
