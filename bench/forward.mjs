// Webhook forwarding ([[forward]] url = …) against the built-in `ioswarm:echo`, in the same run:
// socket.io-client 4.8 clients (WebSocket) emit with an ack; in `echo` mode the node answers
// itself, in `webhook` mode every event is POSTed to a trivial HTTP app (a separate Node process
// answering `{"ack":["ok"]}` at once) and the client's ack comes from the app's reply.
//
// Two measurements per mode, alternating over ROUNDS rounds (a fresh node each time):
//   - throughput: C clients, each with W emits in flight (closed loop) for SECS seconds:
//     events/s, p50/p99 from emit to ack, server CPU µs per event (utime + stime from /proc);
//   - latency at a fixed rate: RATE events/s spread over the clients for SECS seconds: p50/p99
//     from emit to ack, so the added latency is read without queueing.
//
//   cargo build --release --bin ioswarm
//   (cd tests/e2e && npm ci)     # socket.io-client comes from there
//   node bench/forward.mjs       # C=50 W=4 SECS=10 RATE=500 ROUNDS=3 IOSWARM_BIN=target/release/ioswarm
//
// Clients, app and node share this machine's cores: compare the modes with each other (the
// ratios), not with another machine. Timings live here, not in tests.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ServerProcess } from "../tests/server-process.mjs";
import { cpuSeconds, median, percentile } from "./lib.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(ROOT, "tests/e2e/package.json"));
const { io } = require("socket.io-client");

const C = Number(process.env.C ?? 50);
const W = Number(process.env.W ?? 4);
const SECS = Number(process.env.SECS ?? 10);
const RATE = Number(process.env.RATE ?? 500);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const BIN = path.resolve(process.env.IOSWARM_BIN ?? path.join(ROOT, "target/release/ioswarm"));
const ACK_TIMEOUT_MS = 10_000;

const dir = mkdtempSync(path.join(tmpdir(), "ioswarm-bench-forward-"));

/** The trivial app: a Node process answering every POST with {"ack":["ok"]}; resolves its URL. */
function startApp() {
  const code = `
    const http = require("node:http");
    const server = http.createServer((req, res) => {
      req.resume();
      req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end('{"ack":["ok"]}'));
    });
    server.keepAliveTimeout = 60000;
    server.listen(0, "127.0.0.1", () => console.log("app " + server.address().port));`;
  const child = spawn(process.execPath, ["-e", code], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    child.stdout.setEncoding("utf8").once("data", (line) => {
      const port = Number(/app (\d+)/.exec(line)?.[1]);
      if (!port) reject(new Error(`app said: ${line}`));
      resolve({ child, url: `http://127.0.0.1:${port}/socket-events` });
    });
    child.once("exit", (code) => reject(new Error(`app exited ${code}`)));
  });
}

async function startServer(appUrl) {
  const file = path.join(dir, `config-${Math.random().toString(36).slice(2)}.toml`);
  const rule = [
    "[[forward]]",
    `events = ["bench:*"]`,
    `url = "${appUrl}"`,
    // The bench is the load: lift the per-client rate limit and let the queue hold every
    // in-flight event (C × W), so nothing is refused.
    "max_events_per_s = 1000000",
    "burst = 1000000",
    "concurrency = 64",
    `queue = ${Math.max(1024, C * W)}`,
  ];
  writeFileSync(file, rule.join("\n") + "\n");
  const args = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--redis-listen", "127.0.0.1:0"];
  args.push("--log", "warn", "--config", file);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("IOSWARM_")));
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env });
  return new ServerProcess(child, [BIN, ...args].join(" ")).ready;
}

async function connectAll(url) {
  return Promise.all(
    Array.from({ length: C }, () => new Promise((resolve, reject) => {
      const s = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
      s.once("connect", () => resolve(s));
      s.once("connect_error", reject);
    })),
  );
}

/** One emit with an ack; resolves the milliseconds from emit to ack, rejects on a bad ack. */
async function oneEvent(socket, event) {
  const t0 = process.hrtime.bigint();
  const reply = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, { x: 1, y: 2, page: "/bench" });
  if (event === "bench:click" && reply !== "ok") throw new Error(`webhook ack: ${JSON.stringify(reply)}`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

async function throughput(server, sockets, event) {
  const lat = [];
  const stopAt = Date.now() + SECS * 1000;
  const cpu0 = cpuSeconds(server.child.pid);
  const t0 = process.hrtime.bigint();
  const lane = async (s) => {
    while (Date.now() < stopAt) lat.push(await oneEvent(s, event));
  };
  await Promise.all(sockets.flatMap((s) => Array.from({ length: W }, () => lane(s))));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpuUs = ((cpuSeconds(server.child.pid) - cpu0) * 1e6) / lat.length;
  return { rate: lat.length / seconds, p50: percentile(lat, 50), p99: percentile(lat, 99), cpuUs };
}

async function paced(sockets, event) {
  const lat = [];
  const pending = [];
  const total = RATE * SECS;
  const t0 = Date.now();
  for (let i = 0; i < total; i++) {
    const due = t0 + (i * 1000) / RATE;
    const wait = due - Date.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    pending.push(oneEvent(sockets[i % sockets.length], event).then((ms) => lat.push(ms)));
  }
  await Promise.all(pending);
  return { p50: percentile(lat, 50), p99: percentile(lat, 99) };
}

const signed = (x) => (x >= 0 ? "+" : "") + x.toFixed(2);

async function main() {
  const app = await startApp();
  const modes = { echo: "ioswarm:echo", webhook: "bench:click" };
  const results = { echo: [], webhook: [] };
  console.log(`C=${C} clients × W=${W} in flight, ${SECS} s per measurement, paced at ${RATE}/s, ${ROUNDS} rounds, ${BIN}`);
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [name, event] of Object.entries(modes)) {
        const server = await startServer(app.url);
        try {
          const sockets = await connectAll(server.url);
          const t = await throughput(server, sockets, event);
          const p = await paced(sockets, event);
          for (const s of sockets) s.close();
          results[name].push({ ...t, pacedP50: p.p50, pacedP99: p.p99 });
          console.log(
            `round ${round} ${name.padEnd(7)} ${t.rate.toFixed(0)} events/s (p50 ${t.p50.toFixed(1)} ms, p99 ${t.p99.toFixed(1)} ms, ` +
              `server CPU ${t.cpuUs.toFixed(0)} µs/event); at ${RATE}/s: p50 ${p.p50.toFixed(2)} ms, p99 ${p.p99.toFixed(2)} ms`,
          );
        } finally {
          await server.stop();
        }
      }
    }
  } finally {
    app.child.kill();
  }
  const med = (name, key) => median(results[name].map((r) => r[key]));
  console.log("\nmode     events/s  vs echo  p50 ms  p99 ms  server CPU µs/event  paced p50 ms  paced p99 ms  (medians of the rounds)");
  for (const name of Object.keys(modes)) {
    console.log(
      `${name.padEnd(8)} ${med(name, "rate").toFixed(0).padStart(8)} ${((med(name, "rate") / med("echo", "rate")) * 100).toFixed(0).padStart(6)} %` +
        ` ${med(name, "p50").toFixed(1).padStart(7)} ${med(name, "p99").toFixed(1).padStart(7)}` +
        ` ${med(name, "cpuUs").toFixed(0).padStart(20)} ${med(name, "pacedP50").toFixed(2).padStart(13)} ${med(name, "pacedP99").toFixed(2).padStart(13)}`,
    );
  }
  console.log(
    `\nwebhook added latency at ${RATE}/s: p50 ${signed(med("webhook", "pacedP50") - med("echo", "pacedP50"))} ms, ` +
      `p99 ${signed(med("webhook", "pacedP99") - med("echo", "pacedP99"))} ms; ` +
      `throughput ${(med("webhook", "rate") / med("echo", "rate")).toFixed(2)}× echo`,
  );
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }));
