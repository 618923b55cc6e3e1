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
use crate::rooms::Broadcast;

/// Which sockets an operation applies to: the same selection a broadcast makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Namespace name.
    pub nsp: String,
    /// Rooms; empty means the whole namespace.
    pub rooms: Vec<String>,
    /// Sockets in any of these rooms are skipped.
    pub except: Vec<String>,
}

/// An operation another node runs on its own sockets.
#[derive(Debug, Clone)]
pub enum RemoteOp {
    /// `socketsJoin(rooms)`.
    Join(Selector, Vec<String>),
    /// `socketsLeave(rooms)`.
    Leave(Selector, Vec<String>),
    /// `disconnectSockets(close)`.
    Disconnect(Selector, bool),
    /// `fetchSockets()`.
    Fetch(Selector),
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
    EmitWithAck(Broadcast, Duration),
}

/// A socket on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSocket {
    /// Socket id.
    pub id: String,
    /// The node it is connected to.
    pub node: u64,
    /// Its rooms (its own id room excluded).
    pub rooms: Vec<String>,
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
}
