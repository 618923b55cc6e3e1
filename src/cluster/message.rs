//! The crate's own types for everything one node says to another.
//!
//! They mirror `proto/ioswarm/cluster/v1/*.proto`, but they are plain Rust: `Option` instead of
//! "0 means unset", enums without an `UNSPECIFIED` variant, [`Duration`] instead of milliseconds.
//! [`Envelope::encode`] and [`Envelope::decode`] (in `wire.rs`) are the only way in and out of
//! the protobuf encoding.

use std::time::Duration;

use bytes::Bytes;

use crate::engineio::{RelayRequest, RelayResponse};
use crate::resp::kv::{KvOp, KvValue};
use crate::rooms::{Broadcast, Selector};
use crate::socketio::{
    AckedBroadcast, Payload, RecoveredSession, Refusal, RelayedPacket, RemoteSocket, SessionRecord, SocketsOp,
};

/// A cluster node id (the raft node id).
pub type NodeId = u64;

/// The wire protocol version this build speaks (`Envelope.protocol_version`). Version 2: a
/// broadcast with acks travels as event and arguments, not as an encoded packet. Version 3:
/// key-value operations are forwarded to the leader in batches ([`KvRequest`]).
pub const PROTOCOL_VERSION: u32 = 3;

/// One frame between two nodes: who sent it and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The sending node.
    pub sender: NodeId,
    /// The message.
    pub message: Message,
}

/// Every kind of message a node sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First frame on a connection, both ways.
    Hello(Hello),
    /// The sender leaves the cluster.
    Goodbye(Goodbye),
    /// A broadcast forwarded from its origin.
    Broadcast(ForwardedBroadcast),
    /// Liveness and room-interest gossip.
    Gossip(Gossip),
    /// A cluster-wide operation that wants a [`Message::Reply`].
    Request(ClusterRequest),
    /// The answer to a [`Message::Request`].
    Reply(ClusterReply),
    /// An openraft RPC.
    RaftRequest(RaftPayload),
    /// The answer to a [`Message::RaftRequest`].
    RaftReply(RaftPayload),
    /// Key-value operations forwarded to the leader.
    KvRequest(KvRequest),
    /// The answer to a [`Message::KvRequest`].
    KvReply(KvReply),
    /// A Redis PUBLISH / SPUBLISH for the receiver's local subscribers.
    Publish(Publish),
    /// The sender's whole contribution to the presence counts.
    Presence(PresenceState),
    /// An Engine.IO request of a session the receiver holds, relayed by the node the client
    /// reached (its own bi stream; a WebSocket's stream then becomes its tunnel).
    RelayRequest(RelayRequest),
    /// The answer to a [`Message::RelayRequest`].
    RelayResponse(RelayResponse),
    /// Connection state recovery: a broadcast for a session that moved to the receiver.
    Relay(RelayedPacket),
}

/// What one node counts for each presence key; replaces what it sent before.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceState {
    /// One entry per key the sender counts something under.
    pub entries: Vec<PresenceEntry>,
}

/// One key of a [`PresenceState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The presence key (`users:count`, `room-users:ROOM::a`).
    pub key: String,
    /// Sockets counted on the sender.
    pub count: u64,
    /// For a `unique` key: the distinct user values among those sockets.
    pub values: Option<Vec<String>>,
}

/// A message a Redis client published on the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The channel (or shard channel).
    pub channel: Bytes,
    /// The message.
    pub message: Bytes,
    /// SPUBLISH rather than PUBLISH.
    pub shard: bool,
}

/// How a node introduces itself on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Node id; the peer checks it against the TLS certificate.
    pub node_id: NodeId,
    /// Address (host:port, UDP) other nodes dial to reach this one.
    pub advertise_addr: String,
    /// Grows every time the node process starts.
    pub incarnation: u64,
    /// The `ioswarm` version string.
    pub software_version: String,
    /// Oldest wire protocol version spoken.
    pub min_protocol_version: u32,
    /// Newest wire protocol version spoken.
    pub max_protocol_version: u32,
}

/// A graceful leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goodbye {
    /// The leaving node.
    pub node_id: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Free text for logs.
    pub reason: String,
}

/// A [`Broadcast`] on its way from the node that built it to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedBroadcast {
    /// The node that built the broadcast.
    pub origin: NodeId,
    /// Strictly increasing per origin on its ordered stream.
    pub sequence: u64,
    /// The broadcast itself.
    pub broadcast: Broadcast,
}

/// Gossip messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gossip {
    /// Changes to one origin's room interest.
    Delta(InterestDelta),
    /// The whole room interest of one origin.
    Snapshot(InterestSnapshot),
    /// What the sender knows of each origin (anti-entropy).
    Digest(Vec<DigestEntry>),
    /// The sender's view of node liveness.
    Liveness(Vec<NodeLiveness>),
}

/// Changes to one origin's room interest between two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestDelta {
    /// Whose interest changed.
    pub origin: NodeId,
    /// The origin's incarnation.
    pub incarnation: u64,
    /// The version the delta applies to.
    pub from_version: u64,
    /// The version after applying it.
    pub to_version: u64,
    /// Changes per namespace.
    pub namespaces: Vec<NamespaceDelta>,
}

/// Room interest changes in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceDelta {
    /// Namespace name.
    pub namespace: String,
    /// Rooms that gained their first local member.
    pub added: Vec<String>,
    /// Rooms that lost their last local member.
    pub removed: Vec<String>,
}

/// One origin's whole room interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterestSnapshot {
    /// Whose interest.
    pub origin: NodeId,
    /// The origin's incarnation.
    pub incarnation: u64,
    /// The version of this state.
    pub version: u64,
    /// Rooms per namespace.
    pub namespaces: Vec<NamespaceRooms>,
}

/// The rooms with local members in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRooms {
    /// Namespace name.
    pub namespace: String,
    /// Room names.
    pub rooms: Vec<String>,
}

/// The version of one origin's interest a node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestEntry {
    /// The origin.
    pub origin: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// The version held.
    pub version: u64,
}

/// Liveness state of a node, as seen by the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Answering.
    Alive,
    /// Missed probes; may refute with a higher incarnation.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left gracefully.
    Left,
}

/// One node's liveness entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLiveness {
    /// The node.
    pub node_id: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its state.
    pub state: NodeState,
    /// Its heartbeat counter.
    pub heartbeat: u64,
    /// Where to reach it.
    pub advertise_addr: String,
    /// The version of its room interest.
    pub interest_version: u64,
    /// Its connected sockets.
    pub sockets: u64,
    /// Its rooms with local members.
    pub rooms: u64,
}

/// A cluster-wide operation sent to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRequest {
    /// Unique per requester; echoed in the reply.
    pub request_id: u64,
    /// How long the requester waits (millisecond precision on the wire).
    pub timeout: Duration,
    /// What to do.
    pub op: RequestOp,
}

/// The operations of [`ClusterRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOp {
    /// `socketsJoin`, `socketsLeave`, `disconnectSockets` or `fetchSockets` (on the wire:
    /// `SocketsJoin`, `SocketsLeave`, `DisconnectSockets`, `FetchSockets`).
    Sockets {
        /// Which sockets.
        selector: Selector,
        /// What to do to them.
        op: SocketsOp,
    },
    /// `serverSideEmit(event, ...args)`.
    ServerSideEmit {
        /// Namespace name.
        namespace: String,
        /// JSON array `[event, ...args]`.
        data_json: Bytes,
        /// Whether acknowledgements are collected.
        want_ack: bool,
    },
    /// A broadcast whose acks are collected.
    BroadcastWithAck(AckedBroadcast),
    /// `PUBSUB NUMSUB` / `SHARDNUMSUB`: local subscriber counts.
    PubSubNumSub {
        /// The channels.
        channels: Vec<Bytes>,
        /// Shard channels rather than channels.
        shard: bool,
    },
    /// Connection state recovery: hand over the disconnected session `pid` of `namespace` for a
    /// client at `offset` (on the wire: `RecoverSession`).
    RecoverSession {
        /// Namespace name.
        namespace: String,
        /// The client's private id.
        pid: String,
        /// The client's offset, as text.
        offset: Option<String>,
    },
    /// Connection state recovery: keep these sessions of a draining node (`HandOffSessions`).
    HandOffSessions(Vec<SessionRecord>),
}

/// The answer to a [`ClusterRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterReply {
    /// The request's id.
    pub request_id: u64,
    /// The outcome.
    pub result: ReplyBody,
}

/// Outcomes of a [`ClusterRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// Join/leave/disconnect done; how many local sockets were affected.
    Done {
        /// Affected sockets.
        affected: u64,
    },
    /// The matching local sockets.
    FetchSockets(Vec<RemoteSocket>),
    /// One JSON value per acknowledging handler.
    ServerSideEmit(Vec<Bytes>),
    /// Acks of a broadcast with acks.
    BroadcastAck {
        /// How many local sockets were reached.
        client_count: u32,
        /// Acks received before the deadline.
        acks: Vec<ClientAck>,
    },
    /// One count per requested channel.
    Counts(Vec<u64>),
    /// The session handed over, or why not (`RecoverSessionReply`).
    RecoverSession(Result<Box<RecoveredSession>, Refusal>),
    /// The request failed on that node.
    Error {
        /// Why.
        code: RequestErrorCode,
        /// Details for logs.
        message: String,
    },
}

/// One client's ack to a broadcast with acks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAck {
    /// Who acknowledged.
    pub socket_id: String,
    /// The ack's arguments and binary attachments.
    pub payload: Payload,
}

/// Why a [`ClusterRequest`] failed on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestErrorCode {
    /// The node does not know this request kind.
    Unsupported,
    /// The request was malformed.
    Invalid,
    /// The node is shutting down.
    ShuttingDown,
    /// Anything else.
    Internal,
}

/// An openraft RPC or its answer, serialised by the raft layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftPayload {
    /// Which RPC.
    pub kind: RaftRpcKind,
    /// How `payload` is encoded.
    pub encoding: PayloadEncoding,
    /// The serialised request or `Result<response, error>`.
    pub payload: Bytes,
}

/// The openraft RPCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRpcKind {
    /// `append_entries`.
    AppendEntries,
    /// `vote`.
    Vote,
    /// `install_snapshot` (chunked).
    InstallSnapshot,
    /// `full_snapshot`.
    FullSnapshot,
    /// A membership change asked of the leader.
    Membership,
}

/// Serialisation of a [`RaftPayload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadEncoding {
    /// serde_json.
    Json,
    /// MessagePack.
    Msgpack,
}

/// Key-value operations forwarded to the raft leader in one request: the ones that reached the
/// sender while its earlier requests were on the way (wire: `KvBatchRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRequest {
    /// Echoed in the reply.
    pub request_id: u64,
    /// Writes (through the log) and linearizable reads, from different clients.
    pub ops: Vec<KvOp>,
}

/// The answer to a [`KvRequest`] (wire: `KvBatchReply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvReply {
    /// The request's id.
    pub request_id: u64,
    /// One value per operation, in order; [`KvValue::NotLeader`] for an operation the receiver
    /// did not run because it is not the leader.
    pub values: Vec<KvValue>,
}
