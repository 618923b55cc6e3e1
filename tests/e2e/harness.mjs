// Test harness: starts the server under test and connects real socket.io clients to it.
//
// Target selection (env):
//   IOSWARM_E2E_TARGET=ioswarm (default)  spawn $IOSWARM_BIN (default target/debug/ioswarm; see ../server-process.mjs)
//   IOSWARM_E2E_TARGET=reference           spawn `node reference-server.mjs` (socket.io 4.8)
//
// Every server is started with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 [flags]` and is
// ready once it printed `ioswarm ready socketio=IP:PORT admin=IP:PORT` on stdout.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, describe } from "node:test";
import { fileURLToPath } from "node:url";
import { io } from "socket.io-client";
import { LIVE, ServerProcess as BaseProcess, TARGET as TARGET_NAME, command as targetCommand } from "../server-process.mjs";

export { BIN, TARGET } from "../server-process.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));

/**
 * `describe` for suites of ioswarm-only settings. Against the reference server
 * (IOSWARM_E2E_TARGET=reference) they define no tests at all: the reference has none of those
 * settings, and the runner counts skipped tests as failures.
 */
export const ioswarmOnly = TARGET_NAME === "ioswarm" ? describe : () => {};

/**
 * Temporary `--config` files for one test file, removed when it ends: `file(text)` writes one
 * and returns its path, `flags(...lines)` writes the TOML lines and returns `["--config", path]`;
 * `dir` is the folder (for keys and other files the configs name).
 */
export function configFiles(name) {
  const dir = mkdtempSync(path.join(tmpdir(), `ioswarm-${name}-`));
  after(() => rmSync(dir, { recursive: true, force: true }));
  let count = 0;
  const file = (text) => {
    const f = path.join(dir, `config-${++count}.toml`);
    writeFileSync(f, text);
    return f;
  };
  return { dir, file, flags: (...lines) => ["--config", file(lines.join("\n") + "\n")] };
}

/** Default time to wait for anything a test expects to observe. */
export const WAIT_MS = 5000;
/** Time to wait before concluding that something did NOT happen. */
export const QUIET_MS = 300;

function command(flags) {
  return targetCommand(HERE, flags);
}

/**
 * Starts a server. Options: `flags` (extra CLI flags), `listen` (default 127.0.0.1:0),
 * `adminListen` (default 127.0.0.1:0).
 */
export async function startServer({ flags = [], listen = "127.0.0.1:0", adminListen = "127.0.0.1:0", env = {} } = {}) {
  const [cmd, args] = command(["--listen", listen, "--admin-listen", adminListen, ...flags]);
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...cleanEnv(), ...env } });
  const server = new ServerProcess(child, [cmd, ...args].join(" "));
  await server.ready;
  return server;
}

/**
 * The test runner's environment without IOSWARM_* settings (they would change the server), plus
 * an ephemeral port for the Redis-protocol listener so that servers never collide on 6379 (a test
 * can still override it).
 */
export function cleanEnv() {
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("IOSWARM_") || k === "IOSWARM_BIN"),
  );
  return { ...env, IOSWARM_REDIS_LISTEN: "127.0.0.1:0" };
}

/**
 * Runs the server with `flags` (no --listen defaults) expecting it NOT to become ready; resolves
 * with {code, signal, stdout, stderr} once it exited (SIGKILL after `ms`).
 */
export function runToExit(flags, { env = {}, ms = 10_000 } = {}) {
  const [cmd, args] = command(flags);
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...cleanEnv(), ...env } });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
  LIVE.add(child);
  const timer = setTimeout(() => child.kill("SIGKILL"), ms);
  return new Promise((resolve, reject) => {
    child.on("exit", () => LIVE.delete(child));
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      // Let the pipes drain.
      setImmediate(() => resolve({ code, signal, stdout, stderr }));
    });
  });
}

export class ServerProcess extends BaseProcess {
  // ---- admin API ----

  async admin(method, pathname, body) {
    const res = await fetch(this.adminUrl + pathname, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
      signal: AbortSignal.timeout(WAIT_MS * 2),
    });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, headers: res.headers, text, json };
  }

  emit(body) {
    return this.admin("POST", "/v1/emit", body);
  }
}

/**
 * Tracks servers and clients created by one test so they are always cleaned up.
 * Use: `const t = new Ctx(); after/afterEach(() => t.cleanup())`.
 */
export class Ctx {
  constructor() {
    this.servers = [];
    this.clients = [];
  }

  async server(opts) {
    const s = await startServer(opts);
    this.servers.push(s);
    return s;
  }

  /** Creates a client (not yet awaited). Defaults: no reconnection, new manager each time. */
  client(url, opts = {}) {
    const socket = io(url, { forceNew: true, reconnection: false, timeout: WAIT_MS, ...opts });
    this.clients.push(socket);
    return socket;
  }

  /** Creates a client and waits for `connect`; rejects on connect_error. */
  async connect(url, opts = {}) {
    const socket = this.client(url, opts);
    await connected(socket);
    return socket;
  }

  /**
   * Disconnects this context's clients and, when `server` is given, waits until the server no
   * longer lists any socket in the namespaces `nsps` (so the next test starts from a clean slate).
   */
  async resetClients(server, nsps = ["/", "/chat"]) {
    for (const c of this.clients) c.disconnect();
    this.clients = [];
    if (!server) return;
    for (const nsp of nsps) {
      await waitFor(async () => {
        const res = await server.admin("GET", `/v1/sockets?nsp=${encodeURIComponent(nsp)}`);
        return res.status === 200 && Array.isArray(res.json?.sockets) && res.json.sockets.length === 0;
      }, `server forgets the disconnected clients of ${nsp}`);
    }
  }

  async cleanup() {
    for (const c of this.clients) c.disconnect();
    this.clients = [];
    const servers = this.servers;
    this.servers = [];
    await Promise.all(servers.map((s) => s.stop()));
  }
}

/**
 * Records what the Engine.IO connection behind `socket` sent and received, and its transport
 * changes, so that a test that waits in vain can say where the connection stopped. Returns a
 * function that gives the record as text.
 */
function engineTrace(socket) {
  const t0 = Date.now();
  const events = [];
  const note = (what) => events.length < 200 && events.push(`+${Date.now() - t0}ms ${what}`);
  const packet = (p) => `${p.type} ${typeof p.data === "string" ? p.data.slice(0, 80) : p.data === undefined ? "" : "<binary>"}`;
  let watched = null;
  const watch = (engine) => {
    // Each trace listens itself: namespaces of one manager share the engine.
    if (!engine || engine === watched) return;
    watched = engine;
    engine.on("packet", (p) => note(`<- ${packet(p)} (${engine.transport?.name})`));
    engine.on("packetCreate", (p) => note(`-> ${packet(p)} (${engine.transport?.name})`));
    engine.on("upgrading", (t) => note(`upgrading to ${t?.name}`));
    engine.on("upgrade", (t) => note(`upgraded to ${t?.name}`));
    engine.on("upgradeError", (e) => note(`upgrade error: ${e?.message}`));
    engine.on("close", (reason, detail) => note(`engine closed: ${reason} ${detail?.message ?? ""}`));
  };
  watch(socket.io?.engine);
  socket.io?.on?.("open", () => watch(socket.io.engine));
  return () => `transport ${socket.io?.engine?.transport?.name}, engine ${socket.io?.engine?.readyState}; ${events.join("; ")}`;
}

/** Resolves on `connect`, rejects on `connect_error` or after `ms` (saying what the engine did). */
export function connected(socket, ms = WAIT_MS) {
  if (socket.connected) return Promise.resolve(socket);
  const trace = engineTrace(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no connect within ${ms} ms: ${trace()}`));
    }, ms);
    const onConnect = () => {
      cleanup();
      resolve(socket);
    };
    const onError = (err) => {
      cleanup();
      reject(Object.assign(new Error(`connect_error: ${err.message}`), { cause: err }));
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
    };
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
  });
}

/** Resolves with the first `connect_error` (rejects if the socket connects instead). */
export function connectError(socket, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no connect_error within ${ms} ms`));
    }, ms);
    const onConnect = () => {
      cleanup();
      reject(new Error("connected, but a connect_error was expected"));
    };
    const onError = (err) => {
      cleanup();
      resolve(err);
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off("connect", onConnect);
      socket.off("connect_error", onError);
    };
    socket.on("connect", onConnect);
    socket.on("connect_error", onError);
  });
}

/** Resolves with the args array of the next `event` on `emitter`. */
export function once(emitter, event, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, handler);
      reject(new Error(`no "${event}" within ${ms} ms`));
    }, ms);
    const handler = (...args) => {
      clearTimeout(timer);
      emitter.off(event, handler);
      resolve(args);
    };
    emitter.on(event, handler);
  });
}

/** Emits with an ack and resolves with ALL ack arguments (emitWithAck keeps only the first). */
export function call(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(WAIT_MS).emit(event, ...args, (err, ...resp) => {
      if (err) reject(new Error(`no ack for "${event}" within ${WAIT_MS} ms`));
      else resolve(resp);
    });
  });
}

/** Records every `event` received by `socket`; returns the live array of args arrays. */
export function record(socket, event) {
  const got = [];
  socket.on(event, (...args) => {
    if (args.length > 0 && typeof args[args.length - 1] === "function") args.pop();
    got.push(args);
  });
  return got;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `predicate` until true or `ms` elapsed; throws `message` on timeout. */
export async function waitFor(predicate, message, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${message}`);
    await sleep(20);
  }
}

export const TRANSPORTS = {
  polling: { transports: ["polling"] },
  websocket: { transports: ["websocket"] },
};
