//! The pure core of presence: what each node contributes to each presence key, and the
//! cluster-wide value derived from it.
//!
//! Every node computes its own contribution from the sockets it holds (a count, or for a
//! `unique` key the set of distinct user values) and sends it whole to the others; a node's
//! contribution replaces the one it sent before. The value of a key is the sum of the counts, or
//! the size of the union of the sets, over the nodes that are alive. When the failure detector
//! declares a node dead its contribution is dropped ([`PresenceTable::forget`]), so its
//! sockets leave the counts; a client that reconnects elsewhere is counted by its new node only.
//! Nothing here reads a clock or touches a socket.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A node's contribution to one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contribution {
    /// Sockets counted by this node.
    pub count: u64,
    /// For a `unique` key: the distinct values (user ids) among those sockets.
    pub values: Option<BTreeSet<String>>,
}

/// Everything one node contributes: key → contribution. Keys with nothing to count are left
/// out.
pub type Contributions = BTreeMap<String, Contribution>;

/// Contributions of this node and of every other node heard from.
#[derive(Debug, Default, Clone)]
pub struct PresenceTable {
    local: Contributions,
    remote: HashMap<u64, Contributions>,
}

impl PresenceTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces this node's contribution; returns whether it changed.
    pub fn set_local(&mut self, contributions: Contributions) -> bool {
        if self.local == contributions {
            return false;
        }
        self.local = contributions;
        true
    }

    /// This node's contribution.
    pub fn local(&self) -> &Contributions {
        &self.local
    }

    /// Replaces node `node`'s contribution (a whole state, not a delta).
    pub fn set_remote(&mut self, node: u64, contributions: Contributions) {
        self.remote.insert(node, contributions);
    }

    /// Drops node `node`'s contribution (it died or left); returns whether there was one.
    pub fn forget(&mut self, node: u64) -> bool {
        self.remote.remove(&node).is_some()
    }

    /// Nodes whose contribution is held.
    pub fn nodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.remote.keys().copied()
    }

    /// Every key some node contributes to.
    pub fn keys(&self) -> BTreeSet<String> {
        self.local.keys().chain(self.remote.values().flat_map(BTreeMap::keys)).cloned().collect()
    }

    /// The cluster-wide value of `key`: the sum of the counts, or for a `unique` key the number
    /// of distinct values over every node. 0 for a key nobody contributes to.
    pub fn value(&self, key: &str) -> u64 {
        let parts: Vec<&Contribution> =
            std::iter::once(&self.local).chain(self.remote.values()).filter_map(|c| c.get(key)).collect();
        if parts.iter().any(|c| c.values.is_some()) {
            let union: BTreeSet<&String> = parts.iter().filter_map(|c| c.values.as_ref()).flatten().collect();
            union.len() as u64
        } else {
            parts.iter().map(|c| c.count).sum()
        }
    }

    /// Every key with its value.
    pub fn values(&self) -> BTreeMap<String, u64> {
        self.keys().into_iter().map(|k| (k.clone(), self.value(&k))).collect()
    }
}

/// Spaces out the events announcing one key's new value: at most one per `interval`; a change
/// inside the interval is announced when it ends (the latest value), so bursts coalesce and
/// the last value always goes out.
#[derive(Debug, Clone, Default)]
pub struct RateGate {
    last_sent_ms: Option<u64>,
    last_value: Option<u64>,
}

impl RateGate {
    /// Whether to announce `value` at `now_ms` given at most one announcement per
    /// `interval_ms`. Call again later (e.g. every tick) while it answers `false` for a changed
    /// value; it answers `true` once the interval passed.
    pub fn should_send(&mut self, value: u64, now_ms: u64, interval_ms: u64) -> bool {
        if self.last_value == Some(value) {
            return false;
        }
        if self.last_sent_ms.is_some_and(|t| now_ms < t.saturating_add(interval_ms)) {
            return false;
        }
        self.last_sent_ms = Some(now_ms);
        self.last_value = Some(value);
        true
    }
}

impl RateGate {
    /// The value announced last, if any.
    pub fn last_value(&self) -> Option<u64> {
        self.last_value
    }
}

/// The local sockets that hold a key's last announced value. A socket that arrives later (a
/// page that connects, a socket that joins the room) must be told the value even when its
/// arrival changed nothing (a second tab of a user already counted by a `unique` key), or it
/// would wait for the next change.
#[derive(Debug, Clone, Default)]
pub struct Told(HashSet<String>);

impl Told {
    /// After an announcement to the sockets `present`: each of them holds the value.
    pub fn all(&mut self, present: &[&str]) {
        self.0 = present.iter().map(|id| (*id).to_owned()).collect();
    }

    /// The positions in `present` of the sockets not told yet, which count as told from now on;
    /// sockets gone since are forgotten.
    pub fn newcomers(&mut self, present: &[&str]) -> Vec<usize> {
        let new: Vec<usize> = (0..present.len()).filter(|&i| !self.0.contains(present[i])).collect();
        if self.0.len() + new.len() == present.len() {
            // Everyone told before is still here: add the newcomers.
            self.0.extend(new.iter().map(|&i| present[i].to_owned()));
        } else {
            self.all(present);
        }
        new
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn count(n: u64) -> Contribution {
        Contribution { count: n, values: None }
    }

    fn users(ids: &[&str]) -> Contribution {
        Contribution { count: ids.len() as u64, values: Some(ids.iter().map(|s| (*s).to_owned()).collect()) }
    }

    fn one(key: &str, c: Contribution) -> Contributions {
        [(key.to_owned(), c)].into()
    }

    #[test]
    fn counts_add_up_over_nodes_and_a_dead_node_leaves_them() {
        let mut t = PresenceTable::new();
        assert!(t.set_local(one("users:count", count(100))));
        assert!(!t.set_local(one("users:count", count(100))), "same state is no change");
        t.set_remote(2, one("users:count", count(100)));
        t.set_remote(3, one("users:count", count(100)));
        assert_eq!(t.value("users:count"), 300);
        assert!(t.forget(3));
        assert_eq!(t.value("users:count"), 200);
        assert!(!t.forget(3));
        // Its clients reconnect to node 2, which now reports them.
        t.set_remote(2, one("users:count", count(200)));
        assert_eq!(t.value("users:count"), 300);
        assert_eq!(t.value("nobody"), 0);
    }

    #[test]
    fn unique_keys_count_each_user_once_across_nodes() {
        let mut t = PresenceTable::new();
        t.set_local(one("users", users(&["ann", "bob"])));
        t.set_remote(2, one("users", users(&["bob", "cid"])));
        assert_eq!(t.value("users"), 3);
        t.forget(2);
        assert_eq!(t.value("users"), 2);
    }

    #[test]
    fn a_new_state_replaces_the_old_one_and_keys_are_the_union() {
        let mut t = PresenceTable::new();
        t.set_remote(2, [("a".into(), count(1)), ("b".into(), count(2))].into());
        t.set_remote(2, one("b", count(5)));
        t.set_local(one("c", count(1)));
        assert_eq!(t.values(), [("b".to_owned(), 5), ("c".to_owned(), 1)].into());
    }

    #[test]
    fn the_rate_gate_coalesces_bursts_and_sends_the_last_value() {
        let mut g = RateGate::default();
        assert!(g.should_send(1, 0, 100));
        assert!(!g.should_send(1, 10, 100), "unchanged");
        assert!(!g.should_send(2, 20, 100), "inside the interval");
        assert!(!g.should_send(3, 50, 100), "inside the interval");
        assert!(g.should_send(3, 100, 100), "the latest value once the interval passed");
        assert!(!g.should_send(3, 500, 100));
        assert!(g.should_send(2, 500, 100));
    }

    #[test]
    fn sockets_arriving_after_an_announcement_are_told_once() {
        let mut told = Told::default();
        told.all(&["a", "b"]);
        assert_eq!(told.newcomers(&["a", "b"]), Vec::<usize>::new());
        assert_eq!(told.newcomers(&["a", "b", "c"]), vec![2], "c arrived");
        assert_eq!(told.newcomers(&["c", "a", "b"]), Vec::<usize>::new(), "told once");
        // b left and d arrived (same number of sockets): d is new, b forgotten.
        assert_eq!(told.newcomers(&["a", "c", "d"]), vec![2]);
        assert_eq!(told.newcomers(&["a", "b", "c", "d"]), vec![1], "b is a newcomer again after it left");
        told.all(&[]);
        assert_eq!(told.newcomers(&["a"]), vec![0]);
    }

    #[test]
    fn the_gate_remembers_the_value_it_let_out() {
        let mut g = RateGate::default();
        assert_eq!(g.last_value(), None);
        assert!(g.should_send(4, 0, 100));
        assert!(!g.should_send(5, 10, 100));
        assert_eq!(g.last_value(), Some(4), "the held back value is not out yet");
    }
}
