// CONNECT rate with and without authentication, in the same run: N socket.io-client 4.8
// clients (WebSocket only, C connecting at a time) against the release binary started three
// ways — no [auth], [auth] with an HS256 JWT, and [auth] with a connect hook served by a
// node:http server in this process (answers 200 at once) — alternating over ROUNDS rounds.
// Prints per mode (median of the rounds): connects/s, the median time from io() to `connect`,
// and the server's own CPU time per CONNECT (utime + stime from /proc, so the figure does not
// depend on how fast the clients are), and the hook's overhead per connection.
//
//   cargo build --release --bin ioswarm
//   (cd tests/e2e && npm ci)     # socket.io-client and jsonwebtoken come from there
//   node bench/connect-auth.mjs  # N=2000 C=100 ROUNDS=3 IOSWARM_BIN=target/release/ioswarm
//
// The clients run on the same machine and share its cores with the server: the figures compare
// the modes with each other, they are not the server's ceiling. Timings live here, not in tests.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ServerProcess } from "../tests/server-process.mjs";
import { cpuSeconds, median } from "./lib.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(ROOT, "tests/e2e/package.json"));
const { io } = require("socket.io-client");
const jwt = require("jsonwebtoken");

const N = Number(process.env.N ?? 2000);
const C = Number(process.env.C ?? 100);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const BIN = path.resolve(process.env.IOSWARM_BIN ?? path.join(ROOT, "target/release/ioswarm"));
const SECRET = "bench-secret";
const CONNECT_TIMEOUT_MS = 20_000;

const dir = mkdtempSync(path.join(tmpdir(), "ioswarm-bench-auth-"));

async function startServer(configLines) {
  const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(file, configLines.join("\n") + "\n");
  const args = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--redis-listen", "127.0.0.1:0"];
  args.push("--log", "warn", "--config", file);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("IOSWARM_")));
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env });
  return new ServerProcess(child, [BIN, ...args].join(" ")).ready;
}

function connectOne(url, auth, latencies) {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false, auth, timeout: CONNECT_TIMEOUT_MS });
    socket.once("connect", () => {
      latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
      resolve(socket);
    });
    socket.once("connect_error", (err) => {
      socket.close();
      reject(new Error(`connect_error: ${err.message}`));
    });
  });
}

/**
 * Connects N clients, C at a time; returns {rate (connects/s), p50 (ms from io() to connect),
 * cpuUs (server CPU µs per CONNECT)}. Every client is closed after.
 */
async function measure(server, authFor) {
  const sockets = [];
  const latencies = [];
  let next = 0;
  const cpu0 = cpuSeconds(server.child.pid);
  const started = process.hrtime.bigint();
  async function lane() {
    while (next < N) {
      const i = next++;
      sockets.push(await connectOne(server.url, authFor(i), latencies));
    }
  }
  await Promise.all(Array.from({ length: C }, lane));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpuUs = ((cpuSeconds(server.child.pid) - cpu0) * 1e6) / N;
  for (const s of sockets) s.close();
  return { rate: N / seconds, p50: median(latencies), cpuUs };
}

const signed = (x, digits) => (x >= 0 ? "+" : "") + x.toFixed(digits);

async function main() {
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const tokens = Array.from({ length: N }, (_, i) => jwt.sign({ sub: `user-${i}`, exp }, SECRET, { algorithm: "HS256" }));
  const hook = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end('{"data":{"ok":true}}'));
  });
  await new Promise((resolve) => hook.listen(0, "127.0.0.1", resolve));
  const hookUrl = `http://127.0.0.1:${hook.address().port}/auth`;

  const modes = {
    none: { config: [], auth: () => ({}) },
    jwt: { config: ["[auth]", `jwt_secret = "${SECRET}"`], auth: (i) => ({ token: tokens[i] }) },
    hook: { config: ["[auth]", `connect_hook = "${hookUrl}"`, "connect_hook_concurrency = 256"], auth: () => ({}) },
  };
  const results = Object.fromEntries(Object.keys(modes).map((m) => [m, []]));
  console.log(`N=${N} clients, C=${C} connecting at a time, ${ROUNDS} rounds, ${BIN}`);
  for (let round = 1; round <= ROUNDS; round++) {
    for (const [name, mode] of Object.entries(modes)) {
      const server = await startServer(mode.config);
      try {
        const r = await measure(server, mode.auth);
        results[name].push(r);
        console.log(
          `round ${round} ${name.padEnd(4)} ${r.rate.toFixed(0)} connects/s, p50 ${r.p50.toFixed(1)} ms, ` +
            `server CPU ${r.cpuUs.toFixed(0)} µs/connect`,
        );
      } finally {
        await server.stop();
      }
    }
  }
  hook.close();
  const summary = Object.fromEntries(
    Object.entries(results).map(([name, rs]) => [
      name,
      { rate: median(rs.map((r) => r.rate)), p50: median(rs.map((r) => r.p50)), cpuUs: median(rs.map((r) => r.cpuUs)) },
    ]),
  );
  const none = summary.none;
  console.log("\nmode  connects/s  vs none  p50 connect ms  server CPU µs/connect  (medians of the rounds)");
  for (const [name, r] of Object.entries(summary)) {
    console.log(
      `${name.padEnd(5)} ${r.rate.toFixed(0).padStart(10)} ${((r.rate / none.rate) * 100).toFixed(0).padStart(7)} %` +
        ` ${r.p50.toFixed(1).padStart(15)} ${r.cpuUs.toFixed(0).padStart(22)}`,
    );
  }
  const withHook = summary.hook;
  console.log(
    `\nconnect hook: ${signed(withHook.p50 - none.p50, 1)} ms p50 connect time, ` +
      `${signed(withHook.cpuUs - none.cpuUs, 0)} µs server CPU per connection`,
  );
  console.log(`JWT (HS256): ${signed(summary.jwt.cpuUs - none.cpuUs, 0)} µs server CPU per connection`);
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }));
