//! ioswarm-bench: load generator and benchmark scenarios for ioswarm and its peers.
//!
//! Layout:
//! - `sio`: a minimal Socket.IO v5 / Engine.IO v4 client (websocket or polling→upgrade).
//! - `worker`: one load process holding a share of the clients (`ioswarm-bench worker`).
//! - `idle`: the idle scenario's coordinator (`ioswarm-bench idle`), spawns workers and samples
//!   the server's /proc entry.
//! - `fanout`: one room of N subscribers, one publisher at fixed rates then flat out
//!   (`ioswarm-bench fanout`).
//! - `rooms`: chat-like traffic in many small rooms (`ioswarm-bench rooms`).
//! - `pool`: worker processes of any kind (spawn, stdin commands, stdout events); for fanout and
//!   rooms also their per-step figures.
//! - `traffic`: payload format, per-step recording, subscriber/chat client loop, publishers.
//! - `procfs`: VmRSS / VmHWM / CPU readings.
//! - `memory`: the per-connection memory breakdown from a heaptrack profile (`ioswarm-bench memory`).
//! - `report`: Markdown table and combined JSON from result files (`ioswarm-bench report`).
//! - `table`: what the report commands share (reading result files, formatting table cells).
//! - `admin`: ioswarm's admin API (`GET /cluster`) as the cluster scenarios read it.
//! - `cluster`: wait for a cluster to form (`cluster-wait`); how long room interest takes to reach
//!   the other nodes (`cluster-converge`).
//! - `incr`: INCR throughput and the counter's final value on Redis-protocol servers (`incr`).
//! - `cluster_report`: the tables of `bench/run-cluster.sh` (`cluster-report`).
//! - `scale`, `scale_worker`, `scale_report`: a cluster at the size users run, one node killed or
//!   drained under load, clients reconnecting to the survivors (`scale`, `scale-worker`,
//!   `scale-report`).
//! - `soak`: hours-long churn on a 3-node cluster, sampling every node's resources (`soak`).
//!
//! Only loopback targets are accepted. Every phase is bounded in count and time.

use clap::{Parser, Subcommand};

mod admin;
mod cluster;
mod cluster_report;
mod fanout;
mod idle;
mod incr;
mod memory;
mod pool;
mod procfs;
mod report;
mod rooms;
mod scale;
mod scale_report;
mod scale_worker;
mod sio;
mod soak;
mod table;
mod traffic;
mod worker;

#[derive(Parser, Debug)]
#[command(name = "ioswarm-bench", about = "Socket.IO load generator and benchmark scenarios")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Hold N idle clients and measure the server's memory per connection.
    Idle(idle::IdleArgs),
    /// N subscribers in one room, one publisher at fixed rates then flat out.
    Fanout(fanout::FanoutArgs),
    /// Clients in many small rooms, each sending to its room (chat-like).
    Rooms(rooms::RoomsArgs),
    /// One load process (spawned by the scenarios).
    Worker(worker::WorkerArgs),
    /// What one idle connection's memory is made of, from heaptrack's peak heap.
    Memory(memory::MemoryArgs),
    /// Markdown table + combined JSON (+ chart data) from result files of any scenario.
    Report(report::ReportArgs),
    /// Wait until every node of a cluster lists every member alive and agrees on a raft leader.
    ClusterWait(cluster::WaitArgs),
    /// Time for rooms joined on one node to show in the other nodes' interest tables.
    ClusterConverge(cluster::ConvergeArgs),
    /// INCR throughput on one key over one or more Redis-protocol servers, and the final value.
    Incr(incr::IncrArgs),
    /// cluster.md + cluster.json from fanout, cluster-converge and incr result files.
    ClusterReport(cluster_report::ClusterReportArgs),
    /// Nodes × clients with emitters into every node; optionally kill or drain one under load.
    Scale(scale::ScaleArgs),
    /// One load process of `scale` (reconnecting clients that count lost deliveries).
    ScaleWorker(scale_worker::ScaleWorkerArgs),
    /// scale.md + scale.json (with the ratios) from `scale` result files.
    ScaleReport(scale_report::ScaleReportArgs),
    /// Churn on a 3-node cluster for minutes or hours, sampling every node's resources.
    Soak(soak::SoakArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Idle(args) => idle::run(args),
        Cmd::Fanout(args) => fanout::run(args),
        Cmd::Rooms(args) => rooms::run(args),
        Cmd::Worker(args) => worker::run(args),
        Cmd::Memory(args) => memory::run(args),
        Cmd::Report(args) => report::run(args),
        Cmd::ClusterWait(args) => cluster::wait(args),
        Cmd::ClusterConverge(args) => cluster::converge(args),
        Cmd::Incr(args) => incr::run(args),
        Cmd::ClusterReport(args) => cluster_report::run(args),
        Cmd::Scale(args) => scale::run(args),
        Cmd::ScaleWorker(args) => scale_worker::run(args),
        Cmd::ScaleReport(args) => scale_report::run(args),
        Cmd::Soak(args) => soak::run(args),
    }
}

/// Runs a coordinator or worker on a single-threaded runtime and stops it without waiting for
/// leftover tasks (hyper connection tasks of closed sockets) beyond one second.
pub(crate) fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(fut: F) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(fut);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
