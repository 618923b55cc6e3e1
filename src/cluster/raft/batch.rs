//! Key-value operations travel in batches:
//!
//! - **Leader** ([`propose_batches`]): the writes queued while the previous entry was being
//!   committed go into one log entry ([`LogCommand`]: one append, one fsync per node, one round
//!   of replication for all of them), at most `max_batch` of them; one entry at a time.
//!   Proposing the next entry before the previous one is applied does not pay with openraft
//!   0.9.25: its core awaits each append's fsync inside its loop (`append_to_log`) before it
//!   sends the entry to the followers or takes the next proposal, and makes every proposal
//!   queued meanwhile an entry (and an fsync) of its own. Measured (`ioswarm-bench incr`, 48
//!   connections, 1-node raft cluster): 12.5k INCR/s with one entry at a time, 8.8k with 4,
//!   2.7k with 16; on 3 nodes, proposing the next entry as soon as the previous one was on the
//!   leader's disk was no faster than one at a time. openraft 0.10 submits log IO without
//!   waiting and replicates before the leader's fsync completes.
//! - **Other nodes** ([`forward_batches`]): an operation that finds nothing queued and a request
//!   slot free goes at once, sent by its caller (no hop through another task); otherwise it is
//!   queued, and the operations queued while every slot is taken go in one [`KvRequest`] (one QUIC
//!   stream, one reply carrying a value per operation). Up to `forwards_in_flight` requests are on
//!   the way at once. Measured: a forwarder task for every operation cost about 10% of INCR/s on
//!   3 nodes (48 connections, one INCR each at a time), while a low bound that makes batches form
//!   early made the clients wait for a free request (2 slots: 20-35% fewer INCR/s).
//!
//! A batch never changes what one operation's answer means: each operation gets its own outcome.
//! An operation that certainly did not run (not proposed, or proposed and truncated; a link that
//! never sent it; a receiver that is not the leader) is retried by the caller at the leader; a
//! write whose fate is unknown (the request was sent and no answer came) is answered with an error
//! saying it may have been applied, never retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::{BasicNode, Raft};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::network::{Background, ensure_peer};
use super::{LogCommand, TypeConfig};
use crate::cluster::message::{KvReply, KvRequest, Message, NodeId};
use crate::cluster::transport::{Transport, TransportError};
use crate::resp::kv::{KvCommand, KvOp, KvValue};

/// How many operations go together and how many forwarded requests may be under way (from
/// [`super::RaftSettings`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchLimits {
    /// Most operations in one log entry and in one forwarded request.
    pub(super) max_batch: usize,
    /// Most forwarded requests unanswered.
    pub(super) forwards_in_flight: usize,
}

impl BatchLimits {
    /// Capacity of a queue feeding batches: enough for the next few batches.
    pub(super) fn queue(&self) -> usize {
        self.max_batch.saturating_mul(4).max(1)
    }
}

/// How a write proposed on this node ended.
#[derive(Debug)]
pub(super) enum WriteOutcome {
    /// Committed and applied: the reply.
    Applied(KvValue),
    /// Not applied: retry at this leader.
    Forward(Option<NodeId>),
    /// Failed (the text is the Redis error).
    Failed(KvValue),
}

/// Writes that go into the same log entry, waiting for the next one: one client's write, or the
/// writes of one forwarded request (never split, so the request's answer waits for one commit).
#[derive(Debug)]
pub(super) struct PendingWrites {
    pub(super) commands: Vec<KvCommand>,
    /// One outcome per command, in order.
    pub(super) done: oneshot::Sender<Vec<WriteOutcome>>,
}

/// How one attempt at a key-value operation ended.
#[derive(Debug, Clone)]
pub(super) enum Attempt {
    /// The answer.
    Done(KvValue),
    /// Not applied; retry at this leader (or the next known one).
    Retry(Option<NodeId>),
}

/// Proposes the queued writes, at most `limits.max_batch` in one entry (a group larger than
/// that goes alone), one entry at a time. Ends when cancelled.
pub(super) async fn propose_batches(
    raft: Raft<TypeConfig>,
    mut pending: mpsc::Receiver<PendingWrites>,
    limits: BatchLimits,
    cancel: CancellationToken,
) {
    // A group that did not fit the previous entry: it starts the next one.
    let mut carried: Option<PendingWrites> = None;
    while let Some(first) = next_or_carried(&mut carried, &mut pending, &cancel).await {
        let mut count = first.commands.len();
        let mut groups = vec![first];
        while count < limits.max_batch {
            match pending.try_recv() {
                Ok(group) if count + group.commands.len() <= limits.max_batch => {
                    count += group.commands.len();
                    groups.push(group);
                }
                Ok(group) => {
                    carried = Some(group);
                    break;
                }
                Err(_) => break,
            }
        }
        let mut commands = Vec::with_capacity(count);
        let mut waiters = Vec::with_capacity(groups.len());
        for group in groups {
            waiters.push((group.commands.len(), group.done));
            commands.extend(group.commands);
        }
        let proposed = tokio::select! {
            () = cancel.cancelled() => return,
            proposed = raft.client_write_ff(LogCommand(commands)) => proposed,
        };
        let outcome = match proposed {
            Ok(answer) => tokio::select! {
                () = cancel.cancelled() => return,
                outcome = answer => outcome.map_err(|_| "ERR raft stopped".to_owned()),
            },
            Err(fatal) => Err(format!("ERR raft stopped: {fatal}")),
        };
        answer_writes(waiters, outcome);
    }
}

type EntryResult = Result<openraft::raft::ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, BasicNode>>;

/// Hands each group of one entry the outcomes of its writes. `Err`: the raft core stopped
/// before answering (the entry may have been committed).
fn answer_writes(waiters: Vec<(usize, oneshot::Sender<Vec<WriteOutcome>>)>, outcome: Result<EntryResult, String>) {
    match outcome {
        Ok(Ok(response)) => {
            let values = response.data.0.unwrap_or_default();
            debug_assert_eq!(values.len(), waiters.iter().map(|(n, _)| n).sum::<usize>());
            let mut values = values.into_iter();
            for (n, waiter) in waiters {
                let outcomes = (0..n).map(|_| WriteOutcome::Applied(values.next().unwrap_or(KvValue::Nil))).collect();
                let _ = waiter.send(outcomes);
            }
        }
        Ok(Err(error)) => {
            let outcome = || match &error {
                // Not proposed, or proposed and then truncated: never applied.
                ClientWriteError::ForwardToLeader(forward) => WriteOutcome::Forward(forward.leader_id),
                ClientWriteError::ChangeMembershipError(e) => WriteOutcome::Failed(KvValue::Error(format!("ERR {e}"))),
            };
            for (n, waiter) in waiters {
                let _ = waiter.send((0..n).map(|_| outcome()).collect());
            }
        }
        Err(stopped) => {
            for (n, waiter) in waiters {
                let _ = waiter.send((0..n).map(|_| WriteOutcome::Failed(KvValue::Error(stopped.clone()))).collect());
            }
        }
    }
}

/// An operation waiting to be forwarded to `leader` with others.
#[derive(Debug)]
pub(super) struct Forwarded {
    pub(super) leader: NodeId,
    pub(super) op: KvOp,
    /// When the caller stops waiting.
    pub(super) deadline: Instant,
    pub(super) done: oneshot::Sender<Attempt>,
}

/// What forwarding needs of the raft node (not the node itself: its queue's sender lives there).
#[derive(Clone)]
pub(super) struct ForwardLink {
    pub(super) raft: Raft<TypeConfig>,
    pub(super) transport: Transport,
    pub(super) background: Background,
    /// Longest wait for the link to the leader.
    pub(super) rpc_timeout: Duration,
    pub(super) next_request_id: Arc<AtomicU64>,
    /// One permit per request that may be unanswered (`forwards_in_flight`).
    pub(super) slots: Arc<Semaphore>,
}

/// The first item of a batch loop's next batch: the one the previous batch could not take, else
/// the next from `queue`; `None` once cancelled or the queue is closed.
async fn next_or_carried<T>(
    carried: &mut Option<T>,
    queue: &mut mpsc::Receiver<T>,
    cancel: &CancellationToken,
) -> Option<T> {
    if let Some(first) = carried.take() {
        return Some(first);
    }
    tokio::select! {
        () = cancel.cancelled() => None,
        first = queue.recv() => first,
    }
}

/// Sends the queued operations to their leader in batches of at most `limits.max_batch`, with at
/// most `limits.forwards_in_flight` requests unanswered. Ends when cancelled.
pub(super) async fn forward_batches(link: ForwardLink, mut queue: mpsc::Receiver<Forwarded>, limits: BatchLimits) {
    let slots = link.slots.clone();
    let cancel = link.background.cancel.clone();
    // An operation for another leader than the batch being filled: it starts the next one.
    let mut carried: Option<Forwarded> = None;
    while let Some(first) = next_or_carried(&mut carried, &mut queue, &cancel).await {
        let slot = tokio::select! {
            () = cancel.cancelled() => return,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { return };
        let leader = first.leader;
        let mut batch = vec![first];
        while batch.len() < limits.max_batch {
            match queue.try_recv() {
                Ok(next) if next.leader == leader => batch.push(next),
                Ok(next) => {
                    carried = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        link.background.tasks.spawn(send_batch(link.clone(), leader, batch, slot));
    }
}

/// Sends one batch to `leader` and hands each operation its outcome.
pub(super) async fn send_batch(
    link: ForwardLink,
    leader: NodeId,
    mut batch: Vec<Forwarded>,
    _slot: OwnedSemaphorePermit,
) {
    // Callers that stopped waiting are not sent.
    batch.retain(|forwarded| !forwarded.done.is_closed());
    let Some(deadline) = batch.iter().map(|forwarded| forwarded.deadline).max() else { return };
    let transport = &link.transport;
    let addr = link.raft.metrics().borrow().membership_config.membership().get_node(&leader).map(|n| n.addr.clone());
    if let Some(addr) = addr {
        ensure_peer(transport, &link.background, leader, &addr);
    }
    let link_wait = deadline.saturating_duration_since(Instant::now()).min(link.rpc_timeout);
    if transport.wait_connected(leader, link_wait).await.is_err() {
        // Nothing was sent.
        for forwarded in batch {
            let _ = forwarded.done.send(Attempt::Retry(None));
        }
        return;
    }
    let (ops, waiters): (Vec<KvOp>, Vec<_>) = batch.into_iter().map(|f| (f.op, f.done)).unzip();
    let writes: Vec<bool> = ops.iter().map(|op| matches!(op, KvOp::Write(_))).collect();
    let count = ops.len();
    let request_id = link.next_request_id.fetch_add(1, Ordering::Relaxed);
    ::metrics::counter!(crate::metrics::KV_FORWARDED).increment(count as u64);
    let message = Message::KvRequest(KvRequest { request_id, ops });
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let reply = transport.request(leader, &message, remaining).await;
    let attempts: Vec<Attempt> = match reply {
        Ok(Message::KvReply(KvReply { values, .. })) if values.len() == count => values
            .into_iter()
            .map(|value| match value {
                KvValue::NotLeader { leader_id, .. } => Attempt::Retry(leader_id),
                value => Attempt::Done(value),
            })
            .collect(),
        Ok(_) => {
            let unexpected = Attempt::Done(KvValue::Error("ERR the leader answered with an unexpected message".into()));
            vec![unexpected; count]
        }
        Err(TransportError::UnknownPeer(_) | TransportError::Connect(_)) => vec![Attempt::Retry(None); count],
        // Sent, and no answer: a read is retried, a write may have been applied.
        Err(error) => writes
            .iter()
            .map(|&write| {
                if write {
                    Attempt::Done(KvValue::Error(format!(
                        "ERR forwarding the write to the leader failed ({error}); it may have been applied"
                    )))
                } else {
                    Attempt::Retry(None)
                }
            })
            .collect(),
    };
    for (waiter, attempt) in waiters.into_iter().zip(attempts) {
        let _ = waiter.send(attempt);
    }
}
