//! The cluster: ioswarm nodes that deliver every broadcast to the right sockets on every node,
//! without a central broker.
//!
//! Map (what exists today):
//!
//! - [`message`]: the crate's own types for everything nodes say to each other ([`Envelope`],
//!   [`Message`], [`Hello`], [`ForwardedBroadcast`], gossip, cluster requests and replies, raft
//!   payloads, key-value commands).
//! - `wire` (private): the one place that touches the prost types generated from
//!   `proto/ioswarm/cluster/v1/*.proto` by `build.rs`; converts them to and from [`message`]
//!   ([`Envelope::encode`], [`Envelope::decode`], strict about what peers send).
//! - [`credentials`]: the cluster CA and node certificates (rcgen), the `ioswarm cluster
//!   init-ca|issue` subcommands ([`ClusterCommand`], [`run_cli`]), rustls configurations for
//!   mutual TLS with the ring provider.
//! - [`transport`]: one quinn endpoint per node that both accepts and dials; one link per peer
//!   pair, an ordered uni stream per link for forwarded broadcasts, a bi stream per request,
//!   reconnect with backoff, everything delivered through one bounded channel.
//!
//! Still to come (a later change wires them on top of these pieces):
//!
//! - **gossip**: liveness (failure detection) and each node's room interest per namespace as
//!   versioned deltas ([`InterestDelta`]), with digests and snapshots for anti-entropy on every
//!   [`transport::Incoming::PeerUp`];
//! - **raft**: openraft 0.9 membership (voters and learners, join through any member, leave on
//!   shutdown) and the replicated key-value store ([`KvCommand`]), its RPCs carried as
//!   [`RaftPayload`] over [`transport::Transport::request`];
//! - **forwarding**: broadcasts sent to exactly the nodes with interest, cluster-wide
//!   socketsJoin/Leave, disconnectSockets, fetchSockets, serverSideEmit and broadcast-with-ack
//!   with partial results on timeout;
//! - the `--node-id`, `--cluster-listen`, `--advertise`, `--join`, `--data-dir` flags, metrics
//!   and `GET /cluster`.

pub mod credentials;
pub mod gossip;
pub mod kv;
pub mod message;
pub mod node;
pub mod raft;
pub mod transport;
mod wire;

pub use credentials::{ClusterCommand, NodeCredentials, run_cli};
pub use message::{
    Envelope, ForwardedBroadcast, Hello, InterestDelta, KvCommand, Message, NodeId, PROTOCOL_VERSION, RaftPayload,
};
pub use transport::{Incoming, Transport, TransportConfig, TransportError};
pub use wire::WireError;
