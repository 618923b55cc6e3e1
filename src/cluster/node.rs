//! The cluster runtime of one node: it owns the transport's inbox, the gossip state and the
//! raft node, forwards broadcasts, answers other nodes' requests and runs cluster-wide
//! operations for the Socket.IO server ([`Adapter`]) and the Redis broker ([`ClusterPubSub`]).
//!
//! Tasks (all tracked, all stopped by [`ClusterNode::shutdown`]):
//! - the inbox loop: ordered messages are handled one at a time, in arrival order, so a peer's
//!   broadcasts, interest deltas and fire-and-forget operations apply in the order it sent them;
//!   requests (bi streams) are answered on their own tasks;
//! - the interest flusher: room changes reported by the registry are batched for
//!   [`FLUSH_DELAY`] and sent as one delta to every live peer;
//! - the heartbeat: every gossip interval, the liveness message, the failure detector's tick,
//!   metrics, and links to every raft member.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::gossip::{GossipConfig, GossipState, Outgoing};
use super::message::{
    ClientAck, ClusterReply, ClusterRequest, ForwardedBroadcast, Goodbye, Gossip, Message, NodeId, NodeState,
    PresenceState, Publish, ReplyBody, RequestErrorCode, RequestOp,
};
use super::raft::RaftNode;
use super::relay::SessionRelay;
use super::transport::{Incoming, Transport};
use crate::resp::{Broker, ClusterPubSub};
use crate::rooms::Broadcast;
use crate::socketio::{Adapter, BroadcastOperator, Payload, RemoteOp, RemoteOutcome, RemoteSocket, Server, SocketsOp};

/// How long room changes are batched before a delta goes out.
pub const FLUSH_DELAY: Duration = Duration::from_millis(5);

/// What the runtime needs besides its parts.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// How long cluster-wide operations wait for other nodes.
    pub timeout: Duration,
    /// Failure-detector and gossip timing.
    pub gossip: GossipConfig,
    /// Most Engine.IO requests and WebSocket tunnels relayed to one peer at a time; 0 relays
    /// none (requests of sessions held elsewhere get `400 Session ID unknown`).
    pub relay_max_in_flight: usize,
}

/// One node's cluster runtime. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: NodeId,
    transport: Transport,
    raft: RaftNode,
    io: Server,
    broker: Arc<Broker>,
    gossip: Mutex<GossipState>,
    dirty: Mutex<HashSet<(String, String)>>,
    dirty_notify: Notify,
    sequence: AtomicU64,
    next_request: AtomicU64,
    timeout: Duration,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Receives the presence states other nodes send (set by the presence service).
    presence: std::sync::OnceLock<Arc<dyn PresenceSink>>,
}

/// What receives the presence states other nodes send; implemented by the presence service.
pub trait PresenceSink: Send + Sync + std::fmt::Debug + 'static {
    /// Node `from` sent its whole presence contribution.
    fn receive(&self, from: NodeId, state: PresenceState);
}

impl ClusterNode {
    /// Starts the runtime on `transport` (whose inbox is `incoming`) and `raft`, and connects
    /// `io` and `broker` to it.
    pub fn start(
        settings: NodeSettings,
        transport: Transport,
        incoming: mpsc::Receiver<Incoming>,
        raft: RaftNode,
        io: Server,
        broker: Arc<Broker>,
    ) -> Self {
        let hello = transport.hello().clone();
        let inner = Arc::new(Inner {
            id: transport.node_id(),
            gossip: Mutex::new(GossipState::new(
                hello.node_id,
                hello.incarnation,
                hello.advertise_addr.clone(),
                settings.gossip,
            )),
            transport,
            raft,
            io: io.clone(),
            broker: broker.clone(),
            dirty: Mutex::new(HashSet::new()),
            dirty_notify: Notify::new(),
            sequence: AtomicU64::new(0),
            next_request: AtomicU64::new(1),
            timeout: settings.timeout,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            presence: std::sync::OnceLock::new(),
        });
        // Rooms that already have members (namespaces created before the cluster started).
        for ns in io.namespaces() {
            for room in ns.rooms() {
                inner.dirty.lock().insert((ns.name().to_owned(), room));
            }
        }
        inner.tasks.spawn(inbox_loop(inner.clone(), incoming));
        inner.tasks.spawn(flush_loop(inner.clone()));
        inner.tasks.spawn(heartbeat_loop(inner.clone()));
        let handle = Arc::new(Handle(inner.clone()));
        if io.set_adapter(handle.clone()).is_err() {
            tracing::warn!("the Socket.IO server already had a cluster adapter");
        }
        broker.set_cluster(handle);
        if settings.relay_max_in_flight > 0 {
            let weak = Arc::downgrade(&inner);
            let live: super::relay::Liveness =
                Box::new(move |id| weak.upgrade().is_some_and(|inner| inner.gossip.lock().is_live(id)));
            let relay =
                SessionRelay::new(inner.transport.clone(), settings.relay_max_in_flight, settings.timeout, live);
            if io.engine().set_relay(Arc::new(relay)).is_err() {
                tracing::warn!("the Engine.IO endpoint already had a session relay");
            }
        }
        Self { inner }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Routes the presence states other nodes send to `sink` (once).
    pub fn set_presence_sink(&self, sink: Arc<dyn PresenceSink>) {
        let _ = self.inner.presence.set(sink);
    }

    /// Sends this node's presence state to every live node, in order with its broadcasts.
    pub fn publish_presence(&self, state: PresenceState) {
        let peers = self.inner.live_peers();
        if !peers.is_empty() {
            self.inner.send_to(&peers, &Message::Presence(state));
        }
    }

    /// The other nodes the failure detector holds alive (or suspects, not yet dead).
    pub fn live_peers(&self) -> Vec<NodeId> {
        self.inner.live_peers()
    }

    /// The raft node.
    pub fn raft(&self) -> &RaftNode {
        &self.inner.raft
    }

    /// The transport.
    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// Whether this node published its own room changes and holds the latest room interest of
    /// every live node.
    pub fn converged(&self) -> bool {
        self.inner.dirty.lock().is_empty() && self.inner.gossip.lock().converged()
    }

    /// The state `GET /cluster` shows.
    pub fn status_json(&self) -> Value {
        let inner = &self.inner;
        let raft = inner.raft.status();
        // Converged: this node's own room changes are published, and it holds the latest interest
        // every live node announced.
        let flushed = inner.dirty.lock().is_empty();
        let (members, converged, version) = {
            let gossip = inner.gossip.lock();
            (gossip.members(), flushed && gossip.converged(), gossip.version())
        };
        let links = inner.transport.peers();
        let role = |id: NodeId| {
            if raft.voters.contains(&id) {
                "voter"
            } else if raft.learners.contains(&id) {
                "learner"
            } else {
                "none"
            }
        };
        let (sockets, rooms) = local_counts(&inner.io);
        let hello = inner.transport.hello();
        let mut list = vec![serde_json::json!({
            "node_id": inner.id,
            "addr": hello.advertise_addr,
            "role": role(inner.id),
            "liveness": "alive",
            "connected": true,
            "self": true,
            "sockets": sockets,
            "rooms": rooms,
            "interest_version": version,
        })];
        let mut ids: Vec<NodeId> = members.iter().map(|m| m.node).collect();
        for (id, _) in &raft.members {
            if *id != inner.id && !ids.contains(id) {
                ids.push(*id);
            }
        }
        ids.sort_unstable();
        for id in ids {
            let member = members.iter().find(|m| m.node == id);
            let addr = member
                .map(|m| m.addr.clone())
                .filter(|a| !a.is_empty())
                .or_else(|| raft.members.iter().find(|(m, _)| *m == id).map(|(_, a)| a.clone()))
                .unwrap_or_default();
            list.push(serde_json::json!({
                "node_id": id,
                "addr": addr,
                "role": role(id),
                "liveness": member.map_or("unknown", |m| state_name(m.state)),
                "connected": links.iter().any(|l| l.node_id == id && l.connected),
                "self": false,
                "sockets": member.map_or(0, |m| m.sockets),
                "rooms": member.map_or(0, |m| m.rooms),
                "interest_version": member.map_or(0, |m| m.version),
                "announced_interest_version": member.map_or(0, |m| m.advertised),
                "interest_rooms": member.map_or(0, |m| m.interest_rooms),
            }));
        }
        serde_json::json!({
            "node_id": inner.id,
            "incarnation": hello.incarnation,
            "converged": converged,
            "raft": {
                "term": raft.term,
                "leader": raft.leader,
                "state": raft.state,
                "voters": raft.voters,
                "learners": raft.learners,
                "last_applied": raft.last_applied,
            },
            "members": list,
        })
    }

    /// Leaves the cluster: out of the raft membership (bounded by `grace`), a goodbye to every
    /// peer, then the runtime and the transport stop.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, inner.raft.leave()).await.is_err() {
            tracing::warn!("leaving the raft membership did not finish in time");
        }
        let goodbye = Message::Goodbye(Goodbye {
            node_id: inner.id,
            incarnation: inner.transport.hello().incarnation,
            reason: "shutdown".to_owned(),
        });
        if let Ok(frame) = inner.transport.encode(&goodbye) {
            for peer in inner.transport.peers() {
                let _ = inner.transport.try_send(peer.node_id, &frame);
            }
        }
        inner.cancel.cancel();
        inner.tasks.close();
        let _ = tokio::time::timeout_at(deadline, inner.tasks.wait()).await;
        inner.raft.shutdown().await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        inner.transport.shutdown(left.max(Duration::from_millis(200))).await;
    }
}

fn state_name(state: NodeState) -> &'static str {
    match state {
        NodeState::Alive => "alive",
        NodeState::Suspect => "suspect",
        NodeState::Dead => "dead",
        NodeState::Left => "left",
    }
}

/// Connected sockets and non-empty rooms on this node.
fn local_counts(io: &Server) -> (u64, u64) {
    io.namespaces().iter().fold((0, 0), |(s, r), ns| (s + ns.socket_count() as u64, r + ns.rooms().len() as u64))
}

impl Inner {
    /// Queues `message` to each of `peers` on the ordered streams; returns how many took it.
    fn send_to(&self, peers: &[NodeId], message: &Message) -> usize {
        let frame = match self.transport.encode(message) {
            Ok(frame) => frame,
            Err(err) => {
                tracing::warn!(%err, "cluster message not sent");
                return 0;
            }
        };
        peers.iter().filter(|&&peer| self.transport.try_send(peer, &frame).is_ok()).count()
    }

    fn live_peers(&self) -> Vec<NodeId> {
        self.gossip.lock().live_peers()
    }

    /// Sends what the gossip state decided, counting deltas and snapshots.
    fn send_gossip(&self, out: Vec<Outgoing>) {
        for Outgoing { to, gossip } in out {
            match &gossip {
                Gossip::Delta(delta) => {
                    metrics::gauge!(crate::metrics::GOSSIP_INTEREST_VERSION).set(delta.to_version as f64);
                    metrics::counter!(crate::metrics::GOSSIP_DELTAS).increment(1);
                }
                Gossip::Snapshot(_) => metrics::counter!(crate::metrics::GOSSIP_SNAPSHOTS).increment(1),
                Gossip::Digest(_) | Gossip::Liveness(_) => {}
            }
            self.send_to(&to, &Message::Gossip(gossip));
        }
    }

    /// The room changes reported since the last call, each with whether the room has local
    /// members now (taken before the gossip lock: `converged` locks them in the other order).
    fn take_room_changes(&self) -> Vec<(String, String, bool)> {
        let dirty: Vec<(String, String)> = self.dirty.lock().drain().collect();
        dirty
            .into_iter()
            .map(|(nsp, room)| {
                let present = self.io.namespace(&nsp).is_some_and(|ns| ns.has_local_interest(&room));
                (nsp, room, present)
            })
            .collect()
    }

    /// Sends pending room changes as one delta to every live peer.
    fn flush_interest(&self) {
        let changes = self.take_room_changes();
        let out = {
            let mut gossip = self.gossip.lock();
            for (nsp, room, present) in &changes {
                gossip.set_local_room(nsp, room, *present);
            }
            gossip.flush()
        };
        self.send_gossip(out);
    }

    fn on_message(&self, from: NodeId, message: Message) {
        match message {
            Message::Broadcast(forwarded) => {
                metrics::counter!(crate::metrics::CLUSTER_RECEIVED_BROADCASTS).increment(1);
                if let Some(ns) = self.io.namespace(&forwarded.broadcast.selector.nsp) {
                    ns.execute_broadcast(&forwarded.broadcast);
                }
            }
            Message::Gossip(gossip) => {
                let out = self.gossip.lock().on_gossip(from, &gossip, Instant::now());
                self.send_gossip(out);
            }
            Message::Goodbye(goodbye) => {
                tracing::info!(node = goodbye.node_id, reason = %goodbye.reason, "peer left the cluster");
                self.gossip.lock().on_goodbye(goodbye.node_id, goodbye.incarnation, Instant::now());
            }
            Message::Publish(publish) => {
                if publish.shard {
                    self.broker.spublish(&publish.channel, &publish.message);
                } else {
                    self.broker.publish(&publish.channel, &publish.message);
                }
            }
            Message::Presence(state) => {
                if let Some(sink) = self.presence.get() {
                    sink.receive(from, state);
                }
            }
            // A fire-and-forget operation, in order with the sender's broadcasts.
            Message::Request(request) => {
                let _ = self.run_local_now(from, &request.op);
            }
            Message::Relay(relayed) => {
                if let Some(ns) = self.io.namespace(&relayed.nsp) {
                    ns.receive_relayed(&relayed);
                }
            }
            other => tracing::debug!(from, kind = ?std::mem::discriminant(&other), "unexpected ordered message"),
        }
    }

    /// Runs an operation that needs no waiting on this node's sockets; `None` for the ones that
    /// wait (broadcast with acks).
    fn run_local_now(&self, from: NodeId, op: &RequestOp) -> Option<ReplyBody> {
        let affected = |n: usize| Some(ReplyBody::Done { affected: n as u64 });
        match op {
            RequestOp::Sockets { selector, op } => {
                let sockets =
                    self.io.namespace(&selector.nsp).map(|ns| op.run_local(&ns, selector)).unwrap_or_default();
                match op {
                    SocketsOp::Fetch => {
                        Some(ReplyBody::FetchSockets(sockets.iter().map(|s| RemoteSocket::of(s, self.id)).collect()))
                    }
                    _ => affected(sockets.len()),
                }
            }
            RequestOp::ServerSideEmit { namespace, data_json, .. } => {
                let ran = match serde_json::from_slice::<Vec<Value>>(data_json) {
                    Ok(mut items) if !items.is_empty() => {
                        let event = match items.remove(0) {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        self.io
                            .namespace(namespace)
                            .is_some_and(|ns| ns.dispatch_server_side(&event, Payload::json(items)))
                    }
                    _ => {
                        return Some(ReplyBody::Error {
                            code: RequestErrorCode::Invalid,
                            message: "server-side emit without an event".to_owned(),
                        });
                    }
                };
                Some(ReplyBody::Done { affected: u64::from(ran) })
            }
            RequestOp::PubSubNumSub { channels, shard } => Some(ReplyBody::Counts(
                channels
                    .iter()
                    .map(|c| if *shard { self.broker.shard_numsub(c) } else { self.broker.numsub(c) } as u64)
                    .collect(),
            )),
            RequestOp::RecoverSession { namespace, pid, offset } => {
                let result = self.io.recover_for_peer(namespace, pid, offset.as_deref(), from);
                Some(ReplyBody::RecoverSession(result.map(Box::new)))
            }
            RequestOp::HandOffSessions(records) => {
                Some(ReplyBody::Done { affected: self.io.import_recovery(records.clone()) as u64 })
            }
            RequestOp::BroadcastWithAck(_) => None,
        }
    }

    /// Answers a request from another node.
    async fn answer(&self, from: NodeId, request: ClusterRequest) -> ReplyBody {
        if let Some(body) = self.run_local_now(from, &request.op) {
            return body;
        }
        let RequestOp::BroadcastWithAck(acked) = request.op else {
            return ReplyBody::Error { code: RequestErrorCode::Unsupported, message: "unknown request".to_owned() };
        };
        let Some(ns) = self.io.namespace(&acked.selector.nsp) else {
            return ReplyBody::BroadcastAck { client_count: 0, acks: Vec::new() };
        };
        let mut op = BroadcastOperator::selecting(ns, acked.selector).local();
        if acked.volatile {
            op = op.volatile();
        }
        // Answer before the requester gives up: its wait includes the link latency.
        let wait = request.timeout.saturating_sub(self.timeout.min(request.timeout / 2));
        let results = op.emit_with_ack_here(&acked.event, acked.payload, wait).await;
        ReplyBody::BroadcastAck {
            client_count: u32::try_from(results.recipients).unwrap_or(u32::MAX),
            acks: results.acks.into_iter().map(|payload| ClientAck { socket_id: String::new(), payload }).collect(),
        }
    }

    /// Sends `op` to every live peer and gathers the answers.
    async fn request_all(&self, op: RequestOp, timeout: Duration) -> (Vec<(NodeId, ReplyBody)>, Vec<NodeId>) {
        let peers = self.live_peers();
        let request = Message::Request(ClusterRequest {
            request_id: self.next_request.fetch_add(1, Ordering::Relaxed),
            timeout,
            op,
        });
        let mut calls = JoinSet::new();
        for peer in peers {
            let transport = self.transport.clone();
            let request = request.clone();
            calls.spawn(async move { (peer, transport.request(peer, &request, timeout).await) });
        }
        let mut answers = Vec::new();
        let mut missing = Vec::new();
        while let Some(joined) = calls.join_next().await {
            let Ok((peer, result)) = joined else { continue };
            match result {
                Ok(Message::Reply(ClusterReply { result: ReplyBody::Error { code, message }, .. })) => {
                    tracing::debug!(peer, ?code, %message, "cluster request failed on a peer");
                    missing.push(peer);
                }
                Ok(Message::Reply(reply)) => answers.push((peer, reply.result)),
                Ok(_) => missing.push(peer),
                Err(err) => {
                    tracing::debug!(peer, %err, "cluster request got no answer");
                    missing.push(peer);
                }
            }
        }
        metrics::counter!(crate::metrics::CLUSTER_REQUESTS, "result" => "ok").increment(answers.len() as u64);
        metrics::counter!(crate::metrics::CLUSTER_REQUESTS, "result" => "missing").increment(missing.len() as u64);
        missing.sort_unstable();
        (answers, missing)
    }

    fn widen_joined_rooms(&self, op: &RemoteOp) {
        if let RemoteOp::Sockets(selector, SocketsOp::Join(rooms)) = op {
            let mut gossip = self.gossip.lock();
            for room in rooms {
                gossip.widen(&selector.nsp, room, Instant::now());
            }
        }
    }
}

fn to_request_op(op: RemoteOp) -> (RequestOp, Option<Duration>) {
    match op {
        RemoteOp::Sockets(selector, op) => (RequestOp::Sockets { selector, op }, None),
        RemoteOp::ServerSideEmit { nsp, event, args } => {
            let mut items = Vec::with_capacity(args.len() + 1);
            items.push(Value::String(event));
            items.extend(args);
            let data_json = Bytes::from(serde_json::to_vec(&items).unwrap_or_default());
            (RequestOp::ServerSideEmit { namespace: nsp, data_json, want_ack: false }, None)
        }
        RemoteOp::EmitWithAck(acked, timeout) => (RequestOp::BroadcastWithAck(acked), Some(timeout)),
        RemoteOp::Recover { nsp, pid, offset } => (RequestOp::RecoverSession { namespace: nsp, pid, offset }, None),
    }
}

/// The runtime as the Socket.IO server and the broker hold it.
#[derive(Debug)]
struct Handle(Arc<Inner>);

impl Adapter for Handle {
    fn forward(&self, broadcast: &Broadcast) -> Vec<u64> {
        self.0.forward(broadcast)
    }

    fn room_changed(&self, nsp: &str, room: &str) {
        self.0.room_changed(nsp, room);
    }

    fn request(&self, op: RemoteOp) -> crate::socketio::adapter::RemoteFuture {
        self.0.widen_joined_rooms(&op);
        let (op, ack_timeout) = to_request_op(op);
        let timeout = self.0.timeout + ack_timeout.unwrap_or_default();
        let inner = self.0.clone();
        Box::pin(async move {
            let (answers, missing) = inner.request_all(op, timeout).await;
            outcome_of(answers, missing)
        })
    }

    fn send_ordered(&self, op: RemoteOp) {
        self.0.widen_joined_rooms(&op);
        let (op, _) = to_request_op(op);
        let peers = self.0.live_peers();
        self.0.send_to(&peers, &Message::Request(ClusterRequest { request_id: 0, timeout: Duration::ZERO, op }));
    }

    fn relay(&self, to: u64, packet: crate::socketio::RelayedPacket) {
        self.0.send_to(&[to], &Message::Relay(packet));
    }
}

impl ClusterPubSub for Handle {
    fn publish(&self, channel: &Bytes, message: &Bytes, shard: bool) {
        let peers = self.0.live_peers();
        if peers.is_empty() {
            return;
        }
        self.0
            .send_to(&peers, &Message::Publish(Publish { channel: channel.clone(), message: message.clone(), shard }));
    }

    fn numsub(&self, channels: Vec<Bytes>, shard: bool) -> crate::resp::CountsFuture {
        let inner = self.0.clone();
        Box::pin(async move {
            let mut totals = vec![0u64; channels.len()];
            let (answers, _) = inner.request_all(RequestOp::PubSubNumSub { channels, shard }, inner.timeout).await;
            for (_, body) in answers {
                if let ReplyBody::Counts(counts) = body {
                    for (total, n) in totals.iter_mut().zip(counts) {
                        *total += n;
                    }
                }
            }
            totals
        })
    }
}

/// Adds up the answers to a cluster-wide operation.
fn outcome_of(answers: Vec<(NodeId, ReplyBody)>, missing: Vec<NodeId>) -> RemoteOutcome {
    let mut outcome = RemoteOutcome { missing, ..RemoteOutcome::default() };
    for (node, body) in answers {
        outcome.answered.push(node);
        match body {
            ReplyBody::Done { affected } => outcome.affected += affected as usize,
            ReplyBody::FetchSockets(sockets) => {
                outcome.affected += sockets.len();
                outcome.sockets.extend(sockets);
            }
            ReplyBody::BroadcastAck { client_count, acks } => {
                outcome.affected += client_count as usize;
                outcome.acks.extend(acks.into_iter().map(|a| a.payload));
            }
            ReplyBody::RecoverSession(result) => super::recovery::merge(&mut outcome.recovered, result.map(|s| *s)),
            ReplyBody::ServerSideEmit(_) | ReplyBody::Counts(_) | ReplyBody::Error { .. } => {}
        }
    }
    outcome.answered.sort_unstable();
    outcome
}

impl Inner {
    fn forward(&self, broadcast: &Broadcast) -> Vec<u64> {
        let targets = self.gossip.lock().targets(&broadcast.selector.nsp, &broadcast.selector.rooms);
        if targets.is_empty() {
            return targets;
        }
        let message = Message::Broadcast(ForwardedBroadcast {
            origin: self.id,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed),
            broadcast: broadcast.clone(),
        });
        let frame = match self.transport.encode(&message) {
            Ok(frame) => frame,
            Err(err) => {
                tracing::warn!(%err, nsp = %broadcast.selector.nsp, "broadcast not forwarded");
                return Vec::new();
            }
        };
        for &peer in &targets {
            let label = peer.to_string();
            match self.transport.try_send(peer, &frame) {
                Ok(()) => {
                    metrics::counter!(crate::metrics::CLUSTER_FORWARDED_MESSAGES, "peer" => label.clone()).increment(1);
                    metrics::counter!(crate::metrics::CLUSTER_FORWARDED_BYTES, "peer" => label)
                        .increment(frame.len() as u64);
                }
                Err(err) => {
                    metrics::counter!(crate::metrics::CLUSTER_FORWARD_DROPPED, "peer" => label).increment(1);
                    tracing::debug!(peer, %err, "broadcast not forwarded");
                }
            }
        }
        targets
    }

    fn room_changed(&self, nsp: &str, room: &str) {
        let first = {
            let mut dirty = self.dirty.lock();
            dirty.insert((nsp.to_owned(), room.to_owned()));
            dirty.len() == 1
        };
        if first {
            self.dirty_notify.notify_one();
        }
    }
}

async fn inbox_loop(inner: Arc<Inner>, mut incoming: mpsc::Receiver<Incoming>) {
    loop {
        let next = tokio::select! {
            () = inner.cancel.cancelled() => return,
            next = incoming.recv() => next,
        };
        let Some(next) = next else { return };
        match next {
            Incoming::PeerUp { peer, hello } => {
                tracing::info!(peer, addr = %hello.advertise_addr, "cluster link up");
                let out =
                    inner.gossip.lock().on_link_up(peer, hello.incarnation, &hello.advertise_addr, Instant::now());
                inner.send_gossip(out);
            }
            Incoming::PeerDown { peer } => tracing::info!(peer, "cluster link down"),
            Incoming::Message { from, message } => inner.on_message(from, message),
            Incoming::Request { from, message, responder } => {
                let inner = inner.clone();
                inner.tasks.clone().spawn(async move {
                    let reply = match message {
                        Message::RelayRequest(request) => {
                            super::relay::serve(&inner.io, from, request, responder).await;
                            return;
                        }
                        Message::RaftRequest(payload) => Message::RaftReply(inner.raft.handle_rpc(from, payload).await),
                        Message::KvRequest(request) => {
                            Message::KvReply(inner.raft.handle_kv_request(from, request).await)
                        }
                        Message::Request(request) => {
                            let request_id = request.request_id;
                            Message::Reply(ClusterReply { request_id, result: inner.answer(from, request).await })
                        }
                        _ => return,
                    };
                    if let Err(err) = responder.reply(&reply).await {
                        tracing::debug!(from, %err, "reply not sent");
                    }
                });
            }
        }
    }
}

async fn flush_loop(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            () = inner.dirty_notify.notified() => {}
        }
        tokio::time::sleep(FLUSH_DELAY).await;
        inner.flush_interest();
    }
}

async fn heartbeat_loop(inner: Arc<Inner>) {
    let interval = inner.gossip.lock().config().interval;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = inner.cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let room_changes = inner.take_room_changes();
        let (sockets, _) = local_counts(&inner.io);
        // Every linked peer hears the heartbeat (a node just up included).
        let linked: Vec<NodeId> = inner.transport.peers().iter().filter(|p| p.connected).map(|p| p.node_id).collect();
        let (out, changes, members, converged) = {
            let mut gossip = inner.gossip.lock();
            for (nsp, room, present) in &room_changes {
                gossip.set_local_room(nsp, room, *present);
            }
            let (out, changes) = gossip.on_tick(Instant::now(), sockets, linked);
            (out, changes, gossip.members(), gossip.converged())
        };
        inner.send_gossip(out);
        for change in changes {
            tracing::info!(node = change.node, state = state_name(change.state), "cluster member state changed");
        }

        for state in [NodeState::Alive, NodeState::Suspect, NodeState::Dead, NodeState::Left] {
            let n = members.iter().filter(|m| m.state == state).count();
            metrics::gauge!(crate::metrics::CLUSTER_PEERS, "state" => state_name(state)).set(n as f64);
        }
        metrics::gauge!(crate::metrics::GOSSIP_CONVERGED).set(if converged { 1.0 } else { 0.0 });
        connect_members(&inner);
    }
}

/// Keeps a link to every raft member; forgets peers that left the membership.
fn connect_members(inner: &Arc<Inner>) {
    let status = inner.raft.status();
    let known = inner.transport.peers();
    for (id, addr) in &status.members {
        if *id == inner.id || known.iter().any(|p| p.node_id == *id) {
            continue;
        }
        let Ok(addr) = addr.parse() else { continue };
        let transport = inner.transport.clone();
        let id = *id;
        inner.tasks.spawn(async move {
            if let Err(err) = transport.connect(addr, id).await {
                tracing::debug!(peer = id, %err, "member not reachable yet");
            }
        });
    }
    if status.members.is_empty() {
        return;
    }
    let left: Vec<NodeId> = inner
        .gossip
        .lock()
        .members()
        .iter()
        .filter(|m| m.state == NodeState::Left && !status.members.iter().any(|(id, _)| *id == m.node))
        .map(|m| m.node)
        .collect();
    for id in left {
        inner.transport.remove_peer(id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::cluster::credentials::tests::cluster;
    use crate::cluster::raft::RaftSettings;
    use crate::cluster::transport::TransportConfig;
    use crate::socketio::SocketIoConfig;

    /// Two nodes in this process, each with its own Socket.IO server and broker.
    async fn two_nodes(label: &str) -> (crate::cluster::credentials::tests::TempDir, Vec<(ClusterNode, Server)>) {
        let (dir, creds) = cluster(label, &[1, 2]);
        let mut nodes = Vec::new();
        for credentials in creds {
            let id = credentials.node_id();
            let (transport, incoming) =
                Transport::bind(TransportConfig::new("127.0.0.1:0".parse().unwrap()), credentials).unwrap();
            let addr = transport.local_addr().unwrap().to_string();
            let raft = RaftNode::start(RaftSettings::new(id, addr, dir.0.join(format!("data{id}"))), transport.clone())
                .await
                .unwrap();
            let io = Server::new(SocketIoConfig::default());
            io.of("/");
            let settings = NodeSettings {
                timeout: Duration::from_secs(2),
                gossip: GossipConfig::default(),
                relay_max_in_flight: 16,
            };
            let node = ClusterNode::start(settings, transport, incoming, raft, io.clone(), Arc::new(Broker::new()));
            nodes.push((node, io));
        }
        assert!(nodes[0].0.raft().initialize().await.unwrap());
        let seed = nodes[0].0.transport().local_addr().unwrap();
        let id = nodes[1].0.transport().discover(seed).await.unwrap();
        assert_eq!(id, 1);
        nodes[1].0.transport().connect(seed, id).await.unwrap();
        nodes[1].0.raft().join_via(id).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while nodes.iter().any(|(n, _)| n.inner.live_peers().is_empty()) {
            assert!(tokio::time::Instant::now() < deadline, "the nodes never saw each other");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (dir, nodes)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_side_emit_runs_handlers_on_every_node_and_names_silent_ones() {
        let (_dir, nodes) = two_nodes("node-sse").await;
        let ran = Arc::new(AtomicUsize::new(0));
        for (_, io) in &nodes {
            let ran = ran.clone();
            io.of("/").on_server_side("hello", move |payload| {
                let ran = ran.clone();
                async move {
                    assert_eq!(payload.args, vec![serde_json::json!(42)]);
                    ran.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let done = nodes[0].1.of("/").server_side_emit("hello", vec![serde_json::json!(42)]).await;
        assert_eq!(done.affected, 2);
        assert!(done.missing_nodes.is_empty());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ran.load(Ordering::SeqCst) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "handlers ran {} times", ran.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Node 2 goes away without a goodbye: node 1 answers within its timeout and names it.
        nodes[1].0.inner.cancel.cancel();
        nodes[1].0.transport().shutdown(Duration::from_millis(100)).await;
        let done = nodes[0].1.of("/").server_side_emit("hello", vec![serde_json::json!(42)]).await;
        assert_eq!(done.affected, 1);
        assert_eq!(done.missing_nodes, vec![2]);
        nodes[0].0.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn room_interest_reaches_the_other_node_and_routes_broadcasts() {
        let (_dir, nodes) = two_nodes("node-interest").await;
        let (n1, _) = &nodes[0];
        let (n2, io2) = &nodes[1];
        // A namespace-wide broadcast goes to every live node; a room broadcast only where the
        // room has members.
        assert_eq!(n1.inner.gossip.lock().targets("/", &[]), vec![2]);
        assert!(n1.inner.gossip.lock().targets("/", &["r".to_owned()]).is_empty());
        // Node 2's registry reports a new room (what a socket join does).
        n2.inner.room_changed("/", "r");
        let ns2 = io2.of("/");
        assert!(ns2.rooms().is_empty(), "no socket joined: the flush finds the room empty");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(n1.inner.gossip.lock().targets("/", &["r".to_owned()]).is_empty());
        assert!(n1.converged());
        n1.shutdown(Duration::from_secs(1)).await;
        n2.shutdown(Duration::from_secs(1)).await;
    }
}
