//! `ioswarm-bench scale-worker`: one load process of the `scale` scenario. Its clients connect to
//! their home node, join one room each, and record every `msg` they receive; when a node drops
//! them they reconnect to another node the way socket.io-client does behind a load balancer
//! (randomised exponential backoff, 1 s ± 50 % first, then doubling up to 5 s; each attempt goes to
//! a node other than the one that dropped them).
//!
//! Every `msg` carries `e` (the emitter), `s` (that emitter's sequence number in the client's
//! room) and `k` (the step): a client knows which sequence number comes next from each emitter,
//! so a gap is a lost delivery and a number at or below the last one is a duplicate or reorder.
//! A client that was never dropped "stayed"; one that was dropped at least once "moved" (what it
//! missed while away is expected: Socket.IO does not replay).
//!
//! Events on stdout, one JSON [`ScaleEvent`] per line: `progress` every `--progress-ms` (clients
//! connected per node, received, drops, reconnects), `connected` once every initial connect was
//! tried, `report` in answer to the command `report F1,F2,…` (the number of messages each
//! emitter published: the worker adds what never arrived at the end of each stream to the
//! losses), `done` when it exits. The worker exits when stdin closes, on a line `stop`, or after
//! `--max-hold-secs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fastwebsockets::Frame;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sio::{Client, ClientOptions, HoldEnd, Mode, Target, on_held_frame};
use crate::traffic::{new_histogram, now_us, number_after};
use crate::worker::{ConnectOutcome, ConnectStats, MAX_SOCKETS_PER_WORKER, emit, stdin_commands};

/// Largest reconnect time the histogram holds (ms).
const MAX_RECONNECT_MS: u64 = 3_600_000;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ScaleWorkerArgs {
    #[arg(long, default_value_t = 0)]
    pub(crate) worker_id: usize,
    /// Every node's URL (comma-separated); reconnects go to these.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) targets: Vec<String>,
    /// Index in `--targets` of the node this worker's clients connect to first.
    #[arg(long, default_value_t = 0)]
    pub(crate) home: usize,
    #[arg(long)]
    pub(crate) clients: usize,
    /// Global index of the first client (picks its room and source address).
    #[arg(long, default_value_t = 0)]
    pub(crate) first_index: usize,
    /// Client `i` joins room `PREFIX-(i mod rooms)`.
    #[arg(long)]
    pub(crate) rooms: usize,
    #[arg(long, default_value = "sc")]
    pub(crate) room_prefix: String,
    /// Emitters publishing (the size of each client's sequence table).
    #[arg(long)]
    pub(crate) emitters: usize,
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub(crate) sources: Vec<IpAddr>,
    /// Initial connect attempts in flight at once (reconnects are not limited, like browsers).
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connect_timeout_ms: u64,
    #[arg(long, default_value_t = 300)]
    pub(crate) connect_deadline_secs: u64,
    #[arg(long, default_value_t = 900)]
    pub(crate) max_hold_secs: u64,
    /// socket.io-client's `reconnectionDelay`, `reconnectionDelayMax` and `randomizationFactor`.
    #[arg(long, default_value_t = 1000)]
    pub(crate) reconnect_delay_ms: u64,
    #[arg(long, default_value_t = 5000)]
    pub(crate) reconnect_delay_max_ms: u64,
    #[arg(long, default_value_t = 0.5)]
    pub(crate) randomization: f64,
    #[arg(long, default_value_t = 100)]
    pub(crate) progress_ms: u64,
}

/// One step's deliveries (merged by the coordinator).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StepFigures {
    pub(crate) step: u32,
    pub(crate) received: u64,
    /// Received by the clients connected to each node at the time.
    pub(crate) per_node: Vec<u64>,
    pub(crate) first_us: u64,
    pub(crate) last_us: u64,
    /// Latency histogram (µs), (value, count) pairs.
    pub(crate) hist: Vec<(u64, u64)>,
    /// The same, by the node the receiving client was connected to.
    pub(crate) per_node_hist: Vec<Vec<(u64, u64)>>,
}

/// What a worker answers to `report`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ScaleReport {
    pub(crate) steps: Vec<StepFigures>,
    /// Clients that connected at the start.
    pub(crate) clients: u64,
    /// Of those, never dropped / dropped at least once.
    pub(crate) stayed: u64,
    pub(crate) moved: u64,
    /// Clients not connected when the report was made.
    pub(crate) disconnected: u64,
    /// Deliveries missing in each emitter's stream, for clients that stayed / moved.
    pub(crate) lost_stayed: Vec<u64>,
    pub(crate) lost_moved: Vec<u64>,
    /// Of `lost_stayed`, the gaps: a later message of the stream arrived, so these were skipped,
    /// not late. The rest never arrived before the report (lost, or still queued somewhere).
    pub(crate) gaps_stayed: Vec<u64>,
    /// Gaps of clients that stayed, by the node they were connected to when the gap showed.
    pub(crate) gaps_stayed_by_node: Vec<u64>,
    /// `msg` packets that did not parse.
    pub(crate) malformed: u64,
    /// Clients that stayed and missed at least one delivery (any emitter).
    pub(crate) stayed_with_loss: u64,
    /// Deliveries at or below a stream's last sequence number (duplicates or reordering).
    pub(crate) reordered: u64,
    pub(crate) drops: u64,
    pub(crate) drop_reasons: BTreeMap<String, u64>,
    pub(crate) reconnects: u64,
    /// Reconnect attempts that failed (each followed by a backoff).
    pub(crate) reconnect_failures: u64,
    /// Drop → connected and joined again, ms, (value, count) pairs.
    pub(crate) reconnect_hist: Vec<(u64, u64)>,
    /// First drop and last successful reconnect, µs since the epoch (0: none).
    pub(crate) first_drop_us: u64,
    pub(crate) last_reconnect_us: u64,
}

/// What a scale worker reports, one JSON object per stdout line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ScaleEvent {
    Progress {
        worker: usize,
        /// Clients connected to each node now.
        connected: Vec<u64>,
        received: u64,
        drops: u64,
        reconnects: u64,
        last_reconnect_us: u64,
    },
    Connected {
        worker: usize,
        #[serde(flatten)]
        outcome: ConnectOutcome,
    },
    Report {
        worker: usize,
        report: Box<ScaleReport>,
    },
    Done {
        worker: usize,
    },
}

/// One client's streams.
#[derive(Debug, Clone)]
struct ClientState {
    room: usize,
    /// Next expected sequence number from each emitter.
    next: Vec<u64>,
    /// Gaps seen in each emitter's stream, and the node each showed on.
    lost: Vec<u64>,
    lost_on: Vec<u64>,
    connected: bool,
    started: bool,
    moved: bool,
}

/// One step's counters.
#[derive(Debug)]
struct StepStats {
    received: u64,
    per_node: Vec<u64>,
    first_us: u64,
    last_us: u64,
    hist: Histogram<u64>,
    per_node_hist: Vec<Histogram<u64>>,
}

/// A histogram as (value, count) pairs.
fn pairs(hist: &Histogram<u64>) -> Vec<(u64, u64)> {
    hist.iter_recorded().map(|v| (v.value_iterated_to(), v.count_since_last_iteration())).collect()
}

#[derive(Debug)]
struct Shared {
    nodes: usize,
    rooms: usize,
    connected: Vec<AtomicU64>,
    connects: ConnectStats,
    received: AtomicU64,
    drops: AtomicU64,
    reconnects: AtomicU64,
    reconnect_failures: AtomicU64,
    first_drop_us: AtomicU64,
    last_reconnect_us: AtomicU64,
    reordered: AtomicU64,
    malformed: AtomicU64,
    drop_reasons: Mutex<BTreeMap<String, u64>>,
    clients: Mutex<Vec<ClientState>>,
    steps: Mutex<BTreeMap<u32, StepStats>>,
    reconnect_hist: Mutex<Histogram<u64>>,
}

impl Shared {
    /// The state of `nodes` targets, `rooms` rooms and `emitters` emitters, with one client per
    /// room in `rooms_of` (none connected yet).
    fn new(nodes: usize, rooms: usize, emitters: usize, rooms_of: impl Iterator<Item = usize>) -> Self {
        let client = |room| ClientState {
            room,
            next: vec![0; emitters],
            lost: vec![0; emitters],
            lost_on: vec![0; nodes],
            connected: false,
            started: false,
            moved: false,
        };
        Shared {
            nodes,
            rooms,
            connected: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            connects: ConnectStats::default(),
            received: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            reconnect_failures: AtomicU64::new(0),
            first_drop_us: AtomicU64::new(u64::MAX),
            last_reconnect_us: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            drop_reasons: Mutex::default(),
            clients: Mutex::new(rooms_of.map(client).collect()),
            steps: Mutex::default(),
            reconnect_hist: Mutex::new(
                Histogram::new_with_bounds(1, MAX_RECONNECT_MS, 3).unwrap_or_else(|_| unreachable!("valid bounds")),
            ),
        }
    }

    /// Client `local` is now connected to `node` (`up`) or no longer; `dropped`: by the server or
    /// the network (it has moved).
    fn set_connected(&self, local: usize, node: usize, up: bool, dropped: bool) {
        if up {
            self.connected[node].fetch_add(1, Ordering::Relaxed);
        } else {
            self.connected[node].fetch_sub(1, Ordering::Relaxed);
        }
        if let Ok(mut clients) = self.clients.lock() {
            let c = &mut clients[local];
            c.connected = up;
            c.started = true;
            c.moved |= dropped;
        }
    }

    /// Records one `msg` received by client `local` while connected to `node`.
    fn received(&self, local: usize, node: usize, msg: ScaleMsg) {
        let now = now_us();
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut steps) = self.steps.lock() {
            let s = steps.entry(msg.step).or_insert_with(|| StepStats {
                received: 0,
                per_node: vec![0; self.nodes],
                first_us: 0,
                last_us: 0,
                hist: new_histogram(),
                per_node_hist: (0..self.nodes).map(|_| new_histogram()).collect(),
            });
            s.received += 1;
            s.per_node[node] += 1;
            if s.first_us == 0 {
                s.first_us = now;
            }
            s.last_us = s.last_us.max(now);
            let latency = now.saturating_sub(msg.sent_us).max(1);
            s.hist.saturating_record(latency);
            s.per_node_hist[node].saturating_record(latency);
        }
        if let Ok(mut clients) = self.clients.lock() {
            let c = &mut clients[local];
            let Some(next) = c.next.get_mut(msg.emitter) else { return };
            if msg.seq >= *next {
                let gap = msg.seq - *next;
                *next = msg.seq + 1;
                c.lost[msg.emitter] += gap;
                c.lost_on[node] += gap;
            } else {
                self.reordered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The report, with what each stream still lacks at its end (`finals[e]` messages published
    /// by emitter `e`, round-robin over the rooms) added to the losses.
    fn report(&self, finals: &[u64]) -> ScaleReport {
        let emitters = finals.len();
        let mut out = ScaleReport {
            lost_stayed: vec![0; emitters],
            lost_moved: vec![0; emitters],
            gaps_stayed: vec![0; emitters],
            gaps_stayed_by_node: vec![0; self.nodes],
            malformed: self.malformed.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            reconnect_failures: self.reconnect_failures.load(Ordering::Relaxed),
            first_drop_us: self.first_drop_us.load(Ordering::Relaxed),
            last_reconnect_us: self.last_reconnect_us.load(Ordering::Relaxed),
            ..ScaleReport::default()
        };
        if out.first_drop_us == u64::MAX {
            out.first_drop_us = 0;
        }
        if let Ok(clients) = self.clients.lock() {
            for c in clients.iter().filter(|c| c.started) {
                out.clients += 1;
                if !c.connected {
                    out.disconnected += 1;
                }
                let mut lost_any = 0;
                for (e, &published) in finals.iter().enumerate() {
                    let in_room =
                        published / self.rooms as u64 + u64::from((c.room as u64) < published % self.rooms as u64);
                    let next = c.next.get(e).copied().unwrap_or(0);
                    let gaps = c.lost.get(e).copied().unwrap_or(0);
                    let lost = gaps + in_room.saturating_sub(next);
                    lost_any += lost;
                    if c.moved {
                        out.lost_moved[e] += lost;
                    } else {
                        out.lost_stayed[e] += lost;
                        out.gaps_stayed[e] += gaps;
                    }
                }
                if !c.moved {
                    for (t, v) in out.gaps_stayed_by_node.iter_mut().zip(&c.lost_on) {
                        *t += v;
                    }
                }
                if c.moved {
                    out.moved += 1;
                } else {
                    out.stayed += 1;
                    out.stayed_with_loss += u64::from(lost_any > 0);
                }
            }
        }
        if let Ok(steps) = self.steps.lock() {
            out.steps = steps
                .iter()
                .map(|(&step, s)| StepFigures {
                    step,
                    received: s.received,
                    per_node: s.per_node.clone(),
                    first_us: s.first_us,
                    last_us: s.last_us,
                    hist: pairs(&s.hist),
                    per_node_hist: s.per_node_hist.iter().map(pairs).collect(),
                })
                .collect();
        }
        if let Ok(hist) = self.reconnect_hist.lock() {
            out.reconnect_hist = pairs(&hist);
        }
        if let Ok(reasons) = self.drop_reasons.lock() {
            out.drop_reasons = reasons.clone();
        }
        out
    }
}

/// What a `msg` of the scale scenario carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScaleMsg {
    pub(crate) step: u32,
    pub(crate) emitter: usize,
    pub(crate) seq: u64,
    pub(crate) sent_us: u64,
}

/// Parses `42["msg",{"k":STEP,"e":EMITTER,"s":SEQ,"t":SENT_US,…}]` (keys in any order).
pub(crate) fn parse_scale_msg(packet: &[u8]) -> Option<ScaleMsg> {
    let body = packet.strip_prefix(b"42[\"msg\",")?;
    Some(ScaleMsg {
        step: u32::try_from(number_after(body, b"\"k\":")?).ok()?,
        emitter: usize::try_from(number_after(body, b"\"e\":")?).ok()?,
        seq: number_after(body, b"\"s\":")?,
        sent_us: number_after(body, b"\"t\":")?,
    })
}

/// A well-mixed 64-bit hash (splitmix64): the backoff jitter and the node a reconnect picks,
/// reproducible per client without a random-number crate.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// socket.io-client's backoff (`engine.io-client`'s `Backoff`): `base × 2^attempt` capped at
/// `max`, moved by up to ± `jitter` of itself. `roll` is a uniform 64-bit number.
pub(crate) fn backoff(base_ms: u64, max_ms: u64, jitter: f64, attempt: u32, roll: u64) -> Duration {
    let ms = (base_ms as f64 * 2f64.powi(attempt.min(30) as i32)).min(max_ms as f64);
    let unit = (roll >> 11) as f64 / (1u64 << 53) as f64;
    let deviation = (unit * jitter * ms).floor();
    let ms = if (roll & 1) == 0 { ms - deviation } else { ms + deviation };
    Duration::from_millis(ms.clamp(0.0, max_ms as f64) as u64)
}

/// The node attempt `attempt` of a client dropped by `from` goes to: never `from` (a load
/// balancer's health check has taken it out), starting at a per-client random one.
pub(crate) fn reconnect_node(nodes: usize, from: usize, seed: u64, attempt: u32) -> usize {
    if nodes <= 1 {
        return 0;
    }
    let k = (seed as usize).wrapping_add(attempt as usize) % (nodes - 1);
    (from + 1 + k) % nodes
}

/// Static settings every client task reads.
#[derive(Debug)]
struct Plan {
    targets: Vec<Target>,
    sources: Vec<IpAddr>,
    rooms: usize,
    room_prefix: String,
    connect_timeout: Duration,
    delay_ms: u64,
    delay_max_ms: u64,
    randomization: f64,
}

impl Plan {
    fn options(&self, index: usize) -> ClientOptions {
        ClientOptions { mode: Mode::Ws, room: Some(format!("{}-{}", self.room_prefix, index % self.rooms)) }
    }
}

pub(crate) fn run(args: ScaleWorkerArgs) -> anyhow::Result<()> {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let budget = (nofile as usize).saturating_sub(64).min(MAX_SOCKETS_PER_WORKER);
    if args.clients > budget {
        bail!(
            "scale worker {} would hold {} sockets but may hold {budget}; use more workers",
            args.worker_id,
            args.clients
        );
    }
    if args.targets.is_empty() || args.home >= args.targets.len() {
        bail!("--home must name one of the --targets");
    }
    if args.sources.is_empty() || args.concurrency == 0 || args.rooms == 0 || args.emitters == 0 {
        bail!("--sources, --concurrency, --rooms and --emitters must not be empty or zero");
    }
    crate::block_on(run_async(args))
}

/// The command `report F1,F2,…`: how many messages each emitter published.
fn parse_report(line: &str) -> Option<Vec<u64>> {
    line.trim().strip_prefix("report ")?.split(',').map(|n| n.trim().parse().ok()).collect()
}

async fn run_async(args: ScaleWorkerArgs) -> anyhow::Result<()> {
    let plan = Arc::new(Plan {
        targets: args.targets.iter().map(|t| Target::parse(t)).collect::<anyhow::Result<Vec<_>>>()?,
        sources: args.sources.clone(),
        rooms: args.rooms,
        room_prefix: args.room_prefix.clone(),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        delay_ms: args.reconnect_delay_ms,
        delay_max_ms: args.reconnect_delay_max_ms,
        randomization: args.randomization.clamp(0.0, 1.0),
    });
    let nodes = plan.targets.len();
    let shared = Arc::new(Shared::new(
        nodes,
        args.rooms,
        args.emitters,
        (0..args.clients).map(|n| (args.first_index + n) % args.rooms),
    ));
    let stop = CancellationToken::new();
    let (mut stdin, mut commands) = stdin_commands("scale worker", parse_report);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.connect_deadline_secs);

    let progress = {
        let (shared, stop) = (shared.clone(), stop.clone());
        let worker = args.worker_id;
        let every = Duration::from_millis(args.progress_ms.max(20));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => emit(&ScaleEvent::Progress {
                        worker,
                        connected: shared.connected.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
                        received: shared.received.load(Ordering::Relaxed),
                        drops: shared.drops.load(Ordering::Relaxed),
                        reconnects: shared.reconnects.load(Ordering::Relaxed),
                        last_reconnect_us: shared.last_reconnect_us.load(Ordering::Relaxed),
                    }),
                }
            }
        })
    };

    let permits = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut stopped_early = false;
    for local in 0..args.clients {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit?,
            _ = tokio::time::sleep_until(deadline.into()) => {
                shared.connects.miss_deadline((args.clients - local) as u64);
                break;
            }
            _ = &mut stdin => { stopped_early = true; break; }
        };
        let (plan, shared, stop) = (plan.clone(), shared.clone(), stop.clone());
        let (index, home) = (args.first_index + local, args.home);
        tasks.spawn(async move {
            client_task(local, index, home, plan, shared, stop, permit).await;
        });
    }
    if !stopped_early {
        stopped_early = shared.connects.wait_tried(args.clients as u64, &mut stdin).await;
    }
    emit(&ScaleEvent::Connected { worker: args.worker_id, outcome: shared.connects.outcome(started.elapsed()) });
    if !stopped_early {
        let max_hold = tokio::time::Instant::now() + Duration::from_secs(args.max_hold_secs);
        loop {
            tokio::select! {
                _ = &mut stdin => break,
                () = tokio::time::sleep_until(max_hold) => break,
                finals = commands.recv() => match finals {
                    None => break,
                    Some(finals) => emit(&ScaleEvent::Report {
                        worker: args.worker_id,
                        report: Box::new(shared.report(&finals)),
                    }),
                },
            }
        }
    }
    stop.cancel();
    let _ = progress.await;
    if tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    emit(&ScaleEvent::Done { worker: args.worker_id });
    Ok(())
}

/// One client: connect to `home`, then hold, record, and reconnect elsewhere whenever dropped.
async fn client_task(
    local: usize,
    index: usize,
    home: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let source = plan.sources[index % plan.sources.len()];
    let options = plan.options(index);
    let attempt = tokio::time::timeout(plan.connect_timeout, Client::connect(source, &plan.targets[home], &options));
    let result = tokio::select! {
        result = attempt => result,
        () = stop.cancelled() => return,
    };
    drop(permit);
    let mut client = match result {
        Err(_) => return shared.connects.fail("timeout", format!("connect took over {:?}", plan.connect_timeout)),
        Ok(Err(e)) => return shared.connects.fail(e.stage, e.to_string()),
        Ok(Ok(client)) => client,
    };
    shared.connects.succeed();
    let mut node = home;
    let seed = mix(index as u64);
    let mut drops: u64 = 0;
    loop {
        shared.set_connected(local, node, true, false);
        let end = hold(&mut client, local, node, &shared, &stop).await;
        shared.set_connected(local, node, false, matches!(end, HoldEnd::Dropped(_)));
        let HoldEnd::Dropped(reason) = end else { return };
        drop(client);
        let dropped_at = Instant::now();
        shared.drops.fetch_add(1, Ordering::Relaxed);
        shared.first_drop_us.fetch_min(now_us(), Ordering::Relaxed);
        if let Ok(mut reasons) = shared.drop_reasons.lock() {
            *reasons.entry(reason.to_owned()).or_default() += 1;
        }
        let from = node;
        let mut attempt: u32 = 0;
        client = loop {
            let roll = mix(seed ^ (drops << 40) ^ u64::from(attempt));
            let delay = backoff(plan.delay_ms, plan.delay_max_ms, plan.randomization, attempt, roll);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
            node = reconnect_node(plan.targets.len(), from, seed.wrapping_add(drops), attempt);
            let connect =
                tokio::time::timeout(plan.connect_timeout, Client::connect(source, &plan.targets[node], &options));
            let result = tokio::select! {
                result = connect => result,
                () = stop.cancelled() => return,
            };
            match result {
                Ok(Ok(client)) => break client,
                _ => {
                    shared.reconnect_failures.fetch_add(1, Ordering::Relaxed);
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        drops += 1;
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        shared.last_reconnect_us.fetch_max(now_us(), Ordering::Relaxed);
        if let Ok(mut hist) = shared.reconnect_hist.lock() {
            hist.saturating_record((dropped_at.elapsed().as_millis() as u64).clamp(1, MAX_RECONNECT_MS));
        }
    }
}

/// Answers pings and records `msg` events until `stop` fires (then closes) or the server or
/// network ends the connection.
async fn hold(client: &mut Client, local: usize, node: usize, shared: &Shared, stop: &CancellationToken) -> HoldEnd {
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                let close = client.ws.write_frame(Frame::close(1000, b""));
                let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                return HoldEnd::Stopped;
            }
            frame = client.ws.read_frame() => {
                let on_packet = |payload: &[u8]| {
                    if !payload.starts_with(b"42[\"msg\"") {
                        return;
                    }
                    match parse_scale_msg(payload) {
                        Some(msg) => shared.received(local, node, msg),
                        None => {
                            shared.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                };
                if let Some(end) = on_held_frame(&mut client.ws, frame, None, on_packet).await {
                    return end;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scale_messages_in_any_key_order() {
        let want = ScaleMsg { step: 2, emitter: 1, seq: 7, sent_us: 1_700_000_000_000_000 };
        assert_eq!(parse_scale_msg(br#"42["msg",{"k":2,"s":7,"t":1700000000000000,"e":1,"p":"xx"}]"#), Some(want));
        assert_eq!(parse_scale_msg(br#"42["msg",{"e":1,"k":2,"p":"xx","s":7,"t":1700000000000000}]"#), Some(want));
        assert_eq!(parse_scale_msg(br#"42["msg",{"k":2,"s":7,"t":1}]"#), None);
    }

    #[test]
    fn backoff_follows_socket_io_client() {
        // First attempt: 1 s ± 50 %; later ones double up to the cap.
        for roll in [0, 1, u64::MAX, u64::MAX - 1, 12_345] {
            let d = backoff(1000, 5000, 0.5, 0, roll).as_millis();
            assert!((500..=1500).contains(&d), "{d}");
            assert!(backoff(1000, 5000, 0.5, 10, roll).as_millis() <= 5000);
        }
        assert_eq!(backoff(1000, 5000, 0.0, 1, 7), Duration::from_millis(2000));
        assert_eq!(backoff(1000, 5000, 0.0, 5, 7), Duration::from_millis(5000));
    }

    #[test]
    fn reconnects_never_go_back_to_the_node_that_dropped() {
        for seed in 0..50 {
            for attempt in 0..5 {
                let n = reconnect_node(3, 2, mix(seed), attempt);
                assert!(n < 3 && n != 2);
            }
        }
        // Both survivors get clients.
        let picks: std::collections::BTreeSet<usize> = (0..50).map(|s| reconnect_node(3, 2, mix(s), 0)).collect();
        assert_eq!(picks.into_iter().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(reconnect_node(1, 0, 9, 3), 0);
    }

    #[test]
    fn gaps_and_stream_tails_count_as_lost() {
        let shared = Shared::new(1, 2, 2, [0, 1].into_iter());
        shared.set_connected(0, 0, true, false);
        shared.set_connected(1, 0, true, false);
        let msg = |emitter, seq| ScaleMsg { step: 1, emitter, seq, sent_us: now_us() };
        // Client 0 (room 0): emitter 0 seqs 0, 2 (1 missing), 2 again (a duplicate); emitter 1: 0.
        shared.received(0, 0, msg(0, 0));
        shared.received(0, 0, msg(0, 2));
        shared.received(0, 0, msg(0, 2));
        shared.received(0, 0, msg(1, 0));
        // Client 1 (room 1) is dropped and misses everything.
        shared.set_connected(1, 0, false, true);
        // Emitter 0 published 7 messages (room 0 got seqs 0..=3, room 1 got 0..=2), emitter 1 two.
        let r = shared.report(&[7, 2]);
        assert_eq!((r.clients, r.stayed, r.moved, r.disconnected), (2, 1, 1, 1));
        assert_eq!(r.lost_stayed, vec![1 + 1, 0]);
        assert_eq!((r.gaps_stayed.clone(), r.gaps_stayed_by_node.clone()), (vec![1, 0], vec![1]));
        assert_eq!(r.lost_moved, vec![3, 1]);
        assert_eq!((r.stayed_with_loss, r.reordered), (1, 1));
        assert_eq!(r.steps[0].received, 4);
    }
}
