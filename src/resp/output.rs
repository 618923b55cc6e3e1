//! A connection's bounded output queue, shared between its reader (command replies), every
//! publisher that delivers to it (messages) and its writer task (which drains it to the socket).
//!
//! Publishers never wait: a push appends a shared [`Bytes`] frame under a short lock. When the
//! queued bytes pass the hard limit, or stay above the soft limit for longer than the soft
//! period ([`OutputLimits::exceeded`], Redis' `checkClientOutputBufferLimits`), the connection is
//! killed: the writer stops at once and the reader drops the connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::frame::Proto;

/// Output buffer limits of a subscriber (Redis' `client-output-buffer-limit pubsub`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutputLimits {
    /// Queued bytes at which the client is disconnected at once (0: no limit).
    pub(crate) hard: usize,
    /// Queued bytes that may not be exceeded for longer than `soft_period` (0: no limit).
    pub(crate) soft: usize,
    /// How long the soft limit may be exceeded.
    pub(crate) soft_period: Duration,
}

impl OutputLimits {
    /// Whether a client with `pending` queued bytes must be disconnected at `now`.
    /// `soft_since` is when it went above the soft limit (kept up to date here).
    pub(crate) fn exceeded(&self, pending: usize, soft_since: &mut Option<Instant>, now: Instant) -> bool {
        if self.hard != 0 && pending >= self.hard {
            return true;
        }
        if self.soft != 0 && pending >= self.soft {
            match *soft_since {
                None => {
                    *soft_since = Some(now);
                    false
                }
                Some(since) => now.saturating_duration_since(since) > self.soft_period,
            }
        } else {
            *soft_since = None;
            false
        }
    }
}

/// Why a connection's output was shut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KillReason {
    /// Over the hard limit.
    HardLimit,
    /// Over the soft limit for too long.
    SoftLimit,
}

impl KillReason {
    /// Metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KillReason::HardLimit => "output_hard_limit",
            KillReason::SoftLimit => "output_soft_limit",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// Bytes queued or being written.
    pending: usize,
    soft_since: Option<Instant>,
    killed: Option<KillReason>,
    /// Close the connection once everything queued is written (QUIT, protocol errors).
    closing: bool,
    /// Bytes left the queue (taken by the writer, or claimed by the reader writing its replies
    /// itself) and are not all written yet: nobody else writes to the socket meanwhile.
    writing: bool,
    /// The connection is going away without flushing (peer gone, write failed).
    aborted: bool,
}

/// What the writer should do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Write these frames, then call [`ClientOutput::written`].
    Write(Vec<Bytes>),
    /// Everything is written and the connection should close.
    Close,
    /// The client was killed: drop the connection without writing more.
    Killed,
}

/// The output side of one connection.
#[derive(Debug)]
pub(crate) struct ClientOutput {
    id: u64,
    proto: AtomicU8,
    limits: OutputLimits,
    state: Mutex<State>,
    /// `State::pending` as of the last change, readable without the lock: the reader checks it
    /// after every pipelined command.
    pending: AtomicUsize,
    /// Wakes the writer.
    ready: Notify,
    /// Wakes the reader waiting for the queue to drain.
    drained: Notify,
    /// Cancelled when the client is killed.
    killed: CancellationToken,
}

impl ClientOutput {
    /// A new, empty output for client `id`.
    pub(crate) fn new(id: u64, limits: OutputLimits) -> Self {
        Self {
            id,
            proto: AtomicU8::new(2),
            limits,
            state: Mutex::new(State::default()),
            pending: AtomicUsize::new(0),
            ready: Notify::new(),
            drained: Notify::new(),
            killed: CancellationToken::new(),
        }
    }

    /// Client id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Protocol the client speaks now (publishers pick the frame encoding with it).
    pub(crate) fn proto(&self) -> Proto {
        if self.proto.load(Ordering::Relaxed) == 3 { Proto::Resp3 } else { Proto::Resp2 }
    }

    /// Switches the protocol (HELLO, RESET).
    pub(crate) fn set_proto(&self, proto: Proto) {
        self.proto.store(if proto == Proto::Resp3 { 3 } else { 2 }, Ordering::Relaxed);
    }

    /// Token cancelled when the client is killed.
    pub(crate) fn killed_token(&self) -> &CancellationToken {
        &self.killed
    }

    /// Why the client was killed, if it was.
    pub(crate) fn kill_reason(&self) -> Option<KillReason> {
        self.state.lock().killed
    }

    /// Queues a command reply. Replies are bounded by the reader, which waits for the queue to
    /// drain before it reads more ([`ClientOutput::wait_below`]).
    pub(crate) fn push_reply(&self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        if state.killed.is_some() || state.aborted {
            return;
        }
        state.pending += frame.len();
        self.pending.store(state.pending, Ordering::Relaxed);
        state.queue.push_back(frame);
        drop(state);
        self.ready.notify_one();
    }

    /// Queues a published message, enforcing the output limits. Returns the reason if this push
    /// killed the client.
    pub(crate) fn push_message(&self, frame: Bytes, now: Instant) -> Option<KillReason> {
        let mut state = self.state.lock();
        if state.killed.is_some() || state.aborted {
            return None;
        }
        state.pending += frame.len();
        self.pending.store(state.pending, Ordering::Relaxed);
        state.queue.push_back(frame);
        let pending = state.pending;
        if self.limits.exceeded(pending, &mut state.soft_since, now) {
            let reason = if self.limits.hard != 0 && pending >= self.limits.hard {
                KillReason::HardLimit
            } else {
                KillReason::SoftLimit
            };
            state.killed = Some(reason);
            state.queue.clear();
            drop(state);
            self.killed.cancel();
            self.ready.notify_one();
            self.drained.notify_one();
            return Some(reason);
        }
        drop(state);
        self.ready.notify_one();
        None
    }

    /// Asks the writer to close the connection once the queue is written.
    pub(crate) fn close_when_flushed(&self) {
        self.state.lock().closing = true;
        self.ready.notify_one();
    }

    /// Drops the connection without writing what is queued.
    pub(crate) fn abort(&self) {
        let mut state = self.state.lock();
        state.aborted = true;
        state.queue.clear();
        drop(state);
        self.killed.cancel();
        self.ready.notify_one();
        self.drained.notify_one();
    }

    /// Takes the queued frames (waiting for some), or says to close.
    pub(crate) async fn next(&self) -> Next {
        loop {
            {
                let mut state = self.state.lock();
                if state.killed.is_some() || state.aborted {
                    return Next::Killed;
                }
                if !state.writing {
                    if !state.queue.is_empty() {
                        state.writing = true;
                        return Next::Write(state.queue.drain(..).collect());
                    }
                    if state.closing {
                        return Next::Close;
                    }
                }
            }
            self.ready.notified().await;
        }
    }

    /// Claims the socket for `len` bytes of replies that the reader writes itself: `true` when
    /// nothing is queued or being written, so the bytes keep their place in the output (then
    /// call [`ClientOutput::release_inline`]); `false` when they must be queued
    /// ([`ClientOutput::push_reply`]). Saves the writer task's wakeup for each read's replies.
    pub(crate) fn claim_inline(&self, len: usize) -> bool {
        let mut state = self.state.lock();
        if state.killed.is_some() || state.aborted || state.writing || !state.queue.is_empty() {
            return false;
        }
        state.writing = true;
        state.pending += len;
        self.pending.store(state.pending, Ordering::Relaxed);
        true
    }

    /// Ends a claim: `n` bytes reached the socket; `rest`, what the socket did not take, goes
    /// first in the queue, before anything published meanwhile.
    pub(crate) fn release_inline(&self, n: usize, rest: Bytes) {
        let mut state = self.state.lock();
        state.writing = false;
        state.pending = state.pending.saturating_sub(n);
        if !rest.is_empty() {
            if state.killed.is_some() || state.aborted {
                state.pending = state.pending.saturating_sub(rest.len());
            } else {
                state.queue.push_front(rest);
            }
        }
        if self.limits.soft == 0 || state.pending < self.limits.soft {
            state.soft_since = None;
        }
        self.pending.store(state.pending, Ordering::Relaxed);
        let wake = !state.queue.is_empty() || state.closing;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Records `n` bytes as written to the socket (everything [`ClientOutput::next`] returned).
    pub(crate) fn written(&self, n: usize) {
        let mut state = self.state.lock();
        state.writing = false;
        state.pending = state.pending.saturating_sub(n);
        self.pending.store(state.pending, Ordering::Relaxed);
        if self.limits.soft == 0 || state.pending < self.limits.soft {
            state.soft_since = None;
        }
        drop(state);
        self.drained.notify_one();
    }

    /// Bytes queued or being written.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Waits until fewer than `limit` bytes are pending (or the client was killed).
    pub(crate) async fn wait_below(&self, limit: usize) {
        loop {
            {
                let state = self.state.lock();
                if state.pending < limit || state.killed.is_some() || state.aborted {
                    return;
                }
            }
            self.drained.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OutputLimits {
        OutputLimits { hard: 100, soft: 50, soft_period: Duration::from_secs(60) }
    }

    #[test]
    fn hard_limit_is_immediate() {
        let now = Instant::now();
        let mut since = None;
        assert!(!limits().exceeded(99, &mut since, now));
        assert!(limits().exceeded(100, &mut since, now));
    }

    #[test]
    fn soft_limit_needs_time() {
        let t0 = Instant::now();
        let mut since = None;
        assert!(!limits().exceeded(60, &mut since, t0));
        assert_eq!(since, Some(t0));
        assert!(!limits().exceeded(60, &mut since, t0 + Duration::from_secs(60)));
        assert!(limits().exceeded(60, &mut since, t0 + Duration::from_secs(61)));
        // Dropping below the soft limit resets the clock.
        let mut since = Some(t0);
        assert!(!limits().exceeded(10, &mut since, t0 + Duration::from_secs(100)));
        assert_eq!(since, None);
    }

    #[test]
    fn zero_means_unlimited() {
        let off = OutputLimits { hard: 0, soft: 0, soft_period: Duration::ZERO };
        assert!(!off.exceeded(usize::MAX, &mut None, Instant::now()));
    }

    #[tokio::test]
    async fn queue_kills_on_overflow_and_stops_writer() {
        let out = ClientOutput::new(1, limits());
        out.push_reply(Bytes::from_static(b"+OK\r\n"));
        assert_eq!(out.next().await, Next::Write(vec![Bytes::from_static(b"+OK\r\n")]));
        out.written(5);
        assert_eq!(out.pending(), 0);
        let now = Instant::now();
        assert_eq!(out.push_message(Bytes::from(vec![b'x'; 40]), now), None);
        assert_eq!(out.push_message(Bytes::from(vec![b'x'; 70]), now), Some(KillReason::HardLimit));
        assert!(out.killed_token().is_cancelled());
        assert_eq!(out.next().await, Next::Killed);
        assert_eq!(out.kill_reason(), Some(KillReason::HardLimit));
    }

    #[tokio::test]
    async fn inline_replies_keep_their_place() {
        let out = ClientOutput::new(1, limits());
        // Idle: the reader may write itself; a publish meanwhile waits behind the claim.
        assert!(out.claim_inline(10));
        assert!(!out.claim_inline(1));
        out.push_message(Bytes::from_static(b"msg"), Instant::now());
        assert_eq!(out.pending(), 13);
        // The socket took 4 bytes: the other 6 go out before the message.
        out.release_inline(4, Bytes::from_static(b"567890"));
        assert_eq!(out.pending(), 9);
        assert!(!out.claim_inline(1), "queued output is written first");
        assert_eq!(out.next().await, Next::Write(vec![Bytes::from_static(b"567890"), Bytes::from_static(b"msg")]));
        assert!(!out.claim_inline(1), "the writer is writing");
        out.written(9);
        assert_eq!(out.pending(), 0);
        assert!(out.claim_inline(2));
        out.release_inline(2, Bytes::new());
        out.close_when_flushed();
        assert_eq!(out.next().await, Next::Close);
    }

    #[tokio::test]
    async fn close_after_flush() {
        let out = ClientOutput::new(1, limits());
        out.push_reply(Bytes::from_static(b"+OK\r\n"));
        out.close_when_flushed();
        assert!(matches!(out.next().await, Next::Write(_)));
        out.written(5);
        assert_eq!(out.next().await, Next::Close);
    }
}
