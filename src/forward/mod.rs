//! Forwarding rules: the events browsers send reach the application, by webhook or on a Redis
//! channel (`[[forward]]` tables), as data validated once at start (like `rules`).
//!
//! ```toml
//! [[forward]]
//! nsp = "/"
//! events = ["document::clicked", "chat:*", "$connect", "$disconnect"]  # globs; $ = lifecycle
//! url = "http://127.0.0.1:8080/socket-events"   # webhook …
//! timeout_ms = 5000
//! [[forward]]
//! events = ["Thing::*"]
//! channel = "socket.io-events"                  # … or PUBLISH on the node's Redis broker
//! ```
//!
//! - `config.rs`: [`ForwardConfig`] as written, defaults, [`ForwardError`] naming the setting.
//! - `matcher.rs`: [`ForwardRule`], one validated table, and its pure decisions (does it
//!   forward this event of this namespace; where to).
//! - `message.rs`: the JSON message sent (binary as `{"_binary": "<base64>"}`) and the webhook's
//!   reply, read by the pure [`parse_reply`].
//! - `limit.rs`: [`RateLimiter`], the per-client token bucket, pure over `now`.
//! - this file: [`Forwarder`], the thin runtime: the webhook calls (bounded concurrency and
//!   queue, timeout, retries of lifecycle events), the channel publishes, carrying out replies
//!   on the socket and as cluster-wide broadcasts.
//!
//! A client event goes through the first rule (in file order) that matches it; `$connect` and
//! `$disconnect` go to every rule that names them. Ordering, per socket: admission (rate limit,
//! queue) is decided in the order its events arrive, and its webhook deliveries take turns in
//! that order (a FIFO lock per socket, queued for when the event is dispatched): the app sees
//! `$connect`, the events, `$disconnect`, each POST after the previous reply was carried out.
//! Different sockets never wait on each other. A channel rule publishes at once, in arrival
//! order (it does not wait for the socket's pending webhook deliveries).

mod config;
mod limit;
mod matcher;
mod message;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use config::{
    ForwardConfig, ForwardError, MAX_CONCURRENCY, MAX_EVENT_GLOBS, MAX_FORWARD_RULES, MAX_QUEUE, MAX_RATE,
    MAX_RETRY_MS, MAX_TIMEOUT_MS, validate,
};
pub use limit::{RateLimiter, TokenBucket};
pub use matcher::{ForwardRule, Lifecycle, Target, backoff};
pub use message::{
    BINARY_KEY, DeliveryError, EmitOrder, MAX_REPLY_BYTES, SocketInfo, WebhookReply, args_json, event_message,
    parse_reply,
};

use crate::httpclient::{JsonClient, PostError};
use crate::resp::Broker;
use crate::socketio::{AckSender, Event, Payload, Socket};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The forwarding rules of a node, ready to run. Cheap to clone.
#[derive(Clone, Default)]
pub struct Forwarder(Arc<Inner>);

#[derive(Default)]
struct Inner {
    routes: Vec<Arc<Route>>,
    broker: Option<Arc<Broker>>,
    node: Option<u64>,
    /// Per socket: the turn its webhook deliveries take, in arrival order (a FIFO lock, queued
    /// for synchronously when the event is dispatched). Dropped on `$disconnect`.
    turns: Mutex<HashMap<String, Turn>>,
}

type Turn = Arc<tokio::sync::Mutex<()>>;

struct Route {
    rule: ForwardRule,
    sink: Sink,
    limiter: Mutex<RateLimiter>,
}

enum Sink {
    Webhook(Box<Webhook>),
    Channel(String),
}

struct Webhook {
    url: Uri,
    client: JsonClient,
    timeout: Duration,
    /// Requests in flight.
    slots: Semaphore,
    /// Requests in flight or waiting for a slot.
    admitted: Arc<Semaphore>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rules: Vec<&ForwardRule> = self.0.routes.iter().map(|r| &r.rule).collect();
        f.debug_struct("Forwarder").field("rules", &rules).field("node", &self.0.node).finish_non_exhaustive()
    }
}

impl Forwarder {
    /// The rules of `configs`; `broker` is where channel rules publish (and, through its cluster
    /// seam, every other node's subscribers); `node` is this node's cluster id for the messages.
    pub fn new(
        configs: &[ForwardConfig],
        broker: Option<Arc<Broker>>,
        node: Option<u64>,
    ) -> Result<Self, ForwardError> {
        validate(configs)?;
        let mut routes = Vec::with_capacity(configs.len());
        for (i, config) in configs.iter().enumerate() {
            let rule = ForwardRule::new(i, config)?;
            let sink = match rule.target() {
                Target::Webhook(url) => {
                    let client = JsonClient::for_url(url)
                        .map_err(|e| ForwardError::new(format!("{}.url", rule.setting()), e))?;
                    let (concurrency, queue) = rule.bounds();
                    Sink::Webhook(Box::new(Webhook {
                        url: url.clone(),
                        client,
                        timeout: rule.timeout(),
                        slots: Semaphore::new(concurrency),
                        admitted: Arc::new(Semaphore::new(concurrency.saturating_add(queue))),
                    }))
                }
                Target::Channel(prefix) => {
                    if broker.is_none() {
                        return Err(ForwardError::new(
                            format!("{}.channel", rule.setting()),
                            "no broker to publish on",
                        ));
                    }
                    Sink::Channel(prefix.clone())
                }
            };
            let (rate, burst) = rule.rate();
            routes.push(Arc::new(Route { rule, sink, limiter: Mutex::new(RateLimiter::new(rate, burst)) }));
        }
        Ok(Self(Arc::new(Inner { routes, broker, node, turns: Mutex::default() })))
    }

    /// Whether there is no rule.
    pub fn is_empty(&self) -> bool {
        self.0.routes.is_empty()
    }

    /// Whether some rule forwards `kind` for namespace `nsp`.
    pub fn forwards(&self, nsp: &str, kind: Lifecycle) -> bool {
        self.0.routes.iter().any(|r| r.rule.forwards(nsp, kind))
    }

    /// Whether some rule applies to namespace `nsp` (its sockets' buckets must be dropped on
    /// disconnect).
    pub fn covers(&self, nsp: &str) -> bool {
        self.0.routes.iter().any(|r| r.rule.covers(nsp))
    }

    /// Handles a client event that no other handler took: forwards it through the first rule
    /// that matches, or acks it with no arguments when none does. The rate limit and the queue
    /// are checked before this returns; the returned future runs the webhook call.
    pub fn event(&self, socket: Socket, mut event: Event) -> BoxFuture {
        let Some(route) = self.0.routes.iter().find(|r| r.rule.matches(socket.nsp(), &event.name)) else {
            ack(event.ack, Payload::empty());
            return Box::pin(async {});
        };
        if !route.limiter.lock().allow(socket.id(), Instant::now().into_std()) {
            ::metrics::counter!(crate::metrics::FORWARD_RATE_LIMITED).increment(1);
            tracing::debug!(sid = socket.id(), event = %event.name, rule = route.rule.setting(), "rate limited");
            ack(event.ack, json!({"error": "rate limited"}));
            return Box::pin(async {});
        }
        let args = args_json(std::mem::take(&mut event.payload.args), &event.payload.attachments);
        let message = event_message(socket.nsp(), &event.name, args, &socket_info(&socket), self.0.node);
        match &route.sink {
            Sink::Channel(prefix) => {
                self.publish(prefix, socket.nsp(), &event.name, &message);
                ack(event.ack, Payload::empty());
                Box::pin(async {})
            }
            Sink::Webhook(hook) => {
                let Ok(admitted) = hook.admitted.clone().try_acquire_owned() else {
                    count(Err(&DeliveryError::Busy));
                    tracing::warn!(sid = socket.id(), rule = route.rule.setting(), "webhook queue full; event refused");
                    ack(event.ack, json!({"error": DeliveryError::Busy.client_message()}));
                    return Box::pin(async {});
                };
                let route = route.clone();
                let body = Bytes::from(message.to_string());
                let turn = self.turn(socket.id());
                Box::pin(async move {
                    let Sink::Webhook(hook) = &route.sink else { return };
                    // The socket's earlier events go first (their replies carried out too); the
                    // wait counts against timeout_ms.
                    let deadline = Instant::now() + hook.timeout;
                    let guard = tokio::time::timeout_at(deadline, turn.lock_owned()).await.ok();
                    let result = match guard {
                        Some(_) => hook.call(body, deadline).await,
                        None => Err(DeliveryError::Timeout),
                    };
                    drop(admitted);
                    count(result.as_ref().map(drop));
                    match result {
                        Ok(reply) => carry_out(&socket, reply, event.ack, true),
                        Err(err) => {
                            tracing::warn!(sid = socket.id(), event = %event.name, rule = route.rule.setting(), error = %err, "forwarding failed");
                            ack(event.ack, json!({"error": err.client_message()}));
                        }
                    }
                    drop(guard);
                })
            }
        }
    }

    /// The turn of socket `sid` (created on first use).
    fn turn(&self, sid: &str) -> Turn {
        self.0.turns.lock().entry(sid.to_owned()).or_default().clone()
    }

    /// Forwards `$connect` / `$disconnect` (with `reason`) of `socket` to every rule that names
    /// it; webhook calls that fail are retried with [`backoff`] for the rule's `retry_ms`. On
    /// disconnect, the socket's rate-limit buckets are dropped.
    pub fn lifecycle(&self, socket: &Socket, kind: Lifecycle, reason: Option<&'static str>) -> BoxFuture {
        let turn = match kind {
            Lifecycle::Connect => self.turn(socket.id()),
            Lifecycle::Disconnect => {
                self.forget(socket);
                self.0.turns.lock().remove(socket.id()).unwrap_or_default()
            }
        };
        let info = socket_info(socket);
        let args: Vec<Value> = reason.map(|r| vec![json!(r)]).unwrap_or_default();
        let mut message = event_message(socket.nsp(), kind.name(), args, &info, self.0.node);
        if let Some(reason) = reason {
            message["reason"] = json!(reason);
        }
        if kind == Lifecycle::Connect && socket.recovered() {
            // A session its client got back (connection state recovery): the app saw its
            // `$disconnect` and sees this `$connect`, told apart by this flag.
            message["recovered"] = json!(true);
        }
        let mut calls = Vec::new();
        for route in self.0.routes.iter().filter(|r| r.rule.forwards(socket.nsp(), kind)) {
            match &route.sink {
                Sink::Channel(prefix) => self.publish(prefix, socket.nsp(), kind.name(), &message),
                Sink::Webhook(_) => calls.push(route.clone()),
            }
        }
        if calls.is_empty() {
            return Box::pin(async {});
        }
        let body = Bytes::from(message.to_string());
        let socket = socket.clone();
        Box::pin(async move {
            // After the socket's pending events (for $disconnect), before its first ones (for
            // $connect): the app sees $connect … events … $disconnect.
            let _turn = turn.lock_owned().await;
            for route in calls {
                let Sink::Webhook(hook) = &route.sink else { continue };
                if let Some(reply) = hook.call_with_retries(&route.rule, &socket, kind, body.clone()).await {
                    carry_out(&socket, reply, None, kind == Lifecycle::Connect);
                }
            }
        })
    }

    /// Drops `socket`'s rate-limit buckets (a socket that left, where no rule forwards
    /// `$disconnect`).
    pub fn forget(&self, socket: &Socket) {
        for route in &self.0.routes {
            route.limiter.lock().remove(socket.id());
        }
    }

    /// PUBLISH `message` on `<prefix>#<nsp>#<event>` on this node and every other one.
    fn publish(&self, prefix: &str, nsp: &str, event: &str, message: &Value) {
        let Some(broker) = &self.0.broker else { return };
        let channel = Bytes::from(format!("{prefix}#{nsp}#{event}"));
        let payload = Bytes::from(message.to_string());
        broker.publish(&channel, &payload);
        if let Some(cluster) = broker.cluster() {
            cluster.publish(&channel, &payload, false);
        }
        ::metrics::counter!(crate::metrics::FORWARD_PUBLISHED).increment(1);
    }
}

impl Webhook {
    /// One POST: waits for a slot, then for the reply, all before `deadline`.
    async fn call(&self, body: Bytes, deadline: Instant) -> Result<WebhookReply, DeliveryError> {
        let call = async {
            let _slot = self.slots.acquire().await.map_err(|_| DeliveryError::Unreachable("closed".to_owned()))?;
            let (status, body) = self.client.post(&self.url, body, MAX_REPLY_BYTES).await.map_err(|e| match e {
                PostError::Unreachable(e) => DeliveryError::Unreachable(e),
                PostError::Body(e) => DeliveryError::BadReply(format!("reading the body: {e}")),
            })?;
            parse_reply(status, &body)
        };
        tokio::time::timeout_at(deadline, call).await.unwrap_or(Err(DeliveryError::Timeout))
    }

    /// A lifecycle event: admitted like any event (a full queue is a failed try), retried with
    /// backoff until `retry_ms` has passed. `None` when every try failed.
    async fn call_with_retries(
        &self,
        rule: &ForwardRule,
        socket: &Socket,
        kind: Lifecycle,
        body: Bytes,
    ) -> Option<WebhookReply> {
        let deadline = Instant::now() + rule.retry();
        let mut attempt = 0u32;
        loop {
            let result = match self.admitted.clone().try_acquire_owned() {
                Ok(_admitted) => self.call(body.clone(), Instant::now() + self.timeout).await,
                Err(_) => Err(DeliveryError::Busy),
            };
            count(result.as_ref().map(drop));
            let err = match result {
                Ok(reply) => return Some(reply),
                Err(err) => err,
            };
            attempt = attempt.saturating_add(1);
            let wait = backoff(attempt);
            if Instant::now() + wait > deadline {
                ::metrics::counter!(crate::metrics::FORWARD_LIFECYCLE_DROPPED).increment(1);
                tracing::warn!(sid = socket.id(), event = kind.name(), rule = rule.setting(), attempts = attempt, error = %err, "lifecycle event not delivered; giving up (retry_ms)");
                return None;
            }
            ::metrics::counter!(crate::metrics::FORWARD_RETRIES).increment(1);
            tracing::info!(sid = socket.id(), event = kind.name(), rule = rule.setting(), error = %err, retry_in = ?wait, "lifecycle event failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Counts one webhook request in `ioswarm_forward_requests_total`.
fn count(result: Result<(), &DeliveryError>) {
    let label = match result {
        Ok(()) => "ok",
        Err(err) => err.label(),
    };
    ::metrics::counter!(crate::metrics::FORWARD_REQUESTS, crate::metrics::label::RESULT => label).increment(1);
}

fn ack(ack: Option<AckSender>, payload: impl Into<Payload>) {
    if let Some(ack) = ack {
        let _ = ack.send(payload);
    }
}

/// What the message tells of a socket: id, data, rooms (own id left out, sorted).
fn socket_info(socket: &Socket) -> SocketInfo {
    let mut rooms: Vec<String> = socket.rooms().into_iter().skip(1).collect();
    rooms.sort();
    SocketInfo { id: socket.id().to_owned(), data: socket.data(), rooms }
}

/// Carries out a webhook's reply for `socket`: joins and leaves (when `on_socket`, rooms checked
/// like every client-named room), the broadcasts (cluster-wide), the ack, then the disconnect.
fn carry_out(socket: &Socket, reply: WebhookReply, ack_to: Option<AckSender>, on_socket: bool) {
    if on_socket {
        for room in &reply.join {
            if !crate::rules::valid_room(room) {
                tracing::warn!(sid = socket.id(), room, "webhook reply: not a valid room to join; skipped");
            } else if !socket.join(room) {
                tracing::warn!(sid = socket.id(), room, "webhook reply: too many rooms; join skipped");
            }
        }
        for room in &reply.leave {
            if crate::rules::valid_room(room) {
                socket.leave(room);
            }
        }
    }
    for order in reply.emit {
        if crate::rules::RESERVED_EVENTS.contains(&order.event.as_str()) {
            tracing::warn!(event = %order.event, "webhook reply: reserved event name; emit skipped");
            continue;
        }
        socket.namespace().select(&order.rooms, &order.except).emit(&order.event, Payload::json(order.args));
    }
    ack(ack_to, Payload::json(reply.ack.unwrap_or_default()));
    if on_socket && reply.disconnect {
        socket.disconnect();
    }
}
