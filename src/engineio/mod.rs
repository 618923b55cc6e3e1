//! Engine.IO v4 (and v3, for socket.io 1.x / 2.x clients): the transport layer under Socket.IO.
//!
//! - [`packet`]: packet and long-polling payload codec (pure).
//! - `packet_v3`: the framing of Engine.IO protocol 3 (socket.io 1.x / 2.x clients; pure).
//! - `protocol`: [`Protocol`], the revision a session speaks, and the framing its transports use.
//! - [`session`]: the session state machine (pure, simulated time in tests).
//! - `connection`: [`Connection`], one session as its transports and the
//!   application share it (send queue, close, wake-ups).
//! - `endpoint`: [`Engine`], the routing of each HTTP request: handshakes,
//!   requests of an existing session, WebSockets joining one.
//! - `polling`: the long-polling GET and POST of a session.
//! - `driver`: the per-session task (timers, WebSocket writes, teardown).
//! - `websocket`: the WebSocket reader and batched writer.
//! - `wsread`: client frames into messages without a read buffer per connection.
//! - `response`: error codes, HTTP responses, CORS.
//! - [`relay`]: requests of sessions another node holds (no sticky sessions needed): the
//!   [`Relay`] seam the cluster implements, and the owner's side of relayed requests.

mod config;
mod connection;
mod driver;
mod endpoint;
pub(crate) mod packet;
pub(crate) mod packet_v3;
mod polling;
mod protocol;
pub mod relay;
mod response;
pub(crate) mod session;
mod websocket;
pub(crate) mod wsread;

pub use config::{Cors, EngineConfig};
pub(crate) use connection::flush_spread;
pub use connection::{Connection, Handshake, Message};
pub use endpoint::{Engine, Handler, RequestKind};
pub use protocol::Protocol;
pub use relay::{
    Relay, RelayError, RelayFuture, RelayKind, RelayRequest, RelayResponse, RelayedUpgrade, Tunnel, Tunnelled,
};
pub(crate) use response::{Body, parse_query};
pub use session::CloseReason;
