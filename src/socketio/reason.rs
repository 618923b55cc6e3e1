//! Why a socket left its namespace, why a CONNECT was refused, why a packet
//! was not delivered: typed from where it happens to the handlers and the
//! metrics' `reason` labels (declared in [`crate::metrics::LABELS`]).

use crate::engineio::CloseReason;

/// Why a socket left its namespace. [`DisconnectReason::as_str`] is the
/// reason socket.io gives its `disconnect` handlers;
/// [`DisconnectReason::label`] the `reason` label of
/// `ioswarm_socketio_disconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// The client closed the connection (or its Engine.IO close packet).
    TransportClose,
    /// The connection failed.
    TransportError,
    /// The client stopped answering pings.
    PingTimeout,
    /// The client sent something that does not parse.
    ParseError,
    /// The client fell too far behind: its send queue overflowed.
    Overflow,
    /// The server closed the whole connection.
    ForcedClose,
    /// The node is shutting down.
    ServerShuttingDown,
    /// The client left the namespace (`41`).
    ClientNamespaceDisconnect,
    /// The server disconnected the socket from the namespace.
    ServerNamespaceDisconnect,
}

impl DisconnectReason {
    /// Every reason, in declaration order.
    pub const ALL: [Self; 9] = [
        Self::TransportClose,
        Self::TransportError,
        Self::PingTimeout,
        Self::ParseError,
        Self::Overflow,
        Self::ForcedClose,
        Self::ServerShuttingDown,
        Self::ClientNamespaceDisconnect,
        Self::ServerNamespaceDisconnect,
    ];

    /// The reason as socket.io spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::PingTimeout => "ping timeout",
            Self::ParseError => "parse error",
            Self::Overflow => "send buffer overflow",
            Self::ForcedClose => "forced close",
            Self::ServerShuttingDown => "server shutting down",
            Self::ClientNamespaceDisconnect => "client namespace disconnect",
            Self::ServerNamespaceDisconnect => "server namespace disconnect",
        }
    }

    /// Whether a socket that left for this reason is kept for connection state recovery (the
    /// connection died or the server went away; not when the client or the server chose to end
    /// the socket, nor for a client that broke the protocol or fell too far behind).
    pub const fn is_recoverable(self) -> bool {
        matches!(
            self,
            Self::TransportClose
                | Self::TransportError
                | Self::PingTimeout
                | Self::ForcedClose
                | Self::ServerShuttingDown
        )
    }

    /// The `reason` label value of `ioswarm_socketio_disconnects_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::TransportClose => "transport_close",
            Self::TransportError => "transport_error",
            Self::PingTimeout => "ping_timeout",
            Self::ParseError => "parse_error",
            Self::Overflow => "overflow",
            Self::ForcedClose => "forced_close",
            Self::ServerShuttingDown => "shutdown",
            Self::ClientNamespaceDisconnect => "client_namespace_disconnect",
            Self::ServerNamespaceDisconnect => "server_namespace_disconnect",
        }
    }
}

impl From<CloseReason> for DisconnectReason {
    fn from(reason: CloseReason) -> Self {
        match reason {
            CloseReason::TransportClose => Self::TransportClose,
            CloseReason::TransportError => Self::TransportError,
            CloseReason::PingTimeout => Self::PingTimeout,
            CloseReason::ParseError => Self::ParseError,
            CloseReason::Overflow => Self::Overflow,
            CloseReason::ServerClose => Self::ForcedClose,
            CloseReason::Shutdown => Self::ServerShuttingDown,
        }
    }
}

/// Why a namespace CONNECT was refused: the `reason` label of
/// `ioswarm_socketio_connect_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ConnectErrorReason {
    /// The namespace does not exist and may not be created.
    InvalidNamespace,
    /// A middleware refused the client.
    Middleware,
    /// No CONNECT arrived within the connect timeout.
    Timeout,
}

impl ConnectErrorReason {
    /// Every reason, in declaration order.
    pub(crate) const ALL: [Self; 3] = [Self::InvalidNamespace, Self::Middleware, Self::Timeout];

    /// The `reason` label value.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::InvalidNamespace => "invalid_namespace",
            Self::Middleware => "middleware",
            Self::Timeout => "timeout",
        }
    }
}

/// Why a packet was not queued for a client that stays connected: the
/// `reason` label of `ioswarm_socketio_packets_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    /// A volatile packet for a client that is behind.
    Volatile,
    /// A packet larger than a whole send queue.
    TooLarge,
}

impl DropReason {
    /// Every reason, in declaration order.
    pub(crate) const ALL: [Self; 2] = [Self::Volatile, Self::TooLarge];

    /// The `reason` label value.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Volatile => "volatile",
            Self::TooLarge => "too_large",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_reasons_are_the_strings_socket_io_uses() {
        let strings: Vec<_> = DisconnectReason::ALL.iter().map(|r| r.as_str()).collect();
        for upstream in [
            "transport close",
            "transport error",
            "ping timeout",
            "parse error",
            "forced close",
            "server shutting down",
            "client namespace disconnect",
            "server namespace disconnect",
        ] {
            assert!(strings.contains(&upstream), "{upstream}");
        }
        // Every Engine.IO close reaches the handlers as the same socket.io reason.
        for close in CloseReason::ALL {
            assert_eq!(DisconnectReason::from(close).as_str(), close.as_str());
        }
    }
}
