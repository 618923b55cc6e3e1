//! The pub/sub registry: channel → subscribers, pattern → subscribers, shard channel →
//! subscribers.
//!
//! Channels and shard channels live in sharded [`DashMap`]s; patterns in one list (every publish
//! has to test every pattern anyway, like Redis does). Subscribers are kept in subscription order,
//! so one publish reaches them in the order Redis would write to them. A publish encodes its
//! message frame at most once per protocol version and shares the bytes between subscribers;
//! queuing never waits (see [`super::output`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::RwLock;

use super::frame::{self, Proto};
use super::glob;
use super::output::ClientOutput;

/// Called for every PUBLISH and SPUBLISH a client sends (not for [`Broker::publish`] calls made
/// by the node itself). Must not block: it runs on the publishing connection's task.
pub trait PublishHook: Send + Sync + 'static {
    /// A client published `message` on `channel`.
    fn on_publish(&self, channel: &[u8], message: &Bytes);
}

/// A boxed future of per-channel subscriber counts.
pub type CountsFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u64>> + Send + 'static>>;

/// The cluster, as the broker sees it: publishes reach every node's subscribers, and
/// `PUBSUB NUMSUB` counts them all.
pub trait ClusterPubSub: Send + Sync + std::fmt::Debug + 'static {
    /// A client of this node published `message` on `channel` (a shard channel when `shard`);
    /// deliver it to the other nodes' subscribers. Never waits.
    fn publish(&self, channel: &Bytes, message: &Bytes, shard: bool);

    /// Subscriber counts of `channels` on the other nodes (nodes that do not answer in time
    /// count as zero).
    fn numsub(&self, channels: Vec<Bytes>, shard: bool) -> CountsFuture;
}

/// One subscriber: a client id and its output queue.
#[derive(Clone, Debug)]
pub(crate) struct Subscriber {
    pub(crate) out: Arc<ClientOutput>,
}

impl Subscriber {
    fn id(&self) -> u64 {
        self.out.id()
    }
}

/// The publish hook and the cluster as one connection last saw them ([`Broker::refresh`]).
///
/// A connection publishes with its own copy: it reads one counter that changes only when
/// [`Broker::set_publish_hook`] or [`Broker::set_cluster`] runs, where taking the broker's locks
/// and reference counts on every PUBLISH would move their cache lines between the cores of every
/// publishing connection.
#[derive(Default)]
pub(crate) struct Handlers {
    generation: u64,
    pub(crate) hook: Option<Arc<dyn PublishHook>>,
    pub(crate) cluster: Option<Arc<dyn ClusterPubSub>>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handlers")
            .field("generation", &self.generation)
            .field("hook", &self.hook.is_some())
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// The pub/sub registry shared by every connection of a node.
pub struct Broker {
    next_client_id: AtomicU64,
    channels: DashMap<Bytes, Vec<Subscriber>>,
    /// Entries of `channels`: a publish to a node without channel subscribers skips the map.
    channel_count: AtomicUsize,
    shard_channels: DashMap<Bytes, Vec<Subscriber>>,
    patterns: RwLock<Vec<(Bytes, Vec<Subscriber>)>>,
    pattern_count: AtomicUsize,
    hook: RwLock<Option<Arc<dyn PublishHook>>>,
    cluster: RwLock<Option<Arc<dyn ClusterPubSub>>>,
    /// Bumped after `hook` or `cluster` changed (starts at 1: a fresh [`Handlers`] is stale).
    handlers_generation: AtomicU64,
    messages_delivered: AtomicU64,
    clients_killed: AtomicU64,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("channels", &self.channels.len())
            .field("shard_channels", &self.shard_channels.len())
            .field("patterns", &self.pattern_count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

/// A message frame encoded lazily, once per protocol version.
struct Frames<'a> {
    kind: &'static [u8],
    pattern: Option<&'a [u8]>,
    channel: &'a [u8],
    message: &'a [u8],
    resp2: Option<Bytes>,
    resp3: Option<Bytes>,
}

impl<'a> Frames<'a> {
    fn new(kind: &'static [u8], pattern: Option<&'a [u8]>, channel: &'a [u8], message: &'a [u8]) -> Self {
        Self { kind, pattern, channel, message, resp2: None, resp3: None }
    }

    fn get(&mut self, proto: Proto) -> Bytes {
        let (kind, pattern, channel, message) = (self.kind, self.pattern, self.channel, self.message);
        let slot = match proto {
            Proto::Resp2 => &mut self.resp2,
            Proto::Resp3 => &mut self.resp3,
        };
        slot.get_or_insert_with(|| {
            let mut out = BytesMut::with_capacity(message.len() + channel.len() + 48);
            frame::write_push_len(&mut out, proto, if pattern.is_some() { 4 } else { 3 });
            frame::write_bulk(&mut out, kind);
            if let Some(pattern) = pattern {
                frame::write_bulk(&mut out, pattern);
            }
            frame::write_bulk(&mut out, channel);
            frame::write_bulk(&mut out, message);
            out.freeze()
        })
        .clone()
    }
}

impl Broker {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            next_client_id: AtomicU64::new(1),
            channels: DashMap::new(),
            channel_count: AtomicUsize::new(0),
            shard_channels: DashMap::new(),
            patterns: RwLock::new(Vec::new()),
            pattern_count: AtomicUsize::new(0),
            hook: RwLock::new(None),
            cluster: RwLock::new(None),
            handlers_generation: AtomicU64::new(1),
            messages_delivered: AtomicU64::new(0),
            clients_killed: AtomicU64::new(0),
        }
    }

    /// Installs the hook called for every client PUBLISH / SPUBLISH (replacing any earlier one).
    pub fn set_publish_hook(&self, hook: Arc<dyn PublishHook>) {
        *self.hook.write() = Some(hook);
        self.handlers_generation.fetch_add(1, Ordering::Release);
    }

    /// Connects the broker to a cluster (replacing any earlier one).
    pub fn set_cluster(&self, cluster: Arc<dyn ClusterPubSub>) {
        *self.cluster.write() = Some(cluster);
        self.handlers_generation.fetch_add(1, Ordering::Release);
    }

    /// Brings a connection's copy of the publish hook and cluster up to date.
    pub(crate) fn refresh(&self, handlers: &mut Handlers) {
        let generation = self.handlers_generation.load(Ordering::Acquire);
        if handlers.generation != generation {
            handlers.hook = self.hook.read().clone();
            handlers.cluster = self.cluster.read().clone();
            handlers.generation = generation;
        }
    }

    /// The cluster, if this node is part of one.
    pub(crate) fn cluster(&self) -> Option<Arc<dyn ClusterPubSub>> {
        self.cluster.read().clone()
    }

    /// Delivers `message` to the subscribers of `channel` and of every matching pattern on this
    /// node. Returns the number of deliveries (a client subscribed to the channel and to a
    /// matching pattern counts twice, like Redis). Does not call the publish hook.
    pub fn publish(&self, channel: &[u8], message: &Bytes) -> usize {
        // Read the clock only for a delivery (a publish nobody receives is the common case).
        let mut now = None;
        let mut receivers = 0;
        let subs = if self.channel_count.load(Ordering::Acquire) > 0 { self.channels.get(channel) } else { None };
        if let Some(subs) = subs {
            let mut frames = Frames::new(b"message", None, channel, message);
            for sub in subs.iter() {
                self.deliver(sub, frames.get(sub.out.proto()), *now.get_or_insert_with(Instant::now));
            }
            receivers += subs.len();
        }
        if self.pattern_count.load(Ordering::Acquire) > 0 {
            let patterns = self.patterns.read();
            for (pattern, subs) in patterns.iter() {
                if !glob::matches(pattern, channel) {
                    continue;
                }
                let mut frames = Frames::new(b"pmessage", Some(pattern), channel, message);
                for sub in subs {
                    self.deliver(sub, frames.get(sub.out.proto()), *now.get_or_insert_with(Instant::now));
                }
                receivers += subs.len();
            }
        }
        receivers
    }

    /// Bytes waiting in the output buffers of every subscriber, each counted once however many
    /// channels and patterns it is subscribed to (walks every subscription: for a scrape).
    pub fn subscriber_output_bytes(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        let mut count = |sub: &Subscriber| {
            if seen.insert(sub.id()) {
                bytes += sub.out.pending();
            }
        };
        for map in [&self.channels, &self.shard_channels] {
            for entry in map.iter() {
                entry.value().iter().for_each(&mut count);
            }
        }
        for (_, subs) in self.patterns.read().iter() {
            subs.iter().for_each(&mut count);
        }
        bytes
    }

    /// Delivers `message` to the subscribers of shard channel `channel` (SPUBLISH semantics:
    /// patterns do not apply). Does not call the publish hook.
    pub fn spublish(&self, channel: &[u8], message: &Bytes) -> usize {
        let now = Instant::now();
        let Some(subs) = self.shard_channels.get(channel) else { return 0 };
        let mut frames = Frames::new(b"smessage", None, channel, message);
        for sub in subs.iter() {
            self.deliver(sub, frames.get(sub.out.proto()), now);
        }
        subs.len()
    }

    fn deliver(&self, sub: &Subscriber, frame: Bytes, now: Instant) {
        self.messages_delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(reason) = sub.out.push_message(frame, now) {
            self.clients_killed.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(crate::metrics::REDIS_CLIENTS_KILLED, "reason" => reason.as_str()).increment(1);
            tracing::warn!(client = sub.id(), reason = reason.as_str(), "disconnecting slow pub/sub client");
        }
    }

    /// Subscribers of `channel` on this node.
    pub fn numsub(&self, channel: &[u8]) -> usize {
        self.channels.get(channel).map_or(0, |s| s.len())
    }

    /// Subscribers of shard channel `channel` on this node.
    pub fn shard_numsub(&self, channel: &[u8]) -> usize {
        self.shard_channels.get(channel).map_or(0, |s| s.len())
    }

    /// Distinct patterns with at least one subscriber.
    pub fn numpat(&self) -> usize {
        self.pattern_count.load(Ordering::Acquire)
    }

    /// Channels with at least one subscriber, optionally filtered by a glob pattern.
    pub fn channels(&self, pattern: Option<&[u8]>) -> Vec<Bytes> {
        Self::names(&self.channels, pattern)
    }

    /// Shard channels with at least one subscriber, optionally filtered by a glob pattern.
    pub fn shard_channels(&self, pattern: Option<&[u8]>) -> Vec<Bytes> {
        Self::names(&self.shard_channels, pattern)
    }

    /// Messages queued to subscribers since start.
    pub fn messages_delivered(&self) -> u64 {
        self.messages_delivered.load(Ordering::Relaxed)
    }

    /// Subscribers disconnected for exceeding their output limits since start.
    pub fn clients_killed(&self) -> u64 {
        self.clients_killed.load(Ordering::Relaxed)
    }

    fn names(map: &DashMap<Bytes, Vec<Subscriber>>, pattern: Option<&[u8]>) -> Vec<Bytes> {
        map.iter().filter(|e| pattern.is_none_or(|p| glob::matches(p, e.key()))).map(|e| e.key().clone()).collect()
    }

    /// A fresh client id.
    pub(crate) fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds `sub` to `channel` (the caller knows it is not subscribed yet).
    pub(crate) fn subscribe(&self, channel: Bytes, sub: &Subscriber) {
        match self.channels.entry(channel) {
            Entry::Occupied(mut subs) => subs.get_mut().push(sub.clone()),
            Entry::Vacant(entry) => {
                entry.insert(vec![sub.clone()]);
                self.channel_count.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Removes client `id` from `channel`.
    pub(crate) fn unsubscribe(&self, channel: &[u8], id: u64) {
        if Self::remove(&self.channels, channel, id) {
            self.channel_count.fetch_sub(1, Ordering::Release);
        }
    }

    /// Adds `sub` to shard channel `channel`.
    pub(crate) fn ssubscribe(&self, channel: Bytes, sub: &Subscriber) {
        self.shard_channels.entry(channel).or_default().push(sub.clone());
    }

    /// Removes client `id` from shard channel `channel`.
    pub(crate) fn sunsubscribe(&self, channel: &[u8], id: u64) {
        Self::remove(&self.shard_channels, channel, id);
    }

    /// Removes client `id` from `channel`; `true` when that left the channel without subscribers
    /// (its entry is gone).
    fn remove(map: &DashMap<Bytes, Vec<Subscriber>>, channel: &[u8], id: u64) -> bool {
        if let Some(mut subs) = map.get_mut(channel) {
            subs.retain(|s| s.id() != id);
        }
        map.remove_if(channel, |_, subs| subs.is_empty()).is_some()
    }

    /// Adds `sub` to `pattern`.
    pub(crate) fn psubscribe(&self, pattern: Bytes, sub: &Subscriber) {
        let mut patterns = self.patterns.write();
        match patterns.iter_mut().find(|(p, _)| *p == pattern) {
            Some((_, subs)) => subs.push(sub.clone()),
            None => {
                patterns.push((pattern, vec![sub.clone()]));
                self.pattern_count.store(patterns.len(), Ordering::Release);
            }
        }
    }

    /// Removes client `id` from `pattern`.
    pub(crate) fn punsubscribe(&self, pattern: &[u8], id: u64) {
        let mut patterns = self.patterns.write();
        if let Some(i) = patterns.iter().position(|(p, _)| p == pattern) {
            patterns[i].1.retain(|s| s.id() != id);
            if patterns[i].1.is_empty() {
                patterns.remove(i);
                self.pattern_count.store(patterns.len(), Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::resp::output::{Next, OutputLimits};

    fn sub(broker: &Broker) -> Subscriber {
        let limits = OutputLimits { hard: 1 << 20, soft: 0, soft_period: Duration::ZERO };
        Subscriber { out: Arc::new(ClientOutput::new(broker.next_client_id(), limits)) }
    }

    async fn frames(s: &Subscriber) -> Vec<u8> {
        match s.out.next().await {
            Next::Write(frames) => frames.concat(),
            other => panic!("expected frames, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn publish_reaches_channel_and_pattern_subscribers() {
        let broker = Broker::new();
        let (a, b) = (sub(&broker), sub(&broker));
        b.out.set_proto(Proto::Resp3);
        broker.subscribe(Bytes::from_static(b"news"), &a);
        broker.subscribe(Bytes::from_static(b"news"), &b);
        broker.psubscribe(Bytes::from_static(b"n*"), &a);
        assert_eq!(broker.publish(b"news", &Bytes::from_static(b"hi")), 3);
        assert_eq!(
            frames(&a).await,
            b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
        );
        assert_eq!(frames(&b).await, b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n");
        assert_eq!(broker.numsub(b"news"), 2);
        assert_eq!(broker.numpat(), 1);
        broker.unsubscribe(b"news", a.out.id());
        broker.unsubscribe(b"news", b.out.id());
        broker.punsubscribe(b"n*", a.out.id());
        assert_eq!(broker.numsub(b"news"), 0);
        assert_eq!(broker.numpat(), 0);
        assert!(broker.channels(None).is_empty());
        assert_eq!(broker.publish(b"news", &Bytes::from_static(b"hi")), 0);
    }

    #[tokio::test]
    async fn shard_channels_are_separate() {
        let broker = Broker::new();
        let a = sub(&broker);
        broker.ssubscribe(Bytes::from_static(b"s"), &a);
        broker.psubscribe(Bytes::from_static(b"*"), &a);
        assert_eq!(broker.spublish(b"s", &Bytes::from_static(b"x")), 1);
        assert_eq!(frames(&a).await, b"*3\r\n$8\r\nsmessage\r\n$1\r\ns\r\n$1\r\nx\r\n");
        assert_eq!(broker.shard_channels(Some(b"s*")), vec![Bytes::from_static(b"s")]);
        assert_eq!(broker.numsub(b"s"), 0);
    }

    struct Recorder(parking_lot::Mutex<Vec<(Vec<u8>, Bytes)>>);
    impl PublishHook for Recorder {
        fn on_publish(&self, channel: &[u8], message: &Bytes) {
            self.0.lock().push((channel.to_vec(), message.clone()));
        }
    }

    #[test]
    fn hook_runs_only_for_client_publishes() {
        let broker = Broker::new();
        let mut handlers = Handlers::default();
        broker.refresh(&mut handlers);
        assert!(handlers.hook.is_none());
        let rec = Arc::new(Recorder(parking_lot::Mutex::new(Vec::new())));
        broker.set_publish_hook(rec.clone());
        broker.publish(b"a", &Bytes::from_static(b"1"));
        assert!(rec.0.lock().is_empty());
        // A connection's copy follows a replaced hook.
        broker.refresh(&mut handlers);
        let hook = handlers.hook.as_ref().expect("hook installed");
        hook.on_publish(b"a", &Bytes::from_static(b"2"));
        assert_eq!(rec.0.lock().as_slice(), &[(b"a".to_vec(), Bytes::from_static(b"2"))]);
    }

    #[tokio::test]
    async fn channel_count_follows_subscriptions() {
        let broker = Broker::new();
        let (a, b) = (sub(&broker), sub(&broker));
        broker.subscribe(Bytes::from_static(b"x"), &a);
        broker.subscribe(Bytes::from_static(b"x"), &b);
        broker.subscribe(Bytes::from_static(b"y"), &a);
        assert_eq!(broker.channel_count.load(Ordering::Relaxed), 2);
        broker.unsubscribe(b"x", a.out.id());
        assert_eq!(broker.channel_count.load(Ordering::Relaxed), 2);
        broker.unsubscribe(b"x", b.out.id());
        broker.unsubscribe(b"y", a.out.id());
        assert_eq!(broker.channel_count.load(Ordering::Relaxed), 0);
        assert_eq!(broker.publish(b"x", &Bytes::from_static(b"m")), 0);
        broker.subscribe(Bytes::from_static(b"x"), &b);
        assert_eq!(broker.publish(b"x", &Bytes::from_static(b"m")), 1);
        assert_eq!(frames(&b).await, b"*3\r\n$7\r\nmessage\r\n$1\r\nx\r\n$1\r\nm\r\n");
    }
}
