//! ioswarm: a Socket.IO v5 / Engine.IO v4 server with an embedded
//! Redis-protocol broker, built to run as a cluster of nodes.
//!
//! Layout (the folders are the architecture). The module graph runs one way: transport
//! (`engineio`) → protocol (`socketio`, `rooms`) → services (`resp`, the `emitter` bridge,
//! `cluster`, `admin`, `app`). A lower layer exposes a trait the upper one implements and never
//! imports it (`tests/module_graph.rs` fails when one does):
//!
//! ```text
//! top        node           a running node: wires every layer below, the shutdown sequence
//! services   admin, app     the binary's wiring and HTTP admin: use what they need below
//!            auth           CONNECT authentication (JWT, connect hook, Origin): uses socketio, http
//!            forward        forwarding rules (webhook, Redis channel): uses socketio, resp
//!            cluster        uses resp, socketio, rooms, engineio (implements Adapter, KvBackend
//!                           and engineio::Relay)
//!            emitter        uses resp, socketio (implements PublishHook)
//!            resp           uses no other layer (owns PublishHook and kv::KvBackend)
//! protocol   socketio       uses rooms, engineio (owns Adapter)
//!            rooms          uses engineio
//! transport  engineio
//! plumbing   net, tls, config, shutdown, limits, metrics: used by any layer, use none of them
//!            statics        pages on the Socket.IO listener (--static, --client-bundle): uses http
//!            httpclient     the JSON-over-HTTP client of the connect hook and the webhooks
//!            rules          room rules and room templates: pure data, uses none of them
//! ```
//!
//! - [`engineio`]: Engine.IO v4 transport (polling, WebSocket, upgrade,
//!   heartbeat), and v3 for socket.io 1.x/2.x clients (`packet_v3`, `--allow-eio3`). Pure
//!   packet codecs and session state machine, plus the HTTP and WebSocket drivers that carry
//!   out the state machine's decisions. Its [`engineio::Relay`] is the seam through which the
//!   cluster carries the requests of sessions other nodes hold (no sticky sessions needed).
//! - [`socketio`]: Socket.IO v5 on top: packet codec, namespaces, sockets,
//!   acks, binary attachments, middleware, the public API; `socketio::eio3` holds what differs
//!   for 2.x clients (Socket.IO protocol 4); connection state recovery (`socketio::recovery`:
//!   a pure log of recoverable broadcasts and kept sessions). Its
//!   [`socketio::Adapter`] is the seam the cluster implements.
//! - [`rooms`]: the per-namespace room registry (dashmap) and the
//!   [`rooms::Broadcast`] value executed by the local fan-out and forwarded
//!   between nodes.
//! - [`resp`]: the embedded Redis-protocol broker (RESP2/3 codec, pub/sub,
//!   the key-value commands). It owns two seams: [`resp::PublishHook`] (the
//!   emitter bridge implements it) and [`resp::kv::KvBackend`] with its
//!   operation types and the [`resp::kv::KvStore`] state machine (the raft
//!   node implements it). It imports neither `socketio` nor `cluster`.
//! - [`emitter`]: the socket.io emitter bridge, above both `resp` and
//!   `socketio`: emitter channel names, the tolerant msgpack reader, decoding
//!   into typed broadcasts and requests, and their execution on a
//!   [`socketio::Server`]; [`emitter::bridge`] is the publish hook.
//! - `cluster`: protobuf schemas (`proto/`) and their one conversion module,
//!   mutual-TLS credentials, the QUIC transport, gossip (failure detection and
//!   room interest), openraft membership and the replicated key-value store,
//!   the runtime that forwards broadcasts and runs cluster-wide operations, and
//!   connection state recovery across nodes (sessions taken, handed over, relayed)
//!   (`socketio::adapter` is its seam with the Socket.IO server,
//!   `resp::kv::KvBackend` with the Redis ingress), and relays Engine.IO
//!   requests to the node holding their session (`engineio::Relay`).
//! - [`node`]: [`node::Node::start`] turns a validated configuration into a serving node
//!   (listeners, the Socket.IO server with the built-in app, the broker, the cluster) and
//!   [`node::Node::shutdown`] runs the one shutdown sequence (drain, close clients spread out,
//!   leave the cluster, stop) under one deadline; `main.rs` only calls these.
//! - [`presence`]: live counts (`[[presence]]`) derived from the sockets each node holds,
//!   exchanged between nodes, readable with `GET` on the Redis port and `/v1/presence`.
//! - `net`: the accept loop the three TCP listeners share (bound, backoff, shutdown).
//! - [`tls`]: TLS on the Socket.IO and Redis-protocol listeners (rustls), the certificate
//!   reloaded on SIGHUP.
//! - `http`: the listener shared by every HTTP endpoint.
//! - [`statics`]: pages served on the Socket.IO listener (`--static DIR`, `--client-bundle FILE`):
//!   path checks, content types, ETag/304; uses `http` and `engineio::Body` only.
//! - `admin`: the admin listener (`/metrics`, `/healthz`, the HTTP API).
//! - [`auth`]: authentication on CONNECT from the `[auth]` table: token sources, JWT
//!   verification, the connect hook, the cross-site (Origin) guard on handshakes.
//! - `config`, `shutdown`, `limits`, `metrics`: process plumbing for the binary.
//! - `app`: the built-in application the `ioswarm` binary runs.
//! - [`forward`]: forwarding rules (`[[forward]]`): client events and `$connect` /
//!   `$disconnect` sent to the application by webhook (whose reply acks, emits, joins, leaves or
//!   disconnects) or published on a Redis channel; per-client rate limit; validated once at start.
//! - [`rules`]: room rules (`[[rooms.rule]]`: join or leave a room on a client's own event) and
//!   the room-name templates `rooms_on_connect` uses; a table validated once at start and pure
//!   decisions over an event's arguments and the socket data.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod emitter;
pub mod engineio;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
mod httpclient;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod node;
pub mod presence;
pub mod resp;
pub mod rooms;
pub mod rules;
pub mod shutdown;
mod sid;
pub mod socketio;
pub mod statics;
pub mod tls;

pub use sid::Sid;
