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
use super::namespace::{Granted, Namespace};
use super::packet::{self, BinaryCollector, Packet, PacketKind};
use super::reason::{ConnectErrorReason, DisconnectReason};
use super::socket::Socket;
use crate::engineio::{Body, CloseReason, Connection, Engine, Handler, Message};

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
}

impl std::fmt::Debug for ServerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerInner").field("namespaces", &self.namespaces.len()).finish_non_exhaustive()
    }
}

impl Server {
    /// A server with `config`. Register namespaces with [`Server::of`].
    pub fn new(config: SocketIoConfig) -> Self {
        let engine_config = config.engine.clone();
        let inner = Arc::new(ServerInner {
            config,
            namespaces: DashMap::new(),
            template: Mutex::new(None),
            adapter: Arc::new(OnceLock::new()),
            tasks: TaskTracker::new(),
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

    fn on_connect(&self, conn: &Conn, state: &ClientState, packet: Packet) {
        let nsp = packet.nsp;
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
        let auth = packet.data.unwrap_or_else(|| Value::Object(serde_json::Map::new()));
        if !ns.has_middleware() {
            self.finish_connect(conn, state, ns, auth, Granted::default());
            return;
        }
        let handler = SioHandler { server: self.server.clone() };
        let conn = conn.clone();
        self.server.tasks.spawn(async move {
            let verdict = ns.run_middleware(&conn, &auth).await;
            let Some(state) = conn.state() else { return };
            match verdict {
                Ok(granted) => handler.finish_connect(&conn, state, ns, auth, granted),
                Err(err) => {
                    state.inner.lock().connect_done(ns.name());
                    count_connect_error(ConnectErrorReason::Middleware);
                    send_connect_error(&conn, ns.name(), &err.to_json());
                }
            }
        });
    }

    fn finish_connect(&self, conn: &Conn, state: &ClientState, ns: Namespace, auth: Value, granted: Granted) {
        let socket = Socket::new(&ns, conn.clone(), auth, granted.data, self.server.config.node_tag);
        {
            // Added to the namespace under the client's lock, so that a close
            // racing this connect either sees the socket or prevents it.
            let mut inner = state.inner.lock();
            inner.connect_done(ns.name());
            if inner.closed {
                return;
            }
            inner.sockets.push(socket.clone());
            ns.add_socket(socket.clone());
        }
        // Rooms granted by middleware are joined before the client learns it is connected.
        for room in &granted.rooms {
            socket.join(room);
        }
        if let Some(timer) = state.connect_timer.lock().take() {
            let _ = timer.send(());
        }
        let reply = serde_json::json!({ "sid": socket.id() });
        let mut text = vec![b'4'];
        packet::encode(PacketKind::Connect, ns.name(), None, Some(&reply), 0, &mut text);
        // In a write of its own, before anything the handlers emit (as socket.io does).
        conn.send_frames_own_write(&[crate::engineio::packet::Frame::Text(Bytes::from(text))]);
        metrics::counter!(crate::metrics::SOCKETIO_CONNECTS).increment(1);
        metrics::gauge!(crate::metrics::SOCKETIO_SOCKETS).increment(1.0);
        ns.run_connect_handlers(&socket);
    }
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
