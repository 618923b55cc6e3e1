//! The broadcast builder: `io.of("/").to("room").except("x").volatile().emit(…)`.

use std::time::Duration;

use super::adapter::{RemoteOp, RemoteOutcome, RemoteSocket, Selector};
use super::namespace::Namespace;
use super::payload::Payload;
use super::socket::{Socket, encode_event};
use crate::rooms::{Broadcast, BroadcastFlags};

/// Targets and flags of a broadcast, and the actions on those targets.
#[derive(Debug, Clone)]
pub struct BroadcastOperator {
    ns: Namespace,
    rooms: Vec<String>,
    except: Vec<String>,
    flags: BroadcastFlags,
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
        Self::selecting(ns, Vec::new(), Vec::new())
    }

    pub(crate) fn selecting(ns: Namespace, rooms: Vec<String>, except: Vec<String>) -> Self {
        Self { ns, rooms, except, flags: BroadcastFlags::default() }
    }

    /// Adds a target room (a socket id targets that socket).
    pub fn to(mut self, room: impl Into<String>) -> Self {
        self.rooms.push(room.into());
        self
    }

    /// Skips sockets that are in `room`.
    pub fn except(mut self, room: impl Into<String>) -> Self {
        self.except.push(room.into());
        self
    }

    /// Drops the packet for clients that are behind instead of queueing it.
    pub fn volatile(mut self) -> Self {
        self.flags.volatile = true;
        self
    }

    /// Delivers on this node only.
    pub fn local(mut self) -> Self {
        self.flags.local = true;
        self
    }

    /// The broadcast value this operator would execute for `event`.
    pub fn build(&self, event: &str, payload: &Payload) -> Broadcast {
        Broadcast {
            nsp: self.ns.name().to_owned(),
            rooms: self.rooms.clone(),
            except: self.except.clone(),
            flags: self.flags,
            packet: encode_event(self.ns.name(), None, event, payload),
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
        Selector { nsp: self.ns.name().to_owned(), rooms: self.rooms.clone(), except: self.except.clone() }
    }

    /// Runs `op` on the other nodes unless this operator is local or there is no cluster.
    async fn remote(&self, op: impl FnOnce(Selector) -> RemoteOp) -> RemoteOutcome {
        match self.ns.adapter() {
            Some(adapter) if !self.flags.local => adapter.request(op(self.selector())).await,
            _ => RemoteOutcome::default(),
        }
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

    /// `fetchSockets()`: the targeted sockets on every node.
    pub async fn fetch_sockets(&self) -> FetchedSockets {
        let local = self.sockets();
        let remote = self.remote(RemoteOp::Fetch).await;
        FetchedSockets { local, remote: remote.sockets, missing_nodes: remote.missing }
    }

    /// `socketsJoin(rooms)` on every node.
    pub async fn sockets_join(&self, rooms: &[String]) -> ClusterCount {
        let local = self.sockets();
        for socket in &local {
            for room in rooms {
                socket.join(room);
            }
        }
        let remote = self.remote(|s| RemoteOp::Join(s, rooms.to_vec())).await;
        ClusterCount { affected: local.len() + remote.affected, missing_nodes: remote.missing }
    }

    /// `socketsLeave(rooms)` on every node.
    pub async fn sockets_leave(&self, rooms: &[String]) -> ClusterCount {
        let local = self.sockets();
        for socket in &local {
            for room in rooms {
                socket.leave(room);
            }
        }
        let remote = self.remote(|s| RemoteOp::Leave(s, rooms.to_vec())).await;
        ClusterCount { affected: local.len() + remote.affected, missing_nodes: remote.missing }
    }

    /// `disconnectSockets(close)` on every node.
    pub async fn disconnect_sockets(&self, close: bool) -> ClusterCount {
        let local = self.disconnect(close);
        let remote = self.remote(|s| RemoteOp::Disconnect(s, close)).await;
        ClusterCount { affected: local + remote.affected, missing_nodes: remote.missing }
    }

    /// Emits `event` asking each recipient (on every node) for an acknowledgement, and waits
    /// until every recipient answered or `timeout` passed. Nodes that do not answer within
    /// `timeout` plus the cluster timeout are listed in `missing_nodes`.
    pub async fn emit_with_ack(&self, event: &str, payload: impl Into<Payload>, timeout: Duration) -> AckResults {
        let payload = payload.into();
        let broadcast = self.build(event, &payload);
        let (mut results, remote) = tokio::join!(
            self.emit_with_ack_here(event, payload, timeout),
            self.remote(|_| RemoteOp::EmitWithAck(broadcast, timeout))
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

    /// The sockets this operator targets.
    pub fn sockets(&self) -> Vec<Socket> {
        let except = self.ns.members_of(&self.except);
        let all = if self.rooms.is_empty() {
            self.ns.sockets()
        } else {
            self.ns.members_of(&self.rooms).into_iter().filter_map(|sid| self.ns.socket(sid.as_str())).collect()
        };
        all.into_iter().filter(|s| !except.contains(&s.sid())).collect()
    }

    /// Makes every targeted socket join `room`.
    pub fn join(&self, room: &str) -> usize {
        let sockets = self.sockets();
        for s in &sockets {
            s.join(room);
        }
        sockets.len()
    }

    /// Makes every targeted socket leave `room`.
    pub fn leave(&self, room: &str) -> usize {
        let sockets = self.sockets();
        for s in &sockets {
            s.leave(room);
        }
        sockets.len()
    }

    /// Disconnects every targeted socket from the namespace (or closes their
    /// whole connection when `close` is true).
    pub fn disconnect(&self, close: bool) -> usize {
        let sockets = self.sockets();
        for s in &sockets {
            if close {
                s.close_connection();
            } else {
                s.disconnect();
            }
        }
        sockets.len()
    }
}
