//! The per-session driver task: fires the session's timers, writes its
//! queued packets to the WebSocket when there is one (one write per batch),
//! and tears the session down once it has closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::{OpCode, WebSocketError};

use super::connection::Connection;
use super::endpoint::{Engine, Handler};
use super::packet::Frame;
use super::session::{CloseReason, TimerOutcome};
use super::websocket::{self, WsWriter};

/// How long the last flush of a closed session may take (the client may not read).
const LAST_FLUSH: Duration = Duration::from_secs(2);
/// How long a closed polling session stays findable for the GET still owed an answer.
const LINGER: Duration = Duration::from_secs(5);
/// A batch buffer grown past this many frames is given back after the write.
const BATCH_KEEP: usize = 256;

/// Runs the session of `conn` until it ends, then tears it down.
pub(super) async fn drive<H: Handler>(engine: Engine<H>, conn: Arc<Connection<H::State>>) {
    let mut driver = Driver { conn, writer: None, batch: Vec::new() };
    let reason = driver.run().await;
    driver.finish(&engine, reason).await;
}

/// What one turn of the driver found under the session lock.
struct Turn {
    /// When the session's next timer is due.
    deadline: Option<Instant>,
    /// Set once the session has ended.
    closed: Option<CloseReason>,
    /// Frames are left for another write (the batch ended at a write end).
    more: bool,
}

struct Driver<S> {
    conn: Arc<Connection<S>>,
    writer: Option<WsWriter>,
    batch: Vec<Frame>,
}

impl<S> Driver<S> {
    /// Serves the session until it has closed; returns why.
    async fn run(&mut self) -> CloseReason {
        loop {
            self.adopt_writer();
            let turn = self.take_due_work();
            let control: Vec<_> = std::mem::take(&mut *self.conn.control.lock());
            if self.flush(&control, &turn).await.is_err() {
                self.conn.session.lock().close(CloseReason::TransportError);
                self.conn.poll_wake.notify_one();
                continue;
            }
            if turn.more {
                // The batch ended at a write end: the rest goes in the next write.
                continue;
            }
            if let Some(reason) = turn.closed {
                return reason;
            }
            wait(&self.conn, turn.deadline).await;
        }
    }

    /// A WebSocket that has joined the session takes over its writes.
    fn adopt_writer(&mut self) {
        if let Some(w) = self.conn.new_writer.lock().take() {
            self.writer = Some(w);
        }
    }

    /// Under the session lock: runs the timers due now (a ping queued or a
    /// close wakes a parked GET) and takes the next WebSocket batch.
    fn take_due_work(&mut self) -> Turn {
        let mut s = self.conn.session.lock();
        if let TimerOutcome::PingQueued | TimerOutcome::Closed(_) = s.on_timer(Instant::now()) {
            self.conn.poll_wake.notify_one();
        }
        let more = self.writer.is_some() && s.drain_for_websocket(&mut self.batch);
        Turn { deadline: s.next_deadline(), closed: s.closed(), more }
    }

    /// Writes owed control frames and the batch to the WebSocket, if there is one.
    async fn flush(&mut self, control: &[(OpCode, bytes::Bytes)], turn: &Turn) -> Result<(), WebSocketError> {
        let Some(w) = self.writer.as_mut() else { return Ok(()) };
        let wrote = if self.batch.is_empty() && control.is_empty() {
            Ok(())
        } else if turn.closed.is_some() {
            let flush = websocket::write_batch(w, control, &self.batch, turn.deadline, &self.conn);
            tokio::time::timeout(LAST_FLUSH, flush).await.unwrap_or(Err(WebSocketError::ConnectionClosed))
        } else {
            websocket::write_batch(w, control, &self.batch, turn.deadline, &self.conn).await
        };
        self.batch.clear();
        if self.batch.capacity() > BATCH_KEEP {
            self.batch = Vec::new();
        }
        wrote
    }

    /// The session has ended: close the WebSocket, count it, tell the
    /// application, and forget the session once no GET is owed an answer.
    async fn finish<H: Handler<State = S>>(mut self, engine: &Engine<H>, reason: CloseReason) {
        self.conn.closed_notify.notify_waiters();
        self.conn.poll_wake.notify_one();
        if let Some(mut w) = self.writer.take() {
            websocket::close_writer(&mut w).await;
        }
        metrics::gauge!(crate::metrics::ENGINE_CONNECTIONS).decrement(1.0);
        if self.conn.protocol() == super::protocol::Protocol::V3 {
            metrics::gauge!(crate::metrics::ENGINE_EIO3_CONNECTIONS).decrement(1.0);
        }
        metrics::counter!(crate::metrics::ENGINE_CONNECTIONS_CLOSED, crate::metrics::label::REASON => reason.label())
            .increment(1);
        engine.handler().on_close(&self.conn, reason);
        linger(&self.conn).await;
        engine.forget(&self.conn);
    }
}

/// Sleeps until woken (packets queued, a writer, a close) or the next timer.
async fn wait<S>(conn: &Connection<S>, deadline: Option<Instant>) {
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

    #[tokio::test]
    async fn frames_sent_for_their_own_write_leave_before_later_ones_in_a_separate_write() {
        let engine = Engine::new(EngineConfig::default(), Quiet);
        let handshake = Handshake {
            remote_addr: "127.0.0.1:1".parse().expect("address"),
            headers: HeaderMap::new(),
            query: String::new(),
            issued: std::time::SystemTime::now(),
        };
        let (conn, _open) = engine.open_session(Transport::WebSocket, Framing::V4, handshake, None);
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
