//! One Engine.IO session as its transports and the application share it:
//! the state machine behind a mutex, the wake-ups of the tasks that serve
//! it, and what the HTTP request that opened it carried.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::HeaderMap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::packet::Frame;
use super::protocol::{Framing, Protocol};
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

/// Most writes one [`Connection::flush`] makes before it leaves the rest to the driver.
const FLUSH_ROUNDS: usize = 4;
/// A batch buffer grown past this many frames is given back after the write.
const BATCH_KEEP: usize = 1024;
/// A broadcast with more recipients to flush than this is flushed by several tasks at once.
const FLUSH_CHUNK: usize = 128;

thread_local! {
    /// The frames of the flush in progress on this thread.
    static BATCH: std::cell::RefCell<Vec<Frame>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Packets and bytes one or more flushes wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    pub(crate) packets: usize,
    pub(crate) bytes: usize,
}

impl Flushed {
    /// Adds them to the sent-packets and sent-bytes metrics.
    fn record(self) {
        if self.packets > 0 {
            metrics::counter!(crate::metrics::SOCKETIO_PACKETS_SENT).increment(self.packets as u64);
            metrics::counter!(crate::metrics::SOCKETIO_BYTES_SENT).increment(self.bytes as u64);
        }
    }
}

/// Flushes the connections a broadcast queued frames for ([`Connection::queue_frames`]). A
/// large broadcast is split into chunks flushed by tasks on the runtime's worker threads
/// (tracked by `tasks`) while this thread flushes the last one; it returns without waiting for
/// the others. Order is kept all the same: every frame is already in its client's queue, and
/// whoever flushes a queue writes it in order.
pub(crate) fn flush_spread<S: Send + Sync + 'static>(mut conns: Vec<Arc<Connection<S>>>, tasks: &TaskTracker) {
    if conns.len() > FLUSH_CHUNK
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        while conns.len() > FLUSH_CHUNK {
            let chunk = conns.split_off(conns.len() - FLUSH_CHUNK);
            tasks.spawn_on(async move { flush_each(&chunk) }, &runtime);
        }
    }
    flush_each(&conns);
}

fn flush_each<S>(conns: &[Arc<Connection<S>>]) {
    let mut total = Flushed::default();
    for conn in conns {
        let flushed = conn.flush();
        total.packets += flushed.packets;
        total.bytes += flushed.bytes;
    }
    total.record();
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
    /// The protocol the client speaks and how its packets are framed (fixed at the handshake).
    pub(super) framing: Framing,
    pub(super) session: Mutex<Session>,
    /// Wakes the driver: frames queued for a WebSocket, timers moved, closed.
    pub(super) driver_wake: Notify,
    /// Wakes a parked polling GET.
    pub(super) poll_wake: Notify,
    /// Wakes every task waiting for the session to end.
    pub(super) closed_notify: Notify,
    /// The session's WebSocket, once it has one: written by the driver, and by senders
    /// themselves (see [`Connection::flush`]).
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
    pub(super) fn new(id: sid::Sid, framing: Framing, session: Session, handshake: Handshake) -> Self {
        Self {
            id,
            framing,
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

    /// The Engine.IO session id, as the typed id.
    pub(crate) fn sid(&self) -> sid::Sid {
        self.id
    }

    /// The Engine.IO protocol revision the client speaks (3: socket.io 1.x / 2.x clients).
    pub fn protocol(&self) -> Protocol {
        self.framing.protocol
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

    /// Queues pre-encoded frames atomically and sends them. Never blocks: a client that is
    /// too far behind is disconnected, and volatile frames are dropped for it.
    pub(crate) fn send_frames(&self, frames: &[Frame], volatile: bool) -> Enqueued {
        let (result, flush) = self.enqueue_with(|s| s.enqueue(frames, volatile));
        if flush {
            self.flush().record();
        }
        result
    }

    /// Queues `frames` so that they end a WebSocket write: what is queued
    /// after them goes out in a later write (see [`Session::enqueue_own_write`]).
    pub(crate) fn send_frames_own_write(&self, frames: &[Frame]) -> Enqueued {
        let (result, flush) = self.enqueue_with(|s| s.enqueue_own_write(frames));
        if flush {
            self.flush().record();
        }
        result
    }

    /// Queues frames for one recipient of a broadcast, like [`Self::send_frames`], but leaves
    /// the flush to the caller: `true` when it must call [`Self::flush`] (or hand the
    /// connection to [`flush_spread`]) once it has queued the broadcast for every recipient.
    pub(crate) fn queue_frames(&self, frames: &[Frame], volatile: bool) -> (Enqueued, bool) {
        self.enqueue_with(|s| s.enqueue(frames, volatile))
    }

    /// Queues under the session lock; wakes the transport or says the caller must flush.
    ///
    /// Only the packet that makes the queue non-empty wakes the transport (or is flushed by
    /// its sender): whoever drains the queue takes everything, so a non-empty queue means a
    /// wake-up or a flush is already on its way (one per batch, not per packet).
    fn enqueue_with(&self, enqueue: impl FnOnce(&mut Session) -> Enqueued) -> (Enqueued, bool) {
        let (result, transport, was_empty, by_senders) = {
            let mut s = self.session.lock();
            let was_empty = s.queue_is_empty();
            (enqueue(&mut s), s.transport(), was_empty, s.flushed_by_senders())
        };
        match result {
            Enqueued::Queued if !was_empty => {}
            Enqueued::Queued if by_senders => return (result, true),
            Enqueued::Queued => match transport {
                Transport::WebSocket => self.driver_wake.notify_one(),
                Transport::Polling => self.poll_wake.notify_one(),
            },
            Enqueued::Closed => self.wake_all(),
            Enqueued::DroppedVolatile | Enqueued::TooLarge => {}
        }
        (result, false)
    }

    /// Writes what is queued to the WebSocket from the calling thread, as far as the socket
    /// takes it without waiting (one write per batch; a sender never blocks on a client). What
    /// the socket does not take goes out through the driver, first. If someone else is writing
    /// to the socket, they flush the queue when done. Saves waking the driver task for each
    /// packet. Returns the packets and bytes written.
    pub(crate) fn flush(&self) -> Flushed {
        let mut flushed = Flushed::default();
        for _ in 0..FLUSH_ROUNDS {
            let again = BATCH.with(|cell| {
                let mut batch = cell.borrow_mut();
                {
                    let mut s = self.session.lock();
                    if !s.claim_flush() {
                        return false;
                    }
                    s.drain_for_websocket(&mut batch);
                }
                let written = match self.sink.lock().as_mut() {
                    Some(sink) => sink.write_now(self.framing, &batch),
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                };
                let unsent = match written {
                    Ok(unsent) => {
                        flushed.packets += batch.len();
                        flushed.bytes += batch.iter().map(Frame::len).sum::<usize>();
                        unsent
                    }
                    Err(_) => {
                        self.session.lock().close(CloseReason::TransportError);
                        self.wake_all();
                        Bytes::new()
                    }
                };
                batch.clear();
                if batch.capacity() > BATCH_KEEP {
                    *batch = Vec::new();
                }
                let mut s = self.session.lock();
                let wake = s.end_flush(unsent);
                let again = !wake && !s.queue_is_empty();
                drop(s);
                if wake {
                    self.driver_wake.notify_one();
                }
                again
            });
            if !again {
                return flushed;
            }
        }
        // Senders keep queueing as fast as this thread writes: the driver takes over.
        self.driver_wake.notify_one();
        flushed
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_keeps_the_request_headers_but_not_the_websocket_handshake_ones() {
        let mut request = HeaderMap::new();
        for (name, value) in [
            ("host", "example.test"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("sec-websocket-protocol", "token-abc"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-custom", "yes"),
        ] {
            request.append(http::HeaderName::from_static(name), http::HeaderValue::from_static(value));
        }
        let kept = Handshake::keep_headers(&request);
        assert_eq!(kept.len(), 5);
        assert_eq!(kept["host"], "example.test");
        assert_eq!(kept["sec-websocket-protocol"], "token-abc");
        assert_eq!(kept.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1", "b=2"]);
        assert_eq!(kept["x-custom"], "yes");
        assert!(kept.get("sec-websocket-key").is_none() && kept.get("upgrade").is_none());
    }
}
