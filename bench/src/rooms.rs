//! `ioswarm-bench rooms`: chat-like traffic. N clients in rooms of `--group` members; during a
//! step every client sends `msg` to its own room with `ioswarm:to` at `RATE` per second, and every
//! other member of the room records it.
//!
//! Phases: spawn chat workers → connect → for each `--rates` value: `chat STEP RATE SECS` to
//! every worker, wait the step, drain, collect → stop the workers.

use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::pool::{ClientArgs, Connected, Pool, Sampler, StepResult, Traffic, print_step, step_result};
use crate::traffic::now_us;
use crate::worker::Role;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct RoomsArgs {
    #[command(flatten)]
    pub(crate) common: ClientArgs,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    group: usize,
    /// Room name prefix (rooms are PREFIX-0 … PREFIX-(K-1)).
    #[arg(long, default_value = "chat")]
    room: String,
    /// Messages per second per client, one step each.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    rates: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 10.0)]
    step_secs: f64,
}

#[derive(Debug, Serialize)]
struct RoomsResult {
    scenario: &'static str,
    label: String,
    target: String,
    clients: usize,
    workers: usize,
    group: usize,
    rooms: usize,
    payload_bytes: usize,
    #[serde(flatten)]
    connect: Connected,
    rss_before_kib: u64,
    rss_connected_kib: u64,
    steps: Vec<StepResult>,
    dropped: std::collections::BTreeMap<String, u64>,
    server_exited: bool,
}

pub(crate) fn run(args: RoomsArgs) -> anyhow::Result<()> {
    crate::block_on(run_async(args))
}

async fn run_async(args: RoomsArgs) -> anyhow::Result<()> {
    let c = &args.common;
    for target in c.targets() {
        crate::sio::Target::parse(target)?;
    }
    if args.group < 2 || args.rates.is_empty() {
        bail!("--group must be at least 2 and --rates not empty");
    }
    let rooms = c.clients.div_ceil(args.group);
    let mut sampler = Sampler::new(&c.server_pid)?;
    let before = sampler.sample();
    let max_hold = (args.rates.len() as f64 * (args.step_secs + c.drain_max_secs as f64 + 25.0) + 120.0) as u64;
    let mut pool = Pool::<Traffic>::spawn(c, Role::Chat, &args.room, rooms, max_hold)?;
    let connect = pool.wait_connected(c).await?;
    let connected_at = sampler.sample();
    eprintln!(
        "[{}] {} chat clients in {rooms} rooms of {}, {} failed in {:.2} s{}; rss={} KiB",
        c.label,
        connect.connected,
        args.group,
        connect.failed,
        connect.connect_secs,
        connect.first_error.as_ref().map(|e| format!(" (first error: {e})")).unwrap_or_default(),
        connected_at.rss_kib
    );
    if connect.connected == 0 {
        bail!("[{}] no client connected", c.label);
    }

    let mut steps = Vec::new();
    for (index, rate) in args.rates.iter().copied().enumerate() {
        let step = index as u32 + 1;
        let received_before = pool.received();
        let cpu_before = sampler.sample();
        let start_us = now_us();
        pool.command(&format!("chat {step} {rate} {} {}", args.step_secs, c.payload_bytes)).await?;
        pool.pump(Duration::from_secs_f64(args.step_secs)).await?;
        let end_us = now_us();
        // Expected deliveries are only known from the workers' reports: drain on the nominal
        // figure, then report.
        let nominal = (rate * args.step_secs * connect.connected as f64 * (args.group - 1) as f64) as u64;
        let drain = pool
            .drain(
                received_before,
                nominal,
                Duration::from_millis(c.drain_quiet_ms),
                Duration::from_secs(c.drain_max_secs),
            )
            .await?;
        let cpu_after = sampler.sample();
        let merged = pool.report(step).await?;
        let result = step_result(
            step,
            format!("{rate}/s per client"),
            Some(rate),
            merged.sent,
            start_us,
            end_us,
            merged.expected,
            &merged,
            drain,
            cpu_before,
            cpu_after,
        );
        print_step(&c.label, &result);
        steps.push(result);
        if sampler.exited {
            break;
        }
    }
    let dropped = pool.stop().await.dropped;
    let result = RoomsResult {
        scenario: "rooms",
        label: c.label.clone(),
        target: c.target.clone(),
        clients: c.clients,
        workers: c.workers,
        group: args.group,
        rooms,
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
