//! The Engine.IO session state machine: handshake timings, heartbeat,
//! long-polling request rules, the upgrade dance and the bounded send queue.
//!
//! Pure: every method takes `now` and returns what the caller must do. The
//! HTTP and WebSocket drivers in [`super::endpoint`], [`super::polling`],
//! [`super::driver`] and [`super::websocket`]
//! hold a `Session` behind a mutex and carry out its decisions, so all of the
//! protocol's timing rules are tested here with simulated time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::packet::{Frame, Packet, PacketType};
use super::protocol::Protocol;

/// Timing settings of a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) upgrade_timeout: Duration,
}

/// Limits of the per-session send queue (see the README's backpressure section).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Most packets held for a client before it is disconnected.
    pub(crate) max_packets: usize,
    /// Most bytes held for a client before it is disconnected.
    pub(crate) max_bytes: usize,
    /// A volatile packet is dropped when more than this many bytes are queued.
    pub(crate) volatile_drop_bytes: usize,
}

/// Which transport currently carries the session's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Polling,
    WebSocket,
}

impl Transport {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::WebSocket => "websocket",
        }
    }
}

/// Why an Engine.IO session ended. [`CloseReason::as_str`] is the reason
/// socket.io reports; [`CloseReason::label`] the `reason` label of
/// `ioswarm_engine_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client sent a close packet or closed its WebSocket cleanly.
    TransportClose,
    /// The transport failed (I/O error, a second pending GET, an overlapping POST…).
    TransportError,
    /// No pong within `pingTimeout`.
    PingTimeout,
    /// The client sent something that does not parse.
    ParseError,
    /// The send queue passed its limit.
    Overflow,
    /// The server application closed the connection.
    ServerClose,
    /// The node is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Every reason, in declaration order.
    pub const ALL: [Self; 7] = [
        Self::TransportClose,
        Self::TransportError,
        Self::PingTimeout,
        Self::ParseError,
        Self::Overflow,
        Self::ServerClose,
        Self::Shutdown,
    ];

    /// The reason string socket.io reports for this cause.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::PingTimeout => "ping timeout",
            Self::ParseError => "parse error",
            Self::Overflow => "send buffer overflow",
            Self::ServerClose => "forced close",
            Self::Shutdown => "server shutting down",
        }
    }

    /// Whether the server chose to close: queued packets are still delivered.
    pub(crate) fn is_graceful(self) -> bool {
        matches!(self, Self::ServerClose | Self::Shutdown)
    }

    /// The `reason` label value of `ioswarm_engine_connections_closed_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Self::TransportClose => "transport_close",
            Self::TransportError => "transport_error",
            Self::PingTimeout => "ping_timeout",
            Self::ParseError => "parse_error",
            Self::Overflow => "overflow",
            Self::ServerClose => "server_close",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Upgrade progress of a polling session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    /// No WebSocket has asked to take over.
    None,
    /// A WebSocket is attached; the probe may not have arrived yet.
    Probing { deadline: Instant, probed: bool },
    /// The session has moved to WebSocket for good.
    Done,
}

/// What a polling GET gets when it is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PollReply {
    /// Queued packets (never empty).
    Frames(Vec<Frame>),
    /// A `6` noop: an upgrade is in progress or completed.
    Noop,
    /// A `1` close packet: the session ended while the GET was waiting.
    Close,
}

/// The outcome of starting a polling GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PollStart {
    /// Answer right away.
    Reply(PollReply),
    /// Park the request until [`Session::poll_take`] yields something.
    Park,
}

/// Why a polling request is refused with HTTP 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// A second GET while one is pending: the session is closed.
    #[error("overlapping polling GET")]
    DuplicateGet,
    /// A second POST while one is being read: the session is closed.
    #[error("overlapping polling POST")]
    DuplicatePost,
    /// The session has moved to WebSocket, or has ended.
    #[error("session is not on polling")]
    NotPolling,
}

/// What an inbound packet means for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// Nothing for the application.
    None,
    /// A text message for the application.
    Message(bytes::Bytes),
    /// A binary message for the application.
    Binary(bytes::Bytes),
    /// The WebSocket must answer `3probe` right away (not through the queue).
    ProbeReply,
    /// Protocol 3: a client ping was answered with a pong, queued: wake the transport.
    PongQueued,
}

/// The result of queueing packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued; the transport should be woken.
    Queued,
    /// A volatile packet was dropped because the client is behind.
    DroppedVolatile,
    /// The packet alone is larger than the send queue may hold; it was dropped.
    TooLarge,
    /// The session is closed (or just closed for overflow); nothing was queued.
    Closed,
}

/// One Engine.IO session.
#[derive(Debug)]
pub(crate) struct Session {
    timings: Timings,
    limits: QueueLimits,
    protocol: Protocol,
    transport: Transport,
    upgrade: Upgrade,
    /// Protocol 4: when the server sends its next ping.
    next_ping: Option<Instant>,
    /// When the session ends for want of a heartbeat: a pong to the server's ping is due
    /// (protocol 4), or the client's next ping (protocol 3).
    pong_deadline: Option<Instant>,
    queue: VecDeque<Frame>,
    queued_bytes: usize,
    /// Queue positions where a WebSocket write must end (see
    /// [`Session::enqueue_own_write`]), ascending; rarely more than one.
    write_ends: VecDeque<usize>,
    get_pending: bool,
    post_pending: bool,
    /// A WebSocket is attached to the session (the driver writes to it).
    ws_attached: bool,
    /// Senders may flush the queue to that WebSocket themselves (see [`Session::claim_flush`]).
    inline_writes: bool,
    /// Someone is writing to the WebSocket: the driver, or a sender flushing.
    write_claimed: bool,
    /// The driver found the WebSocket busy with a sender's flush and waits to be woken.
    driver_waits: bool,
    /// The end of a sender's write that the socket did not take at once: it goes out before
    /// anything else, in a write of its own, by the driver. Counted in `queued_bytes`.
    unsent: bytes::Bytes,
    closed: Option<CloseReason>,
    /// The last answer owed to a parked GET once the session ended: `6` when
    /// the client closed it (upstream's polling transport answers its pending
    /// request with a noop), `1` when the server did.
    final_poll_reply: Option<PollReply>,
}

impl Session {
    /// A protocol 4 session opened at `now` (timers start before the handshake reply is sent).
    #[cfg(test)]
    pub(crate) fn new(now: Instant, transport: Transport, timings: Timings, limits: QueueLimits) -> Self {
        Self::with_protocol(now, transport, timings, limits, Protocol::V4)
    }

    /// A session of `protocol` opened at `now`. Protocol 4: the server pings `ping_interval`
    /// after the handshake and waits `ping_timeout` for the pong. Protocol 3: the client pings;
    /// the session ends when no ping arrived for `ping_interval + ping_timeout`.
    pub(crate) fn with_protocol(
        now: Instant,
        transport: Transport,
        timings: Timings,
        limits: QueueLimits,
        protocol: Protocol,
    ) -> Self {
        let (next_ping, pong_deadline) = match protocol {
            Protocol::V4 => (Some(now + timings.ping_interval), None),
            Protocol::V3 => (None, Some(now + timings.ping_interval + timings.ping_timeout)),
        };
        Self {
            timings,
            limits,
            protocol,
            transport,
            upgrade: Upgrade::None,
            next_ping,
            pong_deadline,
            queue: VecDeque::new(),
            queued_bytes: 0,
            write_ends: VecDeque::new(),
            get_pending: false,
            post_pending: false,
            ws_attached: false,
            inline_writes: false,
            write_claimed: false,
            driver_waits: false,
            unsent: bytes::Bytes::new(),
            closed: None,
            final_poll_reply: None,
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    pub(crate) fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// Packets and bytes currently queued.
    pub(crate) fn queued(&self) -> (usize, usize) {
        (self.queue.len(), self.queued_bytes)
    }

    /// The next instant at which [`Session::on_timer`] has work to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        let upgrade = match self.upgrade {
            Upgrade::Probing { deadline, .. } => Some(deadline),
            _ => None,
        };
        [self.next_ping, self.pong_deadline, upgrade].into_iter().flatten().min()
    }

    /// Runs the timers due at `now`. Returns the close reason if the session ended.
    pub(crate) fn on_timer(&mut self, now: Instant) -> TimerOutcome {
        if self.closed.is_some() {
            return TimerOutcome::Idle;
        }
        let mut outcome = TimerOutcome::Idle;
        if let Upgrade::Probing { deadline, .. } = self.upgrade
            && deadline <= now
        {
            self.upgrade = Upgrade::None;
            outcome = TimerOutcome::UpgradeTimedOut;
        }
        if self.pong_deadline.is_some_and(|d| d <= now) {
            self.close(CloseReason::PingTimeout);
            return TimerOutcome::Closed(CloseReason::PingTimeout);
        }
        if self.next_ping.is_some_and(|d| d <= now) {
            self.next_ping = None;
            self.pong_deadline = Some(now + self.timings.ping_timeout);
            self.push(Frame::control(PacketType::Ping));
            return TimerOutcome::PingQueued;
        }
        outcome
    }

    /// Handles one packet from the client, on whichever transport it came.
    pub(crate) fn on_packet(&mut self, now: Instant, packet: Packet, via: Transport) -> Result<Inbound, CloseReason> {
        if let Some(reason) = self.closed {
            return Err(reason);
        }
        let probing = via == Transport::WebSocket && self.transport == Transport::Polling;
        if probing {
            return self.on_probe_packet(packet);
        }
        match packet {
            Packet::Pong(_) if self.protocol == Protocol::V4 => {
                if self.pong_deadline.take().is_some() {
                    self.next_ping = Some(now + self.timings.ping_interval);
                }
                Ok(Inbound::None)
            }
            Packet::Ping(_) if self.protocol == Protocol::V3 => {
                // Answered at once, whatever is queued; the next ping is due within
                // ping_interval + ping_timeout (as engine.io re-arms its timer).
                self.pong_deadline = Some(now + self.timings.ping_interval + self.timings.ping_timeout);
                let pong = Frame::control(PacketType::Pong);
                // A pong still waiting in the queue answers this ping too, so a client cannot
                // grow the queue with pings.
                if self.queue.back() != Some(&pong) {
                    self.push(pong);
                }
                Ok(Inbound::PongQueued)
            }
            Packet::Message(text) => Ok(Inbound::Message(text)),
            Packet::Binary(raw) => Ok(Inbound::Binary(raw)),
            Packet::Close => {
                self.close(CloseReason::TransportClose);
                if self.transport == Transport::Polling {
                    // The parked GET, or the one sent together with this close
                    // and not yet arrived, gets a noop (upstream answers a
                    // pending GET so); any later GET finds the session unknown.
                    self.final_poll_reply = Some(PollReply::Noop);
                }
                Err(CloseReason::TransportClose)
            }
            Packet::Noop => Ok(Inbound::None),
            // A v4 client never pings (heartbeats go server to client) and a v3 client never
            // pongs; no client opens, and one upgrades only on the probing WebSocket.
            Packet::Ping(_) | Packet::Pong(_) | Packet::Open | Packet::Upgrade => {
                self.close(CloseReason::ParseError);
                Err(CloseReason::ParseError)
            }
        }
    }

    fn on_probe_packet(&mut self, packet: Packet) -> Result<Inbound, CloseReason> {
        let Upgrade::Probing { deadline, probed } = self.upgrade else {
            return Err(CloseReason::TransportError);
        };
        match packet {
            Packet::Ping(data) if &data[..] == b"probe" && !probed => {
                self.upgrade = Upgrade::Probing { deadline, probed: true };
                // Every pending and new GET is answered with a noop from now on.
                Ok(Inbound::ProbeReply)
            }
            Packet::Upgrade if probed => {
                self.upgrade = Upgrade::Done;
                self.transport = Transport::WebSocket;
                Ok(Inbound::None)
            }
            // Anything else on a probing socket aborts the upgrade only.
            _ => {
                self.upgrade = Upgrade::None;
                Err(CloseReason::TransportError)
            }
        }
    }

    /// A WebSocket with this session's id arrived. `Ok` starts the probe;
    /// `Err` means that socket must be closed (already upgraded, upgrading, or closed).
    pub(crate) fn begin_upgrade(&mut self, now: Instant) -> Result<(), RequestError> {
        if self.closed.is_some() || self.transport != Transport::Polling || self.upgrade != Upgrade::None {
            return Err(RequestError::NotPolling);
        }
        self.upgrade = Upgrade::Probing { deadline: now + self.timings.upgrade_timeout, probed: false };
        Ok(())
    }

    /// The probing WebSocket went away before `5`.
    /// The client finished an upgrade (`5` on the probed WebSocket) after the server closed the
    /// session gracefully: the packets the close kept (a Socket.IO DISCONNECT, say) can only
    /// reach it on that WebSocket now, its polling being paused for the upgrade. Moves them to
    /// `out` and returns `true` in that case only.
    pub(crate) fn take_for_closed_upgrade(&mut self, out: &mut Vec<Frame>) -> bool {
        let upgrading =
            self.transport == Transport::Polling && matches!(self.upgrade, Upgrade::Probing { probed: true, .. });
        if !upgrading || !self.closed.is_some_and(CloseReason::is_graceful) {
            return false;
        }
        self.upgrade = Upgrade::None;
        self.queued_bytes = 0;
        self.write_ends.clear();
        out.extend(self.queue.drain(..));
        self.release_burst_capacity();
        // The client got its last packets on the WebSocket and polls no more: no GET is owed
        // an answer, so the session need not linger for one (it held a node's shutdown).
        self.final_poll_reply = None;
        true
    }

    pub(crate) fn abort_upgrade(&mut self) {
        if matches!(self.upgrade, Upgrade::Probing { .. }) {
            self.upgrade = Upgrade::None;
        }
    }

    fn probed(&self) -> bool {
        matches!(self.upgrade, Upgrade::Probing { probed: true, .. } | Upgrade::Done)
    }

    /// A polling GET arrived.
    pub(crate) fn poll_start(&mut self) -> Result<PollStart, RequestError> {
        if self.closed.is_some() && !self.get_pending {
            // Only a gracefully closed session still has something for it.
            return self.poll_take().map(PollStart::Reply).ok_or(RequestError::NotPolling);
        }
        if self.closed.is_some() || self.transport != Transport::Polling {
            return Err(RequestError::NotPolling);
        }
        if self.get_pending {
            // Upstream closes the session; the parked request is answered `1`.
            self.close(CloseReason::TransportError);
            return Err(RequestError::DuplicateGet);
        }
        match self.poll_take() {
            Some(reply) => Ok(PollStart::Reply(reply)),
            None => {
                self.get_pending = true;
                Ok(PollStart::Park)
            }
        }
    }

    /// What a parked (or new) GET can be answered with now, if anything.
    /// Answering clears the pending flag.
    pub(crate) fn poll_take(&mut self) -> Option<PollReply> {
        let reply = if self.closed.is_some() {
            if self.final_poll_reply.is_some() && !self.queue.is_empty() {
                // Packets first, the close packet with the next GET: clients
                // handle a payload's close before its messages, as upstream's
                // polling transport only closes once its buffer has drained.
                self.queued_bytes = 0;
                self.write_ends.clear();
                PollReply::Frames(self.queue.drain(..).collect())
            } else {
                self.final_poll_reply.take()?
            }
        } else if !self.queue.is_empty() && !self.probed() {
            // One polling payload carries it all: its packets are separate messages anyway.
            self.queued_bytes = 0;
            self.write_ends.clear();
            let frames = self.queue.drain(..).collect();
            self.release_burst_capacity();
            PollReply::Frames(frames)
        } else if self.probed() {
            PollReply::Noop
        } else {
            return None;
        };
        self.get_pending = false;
        Some(reply)
    }

    /// The client behind a parked GET went away without an answer.
    pub(crate) fn poll_abandoned(&mut self) {
        self.get_pending = false;
    }

    /// Whether a GET is parked.
    #[cfg(test)]
    pub(crate) fn poll_parked(&self) -> bool {
        self.get_pending
    }

    /// A polling POST arrived; call [`Session::post_end`] when its body was handled.
    pub(crate) fn post_start(&mut self) -> Result<(), RequestError> {
        if self.closed.is_some() || self.transport != Transport::Polling {
            return Err(RequestError::NotPolling);
        }
        if self.post_pending {
            self.close(CloseReason::TransportError);
            return Err(RequestError::DuplicatePost);
        }
        self.post_pending = true;
        Ok(())
    }

    /// Whether requests may still reach this session: it is open, or it
    /// was closed gracefully and a GET is still owed its last packets.
    pub(crate) fn accepts_requests(&self) -> bool {
        self.closed.is_none() || self.final_poll_reply.is_some()
    }

    pub(crate) fn post_end(&mut self) {
        self.post_pending = false;
    }

    /// Queues application frames atomically (a binary packet's header and
    /// attachments stay together).
    pub(crate) fn enqueue(&mut self, frames: &[Frame], volatile: bool) -> Enqueued {
        if self.closed.is_some() {
            return Enqueued::Closed;
        }
        let bytes: usize = frames.iter().map(Frame::len).sum();
        if volatile && (self.queued_bytes > self.limits.volatile_drop_bytes || self.queue_blocked()) {
            return Enqueued::DroppedVolatile;
        }
        if frames.len() > self.limits.max_packets || bytes > self.limits.max_bytes {
            // One packet larger than the whole queue: refuse the packet, keep the client.
            return Enqueued::TooLarge;
        }
        if self.queue.len() + frames.len() > self.limits.max_packets
            || self.queued_bytes + bytes > self.limits.max_bytes
        {
            self.close(CloseReason::Overflow);
            return Enqueued::Closed;
        }
        for frame in frames {
            self.push(frame.clone());
        }
        Enqueued::Queued
    }

    /// Queues `frames` like [`Session::enqueue`], and makes them end a
    /// WebSocket write: what is queued after them goes out in a later write.
    ///
    /// For Socket.IO's CONNECT reply, which socket.io writes before it runs
    /// the connection handler: clients that handle one WebSocket message per
    /// read of the socket (the npm `ws` library emits every message of one
    /// read synchronously) lose whatever the handler emitted if it arrives in
    /// the same write.
    pub(crate) fn enqueue_own_write(&mut self, frames: &[Frame]) -> Enqueued {
        let result = self.enqueue(frames, false);
        let end = self.queue.len();
        if result == Enqueued::Queued && self.write_ends.back().is_none_or(|&last| last < end) {
            self.write_ends.push_back(end);
        }
        result
    }

    /// A polling client with no GET parked cannot take a volatile packet now.
    fn queue_blocked(&self) -> bool {
        self.transport == Transport::Polling && !self.get_pending
    }

    fn push(&mut self, frame: Frame) {
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
    }

    /// Once drained, give the queue's memory back: an idle client keeps none.
    fn release_burst_capacity(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = VecDeque::new();
        }
        if self.write_ends.is_empty() && self.write_ends.capacity() > 0 {
            self.write_ends = VecDeque::new();
        }
    }

    /// A WebSocket now carries the session; `inline` lets senders flush to it themselves.
    pub(crate) fn attach_websocket(&mut self, inline: bool) {
        self.ws_attached = true;
        self.inline_writes = inline;
    }

    /// Whether a WebSocket is attached.
    pub(crate) fn websocket_attached(&self) -> bool {
        self.ws_attached
    }

    /// Whether whoever makes the queue non-empty should flush it from its own thread
    /// ([`Session::claim_flush`]) rather than wake the driver.
    pub(crate) fn flushed_by_senders(&self) -> bool {
        self.inline_writes && self.transport == Transport::WebSocket
    }

    /// Claims the WebSocket for one write of a sender flushing the queue, if nobody is
    /// writing and no leftover waits for the driver. Release it with
    /// [`Session::end_flush`]. Whoever holds the claim looks at the queue again when done,
    /// so a sender that cannot claim leaves its frames to them.
    pub(crate) fn claim_flush(&mut self) -> bool {
        let may = !self.write_claimed && self.unsent.is_empty() && self.closed.is_none();
        self.write_claimed |= may;
        may
    }

    /// Claims the WebSocket for one write of the driver. `false` while a sender flushes: that
    /// sender wakes the driver when it is done.
    pub(crate) fn claim_write(&mut self) -> bool {
        if self.write_claimed {
            self.driver_waits = true;
            return false;
        }
        self.write_claimed = true;
        true
    }

    /// The driver's write is done. Returns whether frames were queued meanwhile: their sender
    /// found the socket claimed and left them to the driver, which must take another turn.
    pub(crate) fn release_write(&mut self) -> bool {
        self.write_claimed = false;
        !self.queue.is_empty()
    }

    /// Ends a sender's write ([`Session::claim_flush`]); `unsent` is what the socket did not
    /// take. Returns whether the driver must be woken (to write what is left, to close, or
    /// because it waits for the socket).
    pub(crate) fn end_flush(&mut self, unsent: bytes::Bytes) -> bool {
        self.write_claimed = false;
        if !unsent.is_empty() && self.closed.is_none_or(CloseReason::is_graceful) {
            self.queued_bytes += unsent.len();
            self.unsent = unsent;
        }
        let wake = self.driver_waits || !self.unsent.is_empty() || self.closed.is_some();
        self.driver_waits = false;
        wake
    }

    /// The end of a sender's write the socket did not take, if any (see
    /// [`Session::end_flush`]): the driver writes it first, alone.
    pub(crate) fn take_unsent(&mut self) -> bytes::Bytes {
        self.queued_bytes = self.queued_bytes.saturating_sub(self.unsent.len());
        std::mem::take(&mut self.unsent)
    }

    /// Whether nothing is queued.
    pub(crate) fn queue_is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Moves the queued frames that make one WebSocket write into `out`:
    /// all of them, or those up to a write end (see
    /// [`Session::enqueue_own_write`]). Returns whether frames are left for
    /// another write.
    pub(crate) fn drain_for_websocket(&mut self, out: &mut Vec<Frame>) -> bool {
        if self.transport != Transport::WebSocket {
            return false;
        }
        let n = self.write_ends.pop_front().unwrap_or(self.queue.len()).min(self.queue.len());
        for end in &mut self.write_ends {
            *end -= n;
        }
        let bytes: usize = self.queue.iter().take(n).map(Frame::len).sum();
        self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
        out.extend(self.queue.drain(..n));
        self.release_burst_capacity();
        !self.queue.is_empty()
    }

    /// Ends the session (idempotent). A parked GET will be answered `1`.
    ///
    /// A server-initiated close ([`CloseReason::ServerClose`], [`CloseReason::Shutdown`])
    /// keeps what is queued so that it is flushed first (e.g. the DISCONNECT
    /// packets of `disconnect(true)`); any other cause discards it.
    pub(crate) fn close(&mut self, reason: CloseReason) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            let graceful = reason.is_graceful();
            // A parked GET is owed a last answer; so is the next GET of a
            // polling client that still has packets to collect.
            if self.transport == Transport::Polling && (self.get_pending || (graceful && !self.queue.is_empty())) {
                self.final_poll_reply = Some(PollReply::Close);
            }
            if !graceful {
                self.queue.clear();
                self.write_ends.clear();
                self.unsent = bytes::Bytes::new();
                self.queued_bytes = 0;
            }
        }
    }
}

/// What [`Session::on_timer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerOutcome {
    /// Nothing happened.
    Idle,
    /// A ping was queued: wake the transport.
    PingQueued,
    /// The probing WebSocket did not finish in time: close it.
    UpgradeTimedOut,
    /// The session ended.
    Closed(CloseReason),
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const TIMINGS: Timings = Timings {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        upgrade_timeout: Duration::from_millis(1000),
    };
    const LIMITS: QueueLimits = QueueLimits { max_packets: 4, max_bytes: 100, volatile_drop_bytes: 10 };

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn polling(t0: Instant) -> Session {
        Session::new(t0, Transport::Polling, TIMINGS, LIMITS)
    }

    #[test]
    fn first_ping_exactly_one_interval_after_handshake() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        assert_eq!(s.next_deadline(), Some(ms(t0, 300)));
        assert_eq!(s.on_timer(ms(t0, 299)), TimerOutcome::Idle);
        assert_eq!(s.on_timer(ms(t0, 300)), TimerOutcome::PingQueued);
        assert_eq!(s.poll_start(), Ok(PollStart::Reply(PollReply::Frames(vec![Frame::control(PacketType::Ping)]))));
        // Pong at 350: next ping one interval after the pong.
        assert_eq!(s.on_packet(ms(t0, 350), Packet::Pong(Bytes::new()), Transport::Polling), Ok(Inbound::None));
        assert_eq!(s.next_deadline(), Some(ms(t0, 650)));
    }

    #[test]
    fn missed_pong_closes_after_ping_timeout() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        s.on_timer(ms(t0, 300));
        assert_eq!(s.next_deadline(), Some(ms(t0, 500)));
        assert_eq!(s.on_timer(ms(t0, 499)), TimerOutcome::Idle);
        assert_eq!(s.on_timer(ms(t0, 500)), TimerOutcome::Closed(CloseReason::PingTimeout));
        assert_eq!(s.poll_start(), Err(RequestError::NotPolling));
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn abandoned_polling_session_is_reaped_by_the_heartbeat() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        // The client never polls again: the ping stays queued, the pong never comes.
        let mut now = t0;
        while let Some(deadline) = s.next_deadline() {
            now = deadline;
            s.on_timer(now);
        }
        assert_eq!(s.closed(), Some(CloseReason::PingTimeout));
        assert_eq!(now, ms(t0, 500));
    }

    #[test]
    fn client_ping_is_an_error() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        assert_eq!(s.on_packet(t0, Packet::Ping(Bytes::new()), Transport::Polling), Err(CloseReason::ParseError));
        assert_eq!(s.closed(), Some(CloseReason::ParseError));
    }

    fn polling_v3(t0: Instant) -> Session {
        Session::with_protocol(t0, Transport::Polling, TIMINGS, LIMITS, Protocol::V3)
    }

    fn ping() -> Packet {
        Packet::Ping(Bytes::new())
    }

    #[test]
    fn v3_client_pings_are_answered_and_keep_the_session() {
        let t0 = Instant::now();
        let mut s = polling_v3(t0);
        // The server never pings: the only deadline is interval + timeout after the handshake.
        assert_eq!(s.next_deadline(), Some(ms(t0, 500)));
        assert_eq!(s.on_timer(ms(t0, 300)), TimerOutcome::Idle);
        assert_eq!(s.queued(), (0, 0));
        assert_eq!(s.on_packet(ms(t0, 400), ping(), Transport::Polling), Ok(Inbound::PongQueued));
        assert_eq!(s.next_deadline(), Some(ms(t0, 900)));
        assert_eq!(s.poll_start(), Ok(PollStart::Reply(PollReply::Frames(vec![Frame::control(PacketType::Pong)]))));
        assert_eq!(s.on_timer(ms(t0, 799)), TimerOutcome::Idle);
        assert_eq!(s.on_packet(ms(t0, 800), ping(), Transport::Polling), Ok(Inbound::PongQueued));
        assert_eq!(s.on_timer(ms(t0, 1200)), TimerOutcome::Idle);
        assert_eq!(s.on_timer(ms(t0, 1300)), TimerOutcome::Closed(CloseReason::PingTimeout));
    }

    #[test]
    fn v3_session_without_pings_closes_after_interval_plus_timeout() {
        let t0 = Instant::now();
        let mut s = Session::with_protocol(t0, Transport::WebSocket, TIMINGS, LIMITS, Protocol::V3);
        assert_eq!(s.on_timer(ms(t0, 499)), TimerOutcome::Idle);
        assert_eq!(s.on_timer(ms(t0, 500)), TimerOutcome::Closed(CloseReason::PingTimeout));
    }

    #[test]
    fn v3_pongs_coalesce_and_a_client_pong_is_an_error() {
        let t0 = Instant::now();
        let mut s = polling_v3(t0);
        for _ in 0..100 {
            assert_eq!(s.on_packet(t0, ping(), Transport::Polling), Ok(Inbound::PongQueued));
        }
        assert_eq!(s.queued(), (1, 1));
        assert_eq!(s.on_packet(t0, Packet::Pong(Bytes::new()), Transport::Polling), Err(CloseReason::ParseError));
        // And a protocol 4 client may not ping.
        let mut v4 = polling(t0);
        assert_eq!(v4.on_packet(t0, ping(), Transport::Polling), Err(CloseReason::ParseError));
    }

    #[test]
    fn v3_upgrade_probe_is_the_same_dance() {
        let t0 = Instant::now();
        let mut s = polling_v3(t0);
        s.begin_upgrade(t0).expect("upgrade starts");
        let probe = Packet::Ping(Bytes::from_static(b"probe"));
        assert_eq!(s.on_packet(t0, probe, Transport::WebSocket), Ok(Inbound::ProbeReply));
        // A heartbeat ping still arriving by polling is answered once the upgrade is done.
        assert_eq!(s.on_packet(t0, ping(), Transport::Polling), Ok(Inbound::PongQueued));
        assert_eq!(s.poll_start(), Ok(PollStart::Reply(PollReply::Noop)));
        assert_eq!(s.on_packet(t0, Packet::Upgrade, Transport::WebSocket), Ok(Inbound::None));
        let mut out = Vec::new();
        s.drain_for_websocket(&mut out);
        assert_eq!(out, vec![Frame::control(PacketType::Pong)]);
    }

    #[test]
    fn parked_get_is_answered_when_data_arrives() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        assert_eq!(s.poll_start(), Ok(PollStart::Park));
        assert_eq!(s.poll_take(), None);
        assert_eq!(s.enqueue(&[Frame::message(b"x")], false), Enqueued::Queued);
        assert_eq!(s.poll_take(), Some(PollReply::Frames(vec![Frame::message(b"x")])));
        assert!(!s.poll_parked());
    }

    #[test]
    fn duplicate_get_closes_and_first_gets_close_packet() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        assert_eq!(s.poll_start(), Ok(PollStart::Park));
        assert_eq!(s.poll_start(), Err(RequestError::DuplicateGet));
        assert_eq!(s.poll_take(), Some(PollReply::Close));
        assert_eq!(s.poll_take(), None);
        assert_eq!(s.closed(), Some(CloseReason::TransportError));
    }

    #[test]
    fn overlapping_post_closes() {
        let mut s = polling(Instant::now());
        assert_eq!(s.post_start(), Ok(()));
        assert_eq!(s.post_start(), Err(RequestError::DuplicatePost));
        assert!(s.closed().is_some());
    }

    #[test]
    fn upgrade_dance() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        s.enqueue(&[Frame::message(b"buffered")], false);
        assert_eq!(s.begin_upgrade(t0), Ok(()));
        // A second websocket while probing is refused.
        assert_eq!(s.begin_upgrade(t0), Err(RequestError::NotPolling));
        let probe = Packet::Ping(Bytes::from_static(b"probe"));
        assert_eq!(s.on_packet(t0, probe, Transport::WebSocket), Ok(Inbound::ProbeReply));
        // Every GET during the upgrade gets a noop, buffered data waits for the websocket.
        assert_eq!(s.poll_start(), Ok(PollStart::Reply(PollReply::Noop)));
        assert_eq!(s.on_packet(t0, Packet::Upgrade, Transport::WebSocket), Ok(Inbound::None));
        assert_eq!(s.transport(), Transport::WebSocket);
        assert_eq!(s.poll_start(), Err(RequestError::NotPolling));
        let mut out = Vec::new();
        s.drain_for_websocket(&mut out);
        assert_eq!(out, vec![Frame::message(b"buffered")]);
        assert_eq!(s.begin_upgrade(t0), Err(RequestError::NotPolling));
    }

    #[test]
    fn parked_get_gets_noop_after_probe() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        assert_eq!(s.poll_start(), Ok(PollStart::Park));
        s.begin_upgrade(t0).expect("upgrade starts");
        s.on_packet(t0, Packet::Ping(Bytes::from_static(b"probe")), Transport::WebSocket).expect("probe");
        assert_eq!(s.poll_take(), Some(PollReply::Noop));
    }

    #[test]
    fn upgrade_times_out() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        s.begin_upgrade(t0).expect("upgrade starts");
        // The pong arrives in time, so only the upgrade deadline matters here.
        s.on_timer(ms(t0, 300));
        s.on_packet(ms(t0, 310), Packet::Pong(Bytes::new()), Transport::Polling).expect("pong");
        s.on_timer(ms(t0, 610));
        s.on_packet(ms(t0, 620), Packet::Pong(Bytes::new()), Transport::Polling).expect("pong");
        s.on_timer(ms(t0, 920));
        s.on_packet(ms(t0, 930), Packet::Pong(Bytes::new()), Transport::Polling).expect("pong");
        assert_eq!(s.on_timer(ms(t0, 1000)), TimerOutcome::UpgradeTimedOut);
        assert_eq!(s.transport(), Transport::Polling);
        assert_eq!(s.begin_upgrade(ms(t0, 1001)), Ok(()));
    }

    #[test]
    fn non_probe_on_probing_socket_aborts_upgrade_only() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        s.begin_upgrade(t0).expect("upgrade starts");
        assert_eq!(
            s.on_packet(t0, Packet::Message(Bytes::from_static(b"x")), Transport::WebSocket),
            Err(CloseReason::TransportError)
        );
        assert_eq!(s.closed(), None);
        assert_eq!(s.transport(), Transport::Polling);
    }

    #[test]
    fn overflow_closes_and_volatile_is_dropped() {
        let t0 = Instant::now();
        let mut s = Session::new(t0, Transport::WebSocket, TIMINGS, LIMITS);
        assert_eq!(s.enqueue(&[Frame::message(b"0123456789")], false), Enqueued::Queued);
        // 11 bytes queued > volatile_drop_bytes (10).
        assert_eq!(s.enqueue(&[Frame::message(b"v")], true), Enqueued::DroppedVolatile);
        assert_eq!(s.enqueue(&[Frame::message(b"a"), Frame::message(b"b")], false), Enqueued::Queued);
        assert_eq!(s.queued(), (3, 15));
        // Two more would make 5 packets > 4: the client is disconnected.
        assert_eq!(s.enqueue(&[Frame::message(b"c"), Frame::message(b"d")], false), Enqueued::Closed);
        assert_eq!(s.closed(), Some(CloseReason::Overflow));
        assert_eq!(s.queued(), (0, 0));
    }

    #[test]
    fn a_packet_larger_than_the_queue_is_refused_without_closing() {
        let mut s = Session::new(Instant::now(), Transport::WebSocket, TIMINGS, LIMITS);
        let five = [b"a", b"b", b"c", b"d", b"e"].map(|b| Frame::message(b));
        assert_eq!(s.enqueue(&five, false), Enqueued::TooLarge);
        assert_eq!(s.enqueue(&[Frame::message(&[b'x'; 200])], false), Enqueued::TooLarge);
        assert_eq!(s.closed(), None);
        assert_eq!(s.enqueue(&[Frame::message(b"ok")], false), Enqueued::Queued);
    }

    #[test]
    fn volatile_dropped_for_polling_client_without_pending_get() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        assert_eq!(s.enqueue(&[Frame::message(b"v")], true), Enqueued::DroppedVolatile);
        assert_eq!(s.poll_start(), Ok(PollStart::Park));
        assert_eq!(s.enqueue(&[Frame::message(b"v")], true), Enqueued::Queued);
    }

    #[test]
    fn server_close_flushes_queue_before_close_packet() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        assert_eq!(s.poll_start(), Ok(PollStart::Park));
        // Queued, then closed before the parked GET woke up: it gets both.
        s.enqueue(&[Frame::message(b"1")], false);
        s.close(CloseReason::ServerClose);
        assert_eq!(s.enqueue(&[Frame::message(b"late")], false), Enqueued::Closed);
        assert_eq!(s.poll_take(), Some(PollReply::Frames(vec![Frame::message(b"1")])));
        assert!(s.accepts_requests());
        assert_eq!(s.poll_start(), Ok(PollStart::Reply(PollReply::Close)));

        // No GET parked: the next GET collects the packets and the close.
        let mut idle = polling(t0);
        idle.enqueue(&[Frame::message(b"41")], false);
        idle.close(CloseReason::ServerClose);
        assert!(idle.accepts_requests());
        assert_eq!(idle.poll_start(), Ok(PollStart::Reply(PollReply::Frames(vec![Frame::message(b"41")]))));
        assert_eq!(idle.poll_start(), Ok(PollStart::Reply(PollReply::Close)));
        assert!(!idle.accepts_requests());
        assert_eq!(idle.poll_start(), Err(RequestError::NotPolling));

        let mut ws = Session::new(t0, Transport::WebSocket, TIMINGS, LIMITS);
        ws.enqueue(&[Frame::message(b"41")], false);
        ws.close(CloseReason::ServerClose);
        let mut out = Vec::new();
        ws.drain_for_websocket(&mut out);
        assert_eq!(out, vec![Frame::message(b"41")]);

        let mut err = Session::new(t0, Transport::WebSocket, TIMINGS, LIMITS);
        err.enqueue(&[Frame::message(b"x")], false);
        err.close(CloseReason::TransportError);
        let mut out = Vec::new();
        err.drain_for_websocket(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_closed_session_whose_last_packets_left_on_the_upgrade_owes_no_get_an_answer() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        s.begin_upgrade(t0).expect("upgrade starts");
        assert_eq!(
            s.on_packet(t0, Packet::Ping(Bytes::from_static(b"probe")), Transport::WebSocket),
            Ok(Inbound::ProbeReply)
        );
        s.enqueue(&[Frame::message(b"41")], false);
        s.close(CloseReason::ServerClose);
        assert!(s.accepts_requests(), "the packets wait for the upgrade or a GET");
        let mut out = Vec::new();
        assert!(s.take_for_closed_upgrade(&mut out));
        assert_eq!(out, vec![Frame::message(b"41")]);
        assert!(!s.accepts_requests(), "nothing is left for a GET: the session can go at once");
    }

    #[test]
    fn close_before_the_get_sent_with_it_still_answers_that_get_with_a_noop() {
        // A GET and a POST `1` sent at the same moment may arrive in either order.
        let t0 = Instant::now();
        let mut s = polling(t0);
        assert_eq!(s.post_start(), Ok(()));
        assert_eq!(s.on_packet(t0, Packet::Close, Transport::Polling), Err(CloseReason::TransportClose));
        s.post_end();
        assert!(s.accepts_requests());
        assert_eq!(s.poll_start(), Ok(PollStart::Reply(PollReply::Noop)));
        // Any later GET finds the session gone.
        assert!(!s.accepts_requests());
        assert_eq!(s.poll_start(), Err(RequestError::NotPolling));
    }

    #[test]
    fn frames_queued_for_their_own_write_end_a_websocket_batch() {
        let t0 = Instant::now();
        let mut s = Session::new(t0, Transport::WebSocket, TIMINGS, QueueLimits { max_packets: 16, ..LIMITS });
        let f = |t: &str| Frame::Text(Bytes::copy_from_slice(t.as_bytes()));
        assert_eq!(s.enqueue(&[f("a")], false), Enqueued::Queued);
        assert_eq!(s.enqueue_own_write(&[f("reply")]), Enqueued::Queued);
        assert_eq!(s.enqueue(&[f("b"), f("c")], false), Enqueued::Queued);
        assert_eq!(s.enqueue_own_write(&[f("reply2")]), Enqueued::Queued);
        assert_eq!(s.enqueue(&[f("d")], false), Enqueued::Queued);
        let mut batch = Vec::new();
        assert!(s.drain_for_websocket(&mut batch));
        assert_eq!(batch, [f("a"), f("reply")]);
        batch.clear();
        assert!(s.drain_for_websocket(&mut batch));
        assert_eq!(batch, [f("b"), f("c"), f("reply2")]);
        batch.clear();
        assert!(!s.drain_for_websocket(&mut batch));
        assert_eq!(batch, [f("d")]);
        assert_eq!(s.queued(), (0, 0));
        // Without a write end, one batch takes everything.
        s.enqueue(&[f("e"), f("g")], false);
        batch.clear();
        assert!(!s.drain_for_websocket(&mut batch));
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn senders_flush_one_at_a_time_and_never_while_the_driver_writes() {
        let t0 = Instant::now();
        let f = |t: &str| Frame::Text(Bytes::copy_from_slice(t.as_bytes()));
        let mut s = Session::new(t0, Transport::WebSocket, TIMINGS, QueueLimits { max_packets: 16, ..LIMITS });
        // No socket yet, or one that only the driver writes (TLS): the driver flushes.
        assert!(!s.flushed_by_senders());
        s.attach_websocket(false);
        assert!(!s.flushed_by_senders());
        let mut s = Session::new(t0, Transport::WebSocket, TIMINGS, QueueLimits { max_packets: 16, ..LIMITS });
        s.attach_websocket(true);
        assert!(s.flushed_by_senders());
        assert_eq!(s.enqueue(&[f("a")], false), Enqueued::Queued);
        assert!(s.claim_flush());
        let mut batch = Vec::new();
        assert!(!s.drain_for_websocket(&mut batch));
        // While it writes: another sender cannot claim, the driver waits to be woken.
        assert_eq!(s.enqueue(&[f("b")], false), Enqueued::Queued);
        assert!(!s.claim_flush());
        assert!(!s.claim_write());
        assert!(s.end_flush(Bytes::new()), "the driver waits");
        assert!(s.claim_write());
        assert!(!s.claim_flush(), "the driver is writing");
        assert!(s.release_write(), "b is still queued: the driver takes another turn");
        assert!(s.claim_flush());
        batch.clear();
        assert!(!s.drain_for_websocket(&mut batch));
        assert_eq!(batch.len(), 1);
        assert!(!s.end_flush(Bytes::new()), "nothing for the driver to do");
        // Frames queued while the driver writes, by a sender that found the socket claimed,
        // are the driver's to write: releasing its claim says so.
        assert!(s.claim_write());
        assert!(!s.release_write(), "nothing queued");
        assert!(s.claim_write());
        assert_eq!(s.enqueue(&[f("c")], false), Enqueued::Queued);
        assert!(!s.claim_flush());
        assert!(s.release_write(), "c was left to the driver");
        s.close(CloseReason::ServerClose);
        assert!(!s.claim_flush(), "a closed session is flushed by its driver");
    }

    #[test]
    fn what_a_sender_could_not_write_goes_first_and_counts_toward_the_bound() {
        let t0 = Instant::now();
        let f = |t: &str| Frame::Text(Bytes::copy_from_slice(t.as_bytes()));
        let mut s = Session::new(t0, Transport::WebSocket, TIMINGS, QueueLimits { max_packets: 16, ..LIMITS });
        s.attach_websocket(true);
        assert!(s.claim_flush());
        assert!(s.end_flush(Bytes::from_static(&[7; 90])), "the driver must write the rest");
        assert!(!s.claim_flush(), "the rest goes first, by the driver");
        assert_eq!(s.enqueue(&[f("a")], false), Enqueued::Queued);
        assert_eq!(s.queued(), (1, 91));
        assert!(s.claim_write());
        assert_eq!(s.take_unsent(), Bytes::from_static(&[7; 90]));
        assert_eq!(s.queued(), (1, 1));
        s.release_write();
        assert!(s.claim_flush());
        // A client that does not read: its leftovers and queue pass the bound, it is disconnected.
        let mut slow = Session::new(t0, Transport::WebSocket, TIMINGS, QueueLimits { max_packets: 16, ..LIMITS });
        slow.attach_websocket(true);
        assert!(slow.claim_flush());
        slow.end_flush(Bytes::from_static(&[7; 95]));
        assert_eq!(slow.enqueue(&[f("0123456789")], false), Enqueued::Closed);
        assert_eq!(slow.closed(), Some(CloseReason::Overflow));
        assert_eq!(slow.take_unsent(), Bytes::new(), "an overflowed client's leftovers are dropped");
    }

    #[test]
    fn client_close_packet_ends_session() {
        let t0 = Instant::now();
        let mut s = polling(t0);
        assert_eq!(s.poll_start(), Ok(PollStart::Park));
        assert_eq!(s.on_packet(t0, Packet::Close, Transport::Polling), Err(CloseReason::TransportClose));
        // Upstream answers the pending GET with a noop when the client closes.
        assert_eq!(s.poll_take(), Some(PollReply::Noop));
        assert_eq!(s.poll_take(), None);
    }
}
