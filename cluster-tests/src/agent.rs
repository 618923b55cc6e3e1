//! The Node agent (`cluster-tests/js/agent.mjs`): real socket.io clients, the
//! `@socket.io/redis-emitter` and node-redis, driven over JSON lines.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process;

type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Result<Value, String>>>>>;

/// How long to wait before concluding that a message will NOT arrive (a duplicate, a stray
/// delivery) once the expected ones did.
pub const QUIET: Duration = Duration::from_millis(750);

/// How long a request may take unless the call says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A running agent. Dropping it closes stdin (the agent closes its clients and exits) and kills
/// it if it lingers; while a test panics, the tail of its stderr is printed.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    stdin: Mutex<Option<ChildStdin>>,
    pending: Pending,
    next_id: AtomicU64,
    log: PathBuf,
    reader: Option<JoinHandle<()>>,
}

impl Agent {
    /// The agent's folder (`cluster-tests/js`).
    pub fn js_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
    }

    /// Starts an agent (in network namespace `netns` when given), its stderr written to
    /// `log`. Fails with what to do when node or the agent's packages are missing.
    pub fn spawn(log: &Path, netns: Option<&str>) -> Result<Agent, String> {
        let dir = Self::js_dir();
        if !dir.join("node_modules").join("socket.io-client").is_dir() {
            return Err(format!(
                "{}/node_modules is missing: run `npm ci` in {} (.ci/run does it)",
                dir.display(),
                dir.display()
            ));
        }
        let stderr = File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut cmd = process::command(netns, "node");
        cmd.arg(dir.join("agent.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().map_err(|e| format!("could not start node (is Node.js >= 20 installed?): {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("agent stdout missing")?;
        let pending: Pending = Arc::default();
        let (ready_tx, ready_rx) = mpsc::channel();
        pending.lock().unwrap_or_else(|e| e.into_inner()).insert(0, ready_tx);
        let reader = {
            let pending = pending.clone();
            std::thread::spawn(move || read_replies(stdout, &pending))
        };
        let mut agent = Agent {
            child,
            stdin: Mutex::new(stdin),
            pending,
            next_id: AtomicU64::new(1),
            log: log.into(),
            reader: Some(reader),
        };
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(_)) => Ok(agent),
            Ok(Err(e)) => Err(format!("agent failed to start: {e}\n{}", process::tail(log, 30))),
            Err(_) => {
                let _ = agent.child.kill();
                Err(format!("agent did not start within 20 s\n{}", process::tail(log, 30)))
            }
        }
    }

    /// Sends `cmd` with `params` (a JSON object) and waits for its reply (60 s at most).
    pub fn call(&self, cmd: &str, params: Value) -> Result<Value, String> {
        self.call_timeout(cmd, params, DEFAULT_TIMEOUT)
    }

    /// [`Agent::call`] with a deadline for the reply.
    pub fn call_timeout(&self, cmd: &str, params: Value, timeout: Duration) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = match params {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => return Err(format!("agent parameters must be an object, not {other}")),
        };
        request.insert("id".into(), id.into());
        request.insert("cmd".into(), cmd.into());
        let (tx, rx) = mpsc::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
        let line = format!("{}\n", Value::Object(request));
        {
            let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
            let written = match stdin.as_mut() {
                Some(s) => s.write_all(line.as_bytes()).and_then(|()| s.flush()),
                None => Err(std::io::Error::other("stdin closed")),
            };
            if let Err(e) = written {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                return Err(format!("agent {cmd}: writing the request: {e}"));
            }
        }
        match rx.recv_timeout(timeout) {
            Ok(reply) => reply.map_err(|e| format!("agent {cmd}: {e}")),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                Err(format!("agent {cmd}: no reply within {timeout:?}"))
            }
        }
    }

    /// [`Agent::call`] that panics (with the agent's error) on failure.
    pub fn req(&self, cmd: &str, params: Value) -> Value {
        match self.call(cmd, params) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    // ---- socket.io clients ----

    /// Connects `count` websocket clients of namespace `/` to `urls` (the first URL first; see
    /// the reconnection rules in agent.mjs) and waits until they are connected; their ids.
    pub fn connect(&self, urls: &[String], count: usize) -> Vec<String> {
        self.connect_with(urls, count, json!({}))
    }

    /// [`Agent::connect`] with more options (`nsp`, `transports`, `reconnect`, `ackReply`,
    /// `prefix`).
    pub fn connect_with(&self, urls: &[String], count: usize, options: Value) -> Vec<String> {
        let mut params = json!({ "urls": urls, "count": count });
        merge(&mut params, options);
        let reply = self.req("connect", params);
        strings(&reply["clients"])
    }

    /// `ioswarm:join` of `rooms` on each client (acknowledged).
    pub fn join(&self, clients: &[String], rooms: &[&str]) {
        let reply = self.req("join", json!({ "clients": clients, "rooms": rooms }));
        for r in reply.as_array().into_iter().flatten() {
            let joined = strings(&r["ack"]["rooms"]);
            for room in rooms {
                assert!(joined.iter().any(|j| j == room), "join ack of {} lacks {room}: {r}", r["client"]);
            }
        }
    }

    /// `ioswarm:leave` of `rooms` on each client.
    pub fn leave(&self, clients: &[String], rooms: &[&str]) {
        self.req("leave", json!({ "clients": clients, "rooms": rooms }));
    }

    /// `ioswarm:to(room, event, ...args)` from `client`; the ack (`{recipients}`).
    pub fn relay(&self, client: &str, room: &str, event: &str, args: Value) -> Value {
        self.req("to", json!({ "client": client, "room": room, "event": event, "args": args }))
    }

    /// How many `event`s each of `clients` received.
    pub fn counts(&self, clients: &[String], event: &str) -> BTreeMap<String, u64> {
        let reply = self.req("counts", json!({ "clients": clients, "event": event }));
        reply
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
            .unwrap_or_default()
    }

    /// The argument lists of every `event` each of `clients` received, in order.
    pub fn events(&self, clients: &[String], event: &str) -> BTreeMap<String, Vec<Value>> {
        let reply = self.req("events", json!({ "clients": clients, "event": event }));
        reply
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_array().into_iter().flatten().map(|e| e["args"].clone()).collect()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until each of `clients` received at least `count` `event`s.
    pub fn wait_events(&self, clients: &[String], event: &str, count: u64, timeout: Duration) {
        let params = json!({ "clients": clients, "event": event, "count": count, "timeoutMs": millis(timeout) });
        if let Err(e) = self.call_timeout("wait_events", params, timeout + Duration::from_secs(10)) {
            panic!("{e}");
        }
    }

    /// Waits until each of `expected` received `event`, lets [`QUIET`] pass, and asserts that
    /// every one of `expected` received it exactly once and every other of `all` never; returns
    /// the argument lists each of `expected` got.
    pub fn expect_once(&self, all: &[String], event: &str, expected: &[String]) -> BTreeMap<String, Value> {
        if !expected.is_empty() {
            self.wait_events(expected, event, 1, Duration::from_secs(20));
        }
        crate::wait::quiet(QUIET);
        let counts = self.counts(all, event);
        let want: BTreeMap<String, u64> = all.iter().map(|id| (id.clone(), u64::from(expected.contains(id)))).collect();
        assert_eq!(counts, want, "\"{event}\": received counts per client (expected exactly once for {expected:?})");
        self.events(expected, event).into_iter().filter_map(|(k, mut v)| v.pop().map(|args| (k, args))).collect()
    }

    /// Waits until every one of `clients` is connected with its rooms joined again.
    pub fn wait_ready(&self, clients: &[String], timeout: Duration) -> Value {
        let params = json!({ "clients": clients, "timeoutMs": millis(timeout) });
        match self.call_timeout("wait_ready", params, timeout + Duration::from_secs(10)) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Each client's status (`connected`, `ready`, `sid`, `url`, `urlIndex`, `connects`,
    /// `disconnects`, `rooms`).
    pub fn status(&self, clients: &[String]) -> BTreeMap<String, Value> {
        let reply = self.req("status", json!({ "clients": clients }));
        reply.as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    /// The current socket id of each of `clients` (they must be connected).
    pub fn sids(&self, clients: &[String]) -> BTreeMap<String, String> {
        self.status(clients)
            .into_iter()
            .map(|(k, v)| {
                let sid = v["sid"].as_str().unwrap_or_else(|| panic!("client {k} is not connected: {v}")).to_owned();
                (k, sid)
            })
            .collect()
    }

    /// Forgets every recorded event.
    pub fn clear(&self) {
        self.req("clear", json!({}));
    }

    // ---- Redis ----

    /// One `@socket.io/redis-emitter` operation published into the node at `redis_url`:
    /// `op` is `{op: "emit"|"socketsJoin"|"socketsLeave"|"disconnectSockets", nsp?, to?, except?,
    /// event?, args?, rooms?, close?}`.
    pub fn emitter(&self, redis_url: &str, op: Value) {
        let mut params = json!({ "redis": redis_url });
        merge(&mut params, op);
        self.req("emitter", params);
    }

    /// Opens a node-redis connection named `conn` to `url`.
    pub fn redis_open(&self, conn: &str, url: &str) {
        self.req("redis_open", json!({ "conn": conn, "url": url }));
    }

    /// One command on connection `conn`: its reply, or the Redis error / timeout.
    pub fn redis(&self, conn: &str, args: &[&str]) -> Result<Value, String> {
        self.redis_timeout(conn, args, Duration::from_secs(15))
    }

    /// [`Agent::redis`] with a deadline (enforced by the agent).
    pub fn redis_timeout(&self, conn: &str, args: &[&str], timeout: Duration) -> Result<Value, String> {
        let params = json!({ "conn": conn, "args": args, "timeoutMs": millis(timeout) });
        self.call_timeout("redis", params, timeout + Duration::from_secs(10))
    }

    /// An HTTP request made by the agent (reaches addresses inside its network namespace).
    pub fn http(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let mut params = json!({ "method": method, "url": url, "timeoutMs": millis(timeout) });
        if let Some(body) = body {
            params["body"] = body.clone();
        }
        let reply = self.call_timeout("http", params, timeout + Duration::from_secs(5))?;
        let status = reply["status"].as_u64().and_then(|s| u16::try_from(s).ok()).ok_or("no status")?;
        Ok((status, reply["body"].as_str().unwrap_or_default().to_owned()))
    }

    /// The path of the agent's stderr log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Closing stdin asks the agent to close its clients and exit.
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- agent stderr ({}), last 40 lines ----\n{}",
                self.log.display(),
                process::tail(&self.log, 40)
            );
        }
    }
}

fn read_replies(stdout: std::process::ChildStdout, pending: &Pending) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(reply) = serde_json::from_str::<Value>(&line) else {
            eprintln!("agent wrote a line that is not JSON: {line}");
            continue;
        };
        let Some(id) = reply["id"].as_u64() else { continue };
        let result = if reply["ok"] == Value::Bool(true) {
            Ok(reply["result"].clone())
        } else {
            Err(reply["error"].as_str().map_or_else(|| reply["error"].to_string(), str::to_owned))
        };
        if let Some(tx) = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
            let _ = tx.send(result);
        }
    }
    for (_, tx) in pending.lock().unwrap_or_else(|e| e.into_inner()).drain() {
        let _ = tx.send(Err("the agent exited".into()));
    }
}

fn merge(target: &mut Value, extra: Value) {
    if let (Some(t), Value::Object(extra)) = (target.as_object_mut(), extra) {
        t.extend(extra);
    }
}

/// A JSON array of strings as a `Vec<String>` (non-strings skipped).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
