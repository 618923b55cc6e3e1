//! `ioswarm-bench incr`: INCR throughput of one or more Redis-protocol servers on one key.
//!
//! `--conns` connections to every `--redis` address (all at once, one process) send `INCR KEY`
//! for `--secs`, each keeping at most `--pipeline` commands unanswered (1: request/reply, like
//! redis-benchmark without -P), then wait for the replies still due (at most 10 s). Figures per
//! address and in total: INCRs answered with an integer, errors, INCR/s, latency (send → reply)
//! p50/p99. Then `GET KEY` on every address: with no error, the value must equal the value before
//! plus every INCR answered (a replicated counter that lost or doubled an increment shows here).
//! The key is fresh per run (`--key`, default `ioswarm-bench:incr:<pid>:<µs>`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::pool::{Latency, Sampler};
use crate::traffic::{new_histogram, now_us};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct IncrArgs {
    /// Name of the run in the report.
    #[arg(long, default_value = "server")]
    label: String,
    /// Free-text description copied into the result.
    #[arg(long)]
    note: Option<String>,
    /// Redis-protocol addresses (HOST:PORT, comma-separated, loopback only): every one gets `--conns`.
    #[arg(long, value_delimiter = ',', required = true)]
    redis: Vec<String>,
    /// Names of the addresses in the report (comma-separated, same order; default: the addresses).
    #[arg(long, value_delimiter = ',')]
    names: Vec<String>,
    /// Connections per address.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Most unanswered INCRs per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// The counter's key (default: a fresh one per run).
    #[arg(long)]
    key: Option<String>,
    /// Server pids to sample for CPU (comma-separated; summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Also write the result JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// One reply of a RESP2 server (the kinds INCR and GET answer with).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Int(i64),
    Simple(String),
    Error(String),
    Bulk(Option<Vec<u8>>),
}

/// The first complete reply in `buf` and its length; `Ok(None)` when more bytes are needed.
fn parse_reply(buf: &[u8]) -> anyhow::Result<Option<(Reply, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..end]).context("reply line is not UTF-8")?;
    let after = end + 2;
    let reply = match buf.first() {
        Some(b':') => Reply::Int(line.parse().with_context(|| format!("bad integer reply {line:.40}"))?),
        Some(b'+') => Reply::Simple(line.to_owned()),
        Some(b'-') => Reply::Error(line.to_owned()),
        Some(b'_') => Reply::Bulk(None),
        Some(b'$') => {
            let len: i64 = line.parse().with_context(|| format!("bad bulk length {line:.40}"))?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let len = usize::try_from(len)?;
                if buf.len() < after + len + 2 {
                    return Ok(None);
                }
                if &buf[after + len..after + len + 2] != b"\r\n" {
                    bail!("bulk reply not ended by CRLF");
                }
                return Ok(Some((Reply::Bulk(Some(buf[after..after + len].to_vec())), after + len + 2)));
            }
        }
        Some(other) => bail!("unexpected reply type byte {other:#04x}"),
        None => return Ok(None),
    };
    Ok(Some((reply, after)))
}

/// A RESP2 command.
fn command(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
}

/// A connection that sends commands and reads replies.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(16 * 1024), start: 0 })
    }

    /// The next reply (reads until one is complete).
    async fn reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf[self.start..])? {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(reply);
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn call(&mut self, args: &[&str]) -> anyhow::Result<Reply> {
        let mut out = Vec::new();
        command(&mut out, args);
        self.stream.write_all(&out).await?;
        self.reply().await
    }
}

/// What one connection did.
struct ConnRun {
    addr_index: usize,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    unanswered: u64,
    hist: Histogram<u64>,
}

async fn incr_loop(
    addr_index: usize,
    addr: SocketAddr,
    key: String,
    pipeline: usize,
    until: Instant,
) -> anyhow::Result<ConnRun> {
    let mut conn = Conn::open(addr).await?;
    let mut one = Vec::new();
    command(&mut one, &["INCR", &key]);
    let mut run = ConnRun { addr_index, ok: 0, errors: 0, first_error: None, unanswered: 0, hist: new_histogram() };
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(pipeline);
    let mut out = Vec::with_capacity(one.len() * pipeline);
    let drain_deadline = until + Duration::from_secs(10);
    loop {
        let now = Instant::now();
        if now < until && in_flight.len() < pipeline {
            out.clear();
            while in_flight.len() < pipeline {
                out.extend_from_slice(&one);
                in_flight.push_back(now);
            }
            conn.stream.write_all(&out).await?;
        }
        if in_flight.is_empty() {
            break;
        }
        let reply = match tokio::time::timeout_at(drain_deadline.max(now), conn.reply()).await {
            Ok(reply) => reply?,
            Err(_) => {
                run.unanswered = in_flight.len() as u64;
                break;
            }
        };
        let sent = in_flight.pop_front().unwrap_or(now);
        run.hist.saturating_record(Instant::now().duration_since(sent).as_micros().max(1) as u64);
        match reply {
            Reply::Int(_) => run.ok += 1,
            Reply::Error(e) => {
                run.errors += 1;
                run.first_error.get_or_insert(e);
            }
            other => bail!("INCR answered {other:?}"),
        }
    }
    Ok(run)
}

/// The counter as `GET` shows it (nil: 0).
async fn get_counter(addr: SocketAddr, key: &str) -> anyhow::Result<i64> {
    let mut conn = Conn::open(addr).await?;
    match tokio::time::timeout(Duration::from_secs(10), conn.call(&["GET", key]))
        .await
        .context("GET took over 10 s")??
    {
        Reply::Bulk(None) => Ok(0),
        Reply::Bulk(Some(v)) => Ok(std::str::from_utf8(&v)?.parse()?),
        other => Err(anyhow!("GET {key} on {addr} answered {other:?}")),
    }
}

#[derive(Debug, Serialize)]
struct NodeResult {
    name: String,
    addr: String,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    unanswered: u64,
    incr_per_sec: f64,
    latency: Option<Latency>,
    /// `GET KEY` here after the run.
    final_get: i64,
}

#[derive(Debug, Serialize)]
struct IncrResult {
    scenario: &'static str,
    label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    key: String,
    conns_per_addr: usize,
    pipeline: usize,
    secs: f64,
    /// First INCR sent → last reply, seconds.
    elapsed_secs: f64,
    nodes: Vec<NodeResult>,
    ok: u64,
    errors: u64,
    incr_per_sec: f64,
    latency: Option<Latency>,
    initial: i64,
    /// `GET` on the first address.
    final_value: i64,
    /// Every address's GET equals initial + ok.
    consistent: bool,
    server_cpu_cores: Option<f64>,
}

pub(crate) fn run(args: IncrArgs) -> anyhow::Result<()> {
    crate::block_on(run_async(args))
}

async fn run_async(args: IncrArgs) -> anyhow::Result<()> {
    if args.conns == 0 || args.pipeline == 0 || args.secs <= 0.0 {
        bail!("--conns and --pipeline must be at least 1 and --secs positive");
    }
    let addrs = args.redis.iter().map(|a| crate::admin::parse_addr(a)).collect::<anyhow::Result<Vec<_>>>()?;
    if !args.names.is_empty() && args.names.len() != addrs.len() {
        bail!("--names needs one name per --redis address");
    }
    let key = args.key.clone().unwrap_or_else(|| format!("ioswarm-bench:incr:{}:{}", std::process::id(), now_us()));
    let initial = get_counter(addrs[0], &key).await?;
    let mut sampler = if args.server_pid.is_empty() { None } else { Some(Sampler::new(&args.server_pid)?) };
    let cpu_before = sampler.as_mut().map(Sampler::sample);

    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.secs);
    let mut tasks = JoinSet::new();
    for (i, &addr) in addrs.iter().enumerate() {
        for _ in 0..args.conns {
            tasks.spawn(incr_loop(i, addr, key.clone(), args.pipeline, until));
        }
    }
    let mut runs = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        runs.push(joined.map_err(|e| anyhow!("a connection task failed: {e}"))??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = sampler.as_mut().map(Sampler::sample);

    let mut nodes = Vec::new();
    let mut total_hist = new_histogram();
    let mut consistent = true;
    let (mut ok, mut errors) = (0, 0);
    for (i, &addr) in addrs.iter().enumerate() {
        let mut hist = new_histogram();
        let mut node = NodeResult {
            name: args.names.get(i).cloned().unwrap_or_else(|| addr.to_string()),
            addr: addr.to_string(),
            ok: 0,
            errors: 0,
            first_error: None,
            unanswered: 0,
            incr_per_sec: 0.0,
            latency: None,
            final_get: 0,
        };
        for r in runs.iter().filter(|r| r.addr_index == i) {
            node.ok += r.ok;
            node.errors += r.errors;
            node.unanswered += r.unanswered;
            if node.first_error.is_none() {
                node.first_error.clone_from(&r.first_error);
            }
            hist.add(&r.hist).map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        }
        total_hist.add(&hist).map_err(|e| anyhow!("merging histograms: {e:?}"))?;
        node.incr_per_sec = node.ok as f64 / elapsed;
        node.latency = Latency::of(&hist);
        ok += node.ok;
        errors += node.errors + node.unanswered;
        nodes.push(node);
    }
    for (node, &addr) in nodes.iter_mut().zip(&addrs) {
        node.final_get = get_counter(addr, &key).await?;
        consistent &= node.final_get == initial + ok as i64;
    }
    let server_cpu_cores = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some((b.cpu_secs - a.cpu_secs).max(0.0) / (b.at - a.at).as_secs_f64().max(1e-6)),
        _ => None,
    };
    let result = IncrResult {
        scenario: "incr",
        label: args.label.clone(),
        note: args.note.clone(),
        key,
        conns_per_addr: args.conns,
        pipeline: args.pipeline,
        secs: args.secs,
        elapsed_secs: elapsed,
        ok,
        errors,
        incr_per_sec: ok as f64 / elapsed,
        latency: Latency::of(&total_hist),
        initial,
        final_value: nodes.first().map_or(0, |n| n.final_get),
        consistent,
        server_cpu_cores,
        nodes,
    };
    for n in &result.nodes {
        eprintln!(
            "[{}] {} ({}): {} INCR ({:.0}/s), {} errors{}, {} unanswered, p50={} p99={}, GET={}",
            result.label,
            n.name,
            n.addr,
            n.ok,
            n.incr_per_sec,
            n.errors,
            n.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
            n.unanswered,
            n.latency.map_or_else(|| "n/a".to_owned(), |l| format!("{:.2}ms", l.p50_ms)),
            n.latency.map_or_else(|| "n/a".to_owned(), |l| format!("{:.2}ms", l.p99_ms)),
            n.final_get,
        );
    }
    eprintln!(
        "[{}] total {} INCR in {:.2} s = {:.0}/s, {} errors; GET {} - {} = {} ({}); server cpu {}",
        result.label,
        result.ok,
        result.elapsed_secs,
        result.incr_per_sec,
        result.errors,
        result.final_value,
        result.initial,
        result.final_value - result.initial,
        if result.consistent { "= INCRs answered, on every node" } else { "MISMATCH" },
        result.server_cpu_cores.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2} cores")),
    );
    println!("RESULT {}", serde_json::to_string(&result)?);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if result.ok == 0 {
        bail!("[{}] no INCR was answered", result.label);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_wait_for_more() {
        assert_eq!(parse_reply(b":42\r\n+OK").expect("ok"), Some((Reply::Int(42), 5)));
        assert_eq!(parse_reply(b"-ERR x\r\n").expect("ok"), Some((Reply::Error("ERR x".into()), 8)));
        assert_eq!(parse_reply(b"+OK\r\n").expect("ok"), Some((Reply::Simple("OK".into()), 5)));
        assert_eq!(parse_reply(b"$-1\r\n").expect("ok"), Some((Reply::Bulk(None), 5)));
        assert_eq!(parse_reply(b"$2\r\n12\r\n").expect("ok"), Some((Reply::Bulk(Some(b"12".to_vec())), 8)));
        assert_eq!(parse_reply(b"$2\r\n1").expect("ok"), None);
        assert_eq!(parse_reply(b":4").expect("ok"), None);
        assert!(parse_reply(b"*1\r\n").is_err());
        assert!(parse_reply(b":x\r\n").is_err());
        assert!(parse_reply(b"$2\r\n123\r\n").is_err());
    }

    #[test]
    fn commands_are_resp_arrays() {
        let mut out = Vec::new();
        command(&mut out, &["INCR", "k"]);
        assert_eq!(out, b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n");
    }
}
