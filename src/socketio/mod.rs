//! Socket.IO v5 on top of Engine.IO.
//!
//! - [`packet`](self): the pure packet codec and binary reassembly.
//! - `server`: the [`Server`] and the Engine.IO handler that decodes packets
//!   and routes them to namespaces (CONNECT, DISCONNECT, events, acks).
//! - `namespace`: handlers, middleware, the socket table, room registry and
//!   the local fan-out.
//! - `socket`: one client's membership of one namespace: emit, acks, rooms.
//! - `operator`: the broadcast builder (`to`, `except`, `volatile`…).
//! - `runner`: the one local runner of join/leave/disconnect/fetch on the sockets a
//!   [`Selector`] picks (used by the operator, the emitter bridge and the cluster runtime).
//! - `eio3`: what differs for socket.io 1.x / 2.x clients (Engine.IO 3): the implicit connect
//!   to `/`, auth from a query string, CONNECT replies and refusals without `{sid}` / objects.
//! - `reason`: why a socket left, a CONNECT was refused, a packet was dropped
//!   (typed down to the metrics' `reason` labels).
//! - `recovery`: connection state recovery: the log of recoverable broadcasts and the
//!   disconnected sessions (a pure core in `recovery/state.rs`), private ids, offsets.

pub mod adapter;
mod config;
mod eio3;
mod namespace;
mod operator;
pub(crate) mod packet;
mod payload;
pub(crate) mod reason;
pub(crate) mod recovery;
mod runner;
mod server;
mod socket;

pub use adapter::{AckedBroadcast, Adapter, RemoteOp, RemoteOutcome, RemoteSocket};
pub use config::{NamespacePolicy, SocketIoConfig};
pub use namespace::{ConnectError, ConnectGrant, ConnectRequest, Event, Namespace};
pub use operator::{AckResults, BroadcastOperator, ClusterCount, FetchedSockets};
pub use payload::Payload;
pub use reason::DisconnectReason;
pub use recovery::{MissedPacket, RecoveredSession, RecoveryConfig, Refusal, RelayedPacket, SessionRecord};
pub use runner::SocketsOp;
pub use server::{ClientState, Server};
pub use socket::{AckError, AckSender, SendError, Socket};

/// The selection of sockets every broadcast and operation makes (defined with the rooms).
pub use crate::rooms::Selector;
