//! Requests of sessions another node holds: what lets a cluster sit behind a load balancer
//! without sticky sessions.
//!
//! Every session id names the node that issued it ([`crate::Sid::with_tag`]: the handshake lands
//! on some node, and that node owns the session). A polling GET or POST, or a WebSocket joining
//! a session, may reach any node. When its `sid` names another node, this node does not answer
//! it: it hands it to the [`Relay`] (the cluster implements it), which carries it to the owner
//! and back.
//!
//! - A polling GET or POST travels as a [`RelayRequest`] (a POST with its body, read here and
//!   bounded by `maxPayload` as on the owner) and comes back as the owner's [`RelayResponse`]:
//!   the owner's [`Engine::serve_relayed`] runs the very code a local request runs, so the
//!   heartbeat, `maxPayload`, the errors and the order of packets are the owner's. A long-poll
//!   stays open here while it is parked there; when the client goes away, the relay drops the
//!   request and the owner's parked GET is abandoned as if its client had left.
//! - A WebSocket joining a session is answered `101` here once the owner took it
//!   ([`Engine::relayed_upgrade`]); from then on the bytes of the upgraded connection are copied
//!   as they are, both ways, through a [`Tunnel`] to the owner, which runs the WebSocket (probe,
//!   upgrade, frames, heartbeat) on its end exactly as for a local one.
//! - A request whose owner cannot be reached gets the `400 Session ID unknown` a node gives for a
//!   session it does not know, and the client reconnects; a relay at its bound (too many requests
//!   in flight to that node) gets `503`, as a node at capacity.
//!
//! Handshakes are never relayed: the node a handshake reaches opens the session and owns it.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::Connection;
use super::endpoint::{Engine, Handler};
use super::packet::{Frame, PacketType};
use super::protocol::{Framing, Protocol};
use super::response::{
    Body, ErrorCode, error_response, json_response, payload_response, payload_too_large, upgrade_response,
};
use super::session::Transport;
use super::websocket;
use crate::sid::Sid;

/// Size of each direction's copy buffer of a tunnelled WebSocket on the node that relays it
/// (two per tunnel, held for its life).
const TUNNEL_BUFFER: usize = 4096;

/// What a relayed request asks of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// A polling GET.
    Poll,
    /// A polling POST.
    Post,
    /// A WebSocket joining the session (an upgrade).
    WebSocket,
}

/// A request of a session held by another node, as it travels there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRequest {
    /// What it asks.
    pub kind: RelayKind,
    /// The session id (the query's `sid`).
    pub sid: String,
    /// The Engine.IO revision the request speaks (its `EIO`): the owner refuses one that is not
    /// its session's, as for a local request.
    pub protocol: Protocol,
    /// The body of a POST (at most `maxPayload` bytes); empty otherwise.
    pub body: Bytes,
}

/// The owner's answer to a [`RelayRequest`]: the HTTP response the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayResponse {
    /// HTTP status (`101` when the owner took a WebSocket).
    pub status: u16,
    /// Response headers, in order (CORS headers are added by the node the client reached).
    pub headers: Vec<(String, Bytes)>,
    /// Response body.
    pub body: Bytes,
}

impl RelayResponse {
    /// The owner took a WebSocket: the bytes that follow on the tunnel are the WebSocket's.
    pub fn switching_protocols() -> Self {
        Self { status: StatusCode::SWITCHING_PROTOCOLS.as_u16(), headers: Vec::new(), body: Bytes::new() }
    }

    /// Whether this is [`Self::switching_protocols`].
    pub fn is_switching(&self) -> bool {
        self.status == StatusCode::SWITCHING_PROTOCOLS.as_u16()
    }

    /// The same response as an HTTP response. Headers that are not valid HTTP are left out; a
    /// status that is not one becomes `502`.
    fn into_http(self) -> Response<Body> {
        let mut res = Response::new(Full::new(self.body));
        *res.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let headers = res.headers_mut();
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_maybe_shared(value))
            {
                headers.append(name, value);
            }
        }
        res
    }

    /// An HTTP response this node made, as it travels back to the node that relayed the request.
    async fn from_http(res: Response<Body>) -> Self {
        let (parts, body) = res.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), Bytes::copy_from_slice(value.as_bytes())))
            .collect();
        Self { status: parts.status.as_u16(), headers, body }
    }
}

/// Why a relayed request got no answer from the session's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The node is not a live member, no link to it is up, or it went away before answering.
    #[error("the session's node cannot be reached")]
    OwnerGone,
    /// As many requests as allowed are already in flight to that node.
    #[error("too many requests in flight to the session's node")]
    Busy,
    /// The node did not answer in time.
    #[error("the session's node did not answer in time")]
    Timeout,
}

/// How the owner answered a WebSocket relayed to it.
#[derive(Debug)]
pub enum Tunnelled {
    /// It took the WebSocket: copy the client's bytes through this tunnel.
    Open(Tunnel),
    /// It refused (unknown session, ...): this is the client's answer.
    Refused(RelayResponse),
}

/// The byte stream to the owner of a session that carries one client's WebSocket.
pub struct Tunnel {
    read: Box<dyn AsyncRead + Send + Unpin>,
    write: Box<dyn AsyncWrite + Send + Unpin>,
    /// Whatever must live as long as the tunnel (the relay's in-flight slot).
    _hold: Box<dyn Any + Send>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

impl Tunnel {
    /// A tunnel over a read and a write half; `hold` is dropped when the tunnel ends.
    pub fn new(
        read: impl AsyncRead + Send + Unpin + 'static,
        write: impl AsyncWrite + Send + Unpin + 'static,
        hold: impl Any + Send,
    ) -> Self {
        Self { read: Box::new(read), write: Box::new(write), _hold: Box::new(hold) }
    }
}

/// A future a [`Relay`] returns.
pub type RelayFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Carries requests of sessions held by other nodes to them; implemented by the cluster. `owner`
/// is the tag of the session id (the node id of the node that issued it).
pub trait Relay: Send + Sync + std::fmt::Debug + 'static {
    /// Sends a polling GET or POST to `owner` and waits at most `timeout` for its answer. The
    /// request is abandoned on the owner when the returned future is dropped.
    fn forward(
        &self,
        owner: u32,
        request: RelayRequest,
        timeout: Duration,
    ) -> RelayFuture<Result<RelayResponse, RelayError>>;

    /// Offers a WebSocket to `owner`; once it took it, the tunnel carries the WebSocket's bytes.
    fn tunnel(&self, owner: u32, request: RelayRequest) -> RelayFuture<Result<Tunnelled, RelayError>>;
}

/// Where the requests of a session id are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Here: the id is this node's (or from a node without a cluster).
    Local,
    /// On the node with this tag.
    Remote(u32),
}

/// Where the requests of `sid` are answered, on a node whose own tag is `own`: on the node its
/// tag names when that is another node, here otherwise (tag 0 is a node without a cluster).
pub(super) fn route(sid: &Sid, own: u32) -> Route {
    match sid.tag() {
        0 => Route::Local,
        tag if tag == own => Route::Local,
        tag => Route::Remote(tag),
    }
}

impl<H: Handler> Engine<H> {
    /// A request of a session the node tagged `owner` holds: carried there by `relay`, answered
    /// with what the owner answers.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay(
        &self,
        relay: Arc<dyn Relay>,
        owner: u32,
        mut req: Request<Incoming>,
        sid: Sid,
        transport: Transport,
        is_upgrade: bool,
        protocol: Protocol,
    ) -> Response<Body> {
        let sid = sid.as_str().to_owned();
        let (kind, body) = match transport {
            Transport::WebSocket if is_upgrade => {
                return self.relay_websocket(relay, owner, &mut req, sid, protocol).await;
            }
            Transport::Polling if req.method() == Method::GET => (RelayKind::Poll, Bytes::new()),
            Transport::Polling if req.method() == Method::POST => match self.read_post_body(req).await {
                Ok(body) => (RelayKind::Post, body),
                Err(res) => return res,
            },
            _ => return error_response(ErrorCode::BadRequest),
        };
        // A parked GET is answered at the latest by the next ping; the client gives up after
        // pingInterval + pingTimeout without one.
        let config = &self.inner.config;
        let timeout = config.ping_interval + config.ping_timeout;
        let forward = relay.forward(owner, RelayRequest { kind, sid, protocol, body }, timeout);
        let closing = self.inner.closing.clone();
        let answer = if kind == RelayKind::Poll && !closing.is_cancelled() {
            tokio::select! {
                answer = forward => answer,
                // This node shuts down while the GET is parked on the owner: the client polls
                // again, through another node, and keeps its session.
                () = closing.cancelled() => return noop_response(protocol),
            }
        } else {
            forward.await
        };
        match answer {
            Ok(res) => res.into_http(),
            Err(err) => relay_error(err),
        }
    }

    /// A polling POST's body, bounded by `maxPayload`: `Err` is the answer when it is too large
    /// (`413`) or the client went away mid-body (`400`).
    async fn read_post_body(&self, req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
        let max = self.inner.config.max_payload;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(payload_too_large());
        }
        match Limited::new(req.into_body(), max).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(payload_too_large()),
            Err(_) => Err(error_response(ErrorCode::BadRequest)),
        }
    }

    /// A WebSocket joining a session held elsewhere: answered `101` once the owner took it, then
    /// the connection's bytes are copied both ways through the tunnel until either side ends
    /// (or this endpoint shuts down).
    async fn relay_websocket(
        &self,
        relay: Arc<dyn Relay>,
        owner: u32,
        req: &mut Request<Incoming>,
        sid: String,
        protocol: Protocol,
    ) -> Response<Body> {
        let permit = req.extensions().get::<crate::net::ConnPermit>().cloned();
        let Ok((response, upgrade)) = fastwebsockets::upgrade::upgrade(&mut *req) else {
            return error_response(ErrorCode::BadRequest);
        };
        let tunnel = match relay
            .tunnel(owner, RelayRequest { kind: RelayKind::WebSocket, sid, protocol, body: Bytes::new() })
            .await
        {
            Ok(Tunnelled::Open(tunnel)) => tunnel,
            Ok(Tunnelled::Refused(res)) => return res.into_http(),
            Err(err) => return relay_error(err),
        };
        let closing = self.inner.closing.clone();
        self.inner.tasks.spawn(async move {
            let _permit = permit;
            let Ok(ws) = upgrade.await else { return };
            let (read, write) = websocket::raw_halves(ws);
            let mut client = tokio::io::join(read, write);
            let mut owner = tokio::io::join(tunnel.read, tunnel.write);
            let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut owner, TUNNEL_BUFFER, TUNNEL_BUFFER);
            tokio::select! {
                _ = copy => {}
                () = closing.cancelled() => {}
            }
        });
        upgrade_response(response)
    }

    /// Answers a polling GET or POST of one of this node's sessions that reached another node:
    /// the same code as for a local request, so the same answer. Dropping the future (the other
    /// node gave up: its client went away) abandons a parked GET as a local client leaving does.
    pub async fn serve_relayed(&self, request: RelayRequest) -> RelayResponse {
        let res = match self.relayed_session(&request.sid, request.protocol) {
            Err(code) => error_response(code),
            Ok(conn) => match request.kind {
                RelayKind::Poll => self.poll(conn).await,
                RelayKind::Post => self.post_body(conn, request.body).await,
                RelayKind::WebSocket => error_response(ErrorCode::BadRequest),
            },
        };
        RelayResponse::from_http(res).await
    }

    /// A WebSocket for one of this node's sessions that reached another node: `Ok` once the
    /// session takes it (start it with [`RelayedUpgrade::start`] after answering `101`), else
    /// the client's answer.
    pub async fn relayed_upgrade(&self, request: &RelayRequest) -> Result<RelayedUpgrade<H>, RelayResponse> {
        let conn = match self.relayed_session(&request.sid, request.protocol) {
            Ok(conn) => conn,
            Err(code) => return Err(RelayResponse::from_http(error_response(code)).await),
        };
        let allowed = self.inner.config.allow_upgrades && conn.session.lock().begin_upgrade(Instant::now()).is_ok();
        Ok(RelayedUpgrade { engine: self.clone(), conn: Some(conn), allowed })
    }

    /// The open session `sid` names, or the error a local request of it gets: unknown (a session
    /// that has just ended included), or a request in another revision than its handshake's.
    fn relayed_session(&self, sid: &str, protocol: Protocol) -> Result<Arc<Connection<H::State>>, ErrorCode> {
        let conn = Sid::parse(sid).and_then(|sid| self.inner.sessions.get(&sid).map(|c| c.clone()));
        let conn = conn.filter(|c| c.session.lock().accepts_requests()).ok_or(ErrorCode::UnknownSid)?;
        if conn.protocol() != protocol {
            return Err(ErrorCode::BadRequest);
        }
        Ok(conn)
    }
}

/// A polling answer with one noop packet in `protocol`'s framing: the client polls again.
fn noop_response(protocol: Protocol) -> Response<Body> {
    let mut body = bytes::BytesMut::new();
    let kind = Framing { protocol, base64: true }.encode_payload(&[Frame::control(PacketType::Noop)], &mut body);
    payload_response(kind, body.freeze())
}

/// The client's answer when the relay got none from the owner.
fn relay_error(err: RelayError) -> Response<Body> {
    match err {
        // As if this node were the owner after a restart: the client reconnects.
        RelayError::OwnerGone | RelayError::Timeout => error_response(ErrorCode::UnknownSid),
        RelayError::Busy => {
            json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"code":3,"message":"Server at capacity"}"#)
        }
    }
}

/// A relayed WebSocket the session took: [`Self::start`] runs it on the tunnel. Dropped without
/// starting (the answer could not be sent), the session forgets the upgrade.
pub struct RelayedUpgrade<H: Handler> {
    engine: Engine<H>,
    conn: Option<Arc<Connection<H::State>>>,
    allowed: bool,
}

impl<H: Handler> std::fmt::Debug for RelayedUpgrade<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayedUpgrade").field("allowed", &self.allowed).finish_non_exhaustive()
    }
}

impl<H: Handler> RelayedUpgrade<H> {
    /// Runs the WebSocket on `tunnel` (on the endpoint's tasks): the probe and the upgrade, or,
    /// when the session already has a WebSocket, accepted then closed, as for a local one.
    pub fn start(mut self, tunnel: Tunnel) {
        let Some(conn) = self.conn.take() else { return };
        let engine = self.engine.clone();
        let allowed = self.allowed;
        self.engine.inner.tasks.spawn(async move {
            let Tunnel { read, write, _hold } = tunnel;
            if allowed {
                websocket::run_probe_io(engine, conn, read, write).await;
            } else {
                websocket::close_now_io(read, write).await;
            }
        });
    }
}

impl<H: Handler> Drop for RelayedUpgrade<H> {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn
            && self.allowed
        {
            conn.session.lock().abort_upgrade();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::BytesMut;

    use super::super::packet;
    use super::super::response::text_response;
    use super::*;

    #[test]
    fn ids_of_another_node_are_routed_there_the_rest_stays() {
        assert_eq!(route(&Sid::with_tag(2), 1), Route::Remote(2));
        assert_eq!(route(&Sid::with_tag(0xff_ffff), 1), Route::Remote(0xff_ffff));
        assert_eq!(route(&Sid::with_tag(1), 1), Route::Local);
        // A node without a cluster issues tag 0; such an id is never sent anywhere.
        assert_eq!(route(&Sid::with_tag(0), 1), Route::Local);
        assert_eq!(route(&Sid::with_tag(0), 0), Route::Local);
    }

    #[tokio::test]
    async fn a_response_crosses_unchanged() {
        let res = error_response(ErrorCode::UnknownSid);
        let relayed = RelayResponse::from_http(res).await;
        assert_eq!(relayed.status, 400);
        assert_eq!(relayed.headers, vec![("content-type".to_owned(), Bytes::from_static(b"application/json"))]);
        assert_eq!(&relayed.body[..], br#"{"code":1,"message":"Session ID unknown"}"#);
        let back = relayed.clone().into_http();
        assert_eq!(back.status(), StatusCode::BAD_REQUEST);
        assert_eq!(back.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(RelayResponse::from_http(back).await, relayed);
    }

    #[tokio::test]
    async fn a_polling_reply_keeps_its_body_and_headers() {
        let mut body = BytesMut::new();
        packet::encode_payload([&packet::Frame::message(b"hello"), &packet::Frame::message(b"x")], &mut body);
        let relayed = RelayResponse::from_http(text_response(body.freeze())).await;
        assert_eq!(packet::decode_payload(relayed.body.clone()).unwrap().len(), 2);
        let back = relayed.into_http();
        assert_eq!(back.headers()[header::CONTENT_TYPE], "text/plain; charset=UTF-8");
        assert_eq!(back.headers()[header::CACHE_CONTROL], "no-store");
        let bytes = back.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"4hello\x1e4x");
    }

    #[test]
    fn garbage_from_a_peer_never_panics() {
        let res = RelayResponse {
            status: 1000,
            headers: vec![("bad name".into(), Bytes::from_static(b"v")), ("x-ok".into(), Bytes::from_static(b"\n"))],
            body: Bytes::new(),
        }
        .into_http();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        assert!(res.headers().is_empty());
    }

    #[tokio::test]
    async fn the_shutdown_noop_speaks_the_request_revision() {
        for (protocol, body) in [(Protocol::V4, &b"6"[..]), (Protocol::V3, &b"1:6"[..])] {
            let res = noop_response(protocol);
            assert_eq!(res.headers()[header::CONTENT_TYPE], "text/plain; charset=UTF-8");
            assert_eq!(&res.into_body().collect().await.unwrap().to_bytes()[..], body);
        }
    }

    #[test]
    fn unreachable_owners_look_like_unknown_sessions_and_a_full_relay_like_capacity() {
        assert_eq!(relay_error(RelayError::OwnerGone).status(), StatusCode::BAD_REQUEST);
        assert_eq!(relay_error(RelayError::Timeout).status(), StatusCode::BAD_REQUEST);
        assert_eq!(relay_error(RelayError::Busy).status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
