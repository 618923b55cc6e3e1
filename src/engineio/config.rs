//! Engine.IO server settings.

use std::time::Duration;

use super::session::{QueueLimits, Timings};

/// Cross-origin settings for the polling transport.
#[derive(Debug, Clone, Default)]
pub enum Cors {
    /// No CORS headers are sent.
    #[default]
    Disabled,
    /// `Access-Control-Allow-Origin: *`.
    Any,
    /// Only these origins are echoed back (with credentials allowed).
    Origins(Vec<String>),
}

/// Settings of an Engine.IO endpoint. Defaults match engine.io 6.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Delay between server pings.
    pub ping_interval: Duration,
    /// How long a pong may take before the session is closed.
    pub ping_timeout: Duration,
    /// How long an upgrade from polling to WebSocket may take.
    pub upgrade_timeout: Duration,
    /// Largest message or polling body accepted, in bytes (larger: HTTP 413 or close).
    pub max_payload: usize,
    /// Most packets queued for one client before it is disconnected.
    pub send_queue_max_packets: usize,
    /// Most bytes queued for one client before it is disconnected.
    pub send_queue_max_bytes: usize,
    /// Volatile packets are dropped for a client with more than this many bytes queued.
    pub volatile_drop_bytes: usize,
    /// Most concurrent Engine.IO sessions (0: unlimited).
    pub max_sessions: usize,
    /// Whether polling sessions may upgrade to WebSocket.
    pub allow_upgrades: bool,
    /// CORS headers for polling requests.
    pub cors: Cors,
    /// Whether Engine.IO protocol 3 clients (socket.io 1.x / 2.x, `EIO=3`) may connect;
    /// otherwise their handshake gets error 5 `Unsupported protocol version` (engine.io's
    /// `allowEIO3`, off by default there too).
    pub allow_eio3: bool,
    /// 24-bit tag written into every session id, telling which node holds the session (a
    /// protocol 3 socket of `/` takes the session id as its own id; other nodes relay the
    /// session's requests there). The Socket.IO server sets it from its own node tag.
    pub node_tag: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            upgrade_timeout: Duration::from_millis(10_000),
            max_payload: 1_000_000,
            send_queue_max_packets: 1024,
            send_queue_max_bytes: 4 << 20,
            volatile_drop_bytes: 64 << 10,
            max_sessions: 0,
            allow_upgrades: true,
            cors: Cors::Disabled,
            allow_eio3: false,
            node_tag: 0,
        }
    }
}

impl EngineConfig {
    pub(crate) fn timings(&self) -> Timings {
        Timings {
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            upgrade_timeout: self.upgrade_timeout,
        }
    }

    pub(crate) fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_packets: self.send_queue_max_packets,
            max_bytes: self.send_queue_max_bytes,
            volatile_drop_bytes: self.volatile_drop_bytes,
        }
    }
}
