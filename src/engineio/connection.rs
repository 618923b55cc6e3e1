//! One Engine.IO session as its transports and the application share it:
//! the state machine behind a mutex, the wake-ups of the tasks that serve
//! it, and what the HTTP request that opened it carried.

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use http::HeaderMap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::packet::Frame;
use super::session::{CloseReason, Enqueued, Session, Transport};
use super::websocket::{WsReader, WsSink};
use crate::sid;

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
    /// Request headers (cookies, authorization, origin…), without those that only served the
    /// WebSocket handshake itself (see [`Handshake::keep_headers`]).
    pub headers: HeaderMap,
    /// The raw query string.
    pub query: String,
    /// When the session opened.
    pub issued: std::time::SystemTime,
}

/// Headers that only describe the WebSocket handshake: nothing reads them once it is done.
const HANDSHAKE_ONLY: [http::HeaderName; 5] = [
    http::header::CONNECTION,
    http::header::UPGRADE,
    http::header::SEC_WEBSOCKET_KEY,
    http::header::SEC_WEBSOCKET_VERSION,
    http::header::SEC_WEBSOCKET_EXTENSIONS,
];

impl Handshake {
    /// The headers of the request that opened a session, as the session keeps them: copied
    /// out of the request (whose values share hyper's whole read buffer, which would then live
    /// as long as the session) into one compact map, without the WebSocket handshake's own
    /// `Connection`, `Upgrade` and `Sec-WebSocket-Key/Version/Extensions`.
    pub fn keep_headers(request: &HeaderMap) -> HeaderMap {
        let kept = || request.iter().filter(|(name, _)| !HANDSHAKE_ONLY.contains(name));
        let mut headers = HeaderMap::with_capacity(kept().count());
        for (name, value) in kept() {
            let mut copy = http::HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes()))
                .unwrap_or_else(|_| value.clone());
            copy.set_sensitive(value.is_sensitive());
            headers.append(name.clone(), copy);
        }
        headers
    }
}

/// One Engine.IO connection, shared by its transports and the application.
pub struct Connection<S> {
    pub(super) id: sid::Sid,
    pub(super) session: Mutex<Session>,
    /// Wakes the driver: frames queued for a WebSocket, timers moved, closed.
    pub(super) driver_wake: Notify,
    /// Wakes a parked polling GET.
    pub(super) poll_wake: Notify,
    /// Wakes every task waiting for the session to end.
    pub(super) closed_notify: Notify,
    /// The session's WebSocket, once it has one: written by the driver, and by senders
    /// themselves when nothing is queued (see [`Session::claim_inline`]).
    pub(super) sink: Mutex<Option<WsSink>>,
    /// The session's WebSocket reader, until the driver takes it.
    pub(super) reader: Mutex<Option<Box<WsReader>>>,
    /// Control frames the WebSocket reader owes the peer (pong, close echo).
    pub(super) control: Mutex<Vec<(fastwebsockets::OpCode, Bytes)>>,
    handshake: Handshake,
    pub(super) state: OnceLock<S>,
}

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.id).finish_non_exhaustive()
    }
}

impl<S> Connection<S> {
    /// A connection for a session that has just opened.
    pub(super) fn new(id: sid::Sid, session: Session, handshake: Handshake) -> Self {
        Self {
            id,
            session: Mutex::new(session),
            driver_wake: Notify::new(),
            poll_wake: Notify::new(),
            closed_notify: Notify::new(),
            sink: Mutex::new(None),
            reader: Mutex::new(None),
            control: Mutex::new(Vec::new()),
            handshake,
            state: OnceLock::new(),
        }
    }

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
        self.enqueue_with(frames, |s| s.enqueue(frames, volatile))
    }

    /// Queues `frames` so that they end a WebSocket write: what is queued
    /// after them goes out in a later write (see [`Session::enqueue_own_write`]).
    pub(crate) fn send_frames_own_write(&self, frames: &[Frame]) -> Enqueued {
        self.enqueue_with(frames, |s| s.enqueue_own_write(frames))
    }

    fn enqueue_with(&self, frames: &[Frame], enqueue: impl FnOnce(&mut Session) -> Enqueued) -> Enqueued {
        let (result, transport, was_empty) = {
            let mut s = self.session.lock();
            if s.claim_inline(frames) {
                drop(s);
                return self.write_inline(frames);
            }
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

    /// Writes frames to the WebSocket from the calling thread, as far as the socket takes
    /// them without waiting (the session granted it: nothing queued, nobody writing). What the
    /// socket does not take goes out first through the driver. Saves waking the driver task
    /// for each packet of a broadcast.
    fn write_inline(&self, frames: &[Frame]) -> Enqueued {
        let written = match self.sink.lock().as_mut() {
            Some(sink) => sink.write_now(frames),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        let (unsent, result) = match written {
            Ok(unsent) => (unsent, Enqueued::Queued),
            Err(_) => {
                self.session.lock().close(CloseReason::TransportError);
                (Bytes::new(), Enqueued::Closed)
            }
        };
        if result == Enqueued::Queued {
            let bytes: usize = frames.iter().map(Frame::len).sum();
            metrics::counter!(crate::metrics::SOCKETIO_PACKETS_SENT).increment(frames.len() as u64);
            metrics::counter!(crate::metrics::SOCKETIO_BYTES_SENT).increment(bytes as u64);
        }
        if self.session.lock().end_inline_write(unsent) {
            self.driver_wake.notify_one();
        }
        if result == Enqueued::Closed {
            self.wake_all();
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

    pub(super) fn wake_all(&self) {
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

    /// The session's WebSocket is ready: the driver reads it and writes to it from now on,
    /// and senders may write to it themselves when it allows that.
    pub(crate) fn attach_websocket(&self, sink: WsSink, reader: Option<Box<WsReader>>) {
        let inline = sink.allows_inline();
        *self.sink.lock() = Some(sink);
        *self.reader.lock() = reader;
        self.session.lock().attach_websocket(inline);
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
