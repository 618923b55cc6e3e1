//! One client's membership of one namespace.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::oneshot;

use super::namespace::Namespace;
use super::operator::BroadcastOperator;
use super::packet::{self, Packet, PacketKind};
use super::payload::Payload;
use super::reason::{DisconnectReason, DropReason};
use super::recovery::{self, SocketRecovery, Tracking};
use super::server::ClientState;
use crate::engineio::packet::Frame;
use crate::engineio::session::Enqueued;
use crate::engineio::{Connection, Handshake};
use crate::rooms::{EncodedPacket, Offset, Room};
use crate::sid::Sid;

/// Why a packet could not be queued for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The client is gone (or was just disconnected for falling too far behind).
    #[error("the client is disconnected")]
    Disconnected,
    /// A volatile packet was dropped because the client is behind.
    #[error("volatile packet dropped: the client is behind")]
    Dropped,
    /// The packet is larger than a client's whole send queue.
    #[error("packet larger than the send queue")]
    TooLarge,
}

/// Why an emit-with-ack produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No answer within the timeout.
    #[error("no acknowledgement within the timeout")]
    Timeout,
    /// The client disconnected first, or could not be sent the packet.
    #[error("the client is disconnected")]
    Disconnected,
    /// Too many acknowledgements are already outstanding for this socket.
    #[error("too many acknowledgements outstanding")]
    TooMany,
}

/// A connected socket. Cheap to clone.
#[derive(Clone)]
pub struct Socket(Arc<SocketInner>);

struct SocketInner {
    sid: Sid,
    ns: Namespace,
    conn: Arc<Connection<ClientState>>,
    auth: Value,
    data: Mutex<serde_json::Map<String, Value>>,
    rooms: Mutex<Vec<Room>>,
    acks: Mutex<AckTable>,
    /// With connection state recovery: the private id's secret and what was queued.
    recovery: Option<SocketRecovery>,
}

#[derive(Default)]
struct AckTable {
    next_id: u64,
    pending: HashMap<u64, oneshot::Sender<Payload>>,
    closed: bool,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").field("id", &self.0.sid).field("nsp", &self.0.ns.name()).finish_non_exhaustive()
    }
}

impl Socket {
    pub(crate) fn new(
        ns: &Namespace,
        conn: Arc<Connection<ClientState>>,
        auth: Value,
        data: serde_json::Map<String, Value>,
        sid: Sid,
        recovery: Option<SocketRecovery>,
    ) -> Self {
        Self(Arc::new(SocketInner {
            sid,
            ns: ns.clone(),
            conn,
            auth,
            data: Mutex::new(data),
            rooms: Mutex::new(Vec::new()),
            acks: Mutex::new(AckTable::default()),
            recovery,
        }))
    }

    /// Whether this socket is a recovered session (connection state recovery): same id, rooms
    /// and data as before its client's disconnection, the missed packets replayed.
    pub fn recovered(&self) -> bool {
        self.0.recovery.as_ref().is_some_and(|r| r.recovered)
    }

    /// The private id its client recovers it with (only with connection state recovery).
    pub(crate) fn pid(&self) -> Option<String> {
        self.0.recovery.as_ref().map(|r| recovery::pid_of(&self.0.sid, &r.secret))
    }

    /// The secret half of its private id.
    pub(crate) fn secret(&self) -> Option<Sid> {
        self.0.recovery.as_ref().map(|r| r.secret)
    }

    /// What was queued to it, for recovery (held under the recovery lock).
    pub(crate) fn tracking(&self) -> Option<&Mutex<Tracking>> {
        self.0.recovery.as_ref().map(|r| &r.tracking)
    }

    /// Whether its id names another node (a session recovered here from elsewhere): the other
    /// nodes then reach its own room through this node's room interest, not through the id.
    pub(crate) fn is_foreign(&self) -> bool {
        self.0.ns.recovery().is_some_and(|r| r.node_tag() != self.0.sid.tag())
    }

    /// Its client reconnected elsewhere before this node noticed the old connection die: the
    /// socket leaves as if its transport closed (and is kept for that client to recover), then
    /// the old connection is closed.
    pub(crate) fn take_over(&self) {
        if let Some(state) = self.0.conn.state() {
            state.remove_socket(self);
        }
        self.on_disconnected(DisconnectReason::TransportClose);
        self.0.conn.close();
    }

    /// The socket id (also the name of the socket's own room).
    pub fn id(&self) -> &str {
        self.0.sid.as_str()
    }

    pub(crate) fn sid(&self) -> Sid {
        self.0.sid
    }

    /// The namespace name.
    pub fn nsp(&self) -> &str {
        self.0.ns.name()
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.0.ns
    }

    /// The `auth` object sent with CONNECT (`{}` when absent).
    pub fn auth(&self) -> &Value {
        &self.0.auth
    }

    /// `socket.data`: what the CONNECT middleware granted (e.g. a JWT's claims), `{}` when
    /// nothing. A copy.
    pub fn data(&self) -> Value {
        Value::Object(self.0.data.lock().clone())
    }

    /// Replaces `socket.data`.
    pub fn set_data(&self, data: serde_json::Map<String, Value>) {
        *self.0.data.lock() = data;
    }

    /// Merges `data` into `socket.data` (top-level keys replace existing ones).
    pub fn merge_data(&self, data: serde_json::Map<String, Value>) {
        self.0.data.lock().extend(data);
    }

    /// The HTTP request that opened the underlying connection.
    pub fn handshake(&self) -> &Handshake {
        self.0.conn.handshake()
    }

    /// The transport in use (`polling` or `websocket`).
    pub fn transport(&self) -> &'static str {
        self.0.conn.transport()
    }

    /// The rooms this socket is in, its own id first.
    pub fn rooms(&self) -> Vec<String> {
        let mut out = vec![self.id().to_owned()];
        out.extend(self.0.rooms.lock().iter().map(|r| r.to_string()));
        out
    }

    /// Joins `room`. Returns false if the socket is already in the most rooms allowed.
    pub fn join(&self, room: &str) -> bool {
        let mut rooms = self.0.rooms.lock();
        if rooms.iter().any(|r| &**r == room) || room == self.id() {
            return true;
        }
        // A socket that has left the namespace joins nothing (its rooms were
        // already emptied; a late join would keep it alive in the registry).
        if self.0.acks.lock().closed {
            return false;
        }
        if rooms.len() >= self.0.ns.max_rooms_per_socket() {
            return false;
        }
        let (name, created) = self.0.ns.registry().join(room, self.0.sid, self.clone());
        if created {
            self.0.ns.room_changed(room);
        }
        rooms.push(name);
        true
    }

    /// Leaves `room`.
    pub fn leave(&self, room: &str) {
        let mut rooms = self.0.rooms.lock();
        if let Some(pos) = rooms.iter().position(|r| &**r == room) {
            rooms.swap_remove(pos);
            if self.0.ns.registry().leave(room, self.0.sid) {
                self.0.ns.room_changed(room);
            }
        }
    }

    /// Leaves every room.
    pub fn leave_all(&self) {
        let rooms = std::mem::take(&mut *self.0.rooms.lock());
        for room in rooms {
            if self.0.ns.registry().leave(&room, self.0.sid) {
                self.0.ns.room_changed(&room);
            }
        }
    }

    /// Emits `event` to this client.
    pub fn emit(&self, event: &str, payload: impl Into<Payload>) -> Result<(), SendError> {
        let packet = encode_event(self.nsp(), None, event, &payload.into());
        match self.send_frames(&packet.frames(), false) {
            Enqueued::Queued => Ok(()),
            Enqueued::DroppedVolatile => Err(SendError::Dropped),
            Enqueued::TooLarge => Err(SendError::TooLarge),
            Enqueued::Closed => Err(SendError::Disconnected),
        }
    }

    /// Emits `event` and waits for the client's acknowledgement up to the server's
    /// [`super::SocketIoConfig::ack_timeout`].
    pub async fn emit_with_ack(&self, event: &str, payload: impl Into<Payload>) -> Result<Payload, AckError> {
        self.emit_with_ack_within(event, payload, self.0.ns.ack_timeout()).await
    }

    /// Emits `event` and waits up to `timeout` for the client's acknowledgement.
    pub async fn emit_with_ack_within(
        &self,
        event: &str,
        payload: impl Into<Payload>,
        timeout: Duration,
    ) -> Result<Payload, AckError> {
        let rx = self.send_with_ack(event, &payload.into())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(payload)) => Ok(payload),
            Ok(Err(_)) => Err(AckError::Disconnected),
            Err(_) => {
                metrics::counter!(crate::metrics::ACKS_TIMED_OUT).increment(1);
                Err(AckError::Timeout)
            }
        }
    }

    /// Queues `event` with a fresh ack id; the receiver resolves with the answer.
    pub(crate) fn send_with_ack(&self, event: &str, payload: &Payload) -> Result<oneshot::Receiver<Payload>, AckError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut acks = self.0.acks.lock();
            if acks.closed {
                return Err(AckError::Disconnected);
            }
            acks.pending.retain(|_, tx| !tx.is_closed());
            if acks.pending.len() >= self.0.ns.max_pending_acks() {
                return Err(AckError::TooMany);
            }
            let id = acks.next_id;
            acks.next_id += 1;
            acks.pending.insert(id, tx);
            id
        };
        let packet = encode_event(self.nsp(), Some(id), event, payload);
        if self.send_frames(&packet.frames(), false) != Enqueued::Queued {
            self.0.acks.lock().pending.remove(&id);
            return Err(AckError::Disconnected);
        }
        Ok(rx)
    }

    /// A broadcast to `room`, except this socket.
    pub fn to(&self, room: impl Into<String>) -> BroadcastOperator {
        BroadcastOperator::new(self.0.ns.clone()).to(room).except(self.id().to_owned())
    }

    /// A broadcast to the whole namespace, except this socket.
    pub fn broadcast(&self) -> BroadcastOperator {
        BroadcastOperator::new(self.0.ns.clone()).except(self.id().to_owned())
    }

    /// Leaves the namespace: the client gets a DISCONNECT packet and its
    /// Engine.IO connection stays open for other namespaces.
    pub fn disconnect(&self) {
        let mut text = vec![b'4'];
        packet::encode(PacketKind::Disconnect, self.nsp(), None, None, 0, &mut text);
        self.send_frames(&[Frame::Text(Bytes::from(text))], false);
        if let Some(state) = self.0.conn.state() {
            state.remove_socket(self);
        }
        self.on_disconnected(DisconnectReason::ServerNamespaceDisconnect);
    }

    /// Closes the whole underlying connection: every namespace of this client
    /// gets a DISCONNECT packet first (the client sees `io server disconnect`
    /// and does not reconnect), then the Engine.IO connection is closed.
    pub fn close_connection(&self) {
        if let Some(state) = self.0.conn.state() {
            for socket in state.sockets() {
                socket.disconnect();
            }
        }
        self.0.conn.close();
    }

    pub(crate) fn send_frames(&self, frames: &[Frame], volatile: bool) -> Enqueued {
        let result = self.0.conn.send_frames(frames, volatile);
        count_dropped(result);
        result
    }

    /// Queues frames of a broadcast for this socket's client; returns its connection when the
    /// caller must flush it once every recipient has them (see [`crate::engineio::flush_spread`]).
    pub(crate) fn queue_frames(
        &self,
        frames: &[Frame],
        volatile: bool,
    ) -> (Enqueued, Option<Arc<Connection<ClientState>>>) {
        let (result, flush) = self.0.conn.queue_frames(frames, volatile);
        count_dropped(result);
        (result, flush.then(|| self.0.conn.clone()))
    }

    pub(crate) fn resolve_ack(&self, packet: Packet, attachments: Vec<Bytes>) {
        let Some(id) = packet.id else { return };
        let Some(tx) = self.0.acks.lock().pending.remove(&id) else { return };
        let args = match packet.data {
            Some(Value::Array(args)) => args,
            _ => Vec::new(),
        };
        let _ = tx.send(Payload { args, attachments });
    }

    /// The socket left the namespace (any cause): tidy up and tell handlers.
    pub(crate) fn on_disconnected(&self, reason: DisconnectReason) {
        {
            let mut acks = self.0.acks.lock();
            if acks.closed {
                return;
            }
            acks.closed = true;
            acks.pending.clear();
        }
        if !self.persist(reason) {
            self.leave_all();
            self.0.ns.remove_socket(self.0.sid);
        }
        if self.is_foreign() {
            self.0.ns.room_changed(self.id());
        }
        metrics::counter!(crate::metrics::SOCKETIO_DISCONNECTS, crate::metrics::label::REASON => reason.label())
            .increment(1);
        self.0.ns.run_disconnect_handlers(self, reason.as_str());
    }
}

impl Socket {
    /// Keeps the session of a socket that left for a recoverable reason: under the recovery
    /// lock (no recoverable broadcast runs meanwhile) it leaves its rooms and the namespace and
    /// its rooms, data and deliveries go to the store. Returns false when not kept.
    fn persist(&self, reason: DisconnectReason) -> bool {
        let (Some(store), Some(recovery)) = (self.0.ns.recovery(), self.0.recovery.as_ref()) else {
            return false;
        };
        if !reason.is_recoverable() {
            return false;
        }
        let mut state = store.lock();
        let rooms: Vec<String> = self.0.rooms.lock().iter().map(|r| r.to_string()).collect();
        self.leave_all();
        self.0.ns.remove_socket(self.0.sid);
        let persist = recovery::state::Persist {
            sid: self.0.sid,
            secret: recovery.secret,
            nsp: self.nsp().to_owned(),
            rooms,
            data: self.0.data.lock().clone(),
            tracking: recovery.tracking.lock().clone(),
            sid_interest: self.is_foreign(),
        };
        let changes = state.persist(std::time::Instant::now(), persist);
        recovery::Recovery::gauges(&state);
        drop(state);
        store.changed(changes);
        true
    }
}

/// Answers one client event's acknowledgement request.
#[derive(Debug)]
pub struct AckSender {
    socket: Socket,
    id: u64,
}

impl AckSender {
    pub(crate) fn new(socket: Socket, id: u64) -> Self {
        Self { socket, id }
    }

    /// Sends the acknowledgement.
    pub fn send(self, payload: impl Into<Payload>) -> Result<(), SendError> {
        let payload = payload.into();
        let kind = if payload.has_binary() { PacketKind::BinaryAck } else { PacketKind::Ack };
        let mut text = vec![b'4'];
        let data = Value::Array(payload.args);
        packet::encode(kind, self.socket.nsp(), Some(self.id), Some(&data), payload.attachments.len(), &mut text);
        let mut frames = vec![Frame::Text(Bytes::from(text))];
        frames.extend(payload.attachments.into_iter().map(Frame::Binary));
        match self.socket.send_frames(&frames, false) {
            Enqueued::Queued => Ok(()),
            Enqueued::DroppedVolatile => Err(SendError::Dropped),
            Enqueued::TooLarge => Err(SendError::TooLarge),
            Enqueued::Closed => Err(SendError::Disconnected),
        }
    }
}

/// Encodes an EVENT (or BINARY_EVENT) once, as the bytes every recipient gets.
pub(crate) fn encode_event(nsp: &str, id: Option<u64>, event: &str, payload: &Payload) -> EncodedPacket {
    encode_event_at(nsp, id, event, payload, None)
}

/// [`encode_event`] with a recovery offset as the last argument (socket.io-client keeps the
/// last string argument of each event as the offset it sends back on reconnect).
pub(crate) fn encode_event_at(
    nsp: &str,
    id: Option<u64>,
    event: &str,
    payload: &Payload,
    offset: Option<Offset>,
) -> EncodedPacket {
    let mut text = Vec::with_capacity(16 + event.len() + nsp.len());
    text.push(b'4');
    packet::encode_event(nsp, id, event, &payload.args, payload.attachments.len(), &mut text);
    if let Some(offset) = offset
        && text.last() == Some(&b']')
    {
        // The offset's text is hexadecimal digits and `~`: nothing to escape.
        text.pop();
        text.extend_from_slice(format!(",\"{offset}\"]").as_bytes());
    }
    EncodedPacket { text: Bytes::from(text), attachments: payload.attachments.clone() }
}

/// Counts a packet not queued for a client because it was behind or the packet too large.
fn count_dropped(result: Enqueued) {
    let dropped = match result {
        Enqueued::DroppedVolatile => Some(DropReason::Volatile),
        Enqueued::TooLarge => Some(DropReason::TooLarge),
        Enqueued::Queued | Enqueued::Closed => None,
    };
    if let Some(reason) = dropped {
        metrics::counter!(crate::metrics::SOCKETIO_PACKETS_DROPPED, crate::metrics::label::REASON => reason.label())
            .increment(1);
    }
}
