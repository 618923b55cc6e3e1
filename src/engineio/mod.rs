//! Engine.IO v4: the transport layer under Socket.IO.
//!
//! - [`packet`]: packet and long-polling payload codec (pure).
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

mod config;
mod connection;
mod driver;
mod endpoint;
pub(crate) mod packet;
mod polling;
mod response;
pub(crate) mod session;
mod websocket;
pub(crate) mod wsread;

pub use config::{Cors, EngineConfig};
pub(crate) use connection::flush_spread;
pub use connection::{Connection, Handshake, Message};
pub use endpoint::{Engine, Handler, RequestKind};
pub(crate) use response::{Body, parse_query};
pub use session::CloseReason;
