//! The inter-node transport: one QUIC endpoint per node (quinn, mutual TLS with the cluster
//! credentials, ALPN `ioswarm/1`) that both accepts and dials.
//!
//! - **One link per peer pair.** Either node may dial. When both dial at once, the connection
//!   initiated by the lower node id wins; both ends reach the same decision (`prefer_new`), and
//!   the loser is closed during the handshake, before it carries any data. A peer that restarted
//!   (higher `Hello.incarnation`) replaces its old link at once.
//! - **Handshake.** One `Hello` exchange for every connection (`Inner::exchange_hello`): the
//!   dialer opens a bi stream and sends [`Hello`]; the acceptor checks it (the certificate
//!   against the node id it claims, the protocol versions), offers the connection as the link to
//!   that node, and answers with its own `Hello`, which the dialer checks the same way (its TLS
//!   server name `node-<id>.ioswarm` already named the node it expects).
//! - **Ordered messages** ([`Transport::send`], [`Transport::try_send`]) go through a bounded
//!   per-peer queue into one long-lived uni stream per link, so a peer receives one sender's
//!   messages in the order they were queued. When a link fails, frames already handed to QUIC may
//!   be lost; queued frames go out on the next link, in order, never twice.
//! - **Requests** ([`Transport::request`]) each open a bi stream: one request frame, one reply
//!   frame, under a deadline.
//! - **Reconnect.** Every known peer has a task that redials its address (from
//!   [`Transport::connect`] or the peer's `Hello`) with exponential backoff and jitter.
//! - **Delivery.** Everything that arrives (messages, requests with a [`Responder`], link up and
//!   down events) goes into one bounded channel; when it is full, reading stops and QUIC flow
//!   control pushes back to the senders, whose bounded queues then refuse more
//!   ([`TransportError::QueueFull`]): a slow node never stalls the rest.
//!
//! Framing on every stream: a 4-byte big-endian length, then an encoded `Envelope`; frames above
//! [`TransportConfig::max_frame_bytes`] are refused on both ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rand::Rng as _;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::credentials::{CredentialsError, NodeCredentials, node_server_name};
use super::message::{Envelope, Hello, Message, NodeId, PROTOCOL_VERSION};
use super::wire::{WireError, encode_message};

/// Application close codes on inter-node connections.
const CLOSE_SHUTDOWN: u32 = 0;
const CLOSE_DUPLICATE: u32 = 1;
const CLOSE_REPLACED: u32 = 2;
const CLOSE_PROTOCOL: u32 = 3;
const CLOSE_REMOVED: u32 = 4;

/// Transport settings. [`TransportConfig::new`] fills in defaults.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// UDP address to bind (`--cluster-listen`).
    pub listen: SocketAddr,
    /// Address peers dial to reach this node (`--advertise`); the bound address when `None`.
    pub advertise: Option<String>,
    /// Grows on every process start; peers replace links from older incarnations.
    pub incarnation: u64,
    /// Software version announced in `Hello`.
    pub software_version: String,
    /// Largest encoded `Envelope` sent or accepted.
    pub max_frame_bytes: usize,
    /// Capacity of the delivery channel returned by [`Transport::bind`].
    pub inbox_capacity: usize,
    /// Ordered frames queued per peer before [`Transport::try_send`] refuses.
    pub peer_queue_capacity: usize,
    /// Deadline of a dial, including the `Hello` exchange, and of [`Transport::connect`].
    pub connect_timeout: Duration,
    /// A link with no traffic for this long is dead.
    pub idle_timeout: Duration,
    /// Keep-alive interval (must be below `idle_timeout`).
    pub keep_alive: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Concurrent request streams a peer may open on one link.
    pub max_concurrent_requests: u32,
}

impl TransportConfig {
    /// Defaults for a node listening on `listen`; the incarnation is the current time in ms.
    pub fn new(listen: SocketAddr) -> Self {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(1);
        Self {
            listen,
            advertise: None,
            incarnation,
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
            max_frame_bytes: 16 * 1024 * 1024,
            inbox_capacity: 4096,
            peer_queue_capacity: 4096,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_concurrent_requests: 256,
        }
    }

    /// Checks the settings once, before binding.
    pub fn validate(&self) -> Result<(), TransportError> {
        let invalid = |what: &'static str| Err(TransportError::Config(what));
        if self.max_frame_bytes == 0 || u32::try_from(self.max_frame_bytes).is_err() {
            return invalid("max_frame_bytes must be between 1 and 4 GiB");
        }
        if self.inbox_capacity == 0 || self.peer_queue_capacity == 0 || self.max_concurrent_requests == 0 {
            return invalid("capacities must be positive");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return invalid("keep_alive must be positive and below idle_timeout");
        }
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout must be positive");
        }
        if self.backoff_initial.is_zero() || self.backoff_max < self.backoff_initial {
            return invalid("backoff_initial must be positive and at most backoff_max");
        }
        Ok(())
    }
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A setting is out of range.
    #[error("invalid transport configuration: {0}")]
    Config(&'static str),
    /// Binding the UDP socket failed.
    #[error("binding the cluster endpoint: {0}")]
    Bind(std::io::Error),
    /// The credentials could not be turned into a TLS configuration.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The TLS configuration is not usable for QUIC.
    #[error("TLS configuration not usable for QUIC: {0}")]
    QuicTls(String),
    /// The node id is not a known peer.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The node is this node.
    #[error("node {0} is this node")]
    SelfPeer(NodeId),
    /// The peer's ordered queue is full (the peer is slow or unreachable).
    #[error("send queue to node {0} is full")]
    QueueFull(NodeId),
    /// The operation did not finish in time.
    #[error("timed out")]
    Timeout,
    /// No link to the node is up at the moment.
    #[error("no link to node {0}")]
    NotConnected(NodeId),
    /// A frame exceeds the size limit.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended in the middle of a frame, or before a reply.
    #[error("stream ended before a complete frame")]
    Truncated,
    /// The peer did not answer the request (the handler dropped its responder).
    #[error("no reply")]
    NoReply,
    /// A frame did not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer broke the protocol (wrong first message, wrong sender, wrong id, no overlap of
    /// protocol versions).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Dialing failed before the QUIC handshake.
    #[error("dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The transport is shutting down.
    #[error("the transport is shut down")]
    Shutdown,
    /// Both nodes dialed each other and this connection to node `.0` lost to the other one.
    #[error("duplicate connection from node {0}")]
    Duplicate(NodeId),
}

/// What the transport delivers to the node.
#[derive(Debug)]
pub enum Incoming {
    /// A link to `peer` is up (first time, or after a reconnect): time for anti-entropy.
    PeerUp {
        /// The peer.
        peer: NodeId,
        /// What it announced.
        hello: Hello,
    },
    /// The link to `peer` is down; the transport keeps redialing it.
    PeerDown {
        /// The peer.
        peer: NodeId,
    },
    /// An ordered message from `from`.
    Message {
        /// The sender (authenticated by its certificate).
        from: NodeId,
        /// The message.
        message: Message,
    },
    /// A request from `from`; answer through `responder`.
    Request {
        /// The sender (authenticated by its certificate).
        from: NodeId,
        /// The request.
        message: Message,
        /// Where the reply goes; dropping it answers "no reply".
        responder: Responder,
    },
}

/// The reply path of one [`Incoming::Request`].
#[derive(Debug)]
pub struct Responder {
    stream: quinn::SendStream,
    /// The rest of the request stream, after the request frame (a tunnel's bytes).
    recv: quinn::RecvStream,
    node_id: NodeId,
    max_frame_bytes: usize,
}

impl Responder {
    /// Sends the reply and closes the stream.
    pub async fn reply(mut self, message: &Message) -> Result<(), TransportError> {
        self.write_reply(message).await?;
        // Only fails when the stream is already closed; the write above reported that.
        let _ = self.stream.finish();
        Ok(())
    }

    /// Sends the reply and keeps both directions of the stream open for raw bytes (a tunnel);
    /// returns them.
    pub async fn reply_open(
        mut self,
        message: &Message,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        self.write_reply(message).await?;
        Ok((self.stream, self.recv))
    }

    async fn write_reply(&mut self, message: &Message) -> Result<(), TransportError> {
        let frame = encode_message(self.node_id, message);
        check_len(frame.len(), self.max_frame_bytes)?;
        write_frame(&mut self.stream, &frame).await?;
        Ok(())
    }

    /// Resolves when the requester no longer wants the reply (it gave up and dropped its end,
    /// or the link failed).
    pub fn abandoned(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stopped = self.stream.stopped();
        async move {
            let _ = stopped.await;
        }
    }
}

/// A message encoded once, ready to be queued to any number of peers.
#[derive(Debug, Clone)]
pub struct OutFrame(Bytes);

impl OutFrame {
    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a real message.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One peer as the transport sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer.
    pub node_id: NodeId,
    /// Where it is dialed.
    pub addr: Option<SocketAddr>,
    /// Whether a link is up.
    pub connected: bool,
    /// Its `Hello`, once a link has been up.
    pub incarnation: Option<u64>,
}

/// One node's cluster endpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: NodeId,
    config: TransportConfig,
    hello: Hello,
    credentials: NodeCredentials,
    endpoint: quinn::Endpoint,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    inbox: mpsc::Sender<Incoming>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

#[derive(Debug)]
struct Peer {
    id: NodeId,
    state: watch::Sender<PeerState>,
    queue: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct PeerState {
    link: Option<Link>,
    /// This node is dialing the peer right now.
    dialing: bool,
    addr: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
struct Link {
    conn: quinn::Connection,
    /// Which node dialed this connection.
    initiator: NodeId,
    /// The peer's `Hello`.
    hello: Hello,
}

impl Link {
    fn alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn key(&self) -> LinkKey {
        LinkKey { initiator: self.initiator, incarnation: self.hello.incarnation }
    }
}

/// What the duplicate-link rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkKey {
    /// The node that dialed.
    initiator: NodeId,
    /// The peer's incarnation on that link.
    incarnation: u64,
}

/// Whether a newly handshaken link to a peer should become the link, given the live link (if
/// any) and whether this node (`me`) is dialing the peer itself. Both ends apply the same rule
/// to the same pair of connections, so they keep the same one: a newer peer incarnation wins, a
/// redial by the same initiator wins (it gave up on the old link), otherwise the lower
/// initiator's connection wins.
fn prefer_new(current: Option<LinkKey>, dialing: bool, new: LinkKey, me: NodeId) -> bool {
    match current {
        Some(current) if new.incarnation != current.incarnation => new.incarnation > current.incarnation,
        Some(current) if new.initiator == current.initiator => true,
        Some(current) => new.initiator < current.initiator,
        None if dialing && new.initiator != me => new.initiator < me,
        None => true,
    }
}

/// Which end of a new connection this node is in [`Inner::exchange_hello`].
enum Side<'a> {
    /// This node dialed; when `expected` is given, the peer must be that node.
    Dialer {
        /// The node dialed (none for a discovery).
        expected: Option<NodeId>,
    },
    /// The peer dialed. `admit` sees its checked `Hello` before this node answers; an error
    /// ([`TransportError::Duplicate`] when another link to that node wins) ends the exchange
    /// unanswered.
    Acceptor {
        /// Decides whether the dialer's connection goes on.
        admit: &'a (dyn Fn(&Hello) -> Result<(), TransportError> + Sync),
    },
}

/// Exponential backoff with jitter (each delay is 50–100 % of the nominal one).
#[derive(Debug, Clone)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, next: initial }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The nominal delay to wait now; doubles the next one up to the maximum.
    fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    fn next_delay(&mut self) -> Duration {
        self.step().mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

impl Transport {
    /// Binds the endpoint on `config.listen` and starts accepting. Returns the transport and the
    /// channel everything incoming is delivered on. Must be called within a Tokio runtime.
    pub fn bind(
        config: TransportConfig,
        credentials: NodeCredentials,
    ) -> Result<(Transport, mpsc::Receiver<Incoming>), TransportError> {
        config.validate()?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                config.idle_timeout.try_into().map_err(|_| TransportError::Config("idle_timeout too large"))?,
            ))
            .keep_alive_interval(Some(config.keep_alive))
            .max_concurrent_bidi_streams(VarInt::from_u32(config.max_concurrent_requests))
            .max_concurrent_uni_streams(VarInt::from_u32(8));
        let transport = Arc::new(transport);

        let server_tls = QuicServerConfig::try_from(Arc::new(credentials.server_config()?))
            .map_err(|e| TransportError::QuicTls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(transport.clone());
        let client_tls = QuicClientConfig::try_from(Arc::new(credentials.client_config()?))
            .map_err(|e| TransportError::QuicTls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(transport);

        let mut endpoint = quinn::Endpoint::server(server, config.listen).map_err(TransportError::Bind)?;
        endpoint.set_default_client_config(client);
        let local = endpoint.local_addr().map_err(TransportError::Bind)?;

        let id = credentials.node_id();
        let hello = Hello {
            node_id: id,
            advertise_addr: config.advertise.clone().unwrap_or_else(|| local.to_string()),
            incarnation: config.incarnation,
            software_version: config.software_version.clone(),
            min_protocol_version: PROTOCOL_VERSION,
            max_protocol_version: PROTOCOL_VERSION,
        };
        let (inbox, incoming) = mpsc::channel(config.inbox_capacity);
        let inner = Arc::new(Inner {
            id,
            config,
            hello,
            credentials,
            endpoint,
            peers: Mutex::new(HashMap::new()),
            inbox,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        inner.tasks.spawn(accept_loop(inner.clone()));
        tracing::debug!(node_id = id, %local, "cluster transport bound");
        Ok((Transport { inner }, incoming))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner.endpoint.local_addr().map_err(TransportError::Bind)
    }

    /// The `Hello` this node sends.
    pub fn hello(&self) -> &Hello {
        &self.inner.hello
    }

    /// Keeps a link to node `expected` at `addr` from now on (redialing with backoff), and waits
    /// up to `connect_timeout` for it to come up. On error the link is still maintained in the
    /// background; [`Transport::remove_peer`] stops that.
    pub async fn connect(&self, addr: SocketAddr, expected: NodeId) -> Result<(), TransportError> {
        let peer = self.inner.peer(expected)?;
        peer.state.send_if_modified(|state| {
            let changed = state.addr != Some(addr);
            state.addr = Some(addr);
            changed
        });
        self.inner.wait_link(&peer, self.inner.config.connect_timeout).await.map(drop)
    }

    /// Learns which node listens at `addr` (a `--join` address): dials it accepting any node
    /// certificate from the cluster CA, exchanges `Hello`s, checks the certificate against the
    /// id the peer claims, and closes that connection. Then [`Transport::connect`] with the id.
    pub async fn discover(&self, addr: SocketAddr) -> Result<NodeId, TransportError> {
        let inner = &self.inner;
        let tls = QuicClientConfig::try_from(Arc::new(inner.credentials.discovery_client_config()?))
            .map_err(|e| TransportError::QuicTls(e.to_string()))?;
        let config = quinn::ClientConfig::new(Arc::new(tls));
        let handshake = async {
            let conn = inner.endpoint.connect_with(config, addr, &node_server_name(inner.id))?.await?;
            let hello = inner.exchange_hello(&conn, Side::Dialer { expected: None }).await?;
            conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"discovered");
            Ok(hello.node_id)
        };
        tokio::time::timeout(inner.config.connect_timeout, handshake).await.map_err(|_| TransportError::Timeout)?
    }

    /// Waits until a link to `peer` is up.
    pub async fn wait_connected(&self, peer: NodeId, timeout: Duration) -> Result<(), TransportError> {
        let peer = self.inner.known_peer(peer)?;
        self.inner.wait_link(&peer, timeout).await.map(drop)
    }

    /// Stops maintaining the link to `peer`: queued frames are flushed, then the link closes. A
    /// later connection from that peer makes it known again.
    pub fn remove_peer(&self, peer: NodeId) {
        if let Some(peer) = self.inner.peers.lock().remove(&peer) {
            peer.cancel.cancel();
        }
    }

    /// The known peers.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let peers: Vec<Arc<Peer>> = self.inner.peers.lock().values().cloned().collect();
        let mut infos: Vec<PeerInfo> = peers
            .iter()
            .map(|peer| {
                let state = peer.state.borrow();
                let link = state.link.as_ref();
                PeerInfo {
                    node_id: peer.id,
                    addr: state.addr,
                    connected: link.is_some_and(Link::alive),
                    incarnation: link.map(|l| l.hello.incarnation),
                }
            })
            .collect();
        infos.sort_by_key(|info| info.node_id);
        infos
    }

    /// Frames waiting in the ordered queue to each known peer, by peer id (ascending).
    pub fn queue_depths(&self) -> Vec<(NodeId, usize)> {
        let mut depths: Vec<(NodeId, usize)> = self
            .inner
            .peers
            .lock()
            .values()
            .map(|peer| (peer.id, peer.queue.max_capacity() - peer.queue.capacity()))
            .collect();
        depths.sort_unstable();
        depths
    }

    /// Encodes `message` once for [`Transport::try_send`] / [`Transport::send`].
    pub fn encode(&self, message: &Message) -> Result<OutFrame, TransportError> {
        let frame = encode_message(self.inner.id, message);
        check_len(frame.len(), self.inner.config.max_frame_bytes)?;
        Ok(OutFrame(frame))
    }

    /// Queues `frame` on the ordered stream to `peer` without waiting; refuses when the queue is
    /// full.
    pub fn try_send(&self, peer: NodeId, frame: &OutFrame) -> Result<(), TransportError> {
        let peer = self.inner.known_peer(peer)?;
        peer.queue.try_send(frame.0.clone()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TransportError::QueueFull(peer.id),
            mpsc::error::TrySendError::Closed(_) => TransportError::Shutdown,
        })
    }

    /// Queues `frame` on the ordered stream to `peer`, waiting for room in the queue.
    pub async fn send(&self, peer: NodeId, frame: &OutFrame) -> Result<(), TransportError> {
        let peer = self.inner.known_peer(peer)?;
        peer.queue.send(frame.0.clone()).await.map_err(|_| TransportError::Shutdown)
    }

    /// Sends a request to `peer` on its own stream and waits for the reply, all within `timeout`
    /// (which includes waiting for the link to come up).
    pub async fn request(&self, peer: NodeId, message: &Message, timeout: Duration) -> Result<Message, TransportError> {
        let peer = self.inner.known_peer(peer)?;
        let frame = encode_message(self.inner.id, message);
        let max = self.inner.config.max_frame_bytes;
        check_len(frame.len(), max)?;
        let exchange = async {
            let link = self.inner.wait_link(&peer, timeout).await?;
            let (mut send, mut recv) = link.conn.open_bi().await?;
            write_frame(&mut send, &frame).await?;
            let _ = send.finish();
            let reply = read_frame(&mut recv, max).await?.ok_or(TransportError::NoReply)?;
            let envelope = Envelope::decode(reply)?;
            if envelope.sender != peer.id {
                return Err(TransportError::Protocol(format!("reply from {} on {}'s link", envelope.sender, peer.id)));
            }
            Ok(envelope.message)
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| TransportError::Timeout)?
    }

    /// Opens a stream to `peer` over the link that is up now (none: [`TransportError::NotConnected`]
    /// at once), sends `message` as its first frame and reads one reply frame. The stream stays
    /// open after the reply, for raw bytes both ways (a tunnel); with `finish`, nothing more is
    /// sent after the request. Dropping the returned future or streams tells the peer the
    /// requester gave up ([`Responder::abandoned`]). Not bounded in time: the caller bounds it.
    pub async fn open_stream(
        &self,
        peer: NodeId,
        message: &Message,
        finish: bool,
    ) -> Result<(Message, quinn::SendStream, quinn::RecvStream), TransportError> {
        let known = self.inner.known_peer(peer)?;
        let frame = encode_message(self.inner.id, message);
        let max = self.inner.config.max_frame_bytes;
        check_len(frame.len(), max)?;
        let link = known.state.borrow().link.clone().filter(Link::alive).ok_or(TransportError::NotConnected(peer))?;
        let (mut send, mut recv) = link.conn.open_bi().await?;
        write_frame(&mut send, &frame).await?;
        if finish {
            let _ = send.finish();
        }
        let reply = read_frame(&mut recv, max).await?.ok_or(TransportError::NoReply)?;
        let envelope = Envelope::decode(reply)?;
        if envelope.sender != peer {
            return Err(TransportError::Protocol(format!("reply from {} on {peer}'s link", envelope.sender)));
        }
        Ok((envelope.message, send, recv))
    }

    /// Closes the transport: stops accepting and dialing, flushes every peer's ordered queue
    /// (finish, then wait for the peer's acknowledgement), closes the endpoint and waits for it
    /// to go idle, all within `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout_at(deadline, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!(node_id = self.inner.id, "cluster transport tasks still running at the deadline");
        }
        self.inner.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout_at(deadline, self.inner.endpoint.wait_idle()).await;
    }

    /// Closes the current link to `peer` as if the network dropped it (tests).
    #[cfg(test)]
    fn break_link(&self, peer: NodeId) {
        if let Ok(peer) = self.inner.known_peer(peer)
            && let Some(link) = &peer.state.borrow().link
        {
            link.conn.close(VarInt::from_u32(CLOSE_REPLACED), b"test");
        }
    }
}

impl Inner {
    fn known_peer(&self, id: NodeId) -> Result<Arc<Peer>, TransportError> {
        self.peers.lock().get(&id).cloned().ok_or(TransportError::UnknownPeer(id))
    }

    /// The peer `id`, created (with its task) on first use.
    fn peer(self: &Arc<Self>, id: NodeId) -> Result<Arc<Peer>, TransportError> {
        if id == self.id {
            return Err(TransportError::SelfPeer(id));
        }
        if self.cancel.is_cancelled() {
            return Err(TransportError::Shutdown);
        }
        let mut peers = self.peers.lock();
        if let Some(peer) = peers.get(&id) {
            return Ok(peer.clone());
        }
        let (queue, frames) = mpsc::channel(self.config.peer_queue_capacity);
        let peer = Arc::new(Peer {
            id,
            state: watch::Sender::new(PeerState::default()),
            queue,
            cancel: self.cancel.child_token(),
        });
        peers.insert(id, peer.clone());
        self.tasks.spawn(run_peer(self.clone(), peer.clone(), frames));
        Ok(peer)
    }

    async fn wait_link(&self, peer: &Peer, timeout: Duration) -> Result<Link, TransportError> {
        let mut state = peer.state.subscribe();
        let wait = async {
            loop {
                if let Some(link) = state.borrow_and_update().link.as_ref().filter(|l| l.alive()) {
                    return Ok(link.clone());
                }
                tokio::select! {
                    changed = state.changed() => changed.map_err(|_| TransportError::Shutdown)?,
                    () = peer.cancel.cancelled() => return Err(TransportError::Shutdown),
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| TransportError::Timeout)?
    }

    /// Offers a handshaken connection as the link to `peer`; returns whether it became the link
    /// (the caller closes it otherwise). Starts the connection's receive tasks.
    fn register(self: &Arc<Self>, peer: &Arc<Peer>, link: Link) -> bool {
        let me = self.id;
        let mut replaced = None;
        let mut accepted = false;
        peer.state.send_if_modified(|state| {
            if link.initiator == me {
                state.dialing = false;
            }
            let current = state.link.as_ref().filter(|l| l.alive()).map(Link::key);
            if !prefer_new(current, state.dialing, link.key(), me) {
                return false;
            }
            if let Ok(addr) = link.hello.advertise_addr.parse() {
                state.addr = Some(addr);
            }
            replaced = state.link.replace(link.clone());
            accepted = true;
            true
        });
        if let Some(old) = replaced
            && old.conn.stable_id() != link.conn.stable_id()
        {
            old.conn.close(VarInt::from_u32(CLOSE_REPLACED), b"replaced");
        }
        if accepted {
            tracing::debug!(node_id = me, peer = peer.id, initiator = link.initiator, "cluster link up");
            self.tasks.spawn(accept_streams(self.clone(), peer.clone(), link.conn));
        }
        accepted
    }

    /// Dials `addr` expecting node `expected`, and exchanges `Hello`s.
    async fn dial(&self, addr: SocketAddr, expected: NodeId) -> Result<(quinn::Connection, Hello), TransportError> {
        let handshake = async {
            let conn = self.endpoint.connect(addr, &node_server_name(expected))?.await?;
            let hello = self.exchange_hello(&conn, Side::Dialer { expected: Some(expected) }).await?;
            Ok((conn, hello))
        };
        tokio::time::timeout(self.config.connect_timeout, handshake).await.map_err(|_| TransportError::Timeout)?
    }

    /// Accepts one incoming connection: TLS, then the `Hello` exchange, in which the dialer is
    /// offered as the link to its node (the duplicate rule) before this node answers.
    async fn handshake_incoming(self: &Arc<Self>, incoming: quinn::Incoming) -> Result<(), TransportError> {
        let conn = incoming.await?;
        let admit = |hello: &Hello| {
            let peer = self.peer(hello.node_id)?;
            let link = Link { conn: conn.clone(), initiator: hello.node_id, hello: hello.clone() };
            if self.register(&peer, link) { Ok(()) } else { Err(TransportError::Duplicate(hello.node_id)) }
        };
        match self.exchange_hello(&conn, Side::Acceptor { admit: &admit }).await {
            Ok(_) | Err(TransportError::Duplicate(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The one `Hello` exchange, the same for every new connection (a link dialed or accepted,
    /// a discovery): the dialer opens a bi stream and sends its `Hello`; the acceptor reads and
    /// checks it ([`Inner::read_hello`]), admits the dialer, and only then answers with its own,
    /// which the dialer reads and checks in turn. On any failure the connection is closed
    /// (`CLOSE_DUPLICATE` for a dialer not admitted as a duplicate, else `CLOSE_PROTOCOL`), so a
    /// refused connection never carries data. Returns the peer's `Hello`.
    async fn exchange_hello(&self, conn: &quinn::Connection, side: Side<'_>) -> Result<Hello, TransportError> {
        let exchange = async {
            match side {
                Side::Dialer { expected } => {
                    let (mut send, mut recv) = conn.open_bi().await?;
                    self.write_hello(&mut send).await?;
                    let hello = self.read_hello(conn, &mut recv).await?;
                    if let Some(expected) = expected
                        && hello.node_id != expected
                    {
                        return Err(TransportError::Protocol(format!(
                            "expected node {expected}, {} answered",
                            hello.node_id
                        )));
                    }
                    Ok(hello)
                }
                Side::Acceptor { admit } => {
                    let (mut send, mut recv) = conn.accept_bi().await?;
                    let hello = self.read_hello(conn, &mut recv).await?;
                    admit(&hello)?;
                    self.write_hello(&mut send).await?;
                    Ok(hello)
                }
            }
        };
        let result = exchange.await;
        match &result {
            Ok(_) => {}
            Err(TransportError::Duplicate(_)) => conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate"),
            Err(_) => conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"handshake"),
        }
        result
    }

    /// Sends this node's `Hello` as the only frame of the handshake stream.
    async fn write_hello(&self, send: &mut quinn::SendStream) -> Result<(), TransportError> {
        write_frame(send, &encode_message(self.id, &Message::Hello(self.hello.clone()))).await?;
        // Only fails when the stream is already closed; the write above reported that.
        let _ = send.finish();
        Ok(())
    }

    /// Reads the peer's `Hello` and checks it: the first frame is a `Hello` sent by the node it
    /// names, with a protocol version in common ([`expect_hello`]); the connection's certificate
    /// was issued by the cluster CA to that node id; and that node is not this one.
    async fn read_hello(
        &self,
        conn: &quinn::Connection,
        recv: &mut quinn::RecvStream,
    ) -> Result<Hello, TransportError> {
        let frame = read_frame(recv, self.config.max_frame_bytes).await?.ok_or(TransportError::Truncated)?;
        let hello = expect_hello(Envelope::decode(frame)?)?;
        let chain = conn
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or_else(|| TransportError::Protocol("no peer certificate".into()))?;
        self.credentials.verify_peer(&chain, hello.node_id)?;
        if hello.node_id == self.id {
            return Err(TransportError::SelfPeer(hello.node_id));
        }
        Ok(hello)
    }

    /// Hands an incoming item to the node; false when shutting down or nobody listens.
    async fn deliver(&self, incoming: Incoming) -> bool {
        tokio::select! {
            sent = self.inbox.send(incoming) => sent.is_ok(),
            () = self.cancel.cancelled() => false,
        }
    }
}

fn expect_hello(envelope: Envelope) -> Result<Hello, TransportError> {
    let Message::Hello(hello) = envelope.message else {
        return Err(TransportError::Protocol("first message is not Hello".into()));
    };
    if envelope.sender != hello.node_id {
        return Err(TransportError::Protocol("Hello sender does not match its node id".into()));
    }
    if hello.min_protocol_version > PROTOCOL_VERSION || hello.max_protocol_version < PROTOCOL_VERSION {
        return Err(TransportError::Protocol(format!(
            "peer speaks protocol versions {}..={}, this node {PROTOCOL_VERSION}",
            hello.min_protocol_version, hello.max_protocol_version
        )));
    }
    Ok(hello)
}

async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            incoming = inner.endpoint.accept() => incoming,
            () = inner.cancel.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let task = inner.clone();
        inner.tasks.spawn(async move {
            let remote = incoming.remote_address();
            let timeout = task.config.connect_timeout;
            match tokio::time::timeout(timeout, task.handshake_incoming(incoming)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::info!(node_id = task.id, %remote, %error, "cluster connection refused"),
                Err(_) => tracing::info!(node_id = task.id, %remote, "cluster handshake timed out"),
            }
        });
    }
}

/// Reads everything the peer sends on one connection: ordered uni streams and request streams.
async fn accept_streams(inner: Arc<Inner>, peer: Arc<Peer>, conn: quinn::Connection) {
    loop {
        tokio::select! {
            uni = conn.accept_uni() => {
                let Ok(stream) = uni else { return };
                inner.tasks.spawn(read_ordered(inner.clone(), peer.id, conn.clone(), stream));
            }
            bi = conn.accept_bi() => {
                let Ok((send, recv)) = bi else { return };
                inner.tasks.spawn(read_request(inner.clone(), peer.id, send, recv));
            }
            () = peer.cancel.cancelled() => return,
        }
    }
}

async fn read_ordered(inner: Arc<Inner>, from: NodeId, conn: quinn::Connection, mut stream: quinn::RecvStream) {
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut stream, inner.config.max_frame_bytes) => frame,
            () = inner.cancel.cancelled() => return,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(TransportError::FrameTooLarge { len, max }) => {
                tracing::warn!(node_id = inner.id, peer = from, len, max, "oversized frame; closing the link");
                conn.close(VarInt::from_u32(CLOSE_PROTOCOL), b"frame too large");
                return;
            }
            Err(_) => return,
        };
        match Envelope::decode(frame) {
            Ok(envelope) if envelope.sender == from => {
                if !inner.deliver(Incoming::Message { from, message: envelope.message }).await {
                    return;
                }
            }
            Ok(envelope) => {
                tracing::warn!(
                    node_id = inner.id,
                    peer = from,
                    sender = envelope.sender,
                    "message with a forged sender dropped"
                );
            }
            Err(error) => tracing::warn!(node_id = inner.id, peer = from, %error, "undecodable message dropped"),
        }
    }
}

async fn read_request(inner: Arc<Inner>, from: NodeId, send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let read = tokio::time::timeout(inner.config.connect_timeout, read_frame(&mut recv, inner.config.max_frame_bytes));
    let frame = match read.await {
        Ok(Ok(Some(frame))) => frame,
        _ => return,
    };
    match Envelope::decode(frame) {
        Ok(envelope) if envelope.sender == from => {
            let responder =
                Responder { stream: send, recv, node_id: inner.id, max_frame_bytes: inner.config.max_frame_bytes };
            inner.deliver(Incoming::Request { from, message: envelope.message, responder }).await;
        }
        Ok(_) => tracing::warn!(node_id = inner.id, peer = from, "request with a forged sender dropped"),
        Err(error) => tracing::warn!(node_id = inner.id, peer = from, %error, "undecodable request dropped"),
    }
}

/// How a link's writer stopped.
enum LinkEnd {
    /// The connection failed.
    Lost,
    /// Another connection became the link.
    Changed,
    /// The peer was removed or the transport is shutting down.
    Stop,
}

/// One task per peer: keeps a link up (dialing with backoff when there is none and an address is
/// known), writes the ordered queue into the link's uni stream, reports links going up and down.
async fn run_peer(inner: Arc<Inner>, peer: Arc<Peer>, mut frames: mpsc::Receiver<Bytes>) {
    let mut state = peer.state.subscribe();
    let mut backoff = Backoff::new(inner.config.backoff_initial, inner.config.backoff_max);
    let mut pending: Option<Bytes> = None;
    let mut reported_up: Option<usize> = None;
    loop {
        if peer.cancel.is_cancelled() {
            break;
        }
        let link = state.borrow_and_update().link.clone().filter(Link::alive);
        if let Some(link) = link {
            backoff.reset();
            if reported_up != Some(link.conn.stable_id()) {
                reported_up = Some(link.conn.stable_id());
                let up = Incoming::PeerUp { peer: peer.id, hello: link.hello.clone() };
                if !inner.deliver(up).await {
                    break;
                }
            }
            match write_link(&inner, &peer, &link, &mut state, &mut frames, &mut pending).await {
                LinkEnd::Lost => {
                    peer.state.send_if_modified(|s| {
                        let same = s.link.as_ref().is_some_and(|l| l.conn.stable_id() == link.conn.stable_id());
                        if same {
                            s.link = None;
                        }
                        same
                    });
                }
                LinkEnd::Changed => {}
                LinkEnd::Stop => break,
            }
            continue;
        }
        if reported_up.take().is_some() {
            tracing::debug!(node_id = inner.id, peer = peer.id, "cluster link down");
            if !inner.deliver(Incoming::PeerDown { peer: peer.id }).await {
                break;
            }
        }
        let mut addr = None;
        peer.state.send_if_modified(|s| {
            if s.link.as_ref().is_none_or(|l| !l.alive()) && !s.dialing {
                addr = s.addr;
                s.dialing = addr.is_some();
            }
            false
        });
        if let Some(addr) = addr {
            let dialed = tokio::select! {
                dialed = inner.dial(addr, peer.id) => dialed,
                () = peer.cancel.cancelled() => break,
            };
            match dialed {
                Ok((conn, hello)) => {
                    let link = Link { conn: conn.clone(), initiator: inner.id, hello };
                    if !inner.register(&peer, link) {
                        conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate");
                    }
                    continue;
                }
                Err(error) => {
                    peer.state.send_if_modified(|s| {
                        s.dialing = false;
                        false
                    });
                    tracing::debug!(node_id = inner.id, peer = peer.id, %addr, %error, "cluster dial failed");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                changed = state.changed() => if changed.is_err() { break },
                () = peer.cancel.cancelled() => break,
            }
        } else {
            // No address: wait for the peer to dial us, or for `connect` to give one.
            tokio::select! {
                changed = state.changed() => if changed.is_err() { break },
                () = peer.cancel.cancelled() => break,
            }
        }
    }
    let link = peer.state.borrow().link.clone();
    if let Some(link) = link {
        let code = if inner.cancel.is_cancelled() { CLOSE_SHUTDOWN } else { CLOSE_REMOVED };
        link.conn.close(VarInt::from_u32(code), b"bye");
    }
}

/// Writes queued frames into one uni stream on `link` until the link fails or changes, or the
/// peer stops; on a stop, flushes what is queued, finishes the stream and waits for the peer to
/// acknowledge it.
async fn write_link(
    inner: &Inner,
    peer: &Peer,
    link: &Link,
    state: &mut watch::Receiver<PeerState>,
    frames: &mut mpsc::Receiver<Bytes>,
    pending: &mut Option<Bytes>,
) -> LinkEnd {
    let conn = &link.conn;
    let mut stream = match conn.open_uni().await {
        Ok(stream) => stream,
        Err(_) => return LinkEnd::Lost,
    };
    loop {
        if let Some(frame) = pending.take() {
            if write_frame(&mut stream, &frame).await.is_err() {
                // Not fully written, so the peer cannot have a complete copy: resend it later.
                *pending = Some(frame);
                return LinkEnd::Lost;
            }
            continue;
        }
        tokio::select! {
            biased;
            () = peer.cancel.cancelled() => {
                while let Ok(frame) = frames.try_recv() {
                    if write_frame(&mut stream, &frame).await.is_err() {
                        return LinkEnd::Stop;
                    }
                }
                let _ = stream.finish();
                let _ = tokio::time::timeout(inner.config.connect_timeout, stream.stopped()).await;
                return LinkEnd::Stop;
            }
            _ = conn.closed() => return LinkEnd::Lost,
            changed = state.changed() => {
                if changed.is_err() {
                    return LinkEnd::Stop;
                }
                let same = state.borrow().link.as_ref().is_some_and(|l| l.conn.stable_id() == conn.stable_id());
                if !same {
                    let _ = stream.finish();
                    let _ = tokio::time::timeout(inner.config.connect_timeout, stream.stopped()).await;
                    return LinkEnd::Changed;
                }
            }
            frame = frames.recv() => match frame {
                Some(frame) => *pending = Some(frame),
                None => return LinkEnd::Stop,
            },
        }
    }
}

fn check_len(len: usize, max: usize) -> Result<(), TransportError> {
    if len > max { Err(TransportError::FrameTooLarge { len, max }) } else { Ok(()) }
}

/// The 4-byte big-endian length prefix of a frame (the caller checked `len` against the limit).
fn frame_header(len: usize) -> [u8; 4] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

/// The frame length a header announces, refused above `max`.
fn parse_header(header: [u8; 4], max: usize) -> Result<usize, TransportError> {
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    check_len(len, max)?;
    Ok(len)
}

async fn write_frame(stream: &mut quinn::SendStream, frame: &Bytes) -> Result<(), quinn::WriteError> {
    let header = Bytes::copy_from_slice(&frame_header(frame.len()));
    stream.write_all_chunks(&mut [header, frame.clone()]).await
}

/// Reads one frame; `None` when the stream ended cleanly between frames.
async fn read_frame(stream: &mut quinn::RecvStream, max: usize) -> Result<Option<Bytes>, TransportError> {
    let mut header = [0u8; 4];
    match stream.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(TransportError::Truncated),
        Err(quinn::ReadExactError::ReadError(error)) => return Err(error.into()),
    }
    let len = parse_header(header, max)?;
    let mut body = vec![0u8; len];
    match stream.read_exact(&mut body).await {
        Ok(()) => Ok(Some(Bytes::from(body))),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(TransportError::Truncated),
        Err(quinn::ReadExactError::ReadError(error)) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::cluster::credentials::tests::cluster;
    use crate::cluster::message::{ClusterReply, ClusterRequest, ForwardedBroadcast, ReplyBody, RequestOp};
    use crate::rooms::{Broadcast, BroadcastFlags, EncodedPacket, Selector};
    use crate::socketio::SocketsOp;

    const WAIT: Duration = Duration::from_secs(10);

    fn config() -> TransportConfig {
        let mut config = TransportConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.connect_timeout = Duration::from_secs(3);
        config.idle_timeout = Duration::from_secs(3);
        config.keep_alive = Duration::from_millis(500);
        config.backoff_initial = Duration::from_millis(20);
        config.backoff_max = Duration::from_millis(200);
        config
    }

    fn node(credentials: &NodeCredentials) -> (Transport, mpsc::Receiver<Incoming>) {
        Transport::bind(config(), credentials.clone()).expect("bind")
    }

    fn broadcast(origin: NodeId, sequence: u64) -> Message {
        Message::Broadcast(ForwardedBroadcast {
            origin,
            sequence,
            broadcast: Broadcast {
                selector: Selector::namespace("/").to("room"),
                flags: BroadcastFlags::default(),
                packet: EncodedPacket {
                    text: Bytes::from(format!("42[\"n\",{sequence}]")),
                    attachments: vec![Bytes::from(vec![7u8; (sequence % 5) as usize])],
                },
                offset: None,
            },
        })
    }

    fn fetch(request_id: u64) -> Message {
        Message::Request(ClusterRequest {
            request_id,
            timeout: Duration::from_secs(1),
            op: RequestOp::Sockets { selector: Selector::namespace("/"), op: SocketsOp::Fetch },
        })
    }

    /// The next ordered message, skipping link events and answering requests with the node id.
    async fn next_message(inbox: &mut mpsc::Receiver<Incoming>) -> (NodeId, Message) {
        loop {
            match tokio::time::timeout(WAIT, inbox.recv()).await.expect("a message in time").expect("inbox open") {
                Incoming::Message { from, message } => return (from, message),
                Incoming::Request { responder, .. } => drop(responder),
                Incoming::PeerUp { .. } | Incoming::PeerDown { .. } => {}
            }
        }
    }

    /// Answers every request with `Done { affected: node id * 1000 + request id }` and forwards
    /// ordered messages to the returned channel.
    fn serve(
        node_id: NodeId,
        mut inbox: mpsc::Receiver<Incoming>,
    ) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<(NodeId, Message)>) {
        let (seen, messages) = mpsc::channel(100_000);
        let task = tokio::spawn(async move {
            while let Some(incoming) = inbox.recv().await {
                match incoming {
                    Incoming::Request { message: Message::Request(request), responder, .. } => {
                        let reply = Message::Reply(ClusterReply {
                            request_id: request.request_id,
                            result: ReplyBody::Done { affected: node_id * 1000 + request.request_id },
                        });
                        responder.reply(&reply).await.expect("reply");
                    }
                    Incoming::Message { from, message } => {
                        let _ = seen.send((from, message)).await;
                    }
                    _ => {}
                }
            }
        });
        (task, messages)
    }

    fn sequence_of(message: &Message) -> u64 {
        match message {
            Message::Broadcast(forwarded) => forwarded.sequence,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn lower_initiator_wins_and_both_ends_agree() {
        let key = |initiator, incarnation| LinkKey { initiator, incarnation };
        // Simultaneous dials between 1 and 2, both still dialing when the other's arrives.
        assert!(prefer_new(None, true, key(1, 10), 2), "2 accepts 1's dial");
        assert!(!prefer_new(None, true, key(2, 20), 1), "1 refuses 2's dial");
        // One end already has the other's link when its own dial completes.
        assert!(!prefer_new(Some(key(1, 10)), false, key(2, 10), 2));
        assert!(prefer_new(Some(key(2, 20)), false, key(1, 20), 1));
        // Nothing in the way.
        assert!(prefer_new(None, false, key(2, 20), 1));
        // The same initiator redials: it gave up on the old link.
        assert!(prefer_new(Some(key(2, 20)), false, key(2, 20), 1));
        // A restarted peer replaces its old link; a stale incarnation never wins.
        assert!(prefer_new(Some(key(1, 20)), false, key(2, 21), 1));
        assert!(!prefer_new(Some(key(1, 21)), false, key(1, 20), 2));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let nominal: Vec<_> = (0..5).map(|_| backoff.step()).collect();
        assert_eq!(nominal, [100, 200, 400, 500, 500].map(Duration::from_millis));
        backoff.reset();
        for expected in [100, 200, 400, 500] {
            let delay = backoff.next_delay();
            assert!(
                delay >= Duration::from_millis(expected / 2) && delay <= Duration::from_millis(expected),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn frame_headers_are_bounded() {
        assert_eq!(frame_header(258), [0, 0, 1, 2]);
        assert_eq!(parse_header([0, 0, 1, 2], 1024).expect("fits"), 258);
        assert!(matches!(
            parse_header([0, 0, 4, 1], 1024),
            Err(TransportError::FrameTooLarge { len: 1025, max: 1024 })
        ));
        assert!(matches!(parse_header([0xff; 4], usize::MAX), Ok(len) if len == u32::MAX as usize));
    }

    #[test]
    fn invalid_configuration_is_refused() {
        let mut bad = config();
        bad.keep_alive = bad.idle_timeout;
        assert!(matches!(bad.validate(), Err(TransportError::Config(_))));
        let mut bad = config();
        bad.max_frame_bytes = 0;
        assert!(bad.validate().is_err());
        config().validate().expect("defaults are valid");
    }

    #[tokio::test]
    async fn two_nodes_exchange_ordered_messages_and_requests() {
        let (_dir, creds) = cluster("t2", &[1, 2]);
        let (a, mut a_in) = node(&creds[0]);
        let (b, mut b_in) = node(&creds[1]);
        a.connect(b.local_addr().expect("addr"), 2).await.expect("connect");

        for sequence in 0..500 {
            a.send(2, &a.encode(&broadcast(1, sequence)).expect("encode")).await.expect("send");
        }
        for expected in 0..500 {
            let (from, message) = next_message(&mut b_in).await;
            assert_eq!(from, 1);
            assert_eq!(sequence_of(&message), expected);
        }
        // B learned A's address from its Hello and can send back on the same link.
        b.send(1, &b.encode(&broadcast(2, 0)).expect("encode")).await.expect("send back");
        assert_eq!(next_message(&mut a_in).await.0, 2);
        assert_eq!(a.peers().len(), 1);
        assert_eq!(b.peers()[0].addr, Some(a.local_addr().expect("addr")));

        // Requests both ways, concurrently.
        let (b_server, _) = serve(2, b_in);
        let (a_server, _) = serve(1, a_in);
        let mut replies = Vec::new();
        for id in 0..20 {
            let (a, b) = (a.clone(), b.clone());
            replies.push(tokio::spawn(async move {
                let to_b = a.request(2, &fetch(id), WAIT).await.expect("request to b");
                let to_a = b.request(1, &fetch(id), WAIT).await.expect("request to a");
                (id, to_b, to_a)
            }));
        }
        for reply in replies {
            let (id, to_b, to_a) = reply.await.expect("task");
            let done = |affected| Message::Reply(ClusterReply { request_id: id, result: ReplyBody::Done { affected } });
            assert_eq!(to_b, done(2000 + id));
            assert_eq!(to_a, done(1000 + id));
        }
        a.shutdown(Duration::from_secs(2)).await;
        b.shutdown(Duration::from_secs(2)).await;
        b_server.abort();
        a_server.abort();
    }

    #[tokio::test]
    async fn three_nodes_keep_per_origin_order() {
        let (_dir, creds) = cluster("t3", &[1, 2, 3]);
        let nodes: Vec<_> = creds.iter().map(node).collect();
        let addrs: Vec<_> = nodes.iter().map(|(t, _)| t.local_addr().expect("addr")).collect();
        // Every node dials every other at the same time: duplicate dials must resolve to one link.
        let mut dials = Vec::new();
        for (i, (transport, _)) in nodes.iter().enumerate() {
            for (j, addr) in addrs.iter().enumerate() {
                if i != j {
                    let transport = transport.clone();
                    let (addr, id) = (*addr, j as NodeId + 1);
                    dials.push(tokio::spawn(async move { transport.connect(addr, id).await }));
                }
            }
        }
        for dial in dials {
            dial.await.expect("task").expect("connect");
        }
        let (transports, inboxes): (Vec<_>, Vec<_>) = nodes.into_iter().unzip();
        let (servers, mut seen): (Vec<_>, Vec<_>) =
            inboxes.into_iter().enumerate().map(|(i, inbox)| serve(i as NodeId + 1, inbox)).unzip();

        const N: u64 = 300;
        for sequence in 0..N {
            for (i, transport) in transports.iter().enumerate() {
                let origin = i as NodeId + 1;
                let frame = transport.encode(&broadcast(origin, sequence)).expect("encode");
                for peer in (1..=3).filter(|&p| p != origin) {
                    transport.send(peer, &frame).await.expect("send");
                }
            }
        }
        // Requests still work alongside.
        for (i, transport) in transports.iter().enumerate() {
            for peer in (1..=3).filter(|&p| p != i as NodeId + 1) {
                let reply = transport.request(peer, &fetch(9), WAIT).await.expect("request");
                assert_eq!(
                    reply,
                    Message::Reply(ClusterReply {
                        request_id: 9,
                        result: ReplyBody::Done { affected: peer * 1000 + 9 }
                    })
                );
            }
        }
        for transport in &transports {
            let peers = transport.peers();
            assert_eq!(peers.len(), 2);
            for peer in peers {
                assert!(peer.connected, "{} -> {}", transport.node_id(), peer.node_id);
            }
        }
        for (i, messages) in seen.iter_mut().enumerate() {
            let me = i as NodeId + 1;
            let mut per_origin: HashMap<NodeId, Vec<u64>> = HashMap::new();
            for _ in 0..2 * N {
                let (from, message) =
                    tokio::time::timeout(WAIT, messages.recv()).await.expect("in time").expect("server running");
                per_origin.entry(from).or_default().push(sequence_of(&message));
            }
            for origin in (1..=3).filter(|&o| o != me) {
                assert_eq!(per_origin[&origin], (0..N).collect::<Vec<_>>(), "node {me} from {origin}");
            }
        }
        for transport in &transports {
            transport.shutdown(Duration::from_secs(2)).await;
        }
        for server in servers {
            server.abort();
        }
    }

    #[tokio::test]
    async fn a_node_with_another_cas_certificate_is_refused() {
        let (_ours, creds) = cluster("ca-ours", &[1, 2]);
        let (_theirs, foreign) = cluster("ca-theirs", &[3, 2]);
        let (a, mut a_in) = node(&creds[0]);
        let (intruder, mut intruder_in) = node(&foreign[1]);
        let mut short = config();
        short.connect_timeout = Duration::from_millis(500);

        // The intruder dials A: A's certificate is not from the intruder's CA and vice versa.
        let refused = intruder.connect(a.local_addr().expect("addr"), 1).await;
        assert!(matches!(refused, Err(TransportError::Timeout)), "{refused:?}");
        // A dials the intruder.
        let refused =
            tokio::time::timeout(Duration::from_millis(800), a.connect(intruder.local_addr().expect("addr"), 2)).await;
        assert!(!matches!(refused, Ok(Ok(()))), "{refused:?}");
        assert!(a.peers().iter().all(|p| !p.connected));
        assert!(intruder.peers().iter().all(|p| !p.connected));
        // Nothing was delivered to either side.
        assert!(a_in.try_recv().is_err());
        assert!(intruder_in.try_recv().is_err());
        a.shutdown(Duration::from_secs(1)).await;
        intruder.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_dropped_link_is_redialed_and_queued_frames_survive() {
        let (_dir, creds) = cluster("redial", &[1, 2]);
        let (a, _a_in) = node(&creds[0]);
        let (b, mut b_in) = node(&creds[1]);
        a.connect(b.local_addr().expect("addr"), 2).await.expect("connect");
        a.send(2, &a.encode(&broadcast(1, 0)).expect("encode")).await.expect("send");
        assert_eq!(sequence_of(&next_message(&mut b_in).await.1), 0);

        a.break_link(2);
        for sequence in 1..50 {
            a.send(2, &a.encode(&broadcast(1, sequence)).expect("encode")).await.expect("send");
        }
        let mut got = Vec::new();
        let mut saw_down = false;
        while got.len() < 49 {
            match tokio::time::timeout(WAIT, b_in.recv()).await.expect("in time").expect("open") {
                Incoming::Message { message, .. } => got.push(sequence_of(&message)),
                Incoming::PeerDown { peer } => {
                    assert_eq!(peer, 1);
                    saw_down = true;
                }
                _ => {}
            }
        }
        // Frames queued after the break arrive once each, in order (some written just before
        // the close may be lost: the transport is at most once across link failures).
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        assert_eq!(got.last(), Some(&49));
        assert!(saw_down || a.peers()[0].connected);
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_restarted_peer_is_redialed_at_its_address() {
        let (_dir, creds) = cluster("restart", &[1, 2]);
        let (a, mut a_in) = node(&creds[0]);
        let (b, b_in) = node(&creds[1]);
        let b_addr = b.local_addr().expect("addr");
        a.connect(b_addr, 2).await.expect("connect");
        let first_incarnation = b.hello().incarnation;
        b.shutdown(Duration::from_secs(1)).await;
        drop((b, b_in));

        // B comes back on the same address with a new incarnation; A redials on its own.
        let mut restarted = config();
        restarted.listen = b_addr;
        restarted.incarnation = first_incarnation + 1;
        // The old endpoint's socket closes once its driver notices the last handle is gone.
        let mut rebound = Transport::bind(restarted.clone(), creds[1].clone());
        for _ in 0..50 {
            if rebound.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            rebound = Transport::bind(restarted.clone(), creds[1].clone());
        }
        let (b, mut b_in) = rebound.expect("rebind");
        loop {
            match tokio::time::timeout(WAIT, a_in.recv()).await.expect("in time").expect("open") {
                Incoming::PeerUp { peer: 2, hello } if hello.incarnation == first_incarnation + 1 => break,
                _ => {}
            }
        }
        a.send(2, &a.encode(&broadcast(1, 7)).expect("encode")).await.expect("send");
        assert_eq!(sequence_of(&next_message(&mut b_in).await.1), 7);
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_before_sending() {
        let (_dir, creds) = cluster("big", &[1, 2]);
        let mut small = config();
        small.max_frame_bytes = 1024;
        let (a, _a_in) = Transport::bind(small, creds[0].clone()).expect("bind");
        let mut message = broadcast(1, 0);
        if let Message::Broadcast(forwarded) = &mut message {
            forwarded.broadcast.packet.attachments = vec![Bytes::from(vec![0u8; 2048])];
        }
        assert!(matches!(a.encode(&message), Err(TransportError::FrameTooLarge { .. })));
        assert!(matches!(
            a.try_send(2, &a.encode(&broadcast(1, 0)).expect("small")),
            Err(TransportError::UnknownPeer(2))
        ));
        assert!(matches!(a.connect(a.local_addr().expect("addr"), 1).await, Err(TransportError::SelfPeer(1))));
        a.shutdown(Duration::from_secs(1)).await;
    }
}
