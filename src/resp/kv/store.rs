//! The key-value store's state machine (replicated by the cluster's raft log) and the
//! single-node backend.
//!
//! [`KvStore`] is pure: it applies [`KvCommand`]s (which carry the proposer's clock) and serves
//! [`KvRead`]s (which carry the reader's clock), so every replica applying the same log ends in
//! the same state. It never reads the system clock: `now_unix_ms` in the command or read is the
//! only time it knows. [`KvBackend`] is what the Redis ingress executes `GET`/`SET`/`INCR`/... on:
//! [`LocalKv`] for a single node, the raft node (the cluster's `raft/`, whose state machine is a
//! [`KvStore`]) in a cluster.
//!
//! Semantics are Redis 7.0's for string values:
//!
//! - a key whose expiry time is before `now` behaves as absent everywhere (`now > expire_at`,
//!   Redis' `keyIsExpired`); writes drop such a key when they touch it, and every
//!   [`KvStore::apply`] also removes a few expired keys in expiry order (Redis' active expiry,
//!   driven by the log so that replicas stay identical); [`KvStore::purge_expired`] does more on
//!   demand;
//! - `EXPIRE` with a time at or before `now` deletes the key (Redis' `checkAlreadyExpired`);
//! - `INCRBY` keeps the TTL, `SET` clears it unless `KEEPTTL`.
//!
//! Clock convention: the Redis command layer stamps `now_unix_ms` from the system clock when a
//! command arrives and resolves relative times (`EX`, `PX`, `EXPIRE`, `PEXPIRE`) into absolute
//! unix milliseconds with that same reading. Backends keep both as given, so a command means the
//! same thing on every replica. ([`LocalKv`] only fills in a `now_unix_ms` of 0, "unset", for
//! callers that build operations by hand.)

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;

use super::op::{KvCommand, KvOp, KvRead, KvReadOp, KvValue, KvWrite, SetCondition};
use super::{KvBackend, KvFuture};
use crate::resp::frame::string2ll;

/// Redis' reply to a write refused because the store is full.
pub const OOM_ERROR: &str = "OOM command not allowed when used memory > 'maxmemory'.";
/// Redis' reply when a value or an argument is not a 64-bit integer.
pub const NOT_INTEGER_ERROR: &str = "ERR value is not an integer or out of range";
/// Redis' reply when `INCRBY` would leave the `i64` range.
pub const OVERFLOW_ERROR: &str = "ERR increment or decrement would overflow";
/// Redis' reply for a string longer than `proto-max-bulk-len`.
pub const TOO_BIG_ERROR: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// Expired keys every [`KvStore::apply`] removes before it runs its write.
const PURGE_PER_WRITE: usize = 16;

/// Bounds of a [`KvStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Most keys; a write that would add one more answers [`OOM_ERROR`] (1,000,000).
    pub max_keys: usize,
    /// Longest value; a longer one answers [`TOO_BIG_ERROR`] (512 MiB, Redis'
    /// `proto-max-bulk-len`, which also bounds what the Redis listener accepts).
    pub max_value_bytes: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self { max_keys: 1_000_000, max_value_bytes: 512 * 1024 * 1024 }
    }
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: Bytes,
    /// Absolute expiry in unix milliseconds.
    expire_at: Option<u64>,
}

impl Entry {
    fn is_live(&self, now: u64) -> bool {
        self.expire_at.is_none_or(|at| now <= at)
    }
}

/// The key-value state machine: string keys and values with optional expiry.
#[derive(Default, Clone)]
pub struct KvStore {
    entries: HashMap<Bytes, Entry>,
    /// `(expire_at, key)` of every entry with an expiry, soonest first.
    expiries: BTreeSet<(u64, Bytes)>,
    limits: KvLimits,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("keys", &self.entries.len())
            .field("with_expiry", &self.expiries.len())
            .field("limits", &self.limits)
            .finish()
    }
}

impl PartialEq for KvStore {
    /// Same keys, values and expiries (limits are configuration, not state).
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for KvStore {}

impl KvStore {
    /// An empty store with `limits`.
    pub fn new(limits: KvLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// The store's bounds.
    pub fn limits(&self) -> KvLimits {
        self.limits
    }

    /// Changes the bounds (e.g. after [`KvStore::from_snapshot`]); keys already stored stay.
    pub fn set_limits(&mut self, limits: KvLimits) {
        self.limits = limits;
    }

    /// Keys held, counting expired keys not purged yet.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held (not even an expired one).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies a write; the reply is what Redis would answer.
    pub fn apply(&mut self, command: &KvCommand) -> KvValue {
        let now = command.now_unix_ms;
        self.purge_expired(now, PURGE_PER_WRITE);
        match &command.op {
            KvWrite::Set { key, value, condition, expire_at_unix_ms, keep_ttl, get } => {
                self.set(now, key, value, *condition, *expire_at_unix_ms, *keep_ttl, *get)
            }
            KvWrite::Del(keys) => {
                let mut deleted = 0i64;
                for key in keys {
                    self.expire_if_needed(key, now);
                    if self.remove(key).is_some() {
                        deleted += 1;
                    }
                }
                KvValue::Integer(deleted)
            }
            KvWrite::IncrBy { key, delta } => self.incr_by(now, key, *delta),
            KvWrite::Expire { key, expire_at_unix_ms } => {
                self.expire_if_needed(key, now);
                if !self.entries.contains_key(key) {
                    return KvValue::Integer(0);
                }
                if *expire_at_unix_ms <= now {
                    self.remove(key);
                } else {
                    self.set_expiry(key, Some(*expire_at_unix_ms));
                }
                KvValue::Integer(1)
            }
        }
    }

    /// Serves a read.
    pub fn read(&self, read: &KvRead) -> KvValue {
        let now = read.now_unix_ms;
        match &read.op {
            KvReadOp::Get(key) => self.get_value(key, now),
            KvReadOp::MGet(keys) => KvValue::Array(keys.iter().map(|k| self.get_value(k, now)).collect()),
            KvReadOp::Exists(keys) => {
                let found = keys.iter().filter(|k| self.live(k, now).is_some()).count();
                KvValue::Integer(i64::try_from(found).unwrap_or(i64::MAX))
            }
            KvReadOp::Ttl(key) => self.ttl(key, now, |ms| ms.saturating_add(500) / 1000),
            KvReadOp::Pttl(key) => self.ttl(key, now, |ms| ms),
        }
    }

    /// Removes up to `max` keys that expired before `now_unix_ms`, soonest expiry first (so the
    /// outcome is the same on every replica). Returns how many were removed.
    pub fn purge_expired(&mut self, now_unix_ms: u64, max: usize) -> usize {
        let mut purged = 0;
        while purged < max {
            match self.expiries.first() {
                Some((at, _)) if *at < now_unix_ms => {}
                _ => break,
            }
            if let Some((_, key)) = self.expiries.pop_first() {
                self.entries.remove(&key);
                purged += 1;
            }
        }
        purged
    }

    // ---- writes ------------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)] // the fields of `KvWrite::Set`
    fn set(
        &mut self,
        now: u64,
        key: &Bytes,
        value: &Bytes,
        condition: SetCondition,
        expire_at: Option<u64>,
        keep_ttl: bool,
        get: bool,
    ) -> KvValue {
        if value.len() > self.limits.max_value_bytes {
            return KvValue::Error(TOO_BIG_ERROR.to_owned());
        }
        self.expire_if_needed(key, now);
        let old = self.entries.get(key);
        let found = old.is_some();
        let old_expiry = old.and_then(|e| e.expire_at);
        // SET ... GET answers the old value whether or not the condition lets the write happen.
        let reply = if get { old.map_or(KvValue::Nil, |e| KvValue::Bulk(e.value.clone())) } else { KvValue::Ok };
        let blocked = match condition {
            SetCondition::Always => false,
            SetCondition::IfAbsent => found,
            SetCondition::IfPresent => !found,
        };
        if blocked {
            return if get { reply } else { KvValue::Nil };
        }
        if !found && !self.room_for_new_key(now) {
            return KvValue::Error(OOM_ERROR.to_owned());
        }
        let expire_at = if keep_ttl { old_expiry } else { expire_at };
        self.insert(key.clone(), Entry { value: value.clone(), expire_at });
        if expire_at.is_some_and(|at| at < now) {
            // EXAT/PXAT in the past: the key is already gone for every reader.
            self.remove(key);
        }
        reply
    }

    fn incr_by(&mut self, now: u64, key: &Bytes, delta: i64) -> KvValue {
        self.expire_if_needed(key, now);
        let (current, expire_at) = match self.entries.get(key) {
            Some(entry) => match string2ll(&entry.value) {
                Some(n) => (n, entry.expire_at),
                None => return KvValue::Error(NOT_INTEGER_ERROR.to_owned()),
            },
            None => {
                if !self.room_for_new_key(now) {
                    return KvValue::Error(OOM_ERROR.to_owned());
                }
                (0, None)
            }
        };
        let Some(next) = current.checked_add(delta) else {
            return KvValue::Error(OVERFLOW_ERROR.to_owned());
        };
        self.insert(key.clone(), Entry { value: Bytes::from(next.to_string()), expire_at });
        KvValue::Integer(next)
    }

    // ---- reads -------------------------------------------------------------------------------

    fn live(&self, key: &[u8], now: u64) -> Option<&Entry> {
        self.entries.get(key).filter(|e| e.is_live(now))
    }

    fn get_value(&self, key: &[u8], now: u64) -> KvValue {
        self.live(key, now).map_or(KvValue::Nil, |e| KvValue::Bulk(e.value.clone()))
    }

    fn ttl(&self, key: &[u8], now: u64, unit: fn(u64) -> u64) -> KvValue {
        match self.live(key, now) {
            None => KvValue::Integer(-2),
            Some(Entry { expire_at: None, .. }) => KvValue::Integer(-1),
            Some(Entry { expire_at: Some(at), .. }) => {
                KvValue::Integer(i64::try_from(unit(at.saturating_sub(now))).unwrap_or(i64::MAX))
            }
        }
    }

    // ---- bookkeeping -------------------------------------------------------------------------

    /// Drops `key` if it has expired (Redis' `expireIfNeeded`).
    fn expire_if_needed(&mut self, key: &[u8], now: u64) {
        if self.entries.get(key).is_some_and(|e| !e.is_live(now)) {
            self.remove(key);
        }
    }

    /// Whether one more key fits; at the limit, expired keys are purged first so the answer
    /// depends only on the live keys (the same on every replica).
    fn room_for_new_key(&mut self, now: u64) -> bool {
        if self.entries.len() < self.limits.max_keys {
            return true;
        }
        self.purge_expired(now, usize::MAX);
        self.entries.len() < self.limits.max_keys
    }

    /// Inserts or replaces `key`, keeping the expiry index in step.
    fn insert(&mut self, key: Bytes, entry: Entry) {
        let expire_at = entry.expire_at;
        if let Some(old) = self.entries.insert(key.clone(), entry)
            && let Some(old_at) = old.expire_at
            && expire_at != Some(old_at)
        {
            self.expiries.remove(&(old_at, key.clone()));
        }
        if let Some(at) = expire_at {
            self.expiries.insert((at, key));
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let (key, entry) = self.entries.remove_entry(key)?;
        if let Some(at) = entry.expire_at {
            self.expiries.remove(&(at, key));
        }
        Some(entry)
    }

    fn set_expiry(&mut self, key: &[u8], expire_at: Option<u64>) {
        if let Some((key, entry)) = self.entries.get_key_value(key) {
            let entry = Entry { value: entry.value.clone(), expire_at };
            let key = key.clone();
            self.insert(key, entry);
        }
    }

    // ---- snapshots ---------------------------------------------------------------------------

    /// The whole state (keys, values, expiries; not the limits) as bytes for a raft snapshot.
    /// Keys are written in sorted order, so equal stores give equal bytes.
    ///
    /// Format: `IOSWKV` and a version byte (1), the key count, then per key its length, bytes,
    /// the value's length and bytes, and the expiry plus one (0: none). Every number is an
    /// unsigned LEB128 varint.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut keys: Vec<&Bytes> = self.entries.keys().collect();
        keys.sort_unstable();
        let payload: usize = self.entries.iter().map(|(k, e)| k.len() + e.value.len() + 12).sum();
        let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + 11 + payload);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_VERSION);
        put_varint(&mut out, keys.len() as u64);
        for key in keys {
            let Some(entry) = self.entries.get(key) else { continue };
            put_varint(&mut out, key.len() as u64);
            out.extend_from_slice(key);
            put_varint(&mut out, entry.value.len() as u64);
            out.extend_from_slice(&entry.value);
            put_varint(&mut out, entry.expire_at.map_or(0, |at| at.saturating_add(1)));
        }
        out
    }

    /// Rebuilds a store from [`KvStore::to_snapshot`] bytes, with default limits (see
    /// [`KvStore::set_limits`]). Strict: anything but exactly one well-formed snapshot fails.
    pub fn from_snapshot(bytes: &[u8]) -> Result<KvStore, KvSnapshotError> {
        let mut input = SnapshotReader { rest: bytes };
        if input.take(SNAPSHOT_MAGIC.len())? != SNAPSHOT_MAGIC {
            return Err(KvSnapshotError::NotASnapshot);
        }
        let version = input.take(1)?[0];
        if version != SNAPSHOT_VERSION {
            return Err(KvSnapshotError::UnsupportedVersion(version));
        }
        let count = input.varint()?;
        // Each key takes at least 3 bytes, which bounds what a forged count can reserve.
        let capacity = usize::try_from(count).unwrap_or(usize::MAX).min(input.rest.len() / 3);
        let mut store = KvStore { entries: HashMap::with_capacity(capacity), ..KvStore::default() };
        for _ in 0..count {
            let key = input.bytes()?;
            let value = input.bytes()?;
            let expire_at = input.varint()?.checked_sub(1);
            if store.entries.contains_key(&key) {
                return Err(KvSnapshotError::DuplicateKey);
            }
            store.insert(key, Entry { value, expire_at });
        }
        if !input.rest.is_empty() {
            return Err(KvSnapshotError::TrailingBytes);
        }
        Ok(store)
    }
}

/// Why [`KvStore::from_snapshot`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvSnapshotError {
    /// The input does not start with the snapshot magic.
    #[error("not a key-value snapshot")]
    NotASnapshot,
    /// A snapshot format this build does not read.
    #[error("unsupported key-value snapshot version {0}")]
    UnsupportedVersion(u8),
    /// The input ends in the middle of an entry.
    #[error("truncated key-value snapshot")]
    Truncated,
    /// A number longer than 64 bits.
    #[error("malformed number in key-value snapshot")]
    BadNumber,
    /// The same key twice.
    #[error("duplicate key in key-value snapshot")]
    DuplicateKey,
    /// Bytes after the last entry.
    #[error("trailing bytes after key-value snapshot")]
    TrailingBytes,
}

const SNAPSHOT_MAGIC: &[u8] = b"IOSWKV";
const SNAPSHOT_VERSION: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

struct SnapshotReader<'a> {
    rest: &'a [u8],
}

impl<'a> SnapshotReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KvSnapshotError> {
        if self.rest.len() < n {
            return Err(KvSnapshotError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, KvSnapshotError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(KvSnapshotError::BadNumber);
            }
            n |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(KvSnapshotError::BadNumber)
    }

    fn bytes(&mut self) -> Result<Bytes, KvSnapshotError> {
        let len = usize::try_from(self.varint()?).map_err(|_| KvSnapshotError::Truncated)?;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
}

/// The system clock in unix milliseconds (for the Redis command layer and [`LocalKv`]; never
/// read inside [`KvStore`]).
pub fn system_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A single node's [`KvBackend`]: a [`KvStore`] behind a mutex, answered at once.
#[derive(Debug, Default)]
pub struct LocalKv {
    store: Mutex<KvStore>,
}

impl LocalKv {
    /// An empty store with `limits`.
    pub fn new(limits: KvLimits) -> Self {
        Self { store: Mutex::new(KvStore::new(limits)) }
    }

    /// Keys held (see [`KvStore::len`]).
    pub fn len(&self) -> usize {
        self.store.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.store.lock().is_empty()
    }

    /// Runs `op` now. A `now_unix_ms` of 0 is taken as unset and replaced by the system clock;
    /// any other value is used as given (see the module's clock convention).
    pub fn execute_now(&self, op: KvOp) -> KvValue {
        match op {
            KvOp::Write(mut command) => {
                if command.now_unix_ms == 0 {
                    command.now_unix_ms = system_unix_ms();
                }
                self.store.lock().apply(&command)
            }
            KvOp::Read(mut read) => {
                if read.now_unix_ms == 0 {
                    read.now_unix_ms = system_unix_ms();
                }
                self.store.lock().read(&read)
            }
        }
    }
}

impl KvBackend for LocalKv {
    fn execute(&self, op: KvOp) -> KvFuture {
        Box::pin(std::future::ready(self.execute_now(op)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn bulk(s: &str) -> KvValue {
        KvValue::Bulk(b(s))
    }

    fn err(text: &str) -> KvValue {
        KvValue::Error(text.to_owned())
    }

    fn write(store: &mut KvStore, now: u64, op: KvWrite) -> KvValue {
        store.apply(&KvCommand { now_unix_ms: now, op })
    }

    fn read(store: &KvStore, now: u64, op: KvReadOp) -> KvValue {
        store.read(&KvRead { now_unix_ms: now, op })
    }

    struct Set {
        key: &'static str,
        value: &'static str,
        condition: SetCondition,
        expire_at: Option<u64>,
        keep_ttl: bool,
        get: bool,
    }

    fn set(key: &'static str, value: &'static str) -> Set {
        Set { key, value, condition: SetCondition::Always, expire_at: None, keep_ttl: false, get: false }
    }

    impl Set {
        fn nx(mut self) -> Self {
            self.condition = SetCondition::IfAbsent;
            self
        }
        fn xx(mut self) -> Self {
            self.condition = SetCondition::IfPresent;
            self
        }
        fn get(mut self) -> Self {
            self.get = true;
            self
        }
        fn keep_ttl(mut self) -> Self {
            self.keep_ttl = true;
            self
        }
        fn at(mut self, at: u64) -> Self {
            self.expire_at = Some(at);
            self
        }
        fn op(self) -> KvWrite {
            KvWrite::Set {
                key: b(self.key),
                value: b(self.value),
                condition: self.condition,
                expire_at_unix_ms: self.expire_at,
                keep_ttl: self.keep_ttl,
                get: self.get,
            }
        }
    }

    fn get(store: &KvStore, now: u64, key: &str) -> KvValue {
        read(store, now, KvReadOp::Get(b(key)))
    }

    fn pttl(store: &KvStore, now: u64, key: &str) -> KvValue {
        read(store, now, KvReadOp::Pttl(b(key)))
    }

    fn ttl(store: &KvStore, now: u64, key: &str) -> KvValue {
        read(store, now, KvReadOp::Ttl(b(key)))
    }

    fn incr(store: &mut KvStore, now: u64, key: &str, delta: i64) -> KvValue {
        write(store, now, KvWrite::IncrBy { key: b(key), delta })
    }

    fn expire(store: &mut KvStore, now: u64, key: &str, at: u64) -> KvValue {
        write(store, now, KvWrite::Expire { key: b(key), expire_at_unix_ms: at })
    }

    /// The expiry index matches the entries exactly.
    fn check_index(store: &KvStore) {
        let mut expected: Vec<(u64, Bytes)> =
            store.entries.iter().filter_map(|(k, e)| e.expire_at.map(|at| (at, k.clone()))).collect();
        expected.sort();
        let actual: Vec<(u64, Bytes)> = store.expiries.iter().cloned().collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn set_and_get() {
        let mut s = KvStore::default();
        assert_eq!(get(&s, T0, "k"), KvValue::Nil);
        assert_eq!(write(&mut s, T0, set("k", "v").op()), KvValue::Ok);
        assert_eq!(get(&s, T0, "k"), bulk("v"));
        assert_eq!(write(&mut s, T0, set("k", "w").op()), KvValue::Ok);
        assert_eq!(get(&s, T0, "k"), bulk("w"));
        assert_eq!(write(&mut s, T0, set("e", "").op()), KvValue::Ok);
        assert_eq!(get(&s, T0, "e"), bulk(""));
        assert_eq!(s.len(), 2);
        assert!(!s.is_empty());
    }

    #[test]
    fn set_conditions_and_get_follow_redis_7() {
        let mut s = KvStore::default();
        // NX on a missing key sets; on an existing one it answers nil and leaves the value.
        assert_eq!(write(&mut s, T0, set("k", "1").nx().op()), KvValue::Ok);
        assert_eq!(write(&mut s, T0, set("k", "2").nx().op()), KvValue::Nil);
        assert_eq!(get(&s, T0, "k"), bulk("1"));
        // XX on a missing key answers nil and does not create it.
        assert_eq!(write(&mut s, T0, set("m", "1").xx().op()), KvValue::Nil);
        assert_eq!(get(&s, T0, "m"), KvValue::Nil);
        assert_eq!(write(&mut s, T0, set("k", "3").xx().op()), KvValue::Ok);
        assert_eq!(get(&s, T0, "k"), bulk("3"));
        // GET answers the old value (nil if none) whether or not the write happens.
        assert_eq!(write(&mut s, T0, set("k", "4").get().op()), bulk("3"));
        assert_eq!(write(&mut s, T0, set("n", "1").get().op()), KvValue::Nil);
        assert_eq!(get(&s, T0, "n"), bulk("1"));
        assert_eq!(write(&mut s, T0, set("k", "5").nx().get().op()), bulk("4"));
        assert_eq!(get(&s, T0, "k"), bulk("4"));
        assert_eq!(write(&mut s, T0, set("x", "5").xx().get().op()), KvValue::Nil);
        assert_eq!(get(&s, T0, "x"), KvValue::Nil);
        assert_eq!(write(&mut s, T0, set("y", "6").nx().get().op()), KvValue::Nil);
        assert_eq!(get(&s, T0, "y"), bulk("6"));
    }

    #[test]
    fn set_clears_ttl_unless_keepttl() {
        let mut s = KvStore::default();
        write(&mut s, T0, set("k", "v").at(T0 + 10_000).op());
        assert_eq!(pttl(&s, T0, "k"), KvValue::Integer(10_000));
        write(&mut s, T0, set("k", "w").keep_ttl().op());
        assert_eq!(pttl(&s, T0 + 1, "k"), KvValue::Integer(9_999));
        write(&mut s, T0, set("k", "x").op());
        assert_eq!(pttl(&s, T0, "k"), KvValue::Integer(-1));
        // KEEPTTL on a key without a TTL (or a missing key) keeps "no TTL".
        write(&mut s, T0, set("new", "x").keep_ttl().op());
        assert_eq!(pttl(&s, T0, "new"), KvValue::Integer(-1));
        check_index(&s);
    }

    #[test]
    fn expired_keys_are_absent() {
        let mut s = KvStore::default();
        write(&mut s, T0, set("k", "v").at(T0 + 100).op());
        // Alive up to and including the expiry millisecond (Redis: expired when now > when).
        assert_eq!(get(&s, T0 + 100, "k"), bulk("v"));
        assert_eq!(get(&s, T0 + 101, "k"), KvValue::Nil);
        assert_eq!(read(&s, T0 + 101, KvReadOp::Exists(vec![b("k")])), KvValue::Integer(0));
        assert_eq!(ttl(&s, T0 + 101, "k"), KvValue::Integer(-2));
        assert_eq!(read(&s, T0 + 101, KvReadOp::MGet(vec![b("k")])), KvValue::Array(vec![KvValue::Nil]));
        // A write on an expired key sees it as missing.
        assert_eq!(write(&mut s, T0 + 200, set("k", "w").nx().get().op()), KvValue::Nil);
        assert_eq!(get(&s, T0 + 200, "k"), bulk("w"));
        assert_eq!(pttl(&s, T0 + 200, "k"), KvValue::Integer(-1));
        write(&mut s, T0, set("d", "v").at(T0 + 100).op());
        assert_eq!(write(&mut s, T0 + 101, KvWrite::Del(vec![b("d")])), KvValue::Integer(0));
        assert_eq!(incr(&mut s, T0 + 101, "d", 1), KvValue::Integer(1));
        check_index(&s);
    }

    #[test]
    fn set_with_expiry_in_the_past_leaves_no_key() {
        let mut s = KvStore::default();
        write(&mut s, T0, set("k", "old").op());
        assert_eq!(write(&mut s, T0, set("k", "v").at(1000).get().op()), bulk("old"));
        assert_eq!(get(&s, T0, "k"), KvValue::Nil);
        assert_eq!(s.len(), 0);
        check_index(&s);
    }

    #[test]
    fn incr_by() {
        let mut s = KvStore::default();
        assert_eq!(incr(&mut s, T0, "n", 1), KvValue::Integer(1));
        assert_eq!(incr(&mut s, T0, "n", -5), KvValue::Integer(-4));
        assert_eq!(get(&s, T0, "n"), bulk("-4"));
        write(&mut s, T0, set("n", "9223372036854775806").op());
        assert_eq!(incr(&mut s, T0, "n", 1), KvValue::Integer(i64::MAX));
        assert_eq!(incr(&mut s, T0, "n", 1), err(OVERFLOW_ERROR));
        assert_eq!(get(&s, T0, "n"), bulk("9223372036854775807"));
        write(&mut s, T0, set("m", "-9223372036854775808").op());
        assert_eq!(incr(&mut s, T0, "m", -1), err(OVERFLOW_ERROR));
        assert_eq!(incr(&mut s, T0, "m", i64::MAX), KvValue::Integer(-1));
        for bad in ["abc", "", " 1", "1 ", "+1", "01", "-0", "1.5", "9223372036854775808", "1e3"] {
            write(&mut s, T0, set("b", bad).op());
            assert_eq!(incr(&mut s, T0, "b", 1), err(NOT_INTEGER_ERROR), "{bad:?}");
            assert_eq!(get(&s, T0, "b"), bulk(bad));
        }
        write(&mut s, T0, set("z", "0").op());
        assert_eq!(incr(&mut s, T0, "z", 0), KvValue::Integer(0));
    }

    #[test]
    fn incr_keeps_the_ttl() {
        let mut s = KvStore::default();
        write(&mut s, T0, set("n", "10").at(T0 + 5_000).op());
        assert_eq!(incr(&mut s, T0 + 1_000, "n", 1), KvValue::Integer(11));
        assert_eq!(pttl(&s, T0 + 1_000, "n"), KvValue::Integer(4_000));
        // After it expires, INCR starts again from 0 without a TTL.
        assert_eq!(incr(&mut s, T0 + 6_000, "n", 1), KvValue::Integer(1));
        assert_eq!(pttl(&s, T0 + 6_000, "n"), KvValue::Integer(-1));
        check_index(&s);
    }

    #[test]
    fn del_and_exists_count_like_redis() {
        let mut s = KvStore::default();
        write(&mut s, T0, set("a", "1").op());
        write(&mut s, T0, set("b", "2").op());
        let keys = |names: &[&str]| names.iter().map(|n| b(n)).collect::<Vec<_>>();
        // EXISTS counts a key once per mention.
        assert_eq!(read(&s, T0, KvReadOp::Exists(keys(&["a", "a", "b", "c"]))), KvValue::Integer(3));
        // DEL counts keys actually removed.
        assert_eq!(write(&mut s, T0, KvWrite::Del(keys(&["a", "a", "c"]))), KvValue::Integer(1));
        assert_eq!(read(&s, T0, KvReadOp::Exists(keys(&["a"]))), KvValue::Integer(0));
        assert_eq!(
            read(&s, T0, KvReadOp::MGet(keys(&["a", "b", "b"]))),
            KvValue::Array(vec![KvValue::Nil, bulk("2"), bulk("2")])
        );
    }

    #[test]
    fn expire_and_ttl() {
        let mut s = KvStore::default();
        assert_eq!(expire(&mut s, T0, "missing", T0 + 1000), KvValue::Integer(0));
        assert_eq!(ttl(&s, T0, "missing"), KvValue::Integer(-2));
        assert_eq!(pttl(&s, T0, "missing"), KvValue::Integer(-2));
        write(&mut s, T0, set("k", "v").op());
        assert_eq!(ttl(&s, T0, "k"), KvValue::Integer(-1));
        assert_eq!(expire(&mut s, T0, "k", T0 + 10_000), KvValue::Integer(1));
        assert_eq!(ttl(&s, T0, "k"), KvValue::Integer(10));
        // TTL rounds to the nearest second, half up: (ms + 500) / 1000.
        assert_eq!(ttl(&s, T0 + 500, "k"), KvValue::Integer(10));
        assert_eq!(ttl(&s, T0 + 501, "k"), KvValue::Integer(9));
        assert_eq!(ttl(&s, T0 + 9_501, "k"), KvValue::Integer(0));
        assert_eq!(ttl(&s, T0 + 9_499, "k"), KvValue::Integer(1));
        assert_eq!(pttl(&s, T0 + 10_000, "k"), KvValue::Integer(0));
        // A new expiry replaces the old one.
        assert_eq!(expire(&mut s, T0, "k", T0 + 20_000), KvValue::Integer(1));
        assert_eq!(pttl(&s, T0, "k"), KvValue::Integer(20_000));
        check_index(&s);
        // An expiry at or before now deletes the key and still answers 1.
        assert_eq!(expire(&mut s, T0, "k", T0), KvValue::Integer(1));
        assert_eq!(get(&s, T0, "k"), KvValue::Nil);
        assert_eq!(s.len(), 0);
        write(&mut s, T0, set("k", "v").op());
        assert_eq!(expire(&mut s, T0, "k", 0), KvValue::Integer(1));
        assert_eq!(s.len(), 0);
        // On an expired key EXPIRE answers 0.
        write(&mut s, T0, set("k", "v").at(T0 + 1).op());
        assert_eq!(expire(&mut s, T0 + 2, "k", T0 + 100), KvValue::Integer(0));
        check_index(&s);
    }

    #[test]
    fn purge_is_bounded_and_in_expiry_order() {
        let mut s = KvStore::default();
        for i in 0..10u64 {
            let key: &'static str = Box::leak(format!("k{i}").into_boxed_str());
            write(&mut s, T0, set(key, "v").at(T0 + 100 - i).op());
        }
        write(&mut s, T0, set("forever", "v").op());
        assert_eq!(s.len(), 11);
        assert_eq!(s.purge_expired(T0 + 95, 100), 4); // k9..k6 expire at T0+91..94
        assert_eq!(s.purge_expired(T0 + 1000, 3), 3);
        assert_eq!(get(&s, T0, "k2"), bulk("v"));
        assert_eq!(get(&s, T0, "k5"), KvValue::Nil);
        assert_eq!(s.purge_expired(T0 + 1000, 100), 3);
        assert_eq!(s.len(), 1);
        check_index(&s);
    }

    #[test]
    fn writes_purge_some_expired_keys() {
        let mut s = KvStore::default();
        for i in 0..40 {
            let key: &'static str = Box::leak(format!("k{i}").into_boxed_str());
            write(&mut s, T0, set(key, "v").at(T0 + 1).op());
        }
        write(&mut s, T0 + 10, set("x", "v").op());
        assert_eq!(s.len(), 40 - PURGE_PER_WRITE + 1);
        check_index(&s);
    }

    #[test]
    fn max_keys_answers_oom_for_new_keys_only() {
        let mut s = KvStore::new(KvLimits { max_keys: 2, ..KvLimits::default() });
        write(&mut s, T0, set("a", "1").op());
        write(&mut s, T0, set("b", "2").at(T0 + 10).op());
        assert_eq!(write(&mut s, T0, set("c", "3").op()), err(OOM_ERROR));
        assert_eq!(incr(&mut s, T0, "c", 1), err(OOM_ERROR));
        assert_eq!(get(&s, T0, "c"), KvValue::Nil);
        // Overwriting, INCR of an existing key, NX that does not write: fine.
        assert_eq!(write(&mut s, T0, set("a", "5").op()), KvValue::Ok);
        assert_eq!(incr(&mut s, T0, "a", 1), KvValue::Integer(6));
        assert_eq!(write(&mut s, T0, set("a", "x").nx().op()), KvValue::Nil);
        // Once "b" has expired there is room again.
        assert_eq!(write(&mut s, T0 + 11, set("c", "3").op()), KvValue::Ok);
        // Deleting makes room too.
        assert_eq!(write(&mut s, T0 + 11, KvWrite::Del(vec![b("a")])), KvValue::Integer(1));
        assert_eq!(incr(&mut s, T0 + 11, "d", 2), KvValue::Integer(2));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn values_above_the_limit_are_refused() {
        let mut s = KvStore::new(KvLimits { max_value_bytes: 3, ..KvLimits::default() });
        assert_eq!(write(&mut s, T0, set("k", "abc").op()), KvValue::Ok);
        assert_eq!(write(&mut s, T0, set("k", "abcd").op()), err(TOO_BIG_ERROR));
        assert_eq!(get(&s, T0, "k"), bulk("abc"));
    }

    #[test]
    fn same_log_same_state() {
        let log: Vec<KvCommand> = (0..200u64)
            .map(|i| {
                let key = Bytes::from(format!("k{}", i % 17));
                let now = T0 + i * 7;
                let op = match i % 5 {
                    0 => KvWrite::Set {
                        key,
                        value: Bytes::from(i.to_string()),
                        condition: SetCondition::Always,
                        expire_at_unix_ms: (i % 3 == 0).then_some(now + 20),
                        keep_ttl: false,
                        get: false,
                    },
                    1 => KvWrite::IncrBy { key, delta: 3 },
                    2 => KvWrite::Expire { key, expire_at_unix_ms: now + 30 },
                    3 => KvWrite::Del(vec![key]),
                    _ => KvWrite::IncrBy { key, delta: -1 },
                };
                KvCommand { now_unix_ms: now, op }
            })
            .collect();
        let mut a = KvStore::default();
        let mut b = KvStore::default();
        let replies_a: Vec<_> = log.iter().map(|c| a.apply(c)).collect();
        let replies_b: Vec<_> = log.iter().map(|c| b.apply(c)).collect();
        assert_eq!(replies_a, replies_b);
        assert_eq!(a, b);
        assert_eq!(a.to_snapshot(), b.to_snapshot());
        check_index(&a);
    }

    #[test]
    fn snapshot_round_trip() {
        let mut s = KvStore::default();
        assert_eq!(KvStore::from_snapshot(&s.to_snapshot()), Ok(KvStore::default()));
        write(&mut s, T0, set("plain", "v").op());
        write(&mut s, T0, set("ttl", "w").at(T0 + 5_000).op());
        write(&mut s, T0, set("", "").op());
        let big = Bytes::from(vec![0xffu8; 300]);
        write(
            &mut s,
            T0,
            KvWrite::Set {
                key: Bytes::from_static(b"bin\x00\xff"),
                value: big.clone(),
                condition: SetCondition::Always,
                expire_at_unix_ms: Some(u64::MAX - 1),
                keep_ttl: false,
                get: false,
            },
        );
        let bytes = s.to_snapshot();
        let back = KvStore::from_snapshot(&bytes).expect("decodes");
        assert_eq!(back, s);
        assert_eq!(back.len(), 4);
        assert_eq!(pttl(&back, T0, "ttl"), KvValue::Integer(5_000));
        assert_eq!(pttl(&back, T0, "plain"), KvValue::Integer(-1));
        assert_eq!(read(&back, T0, KvReadOp::Get(Bytes::from_static(b"bin\x00\xff"))), KvValue::Bulk(big));
        check_index(&back);
        assert_eq!(back.to_snapshot(), bytes);
    }

    #[test]
    fn snapshot_decoding_rejects_garbage() {
        let mut s = KvStore::default();
        write(&mut s, T0, set("a", "1").at(T0 + 1).op());
        write(&mut s, T0, set("b", "2").op());
        let good = s.to_snapshot();
        // Every truncation fails cleanly.
        for cut in 0..good.len() {
            assert!(KvStore::from_snapshot(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(KvStore::from_snapshot(&trailing), Err(KvSnapshotError::TrailingBytes));
        assert_eq!(KvStore::from_snapshot(b"garbage!"), Err(KvSnapshotError::NotASnapshot));
        assert_eq!(KvStore::from_snapshot(b"IOSWKV\x02\x00"), Err(KvSnapshotError::UnsupportedVersion(2)));
        // A forged huge count or length neither allocates it nor panics.
        let mut huge = b"IOSWKV\x01".to_vec();
        put_varint(&mut huge, u64::MAX);
        assert_eq!(KvStore::from_snapshot(&huge), Err(KvSnapshotError::Truncated));
        let mut long_key = b"IOSWKV\x01\x01".to_vec();
        put_varint(&mut long_key, u64::MAX);
        assert_eq!(KvStore::from_snapshot(&long_key), Err(KvSnapshotError::Truncated));
        // An 11-byte varint.
        let overlong = b"IOSWKV\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01";
        assert_eq!(KvStore::from_snapshot(overlong), Err(KvSnapshotError::BadNumber));
        let mut dup = b"IOSWKV\x01\x02".to_vec();
        dup.extend_from_slice(b"\x01k\x01v\x00\x01k\x01w\x00");
        assert_eq!(KvStore::from_snapshot(&dup), Err(KvSnapshotError::DuplicateKey));
        // Deterministic pseudo-random mutations never panic.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut input = good.clone();
            let at = (state % input.len() as u64) as usize;
            input[at] = (state >> 32) as u8;
            if state & 1 == 0 {
                input.truncate(at + 1);
            }
            if let Ok(store) = KvStore::from_snapshot(&input) {
                check_index(&store);
            }
        }
    }

    #[test]
    fn varints_round_trip() {
        for n in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            let mut reader = SnapshotReader { rest: &out };
            assert_eq!(reader.varint(), Ok(n));
            assert!(reader.rest.is_empty());
        }
    }

    #[test]
    fn local_kv_answers_at_once_and_stamps_unset_clocks() {
        let kv = LocalKv::new(KvLimits::default());
        let set_op = KvOp::Write(KvCommand {
            now_unix_ms: 0,
            op: KvWrite::Set {
                key: b("k"),
                value: b("v"),
                condition: SetCondition::Always,
                expire_at_unix_ms: Some(system_unix_ms() + 60_000),
                keep_ttl: false,
                get: false,
            },
        });
        assert_eq!(kv.execute_now(set_op), KvValue::Ok);
        // With the real clock the key is alive...
        let ttl = kv.execute_now(KvOp::Read(KvRead { now_unix_ms: 0, op: KvReadOp::Ttl(b("k")) }));
        assert!(matches!(ttl, KvValue::Integer(59 | 60)), "{ttl:?}");
        // ...and a caller-given clock is used as is.
        let later = system_unix_ms() + 120_000;
        let gone = kv.execute_now(KvOp::Read(KvRead { now_unix_ms: later, op: KvReadOp::Get(b("k")) }));
        assert_eq!(gone, KvValue::Nil);
        assert_eq!(kv.len(), 1);
        let mut fut = kv.execute(KvOp::Write(KvCommand { now_unix_ms: 0, op: KvWrite::Del(vec![b("k")]) }));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert_eq!(fut.as_mut().poll(&mut cx), std::task::Poll::Ready(KvValue::Integer(1)));
        assert!(kv.is_empty());
    }
}
