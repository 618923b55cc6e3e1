//! `ioswarm-bench scale-report`: scale.md (also printed) and scale.json from the result files of
//! `scale`, with the ratios measured in the same run: every cluster run's delivered/s per node,
//! latency and delivered per server core-second against the single node (`--single`), and for the
//! runs that lost a node, the storm against the same run's steady phase and SIGTERM against
//! SIGKILL.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use serde_json::{Value, json};

use crate::table::{cores, fmt, fmt_ratio, header, label, num, publish, ratio, read_result, si};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ScaleReportArgs {
    /// Label of the single-node run every cluster run is compared with.
    #[arg(long, default_value = "single")]
    single: String,
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    md: Option<PathBuf>,
    /// A line printed above the tables.
    #[arg(long)]
    title: Option<String>,
    /// `scale --json-out` files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn list(v: &Value, pointer: &str, digits: usize) -> String {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| fmt(v.as_f64(), digits, "")).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "n/a".to_owned())
}

fn list_si(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| si(v.as_f64())).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "n/a".to_owned())
}

/// `queue/backlog` per node, e.g. `12/4096, 0/4096, n/a`.
fn queues(ev: &Value) -> String {
    let max = ev.get("accept_queue_max").and_then(Value::as_array).cloned().unwrap_or_default();
    let backlog = ev.get("accept_backlog").and_then(Value::as_array).cloned().unwrap_or_default();
    max.iter()
        .zip(backlog.iter())
        .map(|(m, b)| match (m.as_u64(), b.as_u64()) {
            (Some(m), Some(b)) => format!("{m}/{b}"),
            _ => "n/a".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// p99 of each node's deliveries, e.g. `3.1 / 2.9 / 4.0 ms`.
fn per_node_p99(run: &Value, pointer: &str) -> String {
    let Some(nodes) = run.pointer(pointer).and_then(Value::as_array) else { return "n/a".to_owned() };
    let values: Vec<String> = nodes.iter().map(|l| fmt(num(l, "/p99_ms"), 1, "")).collect();
    format!("{} ms", values.join(" / "))
}

/// `load 3.2, 1.95 cores (0.80 other)`: the machine over a window.
fn machine(run: &Value, pointer: &str) -> String {
    let Some(m) = run.pointer(pointer) else { return "n/a".to_owned() };
    format!(
        "{}, {} cores ({} other)",
        fmt(num(m, "/load_average"), 1, ""),
        fmt(num(m, "/busy_cores"), 2, ""),
        fmt(num(m, "/other_cores"), 2, "")
    )
}

fn mean(v: &Value, pointer: &str) -> Option<f64> {
    let values: Vec<f64> = v.pointer(pointer)?.as_array()?.iter().filter_map(Value::as_f64).collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

fn min(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer)?.as_array()?.iter().filter_map(Value::as_f64).reduce(f64::min)
}

/// Surviving nodes' summed CPU in `pointer` (a per-node list), leaving out the victim.
fn survivors_cpu(run: &Value, pointer: &str) -> Option<f64> {
    let victim = run.pointer("/event_figures/victim").and_then(Value::as_u64)? as usize;
    let values = run.pointer(pointer)?.as_array()?;
    Some(values.iter().enumerate().filter(|(i, _)| i + 1 != victim).filter_map(|(_, v)| v.as_f64()).sum())
}

#[allow(clippy::too_many_lines)]
pub(crate) fn run(args: ScaleReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for path in &args.files {
        let value = read_result(path)?;
        if value.get("scenario").and_then(Value::as_str) != Some("scale") {
            bail!("{}: not a scale result", path.display());
        }
        runs.push(value);
    }
    let single = runs.iter().find(|r| label(r) == args.single).cloned();
    let mut md = String::new();
    if let Some(title) = &args.title {
        let _ = writeln!(md, "# {title}\n");
    }
    let first = &runs[0];
    let clusters: Vec<&Value> = runs.iter().filter(|r| r.get("nodes").and_then(Value::as_u64) > Some(1)).collect();
    let shape = clusters.first().copied().unwrap_or(first);
    let _ = writeln!(
        md,
        "## Scale: {} nodes × {} WebSocket clients, {} rooms of {:.0}, {} emitters × {}/s\n",
        shape.get("nodes").and_then(Value::as_u64).unwrap_or(0),
        shape.get("clients_per_node").and_then(Value::as_u64).unwrap_or(0),
        shape.get("rooms").and_then(Value::as_u64).unwrap_or(0),
        num(shape, "/members_per_room").unwrap_or(0.0),
        shape.get("emitters").and_then(Value::as_u64).unwrap_or(0),
        num(shape, "/emit_rate").unwrap_or(0.0),
    );
    let _ = writeln!(
        md,
        "Each room has members on every node; emitter *e* publishes into node *e mod nodes* (Redis \
         emitter format, round-robin over the rooms). The single node holds the same clients per \
         node in the same number of rooms with the same emitters, so each node handles the same \
         messages and deliveries; the cluster also forwards every message over QUIC.\n"
    );
    let _ = writeln!(md, "### Steady load\n");
    header(
        &mut md,
        &[
            "run",
            "nodes",
            "clients",
            "delivered / published",
            "delivered/s (all)",
            "delivered/s per node",
            "p50",
            "p99",
            "p99.9",
            "p99 per node",
            "server CPU per node",
            "delivered per server core-s",
            "load CPU",
            "machine: load avg, cores busy (other work)",
        ],
    );
    for run in &runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            label(run),
            run.get("nodes").and_then(Value::as_u64).unwrap_or(0),
            run.get("connected").and_then(Value::as_u64).unwrap_or(0),
            si(num(run, "/steady/delivered")),
            si(num(run, "/steady/published")),
            si(num(run, "/steady/delivered_per_sec")),
            list_si(run, "/steady/per_node_delivered_per_sec"),
            fmt(num(run, "/steady/latency/p50_ms"), 2, " ms"),
            fmt(num(run, "/steady/latency/p99_ms"), 2, " ms"),
            fmt(num(run, "/steady/latency/p999_ms"), 2, " ms"),
            per_node_p99(run, "/steady/per_node_latency"),
            list(run, "/steady/server_cpu_cores", 2),
            si(num(run, "/steady/delivered_per_server_core_sec")),
            fmt(num(run, "/steady/load_cpu_cores"), 2, ""),
            machine(run, "/steady/machine"),
        );
    }
    let mut steady_ratios = Vec::new();
    if let Some(single) = &single {
        let _ = writeln!(md);
        header(
            &mut md,
            &[
                &format!("run / {}", args.single),
                "delivered/s per node (mean)",
                "per node (lowest)",
                "p50",
                "p99",
                "delivered per server core-s",
            ],
        );
        for run in &clusters {
            let s = num(single, "/steady/delivered_per_sec");
            let r = json!({
                "run": label(run),
                "per_node_delivered_per_sec_mean": ratio(mean(run, "/steady/per_node_delivered_per_sec"), s),
                "per_node_delivered_per_sec_min": ratio(min(run, "/steady/per_node_delivered_per_sec"), s),
                "p50": ratio(num(run, "/steady/latency/p50_ms"), num(single, "/steady/latency/p50_ms")),
                "p99": ratio(num(run, "/steady/latency/p99_ms"), num(single, "/steady/latency/p99_ms")),
                "per_server_core_sec": ratio(
                    num(run, "/steady/delivered_per_server_core_sec"),
                    num(single, "/steady/delivered_per_server_core_sec")
                ),
            });
            let g = |k: &str| fmt_ratio(r.get(k).and_then(Value::as_f64));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                label(run),
                g("per_node_delivered_per_sec_mean"),
                g("per_node_delivered_per_sec_min"),
                g("p50"),
                g("p99"),
                g("per_server_core_sec"),
            );
            steady_ratios.push(r);
        }
        let _ = writeln!(
            md,
            "\nDelivered/s and per core-s: higher is better for the cluster (1× = a cluster node \
             delivers what a lone node does); latency: lower is better.\n"
        );
    }

    let events: Vec<&Value> = runs.iter().filter(|r| r.get("event_figures").is_some_and(|e| !e.is_null())).collect();
    let mut event_ratios = Vec::new();
    if !events.is_empty() {
        let _ = writeln!(md, "### Losing a node under load\n");
        header(
            &mut md,
            &[
                "run",
                "signal",
                "victim's clients",
                "first drop",
                "all connected again",
                "connected after (per node)",
                "reconnect p50 / p99 / max",
                "reconnect attempts failed",
                "lost by clients that stayed: other emitters / victim's emitter (clients)",
                "victim's unanswered PUBLISHes",
                "lost by moved clients",
                "SYN drops: ListenOverflows / ListenDrops",
                "accept queue max/backlog (per node)",
                "survivors' CPU: storm / steady",
                "machine during the storm",
                "delivered/s after the event",
                "p99 after the event",
            ],
        );
        for run in &events {
            let ev = &run["event_figures"];
            let lost_other = run.pointer("/losses/lost_stayed_surviving_emitters").and_then(Value::as_u64).unwrap_or(0);
            let gaps_other = run.pointer("/losses/gaps_stayed_surviving_emitters").and_then(Value::as_u64).unwrap_or(0);
            let lost_other = if lost_other == 0 {
                "0".to_owned()
            } else {
                format!("**{lost_other} (should be 0; {gaps_other} skipped, the rest never arrived)**")
            };
            let storm_cpu = survivors_cpu(run, "/event_figures/server_cpu_cores");
            let steady_cpu = survivors_cpu(run, "/steady/server_cpu_cores");
            let _ = writeln!(
                md,
                "| {} | SIG{} | {} | +{} | +{} | {} | {} / {} / {} | {} | {} / {} ({} of {}) | {} | {} ({} clients) | {} / {} | {} | {} / {} cores ({}) | {} | {} ({}) | {} ({}) |",
                label(run),
                ev.get("kind").and_then(Value::as_str).unwrap_or("?").to_uppercase(),
                ev.get("victim_clients").and_then(Value::as_u64).unwrap_or(0),
                fmt(num(ev, "/first_drop_secs"), 2, " s"),
                fmt(num(ev, "/recovered_secs"), 2, " s"),
                list(ev, "/connected_after", 0),
                fmt(num(ev, "/reconnect_ms/p50_ms"), 0, " ms"),
                fmt(num(ev, "/reconnect_ms/p99_ms"), 0, " ms"),
                fmt(num(ev, "/reconnect_ms/max_ms"), 0, " ms"),
                ev.get("reconnect_failures").and_then(Value::as_u64).unwrap_or(0),
                lost_other,
                run.pointer("/losses/lost_stayed_victim_emitter").and_then(Value::as_u64).unwrap_or(0),
                run.pointer("/losses/stayed_with_loss").and_then(Value::as_u64).unwrap_or(0),
                run.pointer("/losses/stayed").and_then(Value::as_u64).unwrap_or(0),
                run.pointer("/losses/victim_unanswered").and_then(Value::as_u64).unwrap_or(0),
                si(num(run, "/losses/lost_moved_total")),
                run.pointer("/losses/moved").and_then(Value::as_u64).unwrap_or(0),
                fmt(num(ev, "/listen_overflows"), 0, ""),
                fmt(num(ev, "/listen_drops"), 0, ""),
                queues(ev),
                fmt(storm_cpu, 2, ""),
                fmt(steady_cpu, 2, ""),
                fmt_ratio(ratio(storm_cpu, steady_cpu)),
                machine(run, "/event_figures/machine"),
                si(num(run, "/during/delivered_per_sec")),
                fmt_ratio(ratio(num(run, "/during/delivered_per_sec"), num(run, "/steady/delivered_per_sec"))),
                fmt(num(run, "/during/latency/p99_ms"), 1, " ms"),
                fmt_ratio(ratio(num(run, "/during/latency/p99_ms"), num(run, "/steady/latency/p99_ms"))),
            );
            event_ratios.push(json!({
                "run": label(run),
                "survivors_cpu_storm_over_steady": ratio(storm_cpu, steady_cpu),
                "delivered_per_sec_during_over_steady": ratio(num(run, "/during/delivered_per_sec"), num(run, "/steady/delivered_per_sec")),
                "p99_during_over_steady": ratio(num(run, "/during/latency/p99_ms"), num(run, "/steady/latency/p99_ms")),
            }));
        }
        let kill = events.iter().find(|r| r.pointer("/event_figures/kind").and_then(Value::as_str) == Some("kill"));
        let term = events.iter().find(|r| r.pointer("/event_figures/kind").and_then(Value::as_str) == Some("term"));
        if let (Some(kill), Some(term)) = (kill, term) {
            let r = json!({
                "term_over_kill_recovered": ratio(num(term, "/event_figures/recovered_secs"), num(kill, "/event_figures/recovered_secs")),
                "term_over_kill_reconnect_p99": ratio(num(term, "/event_figures/reconnect_ms/p99_ms"), num(kill, "/event_figures/reconnect_ms/p99_ms")),
                "term_over_kill_lost_moved": ratio(num(term, "/losses/lost_moved_total"), num(kill, "/losses/lost_moved_total")),
            });
            let _ = writeln!(
                md,
                "\nSIGTERM (drain) / SIGKILL: time until every client is back {}, reconnect p99 {}, deliveries missed by the clients that moved {}.",
                fmt_ratio(r["term_over_kill_recovered"].as_f64()),
                fmt_ratio(r["term_over_kill_reconnect_p99"].as_f64()),
                fmt_ratio(r["term_over_kill_lost_moved"].as_f64()),
            );
            event_ratios.push(r);
        }
        let _ = writeln!(
            md,
            "\nTimes are from the signal. A client that was never dropped *stayed*; what it missed \
             from the emitters on surviving nodes is a lost delivery (must be 0). The victim's own \
             emitter loses what the victim had not yet forwarded when it went away: up to its \
             unanswered PUBLISHes per room member after a SIGKILL, and nothing after a SIGTERM \
             if the drain forwards everything it answered; clients that *moved* miss what was published \
             while they were away (Socket.IO does not replay). Clients reconnect like \
             socket.io-client (first retry after 1 s ± 50 %, doubling to 5 s) to a node other than \
             the one that dropped them. SYN drops are machine-wide counters over the storm; the \
             accept queue is sampled with `ss` every sample interval. *Machine*: the 1-minute load \
             average when the window began, every core busy over it (`/proc/stat`), and how much \
             of that was neither these servers nor this load (other work sharing the machine). \
             Chart: `scale.png`.\n"
        );
    }
    publish(&md, args.md.as_deref(), args.out.as_deref(), || {
        json!({
            "title": args.title,
            "machine": { "cores": cores() },
            "runs": runs,
            "steady_ratios": steady_ratios,
            "event_ratios": event_ratios,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survivors_cpu_leaves_the_victim_out() {
        let run = json!({"event_figures": {"victim": 3, "server_cpu_cores": [0.5, 0.25, null]},
                         "steady": {"server_cpu_cores": [0.1, 0.2, 0.3]}});
        assert_eq!(survivors_cpu(&run, "/event_figures/server_cpu_cores"), Some(0.75));
        assert_eq!(survivors_cpu(&run, "/steady/server_cpu_cores"), Some(0.1 + 0.2));
        assert_eq!(mean(&run, "/steady/server_cpu_cores").map(|m| (m * 10.0).round()), Some(2.0));
        assert_eq!(min(&run, "/steady/server_cpu_cores"), Some(0.1));
    }
}
