//! `ioswarm-bench scale`: a cluster at the size users run, and what losing a node costs.
//!
//! `--clients-per-node` WebSocket clients per node (spread over `--workers-per-node` worker
//! processes per node and the `--sources` addresses), client *i* in room `PREFIX-(i mod rooms)`,
//! so every room has members on every node. `--emitters` Redis emitters (emitter *e* publishes
//! into node *e mod nodes*'s Redis port) each publish `--emit-rate` messages per second,
//! round-robin over the rooms, with a sequence number per room (`scale_worker` explains how the
//! clients count gaps).
//!
//! Phases: connect → `--steady-secs` of publishing (step 1: delivered/s per node, latency) →
//! with `--event kill|term`, SIGKILL or SIGTERM to node `--victim` while publishing goes on
//! (step 2): the victim's clients reconnect to the survivors; the run samples the clients
//! connected per node (the workers' view, every `--sample-ms`), the survivors' accept queues
//! (`ss`), the machine's SYN drops (`ListenOverflows`, `ListenDrops`) and every process's CPU,
//! until every client is connected again (or `--recover-max-secs`), then `--after-secs` more →
//! the emitters stop (an emitter whose node went away reconnects to the next node, like an app
//! behind a load balancer) → drain → every worker reports its losses given how many messages
//! each emitter published → JSON (`--json-out`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, metric_sum, parse_addr};
use crate::pool::{Connected, Latency, Pool, Tally, Waited};
use crate::procfs::{ProcWatch, Sample, load_average, machine_cpu_ticks, tcp_ext_counter};
use crate::scale_worker::{ScaleEvent, ScaleReport, StepFigures};
use crate::sio::Target;
use crate::traffic::{count_replies, new_histogram, now_us};
use crate::worker::ConnectOutcome;

/// What happens to the victim node after the steady phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Event {
    /// Nothing: the steady phase only (the single-node comparison).
    None,
    /// SIGKILL: the node crashes.
    Kill,
    /// SIGTERM: the node drains (its `--drain-ms` / `--drain-spread-ms`) and leaves.
    Term,
}

impl Event {
    fn signal(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Kill => Some("KILL"),
            Event::Term => Some("TERM"),
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ScaleArgs {
    #[arg(long, default_value = "scale")]
    label: String,
    /// Free text copied into the result (how the nodes were started).
    #[arg(long)]
    note: Option<String>,
    /// Socket.IO URL of every node (comma-separated, loopback only).
    #[arg(long, value_delimiter = ',', required = true)]
    target: Vec<String>,
    /// Redis-protocol address of every node, in the same order.
    #[arg(long, value_delimiter = ',', required = true)]
    redis: Vec<String>,
    /// Admin address of every node, in the same order (`/metrics` is read before and after).
    #[arg(long, value_delimiter = ',')]
    admin: Vec<String>,
    /// Pid of every node, in the same order.
    #[arg(long, value_delimiter = ',', required = true)]
    server_pid: Vec<u32>,
    #[arg(long, default_value_t = 12_000)]
    clients_per_node: usize,
    #[arg(long, default_value_t = 2)]
    workers_per_node: usize,
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5")]
    sources: Vec<IpAddr>,
    #[arg(long, default_value_t = 240)]
    rooms: usize,
    #[arg(long, default_value = "sc")]
    room_prefix: String,
    #[arg(long, default_value_t = 3)]
    emitters: usize,
    /// Messages per second, per emitter.
    #[arg(long, default_value_t = 100.0)]
    emit_rate: f64,
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    #[arg(long, default_value_t = 20.0)]
    steady_secs: f64,
    #[arg(long, value_enum, default_value_t = Event::None)]
    event: Event,
    /// The node the event hits, 1-based (default: the last).
    #[arg(long)]
    victim: Option<usize>,
    #[arg(long, default_value_t = 60.0)]
    recover_max_secs: f64,
    /// Publishing goes on this long after every client is back.
    #[arg(long, default_value_t = 5.0)]
    after_secs: f64,
    #[arg(long, default_value_t = 15)]
    drain_max_secs: u64,
    #[arg(long, default_value_t = 2_000)]
    drain_quiet_ms: u64,
    #[arg(long, default_value_t = 1000)]
    reconnect_delay_ms: u64,
    #[arg(long, default_value_t = 5000)]
    reconnect_delay_max_ms: u64,
    #[arg(long, default_value_t = 0.5)]
    randomization: f64,
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
    #[arg(long, default_value_t = 240)]
    connect_deadline_secs: u64,
    /// Timeline resolution (clients per node, accept queues).
    #[arg(long, default_value_t = 200)]
    sample_ms: u64,
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Most PUBLISH commands one emitter keeps unanswered.
const MAX_UNANSWERED: u64 = 4096;

/// The socket.io emitter's broadcast of `msg({k, e, s, t, p})` to `room`.
fn emitter_message(room: &str, step: u32, emitter: usize, seq: u64, pad: &str) -> anyhow::Result<Vec<u8>> {
    use rmpv::Value as V;
    let s = |t: &str| V::String(t.into());
    let payload = V::Map(vec![
        (s("k"), V::from(step)),
        (s("e"), V::from(emitter as u64)),
        (s("s"), V::from(seq)),
        (s("t"), V::from(now_us())),
        (s("p"), s(pad)),
    ]);
    let packet =
        V::Map(vec![(s("type"), V::from(2)), (s("data"), V::Array(vec![s("msg"), payload])), (s("nsp"), s("/"))]);
    let opts = V::Map(vec![
        (s("rooms"), V::Array(vec![s(room)])),
        (s("except"), V::Array(vec![])),
        (s("flags"), V::Map(vec![])),
    ]);
    let mut out = Vec::with_capacity(128 + pad.len());
    rmpv::encode::write_value(&mut out, &V::Array(vec![s("emitter"), packet, opts]))?;
    Ok(out)
}

/// `PUBLISH channel message` in RESP.
fn resp_publish(out: &mut Vec<u8>, channel: &str, message: &[u8]) {
    out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
    out.extend_from_slice(format!("${}\r\n", channel.len()).as_bytes());
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(format!("\r\n${}\r\n", message.len()).as_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(b"\r\n");
}

/// One emitter connection that failed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EmitterFailure {
    /// Node (1-based) whose Redis port it was.
    pub(crate) node: usize,
    pub(crate) at_us: u64,
    /// PUBLISH commands written on that connection without a reply: lost if the node never
    /// handled them.
    pub(crate) unanswered: u64,
}

/// What one emitter did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct EmitterOut {
    pub(crate) emitter: usize,
    /// Node (1-based) it published into first.
    pub(crate) node: usize,
    pub(crate) published: u64,
    pub(crate) answered: u64,
    pub(crate) errors: u64,
    pub(crate) by_step: BTreeMap<u32, u64>,
    pub(crate) failures: Vec<EmitterFailure>,
}

/// Settings of one emitter.
#[derive(Debug, Clone)]
pub(crate) struct EmitterPlan {
    pub(crate) id: usize,
    pub(crate) addrs: Arc<Vec<SocketAddr>>,
    pub(crate) first: usize,
    pub(crate) rooms: usize,
    pub(crate) prefix: String,
    pub(crate) pad: String,
    pub(crate) rate: f64,
}

/// Publishes until `stop`, reconnecting to the next node's Redis port when its node goes away.
pub(crate) async fn emitter(plan: EmitterPlan, step: watch::Receiver<u32>, stop: CancellationToken) -> EmitterOut {
    let n = plan.addrs.len();
    let mut out = EmitterOut { emitter: plan.id, node: plan.first + 1, ..EmitterOut::default() };
    let mut cur = plan.first;
    let mut frame = Vec::with_capacity(256);
    while !stop.is_cancelled() {
        let connect = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(plan.addrs[cur]));
        let stream = match connect.await {
            Ok(Ok(stream)) => stream,
            _ => {
                out.failures.push(EmitterFailure { node: cur + 1, at_us: now_us(), unanswered: 0 });
                cur = (cur + 1) % n;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut read, write) = stream.into_split();
        let mut write = BufWriter::with_capacity(64 * 1024, write);
        let replies = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let closed = CancellationToken::new();
        let reader = {
            let (replies, errors, closed) = (replies.clone(), errors.clone(), closed.clone());
            tokio::spawn(async move {
                count_replies(&mut read, &replies, &errors).await;
                closed.cancel();
            })
        };
        let start = Instant::now();
        let mut sent: u64 = 0;
        let failed = loop {
            let due = start + Duration::from_secs_f64(sent as f64 / plan.rate);
            if due > Instant::now() || sent.saturating_sub(replies.load(Ordering::Relaxed)) >= MAX_UNANSWERED {
                if write.flush().await.is_err() {
                    break true;
                }
                let wait = due.max(Instant::now() + Duration::from_millis(1));
                tokio::select! {
                    () = tokio::time::sleep_until(wait) => continue,
                    () = stop.cancelled() => break false,
                    () = closed.cancelled() => break true,
                }
            }
            let total = out.published;
            let room = (total % plan.rooms as u64) as usize;
            let seq = total / plan.rooms as u64;
            let k = *step.borrow();
            let room_name = format!("{}-{room}", plan.prefix);
            let Ok(message) = emitter_message(&room_name, k, plan.id, seq, &plan.pad) else { break true };
            frame.clear();
            resp_publish(&mut frame, &format!("socket.io#/#{room_name}#"), &message);
            if write.write_all(&frame).await.is_err() {
                break true;
            }
            out.published += 1;
            *out.by_step.entry(k).or_default() += 1;
            sent += 1;
        };
        if !failed {
            // Stopped: let the last replies come in (bounded).
            let _ = write.flush().await;
            let until = Instant::now() + Duration::from_secs(3);
            while replies.load(Ordering::Relaxed) < sent && Instant::now() < until && !closed.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let answered = replies.load(Ordering::Relaxed);
        out.answered += answered;
        out.errors += errors.load(Ordering::Relaxed);
        reader.abort();
        if failed {
            out.failures.push(EmitterFailure {
                node: cur + 1,
                at_us: now_us(),
                unanswered: sent.saturating_sub(answered),
            });
            cur = (cur + 1) % n;
        }
    }
    out
}

/// How to spread reconnecting clients over worker processes (`scale-worker`).
#[derive(Debug, Clone)]
pub(crate) struct WorkerSpec {
    pub(crate) targets: Vec<String>,
    pub(crate) clients_per_node: usize,
    pub(crate) workers_per_node: usize,
    pub(crate) rooms: usize,
    pub(crate) room_prefix: String,
    pub(crate) emitters: usize,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) concurrency: usize,
    pub(crate) connect_timeout_ms: u64,
    pub(crate) connect_deadline_secs: u64,
    pub(crate) max_hold_secs: u64,
    pub(crate) reconnect_delay_ms: u64,
    pub(crate) reconnect_delay_max_ms: u64,
    pub(crate) randomization: f64,
    pub(crate) progress_ms: u64,
}

impl ScaleArgs {
    fn worker_spec(&self) -> WorkerSpec {
        WorkerSpec {
            targets: self.target.clone(),
            clients_per_node: self.clients_per_node,
            workers_per_node: self.workers_per_node,
            rooms: self.rooms,
            room_prefix: self.room_prefix.clone(),
            emitters: self.emitters,
            sources: self.sources.clone(),
            concurrency: self.concurrency,
            connect_timeout_ms: self.connect_timeout_ms,
            connect_deadline_secs: self.connect_deadline_secs,
            max_hold_secs: (self.steady_secs + self.recover_max_secs + self.after_secs) as u64
                + self.drain_max_secs
                + self.connect_deadline_secs
                + 120,
            reconnect_delay_ms: self.reconnect_delay_ms,
            reconnect_delay_max_ms: self.reconnect_delay_max_ms,
            randomization: self.randomization,
            progress_ms: self.sample_ms.clamp(50, 1000),
        }
    }
}

/// What the scale coordinator keeps of its workers' events.
#[derive(Debug, Default)]
pub(crate) struct Scale {
    /// Latest progress per worker: (connected per node, received, last reconnect µs).
    progress: BTreeMap<usize, (Vec<u64>, u64, u64)>,
    /// Progress events received per worker.
    ticks: BTreeMap<usize, u64>,
    connected: BTreeMap<usize, ConnectOutcome>,
    reports: Vec<ScaleReport>,
    done: usize,
}

impl Tally for Scale {
    type Event = ScaleEvent;

    fn absorb(&mut self, event: ScaleEvent) {
        match event {
            ScaleEvent::Progress { worker, connected, received, last_reconnect_us, .. } => {
                self.progress.insert(worker, (connected, received, last_reconnect_us));
                *self.ticks.entry(worker).or_default() += 1;
            }
            ScaleEvent::Connected { worker, outcome } => {
                self.connected.insert(worker, outcome);
            }
            ScaleEvent::Report { report, .. } => self.reports.push(*report),
            ScaleEvent::Done { .. } => self.done += 1,
        }
    }

    fn done(&self) -> usize {
        self.done
    }
}

/// The scale workers.
pub(crate) type Workers = Pool<Scale>;

impl Pool<Scale> {
    /// Worker *w* connects its clients to node *w mod nodes*; client indices run on across
    /// workers, so every worker's clients cover the rooms evenly.
    pub(crate) fn spawn(label: &str, spec: &WorkerSpec) -> anyhow::Result<Self> {
        let nodes = spec.targets.len();
        let exe = std::env::current_exe().context("locating ioswarm-bench")?;
        let sources: Vec<String> = spec.sources.iter().map(ToString::to_string).collect();
        let mut commands = Vec::new();
        let mut first = 0;
        for w in 0..nodes * spec.workers_per_node {
            let home = w % nodes;
            let slot = w / nodes;
            let count = spec.clients_per_node / spec.workers_per_node
                + usize::from(slot < spec.clients_per_node % spec.workers_per_node);
            if count == 0 {
                continue;
            }
            let mut command = Command::new(&exe);
            command
                .arg("scale-worker")
                .args(["--worker-id", &w.to_string()])
                .args(["--targets", &spec.targets.join(",")])
                .args(["--home", &home.to_string()])
                .args(["--clients", &count.to_string()])
                .args(["--first-index", &first.to_string()])
                .args(["--rooms", &spec.rooms.to_string()])
                .args(["--room-prefix", &spec.room_prefix])
                .args(["--emitters", &spec.emitters.to_string()])
                .args(["--sources", &sources.join(",")])
                .args(["--concurrency", &spec.concurrency.to_string()])
                .args(["--connect-timeout-ms", &spec.connect_timeout_ms.to_string()])
                .args(["--connect-deadline-secs", &spec.connect_deadline_secs.to_string()])
                .args(["--max-hold-secs", &spec.max_hold_secs.to_string()])
                .args(["--reconnect-delay-ms", &spec.reconnect_delay_ms.to_string()])
                .args(["--reconnect-delay-max-ms", &spec.reconnect_delay_max_ms.to_string()])
                .args(["--randomization", &spec.randomization.to_string()])
                .args(["--progress-ms", &spec.progress_ms.to_string()]);
            commands.push(command);
            first += count;
        }
        Self::start(label, "scale worker", commands, 4096, Scale::default())
    }

    /// Clients connected per node now (the workers' latest progress).
    pub(crate) fn connected_per_node(&self, nodes: usize) -> Vec<u64> {
        let mut out = vec![0; nodes];
        for (connected, _, _) in self.tally.progress.values() {
            for (o, c) in out.iter_mut().zip(connected) {
                *o += c;
            }
        }
        out
    }

    pub(crate) fn received(&self) -> u64 {
        self.tally.progress.values().map(|p| p.1).sum()
    }

    fn last_reconnect_us(&self) -> u64 {
        self.tally.progress.values().map(|p| p.2).max().unwrap_or(0)
    }

    pub(crate) async fn wait_connected(&mut self, limit: Duration) -> anyhow::Result<Connected> {
        let started = std::time::Instant::now();
        let deadline = Instant::now() + limit;
        let workers = self.len();
        let log = |t: &Scale| {
            eprintln!(
                "[scale] connecting: {} of {workers} workers done, {} clients connected",
                t.connected.len(),
                t.progress.values().map(|p| p.0.iter().sum::<u64>()).sum::<u64>()
            );
        };
        match self.absorb_until(deadline, |t| t.connected.len() >= workers, log).await {
            Waited::Met => {}
            Waited::Exited => bail!("scale workers exited before connecting (see their errors above)"),
            Waited::TimedOut => bail!("the connect phase exceeded {limit:?}"),
        }
        Ok(Connected::merge(started, self.tally.connected.values()))
    }

    /// Waits until nothing arrived for `quiet` (or `max` passed). Quiet counts only while every
    /// worker keeps reporting (at least 3 progress events since the last delivery): a worker
    /// starved of CPU on a busy machine must not pass for one with nothing left to receive.
    pub(crate) async fn drain(&mut self, quiet: Duration, max: Duration) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut last = self.received();
        let mut last_change = started;
        let mut ticks_at_change = self.tally.ticks.clone();
        while started.elapsed() < max {
            self.pump(Duration::from_millis(200)).await?;
            let now = self.received();
            if now != last {
                last = now;
                last_change = Instant::now();
                ticks_at_change = self.tally.ticks.clone();
                continue;
            }
            let ticks = &self.tally.ticks;
            let fresh = self
                .tally
                .progress
                .keys()
                .all(|w| ticks.get(w).copied().unwrap_or(0) >= ticks_at_change.get(w).copied().unwrap_or(0) + 3);
            if fresh && last_change.elapsed() >= quiet {
                break;
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    pub(crate) async fn report(&mut self, finals: &[u64]) -> anyhow::Result<Vec<ScaleReport>> {
        self.tally.reports.clear();
        self.command(&format!("report {}", finals.iter().map(u64::to_string).collect::<Vec<_>>().join(","))).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let live = self.len() - self.tally.done;
        if self.absorb_until(deadline, |t| t.reports.len() >= live, |_| {}).await == Waited::TimedOut {
            bail!("scale workers did not report in 30 s");
        }
        Ok(std::mem::take(&mut self.tally.reports))
    }
}

/// CPU of a set of processes: per process, the last good reading (a process that exited keeps
/// its last one and reads `None` afterwards).
struct CpuWatch {
    watches: Vec<ProcWatch>,
}

impl CpuWatch {
    fn new(pids: &[u32]) -> anyhow::Result<Self> {
        Ok(Self { watches: pids.iter().map(|&p| ProcWatch::new(p)).collect::<anyhow::Result<Vec<_>>>()? })
    }

    fn sample(&self) -> Vec<Option<Sample>> {
        self.watches.iter().map(|w| w.sample().ok()).collect()
    }
}

/// CPU cores used between two readings of each process (`None` where either reading failed).
fn cores(before: &[Option<Sample>], after: &[Option<Sample>]) -> Vec<Option<f64>> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| match (b, a) {
            (Some(b), Some(a)) => {
                let wall = (a.at - b.at).as_secs_f64();
                (wall > 0.0).then(|| (a.cpu_secs - b.cpu_secs).max(0.0) / wall)
            }
            _ => None,
        })
        .collect()
}

fn sum_cores(v: &[Option<f64>]) -> f64 {
    v.iter().flatten().sum()
}

/// Cores busy on the whole machine between two `/proc/stat` readings.
fn machine_cores(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    (t1 > t0).then(|| (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64 * cores)
}

/// What the machine was doing over a window: every core busy, and how much of that was neither
/// the servers nor the load of this run (other work sharing the machine).
#[derive(Debug, Clone, Copy, Serialize)]
struct MachineLoad {
    load_average: Option<f64>,
    busy_cores: Option<f64>,
    other_cores: Option<f64>,
}

impl MachineLoad {
    fn of(start: Option<(u64, u64)>, end: Option<(u64, u64)>, load_average: Option<f64>, ours: f64) -> Self {
        let busy_cores = machine_cores(start, end);
        Self { load_average, busy_cores, other_cores: busy_cores.map(|b| (b - ours).max(0.0)) }
    }
}

/// Recv-Q (accept queue now) and Send-Q (its limit) of each listening socket on `ports`, from
/// `ss -Hltn`.
async fn accept_queues(ports: &[u16]) -> Vec<Option<(u64, u64)>> {
    let output = Command::new("ss").args(["-Hltn"]).stdin(Stdio::null()).output().await;
    let Ok(output) = output else { return vec![None; ports.len()] };
    let text = String::from_utf8_lossy(&output.stdout);
    parse_accept_queues(&text, ports)
}

fn parse_accept_queues(text: &str, ports: &[u16]) -> Vec<Option<(u64, u64)>> {
    let mut out = vec![None; ports.len()];
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // LISTEN RECV-Q SEND-Q LOCAL PEER
        let [_, recv_q, send_q, local, ..] = cols.as_slice() else { continue };
        let Some(port) = local.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) else { continue };
        if let Some(i) = ports.iter().position(|&p| p == port)
            && let (Ok(r), Ok(s)) = (recv_q.parse(), send_q.parse())
        {
            out[i] = Some((r, s));
        }
    }
    out
}

/// One point of the timeline.
#[derive(Debug, Clone, Serialize)]
struct Point {
    /// Seconds since the event (negative: before it); without an event, since publishing began.
    t: f64,
    connected: Vec<u64>,
    /// Accept queue of each node's Socket.IO listener (sampled during the recovery only).
    #[serde(skip_serializing_if = "Option::is_none")]
    accept_queue: Option<Vec<Option<u64>>>,
}

/// One step's deliveries, merged over the workers.
#[derive(Debug, Clone, Serialize)]
struct StepOut {
    step: u32,
    secs: f64,
    published: u64,
    delivered: u64,
    delivered_per_sec: f64,
    per_node_delivered_per_sec: Vec<f64>,
    latency: Option<Latency>,
    /// By the node the receiving client was connected to.
    per_node_latency: Vec<Option<Latency>>,
    /// Server CPU over the step, per node (cores).
    server_cpu_cores: Vec<Option<f64>>,
    /// Every server core-second of the step: deliveries / server CPU seconds (summed).
    delivered_per_server_core_sec: Option<f64>,
    /// The load: the worker processes and this coordinator (the emitters), cores.
    load_cpu_cores: f64,
    machine: MachineLoad,
}

/// What losing the victim cost.
#[derive(Debug, Clone, Serialize)]
struct EventOut {
    kind: Event,
    victim: usize,
    victim_clients: u64,
    at_us: u64,
    /// Event → the first client dropped.
    first_drop_secs: Option<f64>,
    /// Event → the last of the victim's clients connected (and joined) on a survivor.
    recovered_secs: Option<f64>,
    /// Clients still not connected when the recovery window closed.
    not_reconnected: u64,
    /// Connected per node once recovered.
    connected_after: Vec<u64>,
    reconnect_ms: Option<Latency>,
    drops: u64,
    drop_reasons: BTreeMap<String, u64>,
    reconnects: u64,
    reconnect_failures: u64,
    /// Machine-wide SYNs dropped (full accept queue / any listen drop) from the event to the
    /// end of the recovery window.
    listen_overflows: Option<u64>,
    listen_drops: Option<u64>,
    /// Largest accept queue seen on each node's Socket.IO listener, and its limit.
    accept_queue_max: Vec<Option<u64>>,
    accept_backlog: Vec<Option<u64>>,
    /// Event → recovered (or the window's end).
    storm_secs: f64,
    server_cpu_cores: Vec<Option<f64>>,
    load_cpu_cores: f64,
    machine: MachineLoad,
}

/// Deliveries lost over the whole run.
#[derive(Debug, Clone, Default, Serialize)]
struct Losses {
    stayed: u64,
    moved: u64,
    stayed_with_loss: u64,
    /// By emitter.
    lost_stayed: Vec<u64>,
    lost_moved: Vec<u64>,
    /// Lost by clients that stayed, from emitters whose node was not the victim: must be 0.
    lost_stayed_surviving_emitters: u64,
    /// Lost by clients that stayed, from the victim's emitter (what the victim had accepted or
    /// was still reading when it went away).
    lost_stayed_victim_emitter: u64,
    /// PUBLISHes the victim's emitter had written to the victim without a reply when its
    /// connection failed: a loss up to this many messages per room member is the crash's; more
    /// means the victim answered messages it never delivered.
    victim_unanswered: u64,
    lost_moved_total: u64,
    reordered: u64,
    /// Of the deliveries lost by clients that stayed, the gaps (a later message of the stream
    /// arrived: skipped, not late), by emitter, by the node the client was on, and from the
    /// emitters on surviving nodes. The rest of a loss never arrived before the report.
    gaps_stayed: Vec<u64>,
    gaps_stayed_by_node: Vec<u64>,
    gaps_stayed_surviving_emitters: u64,
    /// `msg` packets that did not parse.
    malformed: u64,
}

#[derive(Debug, Serialize)]
struct ScaleResult {
    scenario: &'static str,
    label: String,
    note: Option<String>,
    event: Event,
    nodes: usize,
    clients_per_node: usize,
    workers: usize,
    rooms: usize,
    members_per_room: f64,
    emitters: usize,
    emit_rate: f64,
    payload_bytes: usize,
    #[serde(flatten)]
    connect: Connected,
    connected_per_node: Vec<u64>,
    steady: StepOut,
    during: Option<StepOut>,
    event_figures: Option<EventOut>,
    losses: Losses,
    emitter_runs: Vec<EmitterOut>,
    /// `ioswarm_cluster_forward_dropped_total` and `ioswarm_socketio_packets_dropped_total` per
    /// node over the run (None: no admin address, or the node was gone).
    forward_dropped: Vec<Option<f64>>,
    packets_dropped: Vec<Option<f64>>,
    rss_end_kib: Vec<Option<u64>>,
    drain_secs: f64,
    timeline: Vec<Point>,
}

fn merge_hist(into: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        into.saturating_record_n(value, count);
    }
}

/// One step's figures merged over the workers.
struct MergedStep {
    received: u64,
    per_node: Vec<u64>,
    last_us: u64,
    hist: Histogram<u64>,
    per_node_hist: Vec<Histogram<u64>>,
}

/// Merges the workers' figures of `step`.
fn merge_step(reports: &[ScaleReport], step: u32, nodes: usize) -> MergedStep {
    let mut m = MergedStep {
        received: 0,
        per_node: vec![0; nodes],
        last_us: 0,
        hist: new_histogram(),
        per_node_hist: (0..nodes).map(|_| new_histogram()).collect(),
    };
    for s in reports.iter().flat_map(|r| r.steps.iter()).filter(|s: &&StepFigures| s.step == step) {
        m.received += s.received;
        for (p, v) in m.per_node.iter_mut().zip(&s.per_node) {
            *p += v;
        }
        m.last_us = m.last_us.max(s.last_us);
        merge_hist(&mut m.hist, &s.hist);
        for (h, pairs) in m.per_node_hist.iter_mut().zip(&s.per_node_hist) {
            merge_hist(h, pairs);
        }
    }
    m
}

/// Metric `name` (summed over its labels) on every node's `/metrics` now.
async fn metric_per_node(admins: &mut [Admin], name: &str) -> Vec<Option<f64>> {
    let mut out = Vec::with_capacity(admins.len());
    for admin in admins.iter_mut() {
        let text = admin.get_text("/metrics", Duration::from_secs(2)).await.ok();
        // Labelled counters appear with their first increment: absent means 0.
        out.push(text.map(|t| metric_sum(&t, name).unwrap_or(0.0)));
    }
    out
}

fn delta(before: &[Option<f64>], after: &[Option<f64>]) -> Vec<Option<f64>> {
    before.iter().zip(after).map(|(b, a)| a.zip(*b).map(|(a, b)| a - b)).collect()
}

/// CPU of the servers and of the load, and the machine, at one moment.
#[derive(Debug, Clone)]
struct Readings {
    at: Instant,
    at_us: u64,
    servers: Vec<Option<Sample>>,
    load: Vec<Option<Sample>>,
    machine: Option<(u64, u64)>,
    load_average: Option<f64>,
}

/// The processes whose CPU a run reads.
struct Probes {
    servers: CpuWatch,
    load: CpuWatch,
}

impl Probes {
    fn read(&self) -> Readings {
        Readings {
            at: Instant::now(),
            at_us: now_us(),
            servers: self.servers.sample(),
            load: self.load.sample(),
            machine: machine_cpu_ticks(),
            load_average: load_average(),
        }
    }
}

/// Server cores per node, load cores, and the machine, between two readings.
fn window(a: &Readings, b: &Readings) -> (Vec<Option<f64>>, f64, MachineLoad) {
    let servers = cores(&a.servers, &b.servers);
    let load = sum_cores(&cores(&a.load, &b.load));
    let machine = MachineLoad::of(a.machine, b.machine, a.load_average, sum_cores(&servers) + load);
    (servers, load, machine)
}

/// The timeline as sampled: when, clients per node, accept queues.
type Timeline = Vec<(Instant, Vec<u64>, Option<Vec<Option<u64>>>)>;

/// What the event phase needs from the run.
struct Scene<'a> {
    args: &'a ScaleArgs,
    nodes: usize,
    victim: usize,
    ports: &'a [u16],
    probes: &'a Probes,
    sample_every: Duration,
}

/// Sends the event's signal to the victim and follows its clients until every one is connected
/// again (or `--recover-max-secs`), then `--after-secs` more. Returns the figures (losses and
/// reconnect times are filled in from the workers' reports later) and the reading at the end of
/// the storm.
async fn lose_node(
    scene: &Scene<'_>,
    signal: &str,
    workers: &mut Workers,
    steady_end: &Readings,
    timeline: &mut Timeline,
) -> anyhow::Result<EventOut> {
    let Scene { args, nodes, victim, ports, probes, sample_every } = *scene;
    let before = workers.connected_per_node(nodes);
    let total_before: u64 = before.iter().sum();
    let overflows = tcp_ext_counter("ListenOverflows");
    let drops = tcp_ext_counter("ListenDrops");
    let pid = args.server_pid[victim - 1];
    let (at, at_us) = (Instant::now(), now_us());
    let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().await?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    eprintln!("[{}] SIG{signal} to node {victim} (pid {pid}, {} clients)", args.label, before[victim - 1]);
    let mut recovered_at: Option<Instant> = None;
    let mut queue_max: Vec<Option<u64>> = vec![None; nodes];
    let mut backlog: Vec<Option<u64>> = vec![None; nodes];
    let mut end = at + Duration::from_secs_f64(args.recover_max_secs);
    let mut log = Instant::now();
    let mut storm_end = None;
    while Instant::now() < end {
        workers.pump(sample_every).await?;
        let now_nodes = workers.connected_per_node(nodes);
        let queues = accept_queues(ports).await;
        for (i, q) in queues.iter().enumerate() {
            if let Some((r, s)) = q {
                queue_max[i] = Some(queue_max[i].unwrap_or(0).max(*r));
                backlog[i] = Some(*s);
            }
        }
        let total: u64 = now_nodes.iter().sum();
        if recovered_at.is_none() && now_nodes[victim - 1] == 0 && total >= total_before {
            let now = Instant::now();
            recovered_at = Some(now);
            storm_end = Some(probes.read());
            end = now + Duration::from_secs_f64(args.after_secs);
            eprintln!(
                "[{}] every client connected again after {:.2} s: {now_nodes:?}",
                args.label,
                (now - at).as_secs_f64()
            );
        } else if recovered_at.is_none() && log.elapsed() >= Duration::from_secs(2) {
            log = Instant::now();
            eprintln!("[{}] +{:.1} s: connected per node {now_nodes:?}", args.label, at.elapsed().as_secs_f64());
        }
        timeline.push((Instant::now(), now_nodes, Some(queues.iter().map(|q| q.map(|(r, _)| r)).collect())));
    }
    let storm_end = storm_end.unwrap_or_else(|| probes.read());
    let (server_cpu_cores, load_cpu_cores, machine) = window(steady_end, &storm_end);
    let after = workers.connected_per_node(nodes);
    Ok(EventOut {
        kind: args.event,
        victim,
        victim_clients: before[victim - 1],
        at_us,
        first_drop_secs: None,
        recovered_secs: recovered_at.map(|_| workers.last_reconnect_us().saturating_sub(at_us) as f64 / 1e6),
        not_reconnected: total_before.saturating_sub(after.iter().sum()),
        connected_after: after,
        reconnect_ms: None,
        drops: 0,
        drop_reasons: BTreeMap::new(),
        reconnects: 0,
        reconnect_failures: 0,
        listen_overflows: tcp_ext_counter("ListenOverflows").zip(overflows).map(|(a, b)| a.saturating_sub(b)),
        listen_drops: tcp_ext_counter("ListenDrops").zip(drops).map(|(a, b)| a.saturating_sub(b)),
        accept_queue_max: queue_max,
        accept_backlog: backlog,
        storm_secs: (storm_end.at - at).as_secs_f64(),
        server_cpu_cores,
        load_cpu_cores,
        machine,
    })
}

/// One step's figures from the workers' reports and the readings at its ends.
fn step_out(
    reports: &[ScaleReport],
    emitter_runs: &[EmitterOut],
    step: u32,
    nodes: usize,
    from: &Readings,
    to: &Readings,
) -> StepOut {
    let m = merge_step(reports, step, nodes);
    let (server_cpu_cores, load_cpu_cores, machine) = window(from, to);
    let secs = to.at_us.saturating_sub(from.at_us) as f64 / 1e6;
    let span = (m.last_us.max(to.at_us).saturating_sub(from.at_us) as f64 / 1e6).max(1e-6);
    let cpu_secs = sum_cores(&server_cpu_cores) * secs;
    StepOut {
        step,
        secs,
        published: emitter_runs.iter().map(|e| e.by_step.get(&step).copied().unwrap_or(0)).sum(),
        delivered: m.received,
        delivered_per_sec: m.received as f64 / span,
        per_node_delivered_per_sec: m.per_node.iter().map(|&n| n as f64 / span).collect(),
        latency: Latency::of(&m.hist),
        per_node_latency: m.per_node_hist.iter().map(Latency::of).collect(),
        server_cpu_cores,
        delivered_per_server_core_sec: (cpu_secs > 0.0).then(|| m.received as f64 / cpu_secs),
        load_cpu_cores,
        machine,
    }
}

/// Losses over the whole run; fills the event's reconnect figures. `victim_emitter(e)`: emitter
/// `e` published into the node that went away.
fn tally(
    reports: &[ScaleReport],
    emitters: usize,
    nodes: usize,
    victim_emitter: impl Fn(usize) -> bool,
    event: Option<&mut EventOut>,
) -> Losses {
    let mut losses = Losses {
        lost_stayed: vec![0; emitters],
        lost_moved: vec![0; emitters],
        gaps_stayed: vec![0; emitters],
        gaps_stayed_by_node: vec![0; nodes],
        ..Losses::default()
    };
    let mut reconnect = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).unwrap_or_else(|_| unreachable!("bounds"));
    let (mut drops, mut reconnects, mut reconnect_failures, mut first_drop) = (0, 0, 0, u64::MAX);
    let mut drop_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for r in reports {
        losses.stayed += r.stayed;
        losses.moved += r.moved;
        losses.stayed_with_loss += r.stayed_with_loss;
        losses.reordered += r.reordered;
        for (t, v) in losses.lost_stayed.iter_mut().zip(&r.lost_stayed) {
            *t += v;
        }
        for (t, v) in losses.lost_moved.iter_mut().zip(&r.lost_moved) {
            *t += v;
        }
        for (t, v) in losses.gaps_stayed.iter_mut().zip(&r.gaps_stayed) {
            *t += v;
        }
        for (t, v) in losses.gaps_stayed_by_node.iter_mut().zip(&r.gaps_stayed_by_node) {
            *t += v;
        }
        losses.malformed += r.malformed;
        merge_hist(&mut reconnect, &r.reconnect_hist);
        drops += r.drops;
        reconnects += r.reconnects;
        reconnect_failures += r.reconnect_failures;
        if r.first_drop_us > 0 {
            first_drop = first_drop.min(r.first_drop_us);
        }
        for (k, v) in &r.drop_reasons {
            *drop_reasons.entry(k.clone()).or_default() += v;
        }
    }
    for (e, &lost) in losses.lost_stayed.iter().enumerate() {
        if victim_emitter(e) {
            losses.lost_stayed_victim_emitter += lost;
        } else {
            losses.lost_stayed_surviving_emitters += lost;
            losses.gaps_stayed_surviving_emitters += losses.gaps_stayed[e];
        }
    }
    losses.lost_moved_total = losses.lost_moved.iter().sum();
    if let Some(ev) = event {
        ev.first_drop_secs = (first_drop != u64::MAX).then(|| first_drop.saturating_sub(ev.at_us) as f64 / 1e6);
        // This histogram holds milliseconds (Latency::of reads microseconds).
        ev.reconnect_ms = (!reconnect.is_empty()).then(|| {
            let q = |q: f64| reconnect.value_at_quantile(q) as f64;
            Latency { p50_ms: q(0.5), p99_ms: q(0.99), p999_ms: q(0.999), max_ms: reconnect.max() as f64 }
        });
        ev.drops = drops;
        ev.drop_reasons = drop_reasons;
        ev.reconnects = reconnects;
        ev.reconnect_failures = reconnect_failures;
    }
    losses
}

pub(crate) fn run(args: ScaleArgs) -> anyhow::Result<()> {
    crate::block_on(run_async(args))
}

async fn run_async(args: ScaleArgs) -> anyhow::Result<()> {
    let nodes = args.target.len();
    if nodes == 0 || args.redis.len() != nodes || args.server_pid.len() != nodes {
        bail!("--target, --redis and --server-pid must name the same nodes");
    }
    if !args.admin.is_empty() && args.admin.len() != nodes {
        bail!("--admin must name every node (or none)");
    }
    if args.rooms == 0 || args.emitters == 0 || args.emit_rate <= 0.0 || args.workers_per_node == 0 {
        bail!("--rooms, --emitters, --emit-rate and --workers-per-node must be positive");
    }
    let targets = args.target.iter().map(|t| Target::parse(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let redis = Arc::new(args.redis.iter().map(|r| parse_addr(r)).collect::<anyhow::Result<Vec<_>>>()?);
    let mut admins = args.admin.iter().map(|a| parse_addr(a).map(Admin::new)).collect::<anyhow::Result<Vec<_>>>()?;
    let victim = args.victim.unwrap_or(nodes);
    if args.event != Event::None && (nodes < 2 || victim == 0 || victim > nodes) {
        bail!("--event needs at least 2 nodes and --victim between 1 and {nodes}");
    }
    let ports: Vec<u16> = targets.iter().map(|t| t.addr.port()).collect();
    let fwd_before = metric_per_node(&mut admins, "ioswarm_cluster_forward_dropped_total").await;
    let pkt_before = metric_per_node(&mut admins, "ioswarm_socketio_packets_dropped_total").await;

    eprintln!(
        "[{}] {} nodes × {} clients, {} rooms, {} emitters × {}/s",
        args.label, nodes, args.clients_per_node, args.rooms, args.emitters, args.emit_rate
    );
    let mut workers = Workers::spawn(&args.label, &args.worker_spec())?;
    let mut load_pids = workers.pids();
    load_pids.push(std::process::id());
    let probes = Probes { servers: CpuWatch::new(&args.server_pid)?, load: CpuWatch::new(&load_pids)? };
    let limit = Duration::from_secs(args.connect_deadline_secs + 30) + Duration::from_millis(args.connect_timeout_ms);
    let connect = workers.wait_connected(limit).await?;
    workers.pump(Duration::from_millis(500)).await?;
    let connected_per_node = workers.connected_per_node(nodes);
    eprintln!(
        "[{}] {} connected ({:?} per node), {} failed in {:.1} s{}",
        args.label,
        connect.connected,
        connected_per_node,
        connect.failed,
        connect.connect_secs,
        connect.first_error.as_ref().map(|e| format!(" (first error: {e})")).unwrap_or_default()
    );
    if connect.connected == 0 {
        bail!("[{}] no client connected", args.label);
    }

    // Publishing: step 1 steady, step 2 from the event on.
    let (step_tx, step_rx) = watch::channel(1u32);
    let stop = CancellationToken::new();
    let pad = "x".repeat(args.payload_bytes);
    let emitter_tasks: Vec<_> = (0..args.emitters)
        .map(|id| {
            let plan = EmitterPlan {
                id,
                addrs: redis.clone(),
                first: id % nodes,
                rooms: args.rooms,
                prefix: args.room_prefix.clone(),
                pad: pad.clone(),
                rate: args.emit_rate,
            };
            tokio::spawn(emitter(plan, step_rx.clone(), stop.clone()))
        })
        .collect();
    let start = probes.read();
    let mut timeline: Timeline = Vec::new();
    let sample_every = Duration::from_millis(args.sample_ms.max(20));
    let steady_until = start.at + Duration::from_secs_f64(args.steady_secs);
    while Instant::now() < steady_until {
        workers.pump(sample_every.min(steady_until.saturating_duration_since(Instant::now()))).await?;
        timeline.push((Instant::now(), workers.connected_per_node(nodes), None));
    }
    let steady_end = probes.read();

    let mut event_figures = None;
    if let Some(signal) = args.event.signal() {
        step_tx.send_replace(2);
        let scene = Scene { args: &args, nodes, victim, ports: &ports, probes: &probes, sample_every };
        event_figures = Some(lose_node(&scene, signal, &mut workers, &steady_end, &mut timeline).await?);
    }
    let publish_end = probes.read();
    stop.cancel();
    let mut emitter_runs = Vec::new();
    for task in emitter_tasks {
        emitter_runs.push(task.await.context("an emitter task failed")?);
    }
    let drain_secs =
        workers.drain(Duration::from_millis(args.drain_quiet_ms), Duration::from_secs(args.drain_max_secs)).await?;
    let finals: Vec<u64> = emitter_runs.iter().map(|e| e.published).collect();
    let reports = workers.report(&finals).await?;
    let fwd_after = metric_per_node(&mut admins, "ioswarm_cluster_forward_dropped_total").await;
    let pkt_after = metric_per_node(&mut admins, "ioswarm_socketio_packets_dropped_total").await;
    let rss_end_kib = probes.servers.sample().iter().map(|s| s.map(|s| s.rss_kib)).collect();
    workers.stop().await;

    let steady = step_out(&reports, &emitter_runs, 1, nodes, &start, &steady_end);
    let during =
        event_figures.is_some().then(|| step_out(&reports, &emitter_runs, 2, nodes, &steady_end, &publish_end));
    let lost_node = event_figures.is_some();
    let mut losses =
        tally(&reports, args.emitters, nodes, |e| lost_node && e % nodes == victim - 1, event_figures.as_mut());
    losses.victim_unanswered = emitter_runs
        .iter()
        .flat_map(|e| &e.failures)
        .filter(|f| lost_node && f.node == victim)
        .map(|f| f.unanswered)
        .sum();
    // Seconds from the event (from the start of publishing without one).
    let origin = event_figures.as_ref().map_or(start.at, |_| steady_end.at);
    let timeline = timeline
        .into_iter()
        .map(|(at, connected, accept_queue)| Point {
            t: if at >= origin { (at - origin).as_secs_f64() } else { -(origin - at).as_secs_f64() },
            connected,
            accept_queue,
        })
        .collect();

    let result = ScaleResult {
        scenario: "scale",
        label: args.label.clone(),
        note: args.note.clone(),
        event: args.event,
        nodes,
        clients_per_node: args.clients_per_node,
        workers: nodes * args.workers_per_node,
        rooms: args.rooms,
        members_per_room: connect.connected as f64 / args.rooms as f64,
        emitters: args.emitters,
        emit_rate: args.emit_rate,
        payload_bytes: args.payload_bytes,
        connect,
        connected_per_node,
        steady,
        during,
        event_figures,
        losses,
        emitter_runs,
        forward_dropped: delta(&fwd_before, &fwd_after),
        packets_dropped: delta(&pkt_before, &pkt_after),
        rss_end_kib,
        drain_secs,
        timeline,
    };
    print_summary(&result);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if result.steady.delivered == 0 {
        bail!("[{}] nothing was delivered in the steady phase", args.label);
    }
    Ok(())
}

fn print_summary(r: &ScaleResult) {
    let lat = |l: &Option<Latency>| {
        l.map_or_else(|| "no deliveries".to_owned(), |l| format!("p50={:.1}ms p99={:.1}ms", l.p50_ms, l.p99_ms))
    };
    eprintln!(
        "[{}] steady: {:.0} delivered/s ({:?} per node), {}, server cpu {:?}",
        r.label,
        r.steady.delivered_per_sec,
        r.steady.per_node_delivered_per_sec.iter().map(|v| v.round()).collect::<Vec<_>>(),
        lat(&r.steady.latency),
        r.steady.server_cpu_cores.iter().map(|c| c.map(|c| (c * 100.0).round() / 100.0)).collect::<Vec<_>>()
    );
    if let (Some(ev), Some(d)) = (&r.event_figures, &r.during) {
        eprintln!(
            "[{}] {:?} node {}: {} clients; first drop +{:?} s, all back +{:?} s, reconnect {:?}, not reconnected {}; \
             SYN drops {:?}/{:?}; accept queue max {:?}; during: {:.0} delivered/s, {}",
            r.label,
            ev.kind,
            ev.victim,
            ev.victim_clients,
            ev.first_drop_secs,
            ev.recovered_secs,
            ev.reconnect_ms.map(|l| (l.p50_ms, l.p99_ms, l.max_ms)),
            ev.not_reconnected,
            ev.listen_overflows,
            ev.listen_drops,
            ev.accept_queue_max,
            d.delivered_per_sec,
            lat(&d.latency)
        );
    }
    eprintln!(
        "[{}] lost: stayed {} (surviving emitters {}, of which gaps {} by node {:?}; victim's emitter {}; {} of {} clients), moved {} ({} clients); reordered {}, malformed {}",
        r.label,
        r.losses.lost_stayed.iter().sum::<u64>(),
        r.losses.lost_stayed_surviving_emitters,
        r.losses.gaps_stayed_surviving_emitters,
        r.losses.gaps_stayed_by_node,
        r.losses.lost_stayed_victim_emitter,
        r.losses.stayed_with_loss,
        r.losses.stayed,
        r.losses.lost_moved_total,
        r.losses.moved,
        r.losses.reordered,
        r.losses.malformed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_accept_queues_from_ss() {
        let text = "LISTEN 0      4096       127.0.0.1:40001      0.0.0.0:*\n\
                    LISTEN 17     4096       127.0.0.1:40002      0.0.0.0:*\n\
                    LISTEN 0      128            [::]:22            [::]:*\n";
        assert_eq!(parse_accept_queues(text, &[40002, 40001, 9]), vec![Some((17, 4096)), Some((0, 4096)), None]);
    }

    #[test]
    fn emitter_message_carries_emitter_and_sequence() {
        let bytes = emitter_message("sc-3", 2, 1, 9, "p").expect("encodes");
        let value = rmpv::decode::read_value(&mut &bytes[..]).expect("decodes");
        let text = value.to_string();
        assert!(text.contains("\"k\": 2, \"e\": 1, \"s\": 9"), "{text}");
        assert!(text.contains("\"rooms\": [\"sc-3\"]"), "{text}");
    }

    #[test]
    fn cores_skip_processes_that_went_away() {
        let at = std::time::Instant::now();
        let s = |cpu: f64, later: u64| Sample {
            rss_kib: 0,
            hwm_kib: 0,
            cpu_secs: cpu,
            at: at + Duration::from_secs(later),
        };
        let got = cores(&[Some(s(1.0, 0)), Some(s(1.0, 0))], &[Some(s(2.0, 2)), None]);
        assert_eq!(got, vec![Some(0.5), None]);
    }
}
