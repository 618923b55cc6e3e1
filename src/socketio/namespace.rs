//! A namespace: its handlers and middleware, its sockets, its rooms, and the
//! local fan-out of broadcasts.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::RwLock;
use serde_json::Value;
use tokio_util::task::TaskTracker;

use super::adapter::Adapter;
use super::operator::BroadcastOperator;
use super::packet::Packet;
use super::payload::Payload;
use super::recovery::Recovery;
use super::server::{ClientState, ServerInner};
use super::socket::{AckSender, Socket};
use crate::engineio::session::Enqueued;
use crate::engineio::{Connection, Handshake};
use crate::rooms::{Broadcast, RoomRegistry, Selector};
use crate::sid::Sid;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type ConnectHandler = Arc<dyn Fn(Socket) -> BoxFuture<()> + Send + Sync>;
type EventHandler = Arc<dyn Fn(Socket, Event) -> BoxFuture<()> + Send + Sync>;
type DisconnectHandler = Arc<dyn Fn(Socket, &'static str) -> BoxFuture<()> + Send + Sync>;
type ServerSideHandler = Arc<dyn Fn(Payload) -> BoxFuture<()> + Send + Sync>;
type ServerSideAnyHandler = Arc<dyn Fn(String, Payload) -> BoxFuture<()> + Send + Sync>;
type Middleware = Arc<dyn Fn(ConnectRequest) -> BoxFuture<Result<(), ConnectError>> + Send + Sync>;

/// An event from a client.
#[derive(Debug)]
pub struct Event {
    /// The event name (a numeric name is given as its decimal text).
    pub name: String,
    /// The arguments after the name.
    pub payload: Payload,
    /// Present when the client asked for an acknowledgement.
    pub ack: Option<AckSender>,
}

/// What a middleware sees of a connecting client.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The namespace being joined.
    pub nsp: String,
    /// The `auth` object of the CONNECT packet (`{}` when absent).
    pub auth: Value,
    /// The HTTP request that opened the Engine.IO session.
    pub handshake: Handshake,
    /// The data and rooms the middleware grant the socket to come (shared by every middleware
    /// of this CONNECT).
    pub grant: ConnectGrant,
}

/// What the middleware of one CONNECT give the socket to come: its `socket.data` and rooms it
/// joins before the client sees `connect`. Cheap to clone; every clone is the same grant.
#[derive(Debug, Clone, Default)]
pub struct ConnectGrant(Arc<parking_lot::Mutex<Granted>>);

/// The content of a [`ConnectGrant`].
#[derive(Debug, Default)]
pub(crate) struct Granted {
    pub(crate) data: serde_json::Map<String, Value>,
    pub(crate) rooms: Vec<String>,
}

impl ConnectGrant {
    /// Merges `data` into the socket's data (top-level keys replace earlier ones).
    pub fn merge_data(&self, data: serde_json::Map<String, Value>) {
        self.0.lock().data.extend(data);
    }

    /// The socket's data so far.
    pub fn data(&self) -> serde_json::Map<String, Value> {
        self.0.lock().data.clone()
    }

    /// The socket joins `room` on connect.
    pub fn join(&self, room: impl Into<String>) {
        self.0.lock().rooms.push(room.into());
    }

    pub(crate) fn take(&self) -> Granted {
        std::mem::take(&mut *self.0.lock())
    }
}

/// A middleware's refusal, sent to the client as CONNECT_ERROR.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectError {
    /// The `message` the client's `connect_error` event carries.
    pub message: String,
    /// Optional `data` the client's error carries.
    pub data: Option<Value>,
}

impl ConnectError {
    /// A refusal with `message` and no data.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), data: None }
    }

    pub(crate) fn to_json(&self) -> Value {
        match &self.data {
            Some(data) => serde_json::json!({ "message": self.message, "data": data }),
            None => serde_json::json!({ "message": self.message }),
        }
    }
}

/// Runs a handler in order with the packets around it: the future is polled
/// once right here (most handlers finish in that poll, without a task), and
/// only if it has to wait is the rest spawned. Handlers therefore start in
/// the order their packets arrived, as in Node's socket.io.
pub(crate) fn run_in_order(tasks: &TaskTracker, mut fut: BoxFuture<()>) {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if fut.as_mut().poll(&mut cx).is_pending() {
        tasks.spawn(fut);
    }
}

#[derive(Default)]
struct Handlers {
    middleware: Vec<Middleware>,
    connect: Vec<ConnectHandler>,
    events: HashMap<String, EventHandler>,
    any: Option<EventHandler>,
    disconnect: Vec<DisconnectHandler>,
    server_side: HashMap<String, ServerSideHandler>,
    server_side_any: Option<ServerSideAnyHandler>,
}

/// A Socket.IO namespace. Cheap to clone.
#[derive(Clone)]
pub struct Namespace(Arc<NamespaceInner>);

pub(crate) struct NamespaceInner {
    name: String,
    sockets: DashMap<Sid, Socket>,
    rooms: RoomRegistry<Socket>,
    handlers: RwLock<Handlers>,
    tasks: TaskTracker,
    adapter: Arc<OnceLock<Arc<dyn Adapter>>>,
    recovery: Option<Arc<Recovery>>,
    pub(crate) max_rooms_per_socket: usize,
    pub(crate) max_pending_acks: usize,
    pub(crate) ack_timeout: std::time::Duration,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.0.name)
            .field("sockets", &self.0.sockets.len())
            .finish_non_exhaustive()
    }
}

impl Namespace {
    pub(crate) fn new(name: &str, server: &ServerInner) -> Self {
        Self(Arc::new(NamespaceInner {
            name: name.to_owned(),
            sockets: DashMap::new(),
            rooms: RoomRegistry::default(),
            handlers: RwLock::new(Handlers::default()),
            tasks: server.tasks.clone(),
            adapter: server.adapter.clone(),
            recovery: server.recovery.clone(),
            max_rooms_per_socket: server.config.max_rooms_per_socket,
            max_pending_acks: server.config.max_pending_acks,
            ack_timeout: server.config.ack_timeout,
        }))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Adds a middleware run for every CONNECT, in order; the first error
    /// refuses the client with CONNECT_ERROR.
    pub fn use_middleware<F, Fut>(&self, f: F)
    where
        F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ConnectError>> + Send + 'static,
    {
        self.0.handlers.write().middleware.push(Arc::new(move |req| Box::pin(f(req))));
    }

    /// Runs `f` for each socket that joins the namespace.
    pub fn on_connect<F, Fut>(&self, f: F)
    where
        F: Fn(Socket) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0.handlers.write().connect.push(Arc::new(move |s| Box::pin(f(s))));
    }

    /// Runs `f` for each `event` a client of this namespace emits.
    pub fn on<F, Fut>(&self, event: &str, f: F)
    where
        F: Fn(Socket, Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0.handlers.write().events.insert(event.to_owned(), Arc::new(move |s, e| Box::pin(f(s, e))));
    }

    /// Runs `f` for events that have no handler of their own.
    pub fn on_any<F, Fut>(&self, f: F)
    where
        F: Fn(Socket, Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0.handlers.write().any = Some(Arc::new(move |s, e| Box::pin(f(s, e))));
    }

    /// Runs `f` when a socket leaves the namespace, with the reason
    /// (`transport close`, `ping timeout`, `client namespace disconnect`…).
    pub fn on_disconnect<F, Fut>(&self, f: F)
    where
        F: Fn(Socket, &'static str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0.handlers.write().disconnect.push(Arc::new(move |s, r| Box::pin(f(s, r))));
    }

    /// Runs `f` for each `event` sent to this namespace by another server
    /// (socket.io's `serverSideEmit`, e.g. from a Redis emitter).
    pub fn on_server_side<F, Fut>(&self, event: &str, f: F)
    where
        F: Fn(Payload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0.handlers.write().server_side.insert(event.to_owned(), Arc::new(move |p| Box::pin(f(p))));
    }

    /// Runs `f` for server-side events that have no handler of their own.
    pub fn on_server_side_any<F, Fut>(&self, f: F)
    where
        F: Fn(String, Payload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0.handlers.write().server_side_any = Some(Arc::new(move |e, p| Box::pin(f(e, p))));
    }

    /// Delivers a server-side event to this namespace's handlers; returns
    /// whether any handler ran.
    pub fn dispatch_server_side(&self, event: &str, payload: Payload) -> bool {
        let (handler, any) = {
            let handlers = self.0.handlers.read();
            (handlers.server_side.get(event).cloned(), handlers.server_side_any.clone())
        };
        match (handler, any) {
            (Some(h), _) => {
                run_in_order(&self.0.tasks, h(payload));
                true
            }
            (None, Some(any)) => {
                run_in_order(&self.0.tasks, any(event.to_owned(), payload));
                true
            }
            (None, None) => false,
        }
    }

    /// `serverSideEmit(event, ...args)`: runs this namespace's server-side handlers for `event`
    /// on every node of the cluster (this one included). `affected` counts the nodes where a
    /// handler ran; nodes that did not answer within the cluster timeout are listed.
    pub async fn server_side_emit(&self, event: &str, args: Vec<Value>) -> super::ClusterCount {
        let here = usize::from(self.dispatch_server_side(event, Payload::json(args.clone())));
        let Some(adapter) = self.adapter() else {
            return super::ClusterCount { affected: here, missing_nodes: Vec::new() };
        };
        let op = super::RemoteOp::ServerSideEmit { nsp: self.0.name.clone(), event: event.to_owned(), args };
        let remote = adapter.request(op).await;
        super::ClusterCount { affected: here + remote.affected, missing_nodes: remote.missing }
    }

    /// Executes a prepared broadcast on this node; returns the number of recipients.
    pub fn execute_broadcast(&self, b: &Broadcast) -> usize {
        self.execute(b)
    }

    /// A broadcast to `room`.
    pub fn to(&self, room: impl Into<String>) -> BroadcastOperator {
        BroadcastOperator::new(self.clone()).to(room)
    }

    /// A broadcast to every socket except those in `room`.
    pub fn except(&self, room: impl Into<String>) -> BroadcastOperator {
        BroadcastOperator::new(self.clone()).except(room)
    }

    /// The sockets in any of `rooms` (every socket when empty) except those in any of `except`:
    /// `broadcast().to(…).except(…)` from lists.
    pub fn select(&self, rooms: &[String], except: &[String]) -> BroadcastOperator {
        BroadcastOperator::selecting(self.clone(), Selector::new(self.name(), rooms, except))
    }

    /// A broadcast to every socket of the namespace.
    pub fn broadcast(&self) -> BroadcastOperator {
        BroadcastOperator::new(self.clone())
    }

    /// Emits to every socket of the namespace; returns the number of recipients.
    pub fn emit(&self, event: &str, payload: impl Into<Payload>) -> usize {
        self.broadcast().emit(event, payload)
    }

    /// The socket with id `sid`, if it is connected here.
    pub fn socket(&self, sid: &str) -> Option<Socket> {
        self.0.sockets.get(&Sid::parse(sid)?).map(|s| s.clone())
    }

    /// Every connected socket.
    pub fn sockets(&self) -> Vec<Socket> {
        self.0.sockets.iter().map(|e| e.value().clone()).collect()
    }

    /// Number of connected sockets.
    pub fn socket_count(&self) -> usize {
        self.0.sockets.len()
    }

    /// Names of rooms with at least one member (socket-id rooms excluded).
    pub fn rooms(&self) -> Vec<String> {
        self.0.rooms.room_names()
    }

    /// The cluster adapter, if this node is part of a cluster.
    pub fn adapter(&self) -> Option<&Arc<dyn Adapter>> {
        self.0.adapter.get()
    }

    /// Tells the cluster that `room` gained its first or lost its last local member.
    pub(crate) fn room_changed(&self, room: &str) {
        if let Some(adapter) = self.0.adapter.get() {
            adapter.room_changed(&self.0.name, room);
        }
    }

    /// The node's connection state recovery, when on.
    pub(crate) fn recovery(&self) -> Option<&Arc<Recovery>> {
        self.0.recovery.as_ref()
    }

    /// Whether this node must receive the broadcasts to `room` of this namespace: a socket here
    /// is in it, a disconnected session kept here was, or it is the own room of a socket here
    /// whose id names another node (a session recovered here from elsewhere).
    pub fn has_local_interest(&self, room: &str) -> bool {
        if self.0.rooms.len_of(room) > 0 {
            return true;
        }
        let Some(recovery) = &self.0.recovery else { return false };
        if let Some(sid) = Sid::parse(room)
            && sid.tag() != recovery.node_tag()
            && self.0.sockets.contains_key(&sid)
        {
            return true;
        }
        recovery.has_interest(&self.0.name, room)
    }

    pub(crate) fn max_rooms_per_socket(&self) -> usize {
        self.0.max_rooms_per_socket
    }

    pub(crate) fn max_pending_acks(&self) -> usize {
        self.0.max_pending_acks
    }

    /// How long an emit with ack waits when the caller gives no timeout.
    pub(crate) fn ack_timeout(&self) -> std::time::Duration {
        self.0.ack_timeout
    }

    pub(crate) fn registry(&self) -> &RoomRegistry<Socket> {
        &self.0.rooms
    }

    pub(crate) fn has_middleware(&self) -> bool {
        !self.0.handlers.read().middleware.is_empty()
    }

    pub(crate) async fn run_middleware(
        &self,
        conn: &Arc<Connection<ClientState>>,
        auth: &Value,
    ) -> Result<Granted, ConnectError> {
        let middleware = self.0.handlers.read().middleware.clone();
        let grant = ConnectGrant::default();
        for m in middleware {
            let req = ConnectRequest {
                nsp: self.0.name.clone(),
                auth: auth.clone(),
                handshake: conn.handshake().clone(),
                grant: grant.clone(),
            };
            m(req).await?;
        }
        Ok(grant.take())
    }

    pub(crate) fn add_socket(&self, socket: Socket) {
        self.0.sockets.insert(socket.sid(), socket);
    }

    pub(crate) fn remove_socket(&self, sid: Sid) {
        if self.0.sockets.remove(&sid).is_some() {
            metrics::gauge!(crate::metrics::SOCKETIO_SOCKETS).decrement(1.0);
        }
    }

    pub(crate) fn run_connect_handlers(&self, socket: &Socket) {
        let handlers = self.0.handlers.read().connect.clone();
        for h in handlers {
            run_in_order(&self.0.tasks, h(socket.clone()));
        }
    }

    pub(crate) fn run_disconnect_handlers(&self, socket: &Socket, reason: &'static str) {
        let handlers = self.0.handlers.read().disconnect.clone();
        for h in handlers {
            run_in_order(&self.0.tasks, h(socket.clone(), reason));
        }
    }

    pub(crate) fn dispatch_event(&self, socket: &Socket, packet: Packet, attachments: Vec<Bytes>) {
        let Some(Value::Array(mut items)) = packet.data else { return };
        if items.is_empty() {
            return;
        }
        let name = match items.remove(0) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let handler = {
            let handlers = self.0.handlers.read();
            handlers.events.get(&name).or(handlers.any.as_ref()).cloned()
        };
        let Some(handler) = handler else { return };
        let ack = packet.id.map(|id| AckSender::new(socket.clone(), id));
        let event = Event { name, payload: Payload { args: items, attachments }, ack };
        run_in_order(&self.0.tasks, handler(socket.clone(), event));
    }

    /// Executes a broadcast on this node's sockets; returns the number of recipients.
    ///
    /// With connection state recovery, a broadcast with an offset is logged first and sent
    /// under the recovery lock, so that the log's order is the order each socket was sent it;
    /// each recipient's tracking records whether it was queued. A broadcast whose offset this
    /// node already logged is not executed again.
    pub(crate) fn execute(&self, b: &Broadcast) -> usize {
        let (Some(recovery), Some(offset), false) = (&self.0.recovery, b.offset, b.flags.volatile) else {
            let mut flush = Vec::new();
            let recipients =
                self.fan_out(b, &mut flush, |socket, frames| socket.queue_frames(frames, b.flags.volatile).1);
            crate::engineio::flush_spread(flush, &self.0.tasks);
            return recipients;
        };
        let mut state = recovery.lock();
        let now = std::time::Instant::now();
        let Some((seq, relays)) = state.log(now, offset, &b.selector, &b.packet) else {
            return 0;
        };
        let mut flush = Vec::new();
        let recipients = self.fan_out(b, &mut flush, |socket, frames| {
            let Some(tracking) = socket.tracking() else {
                return socket.queue_frames(frames, false).1;
            };
            let mut tracking = tracking.lock();
            if tracking.take_apart(now, offset) {
                return None;
            }
            let (result, conn) = socket.queue_frames(frames, false);
            match result {
                Enqueued::Queued => tracking.queued(offset),
                Enqueued::Closed => tracking.failed(seq),
                Enqueued::DroppedVolatile | Enqueued::TooLarge => {}
            }
            conn
        });
        // The gauges move with the sessions and once a second (not per broadcast).
        drop(state);
        crate::engineio::flush_spread(flush, &self.0.tasks);
        recovery.relay(relays);
        recipients
    }

    /// Connection state recovery: another node relays a broadcast for socket `sid`, a session
    /// that moved here (see [`super::RelayedPacket`]): sent to the socket unless it already got
    /// it here, or kept with its session. Returns whether the socket was sent it.
    pub fn receive_relayed(&self, relayed: &super::RelayedPacket) -> bool {
        let Some(recovery) = &self.0.recovery else { return false };
        let socket = self.socket(relayed.sid.as_str());
        let tracking = socket.as_ref().and_then(Socket::tracking);
        let mut state = recovery.lock();
        let now = std::time::Instant::now();
        let since = match tracking {
            Some(t) => {
                let mut t = t.lock();
                // Already sent to it apart (replayed, relayed by another node).
                if t.take_apart(now, relayed.packet.offset) {
                    return false;
                }
                Some(t.since)
            }
            None => None,
        };
        if !state.log_relayed(now, &self.0.name, relayed.sid, &relayed.packet, since) {
            return false;
        }
        let (Some(socket), Some(tracking)) = (&socket, tracking) else { return false };
        if socket.send_frames(&relayed.packet.packet.frames(), false) == Enqueued::Queued {
            tracking.lock().queued_apart(now, relayed.packet.offset);
        }
        true
    }

    /// Queues `b` for the sockets it selects here, each through `queue`; returns how many. The
    /// connections `queue` says must be flushed go to `flush`: the caller writes them once every
    /// recipient has the frames in its queue (see [`crate::engineio::flush_spread`]).
    fn fan_out(
        &self,
        b: &Broadcast,
        flush: &mut Vec<Arc<Connection<ClientState>>>,
        mut queue: impl FnMut(&Socket, &[crate::engineio::packet::Frame]) -> Option<Arc<Connection<ClientState>>>,
    ) -> usize {
        let frames = b.packet.frames();
        let except = self.members_of(&b.selector.except);
        let mut recipients = 0usize;
        let mut deliver = |socket: &Socket| {
            if !except.contains(&socket.sid()) {
                flush.extend(queue(socket, &frames));
                recipients += 1;
            }
        };
        if b.selector.rooms.is_empty() {
            for entry in self.0.sockets.iter() {
                deliver(entry.value());
            }
        } else if let [room] = b.selector.rooms.as_slice() {
            self.0.rooms.for_each_member(room, |_, socket| deliver(socket));
            // The socket this id names is never a registry member of its own
            // room, so it is reached here and only here.
            if let Some(socket) = Sid::parse(room).and_then(|sid| self.0.sockets.get(&sid)) {
                deliver(socket.value());
            }
        } else {
            for sid in self.members_of(&b.selector.rooms) {
                if let Some(socket) = self.0.sockets.get(&sid) {
                    deliver(socket.value());
                }
            }
        }
        metrics::counter!(crate::metrics::BROADCASTS).increment(1);
        metrics::histogram!(crate::metrics::BROADCAST_RECIPIENTS).record(recipients as f64);
        recipients
    }

    /// Every socket in any of `rooms` (a socket id names its own room).
    pub(crate) fn members_of(&self, rooms: &[String]) -> HashSet<Sid> {
        let mut out = HashSet::new();
        for room in rooms {
            self.0.rooms.for_each_member(room, |sid, _| {
                out.insert(sid);
            });
            if let Some(sid) = Sid::parse(room).filter(|sid| self.0.sockets.contains_key(sid)) {
                out.insert(sid);
            }
        }
        out
    }
}
