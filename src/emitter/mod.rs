//! The socket.io emitter bridge: Socket.IO emitter traffic on the Redis ingress.
//!
//! Backends push events with a socket.io Redis emitter (`@socket.io/redis-emitter` and its ports
//! in other languages): they PUBLISH msgpack broadcasts on `socket.io#<nsp>#[<room>#]` and JSON
//! requests (socketsJoin, socketsLeave, disconnectSockets, serverSideEmit) on
//! `socket.io-request#<nsp>#`; the emitters of socket.io 1.x PUBLISH msgpack `[packet, opts]` on
//! `socket.io#emitter`. This module turns those messages into Socket.IO actions. It sits
//! above both [`crate::resp`] (whose [`PublishHook`] it implements) and [`crate::socketio`]
//! (whose [`Server`] it drives); neither of them knows it exists.
//!
//! Layout, one concern per file:
//!
//! - `channel`: what a channel name says (`<key>#<nsp>#[<room>#]`, `<key>-request#<nsp>#`,
//!   `<key>#emitter`).
//! - `msgpack`: the tolerant msgpack reader: borrows binary values from the message, bounds its
//!   depth and allocations, reads the dialect of old PHP emitters.
//! - `decode`: pure decoding of a channel and a payload into a typed broadcast or request.
//! - `execute`: running a decoded broadcast or request on the local [`Server`].
//! - here: [`bridge`], the [`PublishHook`] the binary installs on its broker. Whatever it cannot
//!   decode is logged at debug level and counted in `ioswarm_emitter_messages_total`; it
//!   never fails the PUBLISH and never panics.

mod channel;
mod decode;
mod execute;
mod msgpack;

use std::sync::Arc;

use bytes::Bytes;

pub(crate) use channel::{DEFAULT_KEY, EmitterChannel, classify};
pub(crate) use decode::{MAX_ATTACHMENTS, decode_broadcast, decode_request};
pub(crate) use msgpack::check_against_rmpv;

use crate::resp::PublishHook;
use crate::socketio::Server;

/// The publish hook that turns socket.io emitter traffic (`socket.io#…` and
/// `socket.io-request#…` channels) into Socket.IO traffic on `io`.
pub fn bridge(io: Server) -> Arc<dyn PublishHook> {
    Arc::new(EmitterBridge::new(io))
}

/// Counter of messages seen on emitter channels ([`crate::metrics::EMITTER_MESSAGES`]), labelled [`RESULT_LABEL`] = `ok` (executed),
/// `invalid` (could not be decoded) or `ignored` (well-formed but not for us: unsupported packet
/// or request type, our own uid, namespace mismatch).
/// Label key of [`crate::metrics::EMITTER_MESSAGES`].
pub(crate) const RESULT_LABEL: &str = "result";

/// Executes emitter traffic published on this node's Redis ingress on the local socket.io
/// [`Server`]: broadcasts become `io.of(nsp).to(…).except(…).emit(…)`, requests become
/// joins, leaves, disconnects and server-side events.
#[derive(Debug, Clone)]
pub(crate) struct EmitterBridge {
    io: Server,
    /// Channel prefix (`key` option of the emitters).
    key: String,
    /// This node's uid on request channels: requests carrying it are our own and ignored.
    uid: String,
}

/// How one published message was handled (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not an emitter channel: ordinary pub/sub, nothing to do or count.
    NotEmitter,
    /// Decoded and executed (possibly on zero sockets).
    Ok,
    /// Not decodable.
    Invalid,
    /// Well-formed, deliberately not executed.
    Ignored,
}

impl Outcome {
    /// The `result` label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::NotEmitter => "none",
            Self::Ok => "ok",
            Self::Invalid => "invalid",
            Self::Ignored => "ignored",
        }
    }
}

impl EmitterBridge {
    /// A bridge to `io` for emitters using the default `socket.io` key.
    pub(crate) fn new(io: Server) -> Self {
        Self::with_key(io, DEFAULT_KEY)
    }

    /// A bridge for emitters configured with another `key`.
    pub(crate) fn with_key(io: Server, key: &str) -> Self {
        let uid = format!("ioswarm-{:016x}", rand::random::<u64>());
        Self { io, key: key.to_owned(), uid }
    }

    /// Handles one PUBLISH and says how it went (without recording the metric).
    pub(crate) fn handle(&self, channel: &[u8], message: &Bytes) -> Outcome {
        let result = match classify(&self.key, channel) {
            None => return Outcome::NotEmitter,
            Some(EmitterChannel::Broadcast { nsp, room }) => {
                decode::broadcast_from(nsp, room, message).map(|b| execute::broadcast(&self.io, b))
            }
            Some(EmitterChannel::Legacy { key }) => decode::legacy_broadcast_from(message).map(|b| {
                tracing::trace!(key, "socket.io 1.x emitter broadcast");
                execute::broadcast(&self.io, b)
            }),
            Some(EmitterChannel::Request { nsp }) => decode::request_from(nsp, message).map(|r| {
                if r.uid.as_deref() == Some(self.uid.as_str()) {
                    return Outcome::Ignored;
                }
                execute::request(&self.io, r)
            }),
        };
        match result {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::debug!(
                    channel = %String::from_utf8_lossy(channel),
                    len = message.len(),
                    error = %err,
                    "emitter message not executed"
                );
                if err.is_ignored() { Outcome::Ignored } else { Outcome::Invalid }
            }
        }
    }
}

impl PublishHook for EmitterBridge {
    fn on_publish(&self, channel: &[u8], message: &Bytes) {
        let outcome = self.handle(channel, message);
        if outcome != Outcome::NotEmitter {
            metrics::counter!(crate::metrics::EMITTER_MESSAGES, RESULT_LABEL => outcome.as_str()).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::decode::tests::{EMIT_ALL, PHP_V1_TEXT, hex, map, message, s};
    use super::*;
    use crate::socketio::Payload;

    #[tokio::test]
    async fn bridge_outcomes() {
        let io = Server::new(crate::socketio::SocketIoConfig::default());
        io.of("/");
        let bridge = EmitterBridge::new(io);
        let ok = |ch: &str, payload: &[u8]| bridge.handle(ch.as_bytes(), &Bytes::copy_from_slice(payload));
        assert_eq!(ok("news", b"hello"), Outcome::NotEmitter);
        assert_eq!(ok("socket.io#/#", &hex(EMIT_ALL)), Outcome::Ok);
        assert_eq!(ok("socket.io#/nowhere#", &message(vec![s("ev")], map(vec![]))), Outcome::Ignored);
        assert_eq!(ok("socket.io#/#", b"garbage"), Outcome::Invalid);
        // socket.io 1.x emitters, whatever their key.
        assert_eq!(ok("socket.io#emitter", &hex(PHP_V1_TEXT)), Outcome::Ok);
        assert_eq!(ok("myapp#emitter", &hex(PHP_V1_TEXT)), Outcome::Ok);
        assert_eq!(ok("socket.io#emitter", b"garbage"), Outcome::Invalid);
        assert_eq!(ok("socket.io#emitter", &hex(EMIT_ALL)), Outcome::Ok);
        assert_eq!(
            ok("socket.io-request#/#", br#"{"type":2,"opts":{"rooms":[],"except":[]},"rooms":["a"]}"#),
            Outcome::Ok
        );
        assert_eq!(ok("socket.io-request#/#", br#"{"type":1,"uid":"x"}"#), Outcome::Ignored);
        let own = format!(r#"{{"uid":"{}","type":6,"data":["e"]}}"#, bridge.uid);
        assert_eq!(ok("socket.io-request#/#", own.as_bytes()), Outcome::Ignored);
        assert_eq!(ok("socket.io-request#/#", b"{nope"), Outcome::Invalid);
    }

    #[tokio::test]
    async fn bridge_server_side_emit_reaches_handlers() {
        {
            let io = Server::new(crate::socketio::SocketIoConfig::default());
            let ns = io.of("/");
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            ns.on_server_side("hello", move |p: Payload| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(p);
                }
            });
            let bridge = EmitterBridge::new(io);
            let outcome = bridge.handle(
                b"socket.io-request#/#",
                &Bytes::from_static(br#"{"uid":"emitter","type":6,"data":["hello","world",1]}"#),
            );
            assert_eq!(outcome, Outcome::Ok);
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("handler ran")
                .expect("payload");
            assert_eq!(got.args, vec![json!("world"), json!(1)]);
        }
    }
}
