//! The key-value seam: what the Redis ingress' key-value commands (`cmd/kv.rs`: GET, SET, INCR,
//! EXPIRE, ...) run on.
//!
//! Owned here, by the side that uses it (as `socketio::Adapter` is owned by the Socket.IO
//! server): the ingress builds [`KvOp`]s and executes them on a [`KvBackend`]; whoever
//! replicates the store implements the trait. The cluster's raft node does, with [`KvStore`] as
//! its state machine; this module never imports the cluster.
//!
//! - `op`: the operations ([`KvOp`]: a [`KvCommand`] write or a [`KvRead`]) and the answers
//!   ([`KvValue`]).
//! - `store`: [`KvStore`], the pure state machine (the clock travels inside each operation, so
//!   every replica ends the same), [`LocalKv`], the single-node backend, Redis' error texts and
//!   [`system_unix_ms`], the clock reading the commands are stamped with.

use std::future::Future;
use std::pin::Pin;

mod op;
mod store;

pub use op::{KvCommand, KvOp, KvRead, KvReadOp, KvValue, KvWrite, SetCondition};
pub use store::{
    KvLimits, KvSnapshotError, KvStore, LocalKv, NOT_INTEGER_ERROR, OOM_ERROR, OVERFLOW_ERROR, TOO_BIG_ERROR,
    system_unix_ms,
};

/// A boxed future answering one key-value operation.
pub type KvFuture = Pin<Box<dyn Future<Output = KvValue> + Send + 'static>>;

/// Executes key-value operations for the Redis ingress.
pub trait KvBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `op` (a write goes through the log, a read is linearizable) and answers it.
    fn execute(&self, op: KvOp) -> KvFuture;
}
