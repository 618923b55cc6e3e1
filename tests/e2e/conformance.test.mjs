// Cases of the upstream protocol test suites that depend on how the server times its writes,
// read the way those suites read, against the server they expect (examples/conformance.rs) on a
// free port.
//
// The server under test: target/debug/examples/conformance next to $IOSWARM_BIN (build it with
// `cargo build --example conformance`), or $CONFORMANCE_BIN; with IOSWARM_E2E_TARGET=reference
// the same endpoints on socket.io 4.8 / engine.io 6.6.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { BIN, TARGET, WAIT_MS, cleanEnv } from "./harness.mjs";

const T = { timeout: 60_000 };
const HERE = path.dirname(fileURLToPath(import.meta.url));

/**
 * The same endpoints on the upstream Node implementation (as tests/reference/conformance-server.mjs,
 * which has its own node_modules), run from this folder so that it finds socket.io and engine.io.
 * A process of its own: in this one, the server's writes and the client's reads would share
 * the event loop and the test's timing.
 */
const REFERENCE = `
import { createServer } from "node:http";
import { Server as EngineServer } from "engine.io";
import { Server } from "socket.io";
const options = { pingInterval: 300, pingTimeout: 200, maxHttpBufferSize: 1e6, cors: { origin: "*" } };
const httpServer = createServer();
const engine = new EngineServer(options);
engine.attach(httpServer, { path: "/engine.io", destroyUpgrade: false });
engine.on("connection", (socket) => socket.on("message", (data) => socket.send(data)));
const io = new Server(httpServer, { ...options, path: "/socket.io", connectTimeout: 1000, destroyUpgrade: false });
for (const nsp of [io.of("/"), io.of("/custom")]) {
  nsp.on("connection", (socket) => socket.emit("auth", socket.handshake.auth));
}
httpServer.listen(0, "127.0.0.1", () => console.log("listening on " + httpServer.address().port));
`;

/** Starts the conformance server; resolves with `{ base, stop }`. */
async function startConformance() {
  let cmd;
  let args;
  if (TARGET === "reference") {
    [cmd, args] = [process.execPath, ["--input-type=module", "--eval", REFERENCE]];
  } else {
    cmd = process.env.CONFORMANCE_BIN
      ? path.resolve(process.env.CONFORMANCE_BIN)
      : path.join(path.dirname(BIN), "examples", "conformance");
    if (!existsSync(cmd)) {
      throw new Error(`conformance server not found at ${cmd} (run cargo build --example conformance)`);
    }
    args = ["0"];
  }
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: cleanEnv(), cwd: HERE });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no 'listening on' line from ${cmd}\n${stderr}`)), 15_000);
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d) => {
      out += d;
      const m = /^listening on (\d+)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} exited (${code}) before listening\n${stderr}`));
    });
  });
  return {
    base: `127.0.0.1:${port}`,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.on("exit", resolve));
      child.kill("SIGKILL");
      await exited;
    },
  };
}

/**
 * A WebSocket read the way the upstream suites read it: one `once('message')` listener,
 * attached again only after the awaiting code has resumed (a later microtask); a message that
 * the `ws` library emits while no listener is attached is lost.
 *
 * With `allowSynchronousEvents: false` the library hands over one message per event-loop turn,
 * so the reader sees every message the server sent as a message of its own, in order. With the
 * library's default (true since ws 8.17) it emits every message of one socket read in the same
 * turn, and this reader loses all but the first of them. That depends on when the client reads,
 * not only on how the server writes: against socket.io 4.8 itself, which writes the CONNECT
 * reply and the handler's emit in two writes, such a reader lost the emit in 9 to 22 of 40
 * connections on a loaded machine. ioswarm now writes them as socket.io does (the CONNECT reply
 * in a write of its own, see `engineio::session::Session::enqueue_own_write`; before, one write
 * carried both and the default reader lost the emit on every connection); the Rust test
 * `frames_sent_for_their_own_write_leave_before_later_ones_in_a_separate_write` checks the writes.
 */
class OnceReader {
  constructor(url) {
    this.ws = new WebSocket(url, { allowSynchronousEvents: false });
  }
  opened() {
    return new Promise((resolve, reject) => {
      this.ws.once("open", resolve);
      this.ws.once("error", reject);
    });
  }
  next(what) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no message within ${WAIT_MS} ms: ${what}`)), WAIT_MS);
      this.ws.once("message", (data, isBinary) => {
        clearTimeout(timer);
        resolve(isBinary ? data : data.toString());
      });
    });
  }
  close() {
    this.ws.terminate();
  }
}

async function connectAndReadAuth(base, nsp, auth, expectedAuthPacket) {
  const reader = new OnceReader(`ws://${base}/socket.io/?EIO=4&transport=websocket`);
  // Listening for the open packet before the socket opens: it may come with the upgrade reply.
  const open = reader.next("Engine.IO open packet");
  await reader.opened();
  try {
    assert.match(await open, /^0\{"sid":/, "Engine.IO open packet");
    const prefix = nsp === "/" ? "" : `${nsp},`;
    reader.ws.send(`40${prefix}${auth === undefined ? "" : JSON.stringify(auth)}`);
    const reply = await reader.next("Socket.IO CONNECT reply");
    assert.ok(reply.startsWith(`40${prefix}{`), `CONNECT reply, got ${JSON.stringify(reply)}`);
    assert.deepEqual(Object.keys(JSON.parse(reply.slice(2 + prefix.length))), ["sid"]);
    // The connect handler's emit: lost (and the next ping read instead) when the server
    // writes it together with the CONNECT reply.
    assert.equal(await reader.next("the connect handler's auth event"), expectedAuthPacket);
  } finally {
    reader.close();
  }
}

describe("conformance server, read as the upstream suites read", () => {
  let server;
  before(async () => {
    server = await startConformance();
  });
  after(async () => {
    await server?.stop();
  });

  test("websocket: the CONNECT reply and the connect handler's first emit arrive as two messages", T, async () => {
    for (let i = 0; i < 25; i++) {
      await connectAndReadAuth(server.base, "/", undefined, '42["auth",{}]');
      await connectAndReadAuth(server.base, "/custom", { token: "abc" }, '42/custom,["auth",{"token":"abc"}]');
    }
  });

  test("polling: a GET and a close POST sent together: the GET gets 6, later GETs 400 (50 sessions)", T, async () => {
    const url = (sid) => `http://${server.base}/engine.io/?EIO=4&transport=polling${sid ? `&sid=${sid}` : ""}`;
    const signal = () => AbortSignal.timeout(WAIT_MS);
    for (let i = 0; i < 50; i++) {
      const open = await (await fetch(url(), { signal: signal() })).text();
      assert.match(open, /^0\{/, "handshake");
      const sid = JSON.parse(open.slice(1)).sid;
      const [poll, post] = await Promise.all([
        fetch(url(sid), { signal: signal() }),
        fetch(url(sid), { method: "POST", body: "1", signal: signal() }),
      ]);
      const pollBody = await poll.text();
      await post.text();
      assert.deepEqual([poll.status, pollBody], [200, "6"], `session ${i}: the pending GET`);
      const later = await fetch(url(sid), { signal: signal() });
      await later.text();
      assert.equal(later.status, 400, `session ${i}: a GET after the close`);
    }
  });
});
