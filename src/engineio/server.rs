//! The Engine.IO endpoint: request validation, handshakes, long-polling
//! requests, WebSocket attachment and the per-session driver task.
//!
//! Everything protocol-related is decided by [`Session`]; this file only
//! moves bytes and wakes tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{Cors, EngineConfig};
use super::packet::{self, Frame, PacketType};
use super::session::{CloseReason, Enqueued, Inbound, PollReply, PollStart, RequestError, Session, Transport};
use super::websocket::{self, WsWriter};
use crate::sid;

/// Engine.IO error codes and their messages, as engine.io sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A message delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
}

/// What the HTTP request that opened a session carried.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// Request headers (cookies, authorization, origin…).
    pub headers: HeaderMap,
    /// The raw query string.
    pub query: String,
    /// When the session opened.
    pub issued: std::time::SystemTime,
}

/// The application side of an Engine.IO endpoint.
pub trait Handler: Send + Sync + 'static {
    /// Per-connection application state.
    type State: Send + Sync + 'static;
    /// A session opened; returns its state. Called before any message.
    fn on_open(&self, conn: &Arc<Connection<Self::State>>) -> Self::State;
    /// A message arrived, in order.
    fn on_message(&self, conn: &Arc<Connection<Self::State>>, msg: Message);
    /// The session ended; called exactly once.
    fn on_close(&self, conn: &Arc<Connection<Self::State>>, reason: CloseReason);
}

/// One Engine.IO connection, shared by its transports and the application.
pub struct Connection<S> {
    id: sid::Sid,
    session: Mutex<Session>,
    /// Wakes the driver: frames queued for a WebSocket, timers moved, closed.
    driver_wake: Notify,
    /// Wakes a parked polling GET.
    poll_wake: Notify,
    /// Wakes every task waiting for the session to end.
    closed_notify: Notify,
    /// A WebSocket writer waiting to be adopted by the driver.
    new_writer: Mutex<Option<WsWriter>>,
    /// Control frames the WebSocket reader owes the peer (pong, close echo).
    control: Mutex<Vec<(fastwebsockets::OpCode, Bytes)>>,
    handshake: Handshake,
    state: OnceLock<S>,
}

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<S> Connection<S> {
    /// The Engine.IO session id.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// The request that opened the session.
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// The application state returned by [`Handler::on_open`].
    pub fn state(&self) -> Option<&S> {
        self.state.get()
    }

    /// The current transport name (`polling` or `websocket`).
    pub fn transport(&self) -> &'static str {
        self.session.lock().transport().as_str()
    }

    /// Queues a text message.
    pub fn send_text(&self, text: &str) -> bool {
        self.send_frames(&[Frame::message(text.as_bytes())], false) == Enqueued::Queued
    }

    /// Queues a binary message.
    pub fn send_binary(&self, data: Bytes) -> bool {
        self.send_frames(&[Frame::Binary(data)], false) == Enqueued::Queued
    }

    /// Queues pre-encoded frames atomically. Never blocks: a client that is
    /// too far behind is disconnected, and volatile frames are dropped for it.
    pub(crate) fn send_frames(&self, frames: &[Frame], volatile: bool) -> Enqueued {
        self.enqueue_with(|s| s.enqueue(frames, volatile))
    }

    /// Queues `frames` so that they end a WebSocket write: what is queued
    /// after them goes out in a later write (see [`Session::enqueue_own_write`]).
    pub(crate) fn send_frames_own_write(&self, frames: &[Frame]) -> Enqueued {
        self.enqueue_with(|s| s.enqueue_own_write(frames))
    }

    fn enqueue_with(&self, enqueue: impl FnOnce(&mut Session) -> Enqueued) -> Enqueued {
        let (result, transport, was_empty) = {
            let mut s = self.session.lock();
            let was_empty = s.queue_is_empty();
            (enqueue(&mut s), s.transport(), was_empty)
        };
        match result {
            // Only the first packet of a batch wakes the transport: whoever
            // drains the queue takes everything, so a non-empty queue means a
            // wake-up is already on its way (one per batch, not per packet).
            Enqueued::Queued if !was_empty => {}
            Enqueued::Queued => match transport {
                Transport::WebSocket => self.driver_wake.notify_one(),
                Transport::Polling => self.poll_wake.notify_one(),
            },
            Enqueued::Closed => self.wake_all(),
            Enqueued::DroppedVolatile | Enqueued::TooLarge => {}
        }
        result
    }

    /// Closes the connection (queued packets are flushed first over WebSocket).
    pub fn close(&self) {
        self.close_with(CloseReason::ServerClose);
    }

    pub(crate) fn close_with(&self, reason: CloseReason) {
        self.session.lock().close(reason);
        self.wake_all();
    }

    fn wake_all(&self) {
        self.driver_wake.notify_one();
        self.poll_wake.notify_one();
        if self.session.lock().closed().is_some() {
            self.closed_notify.notify_waiters();
        }
    }

    /// Resolves once the session has ended for a cause that drops what is
    /// queued (not a graceful server close, whose queue is still flushed).
    pub(crate) async fn wait_aborted(&self) {
        loop {
            let notified = self.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.session.lock().closed().is_some_and(|r| !r.is_graceful()) {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn poll_notify(&self) {
        self.poll_wake.notify_one();
    }

    /// Resolves once the session has ended.
    pub(crate) async fn wait_closed(&self) {
        loop {
            let notified = self.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.session.lock().closed().is_some() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn session(&self) -> &Mutex<Session> {
        &self.session
    }

    pub(crate) fn wake_driver(&self) {
        self.driver_wake.notify_one();
    }

    pub(crate) fn adopt_writer(&self, writer: WsWriter) {
        *self.new_writer.lock() = Some(writer);
        self.driver_wake.notify_one();
    }

    pub(crate) fn push_control(&self, op: fastwebsockets::OpCode, payload: Bytes) {
        let mut control = self.control.lock();
        if control.len() < 8 {
            control.push((op, payload));
        }
        drop(control);
        self.driver_wake.notify_one();
    }
}

/// The response body type of every endpoint.
pub(crate) type Body = Full<Bytes>;

/// An Engine.IO endpoint serving one path.
pub struct Engine<H: Handler> {
    inner: Arc<EngineInner<H>>,
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
    sessions: DashMap<sid::Sid, Arc<Connection<H::State>>>,
    capacity: Option<Arc<Semaphore>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
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
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// The application handler.
    pub fn handler(&self) -> &H {
        &self.inner.handler
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Closes every session (clients see a transport close and reconnect
    /// elsewhere) and waits for their tasks to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
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

    async fn route(&self, mut req: Request<Incoming>, remote_addr: SocketAddr) -> Response<Body> {
        let query = parse_query(req.uri().query().unwrap_or(""));
        let transport = match query.get("transport").map(String::as_str) {
            Some("polling") => Transport::Polling,
            Some("websocket") => Transport::WebSocket,
            _ => return error_response(ErrorCode::UnknownTransport),
        };
        let is_upgrade = fastwebsockets::upgrade::is_upgrade_request(&req);
        metrics::counter!(crate::metrics::ENGINE_HTTP_REQUESTS, crate::metrics::label::KIND => RequestKind::of(&req, &query, transport).label())
            .increment(1);

        if let Some(sid) = query.get("sid") {
            let conn = sid::Sid::parse(sid).and_then(|sid| self.inner.sessions.get(&sid).map(|c| c.clone()));
            // A session that has just ended is unknown, even before its driver has removed it.
            let Some(conn) = conn.filter(|c| c.session.lock().accepts_requests()) else {
                return error_response(ErrorCode::UnknownSid);
            };
            return match transport {
                Transport::WebSocket if is_upgrade => self.upgrade_existing(&mut req, conn),
                Transport::WebSocket => error_response(ErrorCode::BadRequest),
                Transport::Polling if req.method() == Method::GET => self.poll(conn).await,
                Transport::Polling if req.method() == Method::POST => self.post(req, conn).await,
                Transport::Polling => error_response(ErrorCode::BadRequest),
            };
        }

        if req.method() != Method::GET {
            return error_response(ErrorCode::BadHandshakeMethod);
        }
        if transport == Transport::WebSocket && !is_upgrade {
            return error_response(ErrorCode::BadRequest);
        }
        if query.get("EIO").map(String::as_str) != Some("4") {
            return error_response(ErrorCode::UnsupportedProtocolVersion);
        }
        if self.inner.shutdown.is_cancelled() {
            return error_response(ErrorCode::Forbidden);
        }
        let permit = match &self.inner.capacity {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"code":3,"message":"Server at capacity"}"#,
                    );
                }
            },
            None => None,
        };
        let handshake = Handshake {
            remote_addr,
            headers: req.headers().clone(),
            query: req.uri().query().unwrap_or("").to_owned(),
            issued: std::time::SystemTime::now(),
        };
        let (conn, open) = self.open_session(transport, handshake, permit);
        match transport {
            Transport::Polling => {
                let mut body = BytesMut::new();
                packet::encode_payload([&open], &mut body);
                text_response(body.freeze())
            }
            Transport::WebSocket => {
                // The open packet is the first thing the driver writes.
                conn.send_frames(&[open], false);
                let permit = req.extensions().get::<crate::http::ConnPermit>().cloned();
                match fastwebsockets::upgrade::upgrade(&mut req) {
                    Ok((response, fut)) => {
                        let engine = self.clone();
                        self.inner.tasks.spawn(async move {
                            let _permit = permit;
                            match fut.await {
                                Ok(ws) => websocket::run_direct(engine, conn, ws).await,
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
        }
    }

    fn open_session(
        &self,
        transport: Transport,
        handshake: Handshake,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> (Arc<Connection<H::State>>, Frame) {
        let config = &self.inner.config;
        let id = sid::Sid::random();
        let now = Instant::now();
        let conn = Arc::new(Connection {
            id,
            session: Mutex::new(Session::new(now, transport, config.timings(), config.queue_limits())),
            driver_wake: Notify::new(),
            poll_wake: Notify::new(),
            closed_notify: Notify::new(),
            new_writer: Mutex::new(None),
            control: Mutex::new(Vec::new()),
            handshake,
            state: OnceLock::new(),
        });
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
        let engine = self.clone();
        let driver_conn = conn.clone();
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            drive(engine, driver_conn).await;
        });
        (conn, Frame::with_data(PacketType::Open, open.as_bytes()))
    }

    async fn poll(&self, conn: Arc<Connection<H::State>>) -> Response<Body> {
        let start = conn.session.lock().poll_start();
        let reply = match start {
            Ok(PollStart::Reply(reply)) => reply,
            Ok(PollStart::Park) => {
                let guard = ParkGuard { conn: &conn, answered: false };
                guard.wait().await
            }
            Err(RequestError::DuplicateGet) => {
                conn.wake_all();
                return error_response(ErrorCode::BadRequest);
            }
            Err(_) => return error_response(ErrorCode::BadRequest),
        };
        // A closed session's driver lingers until its last reply is taken.
        conn.driver_wake.notify_one();
        let mut body = BytesMut::new();
        match reply {
            PollReply::Frames(frames) => {
                metrics::counter!(crate::metrics::SOCKETIO_PACKETS_SENT).increment(frames.len() as u64);
                packet::encode_payload(&frames, &mut body);
            }
            PollReply::Noop => packet::encode_payload([&Frame::control(PacketType::Noop)], &mut body),
            PollReply::Close => packet::encode_payload([&Frame::control(PacketType::Close)], &mut body),
        }
        text_response(body.freeze())
    }

    async fn post(&self, req: Request<Incoming>, conn: Arc<Connection<H::State>>) -> Response<Body> {
        let max = self.inner.config.max_payload;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max) {
            return payload_too_large();
        }
        let started = conn.session.lock().post_start();
        if let Err(err) = started {
            if err == RequestError::DuplicatePost {
                conn.wake_all();
            }
            return error_response(ErrorCode::BadRequest);
        }
        // Marks the POST finished however this ends (the client may go away mid-body).
        let _post = PostGuard(&conn);
        let body = Limited::new(req.into_body(), max).collect().await;
        let body = match body {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    return payload_too_large();
                }
                conn.close_with(CloseReason::TransportError);
                return error_response(ErrorCode::BadRequest);
            }
        };
        match packet::decode_payload(body) {
            Ok(packets) => {
                for p in packets {
                    if !self.deliver(&conn, p, Transport::Polling) {
                        break;
                    }
                }
            }
            Err(_) => conn.close_with(CloseReason::ParseError),
        }
        text_response(Bytes::from_static(b"ok"))
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
            Err(_) => {
                conn.wake_all();
                false
            }
        }
    }

    fn upgrade_existing(&self, req: &mut Request<Incoming>, conn: Arc<Connection<H::State>>) -> Response<Body> {
        let permit = req.extensions().get::<crate::http::ConnPermit>().cloned();
        let Ok((response, fut)) = fastwebsockets::upgrade::upgrade(&mut *req) else {
            return error_response(ErrorCode::BadRequest);
        };
        let allowed = self.inner.config.allow_upgrades && conn.session.lock().begin_upgrade(Instant::now()).is_ok();
        let engine = self.clone();
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            let Ok(ws) = fut.await else {
                if allowed {
                    conn.session.lock().abort_upgrade();
                }
                return;
            };
            if allowed {
                websocket::run_probe(engine, conn, ws).await;
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

/// Ends a polling POST when dropped, whether it completed or was abandoned.
struct PostGuard<'a, S>(&'a Connection<S>);

impl<S> Drop for PostGuard<'_, S> {
    fn drop(&mut self) {
        self.0.session.lock().post_end();
    }
}

/// A parked polling GET: answered when the session has something for it;
/// marks the session free again if the client goes away first.
struct ParkGuard<'a, S> {
    conn: &'a Arc<Connection<S>>,
    answered: bool,
}

impl<S> ParkGuard<'_, S> {
    async fn wait(mut self) -> PollReply {
        loop {
            self.conn.poll_wake.notified().await;
            if let Some(reply) = self.conn.session.lock().poll_take() {
                self.answered = true;
                return reply;
            }
        }
    }
}

impl<S> Drop for ParkGuard<'_, S> {
    fn drop(&mut self) {
        if !self.answered {
            self.conn.session.lock().poll_abandoned();
        }
    }
}

/// The per-session task: fires timers, writes to the WebSocket when there is
/// one, and tears the session down once it is closed.
async fn drive<H: Handler>(engine: Engine<H>, conn: Arc<Connection<H::State>>) {
    let mut writer: Option<WsWriter> = None;
    let mut batch: Vec<Frame> = Vec::new();
    let reason = loop {
        if let Some(w) = conn.new_writer.lock().take() {
            writer = Some(w);
        }
        let now = Instant::now();
        let (deadline, closed, more) = {
            let mut s = conn.session.lock();
            match s.on_timer(now) {
                super::session::TimerOutcome::PingQueued => conn.poll_wake.notify_one(),
                super::session::TimerOutcome::Closed(_) => conn.poll_wake.notify_one(),
                _ => {}
            }
            let more = writer.is_some() && s.drain_for_websocket(&mut batch);
            (s.next_deadline(), s.closed(), more)
        };
        let control: Vec<_> = std::mem::take(&mut *conn.control.lock());
        if let Some(w) = writer.as_mut() {
            let wrote = if batch.is_empty() && control.is_empty() {
                Ok(())
            } else if closed.is_some() {
                // The last flush of a closed session: bounded, the client may not read.
                let flush = websocket::write_batch(w, &control, &batch, deadline, &conn);
                tokio::time::timeout(std::time::Duration::from_secs(2), flush)
                    .await
                    .unwrap_or(Err(fastwebsockets::WebSocketError::ConnectionClosed))
            } else {
                websocket::write_batch(w, &control, &batch, deadline, &conn).await
            };
            batch.clear();
            if batch.capacity() > 256 {
                batch = Vec::new();
            }
            if wrote.is_err() {
                conn.session.lock().close(CloseReason::TransportError);
                conn.poll_wake.notify_one();
                continue;
            }
        }
        if more {
            // The batch ended at a write end: the rest goes in the next write.
            continue;
        }
        if let Some(reason) = closed {
            break reason;
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = conn.driver_wake.notified() => {}
            () = sleep => {}
        }
    };

    conn.closed_notify.notify_waiters();
    conn.poll_wake.notify_one();
    if let Some(mut w) = writer.take() {
        websocket::close_writer(&mut w).await;
    }
    metrics::gauge!(crate::metrics::ENGINE_CONNECTIONS).decrement(1.0);
    metrics::counter!(crate::metrics::ENGINE_CONNECTIONS_CLOSED, crate::metrics::label::REASON => reason.label())
        .increment(1);
    engine.inner.handler.on_close(&conn, reason);
    // A polling client still owed a last answer (its last packets after a
    // graceful close, a noop after its own close) gets it with its next GET;
    // the session stays findable for a moment for that GET.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let notified = conn.driver_wake.notified();
        if !conn.session.lock().accepts_requests() {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    engine.inner.sessions.remove(&conn.id);
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

pub(crate) fn parse_query(query: &str) -> HashMap<String, String> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

fn error_response(code: ErrorCode) -> Response<Body> {
    let body = format!(r#"{{"code":{},"message":"{}"}}"#, code as u8, code.message());
    json_response(code.status(), body)
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn payload_too_large() -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    res
}

fn text_response(body: Bytes) -> Response<Body> {
    let mut res = Response::new(Full::new(body));
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn upgrade_response(response: Response<http_body_util::Empty<Bytes>>) -> Response<Body> {
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

fn cors_headers(cors: &Cors, req: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    let origin = req.get(header::ORIGIN);
    match cors {
        Cors::Disabled => {}
        Cors::Any => {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        Cors::Origins(list) => {
            if let Some(origin) = origin.filter(|o| list.iter().any(|allowed| o.as_bytes() == allowed.as_bytes())) {
                out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
                out.insert(header::VARY, HeaderValue::from_static("Origin"));
            }
        }
    }
    out
}

fn preflight(req: &HeaderMap) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::NO_CONTENT;
    let headers = res.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET,HEAD,PUT,PATCH,POST,DELETE"));
    if let Some(requested) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    res
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    #[derive(Debug)]
    struct Quiet;

    impl Handler for Quiet {
        type State = ();
        fn on_open(&self, _conn: &Arc<Connection<()>>) {}
        fn on_message(&self, _conn: &Arc<Connection<()>>, _msg: Message) {}
        fn on_close(&self, _conn: &Arc<Connection<()>>, _reason: CloseReason) {}
    }

    /// A socket that records each write it is given.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl tokio::io::AsyncWrite for Writes {
        fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            self.0.lock().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A small unmasked server text frame.
    fn text_frame(payload: &str) -> Vec<u8> {
        let mut out = vec![0x81, u8::try_from(payload.len()).expect("short payload")];
        out.extend_from_slice(payload.as_bytes());
        out
    }

    #[tokio::test]
    async fn frames_sent_for_their_own_write_leave_before_later_ones_in_a_separate_write() {
        let engine = Engine::new(EngineConfig::default(), Quiet);
        let handshake = Handshake {
            remote_addr: "127.0.0.1:1".parse().expect("address"),
            headers: HeaderMap::new(),
            query: String::new(),
            issued: std::time::SystemTime::now(),
        };
        let (conn, _open) = engine.open_session(Transport::WebSocket, handshake, None);
        // As Socket.IO's CONNECT: the reply, then what the connection handler emits at once.
        conn.send_frames_own_write(&[Frame::Text(Bytes::from_static(b"40{}"))]);
        conn.send_frames(&[Frame::Text(Bytes::from_static(b"42[\"a\"]"))], false);
        conn.send_frames(&[Frame::Text(Bytes::from_static(b"42[\"b\"]"))], false);
        let writes = Writes::default();
        conn.adopt_writer(WsWriter::new(Box::new(writes.clone())));
        for _ in 0..200 {
            if writes.0.lock().len() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let second: Vec<u8> = [text_frame(r#"42["a"]"#), text_frame(r#"42["b"]"#)].concat();
        assert_eq!(*writes.0.lock(), [text_frame("40{}"), second]);
        conn.close();
        engine.shutdown().await;
    }
}
