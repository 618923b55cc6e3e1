//! The replicated key-value store's state machine and the backends the Redis ingress calls.
//!
//! [`KvStore`] is pure: it applies [`KvCommand`]s (which carry the proposer's clock) and serves
//! [`KvRead`]s (which carry the reader's clock), so every replica applying the same log ends in
//! the same state. [`KvBackend`] is what the Redis ingress executes `GET`/`SET`/`INCR`/... on:
//! [`LocalKv`] for a single node, the raft node (see `raft.rs`) in a cluster.

use std::future::Future;
use std::pin::Pin;

use super::message::{KvCommand, KvOp, KvRead, KvValue};

/// A boxed future answering one key-value operation.
pub type KvFuture = Pin<Box<dyn Future<Output = KvValue> + Send + 'static>>;

/// Executes key-value operations for the Redis ingress.
pub trait KvBackend: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `op` (a write goes through the log, a read is linearizable) and answers it.
    fn execute(&self, op: KvOp) -> KvFuture;
}

/// The key-value state machine.
#[derive(Debug, Default, Clone)]
pub struct KvStore {}

impl KvStore {
    /// Applies a write; the reply is what Redis would answer.
    pub fn apply(&mut self, _command: &KvCommand) -> KvValue {
        KvValue::Error("ERR not implemented".to_owned())
    }

    /// Serves a read.
    pub fn read(&self, _read: &KvRead) -> KvValue {
        KvValue::Error("ERR not implemented".to_owned())
    }
}
