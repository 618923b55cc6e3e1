//! The WebSocket transport: a reader task per connection, and the writer the
//! session driver uses.
//!
//! fastwebsockets performs the upgrade, reads and parses client frames and
//! formats frame headers. After the upgrade the TCP stream is taken back from
//! hyper (so hyper's 8 KiB read buffer is freed) and split into owned halves.
//! The writer encodes a whole batch of packets into one buffer and writes it
//! with one call, so a burst of broadcasts costs one syscall, and keeps no
//! buffer between batches (an idle connection holds none).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use fastwebsockets::{Frame as WsFrame, OpCode, Payload, Role, WebSocket, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::connection::Connection;
use super::endpoint::{Engine, Handler};
use super::packet::Frame;
use super::packet_v3;
use super::protocol::{Framing, Protocol};
use super::session::{CloseReason, Inbound, TimerOutcome, Transport};

pub(crate) type ReadIo = Box<dyn AsyncRead + Send + Unpin>;
/// The read half plus our own reassembly of fragmented messages, so that a
/// message's total size (not only each frame's) is bounded by `max_payload`.
struct WsReader {
    read: WebSocketRead<ReadIo>,
    max_payload: usize,
}

/// One complete client message.
enum WsMessage {
    Text(Bytes),
    Binary(Bytes),
    Close,
}

impl WsReader {
    /// Reads frames until a whole message (or a close) arrived. Control
    /// frames the peer is owed (pong, close echo) go to `send_fn`.
    async fn read_message<R>(&mut self, send_fn: &mut impl FnMut(WsFrame<'_>) -> R) -> Result<WsMessage, WebSocketError>
    where
        R: std::future::Future<Output = Result<(), WebSocketError>>,
    {
        let mut partial: Option<(OpCode, Vec<u8>)> = None;
        loop {
            let frame = self.read.read_frame(send_fn).await?;
            match (frame.opcode, partial.as_mut()) {
                (OpCode::Close, _) => return Ok(WsMessage::Close),
                (OpCode::Text | OpCode::Binary, None) if frame.fin => {
                    let data = Bytes::copy_from_slice(&frame.payload);
                    return Ok(if frame.opcode == OpCode::Text {
                        WsMessage::Text(data)
                    } else {
                        WsMessage::Binary(data)
                    });
                }
                (OpCode::Text | OpCode::Binary, None) => partial = Some((frame.opcode, frame.payload.to_vec())),
                (OpCode::Continuation, Some((_, buf))) => {
                    if buf.len() + frame.payload.len() > self.max_payload {
                        return Err(WebSocketError::FrameTooLarge);
                    }
                    buf.extend_from_slice(&frame.payload);
                    if frame.fin {
                        let (op, buf) = partial.take().unwrap_or((OpCode::Binary, Vec::new()));
                        let data = Bytes::from(buf);
                        return Ok(if op == OpCode::Text { WsMessage::Text(data) } else { WsMessage::Binary(data) });
                    }
                }
                // A new data frame inside a fragmented message, or a stray continuation.
                (OpCode::Text | OpCode::Binary | OpCode::Continuation, _) => {
                    return Err(WebSocketError::InvalidContinuationFrame);
                }
                _ => {}
            }
        }
    }
}

/// The write half of a client's WebSocket, owned by the session driver.
pub(crate) struct WsWriter {
    io: Box<dyn AsyncWrite + Send + Unpin>,
    closed: bool,
}

impl std::fmt::Debug for WsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsWriter").field("closed", &self.closed).finish_non_exhaustive()
    }
}

impl WsWriter {
    /// A writer over any byte sink (tests record the writes).
    #[cfg(test)]
    pub(crate) fn new(io: Box<dyn AsyncWrite + Send + Unpin>) -> Self {
        Self { io, closed: false }
    }

    /// Writes frames as one buffer. Nothing is written after a close frame.
    async fn write_frames(&mut self, frames: &mut [WsFrame<'_>]) -> Result<(), WebSocketError> {
        if self.closed {
            return Err(WebSocketError::ConnectionClosed);
        }
        let total: usize = frames.iter().map(|f| f.payload.len() + 10).sum();
        let mut buf = Vec::with_capacity(total);
        for frame in frames.iter_mut() {
            let mut head = [0u8; 10];
            let n = frame.fmt_head(&mut head);
            buf.extend_from_slice(&head[..n]);
            buf.extend_from_slice(&frame.payload);
            if frame.opcode == OpCode::Close {
                self.closed = true;
                break;
            }
        }
        self.io.write_all(&buf).await?;
        Ok(())
    }
}

/// Bytes hyper read past the upgrade request, replayed before the socket.
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

pub(crate) type WriteIo = Box<dyn AsyncWrite + Send + Unpin>;

/// Takes the stream back from hyper and fastwebsockets and splits it.
fn split(ws: WebSocket<TokioIo<Upgraded>>, max_payload: usize) -> (WsReader, WsWriter) {
    let (read, write) = raw_halves(ws);
    halves(read, write, max_payload)
}

/// The upgraded connection's byte halves, taken back from hyper and fastwebsockets (the TCP
/// stream itself when there is no TLS, so hyper's read buffer is freed).
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

/// The reader and the writer of a WebSocket whose handshake is done, over its two byte halves.
fn halves(read: ReadIo, write: WriteIo, max_payload: usize) -> (WsReader, WsWriter) {
    let (mut reader, _unused_writer) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    reader.set_max_message_size(max_payload);
    reader.set_auto_close(true);
    reader.set_auto_pong(true);
    (WsReader { read: reader, max_payload }, WsWriter { io: write, closed: false })
}

/// A session that started on WebSocket: hand the writer to the driver, then read.
pub(crate) async fn run_direct<H: Handler>(
    engine: Engine<H>,
    conn: Arc<Connection<H::State>>,
    ws: WebSocket<TokioIo<Upgraded>>,
) {
    let (reader, writer) = split(ws, engine.max_payload());
    conn.adopt_writer(writer);
    read_loop(&engine, &conn, reader).await;
}

/// A WebSocket that wants to take over a polling session: answer the probe,
/// wait for `5`, then hand the writer to the driver and keep reading.
pub(crate) async fn run_probe<H: Handler>(
    engine: Engine<H>,
    conn: Arc<Connection<H::State>>,
    ws: WebSocket<TokioIo<Upgraded>>,
) {
    let (reader, writer) = split(ws, engine.max_payload());
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
    let (reader, writer) = halves(read, write, engine.max_payload());
    probe(engine, conn, reader, writer).await;
}

async fn probe<H: Handler>(
    engine: Engine<H>,
    conn: Arc<Connection<H::State>>,
    mut reader: WsReader,
    mut writer: WsWriter,
) {
    let deadline = tokio::time::Instant::now() + engine.upgrade_timeout();
    let mut ignore_control = |_frame: WsFrame<'_>| async { Ok::<_, WebSocketError>(()) };
    loop {
        let read = tokio::time::timeout_at(deadline, reader.read_message(&mut ignore_control));
        let Ok(Ok(message)) = read.await else {
            conn.session().lock().abort_upgrade();
            close_writer(&mut writer).await;
            return;
        };
        let parsed = match message {
            WsMessage::Text(text) => conn.framing.decode_ws_text(text).ok(),
            _ => None,
        };
        let outcome = match parsed {
            Some(p) => conn.session().lock().on_packet(Instant::now(), p, Transport::WebSocket),
            None => Err(CloseReason::TransportError),
        };
        match outcome {
            Ok(Inbound::ProbeReply) => {
                // Parked and new GETs now get a noop.
                conn.wake_driver();
                conn.poll_notify();
                let mut reply = [WsFrame::text(Payload::Borrowed(b"3probe"))];
                if writer.write_frames(&mut reply).await.is_err() {
                    conn.session().lock().abort_upgrade();
                    return;
                }
            }
            Ok(_) if conn.session().lock().transport() == Transport::WebSocket => {
                metrics::counter!(crate::metrics::ENGINE_UPGRADES).increment(1);
                conn.poll_notify();
                conn.adopt_writer(writer);
                read_loop(&engine, &conn, reader).await;
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

async fn read_loop<H: Handler>(engine: &Engine<H>, conn: &Arc<Connection<H::State>>, mut reader: WsReader) {
    let control_conn = conn.clone();
    let mut send_fn = move |frame: WsFrame<'_>| {
        control_conn.push_control(frame.opcode, Bytes::copy_from_slice(&frame.payload));
        async { Ok::<_, WebSocketError>(()) }
    };
    loop {
        let message = tokio::select! {
            message = reader.read_message(&mut send_fn) => message,
            () = conn.wait_closed() => return,
        };
        let decoded = match message {
            Ok(WsMessage::Text(text)) => conn.framing.decode_ws_text(text),
            Ok(WsMessage::Binary(data)) => conn.framing.decode_ws_binary(data),
            Ok(WsMessage::Close) => {
                conn.close_with(CloseReason::TransportClose);
                return;
            }
            Err(WebSocketError::FrameTooLarge | WebSocketError::InvalidContinuationFrame) => {
                conn.close_with(CloseReason::ParseError);
                return;
            }
            Err(WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed) => {
                conn.close_with(CloseReason::TransportClose);
                return;
            }
            Err(_) => {
                conn.close_with(CloseReason::TransportError);
                return;
            }
        };
        let Ok(packet) = decoded else {
            conn.close_with(CloseReason::ParseError);
            return;
        };
        if !engine.deliver(conn, packet, Transport::WebSocket) {
            return;
        }
    }
}

/// Writes owed control frames and a batch of packets with one write. Gives
/// up (with an error) if the session closes or its heartbeat expires while
/// the client is not reading.
pub(crate) async fn write_batch<S>(
    writer: &mut WsWriter,
    control: &[(OpCode, Bytes)],
    batch: &[Frame],
    deadline: Option<Instant>,
    conn: &Connection<S>,
) -> Result<(), WebSocketError> {
    let mut frames: Vec<WsFrame<'_>> = Vec::with_capacity(control.len() + batch.len());
    frames.extend(control.iter().map(|(op, payload)| WsFrame::new(true, *op, None, Payload::Borrowed(payload))));
    let mut bytes = 0u64;
    for frame in batch {
        bytes += frame.len() as u64;
        frames.push(ws_frame(conn.framing, frame));
    }
    let write = writer.write_frames(&mut frames);
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
                metrics::counter!(crate::metrics::SOCKETIO_PACKETS_SENT).increment(batch.len() as u64);
                metrics::counter!(crate::metrics::SOCKETIO_BYTES_SENT).increment(bytes);
                return Ok(());
            }
            () = conn.wait_aborted() => return Err(WebSocketError::ConnectionClosed),
            () = conn.wait_closed() => {
                // Closed gracefully: finish this write if the client reads, but never wait long.
                return match tokio::time::timeout(std::time::Duration::from_secs(2), &mut write).await {
                    Ok(res) => res,
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

/// Sends a close frame once and shuts the socket down for writing.
pub(crate) async fn close_writer(writer: &mut WsWriter) {
    let close = async {
        if !writer.closed {
            let mut frames = [WsFrame::close(1000, b"")];
            writer.write_frames(&mut frames).await?;
        }
        writer.io.shutdown().await.map_err(WebSocketError::from)
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), close).await;
}

/// Closes a WebSocket that may not join the session.
pub(crate) async fn close_now(ws: WebSocket<TokioIo<Upgraded>>) {
    let (_reader, mut writer) = split(ws, 1024);
    close_writer(&mut writer).await;
}

/// [`close_now`] for a WebSocket whose bytes another node relays.
pub(crate) async fn close_now_io(read: ReadIo, write: WriteIo) {
    let (_reader, mut writer) = halves(read, write, 1024);
    close_writer(&mut writer).await;
}
