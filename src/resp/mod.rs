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
//!   command family.
//! - `server`: [`serve`] and [`RedisConfig`]: the listener, a reader and a writer task per
//!   connection.

mod broker;
mod client;
mod cmd;
pub mod emitter;
pub(crate) mod frame;
pub(crate) mod glob;
mod output;
mod server;

pub use broker::{Broker, PublishHook};
pub use server::{RedisConfig, serve};

/// Gauge: open Redis-protocol connections.
pub(crate) const METRIC_CONNECTIONS: &str = "ioswarm_redis_connections";
/// Counter: Redis-protocol connections accepted.
pub(crate) const METRIC_CONNECTIONS_OPENED: &str = "ioswarm_redis_connections_opened_total";
/// Counter: connections refused because `max_clients` was reached.
pub(crate) const METRIC_CONNECTIONS_REJECTED: &str = "ioswarm_redis_connections_rejected_total";
/// Counter: commands executed.
pub(crate) const METRIC_COMMANDS: &str = "ioswarm_redis_commands_total";
/// Counter: connections closed for a protocol error.
pub(crate) const METRIC_PROTOCOL_ERRORS: &str = "ioswarm_redis_protocol_errors_total";
/// Counter: PUBLISH / SPUBLISH commands received from clients.
pub(crate) const METRIC_PUBLISHES: &str = "ioswarm_redis_publishes_total";
/// Counter: subscribers disconnected for exceeding their output buffer limit. Labels: `reason`
/// = `output_hard_limit` | `output_soft_limit`.
pub(crate) const METRIC_CLIENTS_KILLED: &str = "ioswarm_redis_clients_killed_total";

/// The publish hook that turns socket.io emitter traffic (`socket.io#…` and
/// `socket.io-request#…` channels) into Socket.IO traffic on `io`.
pub fn socketio_bridge(io: crate::socketio::Server) -> std::sync::Arc<dyn PublishHook> {
    std::sync::Arc::new(emitter::EmitterBridge::new(io))
}
