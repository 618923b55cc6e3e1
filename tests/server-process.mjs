// Shared by the Node end-to-end suites (tests/e2e, tests/emitter): finding the server under
// test and running it as a child process that is ready once it prints its ready line
// `ioswarm ready socketio=ADDR admin=ADDR [name=ADDR]...`. Node built-ins only.
//
// Target selection (env):
//   IOSWARM_E2E_TARGET=ioswarm (default)  spawn $IOSWARM_BIN (default target/debug/ioswarm)
//   IOSWARM_E2E_TARGET=reference           spawn `node <suite>/reference-server.mjs`
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const TARGET = process.env.IOSWARM_E2E_TARGET ?? "ioswarm";
// IOSWARM_BIN, when set, is relative to the current directory; the default to the repository.
export const BIN = process.env.IOSWARM_BIN
  ? path.resolve(process.env.IOSWARM_BIN)
  : path.join(ROOT, "target/debug/ioswarm");

const READY_RE = /^ioswarm ready((?: \S+=\S+)+)$/;

/** `[command, args]` running the target with `flags`; `suiteDir` holds its reference server. */
export function command(suiteDir, flags) {
  if (TARGET === "reference") {
    return [process.execPath, [path.join(suiteDir, "reference-server.mjs"), ...flags]];
  }
  if (TARGET !== "ioswarm") throw new Error(`unknown IOSWARM_E2E_TARGET=${TARGET}`);
  if (!existsSync(BIN)) {
    throw new Error(`ioswarm binary not found at ${BIN} (run cargo build --bin ioswarm or set IOSWARM_BIN)`);
  }
  return [BIN, flags];
}

/** `{host, port}` of `IP:PORT` (or `[IPv6]:PORT`). */
export function splitAddr(addr) {
  const i = addr.lastIndexOf(":");
  let host = addr.slice(0, i);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  return { host, port: Number(addr.slice(i + 1)) };
}

// Servers still running when the test process exits (a crash, an interrupted run) are killed.
export const LIVE = new Set();
process.on("exit", () => {
  for (const child of LIVE) child.kill("SIGKILL");
});

/**
 * A spawned server. `ready` resolves once the ready line arrived, with `addr` (Socket.IO
 * IP:PORT), `url`, `port`, `adminAddr`, `adminUrl`, `redis` ({host, port}, when printed) and
 * `addrs` (every `name=ADDR` field); it rejects if the server exits first or after `readyMs`.
 */
export class ServerProcess {
  constructor(child, cmdline, { readyMs = 15_000 } = {}) {
    this.child = child;
    LIVE.add(child);
    child.on("exit", () => LIVE.delete(child));
    this.cmdline = cmdline;
    this.stdout = "";
    this.stderr = "";
    this.exitCode = undefined;
    this.signalCode = undefined;
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.exitCode = code;
        this.signalCode = signal;
        resolve({ code, signal });
      });
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d) => {
      this.stderr += d;
      if (this.stderr.length > 200_000) this.stderr = this.stderr.slice(-100_000);
    });
    child.stdout.setEncoding("utf8");
    this.ready = new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`no ready line within ${readyMs / 1000} s from: ${this.cmdline}\n${this.describe()}`));
        this.kill();
      }, readyMs);
      let buf = "";
      child.stdout.on("data", (d) => {
        this.stdout += d;
        buf += d;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          const m = READY_RE.exec(line);
          if (m && !this.addr) {
            this.addrs = Object.fromEntries(m[1].trim().split(" ").map((f) => f.split("=", 2)));
            if (!this.addrs.socketio || !this.addrs.admin) continue;
            clearTimeout(timer);
            this.addr = this.addrs.socketio;
            this.adminAddr = this.addrs.admin;
            this.url = `http://${this.addr}`;
            this.adminUrl = `http://${this.adminAddr}`;
            this.port = splitAddr(this.addr).port;
            if (this.addrs.redis) this.redis = splitAddr(this.addrs.redis);
            resolve(this);
          }
        }
      });
      child.on("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
      child.on("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`server exited (code ${code}, signal ${signal}) before ready: ${this.cmdline}\n${this.describe()}`));
      });
    });
  }

  get alive() {
    return this.exitCode === undefined;
  }

  describe() {
    return `--- stdout ---\n${this.stdout}\n--- stderr (tail) ---\n${this.stderr.slice(-4000)}`;
  }

  /** Sends SIGTERM and waits for the exit; returns {code, signal}. SIGKILL after `graceMs`. */
  async stop(graceMs = 8000) {
    if (this.exitCode !== undefined) return { code: this.exitCode, signal: this.signalCode };
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.kill(), graceMs);
    const res = await this.exited;
    clearTimeout(timer);
    return res;
  }

  kill() {
    if (this.exitCode === undefined) this.child.kill("SIGKILL");
  }
}
