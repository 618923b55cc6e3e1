//! `ioswarm-bench fanout`: N subscribers in one room, one publisher.
//!
//! Phases: spawn subscriber workers → connect → open the publisher → for each step (every
//! `--rates` value, then flat out for `--flat-secs`): publish for the step's time, wait for the
//! deliveries to drain, collect the workers' figures → stop the workers.
//!
//! Publishers: `sio` is a Socket.IO client that joins the room and emits
//! `ioswarm:to(room, "msg", payload)` (the server relays to the room except the sender);
//! `redis-emitter` PUBLISHes the socket.io emitter format to the server's Redis ingress
//! (`--redis ADDR`; ioswarm started with `--redis-listen`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::pool::{ClientArgs, Connected, Pool, Sampler, StepResult, Traffic, print_step, step_result};
use crate::sio::{Client, ClientOptions, Mode, Target};
use crate::traffic::{self, PublishStep};
use crate::worker::Role;

/// How the messages enter the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Publisher {
    /// A Socket.IO client in the room, relaying with `ioswarm:to`.
    Sio,
    /// The socket.io Redis emitter format, PUBLISHed to the server's Redis ingress.
    RedisEmitter,
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) common: ClientArgs,
    /// The room every subscriber joins.
    #[arg(long, default_value = "fanout")]
    room: String,
    /// Publish rates (messages per second), one step each.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    rates: Vec<f64>,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 10.0)]
    step_secs: f64,
    /// Seconds of the flat-out step at the end (0: none).
    #[arg(long, default_value_t = 10.0)]
    flat_secs: f64,
    /// Flat out, closed loop: publish at most this many messages ahead of the average subscriber
    /// (below the servers' per-client queue limits; ioswarm's is 1024 packets). 0: open loop, as
    /// fast as the connection takes them (a server may then drop or disconnect subscribers).
    #[arg(long, default_value_t = 256)]
    flat_window: u64,
    #[arg(long, value_enum, default_value_t = Publisher::Sio)]
    publisher: Publisher,
    /// The server's Redis ingress (`--publisher redis-emitter`).
    #[arg(long)]
    redis: Option<SocketAddr>,
    /// Local address of the Socket.IO publisher.
    #[arg(long, default_value = "127.0.0.1")]
    publisher_source: IpAddr,
    /// A free-text description of the setup, copied into the result (e.g. which node the
    /// emitter publishes to; `cluster-report` shows it).
    #[arg(long)]
    note: Option<String>,
}

#[derive(Debug, Serialize)]
struct FanoutResult {
    scenario: &'static str,
    label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    target: String,
    publisher: Publisher,
    clients: usize,
    workers: usize,
    room: String,
    payload_bytes: usize,
    #[serde(flatten)]
    connect: Connected,
    rss_before_kib: u64,
    rss_connected_kib: u64,
    steps: Vec<StepResult>,
    dropped: std::collections::BTreeMap<String, u64>,
    server_exited: bool,
}

pub(crate) fn run(args: FanoutArgs) -> anyhow::Result<()> {
    crate::block_on(run_async(args))
}

async fn run_async(args: FanoutArgs) -> anyhow::Result<()> {
    let c = &args.common;
    // The Socket.IO publisher connects to the first target.
    let target = Target::parse(c.targets().first().copied().unwrap_or_default())?;
    if args.publisher == Publisher::RedisEmitter && args.redis.is_none() {
        bail!("--publisher redis-emitter needs --redis ADDR (the server's --redis-listen address)");
    }
    let mut sampler = Sampler::new(&c.server_pid)?;
    let before = sampler.sample();
    let steps_total = args.rates.len() as f64 * args.step_secs + args.flat_secs;
    let max_hold = (steps_total + (args.rates.len() + 1) as f64 * (c.drain_max_secs as f64 + 25.0) + 120.0) as u64;
    let mut pool = Pool::<Traffic>::spawn(c, Role::Subscriber, &args.room, 1, max_hold)?;
    let connect = pool.wait_connected(c).await?;
    let connected_at = sampler.sample();
    eprintln!(
        "[{}] {} subscribers connected, {} failed in {:.2} s{}; rss={} KiB",
        c.label,
        connect.connected,
        connect.failed,
        connect.connect_secs,
        connect.first_error.as_ref().map(|e| format!(" (first error: {e})")).unwrap_or_default(),
        connected_at.rss_kib
    );
    if connect.connected == 0 {
        bail!("[{}] no subscriber connected", c.label);
    }

    let stop = CancellationToken::new();
    let (steps_tx, steps_rx) = mpsc::channel::<PublishStep>(1);
    let pad = traffic::padding(c.payload_bytes);
    let publisher = match args.publisher {
        Publisher::Sio => {
            let options = ClientOptions { mode: Mode::Ws, room: Some(args.room.clone()) };
            // Bounded like the subscribers' connects: a server that never answers the handshake
            // (seen once with a peer under load) must not hang the run.
            let timeout = Duration::from_millis(c.connect_timeout_ms);
            let mut attempt = 0;
            let client = loop {
                attempt += 1;
                match tokio::time::timeout(timeout, Client::connect(args.publisher_source, &target, &options)).await {
                    Ok(Ok(client)) => break client,
                    Ok(Err(e)) if attempt >= 3 => bail!("[{}] publisher: {e}", c.label),
                    Err(_) if attempt >= 3 => bail!("[{}] publisher: no connection within {timeout:?}", c.label),
                    Ok(Err(e)) => eprintln!("[{}] publisher connect attempt {attempt} failed: {e}", c.label),
                    Err(_) => eprintln!("[{}] publisher connect attempt {attempt} timed out", c.label),
                }
            };
            let (room, stop) = (args.room.clone(), stop.clone());
            tokio::spawn(async move {
                traffic::sio_publisher(client, room, pad, steps_rx, stop).await;
                Ok(())
            })
        }
        Publisher::RedisEmitter => {
            let addr = args.redis.context("--redis")?;
            let (room, stop) = (args.room.clone(), stop.clone());
            tokio::spawn(traffic::redis_publisher(addr, room, pad, steps_rx, stop))
        }
    };
    // Let the publisher's join settle.
    pool.pump(Duration::from_millis(500)).await?;

    let mut plan: Vec<(String, Option<f64>, f64)> =
        args.rates.iter().map(|r| (format!("{r}/s"), Some(*r), args.step_secs)).collect();
    if args.flat_secs > 0.0 {
        plan.push(("flat".to_owned(), None, args.flat_secs));
    }
    let mut steps = Vec::new();
    for (index, (name, rate, secs)) in plan.into_iter().enumerate() {
        let step = index as u32 + 1;
        let received_before = pool.received();
        let cpu_before = sampler.sample();
        let (reply_tx, reply_rx) = oneshot::channel();
        let window = (rate.is_none() && args.flat_window > 0).then(|| traffic::Window {
            received: pool.received_shared(),
            base: received_before,
            subscribers: connect.connected,
            ahead: args.flat_window,
        });
        let publish = PublishStep { step, rate, duration: Duration::from_secs_f64(secs), window, reply: reply_tx };
        steps_tx.send(publish).await.map_err(|_| anyhow!("[{}] the publisher stopped", c.label))?;
        let stats = tokio::select! {
            stats = reply_rx => stats.map_err(|_| anyhow!("[{}] the publisher stopped", c.label))?,
            pumped = pool.pump(Duration::from_secs_f64(secs + 30.0)) => {
                pumped?;
                bail!("[{}] the publisher did not finish step {step}", c.label);
            }
        };
        if stats.failed {
            eprintln!("[{}] the publisher's connection failed during step {step}", c.label);
        }
        let expected = stats.sent * connect.connected;
        let drain = pool
            .drain(
                received_before,
                expected,
                Duration::from_millis(c.drain_quiet_ms),
                Duration::from_secs(c.drain_max_secs),
            )
            .await?;
        let cpu_after = sampler.sample();
        let merged = pool.report(step).await?;
        let result = step_result(
            step,
            name,
            rate,
            stats.sent,
            stats.start_us,
            stats.end_us,
            expected,
            &merged,
            drain,
            cpu_before,
            cpu_after,
        );
        print_step(&c.label, &result);
        if merged.malformed > 0 {
            eprintln!("[{}] {} msg packets did not parse", c.label, merged.malformed);
        }
        steps.push(result);
        if stats.failed || sampler.exited {
            break;
        }
    }
    stop.cancel();
    drop(steps_tx);
    let publisher_result = tokio::time::timeout(Duration::from_secs(5), publisher).await;
    let dropped = pool.stop().await.dropped;
    if let Ok(Ok(Err(e))) = publisher_result {
        eprintln!("[{}] publisher: {e:#}", c.label);
    }

    let result = FanoutResult {
        scenario: "fanout",
        label: c.label.clone(),
        note: args.note.clone(),
        target: c.target.clone(),
        publisher: args.publisher,
        clients: c.clients,
        workers: c.workers,
        room: args.room.clone(),
        payload_bytes: c.payload_bytes,
        connect,
        rss_before_kib: before.rss_kib,
        rss_connected_kib: connected_at.rss_kib,
        steps,
        dropped,
        server_exited: sampler.exited,
    };
    let json = serde_json::to_string(&result)?;
    println!("RESULT {json}");
    if let Some(path) = &c.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if result.steps.iter().all(|s| s.delivered == 0) {
        bail!("[{}] no message was delivered in any step", c.label);
    }
    Ok(())
}
