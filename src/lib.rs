//! ioswarm: a Socket.IO v5 / Engine.IO v4 server with an embedded
//! Redis-protocol broker, built to run as a cluster of nodes.
//!
//! Layout (the folders are the architecture):
//!
//! - [`engineio`]: Engine.IO v4 transport (polling, WebSocket, upgrade,
//!   heartbeat). Pure packet codec and session state machine, plus the HTTP
//!   and WebSocket drivers that carry out the state machine's decisions.
//! - [`socketio`]: Socket.IO v5 on top: packet codec, namespaces, sockets,
//!   acks, binary attachments, middleware, the public API.
//! - [`rooms`]: the per-namespace room registry (dashmap) and the
//!   [`rooms::Broadcast`] value executed by the local fan-out and forwarded
//!   between nodes.
//! - `resp`: the embedded Redis-protocol broker (RESP2/3 codec, pub/sub,
//!   the socket.io emitter bridge, the key-value commands).
//! - `cluster`: protobuf schemas (`proto/`) and their one conversion module,
//!   mutual-TLS credentials, the QUIC transport, gossip (failure detection and
//!   room interest), openraft membership and the replicated key-value store,
//!   and the runtime that forwards broadcasts and runs cluster-wide operations
//!   (`socketio::adapter` is its seam with the Socket.IO server).
//! - `http`: the listener shared by every HTTP endpoint.
//! - `admin`: the admin listener (`/metrics`, `/healthz`, the HTTP API).
//! - `config`, `shutdown`, `limits`, `metrics`: process plumbing for the binary.
//! - `app`: the built-in application the `ioswarm` binary runs.

pub mod admin;
pub mod app;
pub mod cluster;
pub mod config;
pub mod emitter;
pub mod engineio;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod resp;
pub mod rooms;
pub mod shutdown;
mod sid;
pub mod socketio;

pub use sid::Sid;
