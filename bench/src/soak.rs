//! `ioswarm-bench soak`: endurance. It starts a 3-node cluster itself (CA, credentials, data dirs
//! under `--dir`), puts churn on it for `--minutes`, restarts one node every
//! `--restart-every-secs` (nodes 3, 2, 1, … in turn; SIGTERM and SIGKILL alternately; the node
//! comes back on the same ports and data dir), and samples every node every `--sample-secs`:
//! RSS, open descriptors (`/proc/PID/fd`), threads, CPU, the size of its data dir, and its own
//! gauges from `/metrics`. At the end each series gets a verdict from a least-squares line over
//! the second half of the run (after the node's last restart, if that was later): growing,
//! shrinking or flat.
//!
//! The churn, all at once:
//! - `--clients` long-lived WebSocket clients (`scale-worker` processes, a third on each node,
//!   `--rooms` rooms) that reconnect to another node when theirs goes away and count every
//!   delivery they miss from the emitters;
//! - `--emitters` Redis emitters at `--emit-rate` msg/s each into those rooms (emitter *e* into
//!   node *e*, moving to the next node when its node goes away);
//! - `--churn` clients that each, over and over: connect to the next node, join a room on
//!   CONNECT and a second one with `ioswarm:join`, relay two messages to the first with
//!   `ioswarm:to`, stay 0.5–3 s, `ioswarm:leave` the second, disconnect;
//! - `--kv-rate` raft-replicated writes per second (SET, INCR, PEXPIRE, DEL over `--kv-keys`
//!   keys) to the nodes in turn.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, metric_sum};
use crate::procfs::{ProcWatch, load_average};
use crate::scale::{EmitterOut, EmitterPlan, WorkerSpec, Workers, emitter};
use crate::scale_worker::mix;
use crate::sio::{Client, ClientOptions, Mode, Target, send_text};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct SoakArgs {
    /// The ioswarm binary.
    #[arg(long)]
    ioswarm: PathBuf,
    /// An empty folder for the CA, the credentials and the data dirs.
    #[arg(long)]
    dir: PathBuf,
    /// Where every node's stdout/stderr go.
    #[arg(long)]
    logs: PathBuf,
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// 0: no restarts.
    #[arg(long, default_value_t = 600.0)]
    restart_every_secs: f64,
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,
    /// Long-lived clients, over all nodes.
    #[arg(long, default_value_t = 1500)]
    clients: usize,
    #[arg(long, default_value_t = 60)]
    rooms: usize,
    #[arg(long, default_value_t = 3)]
    emitters: usize,
    /// Messages per second per emitter.
    #[arg(long, default_value_t = 20.0)]
    emit_rate: f64,
    /// Clients connecting and disconnecting over and over, at once.
    #[arg(long, default_value_t = 50)]
    churn: usize,
    /// Key-value writes per second.
    #[arg(long, default_value_t = 50.0)]
    kv_rate: f64,
    #[arg(long, default_value_t = 1000)]
    kv_keys: usize,
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5")]
    sources: Vec<IpAddr>,
    #[arg(long)]
    json_out: Option<PathBuf>,
    #[arg(long)]
    md_out: Option<PathBuf>,
    /// A line printed above the report.
    #[arg(long)]
    title: Option<String>,
}

const NODES: usize = 3;

/// After a restart, the moved clients' reconnects (backoff up to 5 s) are over by then.
const SETTLE_SECS: f64 = 10.0;

/// The addresses a node printed on its ready line (kept across restarts).
#[derive(Debug, Clone, Copy)]
struct Addrs {
    socketio: SocketAddr,
    admin: SocketAddr,
    redis: SocketAddr,
    cluster: SocketAddr,
}

fn field(line: &str, key: &str) -> anyhow::Result<SocketAddr> {
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .with_context(|| format!("no {key}= in {line:?}"))?;
    value.parse().with_context(|| format!("{key}={value}"))
}

/// One node process.
struct NodeProc {
    id: usize,
    child: Option<Child>,
    pid: Option<u32>,
    addrs: Addrs,
}

/// Starts node `id` (1-based); `ports`: the addresses of an earlier start, reused; `join`: the
/// cluster addresses of running members.
async fn start_node(
    args: &SoakArgs,
    id: usize,
    ports: Option<Addrs>,
    join: &[SocketAddr],
) -> anyhow::Result<(Child, Addrs)> {
    let any = "127.0.0.1:0".to_owned();
    let addr = |f: fn(&Addrs) -> SocketAddr| ports.as_ref().map_or_else(|| any.clone(), |p| f(p).to_string());
    let mut cmd = Command::new(&args.ioswarm);
    cmd.args(["--node-id", &id.to_string()])
        .args(["--cluster-listen", &addr(|a| a.cluster)])
        .args(["--data-dir", &args.dir.join(format!("data{id}")).to_string_lossy()])
        .args(["--cluster-credentials", &args.dir.join(format!("cred{id}")).to_string_lossy()])
        .args(["--listen", &addr(|a| a.socketio)])
        .args(["--admin-listen", &addr(|a| a.admin)])
        .args(["--redis-listen", &addr(|a| a.redis)])
        .args(["--client-rooms", "--client-relay"]);
    for j in join {
        cmd.args(["--join", &j.to_string()]);
    }
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.logs.join(format!("soak-node{id}.err")))
        .context("opening a node log")?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.ioswarm.display()))?;
    let stdout = child.stdout.take().context("node stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if line.starts_with("ioswarm ready ") {
                return Ok(line);
            }
        }
        bail!("node {id} exited before its ready line (see soak-node{id}.err)")
    })
    .await
    .with_context(|| format!("node {id} printed no ready line in 60 s"))??;
    // Keep reading stdout so that the node never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addrs = Addrs {
        socketio: field(&ready, "socketio")?,
        admin: field(&ready, "admin")?,
        redis: field(&ready, "redis")?,
        cluster: field(&ready, "cluster")?,
    };
    Ok((child, addrs))
}

/// Waits until every node lists every member alive and connected and they agree on a leader.
async fn wait_cluster(admins: &[SocketAddr], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut clients: Vec<Admin> = admins.iter().map(|&a| Admin::new(a)).collect();
    loop {
        let mut ok = true;
        let mut leaders = Vec::new();
        for admin in &mut clients {
            match admin.cluster().await {
                Ok(view) => {
                    let (_, alive) = view.alive_connected();
                    ok &= view.converged() && alive >= admins.len();
                    leaders.push(view.leader());
                }
                Err(_) => ok = false,
            }
        }
        if ok && leaders.iter().all(|l| l.is_some() && *l == leaders[0]) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the cluster did not converge within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One node's reading.
#[derive(Debug, Clone, Serialize)]
struct NodeSample {
    node: usize,
    pid: Option<u32>,
    rss_kib: Option<u64>,
    fds: Option<u64>,
    threads: Option<u64>,
    cpu_secs: Option<f64>,
    data_bytes: Option<u64>,
    engine_connections: Option<f64>,
    socketio_sockets: Option<f64>,
    rooms: Option<f64>,
    redis_connections: Option<f64>,
    /// Descriptors that are neither a client connection nor a Redis connection (listeners,
    /// files, the cluster socket, …): what a descriptor leak would raise while the load moves.
    fds_other: Option<f64>,
    /// Tokio tasks alive (`ioswarm_runtime_tasks`).
    runtime_tasks: Option<f64>,
    /// Tasks that are neither a session's nor a Redis connection's (one each): what a task leak
    /// would raise while the load moves.
    tasks_other: Option<f64>,
    /// Tasks woken and waiting for a worker thread (`ioswarm_runtime_queue_depth`).
    runtime_queue_depth: Option<f64>,
    /// Packets waiting in the sessions' send queues (`ioswarm_engine_queued_packets`).
    engine_queued_packets: Option<f64>,
    /// Bytes waiting for Redis subscribers (`ioswarm_redis_output_bytes`).
    redis_output_bytes: Option<f64>,
    /// Messages waiting to go to the peers, all peers (`ioswarm_cluster_peer_queue`).
    peer_queue: Option<f64>,
}

/// The series a verdict is given for, with the smallest rise over the half that counts as
/// growth whatever the mean (noise floors).
const SERIES: [(&str, f64); 15] = [
    ("rss_kib", 4096.0),
    ("fds", 8.0),
    ("fds_other", 8.0),
    ("threads", 2.0),
    ("data_bytes", 1_048_576.0),
    ("engine_connections", 10.0),
    ("socketio_sockets", 10.0),
    ("rooms", 10.0),
    ("redis_connections", 4.0),
    ("runtime_tasks", 20.0),
    ("tasks_other", 20.0),
    ("runtime_queue_depth", 50.0),
    ("engine_queued_packets", 100.0),
    ("redis_output_bytes", 1_048_576.0),
    ("peer_queue", 100.0),
];

#[derive(Debug, Clone, Serialize)]
struct Sample {
    t: f64,
    load_average: Option<f64>,
    nodes: Vec<NodeSample>,
    /// The load so far.
    stable_connected: u64,
    churn_cycles: u64,
    churn_failures: u64,
    kv_ok: u64,
    kv_errors: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Restart {
    at: f64,
    node: usize,
    signal: &'static str,
    /// Signal → process gone.
    exited_secs: f64,
    /// Signal → the cluster converged again with the node back.
    back_secs: Option<f64>,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    churn_cycles: AtomicU64,
    churn_failures: AtomicU64,
    kv_ok: AtomicU64,
    kv_errors: AtomicU64,
}

fn status_value(status: &str, key: &str) -> Option<u64> {
    status.lines().find(|l| l.starts_with(key))?[key.len()..].split_whitespace().next()?.parse().ok()
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn sample_node(node: usize, pid: Option<u32>, admin: &mut Admin, data: &Path) -> NodeSample {
    let status = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok());
    let fds = pid.and_then(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok()).map(|d| d.count() as u64);
    let cpu_secs = pid.and_then(|p| ProcWatch::new(p).ok()).and_then(|w| w.sample().ok()).map(|s| s.cpu_secs);
    let metrics = if pid.is_some() { admin.get_text("/metrics", Duration::from_secs(3)).await.ok() } else { None };
    let m = |name: &str| metrics.as_deref().map(|t| metric_sum(t, name).unwrap_or(0.0));
    let (engine, redis) = (m("ioswarm_engine_connections"), m("ioswarm_redis_connections"));
    let tasks = m("ioswarm_runtime_tasks");
    NodeSample {
        node,
        pid,
        rss_kib: status.as_deref().and_then(|s| status_value(s, "VmRSS:")),
        threads: status.as_deref().and_then(|s| status_value(s, "Threads:")),
        fds,
        cpu_secs,
        data_bytes: Some(dir_bytes(data)),
        fds_other: fds.zip(engine).zip(redis).map(|((f, e), r)| f as f64 - e - r),
        engine_connections: engine,
        socketio_sockets: m("ioswarm_socketio_sockets"),
        rooms: m("ioswarm_rooms"),
        redis_connections: redis,
        runtime_tasks: tasks,
        tasks_other: tasks.zip(engine).zip(redis).map(|((t, e), r)| t - e - r),
        runtime_queue_depth: m("ioswarm_runtime_queue_depth"),
        engine_queued_packets: m("ioswarm_engine_queued_packets"),
        redis_output_bytes: m("ioswarm_redis_output_bytes"),
        peer_queue: m("ioswarm_cluster_peer_queue"),
    }
}

/// One churn client, over and over until `stop`.
async fn churn_client(
    slot: usize,
    targets: Arc<Vec<Target>>,
    source: IpAddr,
    rooms: usize,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut round: u64 = 0;
    while !stop.is_cancelled() {
        round += 1;
        let roll = mix(((slot as u64) << 32) ^ round);
        let target = &targets[(slot + round as usize) % targets.len()];
        let first = format!("churn-{}", roll % rooms as u64);
        let second = format!("churn-{}", (roll >> 16) % rooms as u64);
        let hold = Duration::from_millis(500 + (roll >> 32) % 2500);
        let cycle = async {
            let options = ClientOptions { mode: Mode::Ws, room: Some(first.clone()) };
            let mut client = Client::connect(source, target, &options).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            client.call(1, "ioswarm:join", &Value::String(second.clone())).await?;
            for n in 0..2 {
                let packet = format!("42[\"ioswarm:to\",{},\"chat\",{{\"n\":{n}}}]", Value::String(first.clone()));
                send_text(&mut client.ws, &packet).await?;
            }
            tokio::time::sleep(hold).await;
            client.call(2, "ioswarm:leave", &Value::String(second.clone())).await?;
            let close = client.ws.write_frame(fastwebsockets::Frame::close(1000, b""));
            let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
            anyhow::Ok(())
        };
        let result = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(15), cycle) => r,
            () = stop.cancelled() => return,
        };
        if matches!(result, Ok(Ok(()))) {
            counters.churn_cycles.fetch_add(1, Ordering::Relaxed);
        } else {
            counters.churn_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Reads one RESP reply; `Ok(true)` for a non-error reply.
async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> anyhow::Result<bool> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        bail!("connection closed");
    }
    match line.as_bytes().first() {
        Some(b'-') => Ok(false),
        Some(b'$') => {
            let len: i64 = line[1..].trim().parse()?;
            if len >= 0 {
                let mut body = vec![0u8; len as usize + 2];
                reader.read_exact(&mut body).await?;
            }
            Ok(true)
        }
        Some(b'+' | b':') => Ok(true),
        _ => bail!("unexpected reply {line:?}"),
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Key-value writes at `rate` per second, to the nodes in turn (a new connection to the next
/// node whenever one fails).
async fn kv_writer(
    redis: Arc<Vec<SocketAddr>>,
    rate: f64,
    keys: usize,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut n: u64 = 0;
    let mut node = 0;
    let start = Instant::now();
    while !stop.is_cancelled() {
        let addr = redis[node % redis.len()];
        let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
        else {
            counters.kv_errors.fetch_add(1, Ordering::Relaxed);
            node += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = stop.cancelled() => return,
            }
            let key = format!("soak:k{}", n % keys as u64);
            let other = format!("soak:k{}", mix(n) % keys as u64);
            let counter = format!("soak:c{}", n % 100);
            let value = n.to_string();
            let command = match n % 4 {
                0 => resp(&["SET", &key, &value]),
                1 => resp(&["INCR", &counter]),
                2 => resp(&["PEXPIRE", &key, "60000"]),
                _ => resp(&["DEL", &other]),
            };
            n += 1;
            let exchange = async {
                write.write_all(&command).await?;
                read_reply(&mut read).await
            };
            match tokio::time::timeout(Duration::from_secs(5), exchange).await {
                Ok(Ok(true)) => {
                    counters.kv_ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Ok(false)) => {
                    counters.kv_errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    counters.kv_errors.fetch_add(1, Ordering::Relaxed);
                    node += 1;
                    break;
                }
            }
        }
    }
}

/// Least-squares slope (per second) and intercept of `points`.
fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

/// The verdict on one node's series over `points` (time, value): growing when the fitted line
/// rises over the window by more than 5 % of the mean and more than `floor`.
fn verdict(points: &[(f64, f64)], floor: f64) -> Value {
    if points.len() < 4 {
        return json!({"verdict": "too few samples", "samples": points.len()});
    }
    let Some((slope, intercept)) = fit(points) else { return json!({"verdict": "too few samples"}) };
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let rise = slope * (t1 - t0);
    let threshold = (0.05 * mean.abs()).max(floor);
    let verdict = if rise > threshold {
        "growing"
    } else if -rise > threshold {
        "shrinking"
    } else {
        "flat"
    };
    let (start, end) = (intercept + slope * t0, intercept + slope * t1);
    // A ratio to a start near zero says nothing.
    let end_over_start = (start.abs() >= floor).then(|| end / start);
    json!({
        "verdict": verdict,
        "from_s": t0,
        "to_s": t1,
        "samples": points.len(),
        "mean": mean,
        "slope_per_hour": slope * 3600.0,
        "rise": rise,
        "end_over_start": end_over_start,
    })
}

pub(crate) fn run(args: SoakArgs) -> anyhow::Result<()> {
    crate::block_on(run_async(args))
}

#[allow(clippy::too_many_lines)]
async fn run_async(args: SoakArgs) -> anyhow::Result<()> {
    if args.minutes <= 0.0 || args.sample_secs <= 0.0 || args.rooms == 0 || args.emitters == 0 {
        bail!("--minutes, --sample-secs, --rooms and --emitters must be positive");
    }
    std::fs::create_dir_all(&args.dir)?;
    std::fs::create_dir_all(&args.logs)?;
    let ca = args.dir.join("ca");
    let status = Command::new(&args.ioswarm)
        .args(["cluster", "init-ca", "--dir"])
        .arg(&ca)
        .stdout(Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("ioswarm cluster init-ca failed");
    }
    for id in 1..=NODES {
        let status = Command::new(&args.ioswarm)
            .args(["cluster", "issue", "--ca"])
            .arg(&ca)
            .args(["--node-id", &id.to_string(), "--out"])
            .arg(args.dir.join(format!("cred{id}")))
            .stdout(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("ioswarm cluster issue failed for node {id}");
        }
    }
    let mut nodes: Vec<NodeProc> = Vec::new();
    for id in 1..=NODES {
        let join: Vec<SocketAddr> = nodes.first().map(|n| vec![n.addrs.cluster]).unwrap_or_default();
        let (child, addrs) = start_node(&args, id, None, &join).await?;
        eprintln!("[soak] node {id} ready (pid {:?}): {}", child.id(), addrs.socketio);
        nodes.push(NodeProc { id, pid: child.id(), child: Some(child), addrs });
    }
    let admins: Vec<SocketAddr> = nodes.iter().map(|n| n.addrs.admin).collect();
    wait_cluster(&admins, Duration::from_secs(60)).await?;
    eprintln!("[soak] cluster ready");

    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let targets: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.addrs.socketio)).collect();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let spec = WorkerSpec {
        targets: targets.clone(),
        clients_per_node: args.clients / NODES,
        workers_per_node: 1,
        rooms: args.rooms,
        room_prefix: "soak".to_owned(),
        emitters: args.emitters,
        sources: args.sources.clone(),
        concurrency: 100,
        connect_timeout_ms: 10_000,
        connect_deadline_secs: 120,
        max_hold_secs: duration.as_secs() + 600,
        reconnect_delay_ms: 1000,
        reconnect_delay_max_ms: 5000,
        randomization: 0.5,
        progress_ms: 1000,
    };
    let mut workers = Workers::spawn("soak", &spec)?;
    let connect = workers.wait_connected(Duration::from_secs(180)).await?;
    eprintln!("[soak] {} long-lived clients connected, {} failed", connect.connected, connect.failed);

    let redis_addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addrs.redis).collect();
    let (_step_tx, step_rx) = watch::channel(1u32);
    let emitter_tasks: Vec<_> = (0..args.emitters)
        .map(|id| {
            let plan = EmitterPlan {
                id,
                addrs: Arc::new(redis_addrs.clone()),
                first: id % NODES,
                rooms: args.rooms,
                prefix: "soak".to_owned(),
                pad: "x".repeat(32),
                rate: args.emit_rate,
            };
            tokio::spawn(emitter(plan, step_rx.clone(), stop.clone()))
        })
        .collect();
    let sio_targets = Arc::new(targets.iter().map(|t| Target::parse(t)).collect::<anyhow::Result<Vec<_>>>()?);
    let mut churn = tokio::task::JoinSet::new();
    for slot in 0..args.churn {
        let source = args.sources[slot % args.sources.len()];
        churn.spawn(churn_client(slot, sio_targets.clone(), source, args.rooms, counters.clone(), stop.clone()));
    }
    let kv = (args.kv_rate > 0.0).then(|| {
        tokio::spawn(kv_writer(
            Arc::new(redis_addrs.clone()),
            args.kv_rate,
            args.kv_keys.max(1),
            counters.clone(),
            stop.clone(),
        ))
    });

    // The node restarts run beside the sampling.
    let shared_nodes = Arc::new(tokio::sync::Mutex::new(nodes));
    let restarts = Arc::new(Mutex::new(Vec::<Restart>::new()));
    let t0 = Instant::now();
    let restarter = {
        let (nodes, restarts, stop, args) = (shared_nodes.clone(), restarts.clone(), stop.clone(), args.clone());
        tokio::spawn(async move {
            if args.restart_every_secs <= 0.0 {
                return;
            }
            let mut k = 1u32;
            loop {
                let at = t0 + Duration::from_secs_f64(args.restart_every_secs * f64::from(k));
                if at + Duration::from_secs(20) > t0 + duration {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = stop.cancelled() => return,
                }
                let index = (NODES - 1) - ((k as usize - 1) % NODES);
                let signal = if k % 2 == 1 { "TERM" } else { "KILL" };
                let restart = restart_node(&args, &nodes, index, signal, t0).await;
                eprintln!("[soak] restart: {restart:?}");
                if let Ok(mut r) = restarts.lock() {
                    r.push(restart);
                }
                k += 1;
            }
        })
    };

    let mut samples: Vec<Sample> = Vec::new();
    let mut admin_clients: Vec<Admin> = admins.iter().map(|&a| Admin::new(a)).collect();
    let every = Duration::from_secs_f64(args.sample_secs);
    let mut next = t0;
    while t0.elapsed() < duration {
        let pids: Vec<Option<u32>> = shared_nodes.lock().await.iter().map(|n| n.pid).collect();
        let mut node_samples = Vec::new();
        for (i, admin) in admin_clients.iter_mut().enumerate() {
            node_samples.push(sample_node(i + 1, pids[i], admin, &args.dir.join(format!("data{}", i + 1))).await);
        }
        let sample = Sample {
            t: t0.elapsed().as_secs_f64(),
            load_average: load_average(),
            nodes: node_samples,
            stable_connected: workers.connected_per_node(NODES).iter().sum(),
            churn_cycles: counters.churn_cycles.load(Ordering::Relaxed),
            churn_failures: counters.churn_failures.load(Ordering::Relaxed),
            kv_ok: counters.kv_ok.load(Ordering::Relaxed),
            kv_errors: counters.kv_errors.load(Ordering::Relaxed),
        };
        eprintln!(
            "[soak] +{:.0} s: rss {:?} KiB, fds {:?}, clients {}, churn {} ok / {} failed, kv {} ok / {} errors",
            sample.t,
            sample.nodes.iter().map(|n| n.rss_kib).collect::<Vec<_>>(),
            sample.nodes.iter().map(|n| n.fds).collect::<Vec<_>>(),
            sample.stable_connected,
            sample.churn_cycles,
            sample.churn_failures,
            sample.kv_ok,
            sample.kv_errors
        );
        samples.push(sample);
        next += every;
        workers.pump(next.saturating_duration_since(Instant::now())).await?;
    }

    stop.cancel();
    let _ = restarter.await;
    let mut emitter_runs: Vec<EmitterOut> = Vec::new();
    for task in emitter_tasks {
        emitter_runs.push(task.await.context("an emitter task failed")?);
    }
    if let Some(kv) = kv {
        let _ = kv.await;
    }
    while churn.join_next().await.is_some() {}
    workers.drain(Duration::from_secs(2), Duration::from_secs(15)).await?;
    let finals: Vec<u64> = emitter_runs.iter().map(|e| e.published).collect();
    let reports = workers.report(&finals).await?;
    workers.stop().await;
    {
        let mut nodes = shared_nodes.lock().await;
        for node in nodes.iter_mut() {
            if let Some(mut child) = node.child.take() {
                if let Some(pid) = child.id() {
                    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
                }
                if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
        }
    }

    // Verdicts: the second half, or from the last restart on (plus the time its clients take
    // to settle elsewhere) if that came later: a restart moves load between every node.
    let restarts = restarts.lock().map(|r| r.clone()).unwrap_or_default();
    let half = duration.as_secs_f64() / 2.0;
    let last_restart = restarts.iter().map(|r| r.at + r.back_secs.unwrap_or(0.0) + SETTLE_SECS).fold(0.0, f64::max);
    let from = half.max(last_restart);
    let mut verdicts = Vec::new();
    for node in 1..=NODES {
        for (series, floor) in SERIES {
            let points: Vec<(f64, f64)> = samples
                .iter()
                .filter(|s| s.t >= from)
                .filter_map(|s| {
                    let n = serde_json::to_value(&s.nodes[node - 1]).ok()?;
                    Some((s.t, n.get(series)?.as_f64()?))
                })
                .collect();
            let mut v = verdict(&points, floor);
            v["node"] = json!(node);
            v["series"] = json!(series);
            verdicts.push(v);
        }
    }
    let sum = |f: fn(&crate::scale_worker::ScaleReport) -> u64| reports.iter().map(f).sum::<u64>();
    let losses = json!({
        "clients": sum(|r| r.clients),
        "stayed": sum(|r| r.stayed),
        "moved": sum(|r| r.moved),
        "lost_stayed": sum(|r| r.lost_stayed.iter().sum()),
        "stayed_with_loss": sum(|r| r.stayed_with_loss),
        "lost_moved": sum(|r| r.lost_moved.iter().sum()),
        "reordered": sum(|r| r.reordered),
        "drops": sum(|r| r.drops),
        "reconnects": sum(|r| r.reconnects),
        "reconnect_failures": sum(|r| r.reconnect_failures),
        "emitters_unanswered_at_failures": emitter_runs.iter().flat_map(|e| &e.failures).map(|f| f.unanswered).sum::<u64>(),
    });
    let last = samples.last().cloned();
    let result = json!({
        "scenario": "soak",
        "title": args.title,
        "minutes": args.minutes,
        "settings": {
            "restart_every_secs": args.restart_every_secs, "sample_secs": args.sample_secs,
            "clients": args.clients, "rooms": args.rooms, "emitters": args.emitters, "emit_rate": args.emit_rate,
            "churn": args.churn, "kv_rate": args.kv_rate, "kv_keys": args.kv_keys,
        },
        "connect": connect,
        "restarts": restarts,
        "emitters": emitter_runs,
        "losses": losses,
        "totals": last.as_ref().map(|s| json!({
            "churn_cycles": s.churn_cycles, "churn_failures": s.churn_failures, "kv_ok": s.kv_ok, "kv_errors": s.kv_errors,
        })),
        "verdicts": verdicts,
        "samples": samples,
    });
    let md = soak_markdown(&result);
    print!("{md}");
    if let Some(path) = &args.md_out {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if samples.is_empty() {
        bail!("no sample was taken");
    }
    Ok(())
}

/// Stops node `index` with `signal`, starts it again on the same ports and data dir, and waits
/// for the cluster to converge with it.
async fn restart_node(
    args: &SoakArgs,
    nodes: &tokio::sync::Mutex<Vec<NodeProc>>,
    index: usize,
    signal: &'static str,
    t0: Instant,
) -> Restart {
    let at = t0.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut out = Restart { at, node: index + 1, signal, exited_secs: 0.0, back_secs: None, error: None };
    let (child, addrs, join, admins) = {
        let mut nodes = nodes.lock().await;
        let join: Vec<SocketAddr> =
            nodes.iter().filter(|n| n.id != index + 1 && n.child.is_some()).map(|n| n.addrs.cluster).collect();
        let admins: Vec<SocketAddr> = nodes.iter().map(|n| n.addrs.admin).collect();
        let node = &mut nodes[index];
        node.pid = None;
        (node.child.take(), node.addrs, join, admins)
    };
    if let Some(mut child) = child {
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(60), child.wait()).await.is_err() {
            let _ = child.kill().await;
            out.error = Some("did not exit within 60 s of the signal; killed".to_owned());
        }
    }
    out.exited_secs = started.elapsed().as_secs_f64();
    match start_node(args, index + 1, Some(addrs), &join).await {
        Ok((child, _)) => {
            let mut nodes = nodes.lock().await;
            nodes[index].pid = child.id();
            nodes[index].child = Some(child);
        }
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            return out;
        }
    }
    match wait_cluster(&admins, Duration::from_secs(120)).await {
        Ok(()) => out.back_secs = Some(started.elapsed().as_secs_f64()),
        Err(e) => out.error = Some(format!("{e:#}")),
    }
    out
}

fn soak_markdown(r: &Value) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let n = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_f64);
    let u = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    if let Some(title) = r.get("title").and_then(Value::as_str) {
        let _ = writeln!(md, "# {title}\n");
    }
    let _ = writeln!(
        md,
        "## Soak: {} minutes on 3 nodes\n\n{} long-lived clients in {} rooms, {} emitters × {}/s, {} churn clients, {} KV writes/s over {} keys; one node restarted every {} s; samples every {} s.\n",
        n(r, "/minutes").unwrap_or(0.0),
        u(r, "/settings/clients"),
        u(r, "/settings/rooms"),
        u(r, "/settings/emitters"),
        n(r, "/settings/emit_rate").unwrap_or(0.0),
        u(r, "/settings/churn"),
        n(r, "/settings/kv_rate").unwrap_or(0.0),
        u(r, "/settings/kv_keys"),
        n(r, "/settings/restart_every_secs").unwrap_or(0.0),
        n(r, "/settings/sample_secs").unwrap_or(0.0),
    );
    let _ =
        writeln!(md, "| restart at | node | signal | process gone after | cluster converged with it after | error |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for x in r.get("restarts").and_then(Value::as_array).into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {:.0} s | {} | SIG{} | {:.2} s | {} | {} |",
            n(x, "/at").unwrap_or(0.0),
            u(x, "/node"),
            x.get("signal").and_then(Value::as_str).unwrap_or("?"),
            n(x, "/exited_secs").unwrap_or(0.0),
            n(x, "/back_secs").map_or_else(|| "**never**".to_owned(), |v| format!("{v:.2} s")),
            x.get("error").and_then(Value::as_str).unwrap_or(""),
        );
    }
    let cycles = n(r, "/totals/churn_cycles").unwrap_or(0.0);
    let failures = n(r, "/totals/churn_failures").unwrap_or(0.0);
    let kv_ok = n(r, "/totals/kv_ok").unwrap_or(0.0);
    let kv_err = n(r, "/totals/kv_errors").unwrap_or(0.0);
    let _ = writeln!(
        md,
        "\nLoad done: {cycles:.0} churn cycles (connect, join, relay, leave, disconnect), {failures:.0} failed ({:.2} % of attempts); {kv_ok:.0} KV writes answered, {kv_err:.0} errors or timeouts ({:.2} %).\n",
        100.0 * failures / (cycles + failures).max(1.0),
        100.0 * kv_err / (kv_ok + kv_err).max(1.0),
    );
    let _ = writeln!(
        md,
        "Long-lived clients: {} of {} never dropped; they missed {} deliveries ({} clients with a loss); {} moved ({} drops, {} failed reconnect attempts) and missed {} while away; emitters had {} PUBLISHes unanswered when a node went away.\n",
        u(r, "/losses/stayed"),
        u(r, "/losses/clients"),
        u(r, "/losses/lost_stayed"),
        u(r, "/losses/stayed_with_loss"),
        u(r, "/losses/moved"),
        u(r, "/losses/drops"),
        u(r, "/losses/reconnect_failures"),
        u(r, "/losses/lost_moved"),
        u(r, "/losses/emitters_unanswered_at_failures"),
    );
    let _ = writeln!(md, "| series | node 1 | node 2 | node 3 |");
    let _ = writeln!(md, "|---|---|---|---|");
    let verdicts: Vec<&Value> = r.get("verdicts").and_then(Value::as_array).into_iter().flatten().collect();
    let mut growing = Vec::new();
    for (series, _) in SERIES {
        let cells: Vec<String> = (1..=NODES as u64)
            .map(|node| {
                let Some(v) = verdicts
                    .iter()
                    .find(|v| v.get("series").and_then(Value::as_str) == Some(series) && u(v, "/node") == node)
                else {
                    return "n/a".to_owned();
                };
                let verdict = v.get("verdict").and_then(Value::as_str).unwrap_or("?");
                if verdict == "growing" {
                    growing.push(format!("{series} on node {node}"));
                }
                match n(v, "/end_over_start") {
                    Some(ratio) => format!(
                        "{}{verdict}{} (fit end / start {ratio:.3}×, mean {:.0}, {:+.0}/h; {:.0}–{:.0} s)",
                        if verdict == "flat" { "" } else { "**" },
                        if verdict == "flat" { "" } else { "**" },
                        n(v, "/mean").unwrap_or(0.0),
                        n(v, "/slope_per_hour").unwrap_or(0.0),
                        n(v, "/from_s").unwrap_or(0.0),
                        n(v, "/to_s").unwrap_or(0.0),
                    ),
                    None => format!(
                        "{verdict} (mean {:.1}, {:+.0}/h)",
                        n(v, "/mean").unwrap_or(0.0),
                        n(v, "/slope_per_hour").unwrap_or(0.0)
                    ),
                }
            })
            .collect();
        let _ = writeln!(md, "| {series} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "\nVerdict: a least-squares line over the second half of the run (from 10 s after the last restart on, if later: \
         a restart moves clients between every node); \
         growing or shrinking when it moves by more than 5 % of the mean and more than a noise floor \
         (4 MiB of RSS, 8 fds, 2 threads, 1 MiB of data dir, 10 connections or rooms, 4 Redis connections, \
         20 tasks, 50 runnable tasks, 100 queued packets or peer messages, 1 MiB of subscriber output); \
         `fds_other` = descriptors − Engine.IO connections − Redis connections, \
         `tasks_other` = tokio tasks − Engine.IO connections − Redis connections (each has one task). \
         {}\n\nTasks and queue depths are the node's gauges sampled at each read of `/metrics` \
         (`ioswarm_runtime_tasks`, `ioswarm_runtime_queue_depth`, `ioswarm_engine_queued_packets`, \
         `ioswarm_redis_output_bytes`, `ioswarm_cluster_peer_queue` summed over peers). Chart: `soak.png`.\n",
        if growing.is_empty() {
            "**Nothing grows.**".to_owned()
        } else {
            format!("**Growing: {}.**", growing.join(", "))
        }
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_tell_growth_from_noise() {
        let flat: Vec<(f64, f64)> =
            (0..30).map(|i| (f64::from(i) * 10.0, 100_000.0 + f64::from(i % 3) * 500.0)).collect();
        assert_eq!(verdict(&flat, 4096.0)["verdict"], "flat");
        let growing: Vec<(f64, f64)> =
            (0..30).map(|i| (f64::from(i) * 10.0, 100_000.0 + f64::from(i) * 1000.0)).collect();
        assert_eq!(verdict(&growing, 4096.0)["verdict"], "growing");
        let shrinking: Vec<(f64, f64)> =
            growing.iter().rev().enumerate().map(|(i, p)| (i as f64 * 10.0, p.1)).collect();
        assert_eq!(verdict(&shrinking, 4096.0)["verdict"], "shrinking");
        // A small absolute rise stays under the noise floor.
        let fds: Vec<(f64, f64)> = (0..30).map(|i| (f64::from(i) * 10.0, 20.0 + f64::from(i) * 0.2)).collect();
        assert_eq!(verdict(&fds, 8.0)["verdict"], "flat");
        assert_eq!(verdict(&fds[..3], 8.0)["verdict"], "too few samples");
    }

    #[test]
    fn reads_ready_lines_and_status() {
        let line =
            "ioswarm ready socketio=127.0.0.1:1 admin=127.0.0.1:2 redis=127.0.0.1:3 cluster=127.0.0.1:4 node_id=1";
        assert_eq!(field(line, "redis").expect("redis").port(), 3);
        assert_eq!(field(line, "cluster").expect("cluster").port(), 4);
        assert!(field(line, "nope").is_err());
        assert_eq!(status_value("Threads:\t7\nVmRSS:\t 12 kB\n", "VmRSS:"), Some(12));
        assert_eq!(resp(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
