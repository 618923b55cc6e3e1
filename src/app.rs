//! The built-in application of the `ioswarm` binary (see
//! `docs/binary-spec.md`): optional token auth on CONNECT, the `ioswarm:*`
//! events clients may use, the room rules (`crate::rules`) carried out on
//! sockets, and the admin HTTP API backends use to emit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::{AdminRoutes, json_error, json_response};
use crate::forward::Lifecycle;
use crate::rules::{Op, RESERVED_EVENTS, RoomRules, Rule};
use crate::socketio::{ConnectError, Event, Namespace, Payload, Server, Socket};

/// What clients are allowed to do by themselves.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// A CONNECT must carry `{"token": …}` equal to this.
    pub auth_token: Option<String>,
    /// The rooms clients may join and leave with events: the `[[rooms.rule]]` table and the
    /// built-in `ioswarm:join` / `ioswarm:leave` set (`RoomRules::new(&config.rooms,
    /// config.client_rooms)`).
    pub rooms: RoomRules,
    /// The `[auth]` checks (JWT, connect hook), run on the namespaces they apply to.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// Clients may broadcast to rooms they are in (`ioswarm:to`).
    pub client_relay: bool,
    /// The `[[forward]]` rules: events no other handler takes, and `$connect` / `$disconnect`,
    /// go to the application.
    pub forward: crate::forward::Forwarder,
}

/// Installs the built-in application on every namespace `io` accepts.
pub fn install(io: &Server, options: AppOptions) {
    let options = Arc::new(options);
    let template = options.clone();
    io.on_new_namespace(move |ns| configure(ns, template.clone()));
    for ns in io.namespaces() {
        configure(&ns, options.clone());
    }
}

fn configure(ns: &Namespace, options: Arc<AppOptions>) {
    if let Some(token) = options.auth_token.clone() {
        ns.use_middleware(move |req| {
            let ok = req.auth.get("token").and_then(Value::as_str) == Some(token.as_str());
            async move { if ok { Ok(()) } else { Err(ConnectError::new("unauthorized")) } }
        });
    }
    if let Some(auth) = options.auth.clone().filter(|a| a.applies_to(ns.name())) {
        ns.use_middleware(move |req| {
            let auth = auth.clone();
            async move { auth.check(&req).await }
        });
    }
    ns.on("ioswarm:echo", |_socket, event: Event| async move {
        if let Some(ack) = event.ack {
            let _ = ack.send(event.payload);
        }
    });
    // One handler per room rule (the built-in ioswarm:join / ioswarm:leave included).
    for rule in options.rooms.rules() {
        let name = rule.event().to_owned();
        let rule = Arc::new(rule.clone());
        ns.on(&name, move |socket, event| {
            let rule = rule.clone();
            async move { apply_rule(&socket, &rule, event) }
        });
    }
    let opts = options;
    let relay_opts = opts.clone();
    ns.on("ioswarm:to", move |socket, event| {
        let allowed = relay_opts.client_relay;
        async move { relay(&socket, event, allowed) }
    });
    // Events no handler above took: forwarded by the first `[[forward]]` rule that matches,
    // otherwise acked with no arguments and dropped.
    let forward = opts.forward.clone();
    ns.on_any(move |socket, event| forward.event(socket, event));
    let forward = opts.forward.clone();
    if forward.forwards(ns.name(), Lifecycle::Connect) {
        let forward = forward.clone();
        ns.on_connect(move |socket| forward.lifecycle(&socket, Lifecycle::Connect, None));
    }
    if forward.covers(ns.name()) {
        // Also drops the socket's rate-limit buckets where no rule forwards `$disconnect`.
        ns.on_disconnect(move |socket, reason| forward.lifecycle(&socket, Lifecycle::Disconnect, Some(reason)));
    }
}

fn reply(event: Event, value: Value) {
    if let Some(ack) = event.ack {
        let _ = ack.send(value);
    }
}

/// Runs a room rule for one event: joins or leaves what the rule decides, then acks the socket's
/// rooms (its own id left out, sorted), or the refusal; a refusal changes nothing.
fn apply_rule(socket: &Socket, rule: &Rule, event: Event) {
    let change = match rule.decide(&event.payload.args, &socket.data()) {
        Ok(change) => change,
        Err(refusal) => {
            tracing::debug!(
                sid = socket.id(),
                event = rule.event(),
                rule = rule.setting(),
                ?refusal,
                "room rule refused"
            );
            return reply(event, json!({ "error": refusal.message() }));
        }
    };
    for room in &change.rooms {
        match change.op {
            Op::Join => {
                if !socket.join(room) {
                    return reply(event, json!({"error": "too many rooms"}));
                }
            }
            Op::Leave => socket.leave(room),
        }
    }
    let mut current: Vec<String> = socket.rooms().into_iter().skip(1).collect();
    current.sort();
    reply(event, json!({ "rooms": current }))
}

fn relay(socket: &Socket, mut event: Event, allowed: bool) {
    let room = event.payload.args.first().and_then(Value::as_str).map(str::to_owned);
    let name = event.payload.args.get(1).and_then(Value::as_str).map(str::to_owned);
    let (Some(room), Some(name)) = (room, name) else {
        return reply(event, json!({"error": "expected (room, event, ...args)"}));
    };
    if !allowed || !socket.rooms().contains(&room) || room == socket.id() {
        return reply(event, json!({"error": "forbidden"}));
    }
    if RESERVED_EVENTS.contains(&name.as_str()) {
        return reply(event, json!({"error": "reserved event name"}));
    }
    let args = event.payload.args.split_off(2);
    let payload = Payload { args, attachments: std::mem::take(&mut event.payload.attachments) };
    let recipients = socket.to(room).emit(&name, payload);
    reply(event, json!({ "recipients": recipients }))
}

/// The admin HTTP API: `POST /v1/emit`, `GET /v1/sockets`, `POST /v1/sockets/join|leave|disconnect`
/// (all cluster-wide on a cluster node) and `GET /cluster`.
#[derive(Debug, Clone)]
pub struct AdminApi {
    io: Server,
    cluster: Option<crate::cluster::node::ClusterNode>,
    presence: Option<crate::presence::Presence>,
}

impl AdminApi {
    /// The API over `io`.
    pub fn new(io: Server) -> Self {
        Self { io, cluster: None, presence: None }
    }

    /// Serves `GET /v1/presence` from `presence`.
    pub fn with_presence(mut self, presence: crate::presence::Presence) -> Self {
        self.presence = Some(presence);
        self
    }

    /// The API over `io`, on a cluster node.
    pub fn with_cluster(io: Server, cluster: crate::cluster::node::ClusterNode) -> Self {
        Self { io, cluster: Some(cluster), presence: None }
    }

    async fn emit(&self, body: &[u8]) -> Response<Bytes> {
        let req: EmitRequest = match serde_json::from_slice(body) {
            Ok(req) => req,
            Err(err) => return json_error(StatusCode::BAD_REQUEST, &format!("invalid request: {err}")),
        };
        let Some(ns) = self.io.namespace_for_broadcast(&req.nsp) else {
            return json_response(StatusCode::OK, &json!({"recipients": 0}));
        };
        let mut op = ns.select(&req.rooms, &req.except);
        if req.volatile {
            op = op.volatile();
        }
        let payload = Payload::json(req.args);
        // `ack: true` waits the server's --ack-timeout-ms; `ackTimeoutMs` sets the wait itself.
        let wait = match (req.ack, req.ack_timeout_ms) {
            (_, Some(ms)) => Some(Some(Duration::from_millis(ms))),
            (true, None) => Some(None),
            (false, None) => None,
        };
        match wait {
            None => {
                let (recipients, forwarded) = op.emit_forwarded(&req.event, payload);
                let mut body = json!({ "recipients": recipients });
                if self.cluster.is_some() {
                    body["forwardedTo"] = json!(forwarded);
                }
                json_response(StatusCode::OK, &body)
            }
            Some(timeout) => {
                if let Some(timeout) = timeout {
                    op = op.timeout(timeout);
                }
                let results = op.emit_with_ack(&req.event, payload).await;
                let acks: Vec<Value> = results.acks.into_iter().map(|p| Value::Array(p.args)).collect();
                let mut body = json!({ "recipients": results.recipients, "acks": acks, "timedOut": results.timed_out });
                if self.cluster.is_some() {
                    body["missingNodes"] = json!(results.missing_nodes);
                }
                json_response(StatusCode::OK, &body)
            }
        }
    }

    async fn sockets(&self, query: &str) -> Response<Bytes> {
        let mut query = crate::engineio::parse_query(query);
        let nsp = query.remove("nsp").unwrap_or_else(root_nsp);
        let rooms: Vec<String> = query.remove("room").into_iter().collect();
        let Some(ns) = self.io.namespace_for_broadcast(&nsp) else {
            return json_response(StatusCode::OK, &json!({ "sockets": [] }));
        };
        let fetched = ns.select(&rooms, &[]).fetch_sockets().await;
        let Some(node) = self.cluster.as_ref().map(crate::cluster::node::ClusterNode::id) else {
            let sockets: Vec<Value> = fetched
                .local
                .iter()
                .map(|s| json!({ "id": s.id(), "rooms": s.rooms().into_iter().skip(1).collect::<Vec<_>>(), "data": s.data() }))
                .collect();
            return json_response(StatusCode::OK, &json!({ "sockets": sockets }));
        };
        let mut sockets: Vec<Value> = fetched
            .local
            .iter()
            .map(|s| {
                json!({ "id": s.id(), "rooms": s.rooms().into_iter().skip(1).collect::<Vec<_>>(), "node": node, "data": s.data() })
            })
            .collect();
        sockets.extend(
            fetched.remote.iter().map(|s| json!({ "id": s.id, "rooms": s.rooms, "node": s.node, "data": s.data })),
        );
        json_response(StatusCode::OK, &json!({ "sockets": sockets, "missingNodes": fetched.missing_nodes }))
    }

    /// `GET /v1/presence`: every value, or with `key=K` that key's value; for a room key
    /// (`key=users:ROOM::a`) also who is in the room (ids, data and node), cluster-wide.
    async fn presence(&self, query: &str) -> Response<Bytes> {
        let Some(presence) = self.presence.as_ref().filter(|p| p.is_enabled()) else {
            return json_error(StatusCode::NOT_FOUND, "no [[presence]] is configured");
        };
        let mut query = crate::engineio::parse_query(query);
        let Some(key) = query.remove("key") else {
            return json_response(StatusCode::OK, &json!({ "values": presence.values() }));
        };
        let Some((entry, room)) = presence.entry_of(&key) else {
            return json_error(StatusCode::NOT_FOUND, &format!("{key:?} is not a presence key"));
        };
        let value = presence.value(&key).unwrap_or(0);
        let Some(room) = room else {
            return json_response(StatusCode::OK, &json!({ "key": key, "value": value }));
        };
        let Some(ns) = self.io.namespace_for_broadcast(&entry.nsp) else {
            return json_response(StatusCode::OK, &json!({ "key": key, "value": value, "sockets": [] }));
        };
        let fetched = ns.select(std::slice::from_ref(&room), &[]).fetch_sockets().await;
        let node = self.cluster.as_ref().map(crate::cluster::node::ClusterNode::id);
        let mut sockets: Vec<Value> =
            fetched.local.iter().map(|s| json!({ "id": s.id(), "data": s.data(), "node": node })).collect();
        sockets.extend(fetched.remote.iter().map(|s| json!({ "id": s.id, "data": s.data, "node": s.node })));
        json_response(
            StatusCode::OK,
            &json!({ "key": key, "room": room, "value": value, "sockets": sockets, "missingNodes": fetched.missing_nodes }),
        )
    }

    async fn sockets_action(&self, action: &str, body: &[u8]) -> Response<Bytes> {
        let req: SocketsRequest = match serde_json::from_slice(body) {
            Ok(req) => req,
            Err(err) => return json_error(StatusCode::BAD_REQUEST, &format!("invalid request: {err}")),
        };
        let Some(ns) = self.io.namespace_for_broadcast(&req.nsp) else {
            return json_response(StatusCode::OK, &json!({"affected": 0, "missingNodes": []}));
        };
        let op = ns.select(&req.rooms, &req.except);
        let done = match action {
            "join" => op.sockets_join(&req.join).await,
            "leave" => op.sockets_leave(&req.leave).await,
            _ => op.disconnect_sockets(req.close).await,
        };
        json_response(StatusCode::OK, &json!({ "affected": done.affected, "missingNodes": done.missing_nodes }))
    }

    /// `POST /cluster/remove {"node_id": N}`: takes node N out of the raft membership (for a node
    /// that is gone for good, e.g. its data dir was lost).
    async fn remove_member(&self, body: &[u8]) -> Response<Bytes> {
        let Some(node) = &self.cluster else {
            return json_error(StatusCode::NOT_FOUND, "this node is not part of a cluster (no --node-id)");
        };
        let id = match serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("node_id")?.as_u64()) {
            Some(id) => id,
            None => return json_error(StatusCode::BAD_REQUEST, "expected {\"node_id\": N}"),
        };
        match node.raft().remove_node(id).await {
            Ok(()) => json_response(StatusCode::OK, &json!({ "removed": id })),
            Err(err) => json_error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
        }
    }

    fn cluster(&self) -> Response<Bytes> {
        match &self.cluster {
            Some(node) => json_response(StatusCode::OK, &node.status_json()),
            None => json_error(StatusCode::NOT_FOUND, "this node is not part of a cluster (no --node-id)"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EmitRequest {
    #[serde(default = "root_nsp")]
    nsp: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
    event: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    volatile: bool,
    /// Ask every recipient for an acknowledgement and wait up to the server's ack timeout.
    #[serde(default)]
    ack: bool,
    /// Ask for acknowledgements and wait up to this long (overrides the server's ack timeout).
    #[serde(default)]
    ack_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SocketsRequest {
    #[serde(default = "root_nsp")]
    nsp: String,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    except: Vec<String>,
    #[serde(default)]
    join: Vec<String>,
    #[serde(default)]
    leave: Vec<String>,
    #[serde(default)]
    close: bool,
}

fn root_nsp() -> String {
    "/".to_owned()
}

impl AdminRoutes for AdminApi {
    fn handle(&self, req: Request<Bytes>) -> Pin<Box<dyn Future<Output = Option<Response<Bytes>>> + Send + '_>> {
        Box::pin(async move {
            match (req.method(), req.uri().path()) {
                (&Method::POST, "/v1/emit") => Some(self.emit(req.body()).await),
                (&Method::GET, "/v1/sockets") => Some(self.sockets(req.uri().query().unwrap_or("")).await),
                (&Method::GET, "/v1/presence") => Some(self.presence(req.uri().query().unwrap_or("")).await),
                (&Method::POST, "/v1/sockets/join") => Some(self.sockets_action("join", req.body()).await),
                (&Method::POST, "/v1/sockets/leave") => Some(self.sockets_action("leave", req.body()).await),
                (&Method::POST, "/v1/sockets/disconnect") => Some(self.sockets_action("disconnect", req.body()).await),
                (&Method::GET, "/cluster") => Some(self.cluster()),
                (&Method::POST, "/cluster/remove") => Some(self.remove_member(req.body()).await),
                (
                    _,
                    "/v1/emit"
                    | "/v1/presence"
                    | "/v1/sockets"
                    | "/v1/sockets/join"
                    | "/v1/sockets/leave"
                    | "/v1/sockets/disconnect"
                    | "/cluster"
                    | "/cluster/remove",
                ) => Some(json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
                _ => None,
            }
        })
    }
}
