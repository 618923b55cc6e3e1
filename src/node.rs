//! A running ioswarm node: what the `ioswarm` binary starts and stops.
//!
//! [`Node::start`] turns a validated [`Config`] into a serving node: it raises the open-file
//! limit, installs the metrics recorder, loads the TLS certificates (reloaded on SIGHUP),
//! builds the Socket.IO server with the built-in application, binds the Socket.IO, admin and
//! Redis-protocol listeners, and starts or joins the cluster. [`Node::shutdown`] is the one shutdown sequence, bounded by `shutdown_grace_ms` from
//! the moment it is called:
//!
//! 1. **drain**: `/healthz` answers 503 at once while everything else keeps serving for
//!    `drain_ms`, so a load balancer takes the node out before its clients are closed;
//! 2. **close clients**: new Engine.IO sessions are refused and the open ones are closed, spread
//!    evenly over `drain_spread_ms` (clients reconnect elsewhere, not all in one millisecond);
//!    the node is still a cluster member, so broadcasts from any node keep reaching the clients
//!    that are still connected;
//! 3. **hand over the recoverable sessions** (connection state recovery): the sessions of the
//!    clients just closed, and those still kept from earlier disconnections, go to the live
//!    peers, so that the clients that reconnect elsewhere still get them back;
//! 4. **close the Redis port** (its connections are closed once their queued replies are
//!    written), then **leave the cluster** (raft membership, goodbye to the peers), once no
//!    client is left here: a PUBLISH this node answered after leaving would reach nobody;
//! 5. **stop** the other listeners (Socket.IO, admin) and wait for every task.
//!
//! Each step gets what is left of the deadline; a step that overruns is cut short and logged,
//! and the node still exits at the deadline.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::AdminOptions;
use crate::app::{AdminApi, AppOptions};
use crate::cluster::gossip::GossipConfig;
use crate::cluster::node::{ClusterNode, NodeSettings};
use crate::cluster::raft::{RaftNode, RaftSettings};
use crate::cluster::{NodeCredentials, Transport, TransportConfig};
use crate::config::{Config, LogFormat};
use crate::engineio::{Cors, EngineConfig};
use crate::http::{ListenerLimits, Router};
use crate::presence::{Presence, PresenceKv};
use crate::resp::kv::{KvBackend, KvLimits, LocalKv};
use crate::resp::{Broker, RedisConfig};
use crate::shutdown::Shutdown;
use crate::socketio::{NamespacePolicy, Server, SocketIoConfig};

/// How long a node keeps trying its `--join` addresses before giving up.
const JOIN_DEADLINE: Duration = Duration::from_secs(60);
/// Accept backlog of the Socket.IO listener: thousands of clients reconnecting at once must not
/// see their SYNs dropped.
const SOCKETIO_BACKLOG: u32 = 4096;
/// Of what is left of the deadline when the clients are being closed, the share kept for
/// leaving the cluster and stopping the listeners.
const LEAVE_SHARE: f64 = 0.5;
/// Of what is left of the deadline once the clients are closed, the share the hand-over of the
/// recoverable sessions may take.
const HANDOFF_SHARE: f64 = 0.3;
/// Share of what is left of the shutdown deadline the Redis port's connections get to close (each
/// writes its queued replies first, for at most a second).
const REDIS_SHARE: f64 = 0.2;
/// How often kept sessions past their window, and broadcasts too old to replay, are dropped.
const RECOVERY_EXPIRY_PERIOD: Duration = Duration::from_secs(1);

/// Why a node could not start. Each message names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound (address in use, not permitted, ...).
    #[error("binding the {listener} listener on {addr}: {source}")]
    Bind {
        /// Which listener: `socketio`, `admin` or `redis`.
        listener: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The open-file limit could not be read.
    #[error("reading the open-file limit: {0}")]
    OpenFiles(std::io::Error),
    /// The Prometheus recorder could not be installed.
    #[error("installing the metrics recorder: {0}")]
    Metrics(String),
    /// Starting or joining the cluster failed.
    #[error("{0}")]
    Cluster(String),
    /// The room rules are invalid (a configuration that did not go through `config::load`).
    #[error(transparent)]
    Rules(#[from] crate::rules::RuleError),
    /// The `[[forward]]` rules are invalid (a configuration that did not go through
    /// `config::load`) or a webhook client could not be built.
    #[error(transparent)]
    Forward(#[from] crate::forward::ForwardError),
    /// The `[auth]` checks could not be set up (key file, connect hook client).
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The `--static` folder could not be opened (removed since the configuration was checked).
    #[error("serving --static {dir}: {source}")]
    Static {
        /// The configured folder.
        dir: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A TLS certificate or key (`tls_cert`, `redis_tls_key`, ...) is unreadable or invalid.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The SIGHUP handler (certificate reload) could not be installed.
    #[error("installing the SIGHUP handler (TLS certificate reload): {0}")]
    Signal(std::io::Error),
}

/// The addresses a started node is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddrs {
    /// Socket.IO (HTTP and WebSocket).
    pub socketio: SocketAddr,
    /// Admin API and metrics.
    pub admin: SocketAddr,
    /// Redis-protocol broker.
    pub redis: SocketAddr,
    /// Cluster QUIC endpoint and node id, on a cluster node.
    pub cluster: Option<(SocketAddr, u64)>,
}

/// A serving node; see the module documentation.
#[derive(Debug)]
pub struct Node {
    config: Config,
    io: Server,
    cluster: Option<ClusterNode>,
    shutdown: Shutdown,
    draining: CancellationToken,
    redis_stop: RedisStop,
    addrs: NodeAddrs,
}

impl Node {
    /// Starts a node with `config` (already validated by [`crate::config::load`]). Returns once
    /// every listener is bound and, on a cluster node, the node is a member.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let (soft, hard) = crate::limits::raise_nofile_limit().map_err(StartError::OpenFiles)?;
        let capacity = crate::limits::max_connections(config.max_connections, soft);
        tracing::info!(
            soft,
            hard,
            capacity,
            "open-file limit raised; this node can hold {capacity} client connections"
        );
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        let metrics = metrics_handle()?;
        // The certificate files are read and checked before anything is bound.
        let socketio_tls = config
            .tls_files()
            .map(|files| crate::tls::ServerTls::load(files, &[b"http/1.1"], "socketio"))
            .transpose()?;
        let redis_tls =
            config.redis_tls_files().map(|files| crate::tls::ServerTls::load(files, &[], "redis")).transpose()?;

        let io = Server::new(socketio_config(&config, capacity));
        // Namespaces known up front exist (fully configured) before any client connects;
        // others are created on demand, configured first.
        if config.namespaces.is_empty() {
            io.of("/");
        }
        for name in &config.namespaces {
            io.of(name);
        }
        let auth = crate::auth::Authenticator::from_config(&config.auth)?.map(Arc::new);
        let broker = Arc::new(Broker::new());
        let forward = crate::forward::Forwarder::new(&config.forward, Some(broker.clone()), config.node_id)?;
        crate::app::install(
            &io,
            AppOptions {
                auth_token: config.auth_token.clone(),
                rooms: crate::rules::RoomRules::new(&config.rooms, config.client_rooms)?,
                auth,
                client_relay: config.client_relay,
                forward,
            },
        );
        broker.set_publish_hook(crate::emitter::bridge(io.clone()));
        let router = with_pages(socketio_router(&config, &io), &config)?;

        let bind_err = |listener, addr| move |source| StartError::Bind { listener, addr, source };
        let socketio =
            crate::net::bind(config.listen, SOCKETIO_BACKLOG).map_err(bind_err("socketio", config.listen))?;
        let admin = TcpListener::bind(config.admin_listen).await.map_err(bind_err("admin", config.admin_listen))?;
        let redis = TcpListener::bind(config.redis_listen).await.map_err(bind_err("redis", config.redis_listen))?;
        let local = |l: &TcpListener, name, addr| l.local_addr().map_err(bind_err(name, addr));
        let mut addrs = NodeAddrs {
            socketio: local(&socketio, "socketio", config.listen)?,
            admin: local(&admin, "admin", config.admin_listen)?,
            redis: local(&redis, "redis", config.redis_listen)?,
            cluster: None,
        };

        let cluster = match config.node_id {
            Some(node_id) => Some(start_cluster(&config, node_id, &io, &broker).await?),
            None => None,
        };
        if let Some(node) = &cluster {
            let addr = node.transport().local_addr().map_err(|e| StartError::Cluster(e.to_string()))?;
            addrs.cluster = Some((addr, node.id()));
        }

        let shutdown = Shutdown::new();
        let draining = CancellationToken::new();
        if io.recovery_enabled() {
            shutdown.spawn(expire_recovery(io.clone(), shutdown.token().clone()));
        }
        let presence = Presence::new(io.clone(), config.presence.clone());
        let mut kv: Option<Arc<dyn KvBackend>> = cluster.as_ref().map(|c| Arc::new(c.raft().clone()) as _);
        if presence.is_enabled() {
            if let Some(node) = &cluster {
                presence.set_cluster(node.clone());
            }
            let inner = kv.unwrap_or_else(|| {
                let limits = KvLimits { max_value_bytes: RedisConfig::default().max_bulk_len, ..KvLimits::default() };
                Arc::new(LocalKv::new(limits))
            });
            kv = Some(Arc::new(PresenceKv::new(inner, presence.clone())));
            shutdown.spawn(presence.clone().run(shutdown.token().clone()));
        }
        let tls_certs: Vec<_> = socketio_tls.iter().chain(&redis_tls).cloned().collect();
        if !tls_certs.is_empty() {
            // Installed now, before the ready line, so that no SIGHUP ends the process.
            let hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(StartError::Signal)?;
            shutdown.spawn(crate::tls::reload_on_sighup(hangup, tls_certs, shutdown.token().clone()));
        }
        let redis_config =
            RedisConfig { requirepass: config.requirepass.clone(), kv, tls: redis_tls, ..RedisConfig::default() };
        // The Redis port has its own stop and tasks: it closes before the node leaves the cluster.
        let redis_stop = RedisStop { token: shutdown.token().child_token(), tasks: TaskTracker::new() };
        let broker_for_scrape = broker.clone();
        shutdown.spawn(crate::resp::serve(
            redis,
            broker,
            redis_config,
            redis_stop.token.clone(),
            redis_stop.tasks.clone(),
        ));
        let limits = ListenerLimits { max_connections: capacity, ..ListenerLimits::default() };
        shutdown.spawn(crate::http::serve(
            socketio,
            router,
            limits,
            socketio_tls,
            shutdown.token().clone(),
            shutdown.tracker().clone(),
        ));
        let api = match &cluster {
            Some(node) => AdminApi::with_cluster(io.clone(), node.clone()),
            None => AdminApi::new(io.clone()),
        }
        .with_presence(presence);
        let sample = sample_gauges(io.clone(), broker_for_scrape, cluster.as_ref().map(|n| n.transport().clone()));
        let options =
            AdminOptions { token: config.admin_token.clone(), draining: draining.clone(), sample: Some(sample) };
        shutdown.spawn(crate::admin::serve(admin, metrics, Arc::new(api), options, shutdown.token().clone()));
        tracing::info!(
            socketio = %addrs.socketio, admin = %addrs.admin, redis = %addrs.redis, path = %config.path,
            "ioswarm node ready"
        );
        Ok(Node { config, io, cluster, shutdown, draining, redis_stop, addrs })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> &NodeAddrs {
        &self.addrs
    }

    /// The Socket.IO server (for an embedding program's own handlers).
    pub fn io(&self) -> &Server {
        &self.io
    }

    /// The one line the binary prints on stdout once the node serves, for scripts:
    /// `ioswarm ready socketio=ADDR admin=ADDR redis=ADDR[ cluster=ADDR node_id=N]`.
    pub fn ready_line(&self) -> String {
        let NodeAddrs { socketio, admin, redis, cluster } = &self.addrs;
        let mut line = format!("ioswarm ready socketio={socketio} admin={admin} redis={redis}");
        if let Some((addr, id)) = cluster {
            line.push_str(&format!(" cluster={addr} node_id={id}"));
        }
        line
    }

    /// Runs the shutdown sequence (see the module documentation) within `shutdown_grace_ms`.
    /// Returns `true` when every step finished before the deadline.
    pub async fn shutdown(self) -> bool {
        let deadline = Instant::now() + self.config.shutdown_grace();
        let Node { config, io, cluster, shutdown, draining, redis_stop, .. } = self;

        draining.cancel();
        tracing::info!(drain_ms = config.drain_ms, "draining: /healthz answers 503, still serving");
        tokio::time::sleep(config.drain()).await;

        let sockets = io.namespaces().iter().map(|ns| ns.socket_count()).sum::<usize>();
        tracing::info!(sockets, spread_ms = config.drain_spread_ms, "closing client connections");
        io.close_spread(config.drain_spread()).await;
        // A cluster node keeps a share of what is left for leaving the cluster.
        let left = deadline.saturating_duration_since(Instant::now());
        let share = if cluster.is_some() { 1.0 - LEAVE_SHARE } else { 1.0 };
        let clients_by = Instant::now() + left.mul_f64(share);
        let mut on_time = tokio::time::timeout_at(clients_by, io.shutdown()).await.is_ok();
        if !on_time {
            tracing::warn!("client connections still closing; going on to leave the cluster");
        }

        // Emitters and Redis clients are told the node is going (their connections close) while
        // it is still a member, so that nothing it answers from now on is lost.
        let left = deadline.saturating_duration_since(Instant::now());
        on_time &= redis_stop.stop(left.mul_f64(REDIS_SHARE)).await;

        if let Some(node) = &cluster {
            // The clients are closed and their sessions kept: the peers take them (recoveries
            // asked of this node until now were answered by it).
            let sessions = io.export_recovery();
            if !sessions.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                node.hand_off_sessions(&io, sessions, left.mul_f64(HANDOFF_SHARE)).await;
            }
            // Leave after the clients are gone: until then the peers keep forwarding here.
            let left = deadline.saturating_duration_since(Instant::now());
            node.shutdown(left.mul_f64(LEAVE_SHARE)).await;
        }

        let left = deadline.saturating_duration_since(Instant::now());
        on_time &= shutdown.shutdown(left).await;
        if on_time {
            tracing::info!("bye");
        } else {
            tracing::warn!("the shutdown deadline (shutdown_grace_ms) passed with work still running");
        }
        on_time
    }
}

/// The Redis-protocol listener's own stop: cancelled, it stops accepting and closes its
/// connections; [`RedisStop::stop`] waits for them.
#[derive(Debug)]
struct RedisStop {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl RedisStop {
    /// Closes the Redis port and its connections; returns whether they closed within `within`.
    async fn stop(&self, within: Duration) -> bool {
        self.token.cancel();
        self.tasks.close();
        let closed = tokio::time::timeout(within, self.tasks.wait()).await.is_ok();
        if closed {
            tracing::info!("redis protocol port closed");
        } else {
            tracing::warn!("redis protocol connections still closing; going on");
        }
        closed
    }
}

/// Drops expired recoverable sessions and old broadcasts every [`RECOVERY_EXPIRY_PERIOD`] (the
/// recovery operations also do it on their way; this frees them on an idle node too).
async fn expire_recovery(io: Server, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(RECOVERY_EXPIRY_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => io.expire_recovery(),
        }
    }
}

/// The process-wide Prometheus recorder, installed by the first node of the process.
fn metrics_handle() -> Result<PrometheusHandle, StartError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = crate::metrics::install_recorder().map_err(|e| StartError::Metrics(e.to_string()))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Installs the global `tracing` subscriber: `config.log` as the filter, text or one JSON object
/// per line (`config.log_format`), on stderr (stdout carries only the ready line); ANSI colours
/// only when stderr is a terminal.
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a pipe or a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// The router of the Socket.IO listener: the server at `config.path`, behind the cross-site
/// (Origin) guard when a browser's cookie can authenticate a client.
fn socketio_router(config: &Config, io: &Server) -> Router {
    if !config.auth.cookie_can_authenticate() {
        return Router::new().route(&config.path, io.clone());
    }
    let origins = config.auth.origins(&config.cors_origin);
    if origins.is_empty() && config.static_dir.is_none() {
        tracing::warn!(
            "[auth] lets cookies authenticate but no origin is allowed (auth.allowed_origins, or cors_origin \
             without \"*\"): every browser handshake from a page this node does not serve is refused"
        );
    }
    // The pages this listener serves itself (`--static`) have its own origin.
    let scheme = if config.tls_cert.is_some() { "https" } else { "http" };
    let guard = crate::auth::OriginGuard::new(io.clone(), crate::auth::OriginPolicy::new(origins, scheme));
    Router::new().route(&config.path, guard)
}

/// Adds the pages to the Socket.IO router: the client bundle at `<path>socket.io.js` (and its
/// `.map`), exact routes next to the Socket.IO path, and the `--static` folder for every other
/// path. The Socket.IO path keeps precedence.
fn with_pages(mut router: Router, config: &Config) -> Result<Router, StartError> {
    if let Some(bundle) = &config.client_bundle {
        let mut map = bundle.clone().into_os_string();
        map.push(".map");
        let path = format!("{}socket.io.js", config.path);
        router = router
            .route(&path, crate::statics::StaticFile::new(bundle))
            .route(&format!("{path}.map"), crate::statics::StaticFile::new(std::path::Path::new(&map)));
    }
    if let Some(dir) = &config.static_dir {
        let pages =
            crate::statics::StaticDir::new(dir).map_err(|source| StartError::Static { dir: dir.clone(), source })?;
        router = router.fallback(pages);
    }
    Ok(router)
}

/// The Socket.IO server's settings from the node's configuration.
fn socketio_config(config: &Config, capacity: usize) -> SocketIoConfig {
    let cors = match config.cors_origin.as_slice() {
        [] => Cors::Disabled,
        list if list.iter().any(|o| o == "*") => Cors::Any,
        list => Cors::Origins(list.to_vec()),
    };
    let namespaces = if config.namespaces.is_empty() {
        NamespacePolicy::Any
    } else {
        NamespacePolicy::Allow(config.namespaces.clone())
    };
    SocketIoConfig {
        engine: EngineConfig {
            ping_interval: config.ping_interval(),
            ping_timeout: config.ping_timeout(),
            upgrade_timeout: config.upgrade_timeout(),
            max_payload: config.max_payload,
            send_queue_max_packets: config.send_queue_max_packets,
            send_queue_max_bytes: config.send_queue_max_bytes,
            volatile_drop_bytes: config.volatile_drop_bytes,
            max_sessions: capacity,
            allow_upgrades: true,
            cors,
            allow_eio3: config.allow_eio3,
            // Set by `Server::new` from `node_tag` below.
            node_tag: 0,
        },
        connect_timeout: config.connect_timeout(),
        ack_timeout: config.ack_timeout(),
        max_attachments: config.max_attachments,
        max_rooms_per_socket: config.max_rooms_per_socket,
        namespaces,
        // Socket and session ids carry the node id, so other nodes route a socket's own room and
        // a session's requests to it.
        node_tag: config.node_id.map_or(0, |id| u32::try_from(id & 0x00ff_ffff).unwrap_or(0)),
        recovery: config.recovery(),
        ..SocketIoConfig::default()
    }
}

/// Binds the cluster endpoint, starts raft and the runtime, then bootstraps a new cluster (no
/// `--join`) or joins through the `--join` addresses.
/// What `/metrics` samples on each read (see [`crate::metrics::Sampled`]): the runtime's tasks
/// and global queue, the sessions' send queues, the subscribers' output buffers, the queues to
/// the cluster's peers.
fn sample_gauges(
    io: Server,
    broker: Arc<Broker>,
    transport: Option<crate::cluster::transport::Transport>,
) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || {
        let (tasks, runtime_queue) = crate::metrics::Sampled::runtime();
        crate::metrics::Sampled {
            tasks,
            runtime_queue,
            engine_queued: io.engine().queued(),
            redis_output_bytes: broker.subscriber_output_bytes(),
            peer_queues: transport.as_ref().map(crate::cluster::transport::Transport::queue_depths).unwrap_or_default(),
        }
        .record();
    })
}

async fn start_cluster(
    config: &Config,
    node_id: u64,
    io: &Server,
    broker: &Arc<Broker>,
) -> Result<ClusterNode, StartError> {
    let fail = |what: String| move |err: &dyn std::fmt::Display| StartError::Cluster(format!("{what}: {err}"));
    let (Some(listen), Some(dir)) = (config.cluster_listen, config.cluster_credentials.as_ref()) else {
        return Err(StartError::Cluster("node_id needs cluster_listen and cluster_credentials".to_owned()));
    };
    let credentials = NodeCredentials::load(dir, node_id)
        .map_err(|e| fail(format!("loading the cluster credentials from {}", dir.display()))(&e))?;
    let mut transport_config = TransportConfig::new(listen);
    transport_config.advertise.clone_from(&config.advertise);
    transport_config.peer_queue_capacity = 16 * 1024;
    // Relayed Engine.IO requests and tunnels get their own streams on top of the other requests'.
    let relay = u32::try_from(config.cluster_relay_max_in_flight).unwrap_or(u32::MAX);
    transport_config.max_concurrent_requests = transport_config.max_concurrent_requests.saturating_add(relay);
    // A relayed poll answer carries a client's whole send queue (binary as base64); a relayed
    // POST, up to max_payload.
    let relayed =
        config.send_queue_max_bytes.saturating_mul(2).saturating_add(config.max_payload).saturating_add(64 << 10);
    transport_config.max_frame_bytes =
        transport_config.max_frame_bytes.max(relayed).min(usize::try_from(u32::MAX).unwrap_or(usize::MAX));
    let (transport, incoming) = Transport::bind(transport_config, credentials)
        .map_err(|e| fail(format!("binding the cluster endpoint {listen}"))(&e))?;
    let advertise = transport.hello().advertise_addr.clone();
    // A node that left gracefully starts with no raft state; bootstrapping from there would found
    // a second cluster next to the one it left (split brain), so it must rejoin.
    let left = config.data_dir.join("raft").join("left");
    if config.join.is_empty() && left.exists() {
        return Err(StartError::Cluster(format!(
            "this node left its cluster when it last stopped ({} exists): start it with --join <a member> to \
             rejoin, or remove {} to bootstrap a new cluster",
            left.display(),
            config.data_dir.display()
        )));
    }
    let mut raft_settings = RaftSettings::new(node_id, advertise.clone(), config.data_dir.clone());
    raft_settings.max_batch = config.kv_batch_max;
    raft_settings.forwards_in_flight = config.kv_forwards_in_flight;
    let raft = RaftNode::start(raft_settings, transport.clone())
        .await
        .map_err(|e| fail(format!("starting raft with data dir {}", config.data_dir.display()))(&e))?;
    let settings = NodeSettings {
        timeout: config.cluster_timeout(),
        gossip: GossipConfig::default(),
        relay_max_in_flight: config.cluster_relay_max_in_flight,
    };
    let node = ClusterNode::start(settings, transport.clone(), incoming, raft.clone(), io.clone(), broker.clone());
    if config.join.is_empty() {
        let created = raft.initialize().await.map_err(|e| fail("bootstrapping a new cluster".to_owned())(&e))?;
        tracing::info!(node_id, %advertise, created, "cluster bootstrapped (no --join)");
    } else {
        join(&transport, &raft, &config.join).await?;
        tracing::info!(node_id, %advertise, "joined the cluster");
    }
    Ok(node)
}

/// Tries every `--join` address in turn until one lets this node in, for up to
/// [`JOIN_DEADLINE`].
async fn join(transport: &Transport, raft: &RaftNode, addrs: &[String]) -> Result<(), StartError> {
    let deadline = Instant::now() + JOIN_DEADLINE;
    let mut last_error = String::new();
    loop {
        for addr in addrs {
            match join_one(transport, raft, addr).await {
                Ok(()) => return Ok(()),
                Err(err) => {
                    tracing::warn!(%addr, error = %err, "joining through this member failed");
                    last_error = format!("{addr}: {err}");
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(StartError::Cluster(format!(
                "could not join the cluster within {JOIN_DEADLINE:?}; last error: {last_error}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One attempt to join through the member at `addr`; the error says which step failed.
async fn join_one(transport: &Transport, raft: &RaftNode, addr: &str) -> Result<(), String> {
    let resolved = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let seed = transport.discover(resolved).await.map_err(|e| format!("reaching {addr}: {e}"))?;
    transport.connect(resolved, seed).await.map_err(|e| format!("connecting to node {seed}: {e}"))?;
    raft.join_via(seed).await.map_err(|e| format!("joining through node {seed}: {e}"))?;
    Ok(())
}
