//! Engine.IO v4: the transport layer under Socket.IO.
//!
//! - [`packet`]: packet and long-polling payload codec (pure).
//! - [`session`]: the session state machine (pure, simulated time in tests).
//! - [`server`]: HTTP routing, handshakes, polling requests, the session driver.
//! - [`websocket`]: the WebSocket reader and batched writer.

mod config;
pub(crate) mod packet;
mod server;
pub(crate) mod session;
mod websocket;

pub use config::{Cors, EngineConfig};
pub(crate) use server::{Body, parse_query};
pub use server::{Connection, Engine, Handler, Handshake, Message, RequestKind};
pub use session::CloseReason;
