//! `ioswarm-bench idle`: N idle clients held by W worker processes while the server's memory and
//! CPU are sampled from /proc.
//!
//! Phases: sample before → spawn workers → connect (sampling every 250 ms) → hold `--hold-secs`
//! (sampling every second) → close the workers' stdin (they close their sockets and exit) →
//! settle → sample after. Prints a figure line to stderr, `RESULT {json}` to stdout, and writes the
//! JSON to `--json-out` when given.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::process::Command;

use crate::pool::{Pool, Tally};
use crate::procfs::{ProcWatch, Sample, tcp_ext_counter};
use crate::sio::{Mode, Target};
use crate::worker::{MAX_SOCKETS_PER_WORKER, WorkerEvent};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct IdleArgs {
    /// Name of the server in the report (e.g. ioswarm, node).
    #[arg(long, default_value = "server")]
    label: String,
    /// Server URL, e.g. http://127.0.0.1:3000 (loopback only); several (comma-separated): one per
    /// independent server node, the clients split evenly over them.
    #[arg(long, value_delimiter = ',', required = true)]
    target: Vec<String>,
    /// Pid of the server process (its /proc entry is sampled); several (comma-separated): one per
    /// `--target`, in the same order; memory and CPU are summed over them.
    #[arg(long, value_delimiter = ',', required = true)]
    server_pid: Vec<u32>,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Worker processes to spread the clients over, assigned to the targets in turn (each worker
    /// connects all its clients to one target); at least one per target. Default: max(2, targets).
    #[arg(long)]
    workers: Option<usize>,
    /// Local addresses to connect from, used in turn.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5")]
    sources: Vec<IpAddr>,
    /// Room every client joins (`ioswarm:join`); none: no join.
    #[arg(long)]
    room: Option<String>,
    /// Spread clients over this many rooms ROOM-0 … ROOM-(K-1).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// How long to hold the connections once every worker connected.
    #[arg(long, default_value_t = 30)]
    hold_secs: u64,
    #[arg(long, value_enum, default_value_t = Mode::Ws)]
    mode: Mode,
    /// Connect attempts in flight per worker.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
    /// Connect phase limit; clients not started by then count as failed.
    #[arg(long, default_value_t = 300)]
    connect_deadline_secs: u64,
    /// Wait after the workers exited before the "after" sample.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Also write the result JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Memory figure of one phase, KiB (summed over the nodes).
#[derive(Debug, Clone, Copy, Serialize)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_secs: f64,
}

impl From<Sample> for Mem {
    fn from(s: Sample) -> Self {
        Self { rss_kib: s.rss_kib, hwm_kib: s.hwm_kib, cpu_secs: s.cpu_secs }
    }
}

/// One server node of a run (one `--target` / `--server-pid` pair).
#[derive(Debug, Clone, Serialize)]
struct NodeResult {
    target: String,
    server_pid: u32,
    workers: usize,
    clients: usize,
    connected: u64,
    failed: u64,
    alive_at_end: u64,
    rss_before_kib: u64,
    /// Largest of this node's VmHWM (end of connect, end of hold) and sampled VmRSS.
    peak_rss_kib: u64,
    rss_end_of_hold_kib: u64,
}

/// The result of one idle run (also the JSON schema of bench/results/idle-*.json runs).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleResult {
    scenario: &'static str,
    label: String,
    /// The targets, comma-separated (one unless several nodes).
    target: String,
    /// The first node's pid (kept for single-node readers; see `nodes`).
    server_pid: u32,
    /// Per node: its target, pid, clients and connected counts (one entry per `--target`).
    nodes: Vec<NodeResult>,
    mode: Mode,
    clients: usize,
    workers: usize,
    sources: Vec<IpAddr>,
    room: Option<String>,
    rooms: usize,
    hold_secs: u64,
    connected: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    /// From spawning the workers until the last one reported that every client was tried.
    connect_secs: f64,
    connects_per_sec: f64,
    /// Clients still connected at the end of the hold.
    alive_at_end: u64,
    dropped: BTreeMap<String, u64>,
    pings_answered: u64,
    before: Mem,
    connected_at: Mem,
    end_of_hold: Mem,
    after: Option<Mem>,
    /// The server process could not be read any more before the end of the hold.
    server_exited: bool,
    /// Machine-wide SYNs dropped on full accept queues during the connect phase (`ListenOverflows`).
    listen_overflows: Option<u64>,
    /// Largest VmRSS seen while sampling.
    max_rss_sampled_kib: u64,
    /// Peak RSS while connected and holding: the largest of VmHWM at the end of the connect
    /// phase, VmHWM at the end of the hold and every VmRSS sampled (VmHWM is read from
    /// per-thread counters and can lag a little).
    peak_rss_kib: u64,
    /// (peak RSS − VmRSS before connecting) / connected clients.
    peak_per_client_kib: Option<f64>,
    /// (VmRSS at the end of the hold − VmRSS before connecting) / connected clients.
    held_per_client_kib: Option<f64>,
    /// Server CPU seconds spent during the connect phase.
    cpu_connect_secs: f64,
    /// Server CPU use while holding, in cores (CPU seconds / hold seconds).
    cpu_hold_cores: f64,
}

/// Samples the server processes (one per node), remembering each one's last good reading and
/// largest RSS seen, and the largest summed RSS; a failed reading (that server exited) keeps its
/// last good one and sets `exited`. [`Sampler::sample`] returns the sum over the nodes.
#[derive(Debug)]
struct Sampler {
    watches: Vec<ProcWatch>,
    last: Vec<Sample>,
    max_rss_node_kib: Vec<u64>,
    max_rss_kib: u64,
    exited: bool,
}

impl Sampler {
    fn new(watches: Vec<ProcWatch>) -> anyhow::Result<Self> {
        let last = watches.iter().map(ProcWatch::sample).collect::<anyhow::Result<Vec<_>>>()?;
        let max_rss_node_kib = last.iter().map(|s| s.rss_kib).collect();
        let max_rss_kib = last.iter().map(|s| s.rss_kib).sum();
        Ok(Self { watches, last, max_rss_node_kib, max_rss_kib, exited: false })
    }

    fn sample(&mut self) -> Sample {
        for (i, watch) in self.watches.iter().enumerate() {
            match watch.sample() {
                Ok(s) => {
                    self.last[i] = s;
                    self.max_rss_node_kib[i] = self.max_rss_node_kib[i].max(s.rss_kib);
                }
                Err(_) => self.exited = true,
            }
        }
        let total = sum(&self.last);
        self.max_rss_kib = self.max_rss_kib.max(total.rss_kib);
        total
    }

    /// The last reading of each node.
    fn nodes(&self) -> Vec<Sample> {
        self.last.clone()
    }

    /// A fresh summed reading; `None` when any server process cannot be read.
    fn sample_all(&self) -> Option<Sample> {
        let samples = self.watches.iter().map(|w| w.sample().ok()).collect::<Option<Vec<_>>>()?;
        Some(sum(&samples))
    }
}

/// RSS, VmHWM and CPU summed over several processes; `at` is the latest reading's.
fn sum(samples: &[Sample]) -> Sample {
    let mut total = samples[0];
    for s in &samples[1..] {
        total.rss_kib += s.rss_kib;
        total.hwm_kib += s.hwm_kib;
        total.cpu_secs += s.cpu_secs;
        total.at = total.at.max(s.at);
    }
    total
}

/// Splits `clients` over `targets` nodes evenly, and each node's share evenly over the workers
/// assigned to it in turn (worker `w` → node `w % targets`). Returns `(node, clients)` per worker.
fn plan_workers(clients: usize, targets: usize, workers: usize) -> Vec<(usize, usize)> {
    let share = |total: usize, parts: usize, i: usize| total / parts + usize::from(i < total % parts);
    (0..workers)
        .map(|w| {
            let node = w % targets;
            let node_clients = share(clients, targets, node);
            let node_workers = share(workers, targets, node);
            (node, share(node_clients, node_workers, w / targets))
        })
        .collect()
}

fn worker_command(args: &IdleArgs, target: &str, id: usize, first: usize, count: usize) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("locating ioswarm-bench")?;
    let sources: Vec<String> = args.sources.iter().map(ToString::to_string).collect();
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .args(["--worker-id", &id.to_string()])
        .args(["--target", target])
        .args(["--clients", &count.to_string()])
        .args(["--first-index", &first.to_string()])
        .args(["--sources", &sources.join(",")])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--mode", args.mode.as_str()])
        .args(["--rooms", &args.rooms.to_string()])
        .args(["--connect-timeout-ms", &args.connect_timeout_ms.to_string()])
        .args(["--connect-deadline-secs", &args.connect_deadline_secs.to_string()])
        // A safety net: the coordinator closes stdin well before this.
        .args(["--max-hold-secs", &(args.hold_secs + 120).to_string()]);
    if let Some(room) = &args.room {
        cmd.args(["--room", room]);
    }
    Ok(cmd)
}

#[derive(Debug, Default)]
struct Idle {
    connected: BTreeMap<usize, (u64, u64)>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    done: BTreeMap<usize, (u64, u64)>,
    dropped: BTreeMap<String, u64>,
    progress: BTreeMap<usize, (u64, u64, u64)>,
}

impl Tally for Idle {
    type Event = WorkerEvent;

    fn absorb(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Progress { worker, ok, failed, alive, .. } => {
                self.progress.insert(worker, (ok, failed, alive));
            }
            WorkerEvent::Connected { worker, outcome } => {
                self.connected.insert(worker, (outcome.ok, outcome.failed));
                for (k, v) in outcome.errors {
                    *self.errors.entry(k).or_default() += v;
                }
                if self.first_error.is_none() {
                    self.first_error = outcome.first_error;
                }
            }
            WorkerEvent::Step { .. } => {}
            WorkerEvent::Done { worker, alive, dropped, pings } => {
                self.done.insert(worker, (alive, pings));
                for (k, v) in dropped {
                    *self.dropped.entry(k).or_default() += v;
                }
            }
        }
    }

    fn done(&self) -> usize {
        self.done.len()
    }
}

impl Idle {
    fn progress_line(&self) -> String {
        let (ok, failed, alive) = self.progress.values().fold((0, 0, 0), |a, p| (a.0 + p.0, a.1 + p.1, a.2 + p.2));
        format!("ok={ok} failed={failed} alive={alive}")
    }
}

pub(crate) fn run(args: IdleArgs) -> anyhow::Result<()> {
    crate::block_on(run_async(args))
}

async fn run_async(args: IdleArgs) -> anyhow::Result<()> {
    let targets = args.target.len();
    if targets == 0 || targets != args.server_pid.len() {
        bail!("--target and --server-pid need the same number of values ({targets} and {})", args.server_pid.len());
    }
    for target in &args.target {
        Target::parse(target)?;
    }
    let workers_wanted = args.workers.unwrap_or(targets.max(2));
    if workers_wanted < targets || args.clients == 0 {
        bail!(
            "--clients must be at least 1 and --workers ({workers_wanted}) at least the number of targets ({targets})"
        );
    }
    let plan = plan_workers(args.clients, targets, workers_wanted);
    let per_worker = plan.iter().map(|p| p.1).max().unwrap_or(0);
    if per_worker * args.mode.sockets_per_client() > MAX_SOCKETS_PER_WORKER {
        bail!("{per_worker} clients per worker exceeds {MAX_SOCKETS_PER_WORKER} sockets; use more --workers");
    }
    let watches = args.server_pid.iter().map(|&pid| ProcWatch::new(pid)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut sampler = Sampler::new(watches)?;
    let before = sampler.sample();
    let before_nodes = sampler.nodes();
    eprintln!(
        "[{}] before: rss={} KiB hwm={} KiB (summed over {targets} node(s)); {} clients over {workers_wanted} workers, sources {:?}",
        args.label, before.rss_kib, before.hwm_kib, args.clients, args.sources
    );

    let overflows_before = tcp_ext_counter("ListenOverflows");
    let started = Instant::now();
    let mut commands = Vec::with_capacity(workers_wanted);
    let mut worker_node = BTreeMap::new();
    let mut first = 0;
    for (id, &(node, count)) in plan.iter().enumerate() {
        if count == 0 {
            continue;
        }
        commands.push(worker_command(&args, &args.target[node], id, first, count)?);
        worker_node.insert(id, node);
        first += count;
    }
    let mut workers = Pool::start(&args.label, "worker", commands, 1024, Idle::default())?;
    let spawned = workers.len();

    // Connect phase.
    let connect_limit = Duration::from_secs(args.connect_deadline_secs)
        + Duration::from_millis(args.connect_timeout_ms)
        + Duration::from_secs(30);
    let mut sample_tick = tokio::time::interval(Duration::from_millis(250));
    let mut log_tick = tokio::time::interval(Duration::from_secs(2));
    let connect_deadline = tokio::time::Instant::now() + connect_limit;
    while workers.tally.connected.len() < spawned {
        tokio::select! {
            event = workers.next_event() => match event {
                Some(event) => workers.tally.absorb(event),
                None => bail!("workers exited before connecting (see their errors above)"),
            },
            _ = sample_tick.tick() => {
                sampler.sample();
            }
            _ = log_tick.tick() => eprintln!("[{}] connecting: {}", args.label, workers.tally.progress_line()),
            _ = tokio::time::sleep_until(connect_deadline) => bail!("connect phase exceeded {connect_limit:?}"),
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected_at = sampler.sample();
    let connected_nodes = sampler.nodes();
    let listen_overflows =
        tcp_ext_counter("ListenOverflows").zip(overflows_before).map(|(now, before)| now.saturating_sub(before));
    let (connected, failed) = workers.tally.connected.values().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
    eprintln!(
        "[{}] connected {connected}, failed {failed} in {connect_secs:.2} s ({:.0}/s); listen overflows {}; errors {:?}{}; rss={} KiB; holding {} s",
        args.label,
        connected as f64 / connect_secs,
        listen_overflows.map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
        workers.tally.errors,
        workers.tally.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        connected_at.rss_kib,
        args.hold_secs
    );

    // Hold phase.
    let hold_end = tokio::time::Instant::now() + Duration::from_secs(args.hold_secs);
    let mut hold_tick = tokio::time::interval(Duration::from_secs(1));
    let mut log_tick = tokio::time::interval(Duration::from_secs(10));
    log_tick.tick().await;
    loop {
        tokio::select! {
            event = workers.next_event(), if spawned > workers.tally.done.len() => match event {
                Some(event) => workers.tally.absorb(event),
                None => {
                    eprintln!("[{}] every worker exited during the hold", args.label);
                    break;
                }
            },
            _ = hold_tick.tick() => {
                sampler.sample();
            }
            _ = log_tick.tick() => eprintln!("[{}] holding: {}", args.label, workers.tally.progress_line()),
            _ = tokio::time::sleep_until(hold_end) => break,
        }
    }
    let end_of_hold = sampler.sample();
    let end_nodes = sampler.nodes();
    let exited_while_held = sampler.exited;
    if exited_while_held {
        eprintln!("[{}] the server process exited while the clients were held", args.label);
    }
    let max_rss = sampler.max_rss_kib;
    let peak_rss = max_rss.max(connected_at.hwm_kib).max(end_of_hold.hwm_kib);

    // Stop: closing stdin tells each worker to close its connections and exit.
    let tally = workers.stop().await;
    if tally.done.len() < spawned {
        eprintln!("[{}] some workers did not report done within 30 s", args.label);
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after = sampler.sample_all().map(Mem::from);

    let per_client = |kib: u64| (connected > 0).then(|| kib.saturating_sub(before.rss_kib) as f64 / connected as f64);
    let (alive_at_end, pings_answered) = tally.done.values().fold((0, 0), |a, d| (a.0 + d.0, a.1 + d.1));
    let hold_secs = (end_of_hold.at - connected_at.at).as_secs_f64().max(0.001);
    let nodes: Vec<NodeResult> = (0..targets)
        .map(|node| {
            let of_node = |id: &usize| worker_node.get(id) == Some(&node);
            let (connected, failed) =
                tally.connected.iter().filter(|(id, _)| of_node(id)).fold((0, 0), |a, (_, c)| (a.0 + c.0, a.1 + c.1));
            let alive_at_end = tally.done.iter().filter(|(id, _)| of_node(id)).map(|(_, d)| d.0).sum();
            NodeResult {
                target: args.target[node].clone(),
                server_pid: args.server_pid[node],
                workers: worker_node.values().filter(|&&n| n == node).count(),
                clients: plan.iter().filter(|p| p.0 == node).map(|p| p.1).sum(),
                connected,
                failed,
                alive_at_end,
                rss_before_kib: before_nodes[node].rss_kib,
                peak_rss_kib: sampler.max_rss_node_kib[node]
                    .max(connected_nodes[node].hwm_kib)
                    .max(end_nodes[node].hwm_kib),
                rss_end_of_hold_kib: end_nodes[node].rss_kib,
            }
        })
        .collect();
    let result = IdleResult {
        scenario: "idle",
        label: args.label.clone(),
        target: args.target.join(","),
        server_pid: args.server_pid[0],
        nodes,
        mode: args.mode,
        clients: args.clients,
        workers: spawned,
        sources: args.sources.clone(),
        room: args.room.clone(),
        rooms: args.rooms,
        hold_secs: args.hold_secs,
        connected,
        failed,
        errors: tally.errors.clone(),
        first_error: tally.first_error.clone(),
        connect_secs,
        connects_per_sec: connected as f64 / connect_secs,
        alive_at_end,
        dropped: tally.dropped.clone(),
        pings_answered,
        before: before.into(),
        connected_at: connected_at.into(),
        end_of_hold: end_of_hold.into(),
        after,
        server_exited: exited_while_held,
        listen_overflows,
        max_rss_sampled_kib: max_rss,
        peak_rss_kib: peak_rss,
        peak_per_client_kib: per_client(peak_rss),
        held_per_client_kib: per_client(end_of_hold.rss_kib),
        cpu_connect_secs: connected_at.cpu_secs - before.cpu_secs,
        cpu_hold_cores: (end_of_hold.cpu_secs - connected_at.cpu_secs) / hold_secs,
    };
    let fmt_opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
    eprintln!(
        "idle server={} clients={} connected={} failed={} connect={:.2}s rate={:.0}/s alive_at_end={} \
         rss_before={}KiB peak_rss={}KiB held_rss={}KiB peak_per_client={}KiB held_per_client={}KiB \
         cpu_connect={:.2}s cpu_hold={:.3}cores rss_after={} nodes={} node_connected={}",
        result.label,
        result.clients,
        result.connected,
        result.failed,
        result.connect_secs,
        result.connects_per_sec,
        result.alive_at_end,
        before.rss_kib,
        peak_rss,
        end_of_hold.rss_kib,
        fmt_opt(result.peak_per_client_kib),
        fmt_opt(result.held_per_client_kib),
        result.cpu_connect_secs,
        result.cpu_hold_cores,
        after.map_or_else(|| "n/a".to_owned(), |a| format!("{}KiB", a.rss_kib)),
        result.nodes.len(),
        result.nodes.iter().map(|n| n.connected.to_string()).collect::<Vec<_>>().join("+"),
    );
    let json = serde_json::to_string(&result)?;
    println!("RESULT {json}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_workers_round_robin_with_even_node_shares() {
        assert_eq!(plan_workers(50, 1, 2), vec![(0, 25), (0, 25)]);
        assert_eq!(plan_workers(30_000, 2, 2), vec![(0, 15_000), (1, 15_000)]);
        // 3 workers over 2 nodes: node 0 gets two workers, each node still half the clients.
        assert_eq!(plan_workers(30_000, 2, 3), vec![(0, 7_500), (1, 15_000), (0, 7_500)]);
        assert_eq!(plan_workers(7, 2, 4), vec![(0, 2), (1, 2), (0, 2), (1, 1)]);
        assert_eq!(plan_workers(1, 1, 2), vec![(0, 1), (0, 0)]);
        let plan = plan_workers(30_001, 3, 5);
        assert_eq!(plan.iter().map(|p| p.1).sum::<usize>(), 30_001);
    }
}
