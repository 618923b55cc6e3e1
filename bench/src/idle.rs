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
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::procfs::{ProcWatch, Sample, tcp_ext_counter};
use crate::sio::{Mode, Target};
use crate::worker::{MAX_SOCKETS_PER_WORKER, WorkerEvent};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct IdleArgs {
    /// Name of the server in the report (e.g. ioswarm, node).
    #[arg(long, default_value = "server")]
    label: String,
    /// Server URL, e.g. http://127.0.0.1:3000 (loopback only).
    #[arg(long)]
    target: String,
    /// Pid of the server process (its /proc entry is sampled).
    #[arg(long)]
    server_pid: u32,
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Worker processes to spread the clients over.
    #[arg(long, default_value_t = 2)]
    workers: usize,
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

/// Memory figure of one phase, KiB.
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

/// The result of one idle run (also the JSON schema of bench/results/idle-*.json runs).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleResult {
    scenario: &'static str,
    label: String,
    target: String,
    server_pid: u32,
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

/// Samples the server, remembering the last good reading and the largest RSS seen; a failed
/// reading (the server exited) returns the last good one and sets `exited`.
#[derive(Debug)]
struct Sampler {
    watch: ProcWatch,
    last: Sample,
    max_rss_kib: u64,
    exited: bool,
}

impl Sampler {
    fn new(watch: ProcWatch) -> anyhow::Result<Self> {
        let last = watch.sample()?;
        Ok(Self { watch, last, max_rss_kib: last.rss_kib, exited: false })
    }

    fn sample(&mut self) -> Sample {
        match self.watch.sample() {
            Ok(s) => {
                self.last = s;
                self.max_rss_kib = self.max_rss_kib.max(s.rss_kib);
            }
            Err(_) => self.exited = true,
        }
        self.last
    }
}

struct Worker {
    child: Child,
}

fn spawn_worker(args: &IdleArgs, id: usize, first: usize, count: usize) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe().context("locating ioswarm-bench")?;
    let sources: Vec<String> = args.sources.iter().map(ToString::to_string).collect();
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .args(["--worker-id", &id.to_string()])
        .args(["--target", &args.target])
        .args(["--clients", &count.to_string()])
        .args(["--first-index", &first.to_string()])
        .args(["--sources", &sources.join(",")])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--mode", args.mode.as_str()])
        .args(["--rooms", &args.rooms.to_string()])
        .args(["--connect-timeout-ms", &args.connect_timeout_ms.to_string()])
        .args(["--connect-deadline-secs", &args.connect_deadline_secs.to_string()])
        // A safety net: the coordinator closes stdin well before this.
        .args(["--max-hold-secs", &(args.hold_secs + 120).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(room) = &args.room {
        cmd.args(["--room", room]);
    }
    let child = cmd.spawn().context("spawning a worker")?;
    Ok(Worker { child })
}

#[derive(Debug, Default)]
struct Tally {
    connected: BTreeMap<usize, (u64, u64)>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
    done: BTreeMap<usize, (u64, u64)>,
    dropped: BTreeMap<String, u64>,
    progress: BTreeMap<usize, (u64, u64, u64)>,
}

impl Tally {
    fn absorb(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Progress { worker, ok, failed, alive, .. } => {
                self.progress.insert(worker, (ok, failed, alive));
            }
            WorkerEvent::Connected { worker, ok, failed, errors, first_error, .. } => {
                self.connected.insert(worker, (ok, failed));
                for (k, v) in errors {
                    *self.errors.entry(k).or_default() += v;
                }
                if self.first_error.is_none() {
                    self.first_error = first_error;
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

    fn progress_line(&self) -> String {
        let (ok, failed, alive) = self.progress.values().fold((0, 0, 0), |a, p| (a.0 + p.0, a.1 + p.1, a.2 + p.2));
        format!("ok={ok} failed={failed} alive={alive}")
    }
}

pub(crate) fn run(args: IdleArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(run_async(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run_async(args: IdleArgs) -> anyhow::Result<()> {
    Target::parse(&args.target)?;
    if args.workers == 0 || args.clients == 0 {
        bail!("--workers and --clients must be at least 1");
    }
    let per_worker = args.clients.div_ceil(args.workers);
    if per_worker * args.mode.sockets_per_client() > MAX_SOCKETS_PER_WORKER {
        bail!("{per_worker} clients per worker exceeds {MAX_SOCKETS_PER_WORKER} sockets; use more --workers");
    }
    let mut sampler = Sampler::new(ProcWatch::new(args.server_pid)?)?;
    let before = sampler.sample();
    eprintln!(
        "[{}] before: rss={} KiB hwm={} KiB; {} clients over {} workers, sources {:?}",
        args.label, before.rss_kib, before.hwm_kib, args.clients, args.workers, args.sources
    );

    let overflows_before = tcp_ext_counter("ListenOverflows");
    let (tx, mut rx) = mpsc::channel::<WorkerEvent>(1024);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(args.workers);
    let mut first = 0;
    for id in 0..args.workers {
        let count = per_worker.min(args.clients - first);
        if count == 0 {
            break;
        }
        let mut worker = spawn_worker(&args, id, first, count)?;
        first += count;
        let stdout = worker.child.stdout.take().context("worker stdout is piped")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerEvent>(&line) {
                    Ok(event) => {
                        if tx.send(event).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("worker: {line}"),
                }
            }
        });
        workers.push(worker);
    }
    drop(tx);
    let spawned = workers.len();
    let mut tally = Tally::default();

    // Connect phase.
    let connect_limit = Duration::from_secs(args.connect_deadline_secs)
        + Duration::from_millis(args.connect_timeout_ms)
        + Duration::from_secs(30);
    let mut sample_tick = tokio::time::interval(Duration::from_millis(250));
    let mut log_tick = tokio::time::interval(Duration::from_secs(2));
    let connect_deadline = tokio::time::Instant::now() + connect_limit;
    while tally.connected.len() < spawned {
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => tally.absorb(event),
                None => bail!("workers exited before connecting (see their errors above)"),
            },
            _ = sample_tick.tick() => {
                sampler.sample();
            }
            _ = log_tick.tick() => eprintln!("[{}] connecting: {}", args.label, tally.progress_line()),
            _ = tokio::time::sleep_until(connect_deadline) => bail!("connect phase exceeded {connect_limit:?}"),
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected_at = sampler.sample();
    let listen_overflows =
        tcp_ext_counter("ListenOverflows").zip(overflows_before).map(|(now, before)| now.saturating_sub(before));
    let (connected, failed) = tally.connected.values().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
    eprintln!(
        "[{}] connected {connected}, failed {failed} in {connect_secs:.2} s ({:.0}/s); listen overflows {}; errors {:?}{}; rss={} KiB; holding {} s",
        args.label,
        connected as f64 / connect_secs,
        listen_overflows.map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
        tally.errors,
        tally.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
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
            event = rx.recv(), if spawned > tally.done.len() => match event {
                Some(event) => tally.absorb(event),
                None => {
                    eprintln!("[{}] every worker exited during the hold", args.label);
                    break;
                }
            },
            _ = hold_tick.tick() => {
                sampler.sample();
            }
            _ = log_tick.tick() => eprintln!("[{}] holding: {}", args.label, tally.progress_line()),
            _ = tokio::time::sleep_until(hold_end) => break,
        }
    }
    let end_of_hold = sampler.sample();
    let exited_while_held = sampler.exited;
    if exited_while_held {
        eprintln!("[{}] the server process exited while the clients were held", args.label);
    }
    let max_rss = sampler.max_rss_kib;
    let peak_rss = max_rss.max(connected_at.hwm_kib).max(end_of_hold.hwm_kib);

    // Stop: closing stdin tells each worker to close its connections and exit.
    for worker in &mut workers {
        drop(worker.child.stdin.take());
    }
    let stop_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tally.done.len() < spawned {
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => tally.absorb(event),
                None => break,
            },
            _ = tokio::time::sleep_until(stop_deadline) => {
                eprintln!("[{}] some workers did not report done in 30 s", args.label);
                break;
            }
        }
    }
    for worker in &mut workers {
        if tokio::time::timeout(Duration::from_secs(5), worker.child.wait()).await.is_err() {
            let _ = worker.child.kill().await;
        }
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after = sampler.watch.sample().ok().map(Mem::from);

    let per_client = |kib: u64| (connected > 0).then(|| kib.saturating_sub(before.rss_kib) as f64 / connected as f64);
    let (alive_at_end, pings_answered) = tally.done.values().fold((0, 0), |a, d| (a.0 + d.0, a.1 + d.1));
    let hold_secs = (end_of_hold.at - connected_at.at).as_secs_f64().max(0.001);
    let result = IdleResult {
        scenario: "idle",
        label: args.label.clone(),
        target: args.target.clone(),
        server_pid: args.server_pid,
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
         cpu_connect={:.2}s cpu_hold={:.3}cores rss_after={}",
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
    );
    let json = serde_json::to_string(&result)?;
    println!("RESULT {json}");
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
