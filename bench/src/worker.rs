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
        ok: u64,
        failed: u64,
        elapsed_ms: u64,
        /// Failures by step (tcp, ws-handshake, open, connect, join, probe, polling, timeout, deadline).
        errors: BTreeMap<String, u64>,
        first_error: Option<String>,
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

#[derive(Debug, Default)]
struct Stats {
    ok: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    pings: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    first_error: Mutex<Option<String>>,
}

impl Stats {
    fn fail(&self, stage: &str, detail: String) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(stage.to_owned()).or_default() += 1;
        }
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert(detail);
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    fn alive(&self) -> u64 {
        self.ok.load(Ordering::Relaxed).saturating_sub(self.dropped.load(Ordering::Relaxed))
    }
}

fn emit(event: &WorkerEvent) {
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

/// The first receiver resolves when stdin reaches EOF or a line `stop`; the second yields the
/// other commands. Read on a plain thread so that the runtime never waits for it.
fn stdin_commands() -> (oneshot::Receiver<()>, mpsc::UnboundedReceiver<Command>) {
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
                Ok(_) => match parse_command(&line) {
                    Some(command) => {
                        let _ = cmd_tx.send(command);
                    }
                    None => eprintln!("worker: unknown command {:?}", line.trim()),
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
    let (stdin, mut commands) = stdin_commands();
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
                        ok: stats.ok.load(Ordering::Relaxed),
                        failed: stats.failed.load(Ordering::Relaxed),
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
                let left = (args.clients - n) as u64;
                if let Ok(mut errors) = stats.errors.lock() {
                    *errors.entry("deadline".to_owned()).or_default() += left;
                }
                stats.failed.fetch_add(left, Ordering::Relaxed);
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
                    stats.fail("timeout", format!("connect took over {connect_timeout:?}"));
                    return None;
                }
                Ok(Err(e)) => {
                    stats.fail(e.stage, e.to_string());
                    return None;
                }
                Ok(Ok(client)) => client,
            };
            stats.ok.fetch_add(1, Ordering::Relaxed);
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
    let total = args.clients as u64;
    while !stopped_early && stats.ok.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed) < total {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = &mut stdin => stopped_early = true,
        }
    }
    let errors = stats.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let first_error = stats.first_error.lock().ok().and_then(|f| f.clone());
    emit(&WorkerEvent::Connected {
        worker: args.worker_id,
        ok: stats.ok.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        elapsed_ms: started.elapsed().as_millis() as u64,
        errors,
        first_error,
    });

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
