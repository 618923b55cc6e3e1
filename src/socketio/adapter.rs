//! The seam between one node's Socket.IO server and the cluster.
//!
//! A node without a cluster has no adapter: every broadcast and operation is local. With one
//! (`cluster::node`), [`BroadcastOperator`](super::BroadcastOperator) forwards each non-local
//! broadcast through [`Adapter::forward`], the room registry reports rooms that gain their first
//! or lose their last member through [`Adapter::room_changed`] (what the room-interest gossip
//! spreads), and the cluster-wide operations (`fetchSockets`, `socketsJoin`, broadcast with
//! acks, ...) reach the other nodes through [`Adapter::request`] and [`Adapter::send_ordered`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;

use super::payload::Payload;
use super::recovery::{RecoveredSession, Refusal, RelayedPacket};
use super::runner::SocketsOp;
use super::socket::Socket;
use crate::rooms::{Broadcast, Selector};

/// An operation another node runs on its own sockets.
#[derive(Debug, Clone)]
pub enum RemoteOp {
    /// `socketsJoin`, `socketsLeave`, `disconnectSockets` or `fetchSockets` on the sockets the
    /// selector picks (each node runs it with [`SocketsOp::run_local`]).
    Sockets(Selector, SocketsOp),
    /// `serverSideEmit(event, ...args)` (JSON arguments only).
    ServerSideEmit {
        /// Namespace name.
        nsp: String,
        /// Event name.
        event: String,
        /// Arguments.
        args: Vec<Value>,
    },
    /// A broadcast whose recipients' acks are collected for at most `timeout`.
    EmitWithAck(AckedBroadcast, Duration),
    /// Connection state recovery: the node holding the disconnected session `pid` of `nsp`
    /// hands it over (and forgets it) with the packets a client at `offset` missed.
    Recover {
        /// Namespace name.
        nsp: String,
        /// The private id the client sent.
        pid: String,
        /// The offset the client sent (the last it received), as text.
        offset: Option<String>,
    },
}

/// A broadcast that asks each recipient for an acknowledgement, as it travels to other nodes:
/// the event and its arguments, not an encoded packet, because every recipient's packet carries
/// an ack id of its own (each node encodes it for its sockets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedBroadcast {
    /// Which sockets.
    pub selector: Selector,
    /// Dropped for clients that are behind instead of queued.
    pub volatile: bool,
    /// Event name.
    pub event: String,
    /// Arguments and binary attachments.
    pub payload: Payload,
}

/// A socket as `fetchSockets` returns it for another node (and as that node sends it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSocket {
    /// Socket id.
    pub id: String,
    /// Namespace name.
    pub nsp: String,
    /// The node it is connected to.
    pub node: u64,
    /// Its rooms (its own id room excluded).
    pub rooms: Vec<String>,
    /// The handshake details: `address`, `query` (raw string), `issued` (ms since the epoch) and
    /// `auth` (the CONNECT packet's `auth` object).
    pub handshake: Value,
    /// `socket.data` (an object; `{}` when nothing was granted on CONNECT).
    pub data: Value,
}

impl RemoteSocket {
    /// How `socket`, connected to `node`, is described to other nodes.
    pub fn of(socket: &Socket, node: u64) -> Self {
        let handshake = socket.handshake();
        let issued = handshake
            .issued
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            id: socket.id().to_owned(),
            nsp: socket.nsp().to_owned(),
            node,
            rooms: socket.rooms().into_iter().skip(1).collect(),
            handshake: serde_json::json!({
                "address": handshake.remote_addr.to_string(),
                "query": handshake.query,
                "issued": issued,
                "auth": socket.auth(),
            }),
            data: socket.data(),
        }
    }
}

/// What the other nodes answered to a [`RemoteOp`].
#[derive(Debug, Clone, Default)]
pub struct RemoteOutcome {
    /// Sockets joined, left, disconnected or reached (acks) on the nodes that answered.
    pub affected: usize,
    /// `fetchSockets` results.
    pub sockets: Vec<RemoteSocket>,
    /// Acks from clients on other nodes.
    pub acks: Vec<Payload>,
    /// Nodes that answered.
    pub answered: Vec<u64>,
    /// Nodes that did not answer in time (or failed).
    pub missing: Vec<u64>,
    /// [`RemoteOp::Recover`]: the session a node handed over, or why the node holding it
    /// refused; `None` when no node held it.
    pub recovered: Option<Result<RecoveredSession, Refusal>>,
}

/// A boxed future of a [`RemoteOutcome`].
pub type RemoteFuture = Pin<Box<dyn Future<Output = RemoteOutcome> + Send + 'static>>;

/// The cluster, as the Socket.IO server sees it.
pub trait Adapter: Send + Sync + std::fmt::Debug + 'static {
    /// Sends a broadcast built on this node (and already executed here) to the other nodes that
    /// have members in its rooms. Never waits. Returns the nodes it was queued to.
    fn forward(&self, broadcast: &Broadcast) -> Vec<u64>;

    /// Room `room` of namespace `nsp` gained its first or lost its last local member.
    fn room_changed(&self, nsp: &str, room: &str);

    /// Runs `op` on every other node and collects the answers; nodes that do not answer within
    /// the cluster timeout are listed in [`RemoteOutcome::missing`].
    fn request(&self, op: RemoteOp) -> RemoteFuture;

    /// Runs `op` on every other node without waiting for answers, in order with this node's
    /// forwarded broadcasts (a `socketsJoin` followed by a broadcast to the joined room reaches
    /// every node in that order).
    fn send_ordered(&self, op: RemoteOp);

    /// Connection state recovery: sends node `to` a broadcast for a session that moved there,
    /// in order with this node's forwarded broadcasts. Never waits.
    fn relay(&self, to: u64, packet: RelayedPacket);
}
