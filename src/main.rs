//! The `ioswarm` node: Socket.IO on `--listen`, the admin API on
//! `--admin-listen`. Configuration: defaults < `--config` TOML file <
//! `IOSWARM_*` environment < command-line flags.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use ioswarm::app::{AdminApi, AppOptions};
use ioswarm::config::{Cli, Command, Config};
use ioswarm::engineio::{Cors, EngineConfig};
use ioswarm::http::{ListenerLimits, Router};
use ioswarm::shutdown::Shutdown;
use ioswarm::socketio::{NamespacePolicy, Server, SocketIoConfig};
use tokio::net::TcpListener;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Cluster { command }) = cli.command.clone() {
        println!("{}", ioswarm::cluster::run_cli(command)?);
        return Ok(());
    }
    let config = ioswarm::config::load(&cli).context("invalid configuration")?;
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(config))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn run(config: Config) -> anyhow::Result<()> {
    let (soft, hard) = ioswarm::limits::raise_nofile_limit().context("raising the open-file limit")?;
    let capacity = ioswarm::limits::max_connections(config.max_connections, soft);
    tracing::info!(soft, hard, capacity, "open-file limit raised; this node can hold {capacity} client connections");

    let metrics = ioswarm::metrics::install_recorder().context("installing the metrics recorder")?;
    let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
    let io = Server::new(socketio_config(&config, capacity));
    let broker = Arc::new(ioswarm::resp::Broker::new());
    // Namespaces known up front exist (fully configured) before any client
    // connects; others are created on demand, configured first.
    if config.namespaces.is_empty() {
        io.of("/");
    }
    for name in &config.namespaces {
        io.of(name);
    }
    ioswarm::app::install(
        &io,
        AppOptions {
            auth_token: config.auth_token.clone(),
            client_rooms: config.client_rooms,
            client_relay: config.client_relay,
        },
    );

    let listener = ioswarm::http::bind(config.listen, 4096).with_context(|| format!("binding {}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding admin {}", config.admin_listen))?;
    let redis = TcpListener::bind(config.redis_listen)
        .await
        .with_context(|| format!("binding the Redis-protocol listener {}", config.redis_listen))?;
    let shutdown = Shutdown::new();
    let limits = ListenerLimits { max_connections: capacity, ..ListenerLimits::default() };
    let router = Router::new().route(&config.path, io.clone());
    let (sio_addr, admin_addr, redis_addr) = (listener.local_addr()?, admin.local_addr()?, redis.local_addr()?);
    broker.set_publish_hook(ioswarm::emitter::bridge(io.clone()));
    let cluster = match config.node_id {
        Some(node_id) => Some(cluster::start(&config, node_id, &io, &broker).await?),
        None => None,
    };
    let redis_config = ioswarm::resp::RedisConfig {
        requirepass: config.requirepass.clone(),
        kv: cluster.as_ref().map(|c| Arc::new(c.raft().clone()) as Arc<dyn ioswarm::resp::kv::KvBackend>),
        ..ioswarm::resp::RedisConfig::default()
    };
    shutdown.spawn(ioswarm::resp::serve(
        redis,
        broker,
        redis_config,
        shutdown.token().clone(),
        shutdown.tracker().clone(),
    ));
    shutdown.spawn(ioswarm::http::serve(
        listener,
        router,
        limits,
        shutdown.token().clone(),
        shutdown.tracker().clone(),
    ));
    shutdown.spawn(ioswarm::admin::serve(
        admin,
        metrics,
        Arc::new(match &cluster {
            Some(node) => AdminApi::with_cluster(io.clone(), node.clone()),
            None => AdminApi::new(io.clone()),
        }),
        shutdown.token().clone(),
    ));
    tracing::info!(%sio_addr, %admin_addr, %redis_addr, path = %config.path, "ioswarm node ready");
    match &cluster {
        Some(node) => println!(
            "ioswarm ready socketio={sio_addr} admin={admin_addr} redis={redis_addr} cluster={} node_id={}",
            node.transport().local_addr()?,
            node.id()
        ),
        None => println!("ioswarm ready socketio={sio_addr} admin={admin_addr} redis={redis_addr}"),
    }

    let signal = ioswarm::shutdown::wait_for_signal().await.context("installing signal handlers")?;
    tracing::info!(signal, "shutting down: closing client connections");
    let grace = config.shutdown_grace();
    if let Some(node) = &cluster {
        // Leave first: the others stop forwarding here before the clients move to them.
        node.shutdown(grace).await;
    }
    let clients_closed = tokio::time::timeout(grace, io.shutdown()).await.is_ok();
    let tasks_done = shutdown.shutdown(grace).await;
    if !(clients_closed && tasks_done) {
        tracing::warn!("shutdown grace period passed with work still running");
    }
    tracing::info!("bye");
    Ok(())
}

/// Joining or starting a cluster.
mod cluster {
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::Context as _;
    use ioswarm::cluster::gossip::GossipConfig;
    use ioswarm::cluster::node::{ClusterNode, NodeSettings};
    use ioswarm::cluster::raft::{RaftNode, RaftSettings};
    use ioswarm::cluster::{NodeCredentials, Transport, TransportConfig};
    use ioswarm::config::Config;
    use ioswarm::resp::Broker;
    use ioswarm::socketio::Server;

    /// How long a node keeps trying its `--join` addresses before giving up.
    const JOIN_DEADLINE: Duration = Duration::from_secs(60);

    /// Binds the cluster endpoint, starts raft and the runtime, then bootstraps a new cluster
    /// (no `--join`) or joins through the `--join` addresses.
    pub(crate) async fn start(
        config: &Config,
        node_id: u64,
        io: &Server,
        broker: &Arc<Broker>,
    ) -> anyhow::Result<ClusterNode> {
        let listen = config.cluster_listen.context("cluster_listen is required with node_id")?;
        let dir = config.cluster_credentials.as_ref().context("cluster_credentials is required with node_id")?;
        let credentials = NodeCredentials::load(dir, node_id)
            .with_context(|| format!("loading the cluster credentials from {}", dir.display()))?;
        let mut transport_config = TransportConfig::new(listen);
        transport_config.advertise.clone_from(&config.advertise);
        transport_config.peer_queue_capacity = 16 * 1024;
        let (transport, incoming) =
            Transport::bind(transport_config, credentials).with_context(|| format!("binding cluster {listen}"))?;
        let advertise = transport.hello().advertise_addr.clone();
        // A node that left gracefully starts with no raft state; bootstrapping from there would
        // found a second cluster next to the one it left (split brain), so it must rejoin.
        let left = config.data_dir.join("raft").join("left");
        if config.join.is_empty() && left.exists() {
            anyhow::bail!(
                "this node left its cluster when it last stopped ({} exists): start it with --join <a member> to \
                 rejoin, or remove {} to bootstrap a new cluster",
                left.display(),
                config.data_dir.display()
            );
        }
        let raft =
            RaftNode::start(RaftSettings::new(node_id, advertise.clone(), config.data_dir.clone()), transport.clone())
                .await
                .with_context(|| format!("starting raft with data dir {}", config.data_dir.display()))?;
        let settings = NodeSettings { timeout: config.cluster_timeout(), gossip: GossipConfig::default() };
        let node = ClusterNode::start(settings, transport.clone(), incoming, raft.clone(), io.clone(), broker.clone());
        if config.join.is_empty() {
            let created = raft.initialize().await.context("bootstrapping a new cluster")?;
            tracing::info!(node_id, %advertise, created, "cluster bootstrapped (no --join)");
        } else {
            join(&transport, &raft, &config.join).await?;
            tracing::info!(node_id, %advertise, "joined the cluster");
        }
        Ok(node)
    }

    /// Tries every `--join` address in turn until one lets this node in.
    async fn join(transport: &Transport, raft: &RaftNode, addrs: &[String]) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + JOIN_DEADLINE;
        let mut last_error = String::new();
        loop {
            for addr in addrs {
                match join_one(transport, raft, addr).await {
                    Ok(()) => return Ok(()),
                    Err(err) => {
                        tracing::warn!(%addr, error = %format!("{err:#}"), "joining through this member failed");
                        last_error = format!("{addr}: {err:#}");
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("could not join the cluster within {JOIN_DEADLINE:?}; last error: {last_error}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn join_one(transport: &Transport, raft: &RaftNode, addr: &str) -> anyhow::Result<()> {
        let resolved = tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .with_context(|| format!("{addr} resolves to no address"))?;
        let seed = transport.discover(resolved).await.with_context(|| format!("reaching {addr}"))?;
        transport.connect(resolved, seed).await.with_context(|| format!("connecting to node {seed}"))?;
        raft.join_via(seed).await.with_context(|| format!("joining through node {seed}"))?;
        Ok(())
    }
}

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
        },
        connect_timeout: config.connect_timeout(),
        max_attachments: config.max_attachments,
        max_rooms_per_socket: config.max_rooms_per_socket,
        namespaces,
        // Socket ids carry the node id, so other nodes route a socket's own room to it.
        node_tag: config.node_id.map_or(0, |id| u32::try_from(id & 0x00ff_ffff).unwrap_or(0)),
        ..SocketIoConfig::default()
    }
}
