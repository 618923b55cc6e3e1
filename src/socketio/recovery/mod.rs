//! Connection state recovery (socket.io ≥ 4.6 `connectionStateRecovery`).
//!
//! With a recovery window set, every socket gets a private id (`pid`, sent only to its client
//! in the CONNECT reply `{sid, pid}`) and every recoverable broadcast (an event without ack, not
//! volatile) carries an [`Offset`] as its last argument. A socket that leaves for a recoverable
//! reason is kept as a disconnected session; a client that reconnects within the window with
//! `{pid, offset}` in its CONNECT auth gets the same socket id, rooms and data back, then the
//! broadcasts it missed in order, and `socket.recovered` is true on both sides.
//!
//! - `state`: the pure core (the broadcast log, the sessions, what a client missed), on
//!   simulated time in its tests.
//! - this file: the node's [`Recovery`] around it (one lock that also orders the local fan-out,
//!   offsets, metrics), the private id, and the values that travel between nodes: a session
//!   another node recovers ([`RecoveredSession`]) and a session a draining node hands over
//!   ([`SessionRecord`]).

pub(crate) mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use serde_json::{Map, Value};

use super::adapter::Adapter;
use crate::rooms::{EncodedPacket, Offset};
use crate::sid::Sid;
pub(crate) use state::{Changes, RecoveryState, Relay, Tracking};

/// Connection state recovery settings (off unless set in [`super::SocketIoConfig::recovery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// How long after a disconnection the session can be recovered (socket.io's
    /// `maxDisconnectionDuration`).
    pub window: Duration,
    /// Most packets one recovery replays; a client that missed more gets a fresh session.
    pub max_packets: usize,
    /// Most bytes of packets one recovery replays; beyond, a fresh session.
    pub max_bytes: usize,
    /// Most disconnected sessions a node keeps; the one closest to expiry is dropped first.
    pub max_sessions: usize,
    /// Most bytes of broadcasts a node keeps logged for recoveries (packets, room names and
    /// per-entry overhead); the oldest are dropped first.
    pub log_bytes: usize,
    /// Most cluster-wide lookups in flight for sessions this node does not hold (each a request
    /// to every peer); a recovery CONNECT beyond it gets a fresh session at once. 0: never asks.
    pub lookups: usize,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(120),
            max_packets: 1024,
            max_bytes: 1024 * 1024,
            max_sessions: 100_000,
            log_bytes: 64 * 1024 * 1024,
            lookups: 64,
        }
    }
}

/// A packet a recovering client missed, with its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissedPacket {
    /// The offset it carries as its last argument.
    pub offset: Offset,
    /// The packet as it was sent.
    pub packet: EncodedPacket,
}

/// Why a session was not recovered (the client gets a fresh one): the `result` label of
/// `ioswarm_recovery_attempts_total` besides `recovered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// No node holds a session for this private id (never existed, already recovered, dropped
    /// for room, or held by a node that died).
    #[error("no session for this private id")]
    NotFound,
    /// The session's recovery window had passed.
    #[error("the recovery window passed")]
    Expired,
    /// The client's offset is unknown here or too old: what it missed cannot be told.
    #[error("unknown or evicted offset")]
    StaleOffset,
    /// The client missed more packets or bytes than one recovery replays.
    #[error("too many missed packets")]
    TooMany,
}

impl Refusal {
    /// Every refusal, in declaration order.
    pub const ALL: [Self; 4] = [Self::NotFound, Self::Expired, Self::StaleOffset, Self::TooMany];

    /// The `result` label value.
    pub const fn label(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Expired => "expired",
            Self::StaleOffset => "stale_offset",
            Self::TooMany => "too_many",
        }
    }
}

/// A session taken for a reconnecting client: what the socket gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    /// The socket id it had.
    pub sid: Sid,
    /// The secret half of its private id.
    pub secret: Sid,
    /// Namespace.
    pub nsp: String,
    /// Its rooms, its own id left out.
    pub rooms: Vec<String>,
    /// `socket.data`.
    pub data: Map<String, Value>,
    /// The packets the client missed, in order.
    pub missed: Vec<MissedPacket>,
    /// The offset the client sent (none: it had received no broadcast).
    pub client_offset: Option<Offset>,
    /// Taken by another node: per origin node, the newest offset the node that held it had
    /// logged (what arrived there later is relayed; what reached the new node first and is
    /// newer, the new node adds itself). Empty when taken on the same node.
    pub watermarks: Vec<Offset>,
}

/// A disconnected session as a draining node hands it to another one: everything needed to
/// recover it there, including the packets logged on the old node that may concern it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Socket id.
    pub sid: Sid,
    /// The secret half of its private id.
    pub secret: Sid,
    /// Namespace.
    pub nsp: String,
    /// Rooms, its own id left out.
    pub rooms: Vec<String>,
    /// `socket.data`.
    pub data: Map<String, Value>,
    /// What is left of its recovery window.
    pub expires_in: Duration,
    /// The last offset queued to the socket (or the one its client had, when none was).
    pub known: Option<Offset>,
    /// The offset its client had when the socket (re)connected.
    pub start: Option<Offset>,
    /// Whether a client still at `start` can be given everything it missed.
    pub start_valid: bool,
    /// Position of `packets[0]` in the socket's history since it connected (earlier ones were
    /// dropped: a client that needs them gets a fresh session).
    pub first_index: u64,
    /// Packets that may concern it, in order.
    pub packets: Vec<MissedPacket>,
    /// Position, in the same history, of the first packet not queued to the socket.
    pub resume_index: u64,
    /// Per origin node, the newest offset the old node had logged (see
    /// [`RecoveredSession::watermarks`]).
    pub watermarks: Vec<Offset>,
}

/// A packet one node sends another for a session that moved there (see `state`'s moved
/// sessions): a broadcast that concerns it and arrived after it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayedPacket {
    /// Namespace.
    pub nsp: String,
    /// The socket it is for.
    pub sid: Sid,
    /// The packet and its offset.
    pub packet: MissedPacket,
}

/// The private id a client gets: its socket id followed by a secret (40 characters). It never
/// leaves that client's connection.
pub(crate) fn pid_of(sid: &Sid, secret: &Sid) -> String {
    format!("{sid}{secret}")
}

/// The socket id and secret of a private id; `None` for anything else.
pub(crate) fn parse_pid(pid: &str) -> Option<(Sid, Sid)> {
    if pid.len() != 40 || !pid.is_ascii() {
        return None;
    }
    let (sid, secret) = pid.split_at(20);
    Some((Sid::parse(sid)?, Sid::parse(secret)?))
}

/// A CONNECT asking to recover: the private id and offset of its auth object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub(crate) sid: Sid,
    pub(crate) secret: Sid,
    pub(crate) pid: String,
    pub(crate) offset: Option<String>,
}

impl Attempt {
    /// The attempt `auth` makes (socket.io-client merges `{pid, offset}` into it), if any.
    pub(crate) fn from_auth(auth: &Value) -> Option<Self> {
        let pid = auth.get("pid")?.as_str()?;
        let (sid, secret) = parse_pid(pid)?;
        let offset = auth.get("offset").and_then(Value::as_str).map(str::to_owned);
        Some(Self { sid, secret, pid: pid.to_owned(), offset })
    }
}

/// Removes the private id and offset socket.io-client merges into a CONNECT's auth object.
pub(crate) fn strip(auth: &mut Value) {
    if let Value::Object(map) = auth {
        map.shift_remove("pid");
        map.shift_remove("offset");
    }
}

/// The offset a CONNECT's auth carries (what the client holds), if it parses.
pub(crate) fn client_offset(auth: &Value) -> Option<Offset> {
    auth.get("offset").and_then(Value::as_str).and_then(Offset::parse)
}

/// What a connected socket keeps for recovery.
#[derive(Debug)]
pub(crate) struct SocketRecovery {
    pub(crate) secret: Sid,
    pub(crate) recovered: bool,
    pub(crate) tracking: Mutex<Tracking>,
}

/// One node's recovery store and offsets. Its lock orders the local fan-out of recoverable
/// broadcasts with the sockets that join and leave, so that the log's order is the order every
/// socket was sent them.
#[derive(Debug)]
pub(crate) struct Recovery {
    state: Mutex<RecoveryState>,
    counter: AtomicU64,
    node_tag: u32,
    adapter: Arc<OnceLock<Arc<dyn Adapter>>>,
    /// Cluster-wide lookups that may be in flight ([`RecoveryConfig::lookups`]).
    lookups: Arc<tokio::sync::Semaphore>,
}

impl Recovery {
    pub(crate) fn new(
        config: &RecoveryConfig,
        retain: Duration,
        node_tag: u32,
        adapter: Arc<OnceLock<Arc<dyn Adapter>>>,
    ) -> Self {
        let limits = state::Limits {
            window: config.window,
            retain: config.window + retain,
            max_packets: config.max_packets,
            max_bytes: config.max_bytes,
            max_sessions: config.max_sessions,
            log_bytes: config.log_bytes,
        };
        // Offsets start at the node's start time in microseconds, never reused by a restart.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Self {
            state: Mutex::new(RecoveryState::new(limits)),
            counter: AtomicU64::new(start.max(1)),
            node_tag,
            adapter,
            lookups: Arc::new(tokio::sync::Semaphore::new(config.lookups)),
        }
    }

    /// A place for one cluster-wide lookup, held until it is answered; `None` when
    /// [`RecoveryConfig::lookups`] are already in flight (counted as a `busy` attempt).
    pub(crate) fn lookup_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = self.lookups.clone().try_acquire_owned().ok();
        if slot.is_none() {
            metrics::counter!(crate::metrics::RECOVERY_ATTEMPTS, crate::metrics::label::RESULT => BUSY).increment(1);
        }
        slot
    }

    /// A fresh offset for a broadcast built on this node.
    pub(crate) fn mint(&self) -> Offset {
        Offset { origin: self.node_tag, counter: self.counter.fetch_add(1, Ordering::Relaxed) }
    }

    /// The node's tag (socket ids it issues carry it).
    pub(crate) fn node_tag(&self) -> u32 {
        self.node_tag
    }

    /// The store, locked: held across a recoverable broadcast's fan-out and across a socket's
    /// arrival or departure. Never taken while a client's own lock is held.
    pub(crate) fn lock(&self) -> MutexGuard<'_, RecoveryState> {
        self.state.lock()
    }

    /// Tells the cluster that kept sessions now hold (or no longer hold) these rooms, and
    /// records the gauges. Call after releasing the lock.
    pub(crate) fn changed(&self, changes: Changes) {
        if let Some(adapter) = self.adapter.get() {
            for (nsp, room) in changes {
                adapter.room_changed(&nsp, &room);
            }
        }
    }

    /// Sends each relay to its node (after releasing the lock).
    pub(crate) fn relay(&self, relays: Vec<Relay>) {
        if relays.is_empty() {
            return;
        }
        let Some(adapter) = self.adapter.get() else { return };
        for Relay { to, nsp, sid, packet } in relays {
            adapter.relay(to, RelayedPacket { nsp, sid, packet });
        }
    }

    /// Records the gauges from `state` (under the lock).
    pub(crate) fn gauges(state: &RecoveryState) {
        metrics::gauge!(crate::metrics::RECOVERY_SESSIONS).set(state.session_count() as f64);
        metrics::gauge!(crate::metrics::RECOVERY_SESSION_BYTES).set(state.session_bytes() as f64);
        metrics::gauge!(crate::metrics::RECOVERY_LOG_BYTES).set(state.log_bytes() as f64);
    }

    /// Whether kept sessions hold `room` of `nsp`.
    pub(crate) fn has_interest(&self, nsp: &str, room: &str) -> bool {
        self.state.lock().has_interest(nsp, room)
    }
}

/// Counts one recovery attempt of a client connected here.
/// The `result` of an attempt not looked up in the cluster: [`RecoveryConfig::lookups`] were in
/// flight (the client got a fresh session).
pub(crate) const BUSY: &str = "busy";

pub(crate) fn count_attempt(result: Result<(), Refusal>) {
    let label = match result {
        Ok(()) => "recovered",
        Err(refusal) => refusal.label(),
    };
    metrics::counter!(crate::metrics::RECOVERY_ATTEMPTS, crate::metrics::label::RESULT => label).increment(1);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn private_ids_carry_the_socket_id_and_a_secret() {
        let (sid, secret) = (Sid::with_tag(7), Sid::random());
        let pid = pid_of(&sid, &secret);
        assert_eq!(pid.len(), 40);
        assert_eq!(parse_pid(&pid), Some((sid, secret)));
        for bad in ["", "short", &pid[..39], &format!("{pid}x"), &format!("{}!", &pid[..39]), "é".repeat(20).as_str()]
        {
            assert_eq!(parse_pid(bad), None, "{bad:?}");
        }
        let auth = serde_json::json!({"token": "t", "pid": pid, "offset": "3~1f"});
        let attempt = Attempt::from_auth(&auth).unwrap();
        assert_eq!((attempt.sid, attempt.secret, attempt.offset.as_deref()), (sid, secret, Some("3~1f")));
        assert_eq!(client_offset(&auth), Some(Offset { origin: 3, counter: 0x1f }));
        assert_eq!(Attempt::from_auth(&serde_json::json!({"pid": 42})), None);
        let mut stripped = auth.clone();
        strip(&mut stripped);
        assert_eq!(stripped, serde_json::json!({"token": "t"}));
        assert_eq!(Attempt::from_auth(&serde_json::json!({"offset": "3~1f"})), None);
    }

    #[test]
    fn the_offset_is_the_last_argument_of_text_and_binary_events() {
        use crate::socketio::Payload;
        use crate::socketio::socket::encode_event_at;
        let offset = Some(Offset { origin: 2, counter: 0xab });
        let text = encode_event_at("/", None, "news", &Payload::json(vec![serde_json::json!(1)]), offset);
        assert_eq!(&text.text[..], b"42[\"news\",1,\"2~ab\"]");
        let binary = encode_event_at("/chat", None, "img", &Payload::empty().binary(vec![7u8]), offset);
        assert_eq!(&binary.text[..], b"451-/chat,[\"img\",{\"_placeholder\":true,\"num\":0},\"2~ab\"]");
        assert_eq!(binary.attachments.len(), 1);
        let plain = encode_event_at("/", None, "news", &Payload::empty(), None);
        assert_eq!(&plain.text[..], b"42[\"news\"]");
    }
}
