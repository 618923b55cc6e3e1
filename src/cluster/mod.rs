//! The cluster: ioswarm nodes that deliver every broadcast to the right sockets on every node,
//! without a central broker.
//!
//! Map:
//!
//! - [`message`]: the crate's own types for everything nodes say to each other.
//! - `wire` (private): the one place that touches the prost types generated from
//!   `proto/ioswarm/cluster/v1/*.proto` by `build.rs`; strict about what peers send.
//! - [`credentials`]: the cluster CA and node certificates (rcgen), the `ioswarm cluster
//!   init-ca|issue` subcommands, rustls configurations for mutual TLS with the ring provider.
//! - [`transport`]: one quinn endpoint per node that both accepts and dials; one link per peer
//!   pair, an ordered uni stream per link (broadcasts, gossip, fire-and-forget operations), a bi
//!   stream per request, reconnect with backoff, everything delivered through one bounded
//!   channel.
//! - [`gossip`]: pure state: the heartbeat failure detector and each node's room interest
//!   (versioned deltas, snapshots for anti-entropy), and the forwarding targets it implies.
//! - [`raft`]: openraft 0.9 membership (voters and learners, join through any member, leave on
//!   shutdown), the durable log store in the data dir, and the replicated key-value store (the
//!   raft node implements `resp::kv::KvBackend`; its state machine is `resp::kv::KvStore`).
//! - [`node`]: the runtime: the transport's inbox, interest flushing, heartbeats, forwarding,
//!   cluster-wide operations with partial results, cluster pub/sub, `GET /cluster`.
//! - `relay`: Engine.IO requests relayed to the node holding the session (polling GET/POST on a
//!   bi stream each, WebSockets tunnelled), so load balancers need no sticky sessions; it
//!   implements `engineio::Relay`.
//! - `recovery` (private): connection state recovery across nodes: a session taken from the
//!   node that holds it for a client reconnecting elsewhere, sessions handed over by a draining
//!   node.

pub mod credentials;
pub mod gossip;
pub mod message;
pub mod node;
pub mod raft;
mod recovery;
mod relay;
pub mod transport;
mod wire;

pub use credentials::{ClusterCommand, NodeCredentials, run_cli};
pub use message::{Envelope, ForwardedBroadcast, Hello, InterestDelta, Message, NodeId, PROTOCOL_VERSION, RaftPayload};
pub use transport::{Incoming, Transport, TransportConfig, TransportError};
pub use wire::WireError;
