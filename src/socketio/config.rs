//! Socket.IO server settings.

use std::time::Duration;

use super::recovery::RecoveryConfig;
use crate::engineio::EngineConfig;

/// Which namespaces clients may connect to.
#[derive(Debug, Clone, Default)]
pub enum NamespacePolicy {
    /// Only namespaces created with [`super::Server::of`] (socket.io's default).
    #[default]
    Registered,
    /// Any namespace; unknown ones are created on first connect.
    Any,
    /// Registered namespaces plus these names, created on first connect.
    Allow(Vec<String>),
}

/// Settings of a Socket.IO server.
#[derive(Debug, Clone)]
pub struct SocketIoConfig {
    /// The Engine.IO layer's settings.
    pub engine: EngineConfig,
    /// A client that has not joined any namespace by then is disconnected.
    pub connect_timeout: Duration,
    /// Most binary attachments in one packet.
    pub max_attachments: usize,
    /// Most rooms one socket may join, not counting the room of its own id; `Socket::join` refuses more.
    pub max_rooms_per_socket: usize,
    /// Most server→client acks one socket may have outstanding.
    pub max_pending_acks: usize,
    /// How long an emit with ack waits for the answers when the caller gives no timeout
    /// ([`super::BroadcastOperator::emit_with_ack`], [`super::Socket::emit_with_ack`]).
    pub ack_timeout: Duration,
    /// Which namespaces are accepted.
    pub namespaces: NamespacePolicy,
    /// Most namespaces that may exist; clients asking for more get "Invalid namespace".
    pub max_namespaces: usize,
    /// 24-bit tag written into every socket id, telling which node owns it.
    pub node_tag: u32,
    /// Connection state recovery; `None` (the default) keeps it off.
    pub recovery: Option<RecoveryConfig>,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            connect_timeout: Duration::from_millis(45_000),
            max_attachments: 10,
            max_rooms_per_socket: 1024,
            max_pending_acks: 1024,
            ack_timeout: Duration::from_millis(10_000),
            namespaces: NamespacePolicy::Registered,
            max_namespaces: 1024,
            node_tag: 0,
            recovery: None,
        }
    }
}
