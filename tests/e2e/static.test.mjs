// Pages on the Socket.IO listener: `--static DIR` serves index.html and assets under `/`, and
// `--client-bundle FILE` serves socket.io-client's browser bundle at /socket.io/socket.io.js, as
// the pages of the socket.io 1.x era load it. Content types, ETag/304, HEAD, 405, no listing, no
// escape from the folder (`..`, `%2e%2e`, `%2f..`, backslash, a symlink out); Socket.IO keeps
// working on the same port; bad settings stop the node naming them.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, afterEach, before, describe, test } from "node:test";
import { Ctx, TARGET, call, runToExit } from "./harness.mjs";

const T = { timeout: 20_000 };
// Against the reference server (IOSWARM_E2E_TARGET=reference) this file defines no tests: it
// serves no pages, and the runner counts skipped tests as failures.
const suite = TARGET === "ioswarm" ? describe : () => {};

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BUNDLE = path.join(HERE, "node_modules/socket.io-client/dist/socket.io.js");

const base = mkdtempSync(path.join(tmpdir(), "ioswarm-static-"));
after(() => rmSync(base, { recursive: true, force: true }));
const root = path.join(base, "site");
const FILES = {
  "index.html": "<!doctype html><script src=\"/socket.io/socket.io.js\"></script><h1>home</h1>\n",
  "app.js": "const socket = io();\n",
  "style.css": "h1 { color: red }\n",
  "data.json": "{\"a\":1}\n",
  "logo.bin": "\u0000\u0001binary",
  "docs/index.html": "<h1>docs</h1>\n",
  "assets/img.svg": "<svg xmlns=\"http://www.w3.org/2000/svg\"/>\n",
};
mkdirSync(path.join(root, "docs"), { recursive: true });
mkdirSync(path.join(root, "assets"), { recursive: true });
for (const [name, text] of Object.entries(FILES)) writeFileSync(path.join(root, name), text);
writeFileSync(path.join(base, "secret.txt"), "top secret\n");
symlinkSync(path.join(base, "secret.txt"), path.join(root, "leak.txt"));
symlinkSync(base, path.join(root, "up"));

/** One HTTP request with the path sent as is (fetch would normalize `..` and backslashes). */
function request(url, method, rawPath, headers = {}) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: hostname, port, method, path: rawPath, headers, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode, headers: res.headers, body, text: body.toString("utf8") });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.setTimeout(5000, () => req.destroy(new Error(`${method} ${rawPath} timed out`)));
    req.end();
  });
}

suite("static pages and the client bundle", () => {
  const ctx = new Ctx();
  let server;
  const get = (p, headers) => request(server.url, "GET", p, headers);
  before(async () => {
    server = await ctx.server({ flags: ["--static", root, "--client-bundle", BUNDLE] });
  });
  afterEach(() => {
    for (const c of ctx.clients) c.disconnect();
    ctx.clients = [];
  });
  after(() => ctx.cleanup());

  test("files are served with their content types; / and /docs/ serve index.html", T, async () => {
    for (const [p, file, type] of [
      ["/", "index.html", "text/html; charset=utf-8"],
      ["/index.html", "index.html", "text/html; charset=utf-8"],
      ["/app.js", "app.js", "application/javascript; charset=utf-8"],
      ["/style.css", "style.css", "text/css; charset=utf-8"],
      ["/data.json", "data.json", "application/json; charset=utf-8"],
      ["/logo.bin", "logo.bin", "application/octet-stream"],
      ["/assets/img.svg", "assets/img.svg", "image/svg+xml; charset=utf-8"],
      ["/docs/", "docs/index.html", "text/html; charset=utf-8"],
      ["/docs/index.html", "docs/index.html", "text/html; charset=utf-8"],
    ]) {
      const res = await get(p);
      assert.equal(res.status, 200, p);
      assert.equal(res.headers["content-type"], type, p);
      assert.equal(res.text, FILES[file], p);
      assert.equal(res.headers["cache-control"], "no-cache", p);
      assert.match(res.headers.etag ?? "", /^"[0-9a-f]+-[0-9a-f]+"$/, p);
    }
  });

  test("a folder without its slash redirects; without index.html it is not listed", T, async () => {
    const res = await get("/docs");
    assert.equal(res.status, 301);
    assert.equal(res.headers.location, "/docs/");
    for (const p of ["/assets/", "/assets", "/missing.html", "/app.js/"]) {
      const r = await get(p);
      if (p === "/assets") {
        assert.equal(r.status, 301, p);
        continue;
      }
      assert.equal(r.status, 404, p);
      assert.equal(r.text, "not found", p);
      assert.doesNotMatch(r.text, /img\.svg/, p);
    }
  });

  test("no path leaves the folder: .., %2e%2e, %2f.., backslashes, NUL, symlinks out", T, async () => {
    for (const p of [
      "/../secret.txt",
      "/docs/../../secret.txt",
      "/%2e%2e/secret.txt",
      "/%2E%2E/secret.txt",
      "/docs%2f..%2f..%2fsecret.txt",
      "/docs/%2e%2e/%2e%2e/secret.txt",
      "/..\\secret.txt",
      "/docs\\..\\..\\secret.txt",
      "/%5c..%5csecret.txt",
      "/app.js%00.html",
      "/leak.txt",
      "/up/secret.txt",
      "/.%2e/secret.txt",
    ]) {
      const res = await get(p);
      assert.ok(res.status === 404 || res.status === 400, `${p}: ${res.status}`);
      assert.doesNotMatch(res.text, /top secret/, p);
    }
  });

  test("ETag with If-None-Match answers 304 without a body; a stale tag gets the file", T, async () => {
    const first = await get("/app.js");
    const tag = first.headers.etag;
    const again = await get("/app.js", { "if-none-match": tag });
    assert.equal(again.status, 304);
    assert.equal(again.body.length, 0);
    assert.equal(again.headers.etag, tag);
    const weak = await get("/app.js", { "if-none-match": `"nope", W/${tag}` });
    assert.equal(weak.status, 304);
    const stale = await get("/app.js", { "if-none-match": "\"0-0\"" });
    assert.equal(stale.status, 200);
    assert.equal(stale.text, FILES["app.js"]);
  });

  test("HEAD has the headers and no body; other methods get 405 with Allow", T, async () => {
    const head = await request(server.url, "HEAD", "/style.css");
    assert.equal(head.status, 200);
    assert.equal(head.headers["content-type"], "text/css; charset=utf-8");
    assert.equal(Number(head.headers["content-length"]), Buffer.byteLength(FILES["style.css"]));
    assert.ok(head.headers.etag);
    assert.equal(head.body.length, 0);
    for (const method of ["POST", "PUT", "DELETE"]) {
      const res = await request(server.url, method, "/index.html");
      assert.equal(res.status, 405, method);
      assert.equal(res.headers.allow, "GET, HEAD", method);
    }
  });

  test("/socket.io/socket.io.js is the exact bundle, as JavaScript, with an ETag and its map", T, async () => {
    const res = await get("/socket.io/socket.io.js");
    assert.equal(res.status, 200);
    assert.equal(res.headers["content-type"], "application/javascript; charset=utf-8");
    assert.ok(res.body.equals(readFileSync(BUNDLE)), "the bytes differ from the bundle");
    const again = await get("/socket.io/socket.io.js", { "if-none-match": res.headers.etag });
    assert.equal(again.status, 304);
    const map = await get("/socket.io/socket.io.js.map");
    assert.equal(map.status, 200);
    assert.ok(map.body.equals(readFileSync(`${BUNDLE}.map`)));
    assert.equal(map.headers["content-type"], "application/json; charset=utf-8");
  });

  test("Socket.IO clients still connect on the same port, over polling and websocket", T, async () => {
    const polling = await ctx.connect(server.url, { transports: ["polling"], upgrade: false });
    assert.deepEqual(await call(polling, "ioswarm:echo", "p"), ["p"]);
    const ws = await ctx.connect(server.url, { transports: ["websocket"] });
    assert.equal(ws.io.engine.transport.name, "websocket");
    assert.deepEqual(await call(ws, "ioswarm:echo", "w"), ["w"]);
    const both = await ctx.connect(server.url);
    assert.deepEqual(await call(both, "ioswarm:echo", "b"), ["b"]);
    // The Engine.IO path is still Engine.IO, not a file.
    const handshake = await get("/socket.io/?EIO=4&transport=polling");
    assert.equal(handshake.status, 200);
    assert.match(handshake.text, /^0\{"sid":/);
  });
});

suite("without --static and --client-bundle", () => {
  const ctx = new Ctx();
  after(() => ctx.cleanup());

  test("/ and /socket.io/socket.io.js are 404 as before", T, async () => {
    const server = await ctx.server();
    for (const p of ["/", "/index.html", "/socket.io/socket.io.js"]) {
      assert.equal((await request(server.url, "GET", p)).status, 404, p);
    }
  });

  test("--client-bundle alone serves the bundle and nothing under /", T, async () => {
    const server = await ctx.server({ flags: ["--client-bundle", BUNDLE] });
    assert.equal((await request(server.url, "GET", "/socket.io/socket.io.js")).status, 200);
    assert.equal((await request(server.url, "GET", "/")).status, 404);
  });

  test("the bundle follows --path: /rt/socket.io.js", T, async () => {
    const server = await ctx.server({ flags: ["--path", "/rt/", "--client-bundle", BUNDLE] });
    const res = await request(server.url, "GET", "/rt/socket.io.js");
    assert.equal(res.status, 200);
    assert.ok(res.body.equals(readFileSync(BUNDLE)));
    assert.equal((await request(server.url, "GET", "/socket.io/socket.io.js")).status, 404);
    const socket = await ctx.connect(server.url, { path: "/rt/" });
    assert.deepEqual(await call(socket, "ioswarm:echo", "rt"), ["rt"]);
  });
});

suite("bad page settings stop the node naming them", () => {
  for (const [name, flags, setting] of [
    ["a missing folder", ["--static", path.join(base, "nope")], /`static`.*--static/],
    ["a file as --static", ["--static", path.join(root, "app.js")], /`static`.*not a directory/],
    ["a missing bundle", ["--client-bundle", path.join(base, "socket.io.js")], /`client_bundle`.*--client-bundle/],
    ["a folder as the bundle", ["--client-bundle", root], /`client_bundle`.*not a file/],
  ]) {
    test(name, T, async () => {
      const res = await runToExit(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", ...flags]);
      assert.equal(res.signal, null, "the node had to be killed: it did not stop by itself");
      assert.notEqual(res.code, 0);
      assert.doesNotMatch(res.stdout, /ioswarm ready/);
      assert.match(res.stderr, setting);
    });
  }
});
