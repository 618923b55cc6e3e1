//! Every metric the server records, declared in one place.
//!
//! Names follow `ioswarm_<thing>_<unit>[_total]`; counters end in `_total`. Label values come from
//! small fixed sets, never from peer input, so the number of series stays bounded: [`LABELS`]
//! declares every label value of every labelled metric; where the value is typed (Engine.IO close
//! reasons, Socket.IO disconnect reasons…) the declaration is the enum's own list and the code
//! records `reason.label()`, so what is declared and what is emitted are the same set. To add a
//! metric: add a `pub(crate) const`, a `MetricDef` row to `ALL` and, for a label, a [`LabelDef`]
//! row to [`LABELS`] (the tests check the naming rules and the label sets), and record it with
//! the `metrics` crate's macros, e.g. `::metrics::counter!(crate::metrics::SOCKETIO_DISCONNECTS,
//! crate::metrics::label::REASON => reason.label()).increment(1)` (write `::metrics` wherever this
//! module is imported as `metrics`).
//!
//! The recorder is a Prometheus exporter without its own HTTP listener: [`install_recorder`]
//! returns a handle that the admin server renders on `GET /metrics` (and runs upkeep on). It
//! registers every metric at zero ([`zero`]), so the first scrape already lists them all.

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engineio::{CloseReason, RequestKind};
use crate::socketio::reason::{ConnectErrorReason, DisconnectReason, DropReason};

// ---- Engine.IO -------------------------------------------------------------------------------

/// Gauge: open Engine.IO sessions (either transport).
pub(crate) const ENGINE_CONNECTIONS: &str = "ioswarm_engine_connections";
/// Gauge: open Engine.IO sessions of protocol 3 (socket.io 1.x / 2.x clients), also counted in
/// [`ENGINE_CONNECTIONS`].
pub(crate) const ENGINE_EIO3_CONNECTIONS: &str = "ioswarm_engine_eio3_connections";
/// Counter: Engine.IO sessions opened (successful handshakes).
pub(crate) const ENGINE_CONNECTIONS_OPENED: &str = "ioswarm_engine_connections_opened_total";
/// Counter: Engine.IO sessions closed. Labels: [`label::REASON`] = [`crate::engineio::CloseReason::label`].
pub(crate) const ENGINE_CONNECTIONS_CLOSED: &str = "ioswarm_engine_connections_closed_total";
/// Gauge, sampled when `/metrics` is read: packets waiting in the sessions' send queues, summed
/// over every session (what senders queued and no transport has taken yet).
pub(crate) const ENGINE_QUEUED_PACKETS: &str = "ioswarm_engine_queued_packets";
/// Gauge, sampled when `/metrics` is read: bytes of [`ENGINE_QUEUED_PACKETS`].
pub(crate) const ENGINE_QUEUED_BYTES: &str = "ioswarm_engine_queued_bytes";
/// Counter: completed polling → websocket upgrades.
pub(crate) const ENGINE_UPGRADES: &str = "ioswarm_engine_upgrades_total";
/// Counter: HTTP requests on the Engine.IO path. Labels: [`label::KIND`] = [`crate::engineio::RequestKind::label`].
pub(crate) const ENGINE_HTTP_REQUESTS: &str = "ioswarm_engine_http_requests_total";

// ---- Runtime ---------------------------------------------------------------------------------

/// Gauge, sampled when `/metrics` is read: tokio tasks alive in the node's runtime (one per
/// session, connection and timer-driven job; a leak of tasks shows here).
pub(crate) const RUNTIME_TASKS: &str = "ioswarm_runtime_tasks";
/// Gauge, sampled when `/metrics` is read: tasks waiting in the runtime's global run queue
/// (woken, not yet picked up by a worker thread).
pub(crate) const RUNTIME_QUEUE_DEPTH: &str = "ioswarm_runtime_queue_depth";

// ---- Socket.IO -------------------------------------------------------------------------------

/// Gauge: sockets connected to any namespace (no namespace label: namespaces are unbounded).
pub(crate) const SOCKETIO_SOCKETS: &str = "ioswarm_socketio_sockets";
/// Counter: successful namespace connects.
pub(crate) const SOCKETIO_CONNECTS: &str = "ioswarm_socketio_connects_total";
/// Counter: refused namespace connects. Labels: [`label::REASON`] = [`ConnectErrorReason::label`].
pub(crate) const SOCKETIO_CONNECT_ERRORS: &str = "ioswarm_socketio_connect_errors_total";
/// Counter: EVENT / BINARY_EVENT packets received from clients.
pub(crate) const SOCKETIO_EVENTS_RECEIVED: &str = "ioswarm_socketio_events_received_total";
/// Counter: Socket.IO packets queued to clients.
pub(crate) const SOCKETIO_PACKETS_SENT: &str = "ioswarm_socketio_packets_sent_total";
/// Counter: bytes queued to clients (encoded packets including attachments).
pub(crate) const SOCKETIO_BYTES_SENT: &str = "ioswarm_socketio_bytes_sent_total";
/// Counter: packets not delivered to a client that stays connected. Labels: [`label::REASON`] =
/// [`DropReason::label`].
pub(crate) const SOCKETIO_PACKETS_DROPPED: &str = "ioswarm_socketio_packets_dropped_total";
/// Counter: sockets disconnected. Labels: [`label::REASON`] = [`DisconnectReason::label`].
pub(crate) const SOCKETIO_DISCONNECTS: &str = "ioswarm_socketio_disconnects_total";
/// Counter: Socket.IO packets from clients that could not be decoded or were not allowed.
pub(crate) const SOCKETIO_INVALID_PACKETS: &str = "ioswarm_socketio_invalid_packets_total";

// ---- Rooms, broadcasts, acks -----------------------------------------------------------------

/// Gauge: non-empty rooms across all namespaces (sockets' own id rooms excluded).
pub(crate) const ROOMS: &str = "ioswarm_rooms";
/// Counter: broadcasts (one emit to a set of rooms / all sockets).
pub(crate) const BROADCASTS: &str = "ioswarm_broadcasts_total";
/// Histogram: sockets one broadcast was delivered to.
pub(crate) const BROADCAST_RECIPIENTS: &str = "ioswarm_broadcast_recipients";
/// Counter: server emits whose ack did not arrive in time.
pub(crate) const ACKS_TIMED_OUT: &str = "ioswarm_acks_timed_out_total";

/// Counter: messages on socket.io emitter channels, by `result` (ok, invalid, ignored).
pub(crate) const EMITTER_MESSAGES: &str = "ioswarm_emitter_messages_total";

/// Gauge: open Redis-protocol connections.
pub(crate) const REDIS_CONNECTIONS: &str = "ioswarm_redis_connections";
/// Gauge, sampled when `/metrics` is read: bytes waiting in the output buffers of Redis-protocol
/// subscribers (each subscriber counted once).
pub(crate) const REDIS_OUTPUT_BYTES: &str = "ioswarm_redis_output_bytes";
/// Counter: Redis-protocol connections accepted.
pub(crate) const REDIS_CONNECTIONS_OPENED: &str = "ioswarm_redis_connections_opened_total";
/// Counter: connections refused because `max_clients` was reached.
pub(crate) const REDIS_CONNECTIONS_REJECTED: &str = "ioswarm_redis_connections_rejected_total";
/// Counter: commands executed.
pub(crate) const REDIS_COMMANDS: &str = "ioswarm_redis_commands_total";
/// Counter: connections closed for a protocol error.
pub(crate) const REDIS_PROTOCOL_ERRORS: &str = "ioswarm_redis_protocol_errors_total";
/// Counter: PUBLISH / SPUBLISH commands received from clients.
pub(crate) const REDIS_PUBLISHES: &str = "ioswarm_redis_publishes_total";
/// Counter: subscribers disconnected for exceeding their output buffer limit. Labels: `reason`
/// = `output_hard_limit` | `output_soft_limit`.
pub(crate) const REDIS_CLIENTS_KILLED: &str = "ioswarm_redis_clients_killed_total";

/// Gauge: cluster peers by liveness. Labels: `state` = `alive` | `suspect` | `dead` | `left`.
pub(crate) const CLUSTER_PEERS: &str = "ioswarm_cluster_peers";
/// Counter: broadcasts forwarded to other nodes. Labels: `peer` (node id).
pub(crate) const CLUSTER_FORWARDED_MESSAGES: &str = "ioswarm_cluster_forwarded_messages_total";
/// Counter: bytes of broadcasts forwarded to other nodes. Labels: `peer` (node id).
pub(crate) const CLUSTER_FORWARDED_BYTES: &str = "ioswarm_cluster_forwarded_bytes_total";
/// Gauge, sampled when `/metrics` is read: messages waiting in the ordered queue to a peer
/// (forwarded broadcasts, gossip). Labels: `peer`.
pub(crate) const CLUSTER_PEER_QUEUE: &str = "ioswarm_cluster_peer_queue";
/// Counter: broadcasts not forwarded because the peer's queue was full. Labels: `peer`.
pub(crate) const CLUSTER_FORWARD_DROPPED: &str = "ioswarm_cluster_forward_dropped_total";
/// Counter: broadcasts received from other nodes.
pub(crate) const CLUSTER_RECEIVED_BROADCASTS: &str = "ioswarm_cluster_received_broadcasts_total";
/// Counter: cluster-wide requests sent, by result. Labels: `result` = `ok` | `missing`.
pub(crate) const CLUSTER_REQUESTS: &str = "ioswarm_cluster_requests_total";
/// Counter: Engine.IO requests (polling GET/POST, WebSocket upgrades) of sessions held by another
/// node that this node relayed there, by `result`: `ok` (the owner answered), `owner_gone` (not
/// a live member, no link, or it went away: the client got `400 Session ID unknown`), `busy`
/// (`cluster_relay_max_in_flight` reached: `503`), `timeout`.
pub(crate) const CLUSTER_RELAYED_REQUESTS: &str = "ioswarm_cluster_relayed_requests_total";
/// Gauge: relayed requests waiting for their owner and WebSocket tunnels open, on this node.
pub(crate) const CLUSTER_RELAY_IN_FLIGHT: &str = "ioswarm_cluster_relay_in_flight";
/// Counter: requests other nodes relayed to this node for its sessions, by `kind` (poll, post,
/// websocket).
pub(crate) const CLUSTER_RELAY_SERVED: &str = "ioswarm_cluster_relay_served_total";
/// Gauge: 1 when this node holds the latest room interest of every live node.
pub(crate) const GOSSIP_CONVERGED: &str = "ioswarm_gossip_converged";
/// Gauge: this node's room-interest version.
pub(crate) const GOSSIP_INTEREST_VERSION: &str = "ioswarm_gossip_interest_version";
/// Counter: room-interest deltas sent.
pub(crate) const GOSSIP_DELTAS: &str = "ioswarm_gossip_deltas_total";
/// Counter: room-interest snapshots sent (anti-entropy).
pub(crate) const GOSSIP_SNAPSHOTS: &str = "ioswarm_gossip_snapshots_total";
/// Gauge: the raft term.
pub(crate) const RAFT_TERM: &str = "ioswarm_raft_term";
/// Gauge: the raft leader's node id (0 when unknown).
pub(crate) const RAFT_LEADER_ID: &str = "ioswarm_raft_leader_id";
/// Gauge: 1 when this node is the raft leader.
pub(crate) const RAFT_IS_LEADER: &str = "ioswarm_raft_is_leader";
/// Gauge: raft voters.
pub(crate) const RAFT_VOTERS: &str = "ioswarm_raft_voters";
/// Gauge: raft learners.
pub(crate) const RAFT_LEARNERS: &str = "ioswarm_raft_learners";
/// Counter: key-value commands executed. Labels: `kind` = `write` | `read`.
pub(crate) const KV_COMMANDS: &str = "ioswarm_kv_commands_total";
/// Counter: key-value commands forwarded to the raft leader.
pub(crate) const KV_FORWARDED: &str = "ioswarm_kv_forwarded_total";

// ---- Connection state recovery --------------------------------------------------------------

/// Gauge: disconnected sessions kept for recovery.
pub(crate) const RECOVERY_SESSIONS: &str = "ioswarm_recovery_sessions";
/// Gauge: bytes counted for the kept sessions (rooms, data, carried packets, overhead).
pub(crate) const RECOVERY_SESSION_BYTES: &str = "ioswarm_recovery_session_bytes";
/// Gauge: bytes counted for the log of recoverable broadcasts.
pub(crate) const RECOVERY_LOG_BYTES: &str = "ioswarm_recovery_log_bytes";
/// Counter: CONNECTs asking to recover a session, by result. Labels: [`label::RESULT`] =
/// `recovered`, [`crate::socketio::Refusal::label`] or `busy` (too many cluster-wide lookups in
/// flight: a fresh session).
pub(crate) const RECOVERY_ATTEMPTS: &str = "ioswarm_recovery_attempts_total";
/// Counter: kept sessions dropped unrecovered. Labels: [`label::REASON`] = `expired` | `evicted`.
pub(crate) const RECOVERY_SESSIONS_DROPPED: &str = "ioswarm_recovery_sessions_dropped_total";
/// Counter: sessions moved between nodes. Labels: [`label::KIND`] = `fetched` (taken from
/// another node for a client here) | `handed_off` (sent to a peer while draining) | `received`
/// (from a draining peer).
pub(crate) const RECOVERY_TRANSFERS: &str = "ioswarm_recovery_transfers_total";

/// What kind of instrument a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetricKind {
    /// Monotonic count; name ends in `_total`.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Distribution of observations.
    Histogram,
}

/// One declared metric.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MetricDef {
    /// Full metric name.
    pub(crate) name: &'static str,
    /// Instrument kind.
    pub(crate) kind: MetricKind,
    /// Help text shown by `/metrics`.
    pub(crate) help: &'static str,
}

const fn def(name: &'static str, kind: MetricKind, help: &'static str) -> MetricDef {
    MetricDef { name, kind, help }
}

/// Every metric the server records.
pub(crate) const ALL: &[MetricDef] = {
    use MetricKind::{Counter, Gauge, Histogram};
    &[
        def(ENGINE_CONNECTIONS, Gauge, "Open Engine.IO sessions."),
        def(ENGINE_EIO3_CONNECTIONS, Gauge, "Open Engine.IO 3 sessions (socket.io 1.x/2.x clients)."),
        def(ENGINE_CONNECTIONS_OPENED, Counter, "Engine.IO sessions opened."),
        def(ENGINE_CONNECTIONS_CLOSED, Counter, "Engine.IO sessions closed, by reason."),
        def(ENGINE_UPGRADES, Counter, "Polling to websocket upgrades completed."),
        def(ENGINE_QUEUED_PACKETS, Gauge, "Packets waiting in the sessions' send queues (sampled at scrape)."),
        def(ENGINE_QUEUED_BYTES, Gauge, "Bytes waiting in the sessions' send queues (sampled at scrape)."),
        def(RUNTIME_TASKS, Gauge, "Tokio tasks alive in the node's runtime (sampled at scrape)."),
        def(RUNTIME_QUEUE_DEPTH, Gauge, "Tasks waiting in the runtime's global run queue (sampled at scrape)."),
        def(ENGINE_HTTP_REQUESTS, Counter, "HTTP requests on the Engine.IO path, by kind."),
        def(SOCKETIO_SOCKETS, Gauge, "Sockets connected to a namespace."),
        def(SOCKETIO_CONNECTS, Counter, "Namespace connects accepted."),
        def(SOCKETIO_CONNECT_ERRORS, Counter, "Namespace connects refused, by reason."),
        def(SOCKETIO_EVENTS_RECEIVED, Counter, "Events received from clients."),
        def(SOCKETIO_PACKETS_SENT, Counter, "Socket.IO packets queued to clients."),
        def(SOCKETIO_BYTES_SENT, Counter, "Bytes queued to clients."),
        def(SOCKETIO_PACKETS_DROPPED, Counter, "Packets not delivered to a connected client, by reason."),
        def(SOCKETIO_DISCONNECTS, Counter, "Sockets disconnected, by reason."),
        def(SOCKETIO_INVALID_PACKETS, Counter, "Undecodable or forbidden packets from clients."),
        def(ROOMS, Gauge, "Non-empty rooms (socket id rooms excluded)."),
        def(BROADCASTS, Counter, "Broadcasts emitted."),
        def(BROADCAST_RECIPIENTS, Histogram, "Sockets reached by one broadcast."),
        def(ACKS_TIMED_OUT, Counter, "Server emits whose ack timed out."),
        def(EMITTER_MESSAGES, Counter, "Messages on socket.io emitter channels, by result."),
        def(REDIS_CONNECTIONS, Gauge, "Open Redis-protocol connections."),
        def(
            REDIS_OUTPUT_BYTES,
            Gauge,
            "Bytes waiting in Redis-protocol subscribers' output buffers (sampled at scrape).",
        ),
        def(REDIS_CONNECTIONS_OPENED, Counter, "Redis-protocol connections accepted."),
        def(REDIS_CONNECTIONS_REJECTED, Counter, "Redis-protocol connections refused at max clients."),
        def(REDIS_COMMANDS, Counter, "Redis-protocol commands executed."),
        def(REDIS_PROTOCOL_ERRORS, Counter, "Redis-protocol connections closed for a protocol error."),
        def(REDIS_PUBLISHES, Counter, "PUBLISH / SPUBLISH commands received from clients."),
        def(REDIS_CLIENTS_KILLED, Counter, "Subscribers disconnected at their output buffer limit, by reason."),
        def(CLUSTER_PEERS, Gauge, "Cluster peers by liveness state."),
        def(CLUSTER_FORWARDED_MESSAGES, Counter, "Broadcasts forwarded to other nodes, by peer."),
        def(CLUSTER_FORWARDED_BYTES, Counter, "Bytes of broadcasts forwarded to other nodes, by peer."),
        def(CLUSTER_FORWARD_DROPPED, Counter, "Broadcasts not forwarded because a peer's queue was full, by peer."),
        def(CLUSTER_PEER_QUEUE, Gauge, "Messages waiting in the ordered queue to a peer, by peer (sampled at scrape)."),
        def(CLUSTER_RECEIVED_BROADCASTS, Counter, "Broadcasts received from other nodes."),
        def(CLUSTER_REQUESTS, Counter, "Cluster-wide requests sent to peers, by result."),
        def(CLUSTER_RELAYED_REQUESTS, Counter, "Requests of sessions held by another node relayed there, by result."),
        def(CLUSTER_RELAY_IN_FLIGHT, Gauge, "Relayed requests waiting for their node and WebSocket tunnels open."),
        def(CLUSTER_RELAY_SERVED, Counter, "Requests relayed here by other nodes for this node's sessions, by kind."),
        def(GOSSIP_CONVERGED, Gauge, "1 when this node holds the latest room interest of every live node."),
        def(GOSSIP_INTEREST_VERSION, Gauge, "This node's room-interest version."),
        def(GOSSIP_DELTAS, Counter, "Room-interest deltas sent."),
        def(GOSSIP_SNAPSHOTS, Counter, "Room-interest snapshots sent (anti-entropy)."),
        def(RAFT_TERM, Gauge, "Current raft term."),
        def(RAFT_LEADER_ID, Gauge, "Node id of the raft leader (0 when unknown)."),
        def(RAFT_IS_LEADER, Gauge, "1 when this node is the raft leader."),
        def(RAFT_VOTERS, Gauge, "Raft voters in the membership."),
        def(RAFT_LEARNERS, Gauge, "Raft learners in the membership."),
        def(KV_COMMANDS, Counter, "Key-value commands executed, by kind (write or read)."),
        def(KV_FORWARDED, Counter, "Key-value commands forwarded to the raft leader."),
        def(AUTH_ACCEPTED, Counter, "CONNECTs that passed the [auth] checks."),
        def(AUTH_REJECTED, Counter, "CONNECTs and handshakes refused by [auth], by reason."),
        def(AUTH_HOOK_REQUESTS, Counter, "Connect-hook requests, by result."),
        def(FORWARD_REQUESTS, Counter, "Forwarding webhook requests ([[forward]] url), by result."),
        def(FORWARD_PUBLISHED, Counter, "Events published on a forwarding channel ([[forward]] channel)."),
        def(FORWARD_RATE_LIMITED, Counter, "Client events refused by a forwarding rule's per-client rate limit."),
        def(FORWARD_RETRIES, Counter, "Retries of $connect / $disconnect webhook requests."),
        def(FORWARD_LIFECYCLE_DROPPED, Counter, "$connect / $disconnect events given up after retry_ms."),
        def(TLS_HANDSHAKE_ERRORS, Counter, "TLS handshakes that failed or timed out, by listener."),
        def(TLS_RELOADS, Counter, "TLS certificate reloads on SIGHUP, by result."),
        def(RECOVERY_SESSIONS, Gauge, "Disconnected sessions kept for connection state recovery."),
        def(RECOVERY_SESSION_BYTES, Gauge, "Bytes held by the kept sessions."),
        def(RECOVERY_LOG_BYTES, Gauge, "Bytes held by the log of recoverable broadcasts."),
        def(RECOVERY_ATTEMPTS, Counter, "CONNECTs asking to recover a session, by result."),
        def(RECOVERY_SESSIONS_DROPPED, Counter, "Kept sessions dropped unrecovered, by reason."),
        def(RECOVERY_TRANSFERS, Counter, "Sessions moved between nodes, by kind."),
    ]
};

/// Label keys.
pub(crate) mod label {
    /// Why something ended or failed.
    pub(crate) const REASON: &str = "reason";
    /// Kind of HTTP request or key-value command.
    pub(crate) const KIND: &str = "kind";
    /// Outcome of an emitter message or a cluster request.
    pub(crate) const RESULT: &str = "result";
    /// Liveness state of a cluster peer.
    pub(crate) const STATE: &str = "state";
    /// A cluster peer's node id (values known only once peers exist).
    pub(crate) const PEER: &str = "peer";
    /// Which TCP listener (`socketio`, `redis`).
    pub(crate) const LISTENER: &str = "listener";
}

/// The label of a labelled metric and every value it takes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LabelDef {
    /// The metric.
    pub(crate) metric: &'static str,
    /// The label key.
    pub(crate) key: &'static str,
    /// Every value, in a fixed order; empty when values appear at run time (`peer`).
    pub(crate) values: fn() -> Vec<&'static str>,
}

const fn labels(metric: &'static str, key: &'static str, values: fn() -> Vec<&'static str>) -> LabelDef {
    LabelDef { metric, key, values }
}

/// Every labelled metric with every value of its label. Metrics not listed here have no labels.
pub(crate) const LABELS: &[LabelDef] = &[
    labels(ENGINE_CONNECTIONS_CLOSED, label::REASON, || CloseReason::ALL.iter().map(|r| r.label()).collect()),
    labels(ENGINE_HTTP_REQUESTS, label::KIND, || RequestKind::ALL.iter().map(|k| k.label()).collect()),
    labels(SOCKETIO_CONNECT_ERRORS, label::REASON, || ConnectErrorReason::ALL.iter().map(|r| r.label()).collect()),
    labels(SOCKETIO_PACKETS_DROPPED, label::REASON, || DropReason::ALL.iter().map(|r| r.label()).collect()),
    labels(SOCKETIO_DISCONNECTS, label::REASON, || DisconnectReason::ALL.iter().map(|r| r.label()).collect()),
    // Recorded by modules that keep their own enums and `as_str` (resp::output::KillReason, the
    // emitter bridge's Outcome, cluster NodeState, ...): keep these lists in step with them.
    labels(EMITTER_MESSAGES, label::RESULT, || vec!["ok", "invalid", "ignored"]),
    labels(REDIS_CLIENTS_KILLED, label::REASON, || vec!["output_hard_limit", "output_soft_limit"]),
    labels(CLUSTER_PEERS, label::STATE, || vec!["alive", "suspect", "dead", "left"]),
    labels(CLUSTER_FORWARDED_MESSAGES, label::PEER, Vec::new),
    labels(CLUSTER_FORWARDED_BYTES, label::PEER, Vec::new),
    labels(CLUSTER_FORWARD_DROPPED, label::PEER, Vec::new),
    labels(CLUSTER_PEER_QUEUE, label::PEER, Vec::new),
    labels(CLUSTER_REQUESTS, label::RESULT, || vec!["ok", "missing"]),
    // cluster::relay's `count` and `serve`: keep in step with them.
    labels(CLUSTER_RELAYED_REQUESTS, label::RESULT, || vec!["ok", "owner_gone", "busy", "timeout"]),
    labels(CLUSTER_RELAY_SERVED, label::KIND, || vec!["poll", "post", "websocket"]),
    labels(KV_COMMANDS, label::KIND, || vec!["write", "read"]),
    labels(AUTH_REJECTED, label::REASON, || AuthRejectReason::ALL.iter().map(|r| r.as_str()).collect()),
    labels(AUTH_HOOK_REQUESTS, label::RESULT, || HookResult::ALL.iter().map(|r| r.as_str()).collect()),
    // "ok" and forward::DeliveryError::label: keep in step with it.
    labels(FORWARD_REQUESTS, label::RESULT, || vec!["ok", "timeout", "unreachable", "bad_status", "bad_reply", "busy"]),
    labels(TLS_HANDSHAKE_ERRORS, label::LISTENER, || vec!["socketio", "redis"]),
    labels(TLS_RELOADS, label::RESULT, || vec!["ok", "error"]),
    labels(RECOVERY_ATTEMPTS, label::RESULT, || {
        let mut values = vec!["recovered"];
        values.extend(crate::socketio::Refusal::ALL.iter().map(|r| r.label()));
        values.push(crate::socketio::recovery::BUSY);
        values
    }),
    labels(RECOVERY_SESSIONS_DROPPED, label::REASON, || vec!["expired", "evicted"]),
    labels(RECOVERY_TRANSFERS, label::KIND, || vec!["fetched", "handed_off", "received"]),
];

/// Upper bounds for latency histograms (names ending in `_seconds`): 1 ms … 30 s.
const LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Upper bounds for [`BROADCAST_RECIPIENTS`].
const RECIPIENT_BUCKETS: &[f64] =
    &[0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0, 100_000.0];

/// Why the metrics recorder could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The exporter rejected its configuration, or another global recorder is already installed.
    #[error("cannot install the Prometheus recorder: {0}")]
    Install(#[from] BuildError),
}

// ---- Authentication on CONNECT ([auth]) -------------------------------------------------------

/// Counter: CONNECTs that passed the `[auth]` checks (JWT and/or connect hook).
pub(crate) const AUTH_ACCEPTED: &str = "ioswarm_auth_accepted_total";
/// Counter: CONNECTs and handshakes refused by `[auth]`. Labels: [`label::REASON`] =
/// [`AuthRejectReason`].
pub(crate) const AUTH_REJECTED: &str = "ioswarm_auth_rejected_total";
/// Counter: connect-hook requests, by `result` = [`HookResult`].
pub(crate) const AUTH_HOOK_REQUESTS: &str = "ioswarm_auth_hook_requests_total";

// ---- Forwarding rules ([[forward]]) ------------------------------------------------------------

/// Counter: webhook requests of forwarding rules (client events and lifecycle tries), by
/// `result` (ok, timeout, unreachable, bad_status, bad_reply, busy: refused, the queue was full).
pub(crate) const FORWARD_REQUESTS: &str = "ioswarm_forward_requests_total";
/// Counter: events published on a forwarding rule's Redis channel.
pub(crate) const FORWARD_PUBLISHED: &str = "ioswarm_forward_published_total";
/// Counter: client events refused by the per-client rate limit (`max_events_per_s`, `burst`).
pub(crate) const FORWARD_RATE_LIMITED: &str = "ioswarm_forward_rate_limited_total";
/// Counter: retries of `$connect` / `$disconnect` webhook requests.
pub(crate) const FORWARD_RETRIES: &str = "ioswarm_forward_retries_total";
/// Counter: `$connect` / `$disconnect` events given up once `retry_ms` had passed.
pub(crate) const FORWARD_LIFECYCLE_DROPPED: &str = "ioswarm_forward_lifecycle_dropped_total";

// ---- TLS (--tls-cert, --redis-tls-cert) -------------------------------------------------------

/// Counter: TLS handshakes that failed or timed out. Labels: [`label::LISTENER`] = `socketio` |
/// `redis`.
pub(crate) const TLS_HANDSHAKE_ERRORS: &str = "ioswarm_tls_handshake_errors_total";
/// Counter: certificate reloads on SIGHUP, by `result` (ok, error: the old certificate stays).
pub(crate) const TLS_RELOADS: &str = "ioswarm_tls_reloads_total";

/// `reason` label of [`AUTH_REJECTED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthRejectReason {
    /// No token in any `token_from` source.
    MissingToken,
    /// A token whose signature, algorithm, issuer, audience or `nbf` is wrong.
    InvalidToken,
    /// A token past its `exp`.
    ExpiredToken,
    /// The connect hook answered 401/403.
    HookRefused,
    /// The connect hook timed out, failed, gave a bad reply or had too many waiting.
    HookUnavailable,
    /// A handshake from an origin that is not allowed (cross-site hijacking guard).
    Origin,
}

impl AuthRejectReason {
    /// Every value, in a fixed order.
    pub(crate) const ALL: &[Self] = &[
        Self::MissingToken,
        Self::InvalidToken,
        Self::ExpiredToken,
        Self::HookRefused,
        Self::HookUnavailable,
        Self::Origin,
    ];

    /// The label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::ExpiredToken => "expired_token",
            Self::HookRefused => "hook_refused",
            Self::HookUnavailable => "hook_unavailable",
            Self::Origin => "origin",
        }
    }
}

/// `result` label of [`AUTH_HOOK_REQUESTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HookResult {
    /// 200: the client is accepted.
    Accepted,
    /// 401/403: the app refused the client.
    Refused,
    /// No answer within `connect_hook_timeout_ms`.
    Timeout,
    /// Connection refused, reset, TLS failure.
    Unreachable,
    /// Another status, or a body that is not the expected JSON.
    BadReply,
    /// Too many checks already waiting; the hook was not called.
    QueueFull,
}

impl HookResult {
    /// Every value, in a fixed order.
    pub(crate) const ALL: &[Self] =
        &[Self::Accepted, Self::Refused, Self::Timeout, Self::Unreachable, Self::BadReply, Self::QueueFull];

    /// The label value.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::BadReply => "bad_reply",
            Self::QueueFull => "queue_full",
        }
    }
}

/// The gauges sampled when `/metrics` is read rather than kept up to date on every change:
/// queue depths and task counts, which would otherwise cost a shared counter in every send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sampled {
    /// [`RUNTIME_TASKS`].
    pub(crate) tasks: usize,
    /// [`RUNTIME_QUEUE_DEPTH`].
    pub(crate) runtime_queue: usize,
    /// [`ENGINE_QUEUED_PACKETS`] and [`ENGINE_QUEUED_BYTES`].
    pub(crate) engine_queued: (usize, usize),
    /// [`REDIS_OUTPUT_BYTES`].
    pub(crate) redis_output_bytes: usize,
    /// [`CLUSTER_PEER_QUEUE`], by peer.
    pub(crate) peer_queues: Vec<(u64, usize)>,
}

impl Sampled {
    /// The runtime's figures, from the runtime this is called on (zeros outside one).
    pub(crate) fn runtime() -> (usize, usize) {
        tokio::runtime::Handle::try_current()
            .map(|h| {
                let m = h.metrics();
                (m.num_alive_tasks(), m.global_queue_depth())
            })
            .unwrap_or_default()
    }

    /// Sets the gauges.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn record(&self) {
        metrics::gauge!(RUNTIME_TASKS).set(self.tasks as f64);
        metrics::gauge!(RUNTIME_QUEUE_DEPTH).set(self.runtime_queue as f64);
        metrics::gauge!(ENGINE_QUEUED_PACKETS).set(self.engine_queued.0 as f64);
        metrics::gauge!(ENGINE_QUEUED_BYTES).set(self.engine_queued.1 as f64);
        metrics::gauge!(REDIS_OUTPUT_BYTES).set(self.redis_output_bytes as f64);
        for (peer, depth) in &self.peer_queues {
            metrics::gauge!(CLUSTER_PEER_QUEUE, label::PEER => peer.to_string()).set(*depth as f64);
        }
    }
}

/// The Prometheus builder with ioswarm's histogram buckets.
pub(crate) fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)?
        .set_buckets_for_metric(Matcher::Full(BROADCAST_RECIPIENTS.into()), RECIPIENT_BUCKETS)
}

/// Registers help text for every metric with the current recorder.
pub(crate) fn describe() {
    for m in ALL {
        match m.kind {
            MetricKind::Counter => describe_counter!(m.name, m.help),
            MetricKind::Gauge => describe_gauge!(m.name, m.help),
            MetricKind::Histogram => describe_histogram!(m.name, m.help),
        }
    }
}

/// Registers every metric with the current recorder without changing its value: counters and
/// gauges at 0 (a counter with a label once per declared value), histograms with no
/// observations. A metric labelled by values known only at run time (`peer`) is left to its
/// first use. Dashboards and `absent()` alerts then see every series from the first scrape.
pub(crate) fn zero() {
    for m in ALL {
        let values = LABELS.iter().find(|l| l.metric == m.name).map(|l| (l.key, (l.values)()));
        match (m.kind, values) {
            (MetricKind::Histogram, _) => {
                let _ = metrics::histogram!(m.name);
            }
            (MetricKind::Counter, None) => metrics::counter!(m.name).increment(0),
            (MetricKind::Gauge, None) => metrics::gauge!(m.name).increment(0.0),
            (MetricKind::Counter, Some((key, values))) => {
                for v in values {
                    metrics::counter!(m.name, key => v).increment(0);
                }
            }
            (MetricKind::Gauge, Some((key, values))) => {
                for v in values {
                    metrics::gauge!(m.name, key => v).increment(0.0);
                }
            }
        }
    }
}

/// Installs the process-wide Prometheus recorder, describes every metric and registers each at
/// zero ([`zero`]).
///
/// Call once, early in `main`. Serve [`PrometheusHandle::render`] (the admin server does) and
/// call [`PrometheusHandle::run_upkeep`] periodically (the admin server does, every 5 s).
pub fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let handle = builder()?.install_recorder()?;
    describe();
    zero();
    Ok(handle)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_follow_the_convention() {
        let mut seen = HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} declared twice", m.name);
            assert!(m.name.starts_with("ioswarm_"), "{}", m.name);
            assert!(m.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{}", m.name);
            assert_eq!(m.kind == MetricKind::Counter, m.name.ends_with("_total"), "{}", m.name);
            assert!(!m.help.is_empty(), "{}", m.name);
        }
    }

    #[test]
    fn every_labelled_metric_is_declared_once_with_snake_case_values() {
        let mut seen = HashSet::new();
        for l in LABELS {
            assert!(seen.insert(l.metric), "{} labelled twice", l.metric);
            assert!(ALL.iter().any(|m| m.name == l.metric), "{} not in ALL", l.metric);
            let mut values = HashSet::new();
            for v in (l.values)() {
                assert!(values.insert(v), "{}: {v} twice", l.metric);
                assert!(v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}: {v}", l.metric);
            }
        }
    }

    fn declared(metric: &str) -> HashSet<&'static str> {
        let def = LABELS.iter().find(|l| l.metric == metric).unwrap();
        (def.values)().into_iter().collect()
    }

    #[test]
    fn typed_reasons_are_exactly_the_declared_label_values() {
        // Engine.IO and Socket.IO record `reason.label()` of these enums, nothing else.
        let engine: HashSet<_> = CloseReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(engine, declared(ENGINE_CONNECTIONS_CLOSED));
        assert_eq!(engine.len(), CloseReason::ALL.len());
        let kinds: HashSet<_> = RequestKind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(kinds, declared(ENGINE_HTTP_REQUESTS));
        let disconnects: HashSet<_> = DisconnectReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(disconnects, declared(SOCKETIO_DISCONNECTS));
        assert_eq!(disconnects.len(), DisconnectReason::ALL.len());
        let refusals: HashSet<_> = ConnectErrorReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(refusals, declared(SOCKETIO_CONNECT_ERRORS));
        let drops: HashSet<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(drops, declared(SOCKETIO_PACKETS_DROPPED));
    }

    #[test]
    fn zero_registers_every_metric_and_every_declared_label_value() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            zero();
            // Zeroing again later changes nothing that was recorded.
            metrics::counter!(SOCKETIO_CONNECTS).increment(3);
            zero();
        });
        let text = handle.render();
        for m in ALL {
            let declared = LABELS.iter().find(|l| l.metric == m.name).map(|l| (l.key, (l.values)()));
            match (m.kind, declared) {
                (_, Some((_, values))) if values.is_empty() => {
                    assert!(!text.contains(&format!("\n{}{{", m.name)), "{} appears before a peer exists", m.name);
                }
                (MetricKind::Histogram, _) => {
                    assert!(text.contains(&format!("\n{}_count 0\n", m.name)), "{}: {text}", m.name);
                }
                (_, None) if m.name == SOCKETIO_CONNECTS => {
                    assert!(text.contains(&format!("\n{} 3\n", m.name)), "{text}");
                }
                (_, None) => assert!(text.contains(&format!("\n{} 0\n", m.name)), "{}: {text}", m.name),
                (_, Some((key, values))) => {
                    for v in values {
                        let series = format!("\n{}{{{key}=\"{v}\"}} 0\n", m.name);
                        assert!(text.contains(&series), "{}: {text}", series.trim());
                    }
                }
            }
        }
    }

    #[test]
    fn rendered_output_has_help_labels_and_buckets() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            metrics::counter!(ENGINE_CONNECTIONS_CLOSED, label::REASON => CloseReason::PingTimeout.label())
                .increment(2);
            metrics::gauge!(ENGINE_CONNECTIONS).set(3.0);
            metrics::histogram!(BROADCAST_RECIPIENTS).record(7.0);
            metrics::histogram!("ioswarm_test_latency_seconds").record(0.003);
        });
        let text = handle.render();
        assert!(text.contains("# HELP ioswarm_engine_connections_closed_total Engine.IO sessions closed"), "{text}");
        assert!(text.contains("ioswarm_engine_connections_closed_total{reason=\"ping_timeout\"} 2"), "{text}");
        assert!(text.contains("ioswarm_engine_connections 3"), "{text}");
        assert!(text.contains("ioswarm_broadcast_recipients_bucket{le=\"10\"} 1"), "{text}");
        assert!(text.contains("ioswarm_broadcast_recipients_bucket{le=\"5\"} 0"), "{text}");
        assert!(text.contains("ioswarm_test_latency_seconds_bucket{le=\"0.005\"} 1"), "{text}");
    }
}
