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
    let broker = Arc::new(ioswarm::resp::Broker::new());
    broker.set_publish_hook(ioswarm::resp::socketio_bridge(io.clone()));
    let redis_config =
        ioswarm::resp::RedisConfig { requirepass: config.requirepass.clone(), ..ioswarm::resp::RedisConfig::default() };
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
        Arc::new(AdminApi::new(io.clone())),
        shutdown.token().clone(),
    ));
    tracing::info!(%sio_addr, %admin_addr, %redis_addr, path = %config.path, "ioswarm node ready");
    println!("ioswarm ready socketio={sio_addr} admin={admin_addr} redis={redis_addr}");

    let signal = ioswarm::shutdown::wait_for_signal().await.context("installing signal handlers")?;
    tracing::info!(signal, "shutting down: closing client connections");
    let grace = config.shutdown_grace();
    let clients_closed = tokio::time::timeout(grace, io.shutdown()).await.is_ok();
    let tasks_done = shutdown.shutdown(grace).await;
    if !(clients_closed && tasks_done) {
        tracing::warn!("shutdown grace period passed with work still running");
    }
    tracing::info!("bye");
    Ok(())
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
        ..SocketIoConfig::default()
    }
}
