//! An Engine.IO endpoint: routes each HTTP request of its path (a
//! handshake that opens a session, or a request of an existing session: a
//! polling GET or POST, a WebSocket joining it), opens sessions and feeds
//! their inbound packets to the application.
//!
//! Everything protocol-related is decided by [`Session`]; the endpoint, the
//! polling handlers ([`super::polling`]), the driver task ([`super::driver`])
//! and the WebSocket transport ([`super::websocket`]) only move bytes and wake tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use dashmap::DashMap;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::EngineConfig;
use super::connection::{Connection, Handshake, Message};
use super::driver::drive;
use super::packet::{self, Frame, PacketType};
use super::protocol::{Framing, Protocol};
use super::relay::{self, Relay, Route};
use super::response::{
    Body, ErrorCode, cors_headers, error_response, json_response, parse_query, payload_response, preflight,
    upgrade_response,
};
use super::session::{CloseReason, Inbound, Session, Transport};
use super::websocket;
use crate::sid;

/// The application side of an Engine.IO endpoint.
pub trait Handler: Send + Sync + 'static {
    /// Per-connection application state.
    type State: Send + Sync + 'static;
    /// A session opened; returns its state. Called before any message.
    fn on_open(&self, conn: &Arc<Connection<Self::State>>) -> Self::State;
    /// The session's open packet is on its way (in the polling handshake's answer, or queued
    /// first on the WebSocket): what the application sends from now on follows it. Called once,
    /// after [`Handler::on_open`] and before any message.
    fn on_ready(&self, conn: &Arc<Connection<Self::State>>) {
        let _ = conn;
    }
    /// A message arrived, in order.
    fn on_message(&self, conn: &Arc<Connection<Self::State>>, msg: Message);
    /// The session ended; called exactly once.
    fn on_close(&self, conn: &Arc<Connection<Self::State>>, reason: CloseReason);
}

/// An Engine.IO endpoint serving one path.
pub struct Engine<H: Handler> {
    pub(super) inner: Arc<EngineInner<H>>,
}

impl<H: Handler> std::fmt::Debug for Engine<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("sessions", &self.inner.sessions.len()).finish_non_exhaustive()
    }
}

impl<H: Handler> Clone for Engine<H> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

pub(crate) struct EngineInner<H: Handler> {
    pub(crate) config: EngineConfig,
    pub(crate) handler: H,
    pub(super) sessions: DashMap<sid::Sid, Arc<Connection<H::State>>>,
    capacity: Option<Arc<Semaphore>>,
    shutdown: CancellationToken,
    /// Cancelled by [`Engine::shutdown`]: ends the WebSockets relayed to other nodes.
    pub(super) closing: CancellationToken,
    pub(super) tasks: TaskTracker,
    /// Carries requests of sessions other nodes hold (set once by the cluster).
    relay: std::sync::OnceLock<Arc<dyn Relay>>,
}

impl<H: Handler> Engine<H> {
    /// An endpoint with `config`, delivering to `handler`.
    pub fn new(config: EngineConfig, handler: H) -> Self {
        let capacity = (config.max_sessions > 0).then(|| Arc::new(Semaphore::new(config.max_sessions)));
        Self {
            inner: Arc::new(EngineInner {
                config,
                handler,
                sessions: DashMap::new(),
                capacity,
                shutdown: CancellationToken::new(),
                closing: CancellationToken::new(),
                tasks: TaskTracker::new(),
                relay: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The application handler.
    pub fn handler(&self) -> &H {
        &self.inner.handler
    }

    /// Sends the requests of sessions held by other nodes (their ids carry another node's tag)
    /// through `relay`; without one they get `400 Session ID unknown`. Set once; a second call
    /// returns its argument.
    pub fn set_relay(&self, relay: Arc<dyn Relay>) -> Result<(), Arc<dyn Relay>> {
        self.inner.relay.set(relay)
    }

    /// Packets and bytes waiting in the sessions' send queues, summed over every session
    /// (each session's lock taken in turn: for a scrape, not for a hot path).
    pub fn queued(&self) -> (usize, usize) {
        self.inner.sessions.iter().fold((0, 0), |(packets, bytes), entry| {
            let (p, b) = entry.value().session.lock().queued();
            (packets + p, bytes + b)
        })
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Refuses new sessions from now on (handshakes get 403 `Forbidden`); open sessions are
    /// left alone.
    pub fn stop_accepting(&self) {
        self.inner.shutdown.cancel();
    }

    /// Stops accepting, then closes the open sessions spread evenly over `spread` (clients see
    /// a transport close and reconnect, elsewhere if there is somewhere else), so they do not
    /// all reconnect to the other nodes in the same millisecond. Returns once the last one
    /// was told to close; [`Self::shutdown`] then waits for their tasks.
    pub async fn close_spread(&self, spread: std::time::Duration) {
        self.stop_accepting();
        let sessions: Vec<_> = self.inner.sessions.iter().map(|e| e.value().clone()).collect();
        let Some(last) = sessions.len().checked_sub(1) else { return };
        let start = tokio::time::Instant::now();
        for (i, conn) in sessions.iter().enumerate() {
            if last > 0 && !spread.is_zero() {
                let at = spread.mul_f64(i as f64 / last as f64);
                tokio::time::sleep_until(start + at).await;
            }
            conn.close_with(CloseReason::Shutdown);
        }
    }

    /// Closes every session (clients see a transport close and reconnect
    /// elsewhere) and waits for their tasks to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.closing.cancel();
        for entry in self.inner.sessions.iter() {
            entry.value().close_with(CloseReason::Shutdown);
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Handles one HTTP request addressed to this endpoint's path.
    pub async fn handle(&self, req: Request<Incoming>, remote_addr: SocketAddr) -> Response<Body> {
        let cors = cors_headers(&self.inner.config.cors, req.headers());
        let mut response =
            if req.method() == Method::OPTIONS { preflight(req.headers()) } else { self.route(req, remote_addr).await };
        response.headers_mut().extend(cors);
        response
    }

    /// Routes a request that is not a CORS preflight.
    async fn route(&self, req: Request<Incoming>, remote_addr: SocketAddr) -> Response<Body> {
        let query = parse_query(req.uri().query().unwrap_or(""));
        let Some(transport) = transport_of(&query) else {
            return error_response(ErrorCode::UnknownTransport);
        };
        let is_upgrade = fastwebsockets::upgrade::is_upgrade_request(&req);
        let kind = RequestKind::of(&req, &query, transport);
        metrics::counter!(crate::metrics::ENGINE_HTTP_REQUESTS, crate::metrics::label::KIND => kind.label())
            .increment(1);
        match query.get("sid") {
            Some(sid) => self.route_to_session(req, sid, transport, is_upgrade, Protocol::of_query(&query)).await,
            None => self.handshake(req, &query, transport, is_upgrade, remote_addr),
        }
    }

    /// A request of an existing session: a polling GET or POST, or a WebSocket joining it.
    async fn route_to_session(
        &self,
        mut req: Request<Incoming>,
        sid: &str,
        transport: Transport,
        is_upgrade: bool,
        protocol: Protocol,
    ) -> Response<Body> {
        let Some(sid) = sid::Sid::parse(sid) else {
            return error_response(ErrorCode::UnknownSid);
        };
        let conn = self.inner.sessions.get(&sid).map(|c| c.clone());
        if conn.is_none()
            && let Some(relay) = self.inner.relay.get()
            && let Route::Remote(owner) = relay::route(&sid, self.inner.config.node_tag)
        {
            return self.relay(relay.clone(), owner, req, sid, transport, is_upgrade, protocol).await;
        }
        // A session that has just ended is unknown, even before its driver has removed it.
        let Some(conn) = conn.filter(|c| c.session.lock().accepts_requests()) else {
            return error_response(ErrorCode::UnknownSid);
        };
        // Every request of a session speaks the protocol of its handshake (as engine.io checks).
        if conn.protocol() != protocol {
            return error_response(ErrorCode::BadRequest);
        }
        match transport {
            Transport::WebSocket if is_upgrade => self.upgrade_existing(&mut req, conn),
            Transport::WebSocket => error_response(ErrorCode::BadRequest),
            Transport::Polling if req.method() == Method::GET => self.poll(conn).await,
            Transport::Polling if req.method() == Method::POST => self.post(req, conn).await,
            Transport::Polling => error_response(ErrorCode::BadRequest),
        }
    }

    /// A request without `sid`: checks it, opens a session and answers with
    /// the open packet (in the polling response, or first on the WebSocket).
    fn handshake(
        &self,
        req: Request<Incoming>,
        query: &HashMap<String, String>,
        transport: Transport,
        is_upgrade: bool,
        remote_addr: SocketAddr,
    ) -> Response<Body> {
        let framing = Framing::of_query(query);
        let permit = match self.admit(&req, framing.protocol, transport, is_upgrade) {
            Ok(permit) => permit,
            Err(Refusal::Error(code)) => return error_response(code),
            Err(Refusal::AtCapacity) => {
                return json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"code":3,"message":"Server at capacity"}"#);
            }
        };
        let handshake = Handshake {
            remote_addr,
            headers: Handshake::keep_headers(req.headers()),
            query: req.uri().query().unwrap_or("").to_owned(),
            issued: std::time::SystemTime::now(),
        };
        let (conn, open) = self.open_session(transport, framing, handshake, permit);
        match transport {
            Transport::Polling => {
                let mut body = BytesMut::new();
                let kind = framing.encode_payload(&[open], &mut body);
                self.inner.handler.on_ready(&conn);
                payload_response(kind, body.freeze())
            }
            Transport::WebSocket => self.accept_websocket(req, conn, open),
        }
    }

    /// Whether a handshake may open a session: its method, transport,
    /// protocol version, the node not shutting down, and a free session slot
    /// (returned, to be held for the session's life).
    fn admit(
        &self,
        req: &Request<Incoming>,
        protocol: Protocol,
        transport: Transport,
        is_upgrade: bool,
    ) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        if req.method() != Method::GET {
            return Err(Refusal::Error(ErrorCode::BadHandshakeMethod));
        }
        if transport == Transport::WebSocket && !is_upgrade {
            return Err(Refusal::Error(ErrorCode::BadRequest));
        }
        if protocol == Protocol::V3 && !self.inner.config.allow_eio3 {
            return Err(Refusal::Error(ErrorCode::UnsupportedProtocolVersion));
        }
        if self.inner.shutdown.is_cancelled() {
            return Err(Refusal::Error(ErrorCode::Forbidden));
        }
        match &self.inner.capacity {
            Some(sem) => sem.clone().try_acquire_owned().map(Some).map_err(|_| Refusal::AtCapacity),
            None => Ok(None),
        }
    }

    /// Completes a WebSocket handshake: the open packet is the first thing
    /// the driver writes once the socket's reader hands it the writer.
    fn accept_websocket(
        &self,
        mut req: Request<Incoming>,
        conn: Arc<Connection<H::State>>,
        open: Frame,
    ) -> Response<Body> {
        conn.send_frames(&[open], false);
        self.inner.handler.on_ready(&conn);
        let permit = req.extensions().get::<crate::net::ConnPermit>().cloned();
        match fastwebsockets::upgrade::upgrade(&mut req) {
            Ok((response, fut)) => {
                let engine = self.clone();
                self.inner.tasks.spawn(async move {
                    match fut.await {
                        Ok(ws) => websocket::run_direct(&engine, &conn, ws, permit),
                        Err(_) => conn.close_with(CloseReason::TransportError),
                    }
                });
                upgrade_response(response)
            }
            Err(_) => {
                conn.close_with(CloseReason::TransportError);
                error_response(ErrorCode::BadRequest)
            }
        }
    }

    /// Creates the session (timers start now, before the reply), asks the
    /// application for its state and starts the driver task. Returns the
    /// connection and its open packet.
    pub(super) fn open_session(
        &self,
        transport: Transport,
        framing: Framing,
        handshake: Handshake,
        permit: Option<OwnedSemaphorePermit>,
    ) -> (Arc<Connection<H::State>>, Frame) {
        let config = &self.inner.config;
        // The id names this node, so that any other node can send the session's requests here.
        let id = sid::Sid::with_tag(config.node_tag);
        let session = Session::with_protocol(
            Instant::now(),
            transport,
            config.timings(),
            config.queue_limits(),
            framing.protocol,
        );
        let conn = Arc::new(Connection::new(id, framing, session, handshake));
        self.inner.sessions.insert(id, conn.clone());
        let upgrades = if transport == Transport::Polling && config.allow_upgrades { r#"["websocket"]"# } else { "[]" };
        let open = format!(
            r#"{{"sid":"{}","upgrades":{},"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
            id.as_str(),
            upgrades,
            config.ping_interval.as_millis(),
            config.ping_timeout.as_millis(),
            config.max_payload
        );
        let state = self.inner.handler.on_open(&conn);
        let _ = conn.state.set(state);
        metrics::counter!(crate::metrics::ENGINE_CONNECTIONS_OPENED).increment(1);
        metrics::gauge!(crate::metrics::ENGINE_CONNECTIONS).increment(1.0);
        if framing.protocol == Protocol::V3 {
            metrics::gauge!(crate::metrics::ENGINE_EIO3_CONNECTIONS).increment(1.0);
        }
        let engine = self.clone();
        let driver_conn = conn.clone();
        self.inner.tasks.spawn(drive(engine, driver_conn, permit));
        (conn, Frame::with_data(PacketType::Open, open.as_bytes()))
    }

    /// Forgets an ended session: its id is unknown from now on.
    pub(super) fn forget(&self, conn: &Connection<H::State>) {
        self.inner.sessions.remove(&conn.id);
    }

    /// Feeds one inbound packet to the session and the application. Returns
    /// false once the session has ended.
    pub(crate) fn deliver(&self, conn: &Arc<Connection<H::State>>, p: packet::Packet, via: Transport) -> bool {
        let outcome = conn.session.lock().on_packet(Instant::now(), p, via);
        match outcome {
            Ok(Inbound::None) => {
                // A pong moves the next ping: the driver recomputes its deadline.
                conn.driver_wake.notify_one();
                true
            }
            Ok(Inbound::Message(text)) => {
                self.inner.handler.on_message(conn, Message::Text(text));
                true
            }
            Ok(Inbound::Binary(raw)) => {
                self.inner.handler.on_message(conn, Message::Binary(raw));
                true
            }
            Ok(Inbound::ProbeReply) => {
                // Both the parked GET (answer noop) and the driver must know.
                conn.wake_all();
                true
            }
            Ok(Inbound::PongQueued) => {
                // The pong goes out by whichever transport carries the session, and the driver
                // recomputes the heartbeat deadline.
                conn.wake_all();
                true
            }
            Err(_) => {
                conn.wake_all();
                false
            }
        }
    }

    fn upgrade_existing(&self, req: &mut Request<Incoming>, conn: Arc<Connection<H::State>>) -> Response<Body> {
        let permit = req.extensions().get::<crate::net::ConnPermit>().cloned();
        let Ok((response, fut)) = fastwebsockets::upgrade::upgrade(&mut *req) else {
            return error_response(ErrorCode::BadRequest);
        };
        let allowed = self.inner.config.allow_upgrades && conn.session.lock().begin_upgrade(Instant::now()).is_ok();
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            let Ok(ws) = fut.await else {
                if allowed {
                    conn.session.lock().abort_upgrade();
                }
                return;
            };
            if allowed {
                websocket::run_probe(engine, conn, ws, permit).await;
            } else {
                // Accepted then closed: the session already has a WebSocket.
                websocket::close_now(ws).await;
            }
        });
        upgrade_response(response)
    }

    pub(crate) fn upgrade_timeout(&self) -> std::time::Duration {
        self.inner.config.upgrade_timeout
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.inner.config.max_payload
    }
}

/// Why a handshake opens no session.
enum Refusal {
    /// An Engine.IO error (HTTP 400 or 403).
    Error(ErrorCode),
    /// Every session slot is taken (HTTP 503).
    AtCapacity,
}

/// The `transport` of a request's query, if it is one Engine.IO knows.
fn transport_of(query: &HashMap<String, String>) -> Option<Transport> {
    match query.get("transport").map(String::as_str) {
        Some("polling") => Some(Transport::Polling),
        Some("websocket") => Some(Transport::WebSocket),
        _ => None,
    }
}

/// What an HTTP request on an Engine.IO path is for: the `kind` label of
/// `ioswarm_engine_http_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// No `sid`: opens a session (polling or WebSocket).
    Handshake,
    /// A polling GET of a session.
    Poll,
    /// A polling POST of a session.
    Post,
    /// A WebSocket joining a session (upgrade).
    WebSocket,
}

impl RequestKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 4] = [Self::Handshake, Self::Poll, Self::Post, Self::WebSocket];

    /// The `kind` label value.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Poll => "poll",
            Self::Post => "post",
            Self::WebSocket => "websocket",
        }
    }

    fn of(req: &Request<Incoming>, query: &HashMap<String, String>, transport: Transport) -> Self {
        match (query.contains_key("sid"), transport, req.method()) {
            (false, _, _) => Self::Handshake,
            (true, Transport::WebSocket, _) => Self::WebSocket,
            (true, Transport::Polling, &Method::POST) => Self::Post,
            (true, Transport::Polling, _) => Self::Poll,
        }
    }
}
