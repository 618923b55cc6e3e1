//! Presence: live counts (`users:count`) kept by the nodes themselves, configured with
//! `[[presence]]` (see the README, "Presence").
//!
//! A count is never kept with INCR/DECR (a crash would leave it wrong forever, and a reconnect
//! storm would be a write per connect); it is derived from what each node already knows: the
//! sockets it holds. [`table`] is the pure core; the [`Presence`] task recomputes this node's
//! contribution every [`TICK`], sends it whole to the other nodes when it changed (and every
//! [`REFRESH`] anyway), drops the contribution of nodes the failure detector declares dead, and
//! announces changed values to the pages (`event`, at most `max_rate_per_s`; a page that
//! arrives later is told the current value, [`Told`]). The values are
//! readable with `GET` on every node's Redis port ([`PresenceKv`]) and on
//! `GET /v1/presence` (admin API).

pub mod table;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cluster::message::{PresenceEntry, PresenceState};
use crate::cluster::node::{ClusterNode, PresenceSink};
use crate::resp::kv::{KvBackend, KvFuture, KvOp, KvReadOp, KvValue, KvWrite};
use crate::socketio::{Namespace, Server, Socket};
pub use table::{Contribution, Contributions, PresenceTable, RateGate, Told};

/// How often a node recomputes its contribution.
pub const TICK: Duration = Duration::from_millis(100);
/// How often a node sends its contribution even when unchanged (a node that joined, or a link
/// that came back, has it within this long).
pub const REFRESH: Duration = Duration::from_secs(2);
/// Most `[[presence]]` entries.
pub const MAX_DEFINITIONS: usize = 64;
/// Most keys one room-pattern entry may produce on one node (one per matching room).
pub const MAX_ROOM_KEYS: usize = 10_000;
/// Most distinct values kept per key and node.
pub const MAX_VALUES: usize = 1_000_000;

/// One `[[presence]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// The key the value is readable under (`GET key`); for a `room` pattern one key per room:
    /// `key:room`.
    pub key: String,
    /// The namespace whose sockets are counted.
    #[serde(default = "root_nsp")]
    pub nsp: String,
    /// A Redis glob: count the members of each matching room instead of the whole namespace.
    #[serde(default)]
    pub room: Option<String>,
    /// Count distinct values of this field of the socket data (e.g. `sub`, the user id of a
    /// JWT) instead of sockets; a socket without the field counts on its own.
    #[serde(default)]
    pub unique: Option<String>,
    /// Event announcing the new value to the namespace's (or the room's) sockets.
    #[serde(default)]
    pub event: Option<String>,
    /// Most announcements per second and key; bursts coalesce into the latest value.
    #[serde(default = "default_rate")]
    pub max_rate_per_s: u32,
}

fn root_nsp() -> String {
    "/".to_owned()
}

fn default_rate() -> u32 {
    10
}

/// A `[[presence]]` entry that is not valid: the setting (`presence[2].room`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{field}`: {message}")]
pub struct PresenceConfigError {
    /// The setting, e.g. `presence[0].max_rate_per_s`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Checks every entry: the first problem found is returned.
pub fn validate(entries: &[PresenceConfig]) -> Result<(), PresenceConfigError> {
    let err = |i: usize, field: &str, message: String| PresenceConfigError {
        field: format!("presence[{i}].{field}"),
        message,
    };
    if entries.len() > MAX_DEFINITIONS {
        return Err(PresenceConfigError {
            field: "presence".into(),
            message: format!("at most {MAX_DEFINITIONS} entries"),
        });
    }
    let mut keys = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        if e.key.is_empty() || e.key.len() > 256 || e.key.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(err(i, "key", format!("{:?} must be 1 to 256 characters without whitespace", e.key)));
        }
        if !keys.insert(e.key.as_str()) {
            return Err(err(i, "key", format!("{:?} is used by an earlier entry", e.key)));
        }
        if !e.nsp.starts_with('/') || e.nsp.contains(|c: char| c == ',' || c == '?' || c.is_whitespace()) {
            return Err(err(i, "nsp", format!("{:?} must start with '/' (e.g. \"/\")", e.nsp)));
        }
        if e.room.as_deref().is_some_and(str::is_empty) {
            return Err(err(i, "room", "must not be empty when set (\"*\" matches every room)".into()));
        }
        if e.unique.as_deref().is_some_and(|f| f.is_empty() || f.split('.').any(str::is_empty)) {
            return Err(err(i, "unique", format!("{:?} must be a field name like \"sub\"", e.unique)));
        }
        if let Some(event) = &e.event
            && (event.is_empty() || crate::socketio::packet::is_reserved_event(event))
        {
            return Err(err(i, "event", format!("{event:?} is empty or reserved by Socket.IO")));
        }
        if !(1..=1000).contains(&e.max_rate_per_s) {
            return Err(err(i, "max_rate_per_s", format!("{} must be between 1 and 1000", e.max_rate_per_s)));
        }
    }
    Ok(())
}

/// The presence service of one node.
#[derive(Clone)]
pub struct Presence(Arc<Inner>);

struct Inner {
    entries: Vec<PresenceConfig>,
    io: Server,
    table: Mutex<PresenceTable>,
    gates: Mutex<HashMap<String, RateGate>>,
    /// Per announced key, the local sockets that hold its last announced value.
    told: Mutex<HashMap<String, Told>>,
    cluster: OnceLock<ClusterNode>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence").field("entries", &self.0.entries.len()).finish()
    }
}

impl Presence {
    /// Presence over `io`'s sockets for `entries` (already validated).
    pub fn new(io: Server, entries: Vec<PresenceConfig>) -> Self {
        Self(Arc::new(Inner {
            entries,
            io,
            table: Mutex::new(PresenceTable::new()),
            gates: Mutex::new(HashMap::new()),
            told: Mutex::new(HashMap::new()),
            cluster: OnceLock::new(),
        }))
    }

    /// Whether any `[[presence]]` entry is configured.
    pub fn is_enabled(&self) -> bool {
        !self.0.entries.is_empty()
    }

    /// Connects presence to the cluster (once): contributions travel both ways and the
    /// failure detector says whose to drop.
    pub fn set_cluster(&self, cluster: ClusterNode) {
        cluster.set_presence_sink(Arc::new(self.clone()));
        let _ = self.0.cluster.set(cluster);
    }

    /// The value of `key` (0 when nobody counts anything under it), or `None` when `key` is no
    /// presence key.
    pub fn value(&self, key: &str) -> Option<u64> {
        self.is_key(key).then(|| self.0.table.lock().value(key))
    }

    /// Every key with a value.
    pub fn values(&self) -> BTreeMap<String, u64> {
        self.0.table.lock().values()
    }

    /// Whether `key` is maintained by presence (an entry's key, or `key:room` for a room entry
    /// whose pattern matches `room`).
    pub fn is_key(&self, key: &str) -> bool {
        self.0.entries.iter().any(|e| match &e.room {
            None => e.key == key,
            Some(pattern) => key
                .strip_prefix(e.key.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|room| crate::resp::glob::matches(pattern.as_bytes(), room.as_bytes())),
        })
    }

    /// The entry and room a key belongs to.
    pub fn entry_of(&self, key: &str) -> Option<(&PresenceConfig, Option<String>)> {
        self.0.entries.iter().find_map(|e| match &e.room {
            None => (e.key == key).then_some((e, None)),
            Some(pattern) => key
                .strip_prefix(e.key.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .filter(|room| crate::resp::glob::matches(pattern.as_bytes(), room.as_bytes()))
                .map(|room| (e, Some(room.to_owned()))),
        })
    }

    /// Runs presence until `shutdown`: recompute, exchange, forget dead nodes, announce.
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.is_enabled() {
            return;
        }
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_publish = None::<tokio::time::Instant>;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let local = self.local_contributions();
            let changed = self.0.table.lock().set_local(local.clone());
            if let Some(cluster) = self.0.cluster.get() {
                let now = tokio::time::Instant::now();
                if changed || last_publish.is_none_or(|t| now.duration_since(t) >= REFRESH) {
                    cluster.publish_presence(to_state(&local));
                    last_publish = Some(now);
                }
                let alive: BTreeSet<u64> = cluster.live_peers().into_iter().collect();
                let mut table = self.0.table.lock();
                let gone: Vec<u64> = table.nodes().filter(|n| !alive.contains(n)).collect();
                for node in gone {
                    table.forget(node);
                }
            }
            let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.announce(now_ms);
        }
    }

    /// This node's contribution to every key.
    fn local_contributions(&self) -> Contributions {
        let mut out = Contributions::new();
        for e in &self.0.entries {
            let Some(ns) = self.0.io.namespace_for_broadcast(&e.nsp) else { continue };
            match &e.room {
                None => {
                    let c = contribution(&ns.sockets(), e.unique.as_deref());
                    if c.count > 0 {
                        out.insert(e.key.clone(), c);
                    }
                }
                Some(pattern) => {
                    let rooms = ns.rooms();
                    let matching =
                        rooms.iter().filter(|r| crate::resp::glob::matches(pattern.as_bytes(), r.as_bytes()));
                    for room in matching.take(MAX_ROOM_KEYS) {
                        let members = ns.select(std::slice::from_ref(room), &[]).sockets();
                        let c = contribution(&members, e.unique.as_deref());
                        if c.count > 0 {
                            out.insert(format!("{}:{room}", e.key), c);
                        }
                    }
                }
            }
        }
        out
    }

    /// Emits each changed value to the local sockets it concerns (every node announces to its
    /// own sockets, so each page gets each announcement once), and the last announced value to
    /// the sockets that arrived since (a page that opened, a socket that joined the room).
    fn announce(&self, now_ms: u64) {
        let values = self.0.table.lock().values();
        let mut gates = self.0.gates.lock();
        let mut told = self.0.told.lock();
        let mut announced = HashSet::new();
        for e in &self.0.entries {
            let Some(event) = &e.event else { continue };
            let Some(ns) = self.0.io.namespace_for_broadcast(&e.nsp) else { continue };
            let interval_ms = 1000 / u64::from(e.max_rate_per_s.max(1));
            let mut announce = |key: &str, room: Option<&str>, value: u64| {
                let gate = gates.entry(key.to_owned()).or_default();
                let rooms: Vec<String> = room.map(str::to_owned).into_iter().collect();
                let audience = ns.select(&rooms, &[]).local().sockets();
                let ids: Vec<&str> = audience.iter().map(Socket::id).collect();
                let told = told.entry(key.to_owned()).or_default();
                announced.insert(key.to_owned());
                if gate.should_send(value, now_ms, interval_ms) {
                    emit_local(&ns, room, event, value);
                    told.all(&ids);
                } else if gate.last_value() == Some(value) {
                    for i in told.newcomers(&ids) {
                        // A socket that closed meanwhile needs nothing.
                        let _ = audience[i].emit(event, crate::socketio::Payload::json(vec![value.into()]));
                    }
                }
                // Otherwise a change is held back by the rate: it goes to every socket here,
                // newcomers included, once the interval ends.
            };
            match &e.room {
                None => announce(&e.key, None, values.get(&e.key).copied().unwrap_or(0)),
                Some(_) => {
                    let prefix = format!("{}:", e.key);
                    // Rooms with local members: the only ones with pages to tell here.
                    for room in ns.rooms() {
                        let key = format!("{prefix}{room}");
                        if let Some(value) = values.get(&key) {
                            announce(&key, Some(&room), *value);
                        }
                    }
                }
            }
        }
        // Rooms without local members any more have nobody to remember.
        told.retain(|key, _| announced.contains(key));
    }
}

impl PresenceSink for Presence {
    fn receive(&self, from: u64, state: PresenceState) {
        self.0.table.lock().set_remote(from, from_state(state));
    }
}

/// This node's contributions as the cluster message.
fn to_state(contributions: &Contributions) -> PresenceState {
    let entries = contributions
        .iter()
        .map(|(key, c)| PresenceEntry {
            key: key.clone(),
            count: c.count,
            values: c.values.as_ref().map(|v| v.iter().cloned().collect()),
        })
        .collect();
    PresenceState { entries }
}

/// A node's contributions from the cluster message; values beyond [`MAX_VALUES`] per key are
/// dropped (a bound on what one peer can make this node hold).
fn from_state(state: PresenceState) -> Contributions {
    state
        .entries
        .into_iter()
        .map(|e| {
            let values = e.values.map(|v| v.into_iter().take(MAX_VALUES).collect());
            (e.key, Contribution { count: e.count, values })
        })
        .collect()
}

fn emit_local(ns: &Namespace, room: Option<&str>, event: &str, value: u64) {
    let rooms: Vec<String> = room.map(str::to_owned).into_iter().collect();
    ns.select(&rooms, &[]).local().emit(event, crate::socketio::Payload::json(vec![value.into()]));
}

/// What `sockets` contribute: their number, and with `unique` the distinct values of that data
/// field (a socket without it counts as its own value).
fn contribution(sockets: &[Socket], unique: Option<&str>) -> Contribution {
    let values = unique.map(|field| {
        sockets
            .iter()
            .map(|s| unique_value(s, field).unwrap_or_else(|| format!("socket:{}", s.id())))
            .collect::<BTreeSet<String>>()
    });
    Contribution { count: sockets.len() as u64, values }
}

/// The socket data's `field` (a dotted path) as a string.
fn unique_value(socket: &Socket, field: &str) -> Option<String> {
    let data = socket.data();
    let value = field.split('.').try_fold(&data, |v, part| v.get(part))?;
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The Redis ingress' key-value backend with presence keys answered from presence: `GET`,
/// `MGET`, `EXISTS`, `TTL`/`PTTL` read the live value (never expiring); writes to them are
/// refused, so a leftover `INCR users:count` in an app shows up at once.
#[derive(Debug, Clone)]
pub struct PresenceKv {
    inner: Arc<dyn KvBackend>,
    presence: Presence,
}

impl PresenceKv {
    /// `inner` with `presence`'s keys layered over it.
    pub fn new(inner: Arc<dyn KvBackend>, presence: Presence) -> Self {
        Self { inner, presence }
    }

    fn read_only(key: &[u8]) -> KvValue {
        KvValue::Error(format!(
            "ERR '{}' is a presence key maintained by ioswarm; it is read-only",
            String::from_utf8_lossy(key)
        ))
    }

    fn presence_value(&self, key: &[u8]) -> Option<u64> {
        std::str::from_utf8(key).ok().and_then(|k| self.presence.value(k))
    }
}

impl KvBackend for PresenceKv {
    fn execute(&self, op: KvOp) -> KvFuture {
        let ready = |v: KvValue| -> KvFuture { Box::pin(std::future::ready(v)) };
        match &op {
            KvOp::Read(read) => match &read.op {
                KvReadOp::Get(key) => {
                    if let Some(v) = self.presence_value(key) {
                        return ready(KvValue::Bulk(Bytes::from(v.to_string())));
                    }
                }
                KvReadOp::Ttl(key) | KvReadOp::Pttl(key) if self.presence_value(key).is_some() => {
                    return ready(KvValue::Integer(-1));
                }
                KvReadOp::MGet(keys) if keys.iter().any(|k| self.presence_value(k).is_some()) => {
                    let ours: Vec<Option<u64>> = keys.iter().map(|k| self.presence_value(k)).collect();
                    let inner = self.inner.execute(op.clone());
                    return Box::pin(async move {
                        match inner.await {
                            KvValue::Array(mut items) => {
                                for (item, v) in items.iter_mut().zip(&ours) {
                                    if let Some(v) = v {
                                        *item = KvValue::Bulk(Bytes::from(v.to_string()));
                                    }
                                }
                                KvValue::Array(items)
                            }
                            other => other,
                        }
                    });
                }
                KvReadOp::Exists(keys) if keys.iter().any(|k| self.presence_value(k).is_some()) => {
                    let ours = keys.iter().filter(|k| self.presence_value(k).is_some()).count() as i64;
                    let rest: Vec<Bytes> = keys.iter().filter(|k| self.presence_value(k).is_none()).cloned().collect();
                    if rest.is_empty() {
                        return ready(KvValue::Integer(ours));
                    }
                    let mut read = read.clone();
                    read.op = KvReadOp::Exists(rest);
                    let inner = self.inner.execute(KvOp::Read(read));
                    return Box::pin(async move {
                        match inner.await {
                            KvValue::Integer(n) => KvValue::Integer(n + ours),
                            other => other,
                        }
                    });
                }
                _ => {}
            },
            KvOp::Write(cmd) => {
                let touched: Vec<&Bytes> = match &cmd.op {
                    KvWrite::Set { key, .. } | KvWrite::IncrBy { key, .. } | KvWrite::Expire { key, .. } => vec![key],
                    KvWrite::Del(keys) => keys.iter().collect(),
                };
                if let Some(key) = touched.into_iter().find(|k| self.presence_value(k).is_some()) {
                    return ready(Self::read_only(key));
                }
            }
        }
        self.inner.execute(op)
    }
}
