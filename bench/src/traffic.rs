//! Message traffic of the fanout and rooms scenarios.
//!
//! - The payload: one JSON object `{"k":STEP,"s":SEQ,"t":SENT_US,"p":"xx…"}` sent as the single
//!   argument of event `msg`. `t` is microseconds since the UNIX epoch (`SystemTime`: every process
//!   runs on one machine, so one clock); nanoseconds would pass 2^53 and lose precision in Node.
//! - [`Recorder`]: what the receiving side of a worker counts per step (received, latency histogram,
//!   first and last receive time) and, for chat clients, what it sent and how many deliveries that
//!   should make.
//! - [`run_client`]: one subscriber / chat client: answers pings, records `msg` events, and sends
//!   to its room at the rate of the current chat step.
//! - [`sio_publisher`] and [`redis_publisher`]: the fanout publisher, a Socket.IO client relaying
//!   with `ioswarm:to`, or a Redis client PUBLISHing the socket.io emitter format.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use fastwebsockets::{Frame, OpCode};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sio::{Client, HoldEnd, on_held_frame, send_text};

/// Largest latency the histograms hold (1 hour, in µs); longer ones are clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Microseconds since the UNIX epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A new latency histogram (µs, 3 significant digits).
pub(crate) fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

/// The `msg` argument as JSON text.
pub(crate) fn payload_json(step: u32, seq: u64, sent_us: u64, pad: &str) -> String {
    format!("{{\"k\":{step},\"s\":{seq},\"t\":{sent_us},\"p\":\"{pad}\"}}")
}

/// Padding of `bytes` ASCII letters.
pub(crate) fn padding(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// What a received `msg` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) step: u32,
    pub(crate) seq: u64,
    pub(crate) sent_us: u64,
}

/// The unsigned integer after `key` (e.g. `"t":`) in `text`.
pub(crate) fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

/// Parses a Socket.IO EVENT text packet `42["msg",{...}]` from any of the servers (keys in any
/// order). `None` for anything else.
pub(crate) fn parse_msg(packet: &[u8]) -> Option<Msg> {
    let body = packet.strip_prefix(b"42[\"msg\",")?;
    Some(Msg {
        step: u32::try_from(number_after(body, b"\"k\":")?).ok()?,
        seq: number_after(body, b"\"s\":")?,
        sent_us: number_after(body, b"\"t\":")?,
    })
}

/// One step's figures of one worker, as sent to the coordinator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StepReport {
    pub(crate) received: u64,
    /// Messages this worker's clients sent (chat).
    pub(crate) sent: u64,
    /// Deliveries those sends should make (sent × other members of the sender's room).
    pub(crate) expected: u64,
    /// Earliest and latest receive time, µs since the epoch (0: nothing received).
    pub(crate) first_us: u64,
    pub(crate) last_us: u64,
    /// Same (client, seq) seen twice or out of order: counted, not an error.
    pub(crate) reordered: u64,
    /// Latency histogram, (value µs, count) pairs.
    pub(crate) hist: Vec<(u64, u64)>,
}

#[derive(Debug)]
struct StepStats {
    received: u64,
    sent: u64,
    expected: u64,
    first_us: u64,
    last_us: u64,
    reordered: u64,
    hist: Histogram<u64>,
}

impl Default for StepStats {
    fn default() -> Self {
        Self { received: 0, sent: 0, expected: 0, first_us: 0, last_us: 0, reordered: 0, hist: new_histogram() }
    }
}

/// Per-step counters of one worker (its clients share it; the worker runs one thread).
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    steps: Mutex<BTreeMap<u32, StepStats>>,
    /// Every `msg` received, all steps (for the coordinator's drain detection).
    pub(crate) received_total: AtomicU64,
    /// Text packets that looked like `msg` but did not parse.
    pub(crate) malformed: AtomicU64,
}

impl Recorder {
    fn received(&self, msg: Msg, last_seq: &mut Option<u64>) {
        let now = now_us();
        self.received_total.fetch_add(1, Ordering::Relaxed);
        let Ok(mut steps) = self.steps.lock() else { return };
        let stats = steps.entry(msg.step).or_default();
        stats.received += 1;
        if stats.first_us == 0 {
            stats.first_us = now;
        }
        stats.last_us = stats.last_us.max(now);
        if last_seq.is_some_and(|last| msg.seq <= last) {
            stats.reordered += 1;
        }
        *last_seq = Some(msg.seq);
        stats.hist.saturating_record(now.saturating_sub(msg.sent_us).clamp(1, MAX_LATENCY_US));
    }

    fn sent(&self, step: u32, recipients: u64) {
        if let Ok(mut steps) = self.steps.lock() {
            let stats = steps.entry(step).or_default();
            stats.sent += 1;
            stats.expected += recipients;
        }
    }

    /// Removes and returns one step's figures (empty when nothing happened in it).
    pub(crate) fn take(&self, step: u32) -> StepReport {
        let Some(stats) = self.steps.lock().ok().and_then(|mut s| s.remove(&step)) else {
            return StepReport::default();
        };
        StepReport {
            received: stats.received,
            sent: stats.sent,
            expected: stats.expected,
            first_us: stats.first_us,
            last_us: stats.last_us,
            reordered: stats.reordered,
            hist: stats.hist.iter_recorded().map(|v| (v.value_iterated_to(), v.count_since_last_iteration())).collect(),
        }
    }
}

/// A chat step: every chat client sends `msg` to its room at `rate` per second until `until`.
#[derive(Debug, Clone)]
pub(crate) struct ChatStep {
    pub(crate) step: u32,
    pub(crate) rate: f64,
    pub(crate) until: Instant,
    pub(crate) pad: String,
}

/// What one subscriber / chat client needs to know.
#[derive(Debug, Clone)]
pub(crate) struct ClientCtx {
    /// Global client index (sequence numbers and send phase).
    pub(crate) index: usize,
    /// Its room, JSON-quoted (chat clients send to it).
    pub(crate) room_json: String,
    /// Other members of its room (deliveries one send should make).
    pub(crate) recipients: u64,
}

/// Runs one subscriber / chat client until `stop` fires or the server ends the connection.
pub(crate) async fn run_client(
    mut client: Client,
    ctx: ClientCtx,
    stop: CancellationToken,
    pings: &AtomicU64,
    rec: &Recorder,
    mut chat: watch::Receiver<Option<ChatStep>>,
) -> HoldEnd {
    let far = || Instant::now() + Duration::from_secs(86_400);
    let mut current: Option<ChatStep> = None;
    let mut next_send: Option<Instant> = None;
    let mut chat_open = true;
    let mut sent: u64 = 0;
    let mut last_seq: BTreeMap<u64, u64> = BTreeMap::new();
    loop {
        let send_at = next_send;
        tokio::select! {
            () = stop.cancelled() => {
                let close = client.ws.write_frame(Frame::close(1000, b""));
                let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                return HoldEnd::Stopped;
            }
            changed = chat.changed(), if chat_open => {
                if changed.is_err() {
                    chat_open = false;
                    continue;
                }
                current = chat.borrow_and_update().clone();
                next_send = current.as_ref().filter(|c| c.rate > 0.0).map(|c| {
                    // Spread the clients' sends over one period (golden-ratio phases).
                    let phase = (ctx.index as f64 * 0.618_033_988_75).fract();
                    Instant::now() + Duration::from_secs_f64(phase / c.rate)
                });
            }
            () = tokio::time::sleep_until(send_at.unwrap_or_else(far)), if send_at.is_some() => {
                let Some(step) = current.as_ref() else { next_send = None; continue };
                let now = Instant::now();
                if now >= step.until {
                    next_send = None;
                    continue;
                }
                let seq = ((ctx.index as u64) << 32) | sent;
                sent += 1;
                let packet = format!(
                    "42[\"ioswarm:to\",{},\"msg\",{}]",
                    ctx.room_json,
                    payload_json(step.step, seq, now_us(), &step.pad)
                );
                if send_text(&mut client.ws, &packet).await.is_err() {
                    return HoldEnd::Dropped("write error");
                }
                rec.sent(step.step, ctx.recipients);
                let period = Duration::from_secs_f64(1.0 / step.rate);
                // Late (the loop was busy): skip ahead instead of bursting.
                next_send = send_at.map(|at| (at + period).max(now));
            }
            frame = client.ws.read_frame() => {
                let on_packet = |payload: &[u8]| {
                    if !payload.starts_with(b"42[\"msg\"") {
                        return;
                    }
                    match parse_msg(payload) {
                        Some(msg) => {
                            let last = last_seq.entry(msg.seq >> 32).or_insert(u64::MAX);
                            let mut prev = (*last != u64::MAX).then_some(*last);
                            rec.received(msg, &mut prev);
                            *last = prev.unwrap_or(u64::MAX);
                        }
                        None => {
                            rec.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                };
                if let Some(end) = on_held_frame(&mut client.ws, frame, Some(pings), on_packet).await {
                    return end;
                }
            }
        }
    }
}

/// Counts the replies to PUBLISH on `read` (each one line, `:N` or `-ERR …`) until it ends.
pub(crate) async fn count_replies(
    read: &mut (impl tokio::io::AsyncRead + Unpin),
    replies: &AtomicU64,
    errors: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut line_start = true;
    while let Ok(n) = read.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if line_start && b == b'-' {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            line_start = b == b'\n';
            if line_start {
                replies.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One publishing step for a publisher task.
#[derive(Debug)]
pub(crate) struct PublishStep {
    pub(crate) step: u32,
    /// Messages per second; `None`: as fast as the connection takes them.
    pub(crate) rate: Option<f64>,
    pub(crate) duration: Duration,
    /// Flat out only: stay at most this far ahead of the subscribers.
    pub(crate) window: Option<Window>,
    pub(crate) reply: oneshot::Sender<PublishStats>,
}

/// Closed-loop flat out: the publisher stays at most `ahead` messages ahead of the average
/// subscriber, so that the server's per-client send queues are not what limits the step.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// `msg` events received by every subscriber so far (updated by the coordinator).
    pub(crate) received: std::sync::Arc<AtomicU64>,
    /// `received` when the step started.
    pub(crate) base: u64,
    pub(crate) subscribers: u64,
    pub(crate) ahead: u64,
}

/// What a publishing step did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct PublishStats {
    pub(crate) sent: u64,
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
    /// The publisher's connection failed during the step.
    pub(crate) failed: bool,
}

/// Paces sends: how many messages are due by now.
struct Pacer {
    start: Instant,
    rate: Option<f64>,
    window: Option<Window>,
    sent: u64,
}

impl Pacer {
    /// `None`: send now; `Some(at)`: wait until `at`.
    fn next(&self) -> Option<Instant> {
        if let Some(rate) = self.rate {
            let at = self.start + Duration::from_secs_f64(self.sent as f64 / rate);
            return (at > Instant::now()).then_some(at);
        }
        let w = self.window.as_ref()?;
        let delivered = w.received.load(Ordering::Relaxed).saturating_sub(w.base) / w.subscribers.max(1);
        (self.sent >= delivered + w.ahead).then(|| Instant::now() + Duration::from_millis(1))
    }
}

/// The fanout publisher as a Socket.IO client in `room`: each message is
/// `ioswarm:to(room, "msg", payload)` (no ack asked). Between steps it answers pings.
pub(crate) async fn sio_publisher(
    mut client: Client,
    room: String,
    pad: String,
    mut steps: mpsc::Receiver<PublishStep>,
    stop: CancellationToken,
) {
    let room_json = serde_json::Value::String(room).to_string();
    let mut seq: u64 = 0;
    loop {
        let step = tokio::select! {
            () = stop.cancelled() => break,
            step = steps.recv() => match step { Some(step) => step, None => break },
            frame = client.ws.read_frame() => {
                match frame {
                    Ok(frame) if frame.opcode == OpCode::Text && &frame.payload[..] == b"2" => {
                        if send_text(&mut client.ws, "3").await.is_err() {
                            break;
                        }
                    }
                    Ok(frame) if frame.opcode == OpCode::Close => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
                continue;
            }
        };
        let start = Instant::now();
        let end = start + step.duration;
        let mut pacer = Pacer { start, rate: step.rate, window: step.window.clone(), sent: 0 };
        let mut stats = PublishStats { start_us: now_us(), ..PublishStats::default() };
        while Instant::now() < end && !stats.failed {
            let wait = pacer.next();
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                frame = client.ws.read_frame() => match frame {
                    Ok(frame) if frame.opcode == OpCode::Text && &frame.payload[..] == b"2" => {
                        stats.failed |= send_text(&mut client.ws, "3").await.is_err();
                    }
                    Ok(frame) if frame.opcode == OpCode::Close => stats.failed = true,
                    Ok(_) => {}
                    Err(_) => stats.failed = true,
                },
                () = async {
                    if let Some(at) = wait {
                        tokio::time::sleep_until(at.min(end)).await;
                    }
                } => {
                    if pacer.next().is_none() && Instant::now() < end {
                        let packet = format!(
                            "42[\"ioswarm:to\",{room_json},\"msg\",{}]",
                            payload_json(step.step, seq, now_us(), &pad)
                        );
                        seq += 1;
                        if send_text(&mut client.ws, &packet).await.is_err() {
                            stats.failed = true;
                        } else {
                            pacer.sent += 1;
                        }
                    }
                }
            }
        }
        stats.sent = pacer.sent;
        stats.end_us = now_us();
        let _ = step.reply.send(stats);
    }
    let close = client.ws.write_frame(Frame::close(1000, b""));
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
}

/// One `PUBLISH channel message` in RESP.
fn resp_publish(out: &mut Vec<u8>, channel: &str, message: &[u8]) {
    out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
    out.extend_from_slice(format!("${}\r\n", channel.len()).as_bytes());
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(format!("\r\n${}\r\n", message.len()).as_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(b"\r\n");
}

/// The socket.io emitter's broadcast message for `msg(payload)` to `room` (msgpack of
/// `["emitter", {type: 2, data: ["msg", payload], nsp: "/"}, {rooms: [room], except: [], flags: {}}]`).
pub(crate) fn emitter_message(room: &str, step: u32, seq: u64, sent_us: u64, pad: &str) -> anyhow::Result<Vec<u8>> {
    use rmpv::Value as V;
    let s = |t: &str| V::String(t.into());
    let payload =
        V::Map(vec![(s("k"), V::from(step)), (s("s"), V::from(seq)), (s("t"), V::from(sent_us)), (s("p"), s(pad))]);
    let packet =
        V::Map(vec![(s("type"), V::from(2)), (s("data"), V::Array(vec![s("msg"), payload])), (s("nsp"), s("/"))]);
    let opts = V::Map(vec![
        (s("rooms"), V::Array(vec![s(room)])),
        (s("except"), V::Array(vec![])),
        (s("flags"), V::Map(vec![])),
    ]);
    let mut out = Vec::with_capacity(96 + pad.len());
    rmpv::encode::write_value(&mut out, &V::Array(vec![s("emitter"), packet, opts]))?;
    Ok(out)
}

/// Most PUBLISH commands in flight without a reply (bounds what the server buffers for us).
const MAX_UNANSWERED: u64 = 4096;

/// The fanout publisher as a Redis emitter: PUBLISHes on `socket.io#/#<room>#` over one
/// pipelined RESP connection to the server's Redis ingress.
pub(crate) async fn redis_publisher(
    addr: SocketAddr,
    room: String,
    pad: String,
    mut steps: mpsc::Receiver<PublishStep>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut read, write) = stream.into_split();
    let mut write = BufWriter::with_capacity(64 * 1024, write);
    let replies = std::sync::Arc::new(AtomicU64::new(0));
    let errors = std::sync::Arc::new(AtomicU64::new(0));
    let reader = {
        let (replies, errors) = (replies.clone(), errors.clone());
        tokio::spawn(async move { count_replies(&mut read, &replies, &errors).await })
    };
    let channel = format!("socket.io#/#{room}#");
    let mut seq: u64 = 0;
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(4096);
    while let Some(step) = tokio::select! { () = stop.cancelled() => None, step = steps.recv() => step } {
        let start = Instant::now();
        let end = start + step.duration;
        let mut pacer = Pacer { start, rate: step.rate, window: step.window.clone(), sent: 0 };
        let mut stats = PublishStats { start_us: now_us(), ..PublishStats::default() };
        while Instant::now() < end {
            if let Some(at) = pacer.next() {
                write.flush().await?;
                tokio::time::sleep_until(at.min(end)).await;
                continue;
            }
            if total.saturating_sub(replies.load(Ordering::Relaxed)) >= MAX_UNANSWERED {
                write.flush().await?;
                tokio::time::sleep(Duration::from_micros(200)).await;
                continue;
            }
            out.clear();
            resp_publish(&mut out, &channel, &emitter_message(&room, step.step, seq, now_us(), &pad)?);
            write.write_all(&out).await?;
            seq += 1;
            total += 1;
            pacer.sent += 1;
        }
        write.flush().await?;
        stats.sent = pacer.sent;
        stats.end_us = now_us();
        let _ = step.reply.send(stats);
    }
    reader.abort();
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        bail!("the Redis ingress answered {errors} PUBLISH commands with an error");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_in_any_key_order() {
        let json = payload_json(3, 42, 1_700_000_000_123_456, "xx");
        let packet = format!("42[\"msg\",{json}]");
        let want = Msg { step: 3, seq: 42, sent_us: 1_700_000_000_123_456 };
        assert_eq!(parse_msg(packet.as_bytes()), Some(want));
        // serde_json without preserve_order sorts keys: socketioxide sends them that way.
        let sorted = b"42[\"msg\",{\"k\":3,\"p\":\"xx\",\"s\":42,\"t\":1700000000123456}]";
        assert_eq!(parse_msg(sorted), Some(want));
        assert_eq!(parse_msg(b"42[\"other\",{}]"), None);
        assert_eq!(parse_msg(b"42[\"msg\",{\"k\":1}]"), None);
    }

    #[test]
    fn recorder_counts_per_step() {
        let rec = Recorder::default();
        let mut last = None;
        rec.received(Msg { step: 1, seq: 5, sent_us: now_us() }, &mut last);
        rec.received(Msg { step: 1, seq: 4, sent_us: now_us() }, &mut last);
        rec.sent(1, 9);
        let report = rec.take(1);
        assert_eq!((report.received, report.sent, report.expected, report.reordered), (2, 1, 9, 1));
        assert_eq!(report.hist.iter().map(|(_, c)| c).sum::<u64>(), 2);
        assert_eq!(rec.take(1).received, 0);
    }

    #[test]
    fn emitter_message_is_the_emitter_format() {
        let bytes = emitter_message("r", 1, 2, 3, "p").expect("encodes");
        let value = rmpv::decode::read_value(&mut &bytes[..]).expect("decodes");
        let text = value.to_string();
        assert!(text.starts_with("[\"emitter\", {\"type\": 2, \"data\": [\"msg\", {\"k\": 1"), "{text}");
        assert!(text.contains("\"rooms\": [\"r\"]"), "{text}");
        let mut out = Vec::new();
        resp_publish(&mut out, "c", b"m");
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$1\r\nm\r\n");
    }
}
