//! Worker processes: spawn them, send them commands on stdin, take in the events they print on
//! stdout ([`Pool`], for every kind of worker), and for the traffic scenarios (fanout, rooms) wait
//! for their clients to connect and gather their per-step reports ([`Traffic`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::procfs::{ProcWatch, Sample};
use crate::sio::Mode;
use crate::traffic::new_histogram;
use crate::worker::{ConnectOutcome, MAX_SOCKETS_PER_WORKER, Role, WorkerEvent};

/// Options shared by the traffic scenarios for their clients.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ClientArgs {
    /// Name of the server in the report (e.g. ioswarm, node, socketioxide).
    #[arg(long, default_value = "server")]
    pub(crate) label: String,
    /// Server URL, e.g. http://127.0.0.1:3000 (loopback only). Several, comma-separated (the
    /// nodes of a cluster): worker *i* connects all its clients to URL *i mod n*, so give at least
    /// as many `--workers` as URLs.
    #[arg(long)]
    pub(crate) target: String,
    /// Pid of the server process (its /proc entry is sampled); several, comma-separated: CPU and
    /// RSS are summed over them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) server_pid: Vec<u32>,
    #[arg(long, default_value_t = 5_000)]
    pub(crate) clients: usize,
    /// Worker processes to spread the clients over.
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// Local addresses to connect from, used in turn.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5")]
    pub(crate) sources: Vec<IpAddr>,
    #[arg(long, value_enum, default_value_t = Mode::Ws)]
    pub(crate) mode: Mode,
    /// Connect attempts in flight per worker.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connect_timeout_ms: u64,
    /// Connect phase limit; clients not started by then count as failed.
    #[arg(long, default_value_t = 120)]
    pub(crate) connect_deadline_secs: u64,
    /// Payload padding, bytes (the `p` field of each message).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload_bytes: usize,
    /// After a step, wait for deliveries at most this long...
    #[arg(long, default_value_t = 30)]
    pub(crate) drain_max_secs: u64,
    /// ...and stop waiting once none arrived for this long.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) drain_quiet_ms: u64,
    /// Also write the result JSON here.
    #[arg(long)]
    pub(crate) json_out: Option<std::path::PathBuf>,
}

impl ClientArgs {
    /// The `--target` URLs (one per cluster node).
    pub(crate) fn targets(&self) -> Vec<&str> {
        self.target.split(',').map(str::trim).filter(|t| !t.is_empty()).collect()
    }
}

/// The connect phase's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Connected {
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) connect_secs: f64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) first_error: Option<String>,
}

impl Connected {
    /// Every worker's outcome summed; the first error is the first worker's that has one.
    pub(crate) fn merge<'a>(started: Instant, outcomes: impl IntoIterator<Item = &'a ConnectOutcome>) -> Self {
        let mut out = Connected { connect_secs: started.elapsed().as_secs_f64(), ..Connected::default() };
        for o in outcomes {
            out.connected += o.ok;
            out.failed += o.failed;
            for (k, v) in &o.errors {
                *out.errors.entry(k.clone()).or_default() += v;
            }
            if out.first_error.is_none() {
                out.first_error.clone_from(&o.first_error);
            }
        }
        out
    }
}

/// One step's figures merged over every worker.
#[derive(Debug)]
pub(crate) struct Merged {
    pub(crate) received: u64,
    pub(crate) sent: u64,
    pub(crate) expected: u64,
    pub(crate) first_us: u64,
    pub(crate) last_us: u64,
    pub(crate) reordered: u64,
    pub(crate) malformed: u64,
    pub(crate) hist: Histogram<u64>,
}

/// What a coordinator keeps of its workers' events: one implementation per kind of worker.
pub(crate) trait Tally {
    /// One line of a worker's stdout.
    type Event: DeserializeOwned + Send + 'static;
    /// Takes in one event.
    fn absorb(&mut self, event: Self::Event);
    /// Workers that said they are done.
    fn done(&self) -> usize;
}

/// How [`Pool::absorb_until`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The condition holds.
    Met,
    /// Every worker closed its stdout.
    Exited,
    /// The deadline passed.
    TimedOut,
}

/// Running worker processes: commands go to their stdin, their stdout lines (one JSON event
/// each) go into `tally`.
#[derive(Debug)]
pub(crate) struct Pool<T: Tally> {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    rx: mpsc::Receiver<T::Event>,
    pub(crate) tally: T,
    /// `[label]` of the messages.
    label: String,
}

impl<T: Tally> Pool<T> {
    /// Spawns `commands` with stdin and stdout piped. A stdout line that is not an event is
    /// printed to stderr after `what:`.
    pub(crate) fn start(
        label: &str,
        what: &'static str,
        commands: Vec<Command>,
        queue: usize,
        tally: T,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<T::Event>(queue);
        let mut children = Vec::with_capacity(commands.len());
        let mut stdins = Vec::with_capacity(commands.len());
        for mut command in commands {
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning a {what}"))?;
            let stdout = child.stdout.take().context("worker stdout is piped")?;
            stdins.push(child.stdin.take().context("worker stdin is piped")?);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<T::Event>(&line) {
                        Ok(event) => {
                            if tx.send(event).await.is_err() {
                                break;
                            }
                        }
                        Err(_) => eprintln!("{what}: {line}"),
                    }
                }
            });
            children.push(child);
        }
        Ok(Self { children, stdins, rx, tally, label: label.to_owned() })
    }

    /// Worker processes started.
    pub(crate) fn len(&self) -> usize {
        self.children.len()
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(Child::id).collect()
    }

    /// The next event (`None`: every worker closed its stdout), for loops that also do other
    /// things while they wait.
    pub(crate) async fn next_event(&mut self) -> Option<T::Event> {
        self.rx.recv().await
    }

    /// Takes in events for `duration`; fails once every worker has exited.
    pub(crate) async fn pump(&mut self, duration: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + duration;
        loop {
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => self.tally.absorb(event),
                    None => bail!("[{}] every worker exited", self.label),
                },
                () = tokio::time::sleep_until(until) => return Ok(()),
            }
        }
    }

    /// Takes in events until `met` holds of the tally, every worker exited, or `deadline`;
    /// calls `log` every 5 s meanwhile (and once at the start).
    pub(crate) async fn absorb_until(
        &mut self,
        deadline: tokio::time::Instant,
        met: impl Fn(&T) -> bool,
        log: impl Fn(&T),
    ) -> Waited {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        while !met(&self.tally) {
            tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => self.tally.absorb(event),
                    None => return Waited::Exited,
                },
                _ = tick.tick() => log(&self.tally),
                () = tokio::time::sleep_until(deadline) => return Waited::TimedOut,
            }
        }
        Waited::Met
    }

    /// Writes one command line to every worker.
    pub(crate) async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        for stdin in &mut self.stdins {
            stdin.write_all(format!("{line}\n").as_bytes()).await.context("writing to a worker")?;
            stdin.flush().await?;
        }
        Ok(())
    }

    /// Closes the workers' stdin (they close their sockets and exit), takes in their last
    /// events until every one said it is done (at most 30 s) and waits for them (bounded).
    pub(crate) async fn stop(mut self) -> T {
        self.stdins.clear();
        let workers = self.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        self.absorb_until(deadline, |t| t.done() >= workers, |_| {}).await;
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        self.tally
    }
}

/// What the coordinator of fanout and rooms keeps of its workers' events.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    /// `msg` events received per worker, as of its last progress event.
    received: BTreeMap<usize, u64>,
    /// Sum of `received`, shared with a closed-loop publisher.
    received_shared: std::sync::Arc<std::sync::atomic::AtomicU64>,
    connected: BTreeMap<usize, ConnectOutcome>,
    steps: Vec<WorkerEvent>,
    done: usize,
    /// Connections the server dropped while held, by reason.
    pub(crate) dropped: BTreeMap<String, u64>,
}

impl Tally for Traffic {
    type Event = WorkerEvent;

    fn absorb(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Progress { worker, received, .. } => {
                self.received.insert(worker, received);
                self.received_shared.store(self.received.values().sum(), std::sync::atomic::Ordering::Relaxed);
            }
            WorkerEvent::Connected { worker, outcome } => {
                self.connected.insert(worker, outcome);
            }
            WorkerEvent::Step { .. } => self.steps.push(event),
            WorkerEvent::Done { dropped, .. } => {
                self.done += 1;
                for (k, v) in dropped {
                    *self.dropped.entry(k).or_default() += v;
                }
            }
        }
    }

    fn done(&self) -> usize {
        self.done
    }
}

impl Pool<Traffic> {
    /// Spawns the workers: `args.clients` clients with `role`, in `rooms` rooms `ROOM-i` (one
    /// room: `ROOM` itself).
    pub(crate) fn spawn(
        args: &ClientArgs,
        role: Role,
        room: &str,
        rooms: usize,
        max_hold_secs: u64,
    ) -> anyhow::Result<Self> {
        if args.workers == 0 || args.clients == 0 {
            bail!("--workers and --clients must be at least 1");
        }
        let targets = args.targets();
        if targets.is_empty() || targets.len() > args.workers {
            bail!("--target names {} servers: give at least as many --workers ({})", targets.len(), args.workers);
        }
        for target in &targets {
            crate::sio::Target::parse(target)?;
        }
        let per_worker = args.clients.div_ceil(args.workers);
        if per_worker * args.mode.sockets_per_client() > MAX_SOCKETS_PER_WORKER {
            bail!("{per_worker} clients per worker exceeds {MAX_SOCKETS_PER_WORKER} sockets; use more --workers");
        }
        let exe = std::env::current_exe().context("locating ioswarm-bench")?;
        let sources: Vec<String> = args.sources.iter().map(ToString::to_string).collect();
        let mut commands = Vec::new();
        let mut first = 0;
        for id in 0..args.workers {
            let count = per_worker.min(args.clients - first);
            if count == 0 {
                break;
            }
            let mut command = Command::new(&exe);
            command
                .arg("worker")
                .args(["--worker-id", &id.to_string()])
                .args(["--target", targets[id % targets.len()]])
                .args(["--clients", &count.to_string()])
                .args(["--total-clients", &args.clients.to_string()])
                .args(["--first-index", &first.to_string()])
                .args(["--sources", &sources.join(",")])
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(["--mode", args.mode.as_str()])
                .args(["--room", room])
                .args(["--rooms", &rooms.to_string()])
                .args(["--role", role.as_str()])
                .args(["--progress-ms", "100"])
                .args(["--connect-timeout-ms", &args.connect_timeout_ms.to_string()])
                .args(["--connect-deadline-secs", &args.connect_deadline_secs.to_string()])
                .args(["--max-hold-secs", &max_hold_secs.to_string()]);
            commands.push(command);
            first += count;
        }
        Self::start(&args.label, "worker", commands, 1024, Traffic::default())
    }

    /// `msg` events received so far over every worker (as of their last progress event).
    pub(crate) fn received(&self) -> u64 {
        self.tally.received.values().sum()
    }

    /// The same, shared with a closed-loop publisher.
    pub(crate) fn received_shared(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.tally.received_shared.clone()
    }

    /// Waits until every worker tried all its clients.
    pub(crate) async fn wait_connected(&mut self, args: &ClientArgs) -> anyhow::Result<Connected> {
        let started = Instant::now();
        let limit = Duration::from_secs(args.connect_deadline_secs)
            + Duration::from_millis(args.connect_timeout_ms)
            + Duration::from_secs(30);
        let deadline = tokio::time::Instant::now() + limit;
        let (label, workers) = (self.label.clone(), self.len());
        let waited = self
            .absorb_until(
                deadline,
                |t| t.connected.len() >= workers,
                |t| eprintln!("[{label}] connecting: {} of {workers} workers done", t.connected.len()),
            )
            .await;
        match waited {
            Waited::Met => {}
            Waited::Exited => bail!("[{label}] workers exited before connecting (see their errors above)"),
            Waited::TimedOut => bail!("[{label}] connect phase exceeded {limit:?}"),
        }
        Ok(Connected::merge(started, self.tally.connected.values()))
    }

    /// After a step: waits until `expected` deliveries arrived since `received_before`, or none
    /// arrived for `quiet`, or `max` passed. Returns the seconds waited.
    pub(crate) async fn drain(
        &mut self,
        received_before: u64,
        expected: u64,
        quiet: Duration,
        max: Duration,
    ) -> anyhow::Result<f64> {
        let started = tokio::time::Instant::now();
        let mut last = self.received();
        let mut last_change = started;
        while started.elapsed() < max {
            self.pump(Duration::from_millis(200)).await?;
            let now = self.received();
            if now.saturating_sub(received_before) >= expected {
                // One more round: progress events lag by up to 250 ms.
                self.pump(Duration::from_millis(300)).await?;
                break;
            }
            if now != last {
                last = now;
                last_change = tokio::time::Instant::now();
            } else if last_change.elapsed() >= quiet {
                break;
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }

    /// Asks every worker for its figures of `step` and merges them.
    pub(crate) async fn report(&mut self, step: u32) -> anyhow::Result<Merged> {
        self.tally.steps.clear();
        self.command(&format!("report {step}")).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let live = self.len() - self.tally.done;
        if self.absorb_until(deadline, |t| t.steps.len() >= live, |_| {}).await == Waited::TimedOut {
            bail!("[{}] workers did not report step {step} in 20 s", self.label);
        }
        let mut merged = Merged {
            received: 0,
            sent: 0,
            expected: 0,
            first_us: u64::MAX,
            last_us: 0,
            reordered: 0,
            malformed: 0,
            hist: new_histogram(),
        };
        for event in self.tally.steps.drain(..) {
            if let WorkerEvent::Step { report, malformed, .. } = event {
                merged.received += report.received;
                merged.sent += report.sent;
                merged.expected += report.expected;
                if report.first_us > 0 {
                    merged.first_us = merged.first_us.min(report.first_us);
                }
                merged.last_us = merged.last_us.max(report.last_us);
                merged.reordered += report.reordered;
                merged.malformed += malformed;
                for (value, count) in report.hist {
                    merged.hist.saturating_record_n(value, count);
                }
            }
        }
        if merged.first_us == u64::MAX {
            merged.first_us = 0;
        }
        Ok(merged)
    }
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(crate) fn of(hist: &Histogram<u64>) -> Option<Self> {
        (!hist.is_empty()).then(|| {
            let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            Self { p50_ms: ms(0.5), p99_ms: ms(0.99), p999_ms: ms(0.999), max_ms: hist.max() as f64 / 1000.0 }
        })
    }
}

/// One step's result (the rows of the fanout and rooms tables).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepResult {
    pub(crate) step: u32,
    /// `10/s`, `flat`, `1/s per client`…
    pub(crate) name: String,
    /// Messages per second asked of the publisher (per client for rooms); `None`: flat out.
    pub(crate) target_rate: Option<f64>,
    pub(crate) publish_secs: f64,
    /// Messages published (fanout) or sent by the chat clients (rooms).
    pub(crate) sent: u64,
    pub(crate) publish_rate: f64,
    /// Deliveries those messages should make.
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    /// Expected − delivered: lost, or still not delivered when the drain ended.
    pub(crate) lost: u64,
    pub(crate) reordered: u64,
    /// Deliveries / (last receive − step start).
    pub(crate) delivered_per_sec: f64,
    pub(crate) latency: Option<Latency>,
    pub(crate) drain_secs: f64,
    /// Server CPU from step start to drain end.
    pub(crate) server_cpu_secs: f64,
    pub(crate) server_cpu_cores: f64,
    pub(crate) delivered_per_core_sec: Option<f64>,
    pub(crate) server_rss_kib: u64,
}

/// Builds a [`StepResult`] from the publishing figures, the merged worker figures and two samples.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_result(
    step: u32,
    name: String,
    target_rate: Option<f64>,
    sent: u64,
    start_us: u64,
    end_us: u64,
    expected: u64,
    merged: &Merged,
    drain_secs: f64,
    before: Sample,
    after: Sample,
) -> StepResult {
    let publish_secs = (end_us.saturating_sub(start_us) as f64 / 1e6).max(1e-6);
    let span = (merged.last_us.saturating_sub(start_us) as f64 / 1e6).max(1e-6);
    let cpu = (after.cpu_secs - before.cpu_secs).max(0.0);
    let wall = (after.at - before.at).as_secs_f64().max(1e-6);
    StepResult {
        step,
        name,
        target_rate,
        publish_secs,
        sent,
        publish_rate: sent as f64 / publish_secs,
        expected,
        delivered: merged.received,
        lost: expected.saturating_sub(merged.received),
        reordered: merged.reordered,
        delivered_per_sec: if merged.received > 0 { merged.received as f64 / span } else { 0.0 },
        latency: Latency::of(&merged.hist),
        drain_secs,
        server_cpu_secs: cpu,
        server_cpu_cores: cpu / wall,
        delivered_per_core_sec: (cpu > 0.0).then(|| merged.received as f64 / cpu),
        server_rss_kib: after.rss_kib,
    }
}

/// Samples the server (the sum over its processes); a failed reading returns the last good one.
#[derive(Debug)]
pub(crate) struct Sampler {
    watches: Vec<ProcWatch>,
    last: Sample,
    pub(crate) exited: bool,
}

impl Sampler {
    pub(crate) fn new(pids: &[u32]) -> anyhow::Result<Self> {
        let watches = pids.iter().map(|&pid| ProcWatch::new(pid)).collect::<anyhow::Result<Vec<_>>>()?;
        if watches.is_empty() {
            bail!("no server pid to sample");
        }
        let last = Sample { rss_kib: 0, hwm_kib: 0, cpu_secs: 0.0, at: Instant::now() };
        let mut sampler = Self { watches, last, exited: false };
        sampler.sample();
        if sampler.exited {
            bail!("a server process exited before the first sample");
        }
        Ok(sampler)
    }

    pub(crate) fn sample(&mut self) -> Sample {
        let mut sum: Option<Sample> = None;
        for watch in &self.watches {
            match watch.sample() {
                Ok(s) => {
                    sum = Some(match sum {
                        None => s,
                        Some(t) => Sample {
                            rss_kib: t.rss_kib + s.rss_kib,
                            hwm_kib: t.hwm_kib + s.hwm_kib,
                            cpu_secs: t.cpu_secs + s.cpu_secs,
                            at: t.at,
                        },
                    });
                }
                Err(_) => {
                    self.exited = true;
                    return self.last;
                }
            }
        }
        if let Some(s) = sum {
            self.last = s;
        }
        self.last
    }
}

/// Prints one step line to stderr.
pub(crate) fn print_step(label: &str, r: &StepResult) {
    let lat = r.latency.map_or_else(
        || "no deliveries".to_owned(),
        |l| format!("p50={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.1}ms", l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms),
    );
    eprintln!(
        "[{label}] step {} ({}): sent={} ({:.0}/s) delivered={}/{} lost={} rate={:.0}/s {lat} cpu={:.2}cores per_core_s={} drain={:.1}s rss={}KiB",
        r.step,
        r.name,
        r.sent,
        r.publish_rate,
        r.delivered,
        r.expected,
        r.lost,
        r.delivered_per_sec,
        r.server_cpu_cores,
        r.delivered_per_core_sec.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}")),
        r.drain_secs,
        r.server_rss_kib,
    );
}
