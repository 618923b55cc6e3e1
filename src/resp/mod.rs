//! The embedded Redis-protocol broker: existing Redis pub/sub clients and socket.io Redis
//! emitters can point at an ioswarm node instead of a Redis server.
//!
//! Layout:
//!
//! - `frame`: the pure RESP2/RESP3 codec: request parsing (multibulk and inline, "need more
//!   bytes" kept apart from malformed input, Redis' exact protocol errors and limits) and reply
//!   encoding for both protocol versions.
//! - `glob`: Redis' `stringmatchlen` glob rules (PSUBSCRIBE, `PUBSUB CHANNELS pattern`).
//! - `broker`: [`Broker`], the pub/sub registry; publishes encode each message once per
//!   protocol version and share the bytes; [`PublishHook`] sees every client PUBLISH/SPUBLISH.
//! - `output`: a connection's bounded output queue and the pub/sub output-buffer limits.
//! - `client`: per-connection state (protocol, auth, name, subscriptions).
//! - `cmd`: the command table and dispatch (Redis' `processCommand` checks), one file per
//!   command family; replies that need a round trip are deferred futures. The key-value
//!   commands (`cmd/kv.rs`: GET, SET, INCR, EXPIRE, ...) run on a
//!   [`KvBackend`](kv::KvBackend): [`RedisConfig::kv`], or a store of the
//!   listener's own.
//! - [`kv`]: the key-value seam, owned here: the [`KvBackend`](kv::KvBackend) trait, the
//!   operations and values it takes and answers, the pure [`KvStore`](kv::KvStore) state
//!   machine and [`LocalKv`](kv::LocalKv), the single-node backend. The cluster's raft node
//!   implements the trait with a `KvStore` as its state machine.
//! - `server`: [`serve`] and [`RedisConfig`]: the listener, a reader and a writer task per
//!   connection.
//!
//! Nothing here imports the Socket.IO server or the cluster (`tests/module_graph.rs` checks):
//! the socket.io emitter bridge (the `emitter` module) is a [`PublishHook`] installed from above,
//! the raft node a [`KvBackend`](kv::KvBackend) handed in through [`RedisConfig::kv`].

mod broker;
mod client;
mod cmd;
pub(crate) mod frame;
pub(crate) mod glob;
pub mod kv;
mod output;
mod server;

pub use broker::{Broker, ClusterPubSub, CountsFuture, PublishHook};
pub use server::{RedisConfig, serve};
