//! The WebSocket transport: the reader and the writer of a client's socket.
//! Once the upgrade is done both belong to the session's driver task (one
//! task per connection): it reads, and writes what senders did not write
//! themselves (see [`WsSink::write_now`]).
//!
//! fastwebsockets performs the upgrade, parses client frames and formats
//! frame headers. After the upgrade the TCP stream is taken back from hyper
//! (so hyper's 8 KiB read buffer is freed) and split into owned halves; the
//! reader keeps no read buffer of its own (see [`super::wsread`]).
//! The writer encodes a whole batch of packets into one buffer and writes it
//! with one call, so a burst of broadcasts costs one syscall, and keeps no
//! buffer between batches (an idle connection holds none).

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use fastwebsockets::{Frame as WsFrame, OpCode, Payload, WebSocket, WebSocketError};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use super::connection::Connection;
use super::endpoint::{Engine, Handler};
use super::packet::{Frame, Packet};
use super::packet_v3;
use super::protocol::{Framing, Protocol};
use super::session::{CloseReason, Inbound, TimerOutcome, Transport};
use super::wsread::{FrameReader, Incoming};
use crate::net::ConnPermit;

/// Bytes read from the socket per read, into a buffer on the reading thread's stack.
const READ_CHUNK: usize = 8 * 1024;

pub(crate) type ReadIo = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type WriteIo = Box<dyn AsyncWrite + Send + Unpin>;

/// The read half of a client's WebSocket: the socket and what is left of an unfinished frame,
/// no read buffer (see [`super::wsread`]). The session's driver reads it.
pub(crate) struct WsReader {
    io: ReadIo,
    frames: FrameReader,
    /// The error that ended the stream, returned once the messages before it were taken.
    failed: Option<WebSocketError>,
    /// The listener's slot for this TCP connection, given back when the reader is dropped.
    slot: Option<ConnPermit>,
}

impl std::fmt::Debug for WsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader").field("frames", &self.frames).finish_non_exhaustive()
    }
}

impl WsReader {
    /// The next thing the client sent. Cancel-safe: whatever was read stays queued.
    async fn next(&mut self) -> Result<Incoming, WebSocketError> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next thing the client sent.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, WebSocketError>> {
        loop {
            if let Some(incoming) = self.frames.pop() {
                return Poll::Ready(Ok(incoming));
            }
            if let Some(err) = self.failed.take() {
                return Poll::Ready(Err(err));
            }
            std::task::ready!(self.poll_read(cx));
        }
    }

    /// Reads what the socket has, once it has something, and decodes it: into a buffer on this
    /// thread's stack, or straight into the buffer of a large frame still arriving.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let result = if let Some(tail) = self.frames.large_tail(READ_CHUNK) {
            match std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, tail)) {
                Ok(0) => Err(WebSocketError::UnexpectedEOF),
                Ok(_) => self.frames.tail_filled(),
                Err(err) => Err(err.into()),
            }
        } else {
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                Ok(()) if buf.filled().is_empty() => Err(WebSocketError::UnexpectedEOF),
                Ok(()) => self.frames.feed(buf.filled()),
                Err(err) => Err(err.into()),
            }
        };
        if let Err(err) = result {
            self.failed = Some(err);
        }
        Poll::Ready(())
    }
}

/// A per-thread encoding buffer grown past this is given back after the write.
const ENCODED_KEEP: usize = 256 * 1024;

thread_local! {
    /// Where [`WsSink::write_now`] encodes the frames it writes.
    static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The write half of a client's WebSocket. Once the session adopts it, it lives in the
/// [`Connection`], where the driver task and senders writing inline share it, one at a time
/// (see [`super::session::Session::claim_write`]).
pub(crate) struct WsSink {
    io: SinkIo,
    /// A close frame was written: nothing more is.
    closed: bool,
}

enum SinkIo {
    /// A plain TCP socket: senders may also write to it without waiting.
    Tcp(OwnedWriteHalf),
    /// Any other stream (TLS): only the driver writes to it.
    Stream(WriteIo),
}

impl std::fmt::Debug for WsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSink").field("inline", &self.allows_inline()).field("closed", &self.closed).finish()
    }
}

impl WsSink {
    /// A sink over any byte stream (tests record the writes).
    #[cfg(test)]
    pub(crate) fn stream(io: Box<dyn AsyncWrite + Send + Unpin>) -> Self {
        Self { io: SinkIo::Stream(io), closed: false }
    }

    /// A sink over a plain TCP socket, which senders may write to themselves.
    #[cfg(test)]
    pub(crate) fn tcp(half: OwnedWriteHalf) -> Self {
        Self { io: SinkIo::Tcp(half), closed: false }
    }

    /// Whether senders may write to it themselves ([`Self::write_now`]).
    pub(crate) fn allows_inline(&self) -> bool {
        matches!(self.io, SinkIo::Tcp(_))
    }

    /// Writes `frames` as far as the socket takes them now, without waiting: one write call.
    /// Returns the encoded bytes it did not take, which must go out before anything else.
    pub(crate) fn write_now(&mut self, framing: Framing, frames: &[Frame]) -> std::io::Result<Bytes> {
        let SinkIo::Tcp(half) = &self.io else {
            return Err(std::io::ErrorKind::Unsupported.into());
        };
        if self.closed || frames.is_empty() {
            // After the close frame (the echo of the client's) nothing more can go out.
            return Ok(Bytes::new());
        }
        ENCODED.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.clear();
            encode(frames.iter().map(|f| ws_frame(framing, f)), &mut buf);
            let written = match half.try_write(&buf) {
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(err) => return Err(err),
            };
            let rest = Bytes::copy_from_slice(&buf[written..]);
            if buf.capacity() > ENCODED_KEEP {
                *buf = Vec::new();
            }
            Ok(rest)
        })
    }

    /// Writes encoded bytes, waiting for the socket as long as it takes.
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.io {
            SinkIo::Tcp(half) => half.write_all(bytes).await,
            SinkIo::Stream(io) => io.write_all(bytes).await,
        }
    }

    /// Writes frames as one buffer. Nothing is written after a close frame.
    async fn write_frames<'a>(&mut self, frames: impl IntoIterator<Item = WsFrame<'a>>) -> Result<(), WebSocketError> {
        if self.closed {
            return Err(WebSocketError::ConnectionClosed);
        }
        let mut buf = Vec::new();
        self.closed = encode(frames, &mut buf);
        self.write_all(&buf).await?;
        Ok(())
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match &mut self.io {
            SinkIo::Tcp(half) => half.shutdown().await,
            SinkIo::Stream(io) => io.shutdown().await,
        }
    }
}

/// The sink as the driver writes to it: from inside the [`Connection`], locked only for each
/// write call (never across an await).
struct Shared<'a>(&'a Mutex<Option<WsSink>>);

impl AsyncWrite for Shared<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut sink = self.0.lock();
        match sink.as_mut().map(|s| &mut s.io) {
            Some(SinkIo::Tcp(half)) => Pin::new(half).poll_write(cx, buf),
            Some(SinkIo::Stream(io)) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(std::io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut sink = self.0.lock();
        match sink.as_mut().map(|s| &mut s.io) {
            Some(SinkIo::Tcp(half)) => Pin::new(half).poll_flush(cx),
            Some(SinkIo::Stream(io)) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The driver shuts the socket down only once it has taken the sink back.
        Poll::Ready(Ok(()))
    }
}

/// Encodes frames one after the other into `buf`; stops after a close frame and says so.
fn encode<'a>(frames: impl IntoIterator<Item = WsFrame<'a>>, buf: &mut Vec<u8>) -> bool {
    for mut frame in frames {
        let mut head = [0u8; 10];
        let n = frame.fmt_head(&mut head);
        buf.extend_from_slice(&head[..n]);
        buf.extend_from_slice(&frame.payload);
        if frame.opcode == OpCode::Close {
            return true;
        }
    }
    false
}

/// The WebSocket frame of one queued packet. The queue holds the same frames for every client;
/// a protocol 3 client gets binary data with its type byte first (a copy, the only one), or as
/// `b4<base64>` text when it asked for base64.
fn ws_frame(framing: Framing, frame: &Frame) -> WsFrame<'_> {
    match (frame, framing.protocol) {
        (Frame::Text(b), _) => WsFrame::text(Payload::Borrowed(b)),
        (Frame::Binary(b), Protocol::V4) => WsFrame::binary(Payload::Borrowed(b)),
        (Frame::Binary(b), Protocol::V3) if framing.base64 => WsFrame::text(Payload::Owned(packet_v3::ws_base64(b))),
        (Frame::Binary(b), Protocol::V3) => WsFrame::binary(Payload::Owned(packet_v3::ws_binary(b))),
    }
}

/// Bytes hyper read past the upgrade request, replayed before the socket (for a relayed
/// WebSocket, whose bytes are copied as they are).
struct Prefixed {
    pre: Bytes,
    inner: tokio::net::tcp::OwnedReadHalf,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.pre.has_remaining() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The upgraded connection's byte halves, taken back from hyper and fastwebsockets (the TCP
/// stream itself when there is no TLS, so hyper's read buffer is freed). For a WebSocket this
/// node relays to the session's owner (`super::relay`).
pub(crate) fn raw_halves(ws: WebSocket<TokioIo<Upgraded>>) -> (ReadIo, WriteIo) {
    let upgraded = ws.into_inner().into_inner();
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let (r, w) = parts.io.into_inner().into_split();
            if parts.read_buf.is_empty() {
                (Box::new(r), Box::new(w))
            } else {
                // Copy so that hyper's whole read buffer is not kept alive.
                (Box::new(Prefixed { pre: Bytes::copy_from_slice(&parts.read_buf), inner: r }), Box::new(w))
            }
        }
        Err(upgraded) => {
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            (Box::new(r), Box::new(w))
        }
    }
}

/// Takes the stream back from hyper and fastwebsockets and splits it. Bytes hyper read past
/// the upgrade request are decoded first (hyper's read buffer is not kept).
fn split(ws: WebSocket<TokioIo<Upgraded>>, max_payload: usize) -> (WsReader, WsSink) {
    let upgraded = ws.into_inner().into_inner();
    let mut frames = FrameReader::new(max_payload);
    let mut failed = None;
    let (read, write): (ReadIo, SinkIo) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            if let Err(err) = frames.feed(&parts.read_buf) {
                failed = Some(err);
            }
            let (r, w) = parts.io.into_inner().into_split();
            (Box::new(r), SinkIo::Tcp(w))
        }
        Err(upgraded) => {
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            (Box::new(r), SinkIo::Stream(Box::new(w)))
        }
    };
    (WsReader { io: read, frames, failed, slot: None }, WsSink { io: write, closed: false })
}

/// A session that started on WebSocket: hand the socket to the session's driver, which reads
/// and writes it from now on. `slot` (the listener's slot for this TCP connection) is held as
/// long as the socket is read.
pub(crate) fn run_direct<H: Handler>(
    engine: &Engine<H>,
    conn: &Connection<H::State>,
    ws: WebSocket<TokioIo<Upgraded>>,
    slot: Option<ConnPermit>,
) {
    let (mut reader, writer) = split(ws, engine.max_payload());
    reader.slot = slot;
    conn.attach_websocket(writer, Some(Box::new(reader)));
}

/// A WebSocket that wants to take over a polling session: answer the probe, wait for `5`,
/// then hand the socket to the session's driver (see [`run_direct`]).
pub(crate) async fn run_probe<H: Handler>(
    engine: Engine<H>,
    conn: Arc<Connection<H::State>>,
    ws: WebSocket<TokioIo<Upgraded>>,
    slot: Option<ConnPermit>,
) {
    let (mut reader, writer) = split(ws, engine.max_payload());
    reader.slot = slot;
    probe(engine, conn, reader, writer).await;
}

/// [`run_probe`] for a WebSocket whose bytes another node relays (see `super::relay`): the
/// client's handshake was answered there, its frames arrive through `read`.
pub(crate) async fn run_probe_io<H: Handler>(
    engine: Engine<H>,
    conn: Arc<Connection<H::State>>,
    read: ReadIo,
    write: WriteIo,
) {
    let reader = WsReader { io: read, frames: FrameReader::new(engine.max_payload()), failed: None, slot: None };
    probe(engine, conn, reader, WsSink { io: SinkIo::Stream(write), closed: false }).await;
}

async fn probe<H: Handler>(
    engine: Engine<H>,
    conn: Arc<Connection<H::State>>,
    mut reader: WsReader,
    mut writer: WsSink,
) {
    let deadline = tokio::time::Instant::now() + engine.upgrade_timeout();
    loop {
        let Ok(Ok(message)) = tokio::time::timeout_at(deadline, reader.next()).await else {
            conn.session().lock().abort_upgrade();
            close_writer(&mut writer).await;
            return;
        };
        let parsed = match message {
            Incoming::Text(text) => conn.framing.decode_ws_text(text).ok(),
            // A ping while probing goes unanswered, as it always did.
            Incoming::Reply(..) => continue,
            Incoming::Binary(_) | Incoming::Close => None,
        };
        if matches!(parsed, Some(Packet::Upgrade)) {
            let mut last = Vec::new();
            if conn.session().lock().take_for_closed_upgrade(&mut last) {
                let frames = last.iter().map(|f| ws_frame(conn.framing, f));
                let _ = writer.write_frames(frames).await;
                close_writer(&mut writer).await;
                return;
            }
        }
        let outcome = match parsed {
            Some(p) => conn.session().lock().on_packet(Instant::now(), p, Transport::WebSocket),
            None => Err(CloseReason::TransportError),
        };
        match outcome {
            Ok(Inbound::ProbeReply) => {
                // Parked and new GETs now get a noop.
                conn.wake_driver();
                conn.poll_notify();
                if writer.write_frames([WsFrame::text(Payload::Borrowed(b"3probe"))]).await.is_err() {
                    conn.session().lock().abort_upgrade();
                    return;
                }
            }
            Ok(_) if conn.session().lock().transport() == Transport::WebSocket => {
                metrics::counter!(crate::metrics::ENGINE_UPGRADES).increment(1);
                conn.poll_notify();
                conn.attach_websocket(writer, Some(Box::new(reader)));
                return;
            }
            Ok(_) => {}
            Err(_) => {
                conn.session().lock().abort_upgrade();
                close_writer(&mut writer).await;
                return;
            }
        }
    }
}

/// Polls for the next thing the client sent, once there is a reader; pending without one.
pub(crate) fn poll_incoming(
    reader: &mut Option<Box<WsReader>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Incoming, WebSocketError>> {
    match reader {
        Some(reader) => reader.poll_next(cx),
        None => Poll::Pending,
    }
}

/// Acts on what the client sent: a packet for the session and the application, a control frame
/// it is owed, or the end of the stream. Returns whether to keep reading.
pub(crate) fn on_incoming<H: Handler>(
    engine: &Engine<H>,
    conn: &Arc<Connection<H::State>>,
    incoming: Result<Incoming, WebSocketError>,
) -> bool {
    let packet = match incoming {
        Ok(Incoming::Text(text)) => match conn.framing.decode_ws_text(text) {
            Ok(p) => p,
            Err(_) => {
                conn.close_with(CloseReason::ParseError);
                return false;
            }
        },
        Ok(Incoming::Binary(data)) => match conn.framing.decode_ws_binary(data) {
            Ok(p) => p,
            Err(_) => {
                conn.close_with(CloseReason::ParseError);
                return false;
            }
        },
        Ok(Incoming::Reply(opcode, payload)) => {
            conn.push_control(opcode, payload);
            return true;
        }
        Ok(Incoming::Close) => {
            conn.close_with(CloseReason::TransportClose);
            return false;
        }
        Err(WebSocketError::FrameTooLarge | WebSocketError::InvalidContinuationFrame) => {
            conn.close_with(CloseReason::ParseError);
            return false;
        }
        Err(WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed) => {
            conn.close_with(CloseReason::TransportClose);
            return false;
        }
        Err(_) => {
            conn.close_with(CloseReason::TransportError);
            return false;
        }
    };
    engine.deliver(conn, packet, Transport::WebSocket)
}

/// Writes what the driver took for one write: the end of an inline write the socket did not
/// take (alone), or owed control frames and a batch of packets, with one write. Gives up (with
/// an error) if the session closes or its heartbeat expires while the client is not reading.
pub(crate) async fn write_batch<S>(
    conn: &Connection<S>,
    unsent: &[u8],
    control: &[(OpCode, Bytes)],
    batch: &[Frame],
    deadline: Option<Instant>,
) -> Result<(), WebSocketError> {
    let mut buf = Vec::new();
    let closes = if unsent.is_empty() {
        let control = control.iter().map(|(op, payload)| WsFrame::new(true, *op, None, Payload::Borrowed(payload)));
        buf.reserve(batch.iter().map(|f| f.len() + 10).sum::<usize>() + 140 * control.len());
        encode(control.chain(batch.iter().map(|f| ws_frame(conn.framing, f))), &mut buf)
    } else {
        buf.extend_from_slice(unsent);
        false
    };
    if conn.sink.lock().as_ref().is_none_or(|s| s.closed) {
        return Err(WebSocketError::ConnectionClosed);
    }
    let mut sink = Shared(&conn.sink);
    let write = sink.write_all(&buf);
    tokio::pin!(write);
    let mut deadline = deadline;
    loop {
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = &mut write => {
                res?;
                if closes && let Some(sink) = conn.sink.lock().as_mut() {
                    sink.closed = true;
                }
                let bytes: usize = batch.iter().map(Frame::len).sum();
                metrics::counter!(crate::metrics::SOCKETIO_PACKETS_SENT).increment(batch.len() as u64);
                metrics::counter!(crate::metrics::SOCKETIO_BYTES_SENT).increment(bytes as u64);
                return Ok(());
            }
            () = conn.wait_aborted() => return Err(WebSocketError::ConnectionClosed),
            () = conn.wait_closed() => {
                // Closed gracefully: finish this write if the client reads, but never wait long.
                return match tokio::time::timeout(std::time::Duration::from_secs(2), &mut write).await {
                    Ok(res) => res.map_err(WebSocketError::from),
                    Err(_) => Err(WebSocketError::ConnectionClosed),
                };
            }
            () = timer => {
                let mut s = conn.session().lock();
                if let TimerOutcome::Closed(_) = s.on_timer(Instant::now()) {
                    return Err(WebSocketError::ConnectionClosed);
                }
                deadline = s.next_deadline();
            }
        }
    }
}

/// Sends a close frame once and shuts the socket down for writing.
pub(crate) async fn close_writer(writer: &mut WsSink) {
    let close = async {
        if !writer.closed {
            writer.write_frames([WsFrame::close(1000, b"")]).await?;
        }
        writer.shutdown().await.map_err(WebSocketError::from)
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), close).await;
}

/// Closes a WebSocket that may not join the session.
pub(crate) async fn close_now(ws: WebSocket<TokioIo<Upgraded>>) {
    let (_reader, mut writer) = split(ws, 1024);
    close_writer(&mut writer).await;
}

/// [`close_now`] for a WebSocket whose bytes another node relays.
pub(crate) async fn close_now_io(_read: ReadIo, write: WriteIo) {
    close_writer(&mut WsSink { io: SinkIo::Stream(write), closed: false }).await;
}
