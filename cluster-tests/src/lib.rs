//! Multi-process cluster tests: real `ioswarm` nodes, driven and observed the way users do it.
//!
//! Map:
//!
//! - [`Cluster`] (`cluster.rs`): `Cluster::spawn(n)` creates a CA and node certificates in a test
//!   folder, starts node 1 (it bootstraps the cluster) and the others joining it, and waits until
//!   they agree on the raft members and a leader. [`Cluster::kill`] (SIGKILL),
//!   [`Cluster::stop`] (SIGTERM, graceful leave), [`Cluster::restart`] (same addresses, same data
//!   dir), [`Cluster::wait_converged`], [`Cluster::view`] (`GET /cluster`), admin API helpers.
//!   Node stdout/stderr go to files in the test folder; when a test panics the folder is kept
//!   and every node's `/cluster` and log tail are printed.
//! - [`Agent`] (`agent.rs` + `js/agent.mjs`): a Node process with the real peers
//!   (`socket.io-client` 4.8.4, `@socket.io/redis-emitter` 5.1.0, node-redis 4.7.0), driven
//!   over JSON lines: connect clients (with failover to other nodes), join rooms, relay, record
//!   events, emitter operations, Redis commands, pub/sub, INCR load, HTTP.
//! - [`Netns`] (`netns.rs`): a throwaway network namespace and nftables rules that cut nodes
//!   off from each other (partition tests; root, `ip` and `nft` required).
//! - [`ClusterView`] (`view.rs`): the typed `GET /cluster` answer.
//! - `http.rs`: a tiny HTTP/1.1 client; `wait.rs`: [`wait_for`] (a deadline for convergence,
//!   never a timing assertion); `process.rs`: finding the binary ([`ioswarm_bin`]) and logs.
//!
//! Tests that each start processes run one at a time (a [`Cluster`] holds a process-wide lock).

mod agent;
mod cluster;
mod http;
mod metrics;
mod netns;
mod process;
mod view;
mod wait;

pub use agent::{Agent, QUIET, strings};
pub use cluster::{Addrs, CONVERGE, Cluster, ClusterBuilder, Node};
pub use http::{HttpResponse, request};
pub use metrics::{metric, metric_sum};
pub use netns::Netns;
pub use process::{ioswarm_bin, tail, workspace_root};
pub use view::{ClusterView, MemberView, RaftView};
pub use wait::{quiet, wait_for};
