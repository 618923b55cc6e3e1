//! A cluster of real `ioswarm` processes on 127.0.0.1 (optionally inside a network namespace).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::Agent;
use crate::http::{self, HttpResponse};
use crate::netns::Netns;
use crate::process;
use crate::view::ClusterView;
use crate::wait::wait_for;

/// Default deadline for a cluster to form or converge.
pub const CONVERGE: Duration = Duration::from_secs(45);
/// How long a node may take to print its ready line.
const READY: Duration = Duration::from_secs(60);
/// How long SIGTERM may take before the test fails (and the node is killed).
const STOP: Duration = Duration::from_secs(30);
/// Deadline of one admin HTTP request.
const HTTP: Duration = Duration::from_secs(10);

/// Cluster tests spawn many processes each; they run one at a time within a test binary (and
/// cargo runs test binaries one after another).
static SERIAL: Mutex<()> = Mutex::new(());

/// Options of [`Cluster::builder`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    netns: bool,
    cluster_timeout_ms: Option<u64>,
    extra_args: Vec<String>,
}

impl ClusterBuilder {
    /// Run the nodes (and [`Cluster::agent`]s) in a fresh network namespace, so that
    /// [`Cluster::partition`] can cut nodes off with nftables. Needs root, `ip` and `nft`.
    pub fn netns(mut self) -> Self {
        self.netns = true;
        self
    }

    /// `--cluster-timeout-ms` for every node.
    pub fn cluster_timeout_ms(mut self, ms: u64) -> Self {
        self.cluster_timeout_ms = Some(ms);
        self
    }

    /// Extra flags for every node.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// Creates the credentials, starts node 1 (which bootstraps the cluster), then every other
    /// node joining node 1, and waits until every node lists all of them as raft members and
    /// agrees on a leader. Panics (printing the nodes' logs) when that does not happen.
    pub fn spawn(self) -> Cluster {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(self.nodes >= 1, "a cluster needs at least one node");
        let netns = self.netns.then(|| Netns::create().unwrap_or_else(|e| panic!("{e}")));
        let dir = test_dir();
        let bin = process::ioswarm_bin();
        let ca = dir.join("ca");
        let mut cmd = process::command(None, &bin);
        cmd.args(["cluster", "init-ca", "--dir"]).arg(&ca);
        process::run(cmd).unwrap_or_else(|e| panic!("{e}"));
        let ports = free_udp_ports(self.nodes);
        let mut nodes = Vec::new();
        for (i, port) in (1u64..).zip(ports) {
            let node_dir = dir.join(format!("node-{i}"));
            let creds = node_dir.join("credentials");
            let mut cmd = process::command(None, &bin);
            cmd.args(["cluster", "issue", "--ca"]).arg(&ca).args(["--node-id", &i.to_string(), "--out"]).arg(&creds);
            process::run(cmd).unwrap_or_else(|e| panic!("{e}"));
            nodes.push(Node {
                id: i,
                cluster_addr: SocketAddr::from(([127, 0, 0, 1], port)),
                dir: node_dir,
                addrs: OnceLock::new(),
                child: Mutex::new(None),
                starts: AtomicU32::new(0),
            });
        }
        let http_agent = netns
            .as_ref()
            .map(|ns| Agent::spawn(&dir.join("http-agent.log"), Some(ns.name())).unwrap_or_else(|e| panic!("{e}")));
        let cluster =
            Cluster { nodes, dir, bin, http_agent, netns, options: self, agents: AtomicU32::new(0), _serial: serial };
        cluster.start(1, &[]);
        let first = cluster.node(1).cluster_addr;
        for id in 2..=cluster.nodes.len() as u64 {
            cluster.start(id, &[first]);
        }
        let all: BTreeSet<u64> = cluster.ids().into_iter().collect();
        wait_for(&format!("a cluster of {} nodes with one leader", all.len()), CONVERGE, || {
            cluster.check_processes()?;
            let mut leaders = BTreeSet::new();
            for id in &all {
                let view = cluster.view(*id)?;
                if view.raft_members() != all {
                    return Err(format!("node {id} lists raft members {:?}", view.raft_members()));
                }
                leaders.insert(view.raft.leader.ok_or_else(|| format!("node {id} knows no leader"))?);
            }
            if leaders.len() == 1 { Ok(()) } else { Err(format!("nodes disagree on the leader: {leaders:?}")) }
        });
        cluster
    }
}

/// One node of a [`Cluster`]: its ids and addresses (the same across restarts).
#[derive(Debug)]
pub struct Node {
    id: u64,
    cluster_addr: SocketAddr,
    dir: PathBuf,
    addrs: OnceLock<Addrs>,
    child: Mutex<Option<Child>>,
    starts: AtomicU32,
}

/// The addresses a node printed on its ready line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addrs {
    /// Socket.IO listener.
    pub socketio: String,
    /// Admin HTTP listener.
    pub admin: String,
    /// Redis-protocol listener.
    pub redis: String,
}

impl Node {
    /// Its node id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its cluster (QUIC, UDP) address.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster_addr
    }

    fn addrs(&self) -> &Addrs {
        self.addrs.get().unwrap_or_else(|| panic!("node {} never started", self.id))
    }

    /// `http://<socket.io addr>` for socket.io clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs().socketio)
    }

    /// The admin listener's `host:port`.
    pub fn admin_addr(&self) -> &str {
        &self.addrs().admin
    }

    /// `redis://<redis addr>` for Redis clients.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addrs().redis)
    }

    /// Whether the test started it and has not killed or stopped it since.
    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Its folder (data dir, credentials, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its stdout log (every start appended).
    pub fn stdout_log(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }

    /// Its stderr log (every start appended).
    pub fn stderr_log(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }

    fn note(&self, text: &str) {
        for path in [self.stdout_log(), self.stderr_log()] {
            if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "==== test harness: {text} ====");
            }
        }
    }
}

/// Running ioswarm nodes. Dropping it kills every node still running; when the test is
/// panicking it first prints each node's `/cluster` and log tails and keeps its folder.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    bin: PathBuf,
    http_agent: Option<Agent>,
    netns: Option<Netns>,
    options: ClusterBuilder,
    agents: AtomicU32,
    _serial: MutexGuard<'static, ()>,
}

impl Cluster {
    /// `n` nodes on 127.0.0.1; see [`ClusterBuilder::spawn`].
    pub fn spawn(n: usize) -> Cluster {
        Self::builder(n).spawn()
    }

    /// Options for a cluster of `n` nodes.
    pub fn builder(n: usize) -> ClusterBuilder {
        ClusterBuilder { nodes: n, netns: false, cluster_timeout_ms: None, extra_args: Vec::new() }
    }

    /// Node `id` (1-based).
    pub fn node(&self, id: u64) -> &Node {
        usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.nodes.get(i))
            .unwrap_or_else(|| panic!("no node {id} in a cluster of {}", self.nodes.len()))
    }

    /// Every node id.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The ids of the nodes that are running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.is_running()).map(|n| n.id).collect()
    }

    /// The socket.io URLs of `ids`, in that order (for clients that move on when a node dies).
    pub fn urls(&self, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|id| self.node(*id).url()).collect()
    }

    /// The test's folder (kept when the test fails).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The network namespace, for clusters built with [`ClusterBuilder::netns`].
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// A new agent (socket.io clients, emitters, Redis connections), in the cluster's network
    /// namespace if it has one; its log is kept in the test folder.
    pub fn agent(&self) -> Agent {
        let n = self.agents.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.join(format!("agent-{n}.log"));
        Agent::spawn(&log, self.netns.as_ref().map(Netns::name)).unwrap_or_else(|e| panic!("{e}"))
    }

    // ---- process control ----

    fn start(&self, id: u64, join: &[SocketAddr]) {
        if let Err(e) = self.try_start(id, join) {
            panic!("node {id} did not start: {e}");
        }
    }

    fn try_start(&self, id: u64, join: &[SocketAddr]) -> Result<(), String> {
        let node = self.node(id);
        let mut guard = node.child.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_some() {
            return Err("it is already running".into());
        }
        let start = node.starts.fetch_add(1, Ordering::Relaxed) + 1;
        let (listen, admin, redis) = match node.addrs.get() {
            Some(a) => (a.socketio.clone(), a.admin.clone(), a.redis.clone()),
            None => ("127.0.0.1:0".into(), "127.0.0.1:0".into(), "127.0.0.1:0".into()),
        };
        let log_filter = std::env::var("IOSWARM_CLUSTER_TEST_LOG").unwrap_or_else(|_| "info".into());
        let mut cmd = process::command(self.netns.as_ref().map(Netns::name), &self.bin);
        cmd.args(["--node-id", &id.to_string(), "--cluster-listen", &node.cluster_addr.to_string()])
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .arg("--cluster-credentials")
            .arg(node.dir.join("credentials"))
            .args(["--listen", &listen, "--admin-listen", &admin, "--redis-listen", &redis])
            .args(["--client-rooms", "--client-relay", "--log", &log_filter]);
        for addr in join {
            cmd.args(["--join", &addr.to_string()]);
        }
        if let Some(ms) = self.options.cluster_timeout_ms {
            cmd.args(["--cluster-timeout-ms", &ms.to_string()]);
        }
        cmd.args(&self.options.extra_args);
        node.note(&format!("start #{start}: {cmd:?}"));
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.stderr_log())
            .map_err(|e| format!("opening {}: {e}", node.stderr_log().display()))?;
        let mut stdout_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.stdout_log())
            .map_err(|e| format!("opening {}: {e}", node.stdout_log().display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().map_err(|e| format!("spawning {}: {e}", self.bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        // The thread ends when the node exits (its stdout closes).
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(stdout_log, "{line}");
                if !sent && line.starts_with("ioswarm ready ") {
                    sent = true;
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + READY;
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("it exited ({status}) before its ready line\n{}", self.describe(node)));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("no ready line within {READY:?}\n{}", self.describe(node)));
                }
            }
        };
        let addrs = match parse_ready(&line, id, node.cluster_addr) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        if let Some(old) = node.addrs.get() {
            if *old != addrs {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("restarted on {addrs:?} instead of {old:?}"));
            }
        } else {
            let _ = node.addrs.set(addrs);
        }
        *guard = Some(child);
        Ok(())
    }

    /// SIGKILL: node `id` crashes.
    pub fn kill(&self, id: u64) {
        let node = self.node(id);
        let child = node.child.lock().unwrap_or_else(PoisonError::into_inner).take();
        let mut child = child.unwrap_or_else(|| panic!("kill({id}): node {id} is not running"));
        let _ = child.kill();
        let _ = child.wait();
        node.note("killed with SIGKILL");
    }

    /// SIGTERM: node `id` leaves the cluster gracefully; waits for it to exit and returns its
    /// exit status. Panics if it has not exited within 30 s.
    pub fn stop(&self, id: u64) -> ExitStatus {
        let node = self.node(id);
        let child = node.child.lock().unwrap_or_else(PoisonError::into_inner).take();
        let mut child = child.unwrap_or_else(|| panic!("stop({id}): node {id} is not running"));
        node.note("SIGTERM");
        process::signal(child.id(), "TERM").unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + STOP;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    node.note(&format!("exited after SIGTERM: {status}"));
                    return status;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("node {id} did not exit within {STOP:?} of SIGTERM\n{}", self.describe(node));
                }
            }
        }
    }

    /// Starts node `id` again (after [`Cluster::kill`] or [`Cluster::stop`]) with the same
    /// addresses and data dir, joining through every running node; waits for its ready line.
    pub fn restart(&self, id: u64) {
        let join: Vec<SocketAddr> =
            self.nodes.iter().filter(|n| n.id != id && n.is_running()).map(|n| n.cluster_addr).collect();
        self.start(id, &join);
    }

    /// Panics with a node's log tail if a node the test did not stop has exited (called by
    /// every wait of the cluster, so that a crash fails the test at once).
    pub fn check_processes(&self) -> Result<(), String> {
        for node in &self.nodes {
            let mut guard = node.child.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(child) = guard.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                guard.take();
                drop(guard);
                node.note(&format!("exited on its own: {status}"));
                panic!(
                    "node {} exited on its own ({status}; a signal the test did not send comes from outside it)\n{}",
                    node.id,
                    self.describe(node)
                );
            }
        }
        Ok(())
    }

    // ---- admin API ----

    /// An admin API request to node `id` (through the namespace's agent when there is one).
    /// When it fails because a node died, the test fails saying so (see
    /// [`Cluster::check_processes`]).
    pub fn http(&self, id: u64, method: &str, path: &str, body: Option<&Value>) -> Result<HttpResponse, String> {
        let res = self.http_once(id, method, path, body);
        if res.is_err() {
            self.check_processes()?;
        }
        res
    }

    fn http_once(&self, id: u64, method: &str, path: &str, body: Option<&Value>) -> Result<HttpResponse, String> {
        let admin = self.node(id).admin_addr().to_owned();
        match &self.http_agent {
            Some(agent) => {
                let (status, body) = agent.http(method, &format!("http://{admin}{path}"), body, HTTP)?;
                Ok(HttpResponse { status, body })
            }
            None => {
                let body = body.map(Value::to_string);
                http::request(&admin, method, path, body.as_deref(), HTTP)
            }
        }
    }

    /// An admin API request that must answer 200 with JSON; panics otherwise.
    pub fn admin_json(&self, id: u64, method: &str, path: &str, body: Option<Value>) -> Value {
        let res = self.http(id, method, path, body.as_ref()).unwrap_or_else(|e| panic!("node {id}: {e}"));
        assert_eq!(res.status, 200, "node {id}: {method} {path} answered {}: {}", res.status, res.body);
        res.json().unwrap_or_else(|e| panic!("node {id}: {method} {path}: {e}"))
    }

    /// `POST /v1/emit` on node `id`.
    pub fn emit(&self, id: u64, body: Value) -> Value {
        self.admin_json(id, "POST", "/v1/emit", Some(body))
    }

    /// `GET /metrics` of node `id`.
    pub fn metrics(&self, id: u64) -> String {
        let res = self.http(id, "GET", "/metrics", None).unwrap_or_else(|e| panic!("node {id}: {e}"));
        assert_eq!(res.status, 200, "node {id}: GET /metrics answered {}: {}", res.status, res.body);
        res.body
    }

    /// `GET /cluster` of node `id`.
    pub fn view(&self, id: u64) -> Result<ClusterView, String> {
        let res = self.http(id, "GET", "/cluster", None)?;
        parse_view(id, &res)
    }

    /// Waits until every running node is converged and they agree: the same leader (one of
    /// them, which says it is the leader), the same raft members (every running node among
    /// them), exactly the running nodes alive, and every node holding each running member's
    /// latest room interest (the version that member reports, and as many rooms as it has
    /// members in). Returns the views.
    pub fn wait_converged(&self, timeout: Duration) -> BTreeMap<u64, ClusterView> {
        let running: BTreeSet<u64> = self.running().into_iter().collect();
        wait_for(&format!("nodes {running:?} to converge"), timeout, || {
            self.check_processes()?;
            let mut views = BTreeMap::new();
            for id in &running {
                views.insert(*id, self.view(*id)?);
            }
            converged(&running, &views)?;
            Ok(views)
        })
    }

    /// Waits until each of `among` answers and they agree on a leader that is one of them and
    /// says so itself; returns its id.
    pub fn wait_leader(&self, among: &[u64], timeout: Duration) -> u64 {
        wait_for(&format!("a leader among {among:?}"), timeout, || {
            self.check_processes()?;
            let mut leaders = BTreeSet::new();
            for id in among {
                let view = self.view(*id)?;
                leaders.insert(view.raft.leader.ok_or_else(|| format!("node {id} knows no leader"))?);
            }
            let leader = match leaders.iter().collect::<Vec<_>>().as_slice() {
                [one] => **one,
                _ => return Err(format!("they name leaders {leaders:?}")),
            };
            if !among.contains(&leader) {
                return Err(format!("the leader is {leader}, not one of them"));
            }
            let state = self.view(leader)?.raft.state;
            if state != "leader" { Err(format!("node {leader} says it is {state}")) } else { Ok(leader) }
        })
    }

    fn describe(&self, node: &Node) -> String {
        format!(
            "---- node {} (cluster {}) stdout, last 10 lines ----\n{}\n---- node {} stderr ({}), last 60 lines ----\n{}",
            node.id,
            node.cluster_addr,
            process::tail(&node.stdout_log(), 10),
            node.id,
            node.stderr_log().display(),
            process::tail(&node.stderr_log(), 60),
        )
    }
}

fn parse_view(id: u64, res: &HttpResponse) -> Result<ClusterView, String> {
    if res.status != 200 {
        return Err(format!("node {id}: GET /cluster answered {}: {}", res.status, res.body));
    }
    serde_json::from_str(&res.body).map_err(|e| format!("node {id}: GET /cluster: {e}: {}", res.body))
}

/// The agreement [`Cluster::wait_converged`] waits for, between the views of `running`.
fn converged(running: &BTreeSet<u64>, views: &BTreeMap<u64, ClusterView>) -> Result<(), String> {
    let mut leaders = BTreeSet::new();
    let mut raft_members = BTreeSet::new();
    for (id, view) in views {
        if view.node_id != *id {
            return Err(format!("node {id} says it is node {}", view.node_id));
        }
        if !view.converged {
            return Err(format!("node {id} is not converged"));
        }
        leaders.insert(view.raft.leader);
        raft_members.insert(view.raft_members());
        if view.alive() != *running {
            return Err(format!("node {id} sees alive {:?}, running are {running:?}", view.alive()));
        }
        for other in running {
            let own = views[other].member(*other);
            let seen = view.member(*other);
            let (own_version, seen_version) = (own.map(|m| m.interest_version), seen.map(|m| m.interest_version));
            if own_version.is_none() || own_version != seen_version {
                return Err(format!(
                    "node {id} holds interest version {seen_version:?} of node {other}, which is at {own_version:?}"
                ));
            }
            // A room joined a moment ago counts on its node at once but enters the node's
            // interest version only with its next flush: compare the room counts too.
            if other != id
                && let (Some(own), Some(held)) = (own, seen.and_then(|m| m.interest_rooms))
                && own.rooms != held
            {
                return Err(format!("node {id} holds {held} rooms of node {other}, which has {}", own.rooms));
            }
        }
    }
    let leader = match leaders.iter().collect::<Vec<_>>().as_slice() {
        [Some(l)] => *l,
        _ => return Err(format!("leaders named: {leaders:?}")),
    };
    if !running.contains(&leader) {
        return Err(format!("the leader {leader} is not running"));
    }
    if views[&leader].raft.state != "leader" {
        return Err(format!("node {leader} is named leader but says {}", views[&leader].raft.state));
    }
    match raft_members.iter().collect::<Vec<_>>().as_slice() {
        [members] if running.is_subset(members) => Ok(()),
        _ => Err(format!("raft members disagree or miss running nodes: {raft_members:?}")),
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            for node in &self.nodes {
                if node.is_running() && node.addrs.get().is_some() {
                    // Not `view`: it may panic, and a panic while panicking aborts.
                    match self.http_once(node.id, "GET", "/cluster", None).and_then(|r| parse_view(node.id, &r)) {
                        Ok(view) => eprintln!("---- node {} GET /cluster ----\n{view:#?}", node.id),
                        Err(e) => eprintln!("---- node {} GET /cluster failed: {e}", node.id),
                    }
                }
            }
        }
        for node in &self.nodes {
            if let Some(mut child) = node.child.lock().unwrap_or_else(PoisonError::into_inner).take() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.note(&format!("had exited on its own: {status}"));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if failed {
            for node in &self.nodes {
                eprintln!("{}", self.describe(node));
            }
            if let Some(agent) = &self.http_agent {
                eprintln!("---- http agent ----\n{}", process::tail(agent.log_path(), 20));
            }
            eprintln!("cluster test folder kept: {}", self.dir.display());
        } else if std::env::var_os("IOSWARM_CLUSTER_TEST_KEEP").is_some() {
            eprintln!("cluster test folder kept (IOSWARM_CLUSTER_TEST_KEEP): {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `ioswarm ready socketio=A admin=A redis=A cluster=A node_id=N` → the addresses, checking the
/// cluster fields when present.
fn parse_ready(line: &str, id: u64, cluster: SocketAddr) -> Result<Addrs, String> {
    let fields: BTreeMap<&str, &str> = line.split_whitespace().skip(2).filter_map(|f| f.split_once('=')).collect();
    let get = |k: &str| fields.get(k).map(|v| (*v).to_owned()).ok_or_else(|| format!("ready line lacks {k}=: {line}"));
    let addrs = Addrs { socketio: get("socketio")?, admin: get("admin")?, redis: get("redis")? };
    if let Some(n) = fields.get("node_id")
        && *n != id.to_string()
    {
        return Err(format!("node {id} says node_id={n}: {line}"));
    }
    if let Some(c) = fields.get("cluster")
        && *c != cluster.to_string()
    {
        return Err(format!("node {id} listens for the cluster on {c}, not {cluster}: {line}"));
    }
    Ok(addrs)
}

/// `n` distinct UDP ports that were free a moment ago on 127.0.0.1.
fn free_udp_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding a UDP socket: {e}")))
        .collect();
    sockets.iter().map(|s| s.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}")).port()).collect()
}

/// A fresh folder for this test: `$IOSWARM_CLUSTER_TEST_DIR` or the system temp dir, named after
/// the test thread.
fn test_dir() -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var_os("IOSWARM_CLUSTER_TEST_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let name: String = std::thread::current()
        .name()
        .unwrap_or("cluster")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = base.join(format!("ioswarm-{name}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    // The agent logs and node logs go here; make sure the folder is writable before going on.
    File::create(dir.join("README"))
        .and_then(|mut f| {
            writeln!(f, "ioswarm cluster test {name}: node-N/ (credentials, data, stdout.log, stderr.log), agent-*.log")
        })
        .unwrap_or_else(|e| panic!("writing into {}: {e}", dir.display()));
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_gives_addresses_and_checks_cluster_fields() {
        let cluster: SocketAddr = "127.0.0.1:7001".parse().expect("addr");
        let line =
            "ioswarm ready socketio=127.0.0.1:1 admin=127.0.0.1:2 redis=127.0.0.1:3 cluster=127.0.0.1:7001 node_id=2";
        let addrs = parse_ready(line, 2, cluster).expect("parses");
        assert_eq!(addrs.socketio, "127.0.0.1:1");
        assert_eq!(addrs.redis, "127.0.0.1:3");
        assert!(parse_ready(line, 3, cluster).is_err());
        assert!(parse_ready("ioswarm ready socketio=127.0.0.1:1", 1, cluster).is_err());
    }
}
