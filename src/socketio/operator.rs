//! The broadcast builder: `io.of("/").to("room").except("x").volatile().emit(…)`.

use std::time::Duration;

use super::adapter::{AckedBroadcast, RemoteOp, RemoteOutcome, RemoteSocket};
use super::namespace::Namespace;
use super::payload::Payload;
use super::runner::{self, SocketsOp};
use super::socket::{Socket, encode_event_at};
use crate::rooms::{Broadcast, BroadcastFlags, Selector};

/// Targets and flags of a broadcast, and the actions on those targets.
#[derive(Debug, Clone)]
pub struct BroadcastOperator {
    ns: Namespace,
    /// Its `nsp` is the name of `ns`.
    selector: Selector,
    flags: BroadcastFlags,
    /// How long [`Self::emit_with_ack`] waits; `None`: the server's `ack_timeout`.
    ack_timeout: Option<Duration>,
}

/// Answers collected by [`BroadcastOperator::emit_with_ack`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AckResults {
    /// How many sockets were sent the event.
    pub recipients: usize,
    /// Each answer that arrived in time.
    pub acks: Vec<Payload>,
    /// Recipients that did not answer in time (or disconnected).
    pub timed_out: usize,
    /// Cluster nodes that did not answer in time (their recipients are not counted).
    pub missing_nodes: Vec<u64>,
}

/// What a cluster-wide operation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterCount {
    /// Sockets affected on every node that answered, this one included.
    pub affected: usize,
    /// Cluster nodes that did not answer in time.
    pub missing_nodes: Vec<u64>,
}

/// The sockets `fetchSockets` found.
#[derive(Debug, Clone, Default)]
pub struct FetchedSockets {
    /// Sockets connected to this node.
    pub local: Vec<Socket>,
    /// Sockets connected to other nodes.
    pub remote: Vec<RemoteSocket>,
    /// Cluster nodes that did not answer in time.
    pub missing_nodes: Vec<u64>,
}

impl BroadcastOperator {
    pub(crate) fn new(ns: Namespace) -> Self {
        let selector = Selector::namespace(ns.name());
        Self::selecting(ns, selector)
    }

    /// The operator for `selector`'s rooms and except in `ns` (whose name is `selector.nsp`).
    pub(crate) fn selecting(ns: Namespace, selector: Selector) -> Self {
        Self { ns, selector, flags: BroadcastFlags::default(), ack_timeout: None }
    }

    /// Adds a target room (a socket id targets that socket).
    pub fn to(mut self, room: impl Into<String>) -> Self {
        self.selector = std::mem::take(&mut self.selector).to(room);
        self
    }

    /// Skips sockets that are in `room`.
    pub fn except(mut self, room: impl Into<String>) -> Self {
        self.selector = std::mem::take(&mut self.selector).except(room);
        self
    }

    /// Drops the packet for clients that are behind instead of queueing it.
    pub fn volatile(mut self) -> Self {
        self.flags.volatile = true;
        self
    }

    /// How long [`Self::emit_with_ack`] waits for the acknowledgements (socket.io's
    /// `io.timeout(ms)`); without it, the server's [`super::SocketIoConfig::ack_timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// Delivers on this node only.
    pub fn local(mut self) -> Self {
        self.flags.local = true;
        self
    }

    /// The broadcast value this operator would execute for `event`. With connection state
    /// recovery, a broadcast that is not volatile gets a fresh offset as its last argument.
    pub fn build(&self, event: &str, payload: &Payload) -> Broadcast {
        let offset = if self.flags.volatile { None } else { self.ns.recovery().map(|r| r.mint()) };
        Broadcast {
            selector: self.selector.clone(),
            flags: self.flags,
            packet: encode_event_at(self.ns.name(), None, event, payload, offset),
            offset,
        }
    }

    /// Emits `event` to the targets on every node; returns the number of recipients on this
    /// node (other nodes deliver on their own).
    pub fn emit(&self, event: &str, payload: impl Into<Payload>) -> usize {
        self.emit_forwarded(event, payload).0
    }

    /// [`BroadcastOperator::emit`], also returning the cluster nodes the broadcast was
    /// forwarded to.
    pub fn emit_forwarded(&self, event: &str, payload: impl Into<Payload>) -> (usize, Vec<u64>) {
        let b = self.build(event, &payload.into());
        let recipients = self.ns.execute(&b);
        let forwarded = match self.ns.adapter() {
            Some(adapter) if !self.flags.local => adapter.forward(&b),
            _ => Vec::new(),
        };
        (recipients, forwarded)
    }

    /// The selection this operator makes, for other nodes.
    pub fn selector(&self) -> Selector {
        self.selector.clone()
    }

    /// Runs `op` on the other nodes unless this operator is local or there is no cluster.
    async fn remote(&self, op: impl FnOnce(Selector) -> RemoteOp) -> RemoteOutcome {
        match self.ns.adapter() {
            Some(adapter) if !self.flags.local => adapter.request(op(self.selector())).await,
            _ => RemoteOutcome::default(),
        }
    }

    /// Runs `op` on the targeted sockets here and, without waiting, on every other node, in
    /// order with this node's broadcasts (a join followed by a broadcast to the joined room
    /// reaches every node in that order). For fire-and-forget operations (the Redis
    /// emitter's). Returns the number of sockets affected on this node.
    pub fn run_ordered(&self, op: SocketsOp) -> usize {
        let here = op.run_local(&self.ns, &self.selector).len();
        self.send_ordered(|s| RemoteOp::Sockets(s, op));
        here
    }

    /// Like `emit`, but without waiting: other nodes apply `op` in order with this node's
    /// broadcasts. Used for fire-and-forget operations (the Redis emitter's).
    pub fn send_ordered(&self, op: impl FnOnce(Selector) -> RemoteOp) {
        if !self.flags.local
            && let Some(adapter) = self.ns.adapter()
        {
            adapter.send_ordered(op(self.selector()));
        }
    }

    /// Runs `op` on the targeted sockets here, then on every other node (unless local); returns
    /// the sockets it ran on here and what the other nodes answered.
    async fn run_everywhere(&self, op: SocketsOp) -> (Vec<Socket>, RemoteOutcome) {
        let local = op.run_local(&self.ns, &self.selector);
        let remote = self.remote(|s| RemoteOp::Sockets(s, op)).await;
        (local, remote)
    }

    /// `fetchSockets()`: the targeted sockets on every node.
    pub async fn fetch_sockets(&self) -> FetchedSockets {
        let (local, remote) = self.run_everywhere(SocketsOp::Fetch).await;
        FetchedSockets { local, remote: remote.sockets, missing_nodes: remote.missing }
    }

    /// `socketsJoin(rooms)` on every node.
    pub async fn sockets_join(&self, rooms: &[String]) -> ClusterCount {
        self.count_everywhere(SocketsOp::Join(rooms.to_vec())).await
    }

    /// `socketsLeave(rooms)` on every node.
    pub async fn sockets_leave(&self, rooms: &[String]) -> ClusterCount {
        self.count_everywhere(SocketsOp::Leave(rooms.to_vec())).await
    }

    /// `disconnectSockets(close)` on every node.
    pub async fn disconnect_sockets(&self, close: bool) -> ClusterCount {
        self.count_everywhere(SocketsOp::Disconnect { close }).await
    }

    async fn count_everywhere(&self, op: SocketsOp) -> ClusterCount {
        let (local, remote) = self.run_everywhere(op).await;
        ClusterCount { affected: local.len() + remote.affected, missing_nodes: remote.missing }
    }

    /// Emits `event` asking each recipient (on every node) for an acknowledgement, and waits
    /// until every recipient answered or the ack timeout passed ([`Self::timeout`], or the
    /// server's [`super::SocketIoConfig::ack_timeout`]). Nodes that do not answer within that
    /// plus the cluster timeout are listed in `missing_nodes`.
    pub async fn emit_with_ack(&self, event: &str, payload: impl Into<Payload>) -> AckResults {
        let timeout = self.ack_timeout.unwrap_or_else(|| self.ns.ack_timeout());
        let payload = payload.into();
        let acked = |selector| AckedBroadcast {
            selector,
            volatile: self.flags.volatile,
            event: event.to_owned(),
            payload: payload.clone(),
        };
        let (mut results, remote) = tokio::join!(
            self.emit_with_ack_here(event, payload.clone(), timeout),
            self.remote(|s| RemoteOp::EmitWithAck(acked(s), timeout))
        );
        results.recipients += remote.affected;
        results.timed_out += remote.affected.saturating_sub(remote.acks.len());
        results.acks.extend(remote.acks);
        results.missing_nodes = remote.missing;
        results
    }

    /// [`BroadcastOperator::emit_with_ack`] on this node's sockets only.
    pub async fn emit_with_ack_here(&self, event: &str, payload: Payload, timeout: Duration) -> AckResults {
        let mut waiting = Vec::new();
        let mut failed = 0;
        for socket in self.sockets() {
            match socket.send_with_ack(event, &payload) {
                Ok(rx) => waiting.push(rx),
                Err(_) => failed += 1,
            }
        }
        let recipients = waiting.len() + failed;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut acks = Vec::with_capacity(waiting.len());
        let mut timed_out = failed;
        for rx in waiting {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(p)) => acks.push(p),
                _ => timed_out += 1,
            }
        }
        AckResults { recipients, acks, timed_out, missing_nodes: Vec::new() }
    }

    /// The sockets this operator targets on this node.
    pub fn sockets(&self) -> Vec<Socket> {
        runner::select(&self.ns, &self.selector)
    }

    /// Makes every targeted socket on this node join `room`.
    pub fn join(&self, room: &str) -> usize {
        SocketsOp::Join(vec![room.to_owned()]).run_local(&self.ns, &self.selector).len()
    }

    /// Makes every targeted socket on this node leave `room`.
    pub fn leave(&self, room: &str) -> usize {
        SocketsOp::Leave(vec![room.to_owned()]).run_local(&self.ns, &self.selector).len()
    }

    /// Disconnects every targeted socket on this node from the namespace (or closes their
    /// whole connection when `close` is true).
    pub fn disconnect(&self, close: bool) -> usize {
        SocketsOp::Disconnect { close }.run_local(&self.ns, &self.selector).len()
    }
}
