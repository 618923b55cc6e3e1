// The browser suite's harness: one demo of examples/apps running as a person would run it —
// its PHP backend under `php -S`, a 3-node ioswarm cluster serving the demo's page (--static)
// and the socket.io client bundle (--client-bundle) with the demo's ioswarm.toml, and headless
// Chromium (Debian `chromium`, driven by npm puppeteer-core) opening the page on several nodes.
// Tests read what a person would see: the text of the page's elements.
//
// Env: CHROMIUM (default /usr/bin/chromium), IOSWARM_BIN (see ../server-process.mjs).
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { startCluster } from "../cluster-process.mjs";
import { LIVE } from "../server-process.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");
export const APPS = path.join(ROOT, "examples/apps");
export const OUTPUT = path.join(HERE, "output");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const BUNDLE = path.join(HERE, "node_modules/socket.io-client/dist/socket.io.js");
/** How long a page may take to show what the test waits for. */
export const WAIT_MS = 10_000;
/** The backend address the shipped ioswarm.toml files name (README of examples/apps). */
const SHIPPED_BACKEND = "127.0.0.1:8080";

/** A TCP port on 127.0.0.1 that was free a moment ago. */
async function freeTcpPort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Fails (never skips) unless php-cli with phpredis and msgpack-php is installed. */
function requirePhp() {
  const code = 'exit(extension_loaded("redis") && extension_loaded("msgpack") ? 0 : 1);';
  return new Promise((resolve, reject) =>
    execFile("php", ["-r", code], (err) =>
      err
        ? reject(new Error(`php-cli with the redis and msgpack extensions is required (apt-get install php-cli php-redis php-msgpack): ${err.message}`))
        : resolve(),
    ),
  );
}

/** The PHP backend of a demo: `php -S 127.0.0.1:<port> backend.php` in the demo's folder. */
class PhpServer {
  constructor(dir, port, env) {
    this.url = `http://127.0.0.1:${port}`;
    this.log = "";
    this.child = spawn("php", ["-S", `127.0.0.1:${port}`, "backend.php"], {
      cwd: dir,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    LIVE.add(this.child);
    this.exited = new Promise((resolve) => this.child.on("exit", resolve));
    this.child.on("exit", () => LIVE.delete(this.child));
    for (const stream of [this.child.stdout, this.child.stderr]) {
      stream.setEncoding("utf8").on("data", (d) => {
        this.log += d;
        if (this.log.length > 100_000) this.log = this.log.slice(-50_000);
      });
    }
  }

  /** Resolves once the server answers HTTP; rejects if it exited first. */
  async ready() {
    const deadline = Date.now() + WAIT_MS;
    while (Date.now() < deadline) {
      if (this.child.exitCode !== null) throw new Error(`php -S exited (${this.child.exitCode}):\n${this.log}`);
      try {
        await fetch(this.url + "/", { signal: AbortSignal.timeout(1000) });
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    throw new Error(`php -S did not answer within ${WAIT_MS} ms:\n${this.log}`);
  }

  async stop() {
    if (this.child.exitCode === null) {
      this.child.kill("SIGTERM");
      await this.exited;
    }
  }
}

/**
 * A running demo: `demo.cluster` (3 nodes, `demo.cluster.nodes[i].url`), `demo.php` (the
 * backend, `demo.php.url`) and `demo.browser`. Start it with `Demo.start(name)`; `stop()`
 * closes everything.
 */
export class Demo {
  constructor(name) {
    this.name = name;
    this.dir = path.join(APPS, name);
    this.pages = [];
    this.errors = [];
  }

  /**
   * Starts demo `name`: its ioswarm.toml with the backend address replaced by the PHP
   * server's, 3 nodes, the PHP backend talking to node `redisNode`'s Redis port, Chromium.
   */
  static async start(name, { redisNode = 2 } = {}) {
    for (const [what, file] of [["Chromium (apt-get install chromium, or set CHROMIUM)", CHROMIUM], ["the socket.io-client bundle (npm ci in tests/browser)", BUNDLE]]) {
      if (!existsSync(file)) throw new Error(`${what} is required: ${file} is missing`);
    }
    await requirePhp();
    const demo = new Demo(name);
    try {
      const port = await freeTcpPort();
      demo.tmp = mkdtempSync(path.join(tmpdir(), `ioswarm-demo-${name}-`));
      const config = path.join(demo.tmp, "ioswarm.toml");
      writeFileSync(config, readFileSync(path.join(demo.dir, "ioswarm.toml"), "utf8").replaceAll(SHIPPED_BACKEND, `127.0.0.1:${port}`));
      demo.cluster = await startCluster(3, {
        flags: ["--config", config, "--static", path.join(demo.dir, "page"), "--client-bundle", BUNDLE],
      });
      const redis = demo.cluster.nodes[redisNode - 1].redis;
      demo.php = new PhpServer(demo.dir, port, { IOSWARM_REDIS: `${redis.host}:${redis.port}` });
      await demo.php.ready();
      demo.browser = await puppeteer.launch({
        executablePath: CHROMIUM,
        headless: true,
        protocolTimeout: 30_000,
        // CI runs as root, where Chromium's sandbox cannot start.
        args: ["--no-sandbox", "--disable-dev-shm-usage"],
      });
      return demo;
    } catch (e) {
      await demo.stop();
      throw e;
    }
  }

  /** The node of `demo.cluster` with id `id` (1-based). */
  node(id) {
    return this.cluster.nodes[id - 1];
  }

  /**
   * Opens a new tab on `url`; page errors and failed requests are collected (`check()` fails
   * the test on them).
   */
  async tab(url) {
    const page = await this.browser.newPage();
    await page.setViewport({ width: 900, height: 640 });
    page.on("pageerror", (e) => this.errors.push(`${url}: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") this.errors.push(`${url}: console: ${m.text()}`);
    });
    this.pages.push(page);
    await page.goto(url, { waitUntil: "load", timeout: WAIT_MS });
    return page;
  }

  /**
   * Opens the demo's page on node `id` and waits until it shows it is connected (unless
   * `connected` is false: a page that connects once the person did something).
   */
  async open(id, { connected = true } = {}) {
    const page = await this.tab(this.node(id).url + "/");
    page.label = `page on node ${id}`;
    if (connected) await waitText(page, "#status", "connected");
    return page;
  }

  /** Opens `pathname` of the PHP backend (its own screens). */
  async backend(pathname = "/") {
    const page = await this.tab(this.php.url + pathname);
    page.label = "PHP app";
    return page;
  }

  /**
   * Brings `page`'s tab to the front, as a person does before typing or clicking in it (Chromium
   * runs no layout for a tab in the background, and a click needs one).
   */
  async focus(page) {
    await page.bringToFront();
    return page;
  }

  /**
   * Closes a tab, as a person closing it: its connection ends. A demo page's connection is
   * first let finish its upgrade to WebSocket (the page's global `socket`): a long-polling
   * session whose pending GET is cut stays open on ioswarm until the ping timeout, where Node's
   * engine.io closes it at once, and a test must not depend on which transport it caught.
   */
  async close(page) {
    this.pages = this.pages.filter((p) => p !== page);
    const demoPage = await page.evaluate(() => typeof socket === "object");
    if (demoPage) {
      await page.waitForFunction(() => socket.io.engine?.transport?.name === "websocket", { timeout: WAIT_MS, polling: 25 });
    }
    await page.close();
  }

  /**
   * Waits until every node knows the rooms every other node's sockets are in (a person clicking
   * "join" then another one sending takes longer than the few milliseconds this takes; a test
   * does not). Reads GET /cluster: each node's own interest version against what the others
   * hold of it.
   */
  async roomsKnown() {
    const deadline = Date.now() + WAIT_MS;
    let last = "";
    while (Date.now() < deadline) {
      const views = await Promise.all(
        this.cluster.running.map((n) => fetch(`${n.adminUrl}/cluster`, { signal: AbortSignal.timeout(2000) }).then((r) => r.json())),
      );
      const own = new Map(views.map((v) => [v.node_id, v.members.find((m) => m.self).interest_version]));
      const behind = views.flatMap((v) =>
        v.members.filter((m) => !m.self && own.has(m.node_id) && m.interest_version < own.get(m.node_id)).map((m) => `${v.node_id} of ${m.node_id}`),
      );
      if (views.every((v) => v.converged) && behind.length === 0) return;
      last = JSON.stringify({ behind, converged: views.map((v) => v.converged) });
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`room interest did not reach every node within ${WAIT_MS} ms: ${last}`);
  }

  /** Saves a screenshot of `page` as output/<demo>.png and prints where. */
  async screenshot(page) {
    mkdirSync(OUTPUT, { recursive: true });
    const file = path.join(OUTPUT, `${this.name}.png`);
    await page.bringToFront();
    await page.screenshot({ path: file, fullPage: true });
    console.log(`screenshot of ${this.name} (${page.label ?? page.url()}): ${file}`);
    return file;
  }

  /** Throws if any page had a script error. */
  check() {
    if (this.errors.length > 0) throw new Error(`errors in the pages:\n${this.errors.join("\n")}`);
  }

  async stop() {
    await this.browser?.close().catch(() => {});
    await this.php?.stop();
    await this.cluster?.stop();
    if (this.tmp) rmSync(this.tmp, { recursive: true, force: true });
  }

  /** What went wrong, for a failed test: the PHP log and each node's last warnings and errors. */
  describe() {
    const nodes = (this.cluster?.nodes ?? []).map((n, i) => {
      const lines = n.stderr.split("\n").filter((l) => / (WARN|ERROR) /.test(l));
      return `--- node ${i + 1}: last warnings and errors ---\n${lines.slice(-15).join("\n")}`;
    });
    return [`--- php -S ---\n${this.php?.log.slice(-4000) ?? ""}`, ...nodes].join("\n");
  }
}

/**
 * The text a person sees in the element `selector` of `page` (its rendered `innerText`, runs of
 * white space as one space; null without such an element).
 */
export function text(page, selector) {
  return page.$eval(selector, (e) => e.innerText.replace(/\s+/g, " ").trim()).catch(() => null);
}

/** The texts a person sees in every element matching `selector`, in document order. */
export function texts(page, selector) {
  return page.$$eval(selector, (list) => list.map((e) => e.innerText.replace(/\s+/g, " ").trim()));
}

/** Waits until `selector`'s text is `expected`; on timeout, says what the page showed. */
export async function waitText(page, selector, expected) {
  await waitFor(page, `${selector} shows ${JSON.stringify(expected)}`, async () => (await text(page, selector)) === expected, () => text(page, selector));
}

/** Waits until the texts of `selector` are `expected` (a list, in order). */
export async function waitTexts(page, selector, expected) {
  const want = JSON.stringify(expected);
  await waitFor(page, `${selector} shows ${want}`, async () => JSON.stringify(await texts(page, selector)) === want, () => texts(page, selector));
}

/** Polls `check` until it holds; fails naming `what` and what `actual()` gave last. */
async function waitFor(page, what, check, actual) {
  const deadline = Date.now() + WAIT_MS;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${page.label ?? page.url()}: ${what} within ${WAIT_MS} ms; it shows ${JSON.stringify(await actual())}`);
}
