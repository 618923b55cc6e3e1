//! The Socket.IO server: the Engine.IO handler that decodes Socket.IO packets
//! (reassembling binary ones) and routes them to namespaces.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use http::{Request, Response};
use hyper::body::Incoming;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::adapter::Adapter;
use super::config::{NamespacePolicy, SocketIoConfig};
use super::eio3;
use super::namespace::{Granted, Namespace};
use super::packet::{self, BinaryCollector, Packet, PacketKind};
use super::reason::{ConnectErrorReason, DisconnectReason};
use super::recovery::{self, Attempt, RecoveredSession, Recovery, Refusal, SessionRecord, SocketRecovery, Tracking};
use super::socket::Socket;
use crate::engineio::{Body, CloseReason, Connection, Engine, Handler, Message, Protocol};
use crate::rooms::Offset;
use crate::sid::Sid;

/// A Socket.IO server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Server {
    inner: Arc<ServerInner>,
    engine: Engine<SioHandler>,
}

/// A hook that configures every namespace created on demand.
type Template = Arc<dyn Fn(&Namespace) + Send + Sync>;

pub(crate) struct ServerInner {
    pub(crate) config: SocketIoConfig,
    namespaces: DashMap<String, Namespace>,
    template: Mutex<Option<Template>>,
    pub(crate) adapter: Arc<OnceLock<Arc<dyn Adapter>>>,
    pub(crate) tasks: TaskTracker,
    /// Connection state recovery, when on.
    pub(crate) recovery: Option<Arc<Recovery>>,
}

impl std::fmt::Debug for ServerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerInner").field("namespaces", &self.namespaces.len()).finish_non_exhaustive()
    }
}

impl Server {
    /// A server with `config`. Register namespaces with [`Server::of`].
    pub fn new(config: SocketIoConfig) -> Self {
        let mut engine_config = config.engine.clone();
        // Session ids carry the node too: a protocol 3 socket of `/` takes its session's id.
        engine_config.node_tag = config.node_tag;
        let adapter = Arc::new(OnceLock::new());
        // A dead connection goes unnoticed for up to a ping interval and timeout, during which
        // broadcasts are still queued to it: the log keeps them that much longer.
        let unnoticed = engine_config.ping_interval + engine_config.ping_timeout;
        let recovery =
            config.recovery.map(|r| Arc::new(Recovery::new(&r, unnoticed, config.node_tag, adapter.clone())));
        let inner = Arc::new(ServerInner {
            config,
            namespaces: DashMap::new(),
            template: Mutex::new(None),
            adapter,
            tasks: TaskTracker::new(),
            recovery,
        });
        let engine = Engine::new(engine_config, SioHandler { server: inner.clone() });
        Self { inner, engine }
    }

    /// The namespace `name` (e.g. `/` or `/chat`), created if needed.
    pub fn of(&self, name: &str) -> Namespace {
        self.inner.namespace_or_create(name)
    }

    /// The namespace `name` if it exists.
    pub fn namespace(&self, name: &str) -> Option<Namespace> {
        self.inner.namespaces.get(name).map(|n| n.clone())
    }

    /// The namespace a backend's broadcast or operation on `name` goes through: the existing
    /// one; on a cluster node, one created (and configured) as a client CONNECT would create it,
    /// so that a namespace nobody joined here still reaches the other nodes; else `None`.
    pub fn namespace_for_broadcast(&self, name: &str) -> Option<Namespace> {
        match self.namespace(name) {
            Some(ns) => Some(ns),
            None if self.adapter().is_some() => self.inner.resolve(name),
            None => None,
        }
    }

    /// Every namespace.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.inner.namespaces.iter().map(|e| e.value().clone()).collect()
    }

    /// Runs `f` on every namespace created on demand from now on (see
    /// [`NamespacePolicy`]) before its first client connects.
    pub fn on_new_namespace(&self, f: impl Fn(&Namespace) + Send + Sync + 'static) {
        *self.inner.template.lock() = Some(Arc::new(f));
    }

    /// Connects this server to a cluster (once, before clients connect); from then on broadcasts
    /// and cluster-wide operations reach the other nodes through `adapter`.
    pub fn set_adapter(&self, adapter: Arc<dyn Adapter>) -> Result<(), Arc<dyn Adapter>> {
        self.inner.adapter.set(adapter)
    }

    /// The cluster adapter, if this node is part of a cluster.
    pub fn adapter(&self) -> Option<&Arc<dyn Adapter>> {
        self.inner.adapter.get()
    }

    /// The Engine.IO endpoint under this server.
    pub fn engine(&self) -> &Engine<SioHandler> {
        &self.engine
    }

    /// Serves one HTTP request for this server's path.
    pub async fn handle(&self, req: Request<Incoming>, remote_addr: SocketAddr) -> Response<Body> {
        self.engine.handle(req, remote_addr).await
    }

    /// Refuses new clients, then closes the connected ones spread evenly over `spread` (see
    /// [`crate::engineio::Engine::close_spread`]). Call [`Self::shutdown`] afterwards.
    pub async fn close_spread(&self, spread: std::time::Duration) {
        self.engine.close_spread(spread).await;
    }

    /// Takes the disconnected session `pid` of namespace `nsp` for a client reconnecting to
    /// another node with `offset` (the cluster asks every node; the one holding it answers). A
    /// socket still connected here under that private id is ended first: its client, which
    /// alone holds the private id, has reconnected elsewhere. What this node logs for the session
    /// during a short grace period is relayed to node `requester`.
    pub fn recover_for_peer(
        &self,
        nsp: &str,
        pid: &str,
        offset: Option<&str>,
        requester: u64,
    ) -> Result<RecoveredSession, Refusal> {
        let (Some(recovery), Some((sid, secret))) = (&self.inner.recovery, recovery::parse_pid(pid)) else {
            return Err(Refusal::NotFound);
        };
        let Some(ns) = self.namespace(nsp) else { return Err(Refusal::NotFound) };
        let result = take_here(recovery, &ns, sid, secret, offset, Some(requester));
        if result.is_ok() {
            tracing::debug!(sid = %sid, nsp, "session handed to another node");
        }
        result
    }

    /// Takes every kept disconnected session out, for a peer to import (a draining node).
    pub fn export_recovery(&self) -> Vec<SessionRecord> {
        let Some(recovery) = &self.inner.recovery else { return Vec::new() };
        let mut state = recovery.lock();
        let (records, changes) = state.export_all(std::time::Instant::now());
        Recovery::gauges(&state);
        drop(state);
        recovery.changed(changes);
        records
    }

    /// The exported sessions `sids` reached node `to`: what this node logged for them since
    /// (and logs during a short grace period) is relayed there.
    pub fn recovery_handed_to(&self, sids: &[Sid], to: u64) {
        let Some(recovery) = &self.inner.recovery else { return };
        let mut state = recovery.lock();
        let relays: Vec<_> = sids.iter().flat_map(|sid| state.moved_to(*sid, to)).collect();
        drop(state);
        recovery.relay(relays);
    }

    /// Keeps sessions a draining peer handed over; returns how many.
    pub fn import_recovery(&self, records: Vec<SessionRecord>) -> usize {
        let Some(recovery) = &self.inner.recovery else { return 0 };
        let n = records.len();
        let tag = recovery.node_tag();
        let mut state = recovery.lock();
        let changes = state.import(std::time::Instant::now(), records, |sid| sid.tag() != tag);
        Recovery::gauges(&state);
        drop(state);
        recovery.changed(changes);
        metrics::counter!(crate::metrics::RECOVERY_TRANSFERS, crate::metrics::label::KIND => "received")
            .increment(n as u64);
        n
    }

    /// Drops the disconnected sessions whose window passed and the broadcasts too old to be
    /// replayed (also done on the way by every recovery operation; call it periodically so that
    /// an idle node frees them too).
    pub fn expire_recovery(&self) {
        let Some(recovery) = &self.inner.recovery else { return };
        let mut state = recovery.lock();
        let changes = state.expire(std::time::Instant::now());
        Recovery::gauges(&state);
        drop(state);
        recovery.changed(changes);
    }

    /// Whether connection state recovery is on.
    pub fn recovery_enabled(&self) -> bool {
        self.inner.recovery.is_some()
    }

    /// Disconnects every client (they see a transport close and reconnect
    /// elsewhere) and waits for handlers to finish.
    pub async fn shutdown(&self) {
        self.engine.shutdown().await;
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl ServerInner {
    fn namespace_or_create(&self, name: &str) -> Namespace {
        if let Some(ns) = self.namespaces.get(name) {
            return ns.clone();
        }

        self.namespaces.entry(name.to_owned()).or_insert_with(|| Namespace::new(name, self)).clone()
    }

    /// The namespace a CONNECT may join, per the policy. A namespace created
    /// on demand is fully configured (middleware included) before any other
    /// client can see it, and at most `max_namespaces` exist.
    fn resolve(&self, name: &str) -> Option<Namespace> {
        if let Some(ns) = self.namespaces.get(name) {
            return Some(ns.clone());
        }
        let allowed = match &self.config.namespaces {
            NamespacePolicy::Registered => false,
            NamespacePolicy::Any => true,
            NamespacePolicy::Allow(list) => list.iter().any(|n| n == name),
        };
        if !allowed || self.namespaces.len() >= self.config.max_namespaces {
            return None;
        }
        let ns = Namespace::new(name, self);
        let template = self.template.lock().clone();
        if let Some(template) = template {
            template(&ns);
        }
        Some(self.namespaces.entry(name.to_owned()).or_insert(ns).clone())
    }
}

/// Per-connection Socket.IO state, stored in the Engine.IO connection.
#[derive(Debug)]
pub struct ClientState {
    inner: Mutex<ClientInner>,
    connect_timer: Mutex<Option<oneshot::Sender<()>>>,
}

#[derive(Debug, Default)]
struct ClientInner {
    sockets: Vec<Socket>,
    pending: Vec<String>,
    /// A binary packet waiting for its attachments (boxed: rare, and every client holds the field).
    collector: Option<Box<BinaryCollector>>,
    closed: bool,
}

impl ClientInner {
    /// The CONNECT to `nsp` was answered; the list of pending ones keeps no memory once empty.
    fn connect_done(&mut self, nsp: &str) {
        self.pending.retain(|n| n != nsp);
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
    }
}

impl ClientState {
    pub(crate) fn socket(&self, nsp: &str) -> Option<Socket> {
        self.inner.lock().sockets.iter().find(|s| s.nsp() == nsp).cloned()
    }

    pub(crate) fn sockets(&self) -> Vec<Socket> {
        self.inner.lock().sockets.clone()
    }

    pub(crate) fn remove_socket(&self, socket: &Socket) {
        self.inner.lock().sockets.retain(|s| s.id() != socket.id() || s.nsp() != socket.nsp());
    }
}

/// The Engine.IO handler of a Socket.IO server.
#[derive(Debug)]
pub struct SioHandler {
    server: Arc<ServerInner>,
}

type Conn = Arc<Connection<ClientState>>;

impl Handler for SioHandler {
    type State = ClientState;

    fn on_open(&self, conn: &Conn) -> ClientState {
        let (tx, rx) = oneshot::channel();
        let timeout = self.server.config.connect_timeout;
        let weak = Arc::downgrade(conn);
        self.server.tasks.spawn(async move {
            if tokio::time::timeout(timeout, rx).await.is_err()
                && let Some(conn) = weak.upgrade()
            {
                count_connect_error(ConnectErrorReason::Timeout);
                conn.close();
            }
        });
        ClientState { inner: Mutex::new(ClientInner::default()), connect_timer: Mutex::new(Some(tx)) }
    }

    fn on_ready(&self, conn: &Conn) {
        // A socket.io 1.x / 2.x client is connected to `/` by the server, right after the open
        // packet. Where `/` is not accepted nothing is sent: an error for `/` would reach the
        // client's sockets of every namespace.
        if conn.protocol() == Protocol::V3
            && let Some(state) = conn.state()
            && self.server.resolve("/").is_some()
        {
            let auth = eio3::handshake_auth(&conn.handshake().query);
            self.connect(conn, state, "/".to_owned(), auth);
        }
    }

    fn on_message(&self, conn: &Conn, msg: Message) {
        let Some(state) = conn.state() else { return };
        let decoded = match msg {
            Message::Text(text) => self.on_text(state, &text),
            Message::Binary(data) => on_binary(state, data),
        };
        match decoded {
            Ok(Some((packet, attachments))) => self.dispatch(conn, state, packet, attachments),
            Ok(None) => {}
            Err(err) => {
                tracing::debug!(sid = conn.id(), %err, "invalid socket.io packet; closing");
                metrics::counter!(crate::metrics::SOCKETIO_INVALID_PACKETS).increment(1);
                conn.close_with(CloseReason::ParseError);
            }
        }
    }

    fn on_close(&self, conn: &Conn, reason: CloseReason) {
        let Some(state) = conn.state() else { return };
        let sockets = {
            let mut inner = state.inner.lock();
            inner.closed = true;
            inner.collector = None;
            std::mem::take(&mut inner.sockets)
        };
        state.connect_timer.lock().take();
        for socket in sockets {
            socket.on_disconnected(DisconnectReason::from(reason));
        }
    }
}

type Decoded = Option<(Packet, Vec<Bytes>)>;

/// Why a client's message closes its connection.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    /// The Socket.IO packet does not decode or is invalid for its type.
    #[error(transparent)]
    Decode(#[from] packet::DecodeError),
    /// A text packet arrived while binary attachments were still due.
    #[error("text packet while attachments were expected")]
    UnexpectedText,
    /// A binary message arrived that no packet announced.
    #[error("binary message without a binary packet")]
    UnexpectedBinary,
}

impl SioHandler {
    fn on_text(&self, state: &ClientState, text: &[u8]) -> Result<Decoded, ClientError> {
        let mut inner = state.inner.lock();
        if inner.collector.is_some() {
            // Text while attachments are still due: the packet is broken.
            return Err(ClientError::UnexpectedText);
        }
        let text = std::str::from_utf8(text).map_err(|_| ClientError::UnexpectedText)?;
        let limits = packet::Limits { max_attachments: self.server.config.max_attachments };
        let packet = packet::decode(text, &limits)?;
        if packet.attachments > 0 {
            inner.collector = Some(Box::new(BinaryCollector::new(packet)));
            return Ok(None);
        }
        Ok(Some((packet, Vec::new())))
    }

    fn dispatch(&self, conn: &Conn, state: &ClientState, packet: Packet, attachments: Vec<Bytes>) {
        match packet.kind {
            PacketKind::Connect => self.on_connect(conn, state, packet),
            PacketKind::Disconnect => match state.socket(&packet.nsp) {
                Some(socket) => {
                    state.remove_socket(&socket);
                    socket.on_disconnected(DisconnectReason::ClientNamespaceDisconnect);
                }
                None => conn.close(),
            },
            PacketKind::Event | PacketKind::BinaryEvent => match state.socket(&packet.nsp) {
                Some(socket) => {
                    metrics::counter!(crate::metrics::SOCKETIO_EVENTS_RECEIVED).increment(1);
                    socket.namespace().dispatch_event(&socket, packet, attachments);
                }
                None => conn.close(),
            },
            PacketKind::Ack | PacketKind::BinaryAck => match state.socket(&packet.nsp) {
                Some(socket) => socket.resolve_ack(packet, attachments),
                None => conn.close(),
            },
            PacketKind::ConnectError => conn.close(),
        }
    }

    /// A CONNECT from the client: the namespace and auth, as its protocol carries them.
    fn on_connect(&self, conn: &Conn, state: &ClientState, packet: Packet) {
        let (nsp, auth) = match conn.protocol() {
            Protocol::V4 => (packet.nsp, packet.data.unwrap_or_else(|| Value::Object(serde_json::Map::new()))),
            Protocol::V3 => eio3::namespace_and_auth(&packet.nsp),
        };
        self.connect(conn, state, nsp, auth);
    }

    /// Joins namespace `nsp` with `auth`: refused at once for an unknown namespace, else after
    /// the namespace's middleware.
    fn connect(&self, conn: &Conn, state: &ClientState, nsp: String, auth: Value) {
        {
            let mut inner = state.inner.lock();
            if inner.closed {
                return;
            }
            if inner.pending.contains(&nsp) || inner.sockets.iter().any(|s| s.nsp() == nsp) {
                drop(inner);
                // A second CONNECT to the same namespace is a protocol error.
                conn.close();
                return;
            }
            inner.pending.push(nsp.clone());
        }
        let Some(ns) = self.server.resolve(&nsp) else {
            state.inner.lock().connect_done(&nsp);
            count_connect_error(ConnectErrorReason::InvalidNamespace);
            send_connect_error(conn, &nsp, &serde_json::json!({"message": "Invalid namespace"}));
            return;
        };
        let mut auth = auth;
        // A 2.x client (Socket.IO protocol 4) has no connection state recovery: it never sends
        // a private id, and its CONNECT reply carries none.
        let recovery_on = self.server.recovery.is_some() && conn.protocol() == Protocol::V4;
        let start = if recovery_on { recovery::client_offset(&auth) } else { None };
        let attempt = if recovery_on { Attempt::from_auth(&auth) } else { None };
        if recovery_on {
            // The private id is a credential: middleware, hooks and `socket.auth()` never see it.
            recovery::strip(&mut auth);
        }
        if let (Some(recovery), Some(attempt)) = (&self.server.recovery, attempt) {
            match take_here(recovery, &ns, attempt.sid, attempt.secret, attempt.offset.as_deref(), None) {
                Ok(session) => {
                    recovery::count_attempt(Ok(()));
                    return self.finish_recovered(conn, state, ns, auth, session);
                }
                Err(Refusal::NotFound) if self.server.adapter.get().is_some() => {
                    if let Some(slot) = recovery.lookup_slot() {
                        return self.recover_remote(conn, ns, auth, attempt, start, slot);
                    }
                }
                Err(refusal) => {
                    tracing::debug!(sid = %attempt.sid, reason = %refusal, "session not recovered; a fresh one");
                    recovery::count_attempt(Err(refusal));
                }
            }
        }
        self.connect_fresh(conn, state, ns, auth, start);
    }

    /// A CONNECT that recovers nothing: the middleware, then the socket (whose client holds
    /// the offset `start`, with recovery).
    fn connect_fresh(&self, conn: &Conn, state: &ClientState, ns: Namespace, auth: Value, start: Option<Offset>) {
        if !ns.has_middleware() {
            self.finish_connect(conn, state, ns, auth, Granted::default(), start);
            return;
        }
        let handler = SioHandler { server: self.server.clone() };
        let conn = conn.clone();
        self.server.tasks.spawn(async move {
            let verdict = ns.run_middleware(&conn, &auth).await;
            let Some(state) = conn.state() else { return };
            match verdict {
                Ok(granted) => handler.finish_connect(&conn, state, ns, auth, granted, start),
                Err(err) => {
                    state.inner.lock().connect_done(ns.name());
                    count_connect_error(ConnectErrorReason::Middleware);
                    let data = match conn.protocol() {
                        Protocol::V4 => err.to_json(),
                        Protocol::V3 => eio3::refusal_data(&err),
                    };
                    send_connect_error(&conn, ns.name(), &data);
                }
            }
        });
    }

    /// No session here: asks the other nodes (the one holding it hands it over); a fresh
    /// socket when none does.
    /// `slot` is its place among the lookups in flight, held until the answer.
    fn recover_remote(
        &self,
        conn: &Conn,
        ns: Namespace,
        auth: Value,
        attempt: Attempt,
        start: Option<Offset>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let Some(adapter) = self.server.adapter.get().cloned() else { return };
        let handler = SioHandler { server: self.server.clone() };
        let conn = conn.clone();
        let recovery = self.server.recovery.clone();
        if let Some(recovery) = &recovery {
            recovery.lock().expect(std::time::Instant::now(), attempt.sid);
        }
        self.server.tasks.spawn(async move {
            let op = super::RemoteOp::Recover { nsp: ns.name().to_owned(), pid: attempt.pid, offset: attempt.offset };
            let outcome = adapter.request(op).await;
            drop(slot);
            let recovered = matches!(outcome.recovered, Some(Ok(_)));
            if let (Some(recovery), false) = (&recovery, recovered) {
                recovery.lock().unexpect(&attempt.sid);
            }
            let Some(state) = conn.state() else {
                if let Some(recovery) = &recovery {
                    recovery.lock().unexpect(&attempt.sid);
                }
                return;
            };
            match outcome.recovered {
                Some(Ok(session)) => {
                    recovery::count_attempt(Ok(()));
                    metrics::counter!(crate::metrics::RECOVERY_TRANSFERS, crate::metrics::label::KIND => "fetched")
                        .increment(1);
                    handler.finish_recovered(&conn, state, ns, auth, session);
                }
                other => {
                    let refusal = other.and_then(Result::err).unwrap_or(Refusal::NotFound);
                    tracing::debug!(sid = %attempt.sid, reason = %refusal, "session not recovered from the cluster; a fresh one");
                    recovery::count_attempt(Err(refusal));
                    handler.connect_fresh(&conn, state, ns, auth, start);
                }
            }
        });
    }

    fn finish_connect(
        &self,
        conn: &Conn,
        state: &ClientState,
        ns: Namespace,
        auth: Value,
        granted: Granted,
        start: Option<Offset>,
    ) {
        // A 2.x client names its sockets after its session id (`/chat#<session id>` in another
        // namespace than `/`, see `Selector`) and says so to its app, so its sockets get it; the
        // session id carries the node tag too.
        let v3 = conn.protocol() == Protocol::V3;
        let sid = if v3 { conn.sid() } else { Sid::with_tag(self.server.config.node_tag) };
        let tracking = self.server.recovery.as_ref().filter(|_| !v3).map(|_| SocketRecovery {
            secret: Sid::random(),
            recovered: false,
            tracking: parking_lot::Mutex::new(Tracking::new(0, start, true, start)),
        });
        let socket = Socket::new(&ns, conn.clone(), auth, granted.data, sid, tracking);
        let arrival = Arrival { rooms: &granted.rooms, missed: &[], marks: &[] };
        if !self.add_socket(conn, state, &ns, &socket, arrival) {
            return;
        }
        metrics::counter!(crate::metrics::SOCKETIO_CONNECTS).increment(1);
        metrics::gauge!(crate::metrics::SOCKETIO_SOCKETS).increment(1.0);
        ns.run_connect_handlers(&socket);
    }

    /// The socket of a recovered session: same id, rooms and data, its missed packets right
    /// after the CONNECT reply, before anything else; no middleware (the private id is proof).
    fn finish_recovered(
        &self,
        conn: &Conn,
        state: &ClientState,
        ns: Namespace,
        auth: Value,
        session: RecoveredSession,
    ) {
        let last = session.missed.last().map(|p| p.offset).or(session.client_offset);
        // The replay is logged for this socket as it is sent (see `add_socket`), so a client that
        // loses it again still gets it back.
        let tracking = Tracking::new(0, session.client_offset, true, last);
        let recovery =
            SocketRecovery { secret: session.secret, recovered: true, tracking: parking_lot::Mutex::new(tracking) };
        let socket = Socket::new(&ns, conn.clone(), auth, session.data, session.sid, Some(recovery));
        let arrival = Arrival { rooms: &session.rooms, missed: &session.missed, marks: &session.watermarks };
        if !self.add_socket(conn, state, &ns, &socket, arrival) {
            return;
        }
        if socket.is_foreign() {
            ns.room_changed(socket.id());
        }
        tracing::debug!(sid = socket.id(), nsp = ns.name(), missed = session.missed.len(), "session recovered");
        metrics::counter!(crate::metrics::SOCKETIO_CONNECTS).increment(1);
        metrics::gauge!(crate::metrics::SOCKETIO_SOCKETS).increment(1.0);
        ns.run_connect_handlers(&socket);
    }

    /// Adds `socket` to the client and the namespace, joins its rooms and queues the CONNECT
    /// reply then the missed packets. With recovery, all of it under the recovery lock, so that
    /// no recoverable broadcast falls between (the socket's tracking starts at the log's next
    /// sequence). Returns false when the client closed meanwhile.
    fn add_socket(
        &self,
        conn: &Conn,
        state: &ClientState,
        ns: &Namespace,
        socket: &Socket,
        arrival: Arrival<'_>,
    ) -> bool {
        let guard = self.server.recovery.as_ref().map(|r| r.lock());
        if let (Some(guard), Some(tracking)) = (&guard, socket.tracking()) {
            tracking.lock().since = guard.next_seq();
        }
        {
            // Added to the namespace under the client's lock, so that a close
            // racing this connect either sees the socket or prevents it.
            let mut inner = state.inner.lock();
            inner.connect_done(ns.name());
            if inner.closed {
                return false;
            }
            inner.sockets.push(socket.clone());
            ns.add_socket(socket.clone());
        }
        // Rooms granted by middleware (or recovered) are joined before the client learns it is connected.
        for room in arrival.rooms {
            socket.join(room);
        }
        if let Some(timer) = state.connect_timer.lock().take() {
            let _ = timer.send(());
        }
        let reply = match socket.pid() {
            Some(pid) => serde_json::json!({ "sid": socket.id(), "pid": pid }),
            None => serde_json::json!({ "sid": socket.id() }),
        };
        let mut text = vec![b'4'];
        // Protocol 4 (2.x clients): no payload.
        let reply = (conn.protocol() == Protocol::V4).then_some(&reply);
        packet::encode(PacketKind::Connect, ns.name(), None, reply, 0, &mut text);
        // In a write of its own, before anything the handlers emit (as socket.io does).
        conn.send_frames_own_write(&[crate::engineio::packet::Frame::Text(Bytes::from(text))]);
        let (Some(mut state), Some(tracking), Some(recovery)) = (guard, socket.tracking(), &self.server.recovery)
        else {
            return true;
        };
        let now = std::time::Instant::now();
        let mut seen: std::collections::HashSet<_> = arrival.missed.iter().map(|m| m.offset).collect();
        // From another node: what reached this node before the session did, and the other node
        // only after it left, comes right after the replay (see `RecoveryState::recent_missed`).
        let recent = state.recent_missed(now, ns.name(), socket.sid(), arrival.rooms, arrival.marks, &seen);
        seen.extend(recent.iter().map(|m| m.offset));
        for missed in arrival.missed.iter().chain(&recent) {
            state.log_for(now, ns.name(), socket.sid(), missed);
            // A broadcast replayed here may still reach this node itself (it was on its way).
            if socket.send_frames(&missed.packet.frames(), false) == crate::engineio::session::Enqueued::Queued {
                tracking.lock().queued_apart(now, missed.offset);
            }
        }
        // Relays from the node it left that overtook its recovery: after the replay. And this
        // node no longer relays what concerns it to where it was.
        let (early, changes) = state.arrived(&socket.sid());
        for late in early.into_iter().filter(|p| !seen.contains(&p.offset)) {
            state.log_for(now, ns.name(), socket.sid(), &late);
            if socket.send_frames(&late.packet.frames(), false) == crate::engineio::session::Enqueued::Queued {
                tracking.lock().queued_apart(now, late.offset);
            }
        }
        Recovery::gauges(&state);
        drop(state);
        recovery.changed(changes);
        true
    }
}

/// What a socket arrives with: rooms to join, packets to replay, and for a session from another
/// node that node's watermarks.
struct Arrival<'a> {
    rooms: &'a [String],
    missed: &'a [super::MissedPacket],
    marks: &'a [crate::rooms::Offset],
}

/// Takes the session `sid` here for a client proving `secret`, connected here or to node `to`:
/// a socket still connected under it is ended first (its client reconnected before its old
/// connection was found dead).
fn take_here(
    recovery: &Recovery,
    ns: &Namespace,
    sid: Sid,
    secret: Sid,
    offset: Option<&str>,
    to: Option<u64>,
) -> Result<RecoveredSession, Refusal> {
    if let Some(old) = ns.socket(sid.as_str())
        && old.secret() == Some(secret)
    {
        old.take_over();
    }
    let mut state = recovery.lock();
    let (result, changes) = state.take(std::time::Instant::now(), ns.name(), sid, secret, offset, to);
    Recovery::gauges(&state);
    drop(state);
    recovery.changed(changes);
    result
}

fn on_binary(state: &ClientState, data: Bytes) -> Result<Decoded, ClientError> {
    let mut inner = state.inner.lock();
    let Some(collector) = inner.collector.as_mut() else {
        return Err(ClientError::UnexpectedBinary);
    };
    match collector.push(data)? {
        Some((mut packet, attachments)) => {
            inner.collector = None;
            if let Some(data) = packet.data.as_mut() {
                canonical_placeholders(data);
            }
            Ok(Some((packet, attachments)))
        }
        None => Ok(None),
    }
}

/// Rewrites every placeholder as `{"_placeholder":true,"num":n}`: upstream
/// rebuilds binary arguments and encodes them afresh, so whatever key order
/// or extra keys a client sent never come back.
fn canonical_placeholders(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(canonical_placeholders),
        Value::Object(map) => {
            let num = (map.get("_placeholder") == Some(&Value::Bool(true)))
                .then(|| map.get("num").and_then(Value::as_u64))
                .flatten();
            match num {
                Some(num) => *value = serde_json::json!({ "_placeholder": true, "num": num }),
                None => map.values_mut().for_each(canonical_placeholders),
            }
        }
        _ => {}
    }
}

fn count_connect_error(reason: ConnectErrorReason) {
    metrics::counter!(crate::metrics::SOCKETIO_CONNECT_ERRORS, crate::metrics::label::REASON => reason.label())
        .increment(1);
}

fn send_connect_error(conn: &Conn, nsp: &str, data: &Value) {
    let mut text = vec![b'4'];
    packet::encode(PacketKind::ConnectError, nsp, None, Some(data), 0, &mut text);
    conn.send_frames(&[crate::engineio::packet::Frame::Text(Bytes::from(text))], false);
}
