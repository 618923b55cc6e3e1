//! The operations the Redis ingress runs on a [`KvBackend`](super::KvBackend) and the values
//! they answer. Writes ([`KvCommand`]) carry the proposer's clock so that every replica applying
//! the same log ends in the same state; reads ([`KvRead`]) carry the reader's clock.

use bytes::Bytes;

/// Writes and reads of the key-value store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Appended to the raft log.
    Write(KvCommand),
    /// Served by the leader after a read-index round.
    Read(KvRead),
}

/// A write as it sits in the raft log; deterministic given `now_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvCommand {
    /// The leader's clock when it proposed the command.
    pub now_unix_ms: u64,
    /// The write.
    pub op: KvWrite,
}

/// The writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    /// SET / SETNX.
    Set {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
        /// NX / XX.
        condition: SetCondition,
        /// Absolute expiry (EX/PX resolved by the proposer).
        expire_at_unix_ms: Option<u64>,
        /// KEEPTTL.
        keep_ttl: bool,
        /// Reply with the old value (GET).
        get: bool,
    },
    /// DEL.
    Del(Vec<Bytes>),
    /// INCR / DECR / INCRBY / DECRBY.
    IncrBy {
        /// Key.
        key: Bytes,
        /// Signed increment.
        delta: i64,
    },
    /// EXPIRE / PEXPIRE.
    Expire {
        /// Key.
        key: Bytes,
        /// Absolute expiry; in the past deletes the key.
        expire_at_unix_ms: u64,
    },
}

/// SET conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetCondition {
    /// Plain SET.
    Always,
    /// NX / SETNX.
    IfAbsent,
    /// XX.
    IfPresent,
}

/// A linearizable read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRead {
    /// The reader's clock, for expiry.
    pub now_unix_ms: u64,
    /// The read.
    pub op: KvReadOp,
}

/// The reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvReadOp {
    /// GET.
    Get(Bytes),
    /// MGET.
    MGet(Vec<Bytes>),
    /// EXISTS.
    Exists(Vec<Bytes>),
    /// TTL.
    Ttl(Bytes),
    /// PTTL.
    Pttl(Bytes),
}

/// Redis-shaped key-value replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvValue {
    /// `+OK`.
    Ok,
    /// An integer.
    Integer(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// Nil.
    Nil,
    /// An array.
    Array(Vec<KvValue>),
    /// An error line, e.g. `ERR value is not an integer or out of range`.
    Error(String),
    /// Not the leader: retry there.
    NotLeader {
        /// The leader's node id, when known.
        leader_id: Option<u64>,
        /// Its address, when known.
        leader_addr: String,
    },
}
