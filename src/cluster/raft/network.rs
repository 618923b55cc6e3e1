//! openraft's network over the cluster transport: every RPC is one
//! [`Transport::request`] carrying a [`Message::RaftRequest`], answered by a
//! [`Message::RaftReply`] whose payload is the serialised `Result<response, RaftError>`.
//!
//! Payloads are MessagePack (with field names, so a field added later stays readable); JSON is
//! accepted on the way in. Transport failures map to what openraft expects: a peer that cannot
//! be reached is `Unreachable` (openraft backs off), a deadline is `Timeout`, a frame above the
//! transport's limit is `PayloadTooLarge` (openraft sends fewer entries), anything else is a
//! `NetworkError`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError as OpenraftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TypeConfig;
use crate::cluster::message::{Message, NodeId, PayloadEncoding, RaftPayload, RaftRpcKind};
use crate::cluster::transport::{Transport, TransportError};

/// Serialises `value` as the payload of a `kind` RPC or reply.
pub(super) fn encode_payload<T: Serialize>(kind: RaftRpcKind, value: &T) -> RaftPayload {
    // Serialising openraft's and our own plain data into a Vec does not fail; an empty payload
    // would make the receiver answer with a decode error rather than panic.
    let payload = rmp_serde::to_vec_named(value).unwrap_or_default();
    RaftPayload { kind, encoding: PayloadEncoding::Msgpack, payload: Bytes::from(payload) }
}

/// Reads a payload in either encoding.
pub(super) fn decode_payload<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, String> {
    match payload.encoding {
        PayloadEncoding::Msgpack => rmp_serde::from_slice(&payload.payload).map_err(|e| e.to_string()),
        PayloadEncoding::Json => serde_json::from_slice(&payload.payload).map_err(|e| e.to_string()),
    }
}

/// Resolves a member address (`host:port`) to a socket address.
pub(super) async fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(addr) = addr.parse() {
        return Some(addr);
    }
    tokio::net::lookup_host(addr).await.ok()?.next()
}

/// Where background work of the raft node runs (tracked, cancelled on shutdown).
#[derive(Debug, Clone)]
pub(super) struct Background {
    pub(super) tasks: TaskTracker,
    pub(super) cancel: CancellationToken,
}

/// Makes sure the transport keeps a link to `peer` at `addr`: when it does not know the peer's
/// address yet, dials it in the background (the transport keeps redialing by itself).
pub(super) fn ensure_peer(transport: &Transport, background: &Background, peer: NodeId, addr: &str) {
    if peer == transport.node_id() || background.cancel.is_cancelled() || known(transport, peer) {
        return;
    }
    let (transport, addr, cancel) = (transport.clone(), addr.to_owned(), background.cancel.clone());
    background.tasks.spawn(async move {
        let Some(socket) = resolve(&addr).await else {
            tracing::warn!(peer, %addr, "raft member address does not resolve");
            return;
        };
        tokio::select! {
            result = transport.connect(socket, peer) => {
                if let Err(error) = result {
                    tracing::debug!(peer, %addr, %error, "raft member not reachable yet; the transport keeps dialing");
                }
            }
            () = cancel.cancelled() => {}
        }
    });
}

/// Whether the transport has an address for `peer` (so it dials it by itself).
fn known(transport: &Transport, peer: NodeId) -> bool {
    transport.peers().iter().any(|p| p.node_id == peer && p.addr.is_some())
}

/// Creates one [`PeerClient`] per replication target or vote.
#[derive(Debug, Clone)]
pub(super) struct Network {
    pub(super) transport: Transport,
    pub(super) background: Background,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        ensure_peer(&self.transport, &self.background, target, &node.addr);
        PeerClient { transport: self.transport.clone(), target, node: node.clone() }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub(super) struct PeerClient {
    transport: Transport,
    target: NodeId,
    node: BasicNode,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, OpenraftError<NodeId, E>>>;

fn network_error(what: impl std::fmt::Display) -> NetworkError {
    NetworkError::new(&AnyError::error(what.to_string()))
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        kind: RaftRpcKind,
        request: &Req,
        ttl: Duration,
        entries: usize,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let message = Message::RaftRequest(encode_payload(kind, request));
        if !known(&self.transport, self.target)
            && let Some(addr) = resolve(&self.node.addr).await
        {
            // Registers the peer with its address; the link may come up after this returns.
            let _ = tokio::time::timeout(ttl / 2, self.transport.connect(addr, self.target)).await;
        }
        let reply = match self.transport.request(self.target, &message, ttl).await {
            Ok(reply) => reply,
            Err(error) => return Err(self.transport_error(error, kind, ttl, entries)),
        };
        let Message::RaftReply(reply) = reply else {
            return Err(RPCError::Network(network_error(format!(
                "node {} answered a raft RPC with another message",
                self.target
            ))));
        };
        let result: Result<Resp, OpenraftError<NodeId, E>> = decode_payload(&reply).map_err(|e| {
            RPCError::Network(network_error(format!("undecodable raft reply from node {}: {e}", self.target)))
        })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }

    fn transport_error<E: std::error::Error>(
        &self,
        error: TransportError,
        kind: RaftRpcKind,
        ttl: Duration,
        entries: usize,
    ) -> RPCError<NodeId, BasicNode, OpenraftError<NodeId, E>> {
        match error {
            TransportError::Timeout => RPCError::Timeout(Timeout {
                action: match kind {
                    RaftRpcKind::Vote => RPCTypes::Vote,
                    RaftRpcKind::InstallSnapshot | RaftRpcKind::FullSnapshot => RPCTypes::InstallSnapshot,
                    RaftRpcKind::AppendEntries | RaftRpcKind::Membership => RPCTypes::AppendEntries,
                },
                id: self.transport.node_id(),
                target: self.target,
                timeout: ttl,
            }),
            TransportError::FrameTooLarge { .. } if kind == RaftRpcKind::AppendEntries && entries > 1 => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2) as u64))
            }
            TransportError::UnknownPeer(_)
            | TransportError::SelfPeer(_)
            | TransportError::Connect(_)
            | TransportError::Connection(_)
            | TransportError::Shutdown => RPCError::Unreachable(Unreachable::new(&AnyError::error(error.to_string()))),
            other => RPCError::Network(network_error(other)),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let entries = rpc.entries.len();
        self.call(RaftRpcKind::AppendEntries, &rpc, option.hard_ttl(), entries).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RaftRpcKind::InstallSnapshot, &rpc, option.hard_ttl(), 0).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RaftRpcKind::Vote, &rpc, option.hard_ttl(), 0).await
    }

    fn backoff(&self) -> Backoff {
        // After an unreachable peer: retry soon, then every half second.
        Backoff::new(
            [100, 200, 400].into_iter().map(Duration::from_millis).chain(std::iter::repeat(Duration::from_millis(500))),
        )
    }
}
