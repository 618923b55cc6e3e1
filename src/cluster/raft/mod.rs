//! Cluster membership and the replicated key-value store on openraft 0.9.
//!
//! A [`RaftNode`] runs one openraft instance per ioswarm node:
//!
//! - **Storage** (`store.rs`): the vote, an fsync'd log journal and the last snapshot live in
//!   `<data_dir>/raft/`; a restarted node reloads them, so it keeps its log and never votes twice
//!   in a term. The state machine is a [`KvStore`](crate::resp::kv::KvStore) in memory,
//!   restored from the snapshot at start.
//! - **Network** (`network.rs`): openraft's RPCs travel as [`RaftPayload`]s over
//!   [`Transport::request`]; the node runtime hands every incoming [`Message::RaftRequest`] to
//!   [`RaftNode::handle_rpc`] (or [`RaftNode::handle_message`]).
//! - **Membership**: [`RaftNode::initialize`] bootstraps a one-voter cluster;
//!   [`RaftNode::join_via`] asks a member to add this node (the leader adds it as a learner, then
//!   promotes it while there are fewer than [`RaftSettings::max_voters`] voters);
//!   [`RaftNode::leave`] asks the leader to remove it (promoting a learner in its place).
//! - **Key-value**: [`RaftNode::execute`] (also [`KvBackend`]) proposes writes through the log
//!   and serves linearizable reads (read-index) on the leader; other nodes forward both to the
//!   leader in batches ([`Message::KvRequest`]), answered by [`RaftNode::handle_kv_request`];
//!   the writes that reach the leader while an entry is being committed share the next entry
//!   (`batch.rs`).

mod batch;
mod network;
mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError as OpenraftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, ChangeMembers, Config, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use parking_lot::Mutex;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::batch::{Attempt, BatchLimits, ForwardLink, Forwarded, WriteOutcome, forward_batches, propose_batches};
use self::network::{Background, Network, decode_payload, encode_payload, ensure_peer};
pub use self::store::StoreError;
use self::store::{LogStore, SmShared, StateMachineStore};
use super::message::{KvReply, KvRequest, Message, NodeId, RaftPayload, RaftRpcKind};
use super::transport::Transport;
use super::wire::{decode_kv_command, decode_kv_value, encode_kv_command, encode_kv_value};
use crate::resp::kv::{KvBackend, KvCommand, KvFuture, KvLimits, KvOp, KvValue};

openraft::declare_raft_types!(
    /// The openraft types of ioswarm's cluster.
    pub(crate) TypeConfig:
        D = LogCommand,
        R = LogReply,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// Redis' answer when no leader can be reached.
pub const CLUSTER_DOWN: &str = "CLUSTERDOWN The cluster is down";

/// Key-value writes as one raft log entry carries them: the writes that reached the leader
/// while the previous entry was being committed (group commit: one entry, one fsync per node,
/// one round of replication for all of them; see `batch.rs`), each the protobuf encoding of a
/// [`KvCommand`] (see `wire.rs`) as a byte string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogCommand(pub(crate) Vec<KvCommand>);

/// The state machine's answer to one log entry: one reply per write, in order, or nothing for
/// blank and membership entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogReply(pub(crate) Option<Vec<KvValue>>);

/// Bytes that serialise as a byte string (MessagePack `bin`) and read back from a byte string or
/// a sequence of numbers (JSON).
struct ProtoBytes(Vec<u8>);

impl Serialize for ProtoBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProtoBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(byte) = seq.next_element::<u8>()? {
                    out.push(byte);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_byte_buf(BytesVisitor).map(ProtoBytes)
    }
}

impl Serialize for LogCommand {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|command| ProtoBytes(encode_kv_command(command))))
    }
}

impl<'de> Deserialize<'de> for LogCommand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<ProtoBytes>::deserialize(deserializer)?;
        items
            .iter()
            .map(|bytes| decode_kv_command(&bytes.0))
            .collect::<Result<Vec<_>, _>>()
            .map(LogCommand)
            .map_err(de::Error::custom)
    }
}

impl Serialize for LogReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0
            .as_ref()
            .map(|values| values.iter().map(|value| ProtoBytes(encode_kv_value(value))).collect::<Vec<_>>())
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LogReply {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Option::<Vec<ProtoBytes>>::deserialize(deserializer)? {
            Some(items) => items
                .iter()
                .map(|bytes| decode_kv_value(&bytes.0))
                .collect::<Result<Vec<_>, _>>()
                .map(|values| LogReply(Some(values)))
                .map_err(de::Error::custom),
            None => Ok(LogReply(None)),
        }
    }
}

/// Raft settings. [`RaftSettings::new`] fills in defaults; [`RaftSettings::validate`] checks.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// This node's id (non-zero; the transport's node id).
    pub node_id: NodeId,
    /// Address other nodes dial to reach this one (`host:port`, UDP), stored in the membership.
    pub advertise: String,
    /// Directory holding the raft state (in its `raft/` subdirectory).
    pub data_dir: PathBuf,
    /// Most voters; nodes that join beyond that stay learners (5).
    pub max_voters: usize,
    /// Leader heartbeat interval (100 ms).
    pub heartbeat_interval: Duration,
    /// Shortest election timeout (300 ms).
    pub election_timeout_min: Duration,
    /// Longest election timeout (600 ms).
    pub election_timeout_max: Duration,
    /// A snapshot is built after this many log entries since the last one (5000).
    pub snapshot_every_logs: u64,
    /// Entries kept in the log behind the last snapshot, for followers that lag (1000).
    pub logs_kept_after_snapshot: u64,
    /// Most entries in one AppendEntries RPC (256).
    pub max_payload_entries: u64,
    /// Deadline of one snapshot chunk RPC and of forwarding one request (2 s).
    pub rpc_timeout: Duration,
    /// Deadline of one key-value operation, including waiting for a leader and retries (3 s).
    pub request_timeout: Duration,
    /// Deadline of [`RaftNode::join_via`] and [`RaftNode::leave`] (10 s).
    pub membership_timeout: Duration,
    /// Bounds of the key-value store.
    pub kv_limits: KvLimits,
    /// Most key-value operations in one log entry and in one request forwarded to the leader
    /// (256).
    pub max_batch: usize,
    /// Most requests of key-value operations forwarded to the leader and not yet answered (64);
    /// further operations wait and go together in the next request.
    pub forwards_in_flight: usize,
}

impl RaftSettings {
    /// Defaults for node `node_id` reachable at `advertise`, keeping its state in `data_dir`.
    pub fn new(node_id: NodeId, advertise: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            advertise: advertise.into(),
            data_dir: data_dir.into(),
            max_voters: 5,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            snapshot_every_logs: 5000,
            logs_kept_after_snapshot: 1000,
            max_payload_entries: 256,
            rpc_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(3),
            membership_timeout: Duration::from_secs(10),
            kv_limits: KvLimits::default(),
            max_batch: 256,
            forwards_in_flight: 64,
        }
    }

    /// Checks the settings once, before starting.
    pub fn validate(&self) -> Result<(), RaftError> {
        let invalid = |field: &'static str, reason: &str| Err(RaftError::Config { field, reason: reason.to_owned() });
        if self.node_id == 0 {
            return invalid("node_id", "must not be 0");
        }
        let port_ok =
            self.advertise.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return invalid("advertise", "must be host:port");
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if self.max_voters == 0 {
            return invalid("max_voters", "must be at least 1");
        }
        if self.heartbeat_interval < Duration::from_millis(1) {
            return invalid("heartbeat_interval", "must be at least 1 ms");
        }
        if self.election_timeout_min <= self.heartbeat_interval {
            return invalid("election_timeout_min", "must exceed heartbeat_interval");
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return invalid("election_timeout_max", "must exceed election_timeout_min");
        }
        if self.snapshot_every_logs == 0 || self.max_payload_entries == 0 {
            return invalid("snapshot_every_logs", "snapshot_every_logs and max_payload_entries must be positive");
        }
        if self.max_batch == 0 {
            return invalid("max_batch", "must be at least 1");
        }
        if self.forwards_in_flight == 0 {
            return invalid("forwards_in_flight", "must be at least 1");
        }
        if self.rpc_timeout.is_zero() || self.request_timeout.is_zero() || self.membership_timeout.is_zero() {
            return invalid("rpc_timeout", "rpc_timeout, request_timeout and membership_timeout must be positive");
        }
        Ok(())
    }

    fn openraft_config(&self) -> Result<Config, RaftError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: "ioswarm".into(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            install_snapshot_timeout: millis(self.rpc_timeout),
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_logs),
            snapshot_max_chunk_size: 1024 * 1024,
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            ..Config::default()
        };
        config.validate().map_err(|e| RaftError::Config { field: "openraft", reason: e.to_string() })
    }
}

/// Raft node failures.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// A setting is out of range (the node does not start).
    #[error("invalid raft setting {field}: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The raft state in the data directory could not be read or written (the node does not
    /// start).
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// openraft stopped or refused to start (a storage failure, a panic); the node must stop.
    #[error("raft stopped: {0}")]
    Fatal(String),
    /// The leader refused a membership change.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// No leader answered before the deadline.
    #[error("{what} timed out: {last_error}")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// The last failure seen.
        last_error: String,
    },
    /// The raft node is shut down.
    #[error("the raft node is shut down")]
    Shutdown,
}

/// A membership change asked of the leader (RPC kind `Membership`).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum MembershipRequest {
    /// Add the sender (as a learner, then a voter while there is room).
    Join { node_id: NodeId, addr: String },
    /// Remove a node, promoting a learner in its place when it was a voter.
    Remove { node_id: NodeId },
}

/// The answer to a [`MembershipRequest`] (the whole reply payload).
#[derive(Debug, Clone, Serialize, Deserialize)]
enum MembershipReply {
    /// Committed (or nothing to do).
    Done,
    /// This node is not the leader; retry at the leader when known.
    NotLeader { leader: Option<(NodeId, String)> },
    /// The leader refused.
    Refused(String),
}

/// What [`RaftNode::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node.
    pub node_id: NodeId,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub state: &'static str,
    /// Voter ids (both configurations during a joint change).
    pub voters: Vec<NodeId>,
    /// Learner ids.
    pub learners: Vec<NodeId>,
    /// Every member and its address.
    pub members: Vec<(NodeId, String)>,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last applied entry.
    pub last_applied: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot_index: Option<u64>,
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// One node's raft instance. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    settings: RaftSettings,
    raft: Raft<TypeConfig>,
    transport: Transport,
    sm: Arc<SmShared>,
    /// Whether the data directory held raft state at start.
    had_state: bool,
    /// Serialises membership changes made by this node as leader.
    membership: tokio::sync::Mutex<()>,
    background: Background,
    journal: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Writes waiting for the next log entry (`batch::propose_batches`).
    writes: tokio::sync::mpsc::Sender<batch::PendingWrites>,
    /// Operations waiting to be forwarded to the leader (`batch::forward_batches`).
    forwards: tokio::sync::mpsc::Sender<Forwarded>,
    /// What an operation sent at once by its caller needs (`RaftNode::forward`).
    forward_link: ForwardLink,
    /// The data directory's lock, released by [`RaftNode::shutdown`].
    lock: Mutex<Option<std::fs::File>>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode").field("node_id", &self.inner.id).finish_non_exhaustive()
    }
}

impl RaftNode {
    /// Opens (or creates) the raft state in `settings.data_dir` and starts the raft instance on
    /// `transport`. Does not join anything: see [`RaftNode::initialize`] and
    /// [`RaftNode::join_via`].
    pub async fn start(settings: RaftSettings, transport: Transport) -> Result<RaftNode, RaftError> {
        settings.validate()?;
        if settings.node_id != transport.node_id() {
            return Err(RaftError::Config { field: "node_id", reason: "differs from the transport's node id".into() });
        }
        let config = Arc::new(settings.openraft_config()?);
        let dir = settings.data_dir.join("raft");
        let limits = settings.kv_limits;
        let (lock, log_store, sm_store, had_state, journal) = tokio::task::spawn_blocking(move || {
            let lock = store::lock_dir(&dir)?;
            let (log_store, had_log, journal) = LogStore::open(&dir)?;
            let (sm_store, had_snapshot) = StateMachineStore::open(&dir, limits)?;
            Ok::<_, StoreError>((lock, log_store, sm_store, had_log || had_snapshot, journal))
        })
        .await
        .map_err(|e| RaftError::Fatal(format!("loading the raft state: {e}")))??;
        let sm = sm_store.shared();
        let background = Background { tasks: TaskTracker::new(), cancel: CancellationToken::new() };
        let network = Network { transport: transport.clone(), background: background.clone() };
        let raft = Raft::new(settings.node_id, config, network, log_store, sm_store)
            .await
            .map_err(|e| RaftError::Fatal(e.to_string()))?;
        let limits = BatchLimits { max_batch: settings.max_batch, forwards_in_flight: settings.forwards_in_flight };
        let (writes, pending) = tokio::sync::mpsc::channel(limits.queue());
        background.tasks.spawn(propose_batches(raft.clone(), pending, limits, background.cancel.clone()));
        let (forwards, queue) = tokio::sync::mpsc::channel(limits.queue());
        let link = ForwardLink {
            raft: raft.clone(),
            transport: transport.clone(),
            background: background.clone(),
            rpc_timeout: settings.rpc_timeout,
            next_request_id: Arc::new(AtomicU64::new(1)),
            slots: Arc::new(tokio::sync::Semaphore::new(limits.forwards_in_flight)),
        };
        background.tasks.spawn(forward_batches(link.clone(), queue, limits));
        let node = RaftNode {
            inner: Arc::new(Inner {
                id: settings.node_id,
                settings,
                raft,
                transport,
                sm,
                had_state,
                membership: tokio::sync::Mutex::new(()),
                background,
                journal: Mutex::new(Some(journal)),
                writes,
                forwards,
                forward_link: link,
                lock: Mutex::new(Some(lock)),
            }),
        };
        node.spawn_watcher();
        tracing::info!(node_id = node.inner.id, had_state, "raft node started");
        Ok(node)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// Bootstraps a new cluster with this node as its only voter. Does nothing (returns `false`)
    /// when this node already has raft state (a vote, a log or a snapshot) or a membership.
    pub async fn initialize(&self) -> Result<bool, RaftError> {
        let raft = &self.inner.raft;
        if self.inner.had_state || raft.is_initialized().await.map_err(|e| RaftError::Fatal(e.to_string()))? {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.inner.id, BasicNode { addr: self.inner.settings.advertise.clone() })]);
        match raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(OpenraftError::APIError(error)) => {
                tracing::info!(%error, "raft cluster not initialized: already has state");
                Ok(false)
            }
            Err(OpenraftError::Fatal(fatal)) => Err(RaftError::Fatal(fatal.to_string())),
        }
    }

    /// Joins the cluster through member `seed` (which the transport must know or learn the
    /// address of): the leader adds this node as a learner and promotes it to voter while there
    /// are fewer than `max_voters`. A node whose persisted membership already lists it at its
    /// address returns at once: it rejoins through its own raft state.
    pub async fn join_via(&self, seed: NodeId) -> Result<(), RaftError> {
        let me = self.inner.id;
        let addr = self.inner.settings.advertise.clone();
        if self.member_addr(me).as_deref() == Some(addr.as_str()) {
            return Ok(());
        }
        self.membership_call(seed, MembershipRequest::Join { node_id: me, addr }, "join").await?;
        // The leader committed the change; wait (briefly) until this node has seen it too.
        let mut metrics = self.inner.raft.metrics();
        let deadline = Instant::now() + self.inner.settings.rpc_timeout;
        loop {
            if metrics.borrow_and_update().membership_config.membership().get_node(&me).is_some() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Asks the leader to remove this node from the membership (graceful shutdown). A voter is
    /// replaced by a learner when there is one. The last voter cannot leave. Once the leader
    /// committed it, the next start of this node begins without raft state and joins afresh.
    pub async fn leave(&self) -> Result<(), RaftError> {
        self.remove_node(self.inner.id).await?;
        // The membership without this node is committed: its raft state is history.
        let dir = self.inner.settings.data_dir.join("raft");
        tokio::task::spawn_blocking(move || store::mark_left(&dir))
            .await
            .map_err(|e| RaftError::Fatal(format!("recording the leave: {e}")))??;
        Ok(())
    }

    /// Asks the leader to remove node `id` (voter or learner) from the membership.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), RaftError> {
        let first = self.leader().unwrap_or(self.inner.id);
        self.membership_call(first, MembershipRequest::Remove { node_id: id }, "leave").await
    }

    /// The current raft status (from openraft's metrics).
    pub fn status(&self) -> RaftStatus {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        RaftStatus {
            node_id: self.inner.id,
            term: m.current_term,
            leader: m.current_leader,
            state: state_name(m.state),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            members: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|id| id.index),
            snapshot_index: m.snapshot.map(|id| id.index),
        }
    }

    /// openraft's metrics; changes whenever the term, leader, state or membership change (e.g.
    /// to connect the transport to every member).
    pub fn metrics_receiver(&self) -> watch::Receiver<RaftMetrics<NodeId, BasicNode>> {
        self.inner.raft.metrics()
    }

    /// Stops the raft instance, the background tasks and the journal thread. Pending writes are
    /// flushed first. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.background.cancel.cancel();
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft core did not stop cleanly");
        }
        self.inner.background.tasks.close();
        self.inner.background.tasks.wait().await;
        let journal = self.inner.journal.lock().take();
        if let Some(journal) = journal {
            // The core dropped the log store, so the journal thread drains and ends.
            let _ = tokio::task::spawn_blocking(move || journal.join()).await;
        }
        drop(self.inner.lock.lock().take());
    }

    /// Answers one openraft RPC from `from`; the runtime replies with
    /// `Message::RaftReply(answer)`.
    pub async fn handle_rpc(&self, from: NodeId, payload: RaftPayload) -> RaftPayload {
        let raft = &self.inner.raft;
        let kind = payload.kind;
        let refused = |error: String| {
            tracing::warn!(from, ?kind, %error, "undecodable raft RPC");
            RaftPayload { kind, encoding: payload.encoding, payload: bytes::Bytes::new() }
        };
        match kind {
            RaftRpcKind::AppendEntries => match decode_payload::<AppendEntriesRequest<TypeConfig>>(&payload) {
                Ok(request) => encode_payload(kind, &raft.append_entries(request).await),
                Err(error) => refused(error),
            },
            RaftRpcKind::Vote => match decode_payload::<VoteRequest<NodeId>>(&payload) {
                Ok(request) => encode_payload(kind, &raft.vote(request).await),
                Err(error) => refused(error),
            },
            RaftRpcKind::InstallSnapshot => match decode_payload::<InstallSnapshotRequest<TypeConfig>>(&payload) {
                Ok(request) => encode_payload(kind, &raft.install_snapshot(request).await),
                Err(error) => refused(error),
            },
            RaftRpcKind::FullSnapshot => refused("full snapshots are sent in chunks (InstallSnapshot)".into()),
            RaftRpcKind::Membership => match decode_payload::<MembershipRequest>(&payload) {
                Ok(request) => encode_payload(kind, &self.handle_membership(from, request).await),
                Err(error) => refused(error),
            },
        }
    }

    /// Answers key-value operations forwarded by `from`: runs them when this node is the leader
    /// (the writes in order, likely in one log entry; one read-index round for all the reads),
    /// answering [`KvValue::NotLeader`] for each one it did not run so the sender retries it at
    /// the leader.
    pub async fn handle_kv_request(&self, from: NodeId, request: KvRequest) -> KvReply {
        let deadline = Instant::now() + self.inner.settings.request_timeout;
        let mut attempts: Vec<Option<Attempt>> = vec![None; request.ops.len()];
        // The writes go into one log entry together, so the reply waits for one commit.
        let (positions, commands): (Vec<usize>, Vec<KvCommand>) = request
            .ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op {
                KvOp::Write(command) => Some((i, command.clone())),
                KvOp::Read(_) => None,
            })
            .unzip();
        let proposed = if commands.is_empty() { None } else { Some(self.propose(commands, deadline).await) };
        if request.ops.iter().any(|op| matches!(op, KvOp::Read(_))) {
            let index = self.read_index(deadline).await;
            for (attempt, op) in attempts.iter_mut().zip(&request.ops) {
                if let KvOp::Read(read) = op {
                    *attempt = Some(match &index {
                        Ok(()) => Attempt::Done(self.inner.sm.read(read)),
                        Err(attempt) => attempt.clone(),
                    });
                }
            }
        }
        match proposed {
            Some(Ok(outcomes)) => {
                for (i, attempt) in positions.iter().zip(write_attempts(outcomes, positions.len(), deadline).await) {
                    attempts[*i] = Some(attempt);
                }
            }
            Some(Err(attempt)) => {
                for i in &positions {
                    attempts[*i] = Some(attempt.clone());
                }
            }
            None => {}
        }
        let values = attempts
            .into_iter()
            .map(|attempt| match attempt.unwrap_or(Attempt::Retry(None)) {
                Attempt::Done(value) => value,
                Attempt::Retry(leader) => {
                    let leader = leader.or_else(|| self.leader()).filter(|&l| l != self.inner.id);
                    tracing::debug!(
                        from,
                        ?leader,
                        "forwarded key-value operation reached a node that is not the leader"
                    );
                    KvValue::NotLeader {
                        leader_id: leader,
                        leader_addr: leader.and_then(|l| self.member_addr(l)).unwrap_or_default(),
                    }
                }
            })
            .collect();
        KvReply { request_id: request.request_id, values }
    }

    /// The reply to an incoming request this node handles ([`Message::RaftRequest`],
    /// [`Message::KvRequest`]); `None` for any other message.
    pub async fn handle_message(&self, from: NodeId, message: Message) -> Option<Message> {
        match message {
            Message::RaftRequest(payload) => Some(Message::RaftReply(self.handle_rpc(from, payload).await)),
            Message::KvRequest(request) => Some(Message::KvReply(self.handle_kv_request(from, request).await)),
            _ => None,
        }
    }

    /// Runs a key-value operation: on the leader, a write goes through the log and a read waits
    /// for a read-index round; elsewhere both are forwarded to the leader. Waits for a leader and
    /// retries at a new one within `request_timeout`; answers [`CLUSTER_DOWN`] when none could
    /// be reached.
    pub async fn execute(&self, op: KvOp) -> KvValue {
        let write = matches!(op, KvOp::Write(_));
        ::metrics::counter!(crate::metrics::KV_COMMANDS, "kind" => if write { "write" } else { "read" }).increment(1);
        let deadline = Instant::now() + self.inner.settings.request_timeout;
        let mut hint: Option<NodeId> = None;
        loop {
            let leader = match hint.take() {
                Some(leader) => leader,
                None => match self.wait_leader(deadline).await {
                    Some(leader) => leader,
                    None => break,
                },
            };
            let attempt = if leader == self.inner.id {
                self.execute_local(op.clone(), deadline).await
            } else {
                self.forward(leader, &op, deadline).await
            };
            match attempt {
                Attempt::Done(value) => return value,
                Attempt::Retry(next) => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    hint = next.filter(|&n| n != leader);
                    if hint.is_none() {
                        // Give the election or the link a moment before asking again.
                        self.wait_leader_change(
                            leader,
                            deadline.min(Instant::now() + self.inner.settings.heartbeat_interval * 2),
                        )
                        .await;
                    }
                }
            }
        }
        KvValue::Error(CLUSTER_DOWN.to_owned())
    }

    // ---- internals ----------------------------------------------------------------------

    fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// The address of member `id` in the current membership.
    fn member_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().get_node(&id).map(|node| node.addr.clone())
    }

    /// Waits until a leader is known (or the deadline passes).
    async fn wait_leader(&self, deadline: Instant) -> Option<NodeId> {
        let mut metrics = self.inner.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.state == ServerState::Shutdown {
                    return None;
                }
                if let Some(leader) = m.current_leader {
                    return Some(leader);
                }
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Waits until the known leader is not `leader` any more, or `until`.
    async fn wait_leader_change(&self, leader: NodeId, until: Instant) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader != Some(leader) {
                return;
            }
            match tokio::time::timeout_at(until, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// Runs `op` on this node as the leader.
    async fn execute_local(&self, op: KvOp, deadline: Instant) -> Attempt {
        match op {
            KvOp::Write(command) => match self.propose(vec![command], deadline).await {
                Ok(outcomes) => write_attempts(outcomes, 1, deadline).await.pop().unwrap_or(Attempt::Retry(None)),
                Err(attempt) => attempt,
            },
            KvOp::Read(read) => match self.read_index(deadline).await {
                Ok(()) => Attempt::Done(self.inner.sm.read(&read)),
                Err(attempt) => attempt,
            },
        }
    }

    /// Queues writes for the next log entry (all in the same one); the receiver gets their
    /// outcomes.
    async fn propose(
        &self,
        commands: Vec<KvCommand>,
        deadline: Instant,
    ) -> Result<tokio::sync::oneshot::Receiver<Vec<WriteOutcome>>, Attempt> {
        let (done, outcomes) = tokio::sync::oneshot::channel();
        let group = batch::PendingWrites { commands, done };
        match tokio::time::timeout_at(deadline, self.inner.writes.send(group)).await {
            Ok(Ok(())) => Ok(outcomes),
            // Not queued: never proposed.
            _ => Err(Attempt::Done(KvValue::Error(CLUSTER_DOWN.to_owned()))),
        }
    }

    /// Waits until a read now is linearizable on this node (a read-index round as the leader
    /// and the state machine caught up with it).
    async fn read_index(&self, deadline: Instant) -> Result<(), Attempt> {
        loop {
            match tokio::time::timeout_at(deadline, self.inner.raft.ensure_linearizable()).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(OpenraftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                    return Err(Attempt::Retry(forward.leader_id));
                }
                Ok(Err(OpenraftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                    tokio::time::sleep(self.inner.settings.heartbeat_interval).await;
                    if Instant::now() >= deadline {
                        return Err(Attempt::Done(KvValue::Error(CLUSTER_DOWN.to_owned())));
                    }
                }
                Ok(Err(OpenraftError::Fatal(fatal))) => {
                    return Err(Attempt::Done(KvValue::Error(format!("ERR raft stopped: {fatal}"))));
                }
                Err(_) => return Err(Attempt::Done(KvValue::Error(CLUSTER_DOWN.to_owned()))),
            }
        }
    }

    /// Sends `op` to `leader`: at once when nothing is queued and a request slot is free,
    /// otherwise with the other operations queued for it (`batch::forward_batches`). Retries
    /// only when the operation was certainly not applied.
    async fn forward(&self, leader: NodeId, op: &KvOp, deadline: Instant) -> Attempt {
        let (done, attempt) = tokio::sync::oneshot::channel();
        let forwarded = Forwarded { leader, op: op.clone(), deadline, done };
        let queue = &self.inner.forwards;
        let idle = queue.capacity() == queue.max_capacity();
        let link = &self.inner.forward_link;
        match link.slots.clone().try_acquire_owned() {
            Ok(slot) if idle => batch::send_batch(link.clone(), leader, vec![forwarded], slot).await,
            _ => {
                if !matches!(tokio::time::timeout_at(deadline, queue.send(forwarded)).await, Ok(Ok(()))) {
                    // Not queued: nothing was sent.
                    return Attempt::Retry(None);
                }
            }
        }
        let why = match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(attempt)) => return attempt,
            Ok(Err(_)) => "the node is shutting down",
            Err(_) => "timed out",
        };
        match op {
            KvOp::Read(_) => Attempt::Retry(None),
            KvOp::Write(_) => Attempt::Done(KvValue::Error(format!(
                "ERR forwarding the write to the leader failed ({why}); it may have been applied"
            ))),
        }
    }

    /// Sends `request` to `first`, following redirects to the leader, until it is done, refused
    /// or `membership_timeout` passes.
    async fn membership_call(
        &self,
        first: NodeId,
        request: MembershipRequest,
        what: &'static str,
    ) -> Result<(), RaftError> {
        let deadline = Instant::now() + self.inner.settings.membership_timeout;
        let mut target = first;
        let mut last_error = String::from("no attempt finished");
        while Instant::now() < deadline {
            if self.inner.background.cancel.is_cancelled() {
                return Err(RaftError::Shutdown);
            }
            let reply = if target == self.inner.id {
                Ok(self.handle_membership(self.inner.id, request.clone()).await)
            } else {
                let message = Message::RaftRequest(encode_payload(RaftRpcKind::Membership, &request));
                let remaining = deadline.saturating_duration_since(Instant::now());
                match self.inner.transport.request(target, &message, remaining).await {
                    Ok(Message::RaftReply(payload)) => decode_payload::<MembershipReply>(&payload),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(error) => Err(error.to_string()),
                }
            };
            match reply {
                Ok(MembershipReply::Done) => return Ok(()),
                Ok(MembershipReply::Refused(reason)) => return Err(RaftError::Membership(reason)),
                Ok(MembershipReply::NotLeader { leader: Some((leader, addr)) }) if leader != target => {
                    ensure_peer(&self.inner.transport, &self.inner.background, leader, &addr);
                    target = leader;
                    continue;
                }
                Ok(MembershipReply::NotLeader { .. }) => last_error = format!("node {target} knows no leader"),
                Err(error) => last_error = format!("node {target}: {error}"),
            }
            tracing::debug!(target, %last_error, what, "membership change not done yet; retrying");
            tokio::time::sleep(self.inner.settings.heartbeat_interval * 2).await;
            // Prefer the leader this node knows of, if any.
            if let Some(leader) = self.leader() {
                target = leader;
            }
        }
        Err(RaftError::Timeout { what, last_error })
    }

    /// Runs a membership change on this node if it is the leader.
    async fn handle_membership(&self, from: NodeId, request: MembershipRequest) -> MembershipReply {
        let me = self.inner.id;
        if self.leader() != Some(me) {
            let leader = self.leader().filter(|&l| l != me).and_then(|l| self.member_addr(l).map(|addr| (l, addr)));
            return MembershipReply::NotLeader { leader };
        }
        let _serial = self.inner.membership.lock().await;
        let result = match request {
            MembershipRequest::Join { node_id, addr } => {
                if node_id != from {
                    return MembershipReply::Refused(format!("node {from} cannot join as node {node_id}"));
                }
                if node_id == 0 {
                    return MembershipReply::Refused("node id 0 is reserved".into());
                }
                self.add_member(node_id, addr).await
            }
            MembershipRequest::Remove { node_id } => self.remove_member(node_id).await,
        };
        match result {
            Ok(()) => MembershipReply::Done,
            Err(ChangeFailure::NotLeader) => {
                let leader = self.leader().filter(|&l| l != me).and_then(|l| self.member_addr(l).map(|addr| (l, addr)));
                MembershipReply::NotLeader { leader }
            }
            Err(ChangeFailure::Refused(reason)) => MembershipReply::Refused(reason),
        }
    }

    fn membership_now(&self) -> openraft::Membership<NodeId, BasicNode> {
        self.inner.raft.metrics().borrow().membership_config.membership().clone()
    }

    /// Leader side of a join: learner first, then voter while there is room.
    async fn add_member(&self, id: NodeId, addr: String) -> Result<(), ChangeFailure> {
        let raft = &self.inner.raft;
        let membership = self.membership_now();
        ensure_peer(&self.inner.transport, &self.inner.background, id, &addr);
        match membership.get_node(&id) {
            Some(node) if node.addr != addr => {
                tracing::info!(node_id = id, old = %node.addr, new = %addr, "raft member changed its address");
                let change = ChangeMembers::SetNodes(BTreeMap::from([(id, BasicNode { addr })]));
                self.change(change, true).await?;
            }
            Some(_) => {}
            None => {
                tracing::info!(node_id = id, %addr, "adding raft learner");
                let add = raft.add_learner(id, BasicNode { addr }, false);
                match tokio::time::timeout(self.inner.settings.membership_timeout, add).await {
                    Ok(result) => check_write(result)?,
                    Err(_) => return Err(ChangeFailure::Refused(format!("adding node {id} did not commit in time"))),
                }
            }
        }
        // Promote only a learner that has the log (an empty voter would stall commits).
        let deadline = Instant::now() + self.inner.settings.membership_timeout;
        let mut metrics = self.inner.raft.metrics();
        while self.membership_now().learner_ids().any(|l| l == id) && !self.caught_up_learners(0).contains(&id) {
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(ChangeFailure::Refused(format!("node {id} is a learner but did not catch up in time")));
                }
            }
        }
        self.fill_voters().await
    }

    /// Learners whose log is within `max_payload_entries` of the leader's (lowest ids first):
    /// the ones safe to promote.
    fn caught_up_learners(&self, except: NodeId) -> Vec<NodeId> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let last = m.last_log_index.unwrap_or(0);
        let lag = self.inner.settings.max_payload_entries;
        let Some(replication) = &m.replication else { return Vec::new() };
        m.membership_config
            .membership()
            .learner_ids()
            .filter(|&id| id != except)
            .filter(|id| {
                replication.get(id).is_some_and(|matched| matched.is_some_and(|l| l.index.saturating_add(lag) >= last))
            })
            .collect()
    }

    /// Promotes caught-up learners (lowest ids first) while there are fewer than `max_voters`
    /// voters.
    async fn fill_voters(&self) -> Result<(), ChangeFailure> {
        let membership = self.membership_now();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let room = self.inner.settings.max_voters.saturating_sub(voters.len());
        let promote: BTreeSet<NodeId> = self.caught_up_learners(0).into_iter().take(room).collect();
        if promote.is_empty() {
            return Ok(());
        }
        tracing::info!(?promote, "promoting raft learners to voters");
        self.change(ChangeMembers::AddVoterIds(promote), true).await
    }

    /// Leader side of a removal.
    async fn remove_member(&self, id: NodeId) -> Result<(), ChangeFailure> {
        let membership = self.membership_now();
        if membership.get_node(&id).is_none() {
            return Ok(());
        }
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.remove(&id) {
            if voters.is_empty() {
                return Err(ChangeFailure::Refused(format!("node {id} is the last voter")));
            }
            if voters.len() < self.inner.settings.max_voters
                && let Some(&learner) = self.caught_up_learners(id).first()
            {
                voters.insert(learner);
            }
            tracing::info!(node_id = id, ?voters, "removing raft voter");
            self.change(ChangeMembers::ReplaceAllVoters(voters), false).await?;
            // A learner left behind by an interrupted earlier change goes too.
            if self.membership_now().get_node(&id).is_some() {
                self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await?;
            }
        } else {
            tracing::info!(node_id = id, "removing raft learner");
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await?;
        }
        Ok(())
    }

    /// One membership change, retried while a previous one is still in progress.
    async fn change(&self, change: ChangeMembers<NodeId, BasicNode>, retain: bool) -> Result<(), ChangeFailure> {
        let deadline = Instant::now() + self.inner.settings.membership_timeout;
        loop {
            let result =
                tokio::time::timeout_at(deadline, self.inner.raft.change_membership(change.clone(), retain)).await;
            match result {
                Ok(Err(OpenraftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                )))) if Instant::now() < deadline => {
                    tokio::time::sleep(self.inner.settings.heartbeat_interval).await;
                }
                Ok(result) => return check_write(result),
                Err(_) => return Err(ChangeFailure::Refused("the membership change did not commit in time".into())),
            }
        }
    }

    /// Keeps the raft gauges current.
    fn spawn_watcher(&self) {
        let mut metrics = self.inner.raft.metrics();
        let cancel = self.inner.background.cancel.clone();
        let id = self.inner.id;
        self.inner.background.tasks.spawn(async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let membership = m.membership_config.membership();
                    ::metrics::gauge!(crate::metrics::RAFT_TERM).set(m.current_term as f64);
                    ::metrics::gauge!(crate::metrics::RAFT_LEADER_ID).set(m.current_leader.unwrap_or(0) as f64);
                    ::metrics::gauge!(crate::metrics::RAFT_IS_LEADER).set(if m.current_leader == Some(id) {
                        1.0
                    } else {
                        0.0
                    });
                    ::metrics::gauge!(crate::metrics::RAFT_VOTERS).set(membership.voter_ids().count() as f64);
                    ::metrics::gauge!(crate::metrics::RAFT_LEARNERS).set(membership.learner_ids().count() as f64);
                }
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { break },
                    () = cancel.cancelled() => break,
                }
            }
        });
    }
}

/// Why a membership change did not happen.
enum ChangeFailure {
    /// This node lost leadership.
    NotLeader,
    /// openraft refused or the change timed out.
    Refused(String),
}

fn check_write<T>(
    result: Result<T, OpenraftError<NodeId, ClientWriteError<NodeId, BasicNode>>>,
) -> Result<(), ChangeFailure> {
    match result {
        Ok(_) => Ok(()),
        Err(OpenraftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(ChangeFailure::NotLeader),
        Err(error) => Err(ChangeFailure::Refused(error.to_string())),
    }
}

impl KvBackend for RaftNode {
    fn execute(&self, op: KvOp) -> KvFuture {
        let node = self.clone();
        Box::pin(async move { node.execute(op).await })
    }
}

/// Waits for the outcomes of `count` proposed writes.
async fn write_attempts(
    outcomes: tokio::sync::oneshot::Receiver<Vec<WriteOutcome>>,
    count: usize,
    deadline: Instant,
) -> Vec<Attempt> {
    let failed = |text: &str| vec![Attempt::Done(KvValue::Error(text.to_owned())); count];
    match tokio::time::timeout_at(deadline, outcomes).await {
        Ok(Ok(outcomes)) => outcomes
            .into_iter()
            .map(|outcome| match outcome {
                WriteOutcome::Applied(value) => Attempt::Done(value),
                WriteOutcome::Forward(leader) => Attempt::Retry(leader),
                WriteOutcome::Failed(error) => Attempt::Done(error),
            })
            .collect(),
        Ok(Err(_)) => failed("ERR raft stopped"),
        Err(_) => failed("ERR timed out waiting for the cluster to commit the write; it may still be applied"),
    }
}
