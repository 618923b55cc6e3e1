//! The WebSocket transport: a reader task per connection, and the writing
//! helpers the session driver uses. Frames are written through a small
//! buffer and flushed once per batch, so a burst of broadcasts costs one
//! syscall rather than one per packet.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fastwebsockets::{
    FragmentCollectorRead, Frame as WsFrame, OpCode, Payload, WebSocket, WebSocketError, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{BufWriter, ReadHalf, WriteHalf};

use super::packet::{self, Frame};
use super::server::{Connection, Engine, Handler};
use super::session::{CloseReason, Inbound, TimerOutcome, Transport};

type Io = TokioIo<Upgraded>;
/// The write half of a client's WebSocket, owned by the session driver.
pub(crate) type WsWriter = WebSocketWrite<BufWriter<WriteHalf<Io>>>;
type WsReader = FragmentCollectorRead<ReadHalf<Io>>;

/// Bytes buffered before the writer flushes on its own.
const WRITE_BUFFER: usize = 4096;

fn split(mut ws: WebSocket<Io>, max_payload: usize) -> (WsReader, WsWriter) {
    ws.set_max_message_size(max_payload);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    ws.set_writev(false);
    let (read, write) = ws.split(|io| {
        let (r, w) = tokio::io::split(io);
        (r, BufWriter::with_capacity(WRITE_BUFFER, w))
    });
    (FragmentCollectorRead::new(read), write)
}

/// A session that started on WebSocket: hand the writer to the driver, then read.
pub(crate) async fn run_direct<H: Handler>(engine: Engine<H>, conn: Arc<Connection<H::State>>, ws: WebSocket<Io>) {
    let (reader, writer) = split(ws, engine.max_payload());
    conn.adopt_writer(writer);
    read_loop(&engine, &conn, reader).await;
}

/// A WebSocket that wants to take over a polling session: answer the probe,
/// wait for `5`, then hand the writer to the driver and keep reading.
pub(crate) async fn run_probe<H: Handler>(engine: Engine<H>, conn: Arc<Connection<H::State>>, ws: WebSocket<Io>) {
    let (mut reader, mut writer) = split(ws, engine.max_payload());
    let deadline = tokio::time::Instant::now() + engine.upgrade_timeout();
    let mut ignore_control = |_frame: WsFrame<'_>| async { Ok::<_, WebSocketError>(()) };
    loop {
        let read = tokio::time::timeout_at(deadline, reader.read_frame(&mut ignore_control));
        let Ok(Ok(frame)) = read.await else {
            conn.session().lock().abort_upgrade();
            close_writer(&mut writer).await;
            return;
        };
        let parsed = match frame.opcode {
            OpCode::Text => packet::decode_text(Bytes::copy_from_slice(&frame.payload)).ok(),
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
                wake_poll(&conn);
                let reply = WsFrame::text(Payload::Borrowed(b"3probe"));
                if writer.write_frame(reply).await.is_err() || writer.flush().await.is_err() {
                    conn.session().lock().abort_upgrade();
                    return;
                }
            }
            Ok(_) if conn.session().lock().transport() == Transport::WebSocket => {
                metrics::counter!(crate::metrics::ENGINE_UPGRADES).increment(1);
                wake_poll(&conn);
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

fn wake_poll<S>(conn: &Connection<S>) {
    // Sending nothing still wakes a parked GET so it can take its noop.
    conn.poll_notify();
}

async fn read_loop<H: Handler>(engine: &Engine<H>, conn: &Arc<Connection<H::State>>, mut reader: WsReader) {
    let control_conn = conn.clone();
    let mut send_fn = move |frame: WsFrame<'_>| {
        control_conn.push_control(frame.opcode, Bytes::copy_from_slice(&frame.payload));
        async { Ok::<_, WebSocketError>(()) }
    };
    loop {
        let frame = tokio::select! {
            frame = reader.read_frame(&mut send_fn) => frame,
            () = conn.wait_closed() => return,
        };
        let packet = match frame {
            Ok(frame) => match frame.opcode {
                OpCode::Text => match packet::decode_text(Bytes::copy_from_slice(&frame.payload)) {
                    Ok(p) => p,
                    Err(_) => {
                        conn.close_with(CloseReason::ParseError);
                        return;
                    }
                },
                OpCode::Binary => packet::Packet::Binary(Bytes::copy_from_slice(&frame.payload)),
                OpCode::Close => {
                    conn.close_with(CloseReason::TransportClose);
                    return;
                }
                _ => continue,
            },
            Err(WebSocketError::FrameTooLarge) => {
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
        if !engine.deliver(conn, packet, Transport::WebSocket) {
            return;
        }
    }
}

/// Writes owed control frames and a batch of packets, then flushes. Gives up
/// (with an error) if the session closes or its heartbeat expires while the
/// client is not reading.
pub(crate) async fn write_batch<S>(
    writer: &mut WsWriter,
    control: &[(OpCode, Bytes)],
    batch: &[Frame],
    deadline: Option<Instant>,
    conn: &Connection<S>,
) -> Result<(), WebSocketError> {
    let write = async {
        for (op, payload) in control {
            writer.write_frame(WsFrame::new(true, *op, None, Payload::Borrowed(payload))).await?;
        }
        let mut bytes = 0u64;
        for frame in batch {
            let ws_frame = match frame {
                Frame::Text(b) => WsFrame::text(Payload::Borrowed(b)),
                Frame::Binary(b) => WsFrame::binary(Payload::Borrowed(b)),
            };
            bytes += frame.len() as u64;
            writer.write_frame(ws_frame).await?;
        }
        writer.flush().await?;
        metrics::counter!(crate::metrics::SOCKETIO_PACKETS_SENT).increment(batch.len() as u64);
        metrics::counter!(crate::metrics::SOCKETIO_BYTES_SENT).increment(bytes);
        Ok::<_, WebSocketError>(())
    };
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
            res = &mut write => return res,
            () = conn.wait_closed() => return Err(WebSocketError::ConnectionClosed),
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

/// Sends a close frame once (fastwebsockets would send a second one) and flushes.
pub(crate) async fn close_writer(writer: &mut WsWriter) {
    if writer.is_closed() {
        return;
    }
    let close = async {
        writer.write_frame(WsFrame::close(1000, b"")).await?;
        writer.flush().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), close).await;
}

/// Closes a WebSocket that may not join the session.
pub(crate) async fn close_now(ws: WebSocket<Io>) {
    let (_reader, mut writer) = split(ws, 1024);
    close_writer(&mut writer).await;
}
