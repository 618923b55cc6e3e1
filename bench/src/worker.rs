//! `ioswarm-bench worker`: one load process. It opens its share of clients with bounded
//! concurrency, reports on stdout (one JSON [`WorkerEvent`] per line), holds the connections until
//! its stdin closes (or a line `stop` arrives, or `--max-hold-secs` passes), closes them and exits.
//!
//! Roles: `idle` clients only answer pings; `subscriber` clients also record every `msg` event
//! (fanout); `chat` clients record and, during a chat step, send `msg` to their own room.
//! Commands on stdin, one per line: `report STEP` (answer with a `step` event holding that step's
//! figures), `chat STEP RATE SECS PAD_BYTES` (start a chat step), `stop`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::sio::{Client, ClientOptions, HoldEnd, Mode, Target};
use crate::traffic::{self, ChatStep, ClientCtx, Recorder, StepReport};

/// What the clients of a worker do once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Role {
    /// Answer pings only.
    Idle,
    /// Record `msg` events (fanout).
    Subscriber,
    /// Record `msg` events and send to their room during chat steps (rooms).
    Chat,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Idle => "idle",
            Role::Subscriber => "subscriber",
            Role::Chat => "chat",
        }
    }
}

/// Members of room `room` when `total` clients are spread over `rooms` rooms by index.
pub(crate) fn room_size(total: usize, rooms: usize, room: usize) -> usize {
    total / rooms + usize::from(room < total % rooms)
}

/// Most sockets one worker may hold (the machine allows 20,000 file descriptors per process).
pub(crate) const MAX_SOCKETS_PER_WORKER: usize = 18_000;

/// Arguments of one worker (the coordinator builds them).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct WorkerArgs {
    /// Index of this worker, echoed in its events.
    #[arg(long, default_value_t = 0)]
    pub(crate) worker_id: usize,
    /// Server URL, e.g. http://127.0.0.1:3000
    #[arg(long)]
    pub(crate) target: String,
    /// Clients this worker opens.
    #[arg(long)]
    pub(crate) clients: usize,
    /// Global index of this worker's first client (picks rooms and source addresses).
    #[arg(long, default_value_t = 0)]
    pub(crate) first_index: usize,
    /// Local addresses to connect from, used in turn (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub(crate) sources: Vec<IpAddr>,
    /// Connect attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    pub(crate) concurrency: usize,
    #[arg(long, value_enum, default_value_t = Mode::Ws)]
    pub(crate) mode: Mode,
    /// Room each client joins with `ioswarm:join` (none: no join).
    #[arg(long)]
    pub(crate) room: Option<String>,
    /// Spread clients over this many rooms `ROOM-0` … `ROOM-(K-1)` (1: everyone in `ROOM`).
    #[arg(long, default_value_t = 1)]
    pub(crate) rooms: usize,
    /// Limit for one client's whole connect sequence.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connect_timeout_ms: u64,
    /// Clients not started within this many seconds count as failed.
    #[arg(long, default_value_t = 300)]
    pub(crate) connect_deadline_secs: u64,
    /// Hold at most this long after connecting, even if stdin stays open.
    #[arg(long, default_value_t = 600)]
    pub(crate) max_hold_secs: u64,
    #[arg(long, value_enum, default_value_t = Role::Idle)]
    pub(crate) role: Role,
    /// Clients over every worker (room sizes of the chat role); default: `--clients`.
    #[arg(long)]
    pub(crate) total_clients: Option<usize>,
    /// Interval of progress events.
    #[arg(long, default_value_t = 2000)]
    pub(crate) progress_ms: u64,
}

/// What a worker reports, one JSON object per stdout line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum WorkerEvent {
    /// Every ~2 s.
    Progress {
        worker: usize,
        ok: u64,
        failed: u64,
        alive: u64,
        /// `msg` events received so far (subscriber and chat roles).
        #[serde(default)]
        received: u64,
    },
    /// Answer to `report STEP`.
    Step {
        worker: usize,
        step: u32,
        report: StepReport,
        /// `msg` packets that did not parse, whole run.
        malformed: u64,
    },
    /// Every client was tried.
    Connected {
        worker: usize,
        #[serde(flatten)]
        outcome: ConnectOutcome,
    },
    /// Connections closed; the worker exits next.
    Done {
        worker: usize,
        /// Clients still connected when told to stop.
        alive: u64,
        /// Clients the server or network dropped while holding, by reason.
        dropped: BTreeMap<String, u64>,
        /// Engine.IO pings answered during the whole run.
        pings: u64,
    },
}

/// How one worker's initial connects went: the `connected` event of every kind of worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConnectOutcome {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) elapsed_ms: u64,
    /// Failures by step (tcp, ws-handshake, open, connect, join, probe, polling, timeout, deadline).
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) first_error: Option<String>,
}

/// A worker's initial connects so far, counted by its client tasks.
#[derive(Debug, Default)]
pub(crate) struct ConnectStats {
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    first_error: Mutex<Option<String>>,
}

impl ConnectStats {
    /// One client connected.
    pub(crate) fn succeed(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    /// One client failed at `stage`; `detail` is kept if it is the first failure.
    pub(crate) fn fail(&self, stage: &str, detail: String) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(stage.to_owned()).or_default() += 1;
        }
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(detail);
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// `left` clients were not started before the connect deadline.
    pub(crate) fn miss_deadline(&self, left: u64) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry("deadline".to_owned()).or_default() += left;
        }
        self.failed.fetch_add(left, Ordering::Relaxed);
    }

    /// Waits until `total` clients connected or failed; returns true if `stdin` ended first.
    pub(crate) async fn wait_tried(&self, total: u64, stdin: &mut oneshot::Receiver<()>) -> bool {
        while self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) < total {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = &mut *stdin => return true,
            }
        }
        false
    }

    /// The figures so far, `elapsed` after the connect phase began.
    pub(crate) fn outcome(&self, elapsed: Duration) -> ConnectOutcome {
        ConnectOutcome {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            elapsed_ms: elapsed.as_millis() as u64,
            errors: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
            first_error: self.first_error.lock().ok().and_then(|f| f.clone()),
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    connects: ConnectStats,
    dropped: AtomicU64,
    pings: AtomicU64,
}

impl Stats {
    fn alive(&self) -> u64 {
        self.connects.ok.load(Ordering::Relaxed).saturating_sub(self.dropped.load(Ordering::Relaxed))
    }
}

/// Writes one event as a JSON line on stdout.
pub(crate) fn emit(event: &impl Serialize) {
    // A closed stdout means the coordinator is gone; the stdin watch ends the worker then.
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Raises the soft file-descriptor limit to the hard limit; returns the new soft limit.
fn raise_nofile() -> anyhow::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")
}

pub(crate) fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let nofile = raise_nofile()?;
    let sockets = args.clients * args.mode.sockets_per_client();
    let budget = (nofile as usize).saturating_sub(64).min(MAX_SOCKETS_PER_WORKER);
    if sockets > budget {
        bail!(
            "worker {} would hold {sockets} sockets but may hold {budget} (nofile {nofile}); use more workers",
            args.worker_id
        );
    }
    if args.sources.is_empty() || args.concurrency == 0 || args.rooms == 0 {
        bail!("--sources, --concurrency and --rooms must not be empty or zero");
    }
    crate::block_on(run_async(args))
}

/// A command read from stdin.
#[derive(Debug)]
enum Command {
    Report(u32),
    Chat { step: u32, rate: f64, secs: f64, pad: usize },
}

fn parse_command(line: &str) -> Option<Command> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["report", step] => Some(Command::Report(step.parse().ok()?)),
        ["chat", step, rate, secs, pad] => Some(Command::Chat {
            step: step.parse().ok()?,
            rate: rate.parse().ok()?,
            secs: secs.parse().ok()?,
            pad: pad.parse().ok()?,
        }),
        _ => None,
    }
}

/// Reads stdin on a plain thread, so that the runtime never waits for it. The first receiver
/// resolves when stdin reaches EOF or a line `stop`; the second yields the other lines that
/// `parse` understands (the rest are reported on stderr after `what:`).
pub(crate) fn stdin_commands<C: Send + 'static>(
    what: &'static str,
    parse: fn(&str) -> Option<C>,
) -> (oneshot::Receiver<()>, mpsc::UnboundedReceiver<C>) {
    let (tx, rx) = oneshot::channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim() == "stop" => break,
                Ok(_) => match parse(&line) {
                    Some(command) => {
                        let _ = cmd_tx.send(command);
                    }
                    None => eprintln!("{what}: unknown command {:?}", line.trim()),
                },
            }
        }
        let _ = tx.send(());
    });
    (rx, cmd_rx)
}

async fn run_async(args: WorkerArgs) -> anyhow::Result<()> {
    let target = Arc::new(Target::parse(&args.target)?);
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let (stdin, mut commands) = stdin_commands("worker", parse_command);
    let recorder = Arc::new(Recorder::default());
    let (chat_tx, chat_rx) = watch::channel::<Option<ChatStep>>(None);
    let total_clients = args.total_clients.unwrap_or(args.clients).max(args.first_index + args.clients);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.connect_deadline_secs);
    let connect_timeout = Duration::from_millis(args.connect_timeout_ms);

    let progress = {
        let stats = stats.clone();
        let worker = args.worker_id;
        let stop = stop.clone();
        let recorder = recorder.clone();
        let every = Duration::from_millis(args.progress_ms.max(50));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => emit(&WorkerEvent::Progress {
                        worker,
                        ok: stats.connects.ok.load(Ordering::Relaxed),
                        failed: stats.connects.failed.load(Ordering::Relaxed),
                        alive: stats.alive(),
                        received: recorder.received_total.load(Ordering::Relaxed),
                    }),
                }
            }
        })
    };

    let permits = Arc::new(Semaphore::new(args.concurrency));
    let mut clients: JoinSet<Option<HoldEnd>> = JoinSet::new();
    let mut stdin = stdin;
    let mut stopped_early = false;
    for n in 0..args.clients {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit?,
            _ = tokio::time::sleep_until(deadline.into()) => {
                stats.connects.miss_deadline((args.clients - n) as u64);
                break;
            }
            _ = &mut stdin => { stopped_early = true; break; }
        };
        let index = args.first_index + n;
        let source = args.sources[index % args.sources.len()];
        let options = ClientOptions {
            mode: args.mode,
            room: args
                .room
                .as_ref()
                .map(|room| if args.rooms == 1 { room.clone() } else { format!("{room}-{}", index % args.rooms) }),
        };
        let room_index = index % args.rooms;
        let ctx = ClientCtx {
            index,
            room_json: serde_json::Value::String(options.room.clone().unwrap_or_default()).to_string(),
            recipients: room_size(total_clients, args.rooms, room_index).saturating_sub(1) as u64,
        };
        let role = args.role;
        let recorder = recorder.clone();
        let chat = chat_rx.clone();
        let target = target.clone();
        let stats = stats.clone();
        let stop = stop.clone();
        clients.spawn(async move {
            let attempt = tokio::time::timeout(connect_timeout, Client::connect(source, &target, &options));
            let result = tokio::select! {
                result = attempt => result,
                () = stop.cancelled() => return None,
            };
            drop(permit);
            let client = match result {
                Err(_) => {
                    stats.connects.fail("timeout", format!("connect took over {connect_timeout:?}"));
                    return None;
                }
                Ok(Err(e)) => {
                    stats.connects.fail(e.stage, e.to_string());
                    return None;
                }
                Ok(Ok(client)) => client,
            };
            stats.connects.succeed();
            let end = match role {
                Role::Idle => client.hold(stop, &stats.pings).await,
                Role::Subscriber | Role::Chat => {
                    traffic::run_client(client, ctx, stop, &stats.pings, &recorder, chat).await
                }
            };
            if matches!(end, HoldEnd::Dropped(_)) {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Some(end)
        });
    }

    // Wait until every started attempt finished (each is bounded by connect_timeout).
    if !stopped_early {
        stopped_early = stats.connects.wait_tried(args.clients as u64, &mut stdin).await;
    }
    emit(&WorkerEvent::Connected { worker: args.worker_id, outcome: stats.connects.outcome(started.elapsed()) });

    if !stopped_early {
        let max_hold = tokio::time::Instant::now() + Duration::from_secs(args.max_hold_secs);
        loop {
            tokio::select! {
                _ = &mut stdin => break,
                () = tokio::time::sleep_until(max_hold) => break,
                command = commands.recv() => match command {
                    None => break,
                    Some(Command::Report(step)) => emit(&WorkerEvent::Step {
                        worker: args.worker_id,
                        step,
                        report: recorder.take(step),
                        malformed: recorder.malformed.load(Ordering::Relaxed),
                    }),
                    Some(Command::Chat { step, rate, secs, pad }) => {
                        let until = tokio::time::Instant::now() + Duration::from_secs_f64(secs.max(0.0));
                        let _ = chat_tx.send(Some(ChatStep { step, rate, until, pad: traffic::padding(pad) }));
                    }
                },
            }
        }
    }
    let alive = stats.alive();
    stop.cancel();
    let _ = progress.await;

    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    let drain = async {
        while let Some(joined) = clients.join_next().await {
            if let Ok(Some(HoldEnd::Dropped(reason))) = joined {
                *dropped.entry(reason.to_owned()).or_default() += 1;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
        clients.abort_all();
    }
    emit(&WorkerEvent::Done { worker: args.worker_id, alive, dropped, pings: stats.pings.load(Ordering::Relaxed) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_outcomes_count_failures_by_stage_and_keep_the_first_error() {
        let stats = ConnectStats::default();
        stats.succeed();
        stats.fail("tcp", "refused".to_owned());
        stats.fail("tcp", "reset".to_owned());
        stats.miss_deadline(3);
        let outcome = stats.outcome(Duration::from_millis(1500));
        assert_eq!((outcome.ok, outcome.failed, outcome.elapsed_ms), (1, 5, 1500));
        let errors: Vec<(&str, u64)> = outcome.errors.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(errors, vec![("deadline", 3), ("tcp", 2)]);
        assert_eq!(outcome.first_error.as_deref(), Some("refused"));
    }

    #[test]
    fn the_connected_event_is_one_flat_json_object() {
        let outcome = ConnectOutcome {
            ok: 2,
            failed: 1,
            elapsed_ms: 30,
            errors: BTreeMap::from([("open".to_owned(), 1)]),
            first_error: Some("open: closed".to_owned()),
        };
        let line =
            serde_json::to_string(&WorkerEvent::Connected { worker: 4, outcome: outcome.clone() }).expect("serializes");
        assert_eq!(
            line,
            r#"{"type":"connected","worker":4,"ok":2,"failed":1,"elapsed_ms":30,"errors":{"open":1},"first_error":"open: closed"}"#
        );
        let Ok(WorkerEvent::Connected { worker: 4, outcome: back }) = serde_json::from_str(&line) else {
            panic!("{line} did not parse back");
        };
        assert_eq!(back, outcome);
    }
}
