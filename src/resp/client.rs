//! Per-connection state (Redis' `client` struct, the parts this broker needs) and the public
//! snapshot of it that `CLIENT LIST` and `INFO` read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use super::broker::{Handlers, Subscriber};
use super::frame::{ParseLimits, Proto};

/// A client's subscriptions of one kind, remembering subscription order (Redis answers
/// `UNSUBSCRIBE` without arguments in its own hash order; insertion order is as good).
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    names: HashMap<Bytes, u64>,
    seq: u64,
}

impl Subscriptions {
    /// Adds `name`; `false` if it was already there.
    pub(crate) fn insert(&mut self, name: Bytes) -> bool {
        if self.names.contains_key(&name) {
            return false;
        }
        self.seq += 1;
        self.names.insert(name, self.seq);
        true
    }

    /// Removes `name`; `false` if it was not there.
    pub(crate) fn remove(&mut self, name: &[u8]) -> bool {
        self.names.remove(name).is_some()
    }

    /// Number of subscriptions.
    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    /// The names in subscription order.
    pub(crate) fn ordered(&self) -> Vec<Bytes> {
        let mut names: Vec<_> = self.names.iter().map(|(n, s)| (*s, n.clone())).collect();
        names.sort_unstable_by_key(|(s, _)| *s);
        names.into_iter().map(|(_, n)| n).collect()
    }
}

/// What other connections may read about a client (`CLIENT LIST`).
#[derive(Debug)]
pub(crate) struct ClientMeta {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) laddr: SocketAddr,
    pub(crate) created: Instant,
    pub(crate) info: Mutex<MetaInfo>,
}

/// The mutable part of [`ClientMeta`], refreshed after every command.
#[derive(Debug, Clone)]
pub(crate) struct MetaInfo {
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_ver: Option<Bytes>,
    pub(crate) db: i64,
    pub(crate) sub: usize,
    pub(crate) psub: usize,
    pub(crate) ssub: usize,
    pub(crate) pubsub: bool,
    pub(crate) proto: Proto,
    pub(crate) last_cmd: &'static str,
    pub(crate) last_interaction: Instant,
}

impl ClientMeta {
    /// One `CLIENT LIST` line (with its trailing `\n`), in Redis 7's field order.
    pub(crate) fn line(&self, now: Instant, omem: usize) -> String {
        let info = self.info.lock().clone();
        let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags={} db={} sub={} psub={} ssub={} multi=-1 \
             qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem={} events=r \
             cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.addr,
            self.laddr,
            text(&info.name),
            now.saturating_duration_since(self.created).as_secs(),
            now.saturating_duration_since(info.last_interaction).as_secs(),
            if info.pubsub { "P" } else { "N" },
            info.db,
            info.sub,
            info.psub,
            info.ssub,
            omem,
            omem,
            info.last_cmd,
            info.proto.version(),
            text(&info.lib_name),
            text(&info.lib_ver),
        )
    }
}

/// A connection's state, owned by its reader task.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: u64,
    pub(crate) proto: Proto,
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_ver: Option<Bytes>,
    pub(crate) db: i64,
    pub(crate) authenticated: bool,
    /// Redis' `CLIENT_PUBSUB` flag: set by (P|S)SUBSCRIBE, cleared when an unsubscribe leaves no
    /// subscription at all.
    pub(crate) pubsub: bool,
    pub(crate) channels: Subscriptions,
    pub(crate) patterns: Subscriptions,
    pub(crate) shard_channels: Subscriptions,
    /// Stop reading; close once the queued output is written (QUIT, protocol error).
    pub(crate) close_after_reply: bool,
    pub(crate) sub: Subscriber,
    pub(crate) meta: Arc<ClientMeta>,
    /// This connection's copy of the broker's publish hook and cluster.
    pub(crate) handlers: Handlers,
    /// PUBLISH / SPUBLISH run since the reader last added them to the metric.
    pub(crate) publishes: u64,
}

impl Client {
    /// A fresh connection's state.
    pub(crate) fn new(sub: Subscriber, meta: Arc<ClientMeta>, authenticated: bool) -> Self {
        Self {
            id: meta.id,
            proto: Proto::Resp2,
            name: None,
            lib_name: None,
            lib_ver: None,
            db: 0,
            authenticated,
            pubsub: false,
            channels: Subscriptions::default(),
            patterns: Subscriptions::default(),
            shard_channels: Subscriptions::default(),
            close_after_reply: false,
            sub,
            meta,
            handlers: Handlers::default(),
            publishes: 0,
        }
    }

    /// Channel plus pattern subscriptions (the count SUBSCRIBE/PSUBSCRIBE replies carry).
    pub(crate) fn subscription_count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// Every subscription of every kind.
    pub(crate) fn total_subscriptions(&self) -> usize {
        self.subscription_count() + self.shard_channels.len()
    }

    /// Parser limits for this client's next request.
    pub(crate) fn parse_limits(&self, max_bulk_len: usize) -> ParseLimits {
        ParseLimits { max_bulk_len, unauthenticated: !self.authenticated, ..ParseLimits::default() }
    }

    /// Switches protocol (also for publishers' frame choice).
    pub(crate) fn set_proto(&mut self, proto: Proto) {
        self.proto = proto;
        self.sub.out.set_proto(proto);
    }

    /// Refreshes the snapshot `CLIENT LIST` shows.
    pub(crate) fn sync_meta(&self, last_cmd: &'static str, now: Instant) {
        let mut info = self.meta.info.lock();
        info.name.clone_from(&self.name);
        info.lib_name.clone_from(&self.lib_name);
        info.lib_ver.clone_from(&self.lib_ver);
        info.db = self.db;
        info.sub = self.channels.len();
        info.psub = self.patterns.len();
        info.ssub = self.shard_channels.len();
        info.pubsub = self.pubsub;
        info.proto = self.proto;
        info.last_cmd = last_cmd;
        info.last_interaction = now;
    }
}

/// A fresh [`MetaInfo`].
pub(crate) fn initial_meta(now: Instant) -> MetaInfo {
    MetaInfo {
        name: None,
        lib_name: None,
        lib_ver: None,
        db: 0,
        sub: 0,
        psub: 0,
        ssub: 0,
        pubsub: false,
        proto: Proto::Resp2,
        last_cmd: "NULL",
        last_interaction: now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_keep_order() {
        let mut s = Subscriptions::default();
        for name in ["c", "a", "b"] {
            assert!(s.insert(Bytes::copy_from_slice(name.as_bytes())));
        }
        assert!(!s.insert(Bytes::from_static(b"a")));
        assert!(s.remove(b"c"));
        assert!(!s.remove(b"c"));
        assert!(s.insert(Bytes::from_static(b"c")));
        assert_eq!(s.ordered(), vec![Bytes::from_static(b"a"), Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
        assert_eq!(s.len(), 3);
    }
}
