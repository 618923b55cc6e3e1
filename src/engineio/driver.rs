//! The per-session driver task, the one task of a connection: fires the
//! session's timers, reads its WebSocket when there is one, writes the queued
//! packets senders did not write themselves (one write per batch), and tears
//! the session down once it has closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{OpCode, WebSocketError};
use tokio::sync::OwnedSemaphorePermit;

use super::connection::Connection;
use super::endpoint::{Engine, Handler};
use super::packet::Frame;
use super::session::{CloseReason, TimerOutcome};
#[cfg(test)]
use super::websocket::WsSink;
use super::websocket::{self, WsReader};

/// How long the last flush of a closed session may take (the client may not read).
const LAST_FLUSH: Duration = Duration::from_secs(2);
/// How long a closed polling session stays findable for the GET still owed an answer.
const LINGER: Duration = Duration::from_secs(5);

/// Runs the session of `conn` until it ends, then tears it down.
/// `slot` is the session's place under `max_sessions`, held until the session is gone.
pub(super) async fn drive<H: Handler>(
    engine: Engine<H>,
    conn: Arc<Connection<H::State>>,
    slot: Option<OwnedSemaphorePermit>,
) {
    let mut driver = Driver { engine, conn, reader: None, _slot: slot };
    let reason = driver.run().await;
    // Boxed: the teardown's state exists only while it runs, not in every idle driver.
    Box::pin(driver.finish(reason)).await;
}

/// What one turn of the driver found under the session lock.
struct Turn {
    /// When the session's next timer is due.
    deadline: Option<Instant>,
    /// Set once the session has ended.
    closed: Option<CloseReason>,
    /// The WebSocket's writes this turn.
    write: Write,
}

/// What the driver does after a turn.
enum Step {
    /// Sleep until woken or the deadline.
    Wait(Option<Instant>),
    /// Take another turn at once.
    Again,
    /// The session has closed (the driver holds the write claim).
    Done(CloseReason),
}

/// The driver's part in the WebSocket's writes this turn.
enum Write {
    /// No WebSocket is attached.
    NoSocket,
    /// A sender is writing inline; it wakes the driver when it is done.
    Busy,
    /// The driver holds the socket for this turn's write.
    Claimed {
        /// The end of an inline write the socket did not take: written alone, first.
        unsent: Bytes,
        /// Frames for one write (empty when `unsent` is not).
        batch: Vec<Frame>,
        /// Frames are left for another write.
        more: bool,
    },
}

/// The one task of a session: its timers, its WebSocket's reads, and the writes senders did not
/// do themselves.
struct Driver<H: Handler> {
    engine: Engine<H>,
    conn: Arc<Connection<H::State>>,
    /// The WebSocket's reader, once the session has one (until the client stops sending).
    reader: Option<Box<WsReader>>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl<H: Handler> Driver<H> {
    /// Serves the session until it has closed; returns why. Returns holding the WebSocket's
    /// write claim, so that nothing is written after the close frame.
    async fn run(&mut self) -> CloseReason {
        loop {
            if let Some(reader) = self.conn.reader.lock().take() {
                self.reader = Some(reader);
            }
            let deadline = match self.step().await {
                Step::Wait(deadline) => deadline,
                Step::Again => continue,
                Step::Done(reason) => return reason,
            };
            // Sleeps until woken (packets queued, a socket, a close) or the next timer, reading
            // what the client sends meanwhile. Without a deadline the sleep's branch is off.
            let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(|| Instant::now() + LINGER).into());
            tokio::select! {
                () = self.conn.driver_wake.notified() => {}
                () = sleep, if deadline.is_some() => {}
                incoming = std::future::poll_fn(|cx| websocket::poll_incoming(&mut self.reader, cx)) => {
                    if !websocket::on_incoming(&self.engine, &self.conn, incoming) {
                        self.reader = None;
                    }
                }
            }
        }
    }

    /// One turn: timers, and the WebSocket write this turn owes, if any.
    async fn step(&mut self) -> Step {
        let Turn { deadline, closed, write } = self.take_due_work();
        match write {
            Write::Claimed { unsent, batch, more } => {
                let alone = !unsent.is_empty();
                // Boxed: the write's state exists only while it writes, not in every idle
                // driver (one per connection).
                let written = Box::pin(self.flush(unsent, batch, deadline, closed.is_some())).await;
                if written.is_err() {
                    self.conn.session.lock().release_write();
                    self.conn.session.lock().close(CloseReason::TransportError);
                    self.conn.poll_wake.notify_one();
                    return Step::Again;
                }
                if more || alone {
                    // The batch ended at a write end: the rest goes in the next write.
                    self.conn.session.lock().release_write();
                    return Step::Again;
                }
                if let Some(reason) = closed {
                    return Step::Done(reason);
                }
                if self.conn.session.lock().release_write() {
                    // A sender queued frames during the write and could not flush them itself.
                    return Step::Again;
                }
            }
            Write::NoSocket => {
                if let Some(reason) = closed {
                    return Step::Done(reason);
                }
            }
            Write::Busy => {}
        }
        Step::Wait(deadline)
    }

    /// Under the session lock: runs the timers due now (a ping queued or a close wakes a
    /// parked GET) and, with a WebSocket, claims it and takes the next write.
    fn take_due_work(&self) -> Turn {
        let mut s = self.conn.session.lock();
        if let TimerOutcome::PingQueued | TimerOutcome::Closed(_) = s.on_timer(Instant::now()) {
            self.conn.poll_wake.notify_one();
        }
        let write = if !s.websocket_attached() {
            Write::NoSocket
        } else if !s.claim_write() {
            Write::Busy
        } else {
            let unsent = s.take_unsent();
            let mut batch = Vec::new();
            let more = if unsent.is_empty() { s.drain_for_websocket(&mut batch) } else { false };
            Write::Claimed { unsent, batch, more }
        };
        Turn { deadline: s.next_deadline(), closed: s.closed(), write }
    }

    /// Writes the end of a sender's write, or owed control frames and the batch; keeps reading
    /// meanwhile (a client's pong must not wait behind a slow write). The last write of a
    /// closed session gets [`LAST_FLUSH`] at most.
    async fn flush(
        &mut self,
        unsent: Bytes,
        batch: Vec<Frame>,
        deadline: Option<Instant>,
        last: bool,
    ) -> Result<(), WebSocketError> {
        let control: Vec<(OpCode, Bytes)> =
            if unsent.is_empty() { std::mem::take(&mut *self.conn.control.lock()) } else { Vec::new() };
        if unsent.is_empty() && batch.is_empty() && control.is_empty() {
            return Ok(());
        }
        let Self { engine, conn, reader, .. } = self;
        let write = websocket::write_batch(conn, &unsent, &control, &batch, deadline);
        let write = async {
            if last {
                tokio::time::timeout(LAST_FLUSH, write).await.unwrap_or(Err(WebSocketError::ConnectionClosed))
            } else {
                write.await
            }
        };
        tokio::pin!(write);
        loop {
            tokio::select! {
                written = &mut write => return written,
                incoming = std::future::poll_fn(|cx| websocket::poll_incoming(reader, cx)) => {
                    if !websocket::on_incoming(engine, conn, incoming) {
                        *reader = None;
                    }
                }
            }
        }
    }

    /// The session has ended: close the WebSocket, count it, tell the
    /// application, and forget the session once no GET is owed an answer.
    async fn finish(mut self, reason: CloseReason) {
        self.reader = None;
        self.conn.reader.lock().take();
        self.conn.closed_notify.notify_waiters();
        self.conn.poll_wake.notify_one();
        let sink = self.conn.sink.lock().take();
        if let Some(mut sink) = sink {
            websocket::close_writer(&mut sink).await;
        }
        metrics::gauge!(crate::metrics::ENGINE_CONNECTIONS).decrement(1.0);
        if self.conn.protocol() == super::protocol::Protocol::V3 {
            metrics::gauge!(crate::metrics::ENGINE_EIO3_CONNECTIONS).decrement(1.0);
        }
        metrics::counter!(crate::metrics::ENGINE_CONNECTIONS_CLOSED, crate::metrics::label::REASON => reason.label())
            .increment(1);
        self.engine.handler().on_close(&self.conn, reason);
        linger(&self.conn).await;
        self.engine.forget(&self.conn);
    }
}

/// A polling client still owed a last answer (its last packets after a
/// graceful close, a noop after its own close) gets it with its next GET;
/// the session stays findable for a moment for that GET.
async fn linger<S>(conn: &Connection<S>) {
    let deadline = tokio::time::Instant::now() + LINGER;
    loop {
        let notified = conn.driver_wake.notified();
        if !conn.session.lock().accepts_requests() {
            return;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::HeaderMap;
    use parking_lot::Mutex;

    use super::*;
    use crate::engineio::protocol::Framing;
    use crate::engineio::session::Transport;
    use crate::engineio::{EngineConfig, Handshake, Message};

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

    /// An engine with `config` and one WebSocket session, its socket not attached yet.
    fn websocket_session(config: EngineConfig) -> (Engine<Quiet>, Arc<Connection<()>>) {
        let engine = Engine::new(config, Quiet);
        let handshake = Handshake {
            remote_addr: "127.0.0.1:1".parse().expect("address"),
            headers: HeaderMap::new(),
            query: String::new(),
            issued: std::time::SystemTime::now(),
        };
        let (conn, _open) = engine.open_session(Transport::WebSocket, Framing::V4, handshake, None);
        (engine, conn)
    }

    #[tokio::test]
    async fn frames_sent_for_their_own_write_leave_before_later_ones_in_a_separate_write() {
        let (engine, conn) = websocket_session(EngineConfig::default());
        // As Socket.IO's CONNECT: the reply, then what the connection handler emits at once.
        conn.send_frames_own_write(&[Frame::Text(Bytes::from_static(b"40{}"))]);
        conn.send_frames(&[Frame::Text(Bytes::from_static(b"42[\"a\"]"))], false);
        conn.send_frames(&[Frame::Text(Bytes::from_static(b"42[\"b\"]"))], false);
        let writes = Writes::default();
        conn.attach_websocket(WsSink::stream(Box::new(writes.clone())), None);
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

    #[tokio::test]
    async fn a_frame_queued_while_the_driver_writes_is_written_after_it() {
        use tokio::io::AsyncReadExt;
        let (engine, conn) =
            websocket_session(EngineConfig { send_queue_max_bytes: 64 << 20, ..EngineConfig::default() });
        // More than the loopback socket holds: the driver's write waits for the client to read.
        let big = Bytes::from(vec![b'x'; 16 << 20]);
        conn.send_frames(&[Frame::Text(big)], false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let mut client =
            tokio::net::TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (_read, write) = server.into_split();
        conn.attach_websocket(WsSink::tcp(write), None);
        // The driver has taken the big frame and is writing it.
        let taken = async {
            while !conn.session.lock().queue_is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), taken).await.expect("the driver takes the frame");
        // A sender finds the socket claimed by the driver and leaves its frame to it.
        conn.send_frames(&[Frame::Text(Bytes::from_static(b"42[\"late\"]"))], false);
        let late = text_frame(r#"42["late"]"#);
        let mut got = Vec::new();
        let mut buf = vec![0; 1 << 16];
        // Well under the ping interval (25 s), the only other thing that would wake the driver.
        let read_all = async {
            while !got.ends_with(&late) {
                let n = client.read(&mut buf).await.expect("read");
                assert!(n > 0, "the server closed the socket");
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), read_all)
            .await
            .expect("the frame queued during the write never came");
        conn.close();
        engine.shutdown().await;
    }
}
