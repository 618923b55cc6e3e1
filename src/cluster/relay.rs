//! Engine.IO requests relayed to the node that holds the session, so that a load balancer in
//! front of the cluster needs no sticky sessions (see `engineio::relay` for what the client
//! sees; this is how the bytes travel).
//!
//! - **Relaying node** ([`SessionRelay`], the `engineio::Relay` the node installs on its
//!   endpoint): each relayed request opens its own bi stream on the link to the owner (the node
//!   the session id's tag names) and sends one `RelayRequest`; a polling GET or POST waits for the
//!   one `RelayResponse`, a WebSocket for the owner's `101`, after which the stream carries the
//!   client's raw WebSocket bytes both ways (a tunnel). An owner that is not a live member or has
//!   no link up is answered at once, without waiting for a link ([`RelayError::OwnerGone`]).
//! - **Bounds**: at most `cluster_relay_max_in_flight` requests and tunnels in flight to each
//!   peer (more get [`RelayError::Busy`] at once); QUIC admits that many streams per link beyond
//!   the other requests', so relays never starve raft or cluster-wide operations. A POST body is
//!   bounded by `maxPayload` before it leaves; a GET waits at most pingInterval + pingTimeout.
//! - **Owner** ([`serve`]): runs the request on its endpoint ([`Engine::serve_relayed`] — the
//!   code a local request runs) and answers; when the relaying node drops the stream (its client
//!   went away), the parked GET is abandoned. A WebSocket the session takes runs on the tunnel
//!   like a local one ([`Engine::relayed_upgrade`]).
//!
//! [`Engine::serve_relayed`]: crate::engineio::Engine::serve_relayed
//! [`Engine::relayed_upgrade`]: crate::engineio::Engine::relayed_upgrade

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::message::{Message, NodeId};
use super::transport::{Responder, Transport};
use crate::engineio::{Relay, RelayError, RelayFuture, RelayKind, RelayRequest, RelayResponse, Tunnel, Tunnelled};
use crate::socketio::Server;

/// Whether a node is a live member (the failure detector's view).
pub(super) type Liveness = Box<dyn Fn(NodeId) -> bool + Send + Sync>;

/// The relaying side: carries requests of sessions other nodes hold to them.
pub(super) struct SessionRelay {
    transport: Transport,
    /// Most requests and tunnels in flight to one peer.
    max_in_flight: usize,
    /// How long an owner may take to take or refuse a WebSocket.
    accept_timeout: Duration,
    /// One semaphore of `max_in_flight` slots per peer relayed to (live members only).
    slots: Mutex<HashMap<NodeId, Arc<Semaphore>>>,
    live: Liveness,
}

impl std::fmt::Debug for SessionRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRelay").field("max_in_flight", &self.max_in_flight).finish_non_exhaustive()
    }
}

/// One request or tunnel in flight to a peer: its slot, and its share of the gauge.
struct InFlight {
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!(crate::metrics::CLUSTER_RELAY_IN_FLIGHT).increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::CLUSTER_RELAY_IN_FLIGHT).decrement(1.0);
    }
}

impl SessionRelay {
    /// A relay over `transport`: at most `max_in_flight` per peer (at least 1), only to nodes
    /// `live` holds alive.
    pub(super) fn new(transport: Transport, max_in_flight: usize, accept_timeout: Duration, live: Liveness) -> Self {
        Self { transport, max_in_flight: max_in_flight.max(1), accept_timeout, slots: Mutex::new(HashMap::new()), live }
    }

    /// A slot for one more request to `owner`, if it is a live peer with one free.
    fn slot(&self, owner: NodeId) -> Result<InFlight, RelayError> {
        if owner == self.transport.node_id() || !(self.live)(owner) {
            return Err(RelayError::OwnerGone);
        }
        let slots =
            self.slots.lock().entry(owner).or_insert_with(|| Arc::new(Semaphore::new(self.max_in_flight))).clone();
        slots.try_acquire_owned().map(InFlight::new).map_err(|_| RelayError::Busy)
    }
}

/// Counts one relayed request by outcome.
fn count<T>(result: &Result<T, RelayError>) {
    let label = match result {
        Ok(_) => "ok",
        Err(RelayError::OwnerGone) => "owner_gone",
        Err(RelayError::Busy) => "busy",
        Err(RelayError::Timeout) => "timeout",
    };
    metrics::counter!(crate::metrics::CLUSTER_RELAYED_REQUESTS, crate::metrics::label::RESULT => label).increment(1);
}

impl Relay for SessionRelay {
    fn forward(
        &self,
        owner: u32,
        request: RelayRequest,
        timeout: Duration,
    ) -> RelayFuture<Result<RelayResponse, RelayError>> {
        let owner = NodeId::from(owner);
        let slot = self.slot(owner);
        let transport = self.transport.clone();
        Box::pin(async move {
            let result = match slot {
                Err(err) => Err(err),
                Ok(_slot) => {
                    let request = Message::RelayRequest(request);
                    let exchange = transport.open_stream(owner, &request, true);
                    match tokio::time::timeout(timeout, exchange).await {
                        Err(_) => Err(RelayError::Timeout),
                        Ok(Ok((Message::RelayResponse(response), _, _))) => Ok(response),
                        Ok(Ok((other, _, _))) => {
                            tracing::debug!(owner, kind = ?std::mem::discriminant(&other), "unexpected relay answer");
                            Err(RelayError::OwnerGone)
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(owner, %err, "relayed request got no answer");
                            Err(RelayError::OwnerGone)
                        }
                    }
                }
            };
            count(&result);
            result
        })
    }

    fn tunnel(&self, owner: u32, request: RelayRequest) -> RelayFuture<Result<Tunnelled, RelayError>> {
        let owner = NodeId::from(owner);
        let slot = self.slot(owner);
        let transport = self.transport.clone();
        let accept_timeout = self.accept_timeout;
        Box::pin(async move {
            let result = match slot {
                Err(err) => Err(err),
                Ok(slot) => {
                    let request = Message::RelayRequest(request);
                    let offer = transport.open_stream(owner, &request, false);
                    match tokio::time::timeout(accept_timeout, offer).await {
                        Err(_) => Err(RelayError::Timeout),
                        Ok(Ok((Message::RelayResponse(response), send, recv))) if response.is_switching() => {
                            // The slot is held for the tunnel's life.
                            Ok(Tunnelled::Open(Tunnel::new(recv, send, slot)))
                        }
                        Ok(Ok((Message::RelayResponse(response), _, _))) => Ok(Tunnelled::Refused(response)),
                        Ok(Ok(_)) => Err(RelayError::OwnerGone),
                        Ok(Err(err)) => {
                            tracing::debug!(owner, %err, "relayed WebSocket got no answer");
                            Err(RelayError::OwnerGone)
                        }
                    }
                }
            };
            count(&result);
            result
        })
    }
}

/// The owner's side: answers a request another node relayed for one of this node's sessions.
pub(super) async fn serve(io: &Server, from: NodeId, request: RelayRequest, responder: Responder) {
    let kind = match request.kind {
        RelayKind::Poll => "poll",
        RelayKind::Post => "post",
        RelayKind::WebSocket => "websocket",
    };
    metrics::counter!(crate::metrics::CLUSTER_RELAY_SERVED, crate::metrics::label::KIND => kind).increment(1);
    let engine = io.engine();
    match request.kind {
        RelayKind::WebSocket => match engine.relayed_upgrade(&request).await {
            Err(response) => {
                let _ = responder.reply(&Message::RelayResponse(response)).await;
            }
            Ok(upgrade) => {
                match responder.reply_open(&Message::RelayResponse(RelayResponse::switching_protocols())).await {
                    Ok((send, recv)) => upgrade.start(Tunnel::new(recv, send, ())),
                    Err(err) => tracing::debug!(from, %err, "relayed WebSocket lost before it started"),
                }
            }
        },
        RelayKind::Poll | RelayKind::Post => {
            let abandoned = responder.abandoned();
            let response = tokio::select! {
                response = engine.serve_relayed(request) => response,
                // The relaying node gave up (its client went away): a parked GET is abandoned.
                () = abandoned => return,
            };
            if let Err(err) = responder.reply(&Message::RelayResponse(response)).await {
                tracing::debug!(from, %err, "relayed answer not sent");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::credentials::tests::cluster;
    use crate::cluster::transport::TransportConfig;

    #[tokio::test]
    async fn slots_are_bounded_per_live_peer_and_come_back() {
        let (_dir, creds) = cluster("relay-slots", &[1]);
        let (transport, _incoming) =
            Transport::bind(TransportConfig::new("127.0.0.1:0".parse().unwrap()), creds[0].clone()).unwrap();
        let relay = SessionRelay::new(transport.clone(), 1, Duration::from_secs(1), Box::new(|id| id == 2 || id == 3));
        // Dead or unknown nodes, and this node itself, are never relayed to.
        assert_eq!(relay.slot(4).err(), Some(RelayError::OwnerGone));
        assert_eq!(relay.slot(1).err(), Some(RelayError::OwnerGone));
        // One in flight per peer: the second waits for nobody, it is refused.
        let first = relay.slot(2).unwrap();
        assert_eq!(relay.slot(2).err(), Some(RelayError::Busy));
        let other_peer = relay.slot(3).unwrap();
        drop(first);
        let again = relay.slot(2).unwrap();
        drop((again, other_peer));
        // A live member whose link is down (it is being dialed, in vain) is answered at once:
        // no wait for the link to come up.
        let dialing = transport.clone();
        tokio::spawn(async move { dialing.connect("127.0.0.1:9".parse().unwrap(), 2).await });
        while transport.peers().is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(!transport.peers()[0].connected);
        let answer = relay.forward(
            2,
            RelayRequest {
                kind: RelayKind::Poll,
                sid: String::new(),
                protocol: crate::engineio::Protocol::V4,
                body: Default::default(),
            },
            Duration::from_secs(30),
        );
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), answer).await.unwrap(), Err(RelayError::OwnerGone));
        transport.shutdown(Duration::from_millis(100)).await;
    }
}
