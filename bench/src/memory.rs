//! `ioswarm-bench memory`: what one idle connection's memory is made of.
//!
//! Input: the heap of an ioswarm process at its peak, as heaptrack records it
//! (`heaptrack_print --flamegraph-cost-type peak -F STACKS`: one line per allocation call stack,
//! `frame;frame;…;frame BYTES`, outermost frame first), taken while `ioswarm-bench idle` held N
//! idle clients. Every stack is put in one part of a connection by [`PARTS`], a table matched in
//! order against the stack's innermost ioswarm frame (and, for some, any frame); the bytes of
//! each part are divided by the connected clients. The idle run's RSS per client is given next
//! to the heap total: the difference is the allocator's overhead and fragmentation plus what the
//! connect phase used and freed (hyper connections in flight), which RSS keeps.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value, json};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct MemoryArgs {
    /// Name of the server in the report.
    #[arg(long, default_value = "ioswarm")]
    label: String,
    /// heaptrack_print's flamegraph stacks with the peak cost (`-F FILE --flamegraph-cost-type peak`).
    #[arg(long)]
    stacks: PathBuf,
    /// The result of the `ioswarm-bench idle` run that held the clients (its `--json-out`).
    #[arg(long)]
    idle_json: PathBuf,
    /// Also write the result JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Whether the allocation was a tokio task (its future, in the task's cell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    Yes,
    No,
    Any,
}

/// One part of a connection: a stack belongs to it when its innermost ioswarm frame contains
/// `inner` (empty: any) and some frame contains `anywhere` (empty: no condition).
struct Part {
    name: &'static str,
    what: &'static str,
    inner: &'static [&'static str],
    anywhere: &'static str,
    task: Task,
}

/// The parts, matched in order; the first that matches takes the stack.
const PARTS: &[Part] = &[
    Part {
        name: "socket I/O registration",
        what: "tokio's readiness state of the TCP socket (one per socket, fixed size)",
        inner: &[],
        anywhere: "registration_set::RegistrationSet::allocate",
        task: Task::Any,
    },
    Part {
        name: "connection task",
        what: "the session's one task (engineio driver: timers, WebSocket reads, writes senders left): its future in a tokio task cell",
        inner: &["engineio::endpoint::Engine", "engineio::driver"],
        anywhere: "",
        task: Task::Yes,
    },
    Part {
        name: "WebSocket reader",
        what: "the socket's read and write halves and the frame reader's state (no read buffer)",
        inner: &["accept_websocket", "upgrade_existing", "engineio::websocket", "engineio::wsread"],
        anywhere: "",
        task: Task::No,
    },
    Part {
        name: "handshake headers",
        what: "the request headers the session keeps, copied out of hyper's buffer",
        inner: &["Handshake::keep_headers"],
        anywhere: "",
        task: Task::No,
    },
    Part {
        name: "connection state",
        what: "Arc<Connection>: Engine.IO session state machine and send queue, handshake, Socket.IO client state; the sessions table entry",
        inner: &["engineio::endpoint::Engine", "engineio::connection", "engineio::session"],
        anywhere: "",
        task: Task::No,
    },
    Part {
        name: "rooms",
        what: "room membership: the room's member table and the socket's list of rooms",
        inner: &["Socket::join", "rooms::registry"],
        anywhere: "",
        task: Task::Any,
    },
    Part {
        name: "Socket.IO socket",
        what: "the namespace's socket (Arc<SocketInner>: id, auth, data, acks) and its entry in the namespace's socket table",
        inner: &["finish_connect", "socket::Socket::new", "Namespace::add_socket"],
        anywhere: "",
        task: Task::Any,
    },
    Part {
        name: "Socket.IO client state",
        what: "the client's namespaces and pending CONNECTs (socketio::server)",
        inner: &["socketio::server"],
        anywhere: "",
        task: Task::Any,
    },
    Part {
        name: "HTTP connections in flight",
        what: "hyper connection tasks and listener slots of handshakes not finished at the peak (transient)",
        inner: &["ioswarm::http", "ioswarm::net"],
        anywhere: "",
        task: Task::Any,
    },
    Part {
        name: "rest of the process",
        what: "everything else: start-up state, metrics, the runtime (not per connection)",
        inner: &[],
        anywhere: "",
        task: Task::Any,
    },
];

/// The part a stack (frames outermost first) belongs to.
fn part_of(frames: &[&str]) -> &'static Part {
    let inner = frames.iter().rev().find(|f| f.contains("ioswarm::")).copied().unwrap_or("");
    let is_task = frames.iter().any(|f| f.contains("tokio::runtime::task::core::Cell"));
    let last = PARTS.len() - 1;
    PARTS[..last]
        .iter()
        .find(|p| {
            let task_ok = match p.task {
                Task::Any => true,
                Task::Yes => is_task,
                Task::No => !is_task,
            };
            let inner_ok = p.inner.is_empty() || p.inner.iter().any(|pat| inner.contains(pat));
            let anywhere_ok = p.anywhere.is_empty() || frames.iter().any(|f| f.contains(p.anywhere));
            task_ok && inner_ok && anywhere_ok
        })
        .unwrap_or(&PARTS[last])
}

/// Bytes per part from heaptrack's flamegraph stacks.
fn parts_of(stacks: &str) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let mut bytes = BTreeMap::new();
    for (n, line) in stacks.lines().enumerate() {
        let Some((stack, count)) = line.rsplit_once(' ') else { continue };
        let count: u64 = count.trim().parse().with_context(|| format!("line {}: no byte count", n + 1))?;
        let frames: Vec<&str> = stack.split(';').collect();
        *bytes.entry(part_of(&frames).name).or_insert(0) += count;
    }
    Ok(bytes)
}

pub(crate) fn run(args: MemoryArgs) -> anyhow::Result<()> {
    let stacks = std::fs::read_to_string(&args.stacks).with_context(|| format!("reading {}", args.stacks.display()))?;
    let idle: Value = serde_json::from_str(
        &std::fs::read_to_string(&args.idle_json).with_context(|| format!("reading {}", args.idle_json.display()))?,
    )
    .with_context(|| format!("parsing {}", args.idle_json.display()))?;
    let clients = idle.get("connected").and_then(Value::as_f64).unwrap_or(0.0);
    if clients <= 0.0 {
        bail!("the idle run connected no client");
    }
    let bytes = parts_of(&stacks)?;
    let rest = PARTS[PARTS.len() - 1].name;
    let parts: Vec<Value> = PARTS
        .iter()
        .map(|p| {
            let b = bytes.get(p.name).copied().unwrap_or(0) as f64;
            json!({ "name": p.name, "what": p.what, "bytes_per_client": b / clients, "per_connection": p.name != rest })
        })
        .collect();
    let per_connection: f64 =
        PARTS.iter().filter(|p| p.name != rest).map(|p| bytes.get(p.name).copied().unwrap_or(0) as f64 / clients).sum();
    let result = json!({
        "scenario": "memory",
        "label": args.label,
        "clients": clients,
        "heap_per_client_bytes": per_connection,
        "rss_per_client_kib": idle.get("peak_per_client_kib"),
        "parts": parts,
    });
    eprintln!(
        "[{}] heap per connection at the peak: {per_connection:.0} bytes over {clients} clients; RSS per client (under heaptrack) {} KiB",
        args.label,
        idle.get("peak_per_client_kib").and_then(Value::as_f64).map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
    );
    let text = serde_json::to_string_pretty(&result)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("RESULT {}", serde_json::to_string(&result)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_land_in_their_parts() {
        let stacks = "\
main;tokio::runtime::task::core::Cell$LT$T$C$S$GT$::new;ioswarm::engineio::endpoint::Engine$LT$H$GT$::route 6400
main;ioswarm::engineio::endpoint::Engine$LT$H$GT$::route;alloc::alloc 7520
main;ioswarm::engineio::endpoint::Engine$LT$H$GT$::route;ioswarm::engineio::connection::Handshake::keep_headers;alloc 1200
main;ioswarm::net::Acceptor::next;tokio::runtime::io::registration_set::RegistrationSet::allocate 2560
main;ioswarm::engineio::websocket::run_direct;ioswarm::engineio::endpoint::Engine$LT$H$GT$::accept_websocket::{{closure}} 1490
main;ioswarm::socketio::server::SioHandler::finish_connect 2970
main;ioswarm::socketio::server::SioHandler::finish_connect;ioswarm::socketio::socket::Socket::join 610
main;ioswarm::node::init_logging 99
";
        let bytes = parts_of(stacks).expect("parses");
        assert_eq!(bytes["connection task"], 6400);
        assert_eq!(bytes["connection state"], 7520);
        assert_eq!(bytes["handshake headers"], 1200);
        assert_eq!(bytes["socket I/O registration"], 2560);
        assert_eq!(bytes["WebSocket reader"], 1490);
        assert_eq!(bytes["Socket.IO socket"], 2970);
        assert_eq!(bytes["rooms"], 610);
        assert_eq!(bytes["rest of the process"], 99);
    }
}
