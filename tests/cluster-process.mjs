// A cluster of real ioswarm processes for the Node suites (tests/e2e, tests/browser, …): one CA
// and one certificate per node made with `ioswarm cluster init-ca / issue`, node 1 bootstraps,
// the others join through it, and `startCluster` resolves once every node reports the same
// alive members and a converged gossip view (GET /cluster on each admin port). Node built-ins
// only; each suite passes its own ServerProcess class (the e2e one adds admin helpers).
import { spawn, execFileSync } from "node:child_process";
import dgram from "node:dgram";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { BIN, ServerProcess as BaseProcess } from "./server-process.mjs";

/** `n` distinct UDP ports on 127.0.0.1 that were free a moment ago (for --cluster-listen). */
export async function freeUdpPorts(n) {
  const sockets = [];
  try {
    for (let i = 0; i < n; i++) {
      const s = dgram.createSocket("udp4");
      await new Promise((resolve, reject) => {
        s.once("error", reject);
        s.bind(0, "127.0.0.1", resolve);
      });
      sockets.push(s);
    }
    return sockets.map((s) => s.address().port);
  } finally {
    for (const s of sockets) s.close();
  }
}

/** The environment a node runs with: the runner's without IOSWARM_* settings, plus `env`. */
function nodeEnv(env) {
  const clean = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("IOSWARM_") || k === "IOSWARM_BIN"),
  );
  return { ...clean, ...env };
}

/**
 * A running cluster: `nodes[i]` is node i+1 (a ServerProcess with `url`, `adminUrl`, `redis`,
 * …), `dir` its scratch folder (CA, certificates, data dirs). `stop()` ends every node and
 * removes the folder.
 */
export class Cluster {
  constructor({ dir, Process, flags, nodeFlags, env, readyMs }) {
    this.dir = dir;
    this.Process = Process;
    this.flags = flags;
    this.nodeFlags = nodeFlags;
    this.env = env;
    this.readyMs = readyMs;
    this.nodes = [];
    this.clusterPorts = [];
  }

  /** Flags of node `id` (1-based), joining through the running nodes other than itself. */
  argsOf(id) {
    const args = [
      "--node-id", String(id),
      "--cluster-listen", `127.0.0.1:${this.clusterPorts[id - 1]}`,
      "--cluster-credentials", path.join(this.dir, `node${id}`),
      "--data-dir", path.join(this.dir, `data${id}`),
      "--listen", "127.0.0.1:0",
      "--admin-listen", "127.0.0.1:0",
      "--redis-listen", "127.0.0.1:0",
    ];
    const peers = this.nodes
      .map((node, i) => ({ node, id: i + 1 }))
      .filter(({ node, id: other }) => other !== id && node && node.alive);
    for (const { id: other } of peers) args.push("--join", `127.0.0.1:${this.clusterPorts[other - 1]}`);
    return [...args, ...this.flags, ...(this.nodeFlags(id) ?? [])];
  }

  /** Starts node `id` (again, after a stop or kill) and waits for its ready line. */
  async startNode(id) {
    const args = this.argsOf(id);
    const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: nodeEnv(this.env) });
    const node = new this.Process(child, [BIN, ...args].join(" "), { readyMs: this.readyMs });
    node.nodeId = id;
    this.nodes[id - 1] = node;
    await node.ready;
    return node;
  }

  /** The running nodes. */
  get running() {
    return this.nodes.filter((n) => n && n.alive);
  }

  /**
   * Waits until every running node is converged, agrees on one leader and sees exactly the
   * running nodes alive.
   */
  async waitConverged(ms = 30_000) {
    const deadline = Date.now() + ms;
    const want = this.running.map((n) => n.nodeId).sort().join(",");
    let last = "";
    while (Date.now() < deadline) {
      try {
        const views = await Promise.all(
          this.running.map((n) => fetch(`${n.adminUrl}/cluster`, { signal: AbortSignal.timeout(2000) }).then((r) => r.json())),
        );
        const leaders = new Set(views.map((v) => v.raft?.leader));
        const ok = views.every((v) => {
          const alive = v.members.filter((m) => m.liveness === "alive").map((m) => m.node_id).sort().join(",");
          return v.converged && alive === want;
        });
        if (ok && leaders.size === 1 && !leaders.has(null) && !leaders.has(undefined)) return views;
        last = JSON.stringify(views.map((v) => ({ id: v.node_id, converged: v.converged, leader: v.raft?.leader })));
      } catch (e) {
        last = String(e);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`cluster of ${want} did not converge within ${ms} ms: ${last}`);
  }

  /** SIGTERM to every node, then removes the scratch folder. */
  async stop() {
    await Promise.all(this.nodes.filter(Boolean).map((n) => n.stop()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts `n` ioswarm nodes forming one cluster. Options: `flags` (for every node),
 * `nodeFlags(id)` (extra flags of node `id`), `env`, `Process` (the ServerProcess class to
 * wrap each child in), `readyMs`.
 */
export async function startCluster(n, { flags = [], nodeFlags = () => [], env = {}, Process = BaseProcess, readyMs = 60_000 } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), "ioswarm-cluster-"));
  const cluster = new Cluster({ dir, Process, flags, nodeFlags, env, readyMs });
  try {
    execFileSync(BIN, ["cluster", "init-ca", "--dir", path.join(dir, "ca")], { stdio: "ignore" });
    for (let id = 1; id <= n; id++) {
      execFileSync(BIN, ["cluster", "issue", "--ca", path.join(dir, "ca"), "--node-id", String(id), "--out", path.join(dir, `node${id}`)], { stdio: "ignore" });
    }
    cluster.clusterPorts = await freeUdpPorts(n);
    // Node 1 bootstraps; the others join through the nodes already running.
    await cluster.startNode(1);
    await Promise.all(Array.from({ length: n - 1 }, (_, i) => cluster.startNode(i + 2)));
    await cluster.waitConverged();
    return cluster;
  } catch (e) {
    await cluster.stop().catch(() => {});
    throw e;
  }
}
