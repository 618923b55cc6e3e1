//! `ioswarm-bench report`: turns result files of any scenario (idle, memory, fanout, rooms) into Markdown
//! tables (printed, and written with `--md`) and one combined JSON file (`--out`), with the
//! ratios of the subject (ioswarm) against each peer. The chart script reads the combined JSON.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use serde_json::{Value, json};

use crate::table::{cores, fmt, fmt_ratio, header, label, num, publish, ratio, read_result, si, text};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ReportArgs {
    /// Label of the server the ratios are about (runs labelled `SUBJECT` or `SUBJECT-…`).
    #[arg(long, default_value = "ioswarm")]
    subject: String,
    /// Labels of the peers the subject is compared with.
    #[arg(long, value_delimiter = ',', default_value = "node,socketioxide")]
    peers: Vec<String>,
    /// Also compare with this label (kept for run-idle.sh).
    #[arg(long)]
    baseline: Option<String>,
    /// Write the combined JSON (machine, runs, ratios) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the Markdown tables here too.
    #[arg(long)]
    md: Option<PathBuf>,
    /// A line printed above the tables (e.g. the run's parameters).
    #[arg(long)]
    title: Option<String>,
    /// Result files written by the scenarios' `--json-out`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub(crate) fn machine() -> Value {
    let cores = cores();
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    });
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_owned())
    });
    json!({ "cores": cores, "mem_total_kib": mem_kib, "cpu": cpu })
}

/// A run's label, with the publisher when it is not the default.
fn run_label(run: &Value) -> String {
    let label = label(run).to_owned();
    match run.get("publisher").and_then(Value::as_str) {
        Some(p) if p != "sio" && !label.contains(p) => format!("{label} ({p})"),
        _ => label,
    }
}

fn is_subject(label: &str, subject: &str) -> bool {
    label == subject || label.starts_with(&format!("{subject}-")) || label.starts_with(&format!("{subject} ("))
}

fn steps(run: &Value) -> Vec<Value> {
    run.get("steps").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn idle_table(out: &mut String, runs: &[&Value], subject: &str, peers: &[String], ratios: &mut Vec<Value>) {
    let _ = writeln!(out, "### idle: server memory per connection\n");
    let mut header = "| server | clients connected | failed | connect time (SYN drops) | still connected after hold | peak RSS − RSS before, per client | RSS held, per client | absolute peak RSS | hold CPU |".to_owned();
    let mut rule = "|---|---|---|---|---|---|---|---|---|".to_owned();
    for peer in peers {
        let _ = write!(header, " {subject} / {peer} |");
        rule.push_str("---|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    let per_client =
        |label: &str| runs.iter().find(|r| run_label(r) == label).and_then(|r| num(r, "/peak_per_client_kib"));
    for run in runs {
        let label = run_label(run);
        let syn_drops = num(run, "/listen_overflows").map_or_else(|| "n/a".to_owned(), |n| n.to_string());
        // Several independent nodes: the connected count of each, e.g. " (2 nodes: 15000 + 15000)".
        let nodes = run.get("nodes").and_then(Value::as_array).cloned().unwrap_or_default();
        let per_node = if nodes.len() > 1 {
            let counts: Vec<String> = nodes.iter().map(|n| num(n, "/connected").unwrap_or(0.0).to_string()).collect();
            format!(" ({} nodes: {})", nodes.len(), counts.join(" + "))
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "| {label} | {} / {}{per_node} | {} | {} ({syn_drops}) | {} | {} | {} | {} | {} |",
            num(run, "/connected").unwrap_or(0.0),
            num(run, "/clients").unwrap_or(0.0),
            num(run, "/failed").unwrap_or(0.0),
            fmt(num(run, "/connect_secs"), 2, " s"),
            num(run, "/alive_at_end").unwrap_or(0.0),
            fmt(num(run, "/peak_per_client_kib"), 2, " KiB"),
            fmt(num(run, "/held_per_client_kib"), 2, " KiB"),
            fmt(num(run, "/peak_rss_kib").map(|k| k / 1024.0), 1, " MiB"),
            fmt(num(run, "/cpu_hold_cores"), 3, " cores"),
        );
        for peer in peers {
            let r = if is_subject(&label, subject) {
                ratio(num(run, "/peak_per_client_kib"), per_client(peer))
            } else {
                None
            };
            if let Some(r) = r {
                ratios.push(json!({"scenario": "idle", "subject": label, "peer": peer, "metric": "peak_rss_per_client", "ratio": r}));
            }
            let _ = write!(out, " {} |", if is_subject(&label, subject) { fmt_ratio(r) } else { String::new() });
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "\nRSS ratio below 1 is better for {subject}.\n");
}

fn memory_table(out: &mut String, runs: &[&Value]) {
    for run in runs {
        let _ = writeln!(
            out,
            "### memory: what one idle connection is made of ({}, {} clients, heap at the peak, heaptrack)\n",
            run_label(run),
            num(run, "/clients").unwrap_or(0.0)
        );
        header(out, &["part", "bytes per connection", "share", "what"]);
        let total = num(run, "/heap_per_client_bytes").unwrap_or(0.0);
        let parts = run.get("parts").and_then(Value::as_array).cloned().unwrap_or_default();
        for part in &parts {
            let bytes = num(part, "/bytes_per_client").unwrap_or(0.0);
            let per_connection = part.get("per_connection").and_then(Value::as_bool).unwrap_or(true);
            let share =
                if per_connection && total > 0.0 { format!("{:.0} %", 100.0 * bytes / total) } else { String::new() };
            let _ = writeln!(out, "| {} | {bytes:.0} | {share} | {} |", text(part, "name"), text(part, "what"));
        }
        let rss = num(run, "/rss_per_client_kib");
        let _ = writeln!(
            out,
            "| **heap per connection** | **{total:.0}** ({:.2} KiB) | 100 % | the parts above except the rest of the process |",
            total / 1024.0
        );
        let _ = writeln!(
            out,
            "| RSS per connection, same run | {} | | peak RSS − RSS before, per client; beyond the heap: allocator overhead and fragmentation, memory of the connect phase freed but kept |\n",
            rss.map_or_else(|| "n/a".to_owned(), |k| format!("{:.0} ({k:.2} KiB)", k * 1024.0))
        );
    }
}

fn traffic_table(
    out: &mut String,
    scenario: &str,
    runs: &[&Value],
    subject: &str,
    peers: &[String],
    ratios: &mut Vec<Value>,
) {
    let title = if scenario == "fanout" {
        "fanout: one publisher, N subscribers in one room"
    } else {
        "rooms: every client sends to its own small room"
    };
    let _ = writeln!(out, "### {title}\n");
    header(
        out,
        &[
            "server",
            "clients",
            "step",
            "sent/s",
            "delivered/s",
            "delivered / expected (lost)",
            "p50",
            "p99",
            "p99.9",
            "server CPU",
            "delivered per core-s",
            "drain",
        ],
    );
    for run in runs {
        let clients = match scenario {
            "rooms" => {
                format!("{} (rooms of {})", num(run, "/connected").unwrap_or(0.0), num(run, "/group").unwrap_or(0.0))
            }
            _ => format!("{}", num(run, "/connected").unwrap_or(0.0)),
        };
        for step in steps(run) {
            let _ = writeln!(
                out,
                "| {} | {clients} | {} | {} | {} | {} / {} ({}) | {} | {} | {} | {} | {} | {} |",
                run_label(run),
                text(&step, "name"),
                si(num(&step, "/publish_rate")),
                si(num(&step, "/delivered_per_sec")),
                si(num(&step, "/delivered")),
                si(num(&step, "/expected")),
                si(num(&step, "/lost")),
                fmt(num(&step, "/latency/p50_ms"), 2, " ms"),
                fmt(num(&step, "/latency/p99_ms"), 2, " ms"),
                fmt(num(&step, "/latency/p999_ms"), 2, " ms"),
                fmt(num(&step, "/server_cpu_cores"), 2, " cores"),
                si(num(&step, "/delivered_per_core_sec")),
                fmt(num(&step, "/drain_secs"), 1, " s"),
            );
        }
    }
    // Ratios per step name, subject run(s) against each peer.
    let mut lines = Vec::new();
    for run in runs.iter().filter(|r| is_subject(&run_label(r), subject)) {
        for step in steps(run) {
            let name = text(&step, "name");
            for peer in peers {
                let Some(peer_step) = runs
                    .iter()
                    .find(|r| run_label(r) == *peer)
                    .and_then(|r| steps(r).into_iter().find(|s| text(s, "name") == name))
                else {
                    continue;
                };
                let rate = ratio(num(&step, "/delivered_per_sec"), num(&peer_step, "/delivered_per_sec"));
                let per_core = ratio(num(&step, "/delivered_per_core_sec"), num(&peer_step, "/delivered_per_core_sec"));
                let p99 = ratio(num(&step, "/latency/p99_ms"), num(&peer_step, "/latency/p99_ms"));
                ratios.push(json!({
                    "scenario": scenario, "subject": run_label(run), "peer": peer, "step": name,
                    "delivered_per_sec": rate, "delivered_per_core_sec": per_core, "p99": p99,
                }));
                lines.push(format!(
                    "| {} / {peer} | {name} | {} | {} | {} |",
                    run_label(run),
                    fmt_ratio(rate),
                    fmt_ratio(per_core),
                    fmt_ratio(p99)
                ));
            }
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(out);
        header(
            out,
            &[
                "ratio",
                "step",
                &format!("delivered/s (higher: {subject} better)"),
                "delivered per core-s (higher better)",
                "p99 latency (lower better)",
            ],
        );
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(out);
}

pub(crate) fn run(args: ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for file in &args.files {
        runs.push(read_result(file)?);
    }
    if runs.is_empty() {
        bail!("no runs");
    }
    let mut peers = args.peers.clone();
    if let Some(b) = args.baseline.as_ref().filter(|b| !peers.contains(b)) {
        peers.push(b.clone());
    }
    let mut out = String::new();
    if let Some(title) = &args.title {
        let _ = writeln!(out, "{title}\n");
    }
    let mut ratios = Vec::new();
    for scenario in ["idle", "memory", "fanout", "rooms"] {
        let of: Vec<&Value> = runs.iter().filter(|r| text(r, "scenario") == scenario).collect();
        if of.is_empty() {
            continue;
        }
        match scenario {
            "idle" => idle_table(&mut out, &of, &args.subject, &peers, &mut ratios),
            "memory" => memory_table(&mut out, &of),
            _ => traffic_table(&mut out, scenario, &of, &args.subject, &peers, &mut ratios),
        }
    }
    publish(&out, args.md.as_deref(), args.out.as_deref(), || {
        json!({
            "machine": machine(),
            "subject": args.subject,
            "peers": peers,
            "ratios": ratios,
            "runs": runs,
        })
    })?;
    if let Some(path) = &args.out {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
