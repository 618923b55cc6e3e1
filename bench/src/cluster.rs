//! The cluster scenarios' helpers that speak to ioswarm's admin API:
//!
//! - `ioswarm-bench cluster-wait`: polls `GET /cluster` on every node until they all list every
//!   member alive and connected, report `converged`, and agree on a raft leader; prints
//!   `cluster ready nodes=N leader=L term=T`.
//! - `ioswarm-bench cluster-converge`: how long room interest takes to spread. A few clients on one
//!   node (the origin) join `--rooms` distinct rooms (each client its share, `--batch` rooms per
//!   `ioswarm:join` with the array form, waiting for each ack), while the other nodes' `/cluster`
//!   is polled every `--poll-ms` until each shows the origin's `interest_rooms` at the new count.
//!   Then the clients leave every room and the same is measured back down to the base count;
//!   `--rounds` times. Figures per phase: first emit → last ack, last ack → converged (per
//!   watcher and on all of them), first emit → converged on all; then median and max over rounds.
//!   A convergence time is when the poll that saw the count answered: it is late by at most one
//!   poll interval plus one poll's round trip (both reported).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::admin::{Admin, parse_addr};
use crate::sio::{Client, ClientOptions, Mode, Target};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct WaitArgs {
    /// Admin API addresses of every node (HOST:PORT, comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    admin: Vec<String>,
    /// Give up after this long.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

pub(crate) fn wait(args: WaitArgs) -> anyhow::Result<()> {
    crate::block_on(wait_async(args))
}

async fn wait_async(args: WaitArgs) -> anyhow::Result<()> {
    let mut admins = args.admin.iter().map(|a| parse_addr(a).map(Admin::new)).collect::<anyhow::Result<Vec<_>>>()?;
    let n = admins.len();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last = String::new();
    loop {
        let mut views = Vec::with_capacity(n);
        for admin in &mut admins {
            match admin.cluster().await {
                Ok(view) => views.push(view),
                Err(e) => {
                    last = format!("{}: {e:#}", admin.addr());
                    break;
                }
            }
        }
        if views.len() == n {
            let leaders: Vec<Option<u64>> = views.iter().map(|v| v.leader()).collect();
            let ready = views.iter().all(|v| v.converged() && v.alive_connected() == (n, n))
                && leaders[0].is_some()
                && leaders.iter().all(|l| *l == leaders[0]);
            if ready {
                let leader = leaders[0].unwrap_or_default();
                let term = views.iter().filter_map(|v| v.term()).max().unwrap_or_default();
                println!("cluster ready nodes={n} leader={leader} term={term}");
                return Ok(());
            }
            last = views
                .iter()
                .map(|v| {
                    let (members, ok) = v.alive_connected();
                    format!(
                        "node {}: converged={} alive+connected={ok}/{members} leader={:?}",
                        v.node_id().unwrap_or_default(),
                        v.converged(),
                        v.leader()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
        if Instant::now() >= deadline {
            bail!("the cluster was not ready after {} s; last view: {last}", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ConvergeArgs {
    /// Name of the run in the report.
    #[arg(long, default_value = "ioswarm")]
    label: String,
    /// Socket.IO URL of the origin node (the clients join rooms there; loopback only).
    #[arg(long)]
    target: String,
    /// Admin API address of the origin node (its node id is read there).
    #[arg(long)]
    admin: String,
    /// Admin API addresses of the nodes whose view of the origin is watched.
    #[arg(long, value_delimiter = ',', required = true)]
    watch: Vec<String>,
    /// Clients on the origin node; each joins rooms/clients rooms (at most the server's
    /// --max-rooms-per-socket, 1024 by default).
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Distinct rooms joined in all (`PREFIX-0` … `PREFIX-(N-1)`).
    #[arg(long, default_value_t = 10_000)]
    rooms: usize,
    /// Rooms per `ioswarm:join` / `ioswarm:leave` (the array form).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Join-then-leave rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Interval between two polls of the watched nodes.
    #[arg(long, default_value_t = 2)]
    poll_ms: u64,
    /// Most time one phase may take to converge.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    #[arg(long, default_value = "cv")]
    room_prefix: String,
    /// Local address of the clients.
    #[arg(long, default_value = "127.0.0.1")]
    source: IpAddr,
    /// Also write the result JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// One watched node's view of one phase.
#[derive(Debug, Clone, Serialize)]
struct WatcherResult {
    node_id: u64,
    /// First emit → the poll that saw the target count (None: not within the timeout).
    first_to_converged_ms: Option<f64>,
    /// Last ack → that poll (negative: the count arrived before the origin's last ack did).
    last_ack_to_converged_ms: Option<f64>,
    /// The count this node showed last.
    last_seen: Option<u64>,
}

/// One join or leave phase.
#[derive(Debug, Clone, Serialize)]
struct PhaseResult {
    round: usize,
    phase: &'static str,
    /// The origin's interest count every watcher should reach.
    target_rooms: u64,
    emits: u64,
    /// First emit → last ack.
    first_to_last_ack_ms: f64,
    watchers: Vec<WatcherResult>,
    /// Last ack → converged on every watcher.
    last_ack_to_all_converged_ms: Option<f64>,
    /// First emit → converged on every watcher.
    first_to_all_converged_ms: Option<f64>,
    polls: u64,
    poll_rtt_mean_ms: f64,
    poll_rtt_max_ms: f64,
}

/// Median and max over the rounds.
#[derive(Debug, Clone, Serialize)]
struct Spread {
    median_ms: Option<f64>,
    max_ms: Option<f64>,
}

fn spread(values: impl Iterator<Item = Option<f64>>) -> Spread {
    let mut v: Vec<f64> = values.flatten().collect();
    v.sort_by(f64::total_cmp);
    let median = (!v.is_empty()).then(|| {
        let mid = v.len() / 2;
        if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
    });
    Spread { median_ms: median, max_ms: v.last().copied() }
}

#[derive(Debug, Serialize)]
struct PhaseSummary {
    last_ack_to_all_converged: Spread,
    first_to_all_converged: Spread,
    first_to_last_ack: Spread,
}

#[derive(Debug, Serialize)]
struct ConvergeResult {
    scenario: &'static str,
    label: String,
    origin_node: u64,
    watched_nodes: Vec<u64>,
    clients: usize,
    rooms: usize,
    batch: usize,
    rounds: usize,
    poll_ms: u64,
    base_rooms: u64,
    phases: Vec<PhaseResult>,
    join: PhaseSummary,
    leave: PhaseSummary,
    /// Every phase converged on every watcher within the timeout.
    complete: bool,
}

pub(crate) fn converge(args: ConvergeArgs) -> anyhow::Result<()> {
    crate::block_on(converge_async(args))
}

async fn converge_async(args: ConvergeArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.rooms == 0 || args.batch == 0 || args.rounds == 0 {
        bail!("--clients, --rooms, --batch and --rounds must be at least 1");
    }
    let target = Target::parse(&args.target)?;
    let mut origin = Admin::new(parse_addr(&args.admin)?);
    let origin_node = origin.cluster().await?.node_id().context("the origin's /cluster names no node_id")?;
    let mut watchers = args.watch.iter().map(|a| parse_addr(a).map(Admin::new)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut watched_nodes = Vec::new();
    for w in &mut watchers {
        watched_nodes.push(w.cluster().await?.node_id().context("a watched node's /cluster names no node_id")?);
    }

    // Client i takes rooms j with j mod clients == i.
    let assignments: Vec<Vec<String>> = (0..args.clients)
        .map(|i| (i..args.rooms).step_by(args.clients).map(|j| format!("{}-{j}", args.room_prefix)).collect())
        .collect();
    let options = ClientOptions { mode: Mode::Ws, room: None };
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let client = Client::connect(args.source, &target, &options).await.map_err(|e| anyhow!("connecting: {e}"))?;
        clients.push(client);
    }

    let timeout = Duration::from_secs(args.timeout_secs);
    let poll = Duration::from_millis(args.poll_ms.max(1));
    let base = settled_count(&mut watchers, origin_node, poll, timeout).await?;
    eprintln!(
        "[{}] {} clients on node {origin_node}; nodes {watched_nodes:?} hold {base} rooms of it before the first round",
        args.label, args.clients
    );

    let mut phases = Vec::new();
    let mut next_id: u64 = 0;
    let mut complete = true;
    'rounds: for round in 1..=args.rounds {
        for (phase, event, target_rooms) in
            [("join", "ioswarm:join", base + args.rooms as u64), ("leave", "ioswarm:leave", base)]
        {
            let run = Phase {
                round,
                phase,
                event,
                target_rooms,
                batch: args.batch,
                poll,
                timeout,
                origin_node,
                watched_nodes: &watched_nodes,
            };
            let (back, result) = run.run(clients, &assignments, &mut watchers, &mut next_id).await?;
            clients = back;
            print_phase(&args.label, &result);
            let done = result.first_to_all_converged_ms.is_some();
            phases.push(result);
            if !done {
                complete = false;
                break 'rounds;
            }
        }
    }
    for mut client in clients {
        let close = client.ws.write_frame(fastwebsockets::Frame::close(1000, b""));
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    }

    let summary = |name: &str| {
        let of = |f: fn(&PhaseResult) -> Option<f64>| spread(phases.iter().filter(|p| p.phase == name).map(f));
        PhaseSummary {
            last_ack_to_all_converged: of(|p| p.last_ack_to_all_converged_ms),
            first_to_all_converged: of(|p| p.first_to_all_converged_ms),
            first_to_last_ack: of(|p| Some(p.first_to_last_ack_ms)),
        }
    };
    let result = ConvergeResult {
        scenario: "converge",
        label: args.label.clone(),
        origin_node,
        watched_nodes,
        clients: args.clients,
        rooms: args.rooms,
        batch: args.batch,
        rounds: args.rounds,
        poll_ms: args.poll_ms,
        base_rooms: base,
        join: summary("join"),
        leave: summary("leave"),
        phases,
        complete,
    };
    let ms = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1} ms"));
    eprintln!(
        "[{}] join, last ack → converged on all: median {} max {}; first join → converged: median {} max {}",
        args.label,
        ms(result.join.last_ack_to_all_converged.median_ms),
        ms(result.join.last_ack_to_all_converged.max_ms),
        ms(result.join.first_to_all_converged.median_ms),
        ms(result.join.first_to_all_converged.max_ms),
    );
    println!("RESULT {}", serde_json::to_string(&result)?);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !result.complete {
        bail!(
            "[{}] room interest did not converge within {} s (see the phase lines above)",
            args.label,
            args.timeout_secs
        );
    }
    Ok(())
}

/// Waits until every watcher shows the same interest count of `node` for five polls in a row.
async fn settled_count(watchers: &mut [Admin], node: u64, poll: Duration, timeout: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + timeout;
    let (mut last, mut same) = (None, 0);
    loop {
        let mut counts = Vec::new();
        for w in watchers.iter_mut() {
            counts.push(w.cluster().await?.interest_rooms(node));
        }
        let agreed = counts.first().copied().flatten().filter(|c| counts.iter().all(|x| *x == Some(*c)));
        if agreed.is_some() && agreed == last {
            same += 1;
            if same >= 5 {
                return agreed.context("agreed");
            }
        } else {
            same = 0;
        }
        last = agreed;
        if Instant::now() >= deadline {
            bail!(
                "the watched nodes did not agree on node {node}'s room count: {counts:?} (does /cluster show interest_rooms?)"
            );
        }
        tokio::time::sleep(poll.max(Duration::from_millis(20))).await;
    }
}

/// One join or leave phase's parameters.
struct Phase<'a> {
    round: usize,
    phase: &'static str,
    event: &'static str,
    target_rooms: u64,
    batch: usize,
    poll: Duration,
    timeout: Duration,
    origin_node: u64,
    watched_nodes: &'a [u64],
}

/// What one client's emits gave: the client back, when its last ack came, and its emits.
type ClientRun = (Client, Instant, u64);

impl Phase<'_> {
    /// Runs the phase: every client emits its batches (each waits for its ack) while the watchers
    /// are polled; returns the clients and the figures.
    async fn run(
        &self,
        clients: Vec<Client>,
        assignments: &[Vec<String>],
        watchers: &mut [Admin],
        next_id: &mut u64,
    ) -> anyhow::Result<(Vec<Client>, PhaseResult)> {
        let started = Instant::now();
        let mut tasks: JoinSet<anyhow::Result<(usize, ClientRun)>> = JoinSet::new();
        for (index, (mut client, rooms)) in clients.into_iter().zip(assignments.iter().cloned()).enumerate() {
            let (event, batch, joining) = (self.event, self.batch, self.phase == "join");
            let first_id = *next_id;
            *next_id += rooms.len().div_ceil(batch) as u64;
            tasks.spawn(async move {
                let mut last_ack = Instant::now();
                let mut emits = 0;
                for (n, chunk) in rooms.chunks(batch).enumerate() {
                    let arg = Value::from(chunk.to_vec());
                    let ack = client.call(first_id + n as u64, event, &arg).await?;
                    last_ack = Instant::now();
                    emits += 1;
                    let held = ack.first().and_then(|a| a.get("rooms")).and_then(Value::as_array).map(Vec::len);
                    // The rooms are this client's alone: after each ack it is in exactly these.
                    let through = n * batch + chunk.len();
                    let want = if joining { through } else { rooms.len() - through };
                    if held != Some(want) {
                        bail!("{event} ack says the socket is in {held:?} rooms, expected {want}: {ack:?}");
                    }
                }
                Ok((index, (client, last_ack, emits)))
            });
        }

        let n = watchers.len();
        let mut converged_at: Vec<Option<Instant>> = vec![None; n];
        let mut last_seen: Vec<Option<u64>> = vec![None; n];
        let mut done: Vec<Option<ClientRun>> = (0..assignments.len()).map(|_| None).collect();
        let (mut polls, mut rtt_sum, mut rtt_max) = (0u64, Duration::ZERO, Duration::ZERO);
        let deadline = started + self.timeout;
        let mut failure = None;
        loop {
            while let Some(joined) = tasks.try_join_next() {
                match joined {
                    Ok(Ok((index, run))) => done[index] = Some(run),
                    Ok(Err(e)) => failure = Some(e),
                    Err(e) => failure = Some(anyhow!("a client task failed: {e}")),
                }
            }
            if let Some(e) = failure {
                tasks.abort_all();
                return Err(e.context(format!("round {} {}", self.round, self.phase)));
            }
            for (i, w) in watchers.iter_mut().enumerate() {
                if converged_at[i].is_some() {
                    continue;
                }
                let asked = Instant::now();
                let view = w.cluster().await?;
                let answered = Instant::now();
                polls += 1;
                rtt_sum += answered - asked;
                rtt_max = rtt_max.max(answered - asked);
                last_seen[i] = view.interest_rooms(self.origin_node);
                if last_seen[i] == Some(self.target_rooms) {
                    converged_at[i] = Some(answered);
                }
            }
            let all_acked = tasks.is_empty();
            if all_acked && converged_at.iter().all(Option::is_some) {
                break;
            }
            if Instant::now() >= deadline {
                if !all_acked {
                    tasks.abort_all();
                    bail!("round {} {}: the acks did not all come within {:?}", self.round, self.phase, self.timeout);
                }
                break;
            }
            tokio::time::sleep(self.poll).await;
        }

        let runs: Vec<ClientRun> = done.into_iter().collect::<Option<Vec<_>>>().context("a client did not finish")?;
        let last_ack = runs.iter().map(|r| r.1).max().unwrap_or(started);
        let emits = runs.iter().map(|r| r.2).sum();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let signed_ms = |at: Instant, from: Instant| {
            if at >= from { ms(at - from) } else { -ms(from - at) }
        };
        let watchers_result: Vec<WatcherResult> = (0..n)
            .map(|i| WatcherResult {
                node_id: self.watched_nodes[i],
                first_to_converged_ms: converged_at[i].map(|at| ms(at - started)),
                last_ack_to_converged_ms: converged_at[i].map(|at| signed_ms(at, last_ack)),
                last_seen: last_seen[i],
            })
            .collect();
        let all = converged_at.iter().copied().collect::<Option<Vec<_>>>().and_then(|v| v.into_iter().max());
        let result = PhaseResult {
            round: self.round,
            phase: self.phase,
            target_rooms: self.target_rooms,
            emits,
            first_to_last_ack_ms: ms(last_ack - started),
            watchers: watchers_result,
            last_ack_to_all_converged_ms: all.map(|at| signed_ms(at, last_ack)),
            first_to_all_converged_ms: all.map(|at| ms(at - started)),
            polls,
            poll_rtt_mean_ms: if polls > 0 { ms(rtt_sum) / polls as f64 } else { 0.0 },
            poll_rtt_max_ms: ms(rtt_max),
        };
        Ok((runs.into_iter().map(|r| r.0).collect(), result))
    }
}

fn print_phase(label: &str, r: &PhaseResult) {
    let ms = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v:.1}ms"));
    let per: Vec<String> = r
        .watchers
        .iter()
        .map(|w| {
            format!(
                "node{}={} (last seen {})",
                w.node_id,
                ms(w.last_ack_to_converged_ms),
                w.last_seen.map_or_else(|| "-".to_owned(), |c| c.to_string())
            )
        })
        .collect();
    eprintln!(
        "[{label}] round {} {} to {} rooms: {} emits, last ack after {:.1}ms; last ack → converged: {}; all {}, first emit → all {}; {} polls, rtt mean {:.2}ms max {:.2}ms",
        r.round,
        r.phase,
        r.target_rooms,
        r.emits,
        r.first_to_last_ack_ms,
        per.join(", "),
        ms(r.last_ack_to_all_converged_ms),
        ms(r.first_to_all_converged_ms),
        r.polls,
        r.poll_rtt_mean_ms,
        r.poll_rtt_max_ms,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_and_max_of_the_known_values() {
        let s = spread([Some(3.0), None, Some(1.0), Some(2.0)].into_iter());
        assert_eq!((s.median_ms, s.max_ms), (Some(2.0), Some(3.0)));
        let s = spread([Some(4.0), Some(1.0)].into_iter());
        assert_eq!((s.median_ms, s.max_ms), (Some(2.5), Some(4.0)));
        let s = spread([None].into_iter());
        assert_eq!((s.median_ms, s.max_ms), (None, None));
    }
}
