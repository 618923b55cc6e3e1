// TLS on the Socket.IO port (--tls-cert / --tls-key) against plain TCP, in the same run, with a
// certificate made by the openssl CLI (P-256 CA and server certificate, as an operator would):
//   - handshake rate: N socket.io-client 4.8 clients (WebSocket only), C connecting at a time,
//     to ws:// then wss://: connects/s, p50 io()→connect, server CPU µs per connection;
//   - fan-out: S subscribers in one room, a publisher `ioswarm:to`s the room at RATE messages/s
//     for SECS seconds: delivered/s, p50/p99 from publish to receipt, server CPU µs per delivery.
// The modes alternate over ROUNDS rounds (a fresh node each time); the table gives medians.
//
//   cargo build --release --bin ioswarm
//   (cd tests/e2e && npm ci)     # socket.io-client comes from there
//   node bench/tls.mjs           # N=2000 C=100 S=200 RATE=50 SECS=10 ROUNDS=3
//
// Clients and node share this machine's cores: compare TLS with plain in the same run (the
// ratios). Timings live here, not in tests.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { ServerProcess } from "../tests/server-process.mjs";
import { cpuSeconds, median, percentile } from "./lib.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(path.join(ROOT, "tests/e2e/package.json"));
const { io } = require("socket.io-client");

const N = Number(process.env.N ?? 2000);
const C = Number(process.env.C ?? 100);
const S = Number(process.env.S ?? 200);
const RATE = Number(process.env.RATE ?? 50);
const SECS = Number(process.env.SECS ?? 10);
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const BIN = path.resolve(process.env.IOSWARM_BIN ?? path.join(ROOT, "target/release/ioswarm"));

const dir = mkdtempSync(path.join(tmpdir(), "ioswarm-bench-tls-"));

function openssl(...args) {
  const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
  if (r.error || r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.error?.message ?? r.stderr}`);
}

/** A CA and a server certificate for 127.0.0.1 it signed; returns {ca (PEM), cert, key}. */
function makePki() {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ioswarm bench CA",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  openssl("req", ...ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=localhost");
  writeFileSync(path.join(dir, "node.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n");
  openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "1", "-days", "2",
    "-out", "node.pem", "-extfile", "node.ext");
  return { ca: readFileSync(path.join(dir, "ca.pem"), "utf8"), cert: path.join(dir, "node.pem"), key: path.join(dir, "node.key") };
}

async function startServer(tlsFlags) {
  const args = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--redis-listen", "127.0.0.1:0"];
  args.push("--log", "warn", "--client-rooms", "--client-relay", ...tlsFlags);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("IOSWARM_")));
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env });
  return new ServerProcess(child, [BIN, ...args].join(" ")).ready;
}

function connectOne(url, opts) {
  return new Promise((resolve, reject) => {
    const s = io(url, { transports: ["websocket"], forceNew: true, reconnection: false, timeout: 20_000, ...opts });
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => {
      s.close();
      reject(new Error(`connect_error: ${e.message}`));
    });
  });
}

async function handshakes(server, url, opts) {
  const sockets = [];
  const lat = [];
  let next = 0;
  const cpu0 = cpuSeconds(server.child.pid);
  const t0 = process.hrtime.bigint();
  const lane = async () => {
    while (next < N) {
      next++;
      const c0 = process.hrtime.bigint();
      sockets.push(await connectOne(url, opts));
      lat.push(Number(process.hrtime.bigint() - c0) / 1e6);
    }
  };
  await Promise.all(Array.from({ length: C }, lane));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpuUs = ((cpuSeconds(server.child.pid) - cpu0) * 1e6) / N;
  for (const s of sockets) s.close();
  return { rate: N / seconds, p50: median(lat), cpuUs };
}

async function fanout(server, url, opts) {
  const join = (s) => s.timeout(10_000).emitWithAck("ioswarm:join", "fan");
  const subs = [];
  for (let i = 0; i < S; i += 50) {
    subs.push(...(await Promise.all(Array.from({ length: Math.min(50, S - i) }, () => connectOne(url, opts)))));
  }
  await Promise.all(subs.map(join));
  const publisher = await connectOne(url, opts);
  await join(publisher);
  const lat = [];
  for (const s of subs) s.on("msg", (sent) => lat.push(Date.now() - sent));
  const total = RATE * SECS;
  const cpu0 = cpuSeconds(server.child.pid);
  const t0 = Date.now();
  for (let i = 0; i < total; i++) {
    const wait = t0 + (i * 1000) / RATE - Date.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    publisher.emit("ioswarm:to", "fan", "msg", Date.now());
  }
  // Wait for the last deliveries (at most 5 s).
  const expected = total * S;
  const deadline = Date.now() + 5000;
  while (lat.length < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const seconds = (Date.now() - t0) / 1000;
  const cpuUs = ((cpuSeconds(server.child.pid) - cpu0) * 1e6) / Math.max(1, lat.length);
  for (const s of [...subs, publisher]) s.close();
  return { delivered: lat.length, expected, rate: lat.length / seconds, p50: percentile(lat, 50), p99: percentile(lat, 99), cpuUs };
}

async function main() {
  const pki = makePki();
  const modes = {
    plain: { flags: [], scheme: "http", opts: {} },
    tls: { flags: ["--tls-cert", pki.cert, "--tls-key", pki.key], scheme: "https", opts: { ca: pki.ca } },
  };
  const results = { plain: [], tls: [] };
  console.log(`handshakes: N=${N}, C=${C} at a time; fan-out: S=${S} subscribers at ${RATE} msg/s for ${SECS} s; ${ROUNDS} rounds; ${BIN}`);
  for (let round = 1; round <= ROUNDS; round++) {
    for (const [name, mode] of Object.entries(modes)) {
      const server = await startServer(mode.flags);
      try {
        const url = `${mode.scheme}://127.0.0.1:${server.port}`;
        const h = await handshakes(server, url, mode.opts);
        const f = await fanout(server, url, mode.opts);
        results[name].push({ h, f });
        console.log(
          `round ${round} ${name.padEnd(5)} ${h.rate.toFixed(0)} connects/s (p50 ${h.p50.toFixed(1)} ms, ${h.cpuUs.toFixed(0)} µs CPU/connect); ` +
            `fan-out ${f.delivered}/${f.expected} delivered, ${f.rate.toFixed(0)}/s, p50 ${f.p50} ms, p99 ${f.p99} ms, ${f.cpuUs.toFixed(1)} µs CPU/delivery`,
        );
      } finally {
        await server.stop();
      }
    }
  }
  const med = (name, part, key) => median(results[name].map((r) => r[part][key]));
  console.log("\nmode   connects/s  p50 connect ms  µs CPU/connect  delivered/s  p50 ms  p99 ms  µs CPU/delivery  (medians of the rounds)");
  for (const name of Object.keys(modes)) {
    console.log(
      `${name.padEnd(6)} ${med(name, "h", "rate").toFixed(0).padStart(10)} ${med(name, "h", "p50").toFixed(1).padStart(15)}` +
        ` ${med(name, "h", "cpuUs").toFixed(0).padStart(15)} ${med(name, "f", "rate").toFixed(0).padStart(12)}` +
        ` ${med(name, "f", "p50").toFixed(0).padStart(7)} ${med(name, "f", "p99").toFixed(0).padStart(7)} ${med(name, "f", "cpuUs").toFixed(1).padStart(16)}`,
    );
  }
  const ratio = (part, key) => (med("tls", part, key) / med("plain", part, key)).toFixed(2);
  console.log(
    `\nTLS / plain: handshake rate ${ratio("h", "rate")}×, CPU per connection ${ratio("h", "cpuUs")}×; ` +
      `fan-out delivered/s ${ratio("f", "rate")}×, CPU per delivery ${ratio("f", "cpuUs")}×`,
  );
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }));
