//! Server configuration: defaults, the TOML file, environment and command line.
//!
//! Precedence, lowest to highest: [`Config::default`] < TOML file (`--config FILE`) <
//! `IOSWARM_<NAME>` environment variables < command-line flags. Clap merges the last two (a flag
//! wins over its variable); [`load`] lays the result over the file and runs
//! [`Config::validate`] once, so the rest of the server can trust every value.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use serde::{Deserialize, Serialize};

/// Largest timeout accepted for any `*_ms` setting (24 hours). Engine.IO clients arm one timer
/// for `ping_interval + ping_timeout`, and browsers fire timers longer than `i32::MAX` ms (~24.8
/// days) at once; two 24-hour values stay well below that.
const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Smallest accepted `max_payload` (1 KiB).
const MIN_PAYLOAD: usize = 1024;
/// Largest accepted `max_payload` (100 MiB).
const MAX_PAYLOAD: usize = 100 * 1024 * 1024;
/// Largest accepted `max_attachments`.
const MAX_ATTACHMENTS: usize = 10_000;
/// Largest accepted `cluster_relay_max_in_flight` (QUIC streams one link admits).
const MAX_RELAY_IN_FLIGHT: usize = 1_000_000;
/// Largest accepted `recovery_max_bytes` (8 MiB): a recovered session travels between nodes in
/// one cluster frame (16 MiB).
const MAX_RECOVERY_BYTES: usize = 8 * 1024 * 1024;
/// Largest `kv_batch_max`: one entry (and one forwarded request) stays far below a frame.
const MAX_KV_BATCH: usize = 4096;
/// Largest `kv_forwards_in_flight`.
const MAX_KV_FORWARDS_IN_FLIGHT: usize = 1024;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated server configuration.
///
/// Field names are the TOML keys; each has a kebab-case flag and an `IOSWARM_<NAME>` variable
/// on [`Cli`].
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Socket.IO listener address.
    pub listen: SocketAddr,
    /// Admin HTTP listener address (`/healthz`, `/metrics`, `/v1/...`).
    pub admin_listen: SocketAddr,
    /// Redis-protocol broker listener (emitters and pub/sub clients connect here).
    pub redis_listen: SocketAddr,
    /// When set, Redis clients must AUTH with this password (Redis `requirepass`).
    pub requirepass: Option<String>,
    /// PEM certificate chain of the Socket.IO listener; with `tls_key` it serves only `https://`
    /// and `wss://`. Reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM certificate chain of the Redis-protocol listener; with `redis_tls_key` that port
    /// speaks only TLS (like Redis' `tls-port`). Reloaded on SIGHUP.
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM private key of `redis_tls_cert`.
    pub redis_tls_key: Option<PathBuf>,
    /// HTTP path Engine.IO is served under; starts and ends with `/`.
    pub path: String,
    /// Interval between server pings.
    pub ping_interval_ms: u64,
    /// How long to wait for a pong after a ping before closing the session.
    pub ping_timeout_ms: u64,
    /// How long a transport upgrade (polling → websocket) may take.
    pub upgrade_timeout_ms: u64,
    /// How long a client has to connect to a namespace after the Engine.IO handshake.
    pub connect_timeout_ms: u64,
    /// Largest accepted Engine.IO message / HTTP body, in bytes.
    pub max_payload: usize,
    /// Most binary attachments in one Socket.IO packet.
    pub max_attachments: usize,
    /// Most concurrent client connections; 0 derives it from the file-descriptor limit.
    pub max_connections: u64,
    /// Allowed CORS origins; empty sends no CORS headers, `["*"]` allows any origin.
    pub cors_origin: Vec<String>,
    /// Accept Engine.IO protocol 3 clients (socket.io 1.x / 2.x, `EIO=3`) next to protocol 4
    /// ones; when off their handshake gets 400 `{"code":5,"message":"Unsupported protocol
    /// version"}`.
    pub allow_eio3: bool,
    /// Namespace allowlist; empty accepts every namespace.
    pub namespaces: Vec<String>,
    /// When set, a CONNECT must carry auth `{"token": <this>}`.
    pub auth_token: Option<String>,
    /// Allow clients to join and leave rooms (`ioswarm:join` / `ioswarm:leave`).
    pub client_rooms: bool,
    /// Allow clients to broadcast to rooms they are in (`ioswarm:to`).
    pub client_relay: bool,
    /// Most packets queued for one client before it is disconnected as too slow.
    pub send_queue_max_packets: usize,
    /// Most bytes queued for one client before it is disconnected as too slow.
    pub send_queue_max_bytes: usize,
    /// A volatile packet is dropped for a client whose queue holds more than this many bytes.
    pub volatile_drop_bytes: usize,
    /// Most rooms one socket may join, not counting the room of its own id; a join beyond it is
    /// refused.
    pub max_rooms_per_socket: usize,
    /// Default ack timeout for server emits that request an ack.
    pub ack_timeout_ms: u64,
    /// The deadline of the whole shutdown, from SIGTERM/SIGINT to exit (draining, closing
    /// clients, leaving the cluster, stopping every task).
    pub shutdown_grace_ms: u64,
    /// After SIGTERM, how long the node keeps serving (with `/healthz` answering 503) before it
    /// starts closing clients, so a load balancer can take it out first.
    pub drain_ms: u64,
    /// Over how long the node closes its clients once draining ends, evenly spread, so they do
    /// not all reconnect to the other nodes in the same millisecond.
    pub drain_spread_ms: u64,
    /// Connection state recovery: how long after a disconnection a client can get its session
    /// back (same socket id, rooms, data, the broadcasts it missed); 0 turns recovery off.
    pub recovery_ms: u64,
    /// Most packets one recovery replays; a client that missed more gets a fresh session.
    pub recovery_max_packets: usize,
    /// Most bytes of packets one recovery replays; beyond, a fresh session.
    pub recovery_max_bytes: usize,
    /// Most disconnected sessions a node keeps for recovery; the one closest to expiry goes first.
    pub recovery_max_sessions: usize,
    /// Most bytes of recoverable broadcasts a node keeps logged (the oldest go first).
    pub recovery_log_bytes: usize,
    /// Most cluster-wide lookups in flight for sessions held by another node (each asks every
    /// peer); a recovery CONNECT beyond it gets a fresh session at once. 0: never asks.
    pub recovery_lookups: usize,
    /// When set, the admin routes other than `/healthz` and `/metrics` need `Authorization:
    /// Bearer <token>`. Required when `admin_listen` is not a loopback address.
    pub admin_token: Option<String>,
    /// Log filter, as a `tracing_subscriber::EnvFilter` directive (e.g. `info,ioswarm=debug`).
    pub log: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Live counts (`[[presence]]` tables; TOML only).
    pub presence: Vec<crate::presence::PresenceConfig>,
    /// Forwarding rules (`[[forward]]` tables; TOML only): client events to a webhook or a Redis
    /// channel.
    pub forward: Vec<crate::forward::ForwardConfig>,
    /// Cluster node id (the raft id; must match the node certificate). Unset runs a single node.
    pub node_id: Option<u64>,
    /// UDP address of the cluster's QUIC endpoint; required with `node_id`.
    pub cluster_listen: Option<SocketAddr>,
    /// Address (host:port, UDP) other nodes dial to reach this one; the bound address when unset.
    pub advertise: Option<String>,
    /// Members to join through (`host:port`, repeatable); empty with a fresh data dir starts a new
    /// cluster.
    pub join: Vec<String>,
    /// Where the node keeps its raft state (vote, log, snapshot).
    pub data_dir: PathBuf,
    /// Folder with `node.pem`, `node.key` and `ca.pem` (see `ioswarm cluster issue`).
    pub cluster_credentials: Option<PathBuf>,
    /// How long cluster-wide operations (fetchSockets, acks, NUMSUB, ...) wait for other nodes.
    pub cluster_timeout_ms: u64,
    /// Most Engine.IO requests (long-polls, POSTs) and WebSocket tunnels this node relays to one
    /// other node at a time, for sessions that node holds (load balancers need no sticky
    /// sessions); beyond it a request gets 503. 0 relays nothing: a request of a session held
    /// elsewhere gets `400 Session ID unknown` (the load balancer must be sticky).
    pub cluster_relay_max_in_flight: usize,
    /// Most key-value operations in one raft log entry and in one request a node forwards to
    /// the leader: the writes that arrive while the previous entry is being committed share the
    /// next one (one fsync, one round of replication).
    pub kv_batch_max: usize,
    /// Most requests carrying key-value operations a node has sent to the leader and not yet
    /// had answered; further operations wait and go together in the next request.
    pub kv_forwards_in_flight: usize,
    /// `[[rooms.rule]]`: rooms clients join or leave with their own events (file only, no flag).
    pub rooms: crate::rules::RoomsConfig,
    /// Authentication on CONNECT (JWT, connect hook, allowed origins): the `[auth]` table (no
    /// flags).
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// Folder whose files (index.html, assets) are served under `/` on the Socket.IO listener
    /// (TOML key `static`, flag `--static`); unset serves no pages.
    #[serde(rename = "static")]
    pub static_dir: Option<PathBuf>,
    /// The socket.io-client browser bundle (`dist/socket.io.js`), served at
    /// `<path>socket.io.js` (and its `.map` next to it when present); unset serves none.
    pub client_bundle: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 3000)),
            admin_listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464)),
            redis_listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6379)),
            requirepass: None,
            tls_cert: None,
            tls_key: None,
            redis_tls_cert: None,
            redis_tls_key: None,
            path: "/socket.io/".to_owned(),
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            upgrade_timeout_ms: 10_000,
            connect_timeout_ms: 45_000,
            max_payload: 1_000_000,
            max_attachments: 10,
            max_connections: 0,
            cors_origin: Vec::new(),
            allow_eio3: true,
            namespaces: Vec::new(),
            auth_token: None,
            client_rooms: false,
            client_relay: false,
            send_queue_max_packets: 1024,
            send_queue_max_bytes: 4 * 1024 * 1024,
            volatile_drop_bytes: 64 * 1024,
            max_rooms_per_socket: 1024,
            ack_timeout_ms: 10_000,
            shutdown_grace_ms: 5_000,
            drain_ms: 0,
            drain_spread_ms: 0,
            recovery_ms: 0,
            recovery_max_packets: 1024,
            recovery_max_bytes: 1024 * 1024,
            recovery_max_sessions: 100_000,
            recovery_log_bytes: 64 * 1024 * 1024,
            recovery_lookups: 64,
            admin_token: None,
            log: "info".to_owned(),
            log_format: LogFormat::Text,
            presence: Vec::new(),
            forward: Vec::new(),
            node_id: None,
            cluster_listen: None,
            advertise: None,
            join: Vec::new(),
            data_dir: PathBuf::from("ioswarm-data"),
            cluster_credentials: None,
            cluster_timeout_ms: 5_000,
            cluster_relay_max_in_flight: 10_000,
            kv_batch_max: 256,
            kv_forwards_in_flight: 64,
            rooms: crate::rules::RoomsConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            static_dir: None,
            client_bundle: None,
        }
    }
}

// Hand-written so that logging the configuration never prints the auth token.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("redis_listen", &self.redis_listen)
            .field("requirepass", &self.requirepass.as_ref().map(|_| "<redacted>"))
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("redis_tls_cert", &self.redis_tls_cert)
            .field("redis_tls_key", &self.redis_tls_key)
            .field("path", &self.path)
            .field("ping_interval_ms", &self.ping_interval_ms)
            .field("ping_timeout_ms", &self.ping_timeout_ms)
            .field("upgrade_timeout_ms", &self.upgrade_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("max_payload", &self.max_payload)
            .field("max_attachments", &self.max_attachments)
            .field("max_connections", &self.max_connections)
            .field("cors_origin", &self.cors_origin)
            .field("allow_eio3", &self.allow_eio3)
            .field("namespaces", &self.namespaces)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<redacted>"))
            .field("client_rooms", &self.client_rooms)
            .field("client_relay", &self.client_relay)
            .field("send_queue_max_packets", &self.send_queue_max_packets)
            .field("send_queue_max_bytes", &self.send_queue_max_bytes)
            .field("volatile_drop_bytes", &self.volatile_drop_bytes)
            .field("max_rooms_per_socket", &self.max_rooms_per_socket)
            .field("ack_timeout_ms", &self.ack_timeout_ms)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .field("drain_ms", &self.drain_ms)
            .field("drain_spread_ms", &self.drain_spread_ms)
            .field("recovery_ms", &self.recovery_ms)
            .field("recovery_max_packets", &self.recovery_max_packets)
            .field("recovery_max_bytes", &self.recovery_max_bytes)
            .field("recovery_max_sessions", &self.recovery_max_sessions)
            .field("recovery_log_bytes", &self.recovery_log_bytes)
            .field("recovery_lookups", &self.recovery_lookups)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<redacted>"))
            .field("log", &self.log)
            .field("log_format", &self.log_format)
            .field("presence", &self.presence)
            .field("forward", &self.forward)
            .field("node_id", &self.node_id)
            .field("cluster_listen", &self.cluster_listen)
            .field("advertise", &self.advertise)
            .field("join", &self.join)
            .field("data_dir", &self.data_dir)
            .field("cluster_credentials", &self.cluster_credentials)
            .field("cluster_timeout_ms", &self.cluster_timeout_ms)
            .field("cluster_relay_max_in_flight", &self.cluster_relay_max_in_flight)
            .field("kv_batch_max", &self.kv_batch_max)
            .field("kv_forwards_in_flight", &self.kv_forwards_in_flight)
            .field("rooms", &self.rooms)
            .field("auth", &self.auth)
            .field("static_dir", &self.static_dir)
            .field("client_bundle", &self.client_bundle)
            .finish()
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named by `--config` / `IOSWARM_CONFIG`.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file named by `--config` / `IOSWARM_CONFIG`.
        path: PathBuf,
        /// The TOML error, with line and column.
        source: toml::de::Error,
    },
    /// An entry of a table array (`[[presence]]`, ...) is invalid.
    #[error("invalid setting `{field}`: {message}")]
    Setting {
        /// The setting with the entry's index, e.g. `presence[1].room`.
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A setting has a value outside its allowed range.
    #[error("invalid setting `{field}`: {message}")]
    Invalid {
        /// The TOML key of the setting (the flag is the same in kebab-case).
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

impl Config {
    /// Checks every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.port() != 0 && self.listen == self.admin_listen {
            return Err(invalid("admin_listen", format!("must differ from listen ({})", self.listen)));
        }
        if !self.path.starts_with('/') || !self.path.ends_with('/') {
            return Err(invalid("path", format!("{:?} must start and end with '/' (e.g. \"/socket.io/\")", self.path)));
        }
        if self.path.contains(|c: char| c == '?' || c == '#' || c.is_whitespace()) {
            return Err(invalid("path", format!("{:?} must not contain '?', '#' or whitespace", self.path)));
        }
        for (field, ms) in [
            ("ping_interval_ms", self.ping_interval_ms),
            ("ping_timeout_ms", self.ping_timeout_ms),
            ("upgrade_timeout_ms", self.upgrade_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("ack_timeout_ms", self.ack_timeout_ms),
            ("cluster_timeout_ms", self.cluster_timeout_ms),
        ] {
            if ms == 0 || ms > MAX_TIMEOUT_MS {
                return Err(invalid(field, format!("{ms} must be between 1 and {MAX_TIMEOUT_MS} milliseconds")));
            }
        }
        if self.shutdown_grace_ms > MAX_TIMEOUT_MS {
            return Err(invalid(
                "shutdown_grace_ms",
                format!("{} must be at most {MAX_TIMEOUT_MS} milliseconds", self.shutdown_grace_ms),
            ));
        }
        self.validate_drain()?;
        self.validate_recovery()?;
        self.validate_admin()?;
        if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&self.max_payload) {
            return Err(invalid(
                "max_payload",
                format!("{} must be between {MIN_PAYLOAD} (1 KiB) and {MAX_PAYLOAD} (100 MiB) bytes", self.max_payload),
            ));
        }
        if self.max_attachments > MAX_ATTACHMENTS {
            return Err(invalid(
                "max_attachments",
                format!("{} must be at most {MAX_ATTACHMENTS}", self.max_attachments),
            ));
        }
        self.validate_cors()?;
        for nsp in &self.namespaces {
            if !nsp.starts_with('/') {
                return Err(invalid("namespaces", format!("{nsp:?} must start with '/' (e.g. \"/chat\")")));
            }
            if nsp.contains(|c: char| c == ',' || c == '?' || c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "namespaces",
                    format!("{nsp:?} must not contain ',', '?', whitespace or control characters"),
                ));
            }
        }
        if self.redis_listen.port() != 0 && (self.redis_listen == self.listen || self.redis_listen == self.admin_listen)
        {
            return Err(invalid("redis_listen", "must differ from listen and admin_listen"));
        }
        if self.requirepass.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("requirepass", "must not be empty when set"));
        }
        if self.auth_token.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("auth_token", "must not be empty when set"));
        }
        for (field, n) in [
            ("send_queue_max_packets", self.send_queue_max_packets),
            ("send_queue_max_bytes", self.send_queue_max_bytes),
            ("max_rooms_per_socket", self.max_rooms_per_socket),
        ] {
            if n == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        if self.volatile_drop_bytes > self.send_queue_max_bytes {
            return Err(invalid(
                "volatile_drop_bytes",
                format!(
                    "{} must not exceed send_queue_max_bytes ({})",
                    self.volatile_drop_bytes, self.send_queue_max_bytes
                ),
            ));
        }
        self.validate_cluster()?;
        self.validate_tls()?;
        if let Err(e) = crate::presence::validate(&self.presence) {
            return Err(ConfigError::Setting { field: e.field, message: e.message });
        }
        if let Err(e) = crate::forward::validate(&self.forward) {
            return Err(ConfigError::Setting { field: e.setting, message: e.message });
        }
        if let Err(e) = self.rooms.validate() {
            return Err(ConfigError::Setting { field: e.setting, message: e.message });
        }
        self.auth.validate(self.auth_token.is_some())?;
        self.validate_pages()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(invalid("log", format!("{:?} is not a valid filter: {e}", self.log)));
        }
        Ok(())
    }

    /// Draining happens inside the one shutdown deadline, with time left to close the rest.
    fn validate_drain(&self) -> Result<(), ConfigError> {
        let drain = self.drain_ms.saturating_add(self.drain_spread_ms);
        if drain > 0 && drain >= self.shutdown_grace_ms {
            return Err(invalid(
                "drain_ms",
                format!(
                    "drain_ms + drain_spread_ms ({} + {} ms) must be less than shutdown_grace_ms ({} ms), the \
                     deadline of the whole shutdown; raise --shutdown-grace-ms or lower --drain-ms / \
                     --drain-spread-ms",
                    self.drain_ms, self.drain_spread_ms, self.shutdown_grace_ms
                ),
            ));
        }
        Ok(())
    }

    /// Recovery's window is a timeout like the others; its bounds are positive, and one
    /// session's packets fit a cluster frame.
    fn validate_recovery(&self) -> Result<(), ConfigError> {
        if self.recovery_ms > MAX_TIMEOUT_MS {
            return Err(invalid(
                "recovery_ms",
                format!("{} must be at most {MAX_TIMEOUT_MS} milliseconds (0 turns recovery off)", self.recovery_ms),
            ));
        }
        for (field, n) in [
            ("recovery_max_packets", self.recovery_max_packets),
            ("recovery_max_sessions", self.recovery_max_sessions),
            ("recovery_log_bytes", self.recovery_log_bytes),
        ] {
            if n == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        if !(1..=MAX_RECOVERY_BYTES).contains(&self.recovery_max_bytes) {
            return Err(invalid(
                "recovery_max_bytes",
                format!(
                    "{} must be between 1 and {MAX_RECOVERY_BYTES} (8 MiB: a recovered session moves between nodes in one \
                     cluster frame)",
                    self.recovery_max_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Connection state recovery's settings; `None` when `recovery_ms` is 0.
    pub fn recovery(&self) -> Option<crate::socketio::RecoveryConfig> {
        (self.recovery_ms > 0).then(|| crate::socketio::RecoveryConfig {
            window: Duration::from_millis(self.recovery_ms),
            max_packets: self.recovery_max_packets,
            max_bytes: self.recovery_max_bytes,
            max_sessions: self.recovery_max_sessions,
            log_bytes: self.recovery_log_bytes,
            lookups: self.recovery_lookups,
        })
    }

    /// The folder and the bundle served as pages exist (checked once, at start).
    fn validate_pages(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.static_dir {
            crate::statics::check_dir(dir)
                .map_err(|m| invalid("static", format!("{m} (--static / IOSWARM_STATIC)")))?;
        }
        if let Some(file) = &self.client_bundle {
            crate::statics::check_file(file)
                .map_err(|m| invalid("client_bundle", format!("{m} (--client-bundle / IOSWARM_CLIENT_BUNDLE)")))?;
        }
        Ok(())
    }

    /// A certificate needs its key and the other way round; an empty path is refused here (the
    /// files themselves are read once at start, by [`crate::tls::ServerTls::load`]).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        for (cert, key, cert_field, key_field) in [
            (&self.tls_cert, &self.tls_key, "tls_cert", "tls_key"),
            (&self.redis_tls_cert, &self.redis_tls_key, "redis_tls_cert", "redis_tls_key"),
        ] {
            match (cert, key) {
                (Some(_), None) => {
                    return Err(invalid(
                        key_field,
                        format!("--{} needs --{} (both or neither)", dash(cert_field), dash(key_field)),
                    ));
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        cert_field,
                        format!("--{} needs --{} (both or neither)", dash(key_field), dash(cert_field)),
                    ));
                }
                _ => {}
            }
            for (field, path) in [(cert_field, cert), (key_field, key)] {
                if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    return Err(invalid(field, "must not be empty when set"));
                }
            }
        }
        Ok(())
    }

    /// The Socket.IO listener's certificate files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::CertFiles> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(crate::tls::CertFiles { cert, key, cert_setting: "tls_cert", key_setting: "tls_key" })
    }

    /// The Redis-protocol listener's certificate files, when TLS is on.
    pub fn redis_tls_files(&self) -> Option<crate::tls::CertFiles> {
        let (cert, key) = (self.redis_tls_cert.clone()?, self.redis_tls_key.clone()?);
        Some(crate::tls::CertFiles { cert, key, cert_setting: "redis_tls_cert", key_setting: "redis_tls_key" })
    }

    /// An admin listener reachable from other hosts needs a token.
    fn validate_admin(&self) -> Result<(), ConfigError> {
        if self.admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid("admin_token", "must not be empty when set"));
        }
        if self.admin_token.is_none() && !self.admin_listen.ip().is_loopback() {
            return Err(invalid(
                "admin_token",
                format!(
                    "--admin-listen {} is not a loopback address, so anyone who can reach it could use the \
                     admin API: set --admin-token (IOSWARM_ADMIN_TOKEN) or bind --admin-listen to 127.0.0.1",
                    self.admin_listen
                ),
            ));
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let clustered = self.node_id.is_some();
        if clustered != self.cluster_listen.is_some() {
            return Err(invalid("cluster_listen", "node_id and cluster_listen must be given together"));
        }
        if clustered && self.cluster_credentials.is_none() {
            return Err(invalid("cluster_credentials", "a cluster node needs its credentials folder"));
        }
        if self.node_id.is_some_and(|id| id == 0 || id > 0x00ff_ffff) {
            return Err(invalid("node_id", "must be between 1 and 16777215 (socket ids carry it in 24 bits)"));
        }
        if !clustered && !self.join.is_empty() {
            return Err(invalid("join", "needs node_id and cluster_listen"));
        }
        for addr in &self.join {
            if addr.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
                return Err(invalid("join", format!("{addr:?} must be host:port")));
            }
        }
        if let Some(addr) = &self.advertise
            && addr.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(invalid("advertise", format!("{addr:?} must be host:port")));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.cluster_relay_max_in_flight > MAX_RELAY_IN_FLIGHT {
            return Err(invalid(
                "cluster_relay_max_in_flight",
                format!(
                    "{} must be at most {MAX_RELAY_IN_FLIGHT} (0 relays nothing)",
                    self.cluster_relay_max_in_flight
                ),
            ));
        }
        if !(1..=MAX_KV_BATCH).contains(&self.kv_batch_max) {
            return Err(invalid("kv_batch_max", format!("{} must be between 1 and {MAX_KV_BATCH}", self.kv_batch_max)));
        }
        if !(1..=MAX_KV_FORWARDS_IN_FLIGHT).contains(&self.kv_forwards_in_flight) {
            return Err(invalid(
                "kv_forwards_in_flight",
                format!("{} must be between 1 and {MAX_KV_FORWARDS_IN_FLIGHT}", self.kv_forwards_in_flight),
            ));
        }
        Ok(())
    }

    /// How long cluster-wide operations wait for other nodes.
    pub fn cluster_timeout(&self) -> Duration {
        Duration::from_millis(self.cluster_timeout_ms)
    }

    fn validate_cors(&self) -> Result<(), ConfigError> {
        if self.cors_origin.iter().any(|o| o == "*") {
            if self.cors_origin.len() > 1 {
                return Err(invalid("cors_origin", "\"*\" cannot be combined with other origins"));
            }
            return Ok(());
        }
        for origin in &self.cors_origin {
            let rest = origin.split_once("://").map(|(scheme, rest)| (scheme.is_empty(), rest));
            let ok = match rest {
                Some((false, host)) => {
                    !host.is_empty()
                        && !host.contains('/')
                        && !origin.contains(|c: char| c.is_whitespace() || c.is_control())
                }
                _ => false,
            };
            if !ok {
                return Err(invalid(
                    "cors_origin",
                    format!(
                        "{origin:?} is not an origin: use scheme://host[:port] without a path \
                         (e.g. \"https://example.com\") or \"*\""
                    ),
                ));
            }
        }
        Ok(())
    }

    /// [`Self::ping_interval_ms`] as a `Duration`.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    /// [`Self::ping_timeout_ms`] as a `Duration`.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    /// [`Self::upgrade_timeout_ms`] as a `Duration`.
    pub fn upgrade_timeout(&self) -> Duration {
        Duration::from_millis(self.upgrade_timeout_ms)
    }

    /// [`Self::connect_timeout_ms`] as a `Duration`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`Self::ack_timeout_ms`] as a `Duration`.
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// [`Self::shutdown_grace_ms`] as a `Duration`.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// [`Self::drain_ms`] as a `Duration`.
    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }

    /// [`Self::drain_spread_ms`] as a `Duration`.
    pub fn drain_spread(&self) -> Duration {
        Duration::from_millis(self.drain_spread_ms)
    }

    /// Parses a TOML document; keys left out keep their defaults. Does not validate.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Lays every flag or variable that was given over `self`.
    fn apply(&mut self, cli: &Cli) {
        macro_rules! take {
            ($($field:ident),* $(,)?) => {
                $(if let Some(v) = &cli.$field {
                    self.$field = v.clone();
                })*
            };
        }
        take!(
            listen,
            admin_listen,
            redis_listen,
            path,
            ping_interval_ms,
            ping_timeout_ms,
            upgrade_timeout_ms,
            connect_timeout_ms,
            max_payload,
            max_attachments,
            max_connections,
            allow_eio3,
            client_rooms,
            client_relay,
            send_queue_max_packets,
            send_queue_max_bytes,
            volatile_drop_bytes,
            max_rooms_per_socket,
            ack_timeout_ms,
            shutdown_grace_ms,
            drain_ms,
            drain_spread_ms,
            recovery_ms,
            recovery_max_packets,
            recovery_max_bytes,
            recovery_max_sessions,
            recovery_log_bytes,
            recovery_lookups,
            log,
            log_format,
            data_dir,
            cluster_timeout_ms,
            cluster_relay_max_in_flight,
            kv_batch_max,
            kv_forwards_in_flight,
        );
        if let Some(v) = cli.node_id {
            self.node_id = Some(v);
        }
        if let Some(v) = cli.cluster_listen {
            self.cluster_listen = Some(v);
        }
        if let Some(v) = &cli.advertise {
            self.advertise = Some(v.clone());
        }
        if let Some(v) = &cli.join {
            self.join = non_empty(v);
        }
        if let Some(v) = &cli.cluster_credentials {
            self.cluster_credentials = Some(v.clone());
        }
        // `--cors-origin=` / `IOSWARM_NAMESPACES=` (empty) clear the list.
        if let Some(v) = &cli.cors_origin {
            self.cors_origin = non_empty(v);
        }
        if let Some(v) = &cli.namespaces {
            self.namespaces = non_empty(v);
        }
        if let Some(v) = &cli.auth_token {
            self.auth_token = Some(v.clone());
        }
        if let Some(v) = &cli.requirepass {
            self.requirepass = Some(v.clone());
        }
        for (flag, field) in [
            (&cli.tls_cert, &mut self.tls_cert),
            (&cli.tls_key, &mut self.tls_key),
            (&cli.redis_tls_cert, &mut self.redis_tls_cert),
            (&cli.redis_tls_key, &mut self.redis_tls_key),
        ] {
            if let Some(v) = flag {
                *field = Some(v.clone());
            }
        }
        if let Some(v) = &cli.admin_token {
            self.admin_token = Some(v.clone());
        }
        if let Some(v) = &cli.static_dir {
            self.static_dir = Some(v.clone());
        }
        if let Some(v) = &cli.client_bundle {
            self.client_bundle = Some(v.clone());
        }
    }
}

/// A setting's flag name: `tls_cert` → `tls-cert`.
fn dash(field: &str) -> String {
    field.replace('_', "-")
}

fn non_empty(items: &[String]) -> Vec<String> {
    items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Subcommands besides running a node.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Cluster credentials: create a CA, issue node certificates (see `ioswarm cluster --help`).
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: crate::cluster::ClusterCommand,
    },
}

/// Command-line flags; each is also read from the `IOSWARM_<NAME>` environment variable.
///
/// Every flag is optional: a flag that is not given leaves the file's (or the default) value.
#[derive(Clone, Debug, Default, clap::Parser)]
#[command(
    name = "ioswarm",
    version,
    about = "Socket.IO v5 real-time server",
    long_about = None
)]
pub struct Cli {
    /// Something other than running a node (e.g. `cluster init-ca`).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML configuration file (keys are the flag names in snake_case).
    #[arg(long, env = "IOSWARM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Socket.IO listener address [default: 0.0.0.0:3000].
    #[arg(long, env = "IOSWARM_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin HTTP listener address [default: 127.0.0.1:9464].
    #[arg(long, env = "IOSWARM_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Redis-protocol broker listener [default: 127.0.0.1:6379].
    #[arg(long, env = "IOSWARM_REDIS_LISTEN", value_name = "ADDR")]
    pub redis_listen: Option<SocketAddr>,
    /// Password Redis clients must AUTH with (Redis `requirepass`) [default: none].
    #[arg(long, env = "IOSWARM_REQUIREPASS", value_name = "PASSWORD", hide_env_values = true)]
    pub requirepass: Option<String>,
    /// PEM certificate (chain) of the Socket.IO listener: serve https:// and wss:// only; needs
    /// --tls-key; reloaded on SIGHUP [default: none, plain HTTP].
    #[arg(long, env = "IOSWARM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: none].
    #[arg(long, env = "IOSWARM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificate (chain) of the Redis-protocol listener: that port speaks only TLS; needs
    /// --redis-tls-key; reloaded on SIGHUP [default: none, plain TCP].
    #[arg(long, env = "IOSWARM_REDIS_TLS_CERT", value_name = "FILE")]
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM private key of --redis-tls-cert [default: none].
    #[arg(long, env = "IOSWARM_REDIS_TLS_KEY", value_name = "FILE")]
    pub redis_tls_key: Option<PathBuf>,
    /// HTTP path of the Engine.IO endpoint [default: /socket.io/].
    #[arg(long, env = "IOSWARM_PATH")]
    pub path: Option<String>,
    /// Interval between server pings, in ms [default: 25000].
    #[arg(long, env = "IOSWARM_PING_INTERVAL_MS", value_name = "MS")]
    pub ping_interval_ms: Option<u64>,
    /// Time to wait for a pong, in ms [default: 20000].
    #[arg(long, env = "IOSWARM_PING_TIMEOUT_MS", value_name = "MS")]
    pub ping_timeout_ms: Option<u64>,
    /// Time allowed for a transport upgrade, in ms [default: 10000].
    #[arg(long, env = "IOSWARM_UPGRADE_TIMEOUT_MS", value_name = "MS")]
    pub upgrade_timeout_ms: Option<u64>,
    /// Time allowed to connect to a namespace after the handshake, in ms [default: 45000].
    #[arg(long, env = "IOSWARM_CONNECT_TIMEOUT_MS", value_name = "MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Largest accepted message / HTTP body, in bytes [default: 1000000].
    #[arg(long, env = "IOSWARM_MAX_PAYLOAD", value_name = "BYTES")]
    pub max_payload: Option<usize>,
    /// Most binary attachments per packet [default: 10].
    #[arg(long, env = "IOSWARM_MAX_ATTACHMENTS", value_name = "N")]
    pub max_attachments: Option<usize>,
    /// Most concurrent connections; 0 derives it from the open-file limit [default: 0].
    #[arg(long, env = "IOSWARM_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u64>,
    /// Allowed CORS origins, comma-separated, or `*` [default: none, no CORS headers].
    #[arg(long, env = "IOSWARM_CORS_ORIGIN", value_name = "ORIGINS", value_delimiter = ',')]
    pub cors_origin: Option<Vec<String>>,
    /// Namespace allowlist, comma-separated (e.g. `/,/chat`) [default: any namespace].
    #[arg(long, env = "IOSWARM_NAMESPACES", value_name = "NSPS", value_delimiter = ',')]
    pub namespaces: Option<Vec<String>>,
    /// Require CONNECT auth `{"token": TOKEN}` [default: none].
    #[arg(long, env = "IOSWARM_AUTH_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Accept socket.io 1.x/2.x clients (Engine.IO 3, `EIO=3`) [default: true].
    #[arg(
        long,
        env = "IOSWARM_ALLOW_EIO3",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub allow_eio3: Option<bool>,
    /// Allow clients to join/leave rooms (`ioswarm:join`, `ioswarm:leave`).
    #[arg(
        long,
        env = "IOSWARM_CLIENT_ROOMS",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub client_rooms: Option<bool>,
    /// Allow clients to broadcast to their rooms (`ioswarm:to`).
    #[arg(
        long,
        env = "IOSWARM_CLIENT_RELAY",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub client_relay: Option<bool>,
    /// Most packets queued per client [default: 1024].
    #[arg(long, env = "IOSWARM_SEND_QUEUE_MAX_PACKETS", value_name = "N")]
    pub send_queue_max_packets: Option<usize>,
    /// Most bytes queued per client [default: 4194304].
    #[arg(long, env = "IOSWARM_SEND_QUEUE_MAX_BYTES", value_name = "BYTES")]
    pub send_queue_max_bytes: Option<usize>,
    /// Drop volatile packets for a client with more than this many bytes queued [default: 65536].
    #[arg(long, env = "IOSWARM_VOLATILE_DROP_BYTES", value_name = "BYTES")]
    pub volatile_drop_bytes: Option<usize>,
    /// Most rooms per socket [default: 1024].
    #[arg(long, env = "IOSWARM_MAX_ROOMS_PER_SOCKET", value_name = "N")]
    pub max_rooms_per_socket: Option<usize>,
    /// Default ack timeout for server emits, in ms [default: 10000].
    #[arg(long, env = "IOSWARM_ACK_TIMEOUT_MS", value_name = "MS")]
    pub ack_timeout_ms: Option<u64>,
    /// Deadline of the whole shutdown after SIGTERM, in ms [default: 5000].
    #[arg(long, env = "IOSWARM_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// After SIGTERM, keep serving this long (with /healthz at 503) before closing clients, in ms
    /// [default: 0].
    #[arg(long, env = "IOSWARM_DRAIN_MS", value_name = "MS")]
    pub drain_ms: Option<u64>,
    /// Close clients spread over this long once draining ends, in ms [default: 0].
    #[arg(long, env = "IOSWARM_DRAIN_SPREAD_MS", value_name = "MS")]
    pub drain_spread_ms: Option<u64>,
    /// Connection state recovery: how long after a disconnection a client gets its session
    /// back, in ms; 0 is off [default: 0].
    #[arg(long, env = "IOSWARM_RECOVERY_MS", value_name = "MS")]
    pub recovery_ms: Option<u64>,
    /// Most packets one recovery replays (more missed: a fresh session) [default: 1024].
    #[arg(long, env = "IOSWARM_RECOVERY_MAX_PACKETS", value_name = "N")]
    pub recovery_max_packets: Option<usize>,
    /// Most bytes one recovery replays (more missed: a fresh session) [default: 1048576].
    #[arg(long, env = "IOSWARM_RECOVERY_MAX_BYTES", value_name = "BYTES")]
    pub recovery_max_bytes: Option<usize>,
    /// Most disconnected sessions kept for recovery per node [default: 100000].
    #[arg(long, env = "IOSWARM_RECOVERY_MAX_SESSIONS", value_name = "N")]
    pub recovery_max_sessions: Option<usize>,
    /// Most bytes of recoverable broadcasts kept logged per node [default: 67108864].
    #[arg(long, env = "IOSWARM_RECOVERY_LOG_BYTES", value_name = "BYTES")]
    pub recovery_log_bytes: Option<usize>,
    /// Most cluster-wide lookups in flight for sessions another node holds; beyond, a recovery
    /// CONNECT gets a fresh session at once; 0 never asks the other nodes [default: 64].
    #[arg(long, env = "IOSWARM_RECOVERY_LOOKUPS", value_name = "N")]
    pub recovery_lookups: Option<usize>,
    /// Bearer token the admin API (/v1/*, /cluster*) requires; needed when --admin-listen is not
    /// loopback [default: none].
    #[arg(long, env = "IOSWARM_ADMIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Log filter directive, e.g. `info,ioswarm=debug` [default: info].
    #[arg(long, env = "IOSWARM_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "IOSWARM_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Cluster node id; with `--cluster-listen` this node joins a cluster [default: single node].
    #[arg(long, env = "IOSWARM_NODE_ID", value_name = "ID")]
    pub node_id: Option<u64>,
    /// UDP address of the cluster QUIC endpoint, e.g. `0.0.0.0:7946` [default: none].
    #[arg(long, env = "IOSWARM_CLUSTER_LISTEN", value_name = "ADDR")]
    pub cluster_listen: Option<SocketAddr>,
    /// Address other nodes dial to reach this one (host:port) [default: the bound address].
    #[arg(long, env = "IOSWARM_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// A member to join through (host:port); repeat or comma-separate for several [default: none].
    #[arg(long, env = "IOSWARM_JOIN", value_name = "HOST:PORT", value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// Folder for the raft state (vote, log, snapshot) [default: ioswarm-data].
    #[arg(long, env = "IOSWARM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder with node.pem, node.key and ca.pem from `ioswarm cluster issue` [default: none].
    #[arg(long, env = "IOSWARM_CLUSTER_CREDENTIALS", value_name = "DIR")]
    pub cluster_credentials: Option<PathBuf>,
    /// How long cluster-wide operations wait for other nodes, in ms [default: 5000].
    #[arg(long, env = "IOSWARM_CLUSTER_TIMEOUT_MS", value_name = "MS")]
    pub cluster_timeout_ms: Option<u64>,
    /// Most requests and WebSocket tunnels relayed to one other node at a time, for the
    /// sessions it holds; 0 relays none (the load balancer must be sticky) [default: 10000].
    #[arg(long, env = "IOSWARM_CLUSTER_RELAY_MAX_IN_FLIGHT", value_name = "N")]
    pub cluster_relay_max_in_flight: Option<usize>,
    /// Most key-value operations in one raft log entry and in one request forwarded to the
    /// leader [default: 256].
    #[arg(long, env = "IOSWARM_KV_BATCH_MAX", value_name = "N")]
    pub kv_batch_max: Option<usize>,
    /// Most requests of key-value operations forwarded to the leader and not yet answered
    /// [default: 64].
    #[arg(long, env = "IOSWARM_KV_FORWARDS_IN_FLIGHT", value_name = "N")]
    pub kv_forwards_in_flight: Option<usize>,
    /// Serve the files of this folder under `/` (index.html, assets) [default: none].
    #[arg(long = "static", env = "IOSWARM_STATIC", value_name = "DIR")]
    pub static_dir: Option<PathBuf>,
    /// Serve this socket.io-client bundle (`dist/socket.io.js`) at `<path>socket.io.js`
    /// [default: none].
    #[arg(long, env = "IOSWARM_CLIENT_BUNDLE", value_name = "FILE")]
    pub client_bundle: Option<PathBuf>,
}

/// Builds the configuration: defaults, then the `--config` file, then environment and flags;
/// then validates it.
pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
    let mut config = match &cli.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            Config::from_toml(&text).map_err(|source| ConfigError::Parse { path: path.clone(), source })?
        }
        None => Config::default(),
    };
    config.apply(cli);
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    fn parse(args: &[&str]) -> Cli {
        let mut argv = vec!["ioswarm"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap()
    }

    fn field_of(err: ConfigError) -> &'static str {
        match err {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[track_caller]
    fn invalid_field(edit: impl FnOnce(&mut Config)) -> &'static str {
        let mut c = Config::default();
        edit(&mut c);
        field_of(c.validate().unwrap_err())
    }

    fn write_temp(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("ioswarm-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_validate() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:3000");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.ping_interval(), Duration::from_secs(25));
        assert_eq!(c.ping_timeout(), Duration::from_secs(20));
        assert_eq!(c.shutdown_grace(), Duration::from_secs(5));
        assert_eq!(c.max_payload, 1_000_000);
    }

    #[test]
    fn no_flags_means_defaults() {
        // Only valid where none of the IOSWARM_* variables is set in the test environment.
        if std::env::vars().any(|(k, _)| k.starts_with("IOSWARM_")) {
            return;
        }
        assert_eq!(load(&parse(&[])).unwrap(), Config::default());
    }

    #[test]
    fn file_overrides_defaults() {
        let c = Config::from_toml(
            r#"
            listen = "127.0.0.1:4000"
            ping_interval_ms = 1000
            namespaces = ["/", "/chat"]
            client_rooms = true
            auth_token = "s3cret"
            log_format = "json"
            allow_eio3 = false
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(c.ping_interval_ms, 1000);
        assert_eq!(c.namespaces, ["/", "/chat"]);
        assert!(c.client_rooms);
        assert_eq!(c.auth_token.as_deref(), Some("s3cret"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(!c.allow_eio3);
        assert!(Config::default().allow_eio3, "socket.io 1.x/2.x clients are accepted by default");
        // Keys left out keep their defaults.
        assert_eq!(c.ping_timeout_ms, 20_000);
        assert_eq!(c.path, "/socket.io/");
    }

    #[test]
    fn cli_overrides_file() {
        let path = write_temp(
            "cli-overrides",
            "listen = \"127.0.0.1:4000\"\nping_interval_ms = 1000\nclient_rooms = true\n\
             cors_origin = [\"https://a.example\"]\nmax_payload = 5000\n",
        );
        let cli = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--client-rooms=false",
            "--client-relay",
            "--cors-origin",
            "https://b.example,http://c.example:8080",
            "--namespaces=",
        ]);
        let c = load(&cli).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.ping_interval_ms, 1000, "file value kept when no flag");
        assert_eq!(c.max_payload, 5000);
        assert!(!c.client_rooms, "--client-rooms=false overrides file");
        assert!(c.client_relay, "bare --client-relay sets true");
        assert_eq!(c.cors_origin, ["https://b.example", "http://c.example:8080"]);
        assert!(c.namespaces.is_empty(), "--namespaces= clears the list");
    }

    #[test]
    fn bool_flags_accept_words() {
        assert_eq!(parse(&["--client-rooms"]).client_rooms, Some(true));
        assert_eq!(parse(&["--client-rooms=true"]).client_rooms, Some(true));
        assert_eq!(parse(&["--client-rooms=0"]).client_rooms, Some(false));
        assert_eq!(parse(&["--client-rooms=no"]).client_rooms, Some(false));
        assert_eq!(parse(&[]).client_rooms, None);
        assert!(Cli::try_parse_from(["ioswarm", "--client-rooms=maybe"]).is_err());
        // A bare bool flag must not swallow the next flag.
        let cli = parse(&["--client-relay", "--listen", "127.0.0.1:1"]);
        assert_eq!(cli.client_relay, Some(true));
        assert_eq!(cli.listen.map(|a| a.port()), Some(1));
    }

    #[test]
    fn bad_flag_values_are_rejected_by_clap() {
        for args in [
            ["--listen", "localhost"],
            ["--ping-interval-ms", "-5"],
            ["--log-format", "yaml"],
            ["--max-payload", "1MB"],
        ] {
            let mut argv = vec!["ioswarm"];
            argv.extend_from_slice(&args);
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn every_arg_has_its_env_var() {
        let cmd = Cli::command();
        let mut seen = 0;
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            let env = arg.get_env().unwrap_or_else(|| panic!("--{long} has no env var"));
            let expected = format!("IOSWARM_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(env.to_str(), Some(expected.as_str()), "--{long}");
            seen += 1;
        }
        assert!(seen > 20);
    }

    /// Settings that are tables in the TOML file, with no flag.
    const TOML_ONLY: &[&str] = &["presence", "forward", "rooms", "auth"];

    #[test]
    fn every_config_field_has_a_flag() {
        let value = serde_json::to_value(Config::default()).unwrap();
        let cmd = Cli::command();
        let longs: Vec<&str> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
        let keys = value.as_object().unwrap().keys();
        assert_eq!(keys.len(), 55);
        for key in keys.filter(|k| !TOML_ONLY.contains(&k.as_str())) {
            let flag = key.replace('_', "-");
            assert!(longs.contains(&flag.as_str()), "config field {key} has no --{flag}");
        }
    }

    #[test]
    fn every_flag_is_applied() {
        let bundle = write_temp("bundle", "io()");
        let bundle_flag = format!("--client-bundle={}", bundle.display());
        let static_flag = format!("--static={}", std::env::temp_dir().display());
        let cli = parse(&[
            &static_flag,
            &bundle_flag,
            "--listen=127.0.0.1:1",
            "--admin-listen=127.0.0.1:2",
            "--redis-listen=127.0.0.1:3",
            "--requirepass=p",
            "--tls-cert=/tmp/c.pem",
            "--tls-key=/tmp/c.key",
            "--redis-tls-cert=/tmp/r.pem",
            "--redis-tls-key=/tmp/r.key",
            "--path=/io/",
            "--ping-interval-ms=1",
            "--ping-timeout-ms=2",
            "--upgrade-timeout-ms=3",
            "--connect-timeout-ms=4",
            "--max-payload=2048",
            "--max-attachments=5",
            "--max-connections=6",
            "--cors-origin=*",
            "--namespaces=/a,/b",
            "--auth-token=t",
            "--client-rooms",
            "--client-relay",
            "--allow-eio3=false",
            "--send-queue-max-packets=7",
            "--send-queue-max-bytes=8",
            "--volatile-drop-bytes=8",
            "--max-rooms-per-socket=9",
            "--ack-timeout-ms=10",
            "--shutdown-grace-ms=11",
            "--drain-ms=4",
            "--drain-spread-ms=5",
            "--recovery-ms=13",
            "--recovery-max-packets=14",
            "--recovery-max-bytes=15",
            "--recovery-max-sessions=16",
            "--recovery-log-bytes=17",
            "--recovery-lookups=0",
            "--admin-token=a",
            "--log=debug",
            "--log-format=json",
            "--node-id=3",
            "--cluster-listen=127.0.0.1:4",
            "--advertise=node3:4",
            "--join=a:1,b:2",
            "--data-dir=/tmp/d",
            "--cluster-credentials=/tmp/c",
            "--cluster-timeout-ms=12",
            "--cluster-relay-max-in-flight=13",
            "--kv-batch-max=13",
            "--kv-forwards-in-flight=14",
        ]);
        let c = load(&cli).unwrap();
        std::fs::remove_file(&bundle).unwrap();
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let got = serde_json::to_value(&c).unwrap();
        for (key, default) in defaults.as_object().unwrap().iter().filter(|(k, _)| !TOML_ONLY.contains(&k.as_str())) {
            assert_ne!(&got[key], default, "--{} was not applied", key.replace('_', "-"));
        }
    }

    #[test]
    fn unknown_toml_key_rejected() {
        let err = Config::from_toml("listen = \"127.0.0.1:1\"\npign_interval_ms = 5\n").unwrap_err();
        assert!(err.to_string().contains("pign_interval_ms"), "{err}");

        let path = write_temp("unknown-key", "bogus = 1\n");
        let cli = parse(&["--config", path.to_str().unwrap()]);
        let err = load(&cli).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn wrong_toml_type_rejected() {
        let err = Config::from_toml("max_payload = \"big\"\n").unwrap_err();
        assert!(err.to_string().contains("max_payload"), "{err}");
        assert!(Config::from_toml("listen = \"nope\"\n").is_err());
    }

    #[test]
    fn missing_file_reported_with_path() {
        let cli = parse(&["--config", "/nonexistent/ioswarm.toml"]);
        let err = load(&cli).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/ioswarm.toml"), "{err}");
    }

    #[test]
    fn invalid_values_rejected() {
        assert_eq!(invalid_field(|c| c.ping_interval_ms = 0), "ping_interval_ms");
        assert_eq!(invalid_field(|c| c.ping_timeout_ms = 0), "ping_timeout_ms");
        assert_eq!(invalid_field(|c| c.upgrade_timeout_ms = 0), "upgrade_timeout_ms");
        assert_eq!(invalid_field(|c| c.connect_timeout_ms = 0), "connect_timeout_ms");
        assert_eq!(invalid_field(|c| c.ack_timeout_ms = 0), "ack_timeout_ms");
        assert_eq!(invalid_field(|c| c.ping_timeout_ms = MAX_TIMEOUT_MS + 1), "ping_timeout_ms");
        assert_eq!(invalid_field(|c| c.shutdown_grace_ms = u64::MAX), "shutdown_grace_ms");
        assert_eq!(invalid_field(|c| c.max_payload = 1023), "max_payload");
        assert_eq!(invalid_field(|c| c.max_payload = MAX_PAYLOAD + 1), "max_payload");
        assert_eq!(invalid_field(|c| c.max_attachments = 1_000_000), "max_attachments");
        assert_eq!(
            invalid_field(|c| c.cluster_relay_max_in_flight = MAX_RELAY_IN_FLIGHT + 1),
            "cluster_relay_max_in_flight"
        );
        assert_eq!(invalid_field(|c| c.path = "socket.io/".into()), "path");
        assert_eq!(invalid_field(|c| c.path = "/socket.io".into()), "path");
        assert_eq!(invalid_field(|c| c.path = "/a b/".into()), "path");
        assert_eq!(invalid_field(|c| c.namespaces = vec!["chat".into()]), "namespaces");
        assert_eq!(invalid_field(|c| c.namespaces = vec!["/a b".into()]), "namespaces");
        assert_eq!(invalid_field(|c| c.auth_token = Some(String::new())), "auth_token");
        assert_eq!(invalid_field(|c| c.admin_token = Some(" ".into())), "admin_token");
        assert_eq!(invalid_field(|c| c.drain_ms = 5_000), "drain_ms");
        assert_eq!(invalid_field(|c| (c.drain_ms, c.drain_spread_ms) = (3_000, 2_000)), "drain_ms");
        assert_eq!(invalid_field(|c| c.recovery_ms = MAX_TIMEOUT_MS + 1), "recovery_ms");
        assert_eq!(invalid_field(|c| c.recovery_max_packets = 0), "recovery_max_packets");
        assert_eq!(invalid_field(|c| c.recovery_max_sessions = 0), "recovery_max_sessions");
        assert_eq!(invalid_field(|c| c.recovery_log_bytes = 0), "recovery_log_bytes");
        assert_eq!(invalid_field(|c| c.recovery_max_bytes = 0), "recovery_max_bytes");
        assert_eq!(invalid_field(|c| c.recovery_max_bytes = MAX_RECOVERY_BYTES + 1), "recovery_max_bytes");
        assert_eq!(invalid_field(|c| c.send_queue_max_packets = 0), "send_queue_max_packets");
        assert_eq!(invalid_field(|c| c.send_queue_max_bytes = 0), "send_queue_max_bytes");
        assert_eq!(invalid_field(|c| c.max_rooms_per_socket = 0), "max_rooms_per_socket");
        assert_eq!(invalid_field(|c| c.kv_batch_max = 0), "kv_batch_max");
        assert_eq!(invalid_field(|c| c.kv_batch_max = MAX_KV_BATCH + 1), "kv_batch_max");
        assert_eq!(invalid_field(|c| c.kv_forwards_in_flight = 0), "kv_forwards_in_flight");
        assert_eq!(invalid_field(|c| c.kv_forwards_in_flight = MAX_KV_FORWARDS_IN_FLIGHT + 1), "kv_forwards_in_flight");
        assert_eq!(invalid_field(|c| c.volatile_drop_bytes = c.send_queue_max_bytes + 1), "volatile_drop_bytes");
        assert_eq!(invalid_field(|c| c.log = "ioswarm=notalevel".into()), "log");
        assert_eq!(invalid_field(|c| c.admin_listen = c.listen), "admin_listen");
        assert_eq!(invalid_field(|c| c.tls_cert = Some("c.pem".into())), "tls_key");
        assert_eq!(invalid_field(|c| c.tls_key = Some("c.key".into())), "tls_cert");
        assert_eq!(invalid_field(|c| c.redis_tls_cert = Some("c.pem".into())), "redis_tls_key");
        assert_eq!(invalid_field(|c| c.redis_tls_key = Some("c.key".into())), "redis_tls_cert");
        assert_eq!(invalid_field(|c| (c.tls_cert, c.tls_key) = (Some("".into()), Some("k".into()))), "tls_cert");
        for bad in ["example.com", "https://", "https://a.example/", "*x", "://x"] {
            assert_eq!(invalid_field(|c| c.cors_origin = vec![bad.into()]), "cors_origin", "{bad}");
        }
        assert_eq!(invalid_field(|c| c.cors_origin = vec!["*".into(), "https://a.example".into()]), "cors_origin");
    }

    #[test]
    fn valid_edge_values_accepted() {
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut c = Config {
            max_payload: MIN_PAYLOAD,
            cors_origin: vec!["*".into()],
            namespaces: vec!["/".into(), "/chat".into(), "/a/b".into()],
            shutdown_grace_ms: 0,
            max_attachments: 0,
            volatile_drop_bytes: Config::default().send_queue_max_bytes,
            listen: any_port,
            admin_listen: any_port,
            log: "warn,ioswarm=trace".into(),
            cluster_relay_max_in_flight: 0,
            ..Config::default()
        };
        c.validate().unwrap();
        c.cors_origin = vec!["https://a.example".into(), "http://localhost:8080".into()];
        c.validate().unwrap();
    }

    #[test]
    fn error_messages_are_clear() {
        let c = Config { max_payload: 10, ..Config::default() };
        let msg = c.validate().unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid setting `max_payload`: 10 must be between 1024 (1 KiB) and 104857600 \
             (100 MiB) bytes"
        );
    }

    #[test]
    fn room_rules_are_read_and_validated() {
        let c = Config::from_toml(
            "[[rooms.rule]]\nevent = \"AlertToggle::join\"\njoin = \"ROOM::ExtraImportantUpdates\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.rooms.rules[0].event, "AlertToggle::join");
        let c = Config::from_toml(
            "[[rooms.rule]]\nevent = \"a\"\njoin = \"r\"\n[[rooms.rule]]\nevent = \"b\"\njoin = \"r\"\nleave = \"r\"\n",
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        assert!(matches!(&err, ConfigError::Setting { field, .. } if field == "rooms.rule[1]"), "{err}");
        assert!(err.to_string().starts_with("invalid setting `rooms.rule[1]`: has both"), "{err}");
        let err = Config::from_toml("[[rooms.rule]]\nevent = \"a\"\njoin = \"r\"\nroom = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `room`"), "{err}");
    }

    #[test]
    fn the_auth_table_is_read_and_validated() {
        let c = Config::from_toml(
            "[auth]\njwt_secret = \"s\"\ntoken_from = [\"cookie:session_jwt\"]\nrooms_on_connect = [\"user:{sub}\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("s"));
        assert_eq!(c.auth.rooms_on_connect, ["user:{sub}"]);
        let err = Config::from_toml("[auth]\njwt_secret = \"s\"\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let c = Config::from_toml("[auth]\njwt_secret = \"s\"\ntoken_from = []\n").unwrap();
        assert_eq!(field_of(c.validate().unwrap_err()), "auth.token_from");
        let c = Config { auth_token: Some("t".into()), ..c };
        assert!(c.validate().is_err());
        let c = Config::from_toml("[auth]\njwt_secret = \"s\"\nrooms_on_connect = [\"user:{sub}\", \"x:{arg0}\"]\n")
            .unwrap();
        let err = c.validate().unwrap_err();
        assert!(matches!(&err, ConfigError::Setting { field, .. } if field == "auth.rooms_on_connect[1]"), "{err}");
        let c = Config::from_toml("[auth]\nrooms_on_connect = [\"user:{sub}\"]\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("auth.rooms_on_connect"));
    }

    #[test]
    fn the_forward_tables_are_read_with_defaults_and_validated() {
        let c = Config::from_toml(
            "[[forward]]\nevents = [\"document::clicked\", \"$disconnect\"]\nurl = \"http://127.0.0.1:8080/e\"\n\
             [[forward]]\nnsp = \"/chat\"\nevents = [\"Thing::*\"]\nchannel = \"socket.io-events\"\nmax_events_per_s = 5\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.forward.len(), 2);
        assert_eq!((c.forward[0].nsp.as_str(), c.forward[0].timeout_ms, c.forward[0].retry_ms), ("/", 5_000, 30_000));
        assert_eq!((c.forward[1].max_events_per_s, c.forward[1].burst), (5, 40));
        let err = Config::from_toml("[[forward]]\nevents = [\"a\"]\nchannel = \"c\"\nurls = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("urls"), "{err}");
        for (toml, field) in [
            ("[[forward]]\nevents = [\"a\"]\n", "forward[0].url"),
            ("[[forward]]\nevents = [\"a\"]\nchannel = \"c\"\ntimeout_ms = 0\n", "forward[0].timeout_ms"),
            (
                "[[forward]]\nevents = [\"a\"]\nchannel = \"c\"\n[[forward]]\nevents = [\"\"]\nchannel = \"c\"\n",
                "forward[1].events[0]",
            ),
        ] {
            let err = Config::from_toml(toml).unwrap().validate().unwrap_err();
            assert!(matches!(&err, ConfigError::Setting { field: f, .. } if f == field), "{toml}: {err}");
        }
    }

    #[test]
    fn pages_must_exist_and_be_of_the_right_kind() {
        let file = write_temp("pages", "x");
        let dir = Some(std::env::temp_dir());
        Config { static_dir: dir.clone(), client_bundle: Some(file.clone()), ..Config::default() }.validate().unwrap();
        assert_eq!(invalid_field(|c| c.static_dir = Some("/nonexistent/ioswarm-pages".into())), "static");
        assert_eq!(invalid_field(|c| c.static_dir = Some(file.clone())), "static");
        assert_eq!(invalid_field(|c| c.client_bundle = dir.clone()), "client_bundle");
        assert_eq!(invalid_field(|c| c.client_bundle = Some("/nonexistent/socket.io.js".into())), "client_bundle");
        let c = Config::from_toml(&format!("static = {:?}\n", std::env::temp_dir().display().to_string())).unwrap();
        assert_eq!(c.static_dir, dir);
        let err =
            Config { client_bundle: Some("/nonexistent/b.js".into()), ..Config::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("--client-bundle"), "{err}");
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn debug_redacts_auth_token() {
        let c = Config { auth_token: Some("hunter2".into()), ..Config::default() };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"));
        assert!(s.contains("<redacted>"));
    }

    #[test]
    fn admin_beyond_loopback_needs_a_token() {
        let mut c = Config { admin_listen: "0.0.0.0:9464".parse().unwrap(), ..Config::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--admin-listen 0.0.0.0:9464") && err.contains("--admin-token"), "{err}");
        c.admin_token = Some("t".into());
        c.validate().unwrap();
        let c = Config { admin_listen: "[::1]:9464".parse().unwrap(), ..Config::default() };
        c.validate().unwrap();
    }

    #[test]
    fn drain_fits_inside_the_shutdown_deadline() {
        let c = Config { drain_ms: 2_000, drain_spread_ms: 2_000, ..Config::default() };
        c.validate().unwrap();
        let err = Config { shutdown_grace_ms: 4_000, ..c }.validate().unwrap_err().to_string();
        assert!(err.contains("shutdown_grace_ms (4000 ms)"), "{err}");
    }
}
