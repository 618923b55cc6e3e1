//! `ioswarm-bench cluster-report`: the tables of `bench/run-cluster.sh` (cluster.md, also
//! printed) and one combined JSON (cluster.json) from the result files of `fanout`,
//! `cluster-converge` and `incr`, with the ratios measured in the same run:
//!
//! - delivery: `--cross` / `--same` (what forwarding between nodes costs) and `--cross` / `--peer`
//!   (ioswarm's cluster against Node socket.io on @socket.io/redis-adapter), per step;
//! - INCR: the cluster against redis-server and against a single ioswarm node.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use serde_json::{Value, json};

use crate::table::{cores, fmt, fmt_ratio, header, num, publish, ratio, read_result, si, text};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ClusterReportArgs {
    /// Fanout label of the emitter publishing on the subscribers' own node.
    #[arg(long, default_value = "ioswarm-same")]
    same: String,
    /// Fanout label of the emitter publishing on another node.
    #[arg(long, default_value = "ioswarm-cross")]
    cross: String,
    /// Fanout label of the peer cluster.
    #[arg(long, default_value = "node-redis-adapter")]
    peer: String,
    /// INCR labels: the cluster, the single node, the reference server.
    #[arg(long, default_value = "ioswarm-cluster")]
    incr_cluster: String,
    #[arg(long, default_value = "ioswarm-single")]
    incr_single: String,
    #[arg(long, default_value = "redis-server")]
    incr_redis: String,
    /// INCR label of the durable reference server (redis-server with appendfsync always).
    #[arg(long, default_value = "redis-server-fsync")]
    incr_redis_fsync: String,
    /// Write the combined JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the Markdown here too.
    #[arg(long)]
    md: Option<PathBuf>,
    /// A line printed above the tables.
    #[arg(long)]
    title: Option<String>,
    /// Result files (`--json-out` of fanout, cluster-converge, incr).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// The step named `name` of the fanout run labelled `label`.
fn step<'a>(runs: &'a [Value], label: &str, name: &str) -> Option<&'a Value> {
    runs.iter().find(|r| text(r, "label") == label)?.get("steps")?.as_array()?.iter().find(|s| text(s, "name") == name)
}

fn fanout_section(md: &mut String, args: &ClusterReportArgs, runs: &[Value]) -> Vec<Value> {
    let mut ratios = Vec::new();
    if runs.is_empty() {
        return ratios;
    }
    let _ = writeln!(md, "## Delivery latency: emitter on the subscribers' node vs on another node\n");
    header(
        md,
        &[
            "run",
            "setup",
            "subscribers",
            "step",
            "sent/s",
            "delivered/s",
            "delivered / expected (lost)",
            "p50",
            "p99",
            "p99.9",
            "server CPU",
        ],
    );
    for run in runs {
        let label = text(run, "label");
        let note = text(run, "note");
        let subs = run.get("connected").and_then(Value::as_u64).unwrap_or(0);
        for s in run.get("steps").and_then(Value::as_array).into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {label} | {note} | {subs} | {} | {} | {} | {} / {} ({}) | {} | {} | {} | {} |",
                text(s, "name"),
                fmt(num(s, "/publish_rate"), 0, ""),
                si(num(s, "/delivered_per_sec")),
                si(num(s, "/delivered")),
                si(num(s, "/expected")),
                si(num(s, "/lost")),
                fmt(num(s, "/latency/p50_ms"), 2, " ms"),
                fmt(num(s, "/latency/p99_ms"), 2, " ms"),
                fmt(num(s, "/latency/p999_ms"), 2, " ms"),
                fmt(num(s, "/server_cpu_cores"), 2, ""),
            );
        }
    }
    let steps: Vec<String> = runs
        .iter()
        .flat_map(|r| r.get("steps").and_then(Value::as_array).into_iter().flatten())
        .map(|s| text(s, "name").to_owned())
        .fold(Vec::new(), |mut acc, n| {
            if !acc.contains(&n) {
                acc.push(n);
            }
            acc
        });
    let _ = writeln!(md);
    header(
        md,
        &[
            "step",
            &format!("{} / {}: p50", args.cross, args.same),
            "p99",
            &format!("{} / {}: p50", args.cross, args.peer),
            "p99",
            "delivered/s",
            "delivered per server core-s",
        ],
    );
    for name in &steps {
        let cross = step(runs, &args.cross, name);
        let same = step(runs, &args.same, name);
        let peer = step(runs, &args.peer, name);
        let get = |s: Option<&Value>, p: &str| s.and_then(|s| num(s, p));
        let r = json!({
            "step": name,
            "cross_over_same_p50": ratio(get(cross, "/latency/p50_ms"), get(same, "/latency/p50_ms")),
            "cross_over_same_p99": ratio(get(cross, "/latency/p99_ms"), get(same, "/latency/p99_ms")),
            "cross_over_peer_p50": ratio(get(cross, "/latency/p50_ms"), get(peer, "/latency/p50_ms")),
            "cross_over_peer_p99": ratio(get(cross, "/latency/p99_ms"), get(peer, "/latency/p99_ms")),
            "cross_over_peer_delivered_per_sec": ratio(get(cross, "/delivered_per_sec"), get(peer, "/delivered_per_sec")),
            "cross_over_peer_per_core_sec": ratio(get(cross, "/delivered_per_core_sec"), get(peer, "/delivered_per_core_sec")),
        });
        let x = |k: &str| fmt_ratio(r.get(k).and_then(Value::as_f64));
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            x("cross_over_same_p50"),
            x("cross_over_same_p99"),
            x("cross_over_peer_p50"),
            x("cross_over_peer_p99"),
            x("cross_over_peer_delivered_per_sec"),
            x("cross_over_peer_per_core_sec"),
        );
        ratios.push(r);
    }
    let _ = writeln!(
        md,
        "\nLatency ratios: lower is better for the first run named; delivered/s ratios: higher is better. \
         Server CPU is summed over every server process of the run (the ioswarm nodes; the Node \
         processes and redis-server).\n"
    );
    ratios
}

fn converge_section(md: &mut String, runs: &[Value]) {
    for run in runs {
        let _ = writeln!(
            md,
            "## Gossip convergence: {} distinct rooms joined on node {} ({} clients, {} rooms per join), seen from nodes {}\n",
            run.get("rooms").and_then(Value::as_u64).unwrap_or(0),
            run.get("origin_node").and_then(Value::as_u64).unwrap_or(0),
            run.get("clients").and_then(Value::as_u64).unwrap_or(0),
            run.get("batch").and_then(Value::as_u64).unwrap_or(0),
            run.get("watched_nodes").map(Value::to_string).unwrap_or_default(),
        );
        header(
            md,
            &[
                "round",
                "phase",
                "first emit → last ack",
                "last ack → converged (per node)",
                "last ack → converged on all",
                "first emit → converged on all",
                "poll rtt mean / max",
            ],
        );
        for p in run.get("phases").and_then(Value::as_array).into_iter().flatten() {
            let per: Vec<String> = p
                .get("watchers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|w| {
                    format!(
                        "node {}: {}",
                        w.get("node_id").and_then(Value::as_u64).unwrap_or(0),
                        fmt(num(w, "/last_ack_to_converged_ms"), 1, " ms")
                    )
                })
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} to {} | {} | {} | {} | {} | {} / {} |",
                p.get("round").and_then(Value::as_u64).unwrap_or(0),
                text(p, "phase"),
                p.get("target_rooms").and_then(Value::as_u64).unwrap_or(0),
                fmt(num(p, "/first_to_last_ack_ms"), 1, " ms"),
                per.join(", "),
                fmt(num(p, "/last_ack_to_all_converged_ms"), 1, " ms"),
                fmt(num(p, "/first_to_all_converged_ms"), 1, " ms"),
                fmt(num(p, "/poll_rtt_mean_ms"), 2, ""),
                fmt(num(p, "/poll_rtt_max_ms"), 2, " ms"),
            );
        }
        let _ = writeln!(md);
        header(
            md,
            &[
                "phase",
                "last ack → converged on all: median / max",
                "first emit → converged on all: median / max",
                "first emit → last ack: median",
            ],
        );
        for phase in ["join", "leave"] {
            let g = |k: &str, m: &str| fmt(num(run, &format!("/{phase}/{k}/{m}")), 1, " ms");
            let _ = writeln!(
                md,
                "| {phase} | {} / {} | {} / {} | {} |",
                g("last_ack_to_all_converged", "median_ms"),
                g("last_ack_to_all_converged", "max_ms"),
                g("first_to_all_converged", "median_ms"),
                g("first_to_all_converged", "max_ms"),
                g("first_to_last_ack", "median_ms"),
            );
        }
        let _ = writeln!(
            md,
            "\nA convergence time is when the poll that saw the count answered (late by at most one poll interval, {} ms, plus one poll's round trip).{}\n",
            run.get("poll_ms").and_then(Value::as_u64).unwrap_or(0),
            if run.get("complete").and_then(Value::as_bool) == Some(false) {
                " **Did not converge in time.**"
            } else {
                ""
            }
        );
    }
}

fn incr_section(md: &mut String, args: &ClusterReportArgs, runs: &[Value]) -> Value {
    if runs.is_empty() {
        return Value::Null;
    }
    let _ = writeln!(md, "## INCR on one key\n");
    header(
        md,
        &[
            "run",
            "setup",
            "address",
            "connections",
            "INCR answered",
            "INCR/s",
            "p50",
            "p99",
            "errors",
            "GET after",
            "server CPU",
        ],
    );
    for run in runs {
        let label = text(run, "label");
        let nodes = run.get("nodes").and_then(Value::as_array).cloned().unwrap_or_default();
        let conns = run.get("conns_per_addr").and_then(Value::as_u64).unwrap_or(0);
        if nodes.len() > 1 {
            for n in &nodes {
                let _ = writeln!(
                    md,
                    "| {label} | | {} | {conns} | {} | {} | {} | {} | {} | {} | |",
                    text(n, "name"),
                    si(num(n, "/ok")),
                    si(num(n, "/incr_per_sec")),
                    fmt(num(n, "/latency/p50_ms"), 2, " ms"),
                    fmt(num(n, "/latency/p99_ms"), 2, " ms"),
                    n.get("errors").and_then(Value::as_u64).unwrap_or(0)
                        + n.get("unanswered").and_then(Value::as_u64).unwrap_or(0),
                    n.get("final_get").and_then(Value::as_i64).unwrap_or(0),
                );
            }
        }
        let initial = run.get("initial").and_then(Value::as_i64).unwrap_or(0);
        let ok = run.get("ok").and_then(Value::as_i64).unwrap_or(0);
        let _ = writeln!(
            md,
            "| **{label}** | {} | {} | {} | {} | **{}** | {} | {} | {} | {} ({}) | {} |",
            text(run, "note"),
            if nodes.len() > 1 {
                "all".to_owned()
            } else {
                nodes.first().map(|n| text(n, "name").to_owned()).unwrap_or_default()
            },
            conns * nodes.len() as u64,
            si(num(run, "/ok")),
            si(num(run, "/incr_per_sec")),
            fmt(num(run, "/latency/p50_ms"), 2, " ms"),
            fmt(num(run, "/latency/p99_ms"), 2, " ms"),
            run.get("errors").and_then(Value::as_u64).unwrap_or(0),
            run.get("final_value").and_then(Value::as_i64).unwrap_or(0),
            if run.get("consistent").and_then(Value::as_bool) == Some(true) {
                format!("= {initial} + {ok} answered, on every node")
            } else {
                format!("**≠ {initial} + {ok} answered**")
            },
            fmt(num(run, "/server_cpu_cores"), 2, ""),
        );
    }
    let rate = |label: &str| runs.iter().find(|r| text(r, "label") == label).and_then(|r| num(r, "/incr_per_sec"));
    let (cluster, single, redis, durable) =
        (rate(&args.incr_cluster), rate(&args.incr_single), rate(&args.incr_redis), rate(&args.incr_redis_fsync));
    let ratios = json!({
        "cluster_over_redis_fsync": ratio(cluster, durable),
        "cluster_over_redis": ratio(cluster, redis),
        "cluster_over_single": ratio(cluster, single),
        "single_over_redis": ratio(single, redis),
    });
    let _ = writeln!(
        md,
        "\nINCR/s ratios: {c} / {d} = {}, {c} / {r} = {}, {c} / {s} = {}, {s} / {r} = {}.\n",
        fmt(ratios["cluster_over_redis_fsync"].as_f64(), 3, "×"),
        fmt(ratios["cluster_over_redis"].as_f64(), 3, "×"),
        fmt(ratios["cluster_over_single"].as_f64(), 3, "×"),
        fmt(ratios["single_over_redis"].as_f64(), 3, "×"),
        c = args.incr_cluster,
        d = args.incr_redis_fsync,
        r = args.incr_redis,
        s = args.incr_single,
    );
    ratios
}

pub(crate) fn run(args: ClusterReportArgs) -> anyhow::Result<()> {
    let mut fanout = Vec::new();
    let mut converge = Vec::new();
    let mut incr = Vec::new();
    for path in &args.files {
        let value = read_result(path)?;
        match value.get("scenario").and_then(Value::as_str) {
            Some("fanout") => fanout.push(value),
            Some("converge") => converge.push(value),
            Some("incr") => incr.push(value),
            other => bail!("{}: not a cluster result (scenario {other:?})", path.display()),
        }
    }
    let mut md = String::new();
    if let Some(title) = &args.title {
        let _ = writeln!(md, "# {title}\n");
    }
    let fanout_ratios = fanout_section(&mut md, &args, &fanout);
    converge_section(&mut md, &converge);
    let incr_ratios = incr_section(&mut md, &args, &incr);
    publish(&md, args.md.as_deref(), args.out.as_deref(), || {
        json!({
            "title": args.title,
            "machine": { "cores": cores() },
            "fanout": fanout,
            "fanout_ratios": fanout_ratios,
            "converge": converge,
            "incr": incr,
            "incr_ratios": incr_ratios,
        })
    })
}
