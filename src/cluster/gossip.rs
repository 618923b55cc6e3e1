//! Gossip state: which nodes are alive, and which rooms each node has local members in.
//!
//! Pure: no sockets, no clock (every call that needs time takes `now`), so the tests simulate
//! time. Like openraft's engine, it decides and the runtime (`node.rs`) carries out: the entry
//! points ([`GossipState::on_gossip`], [`GossipState::on_link_up`], [`GossipState::flush`],
//! [`GossipState::on_tick`]) take what arrived or what time it is and return the messages to
//! send and to whom ([`Outgoing`]); the runtime only sends them.
//!
//! **Failure detection** is a gossip-style heartbeat detector: every node sends, every
//! `interval`, its own entry (incarnation, a heartbeat counter that grows each round, its
//! interest version and counts) plus what it last heard of every other node, to each peer. A
//! node's entry is fresh when its heartbeat grew, whoever relayed it, so a node that one peer
//! cannot reach directly but others can stays alive. An entry not refreshed for `suspect_after`
//! is suspect, for `dead_after` dead: its room interest is dropped and broadcasts stop going to
//! it. A `Goodbye` marks it left at once. A higher incarnation (a restart) replaces everything
//! known of the node.
//!
//! **Room interest** (rooms with at least one local member, per namespace; a socket-id room only
//! when the runtime reports it: a socket id names its node, except for a session recovered on
//! another node, whose node then announces the id as interest) spreads as versioned deltas, each sent by its
//! origin straight to every peer on the ordered stream that also carries its broadcasts. A
//! receiver applies a delta only on top of exactly the version it holds. Anti-entropy: when a
//! link (re)forms both sides send their whole interest (a snapshot); and because an origin's
//! heartbeat carries its interest version and travels on the same ordered stream after its
//! deltas, a receiver whose version is behind the heartbeat's has missed something and asks the
//! origin for a snapshot ([`Action::RequestSnapshot`]). Convergence bound: a change reaches every
//! connected peer one flush delay plus one link latency after it happens; after a link
//! (re)forms, one round trip.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::message::{
    DigestEntry, Gossip, InterestDelta, InterestSnapshot, NamespaceDelta, NamespaceRooms, NodeId, NodeLiveness,
    NodeState,
};
use crate::sid::Sid;

/// Failure-detector timing.
#[derive(Debug, Clone, Copy)]
pub struct GossipConfig {
    /// Heartbeat period.
    pub interval: Duration,
    /// No fresh heartbeat for this long: suspect.
    pub suspect_after: Duration,
    /// No fresh heartbeat for this long: dead (its interest is dropped).
    pub dead_after: Duration,
    /// A dead or left node is forgotten after this long.
    pub forget_after: Duration,
    /// How long a room joined by a cluster-wide operation from this node is broadcast to every
    /// node (until the joining nodes' interest has surely arrived).
    pub wide_room_ttl: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            suspect_after: Duration::from_millis(1000),
            dead_after: Duration::from_millis(3000),
            forget_after: Duration::from_secs(60),
            wide_room_ttl: Duration::from_secs(3),
        }
    }
}

/// Rooms per namespace.
type Rooms = HashMap<String, HashSet<String>>;

/// What this node knows of another one.
#[derive(Debug, Clone)]
struct Peer {
    incarnation: u64,
    heartbeat: u64,
    heard: Instant,
    state: NodeState,
    addr: String,
    /// The interest version the node itself last announced.
    advertised: u64,
    /// The interest held (valid for `incarnation`).
    version: u64,
    rooms: Rooms,
    sockets: u64,
    room_count: u64,
}

/// A gossip message the state wants sent, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The receivers.
    pub to: Vec<NodeId>,
    /// The message.
    pub gossip: Gossip,
}

/// What handling a message decided (turned into [`Outgoing`] messages by the entry points).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `origin` for its whole interest (send it a digest of what is held).
    RequestSnapshot(DigestEntry),
}

/// A change of a node's liveness state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The node.
    pub node: NodeId,
    /// Its new state.
    pub state: NodeState,
}

/// One member as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// The node.
    pub node: NodeId,
    /// Its address.
    pub addr: String,
    /// Its liveness.
    pub state: NodeState,
    /// Its incarnation.
    pub incarnation: u64,
    /// The interest version held here.
    pub version: u64,
    /// The interest version it announced.
    pub advertised: u64,
    /// Its connected sockets (as it announced).
    pub sockets: u64,
    /// Its rooms with local members (as it announced).
    pub rooms: u64,
    /// Its rooms (all namespaces) in the interest held here.
    pub interest_rooms: u64,
}

/// The gossip state of one node.
#[derive(Debug)]
pub struct GossipState {
    me: NodeId,
    incarnation: u64,
    addr: String,
    config: GossipConfig,
    heartbeat: u64,
    version: u64,
    rooms: Rooms,
    pending: HashMap<String, (Vec<String>, Vec<String>)>,
    sockets: u64,
    peers: HashMap<NodeId, Peer>,
    wide: HashMap<(String, String), Instant>,
}

impl GossipState {
    /// The state of node `me` (incarnation `incarnation`, reachable at `addr`).
    pub fn new(me: NodeId, incarnation: u64, addr: String, config: GossipConfig) -> Self {
        Self {
            me,
            incarnation,
            addr,
            config,
            heartbeat: 0,
            version: 0,
            rooms: HashMap::new(),
            pending: HashMap::new(),
            sockets: 0,
            peers: HashMap::new(),
            wide: HashMap::new(),
        }
    }

    /// The timing in use.
    pub fn config(&self) -> &GossipConfig {
        &self.config
    }

    /// This node's interest version.
    pub fn version(&self) -> u64 {
        self.version
    }

    // -----------------------------------------------------------------------------------------
    // Entry points: what arrived or what time it is in, the messages to send out.
    // -----------------------------------------------------------------------------------------

    /// A gossip message from `from`; returns the answers (snapshot requests, a snapshot).
    pub fn on_gossip(&mut self, from: NodeId, gossip: &Gossip, now: Instant) -> Vec<Outgoing> {
        let actions = match gossip {
            Gossip::Delta(delta) => self.on_delta(delta, now).into_iter().collect(),
            Gossip::Snapshot(snapshot) => {
                self.on_snapshot(snapshot, now);
                Vec::new()
            }
            Gossip::Digest(entries) => {
                if entries.iter().any(|e| self.digest_is_behind(e)) {
                    return self.snapshot_to(from);
                }
                Vec::new()
            }
            Gossip::Liveness(entries) => self.on_liveness(from, entries, now),
        };
        actions
            .into_iter()
            .map(|Action::RequestSnapshot(digest)| Outgoing {
                to: vec![digest.origin],
                gossip: Gossip::Digest(vec![digest]),
            })
            .collect()
    }

    /// A link to `node` (at `addr`, incarnation `incarnation`) came up: anti-entropy sends it
    /// this node's whole interest.
    pub fn on_link_up(&mut self, node: NodeId, incarnation: u64, addr: &str, now: Instant) -> Vec<Outgoing> {
        self.peer_up(node, incarnation, addr, now);
        self.snapshot_to(node)
    }

    /// The room changes recorded since the last flush ([`GossipState::set_local_room`]) as one
    /// delta to every live peer; nothing when nothing changed.
    pub fn flush(&mut self) -> Vec<Outgoing> {
        match self.take_delta() {
            Some(delta) => vec![Outgoing { to: self.live_peers(), gossip: Gossip::Delta(delta) }],
            None => Vec::new(),
        }
    }

    /// One heartbeat round at `now`, with this node's socket count: pending room changes go out
    /// first (a delta travels before the heartbeat that announces its version), the failure
    /// detector advances, and the liveness message goes to every `linked` peer (a node just up
    /// included). Returns the messages and the liveness changes.
    pub fn on_tick(&mut self, now: Instant, sockets: u64, linked: Vec<NodeId>) -> (Vec<Outgoing>, Vec<StateChange>) {
        let mut out = self.flush();
        self.set_sockets(sockets);
        let changes = self.tick(now);
        out.push(Outgoing { to: linked, gossip: Gossip::Liveness(self.heartbeat()) });
        (out, changes)
    }

    /// This node's whole interest for `node`, after the pending changes (as a delta to every
    /// live peer) so that the snapshot's version covers them.
    fn snapshot_to(&mut self, node: NodeId) -> Vec<Outgoing> {
        let mut out = self.flush();
        out.push(Outgoing { to: vec![node], gossip: Gossip::Snapshot(self.snapshot()) });
        out
    }

    // -----------------------------------------------------------------------------------------
    // State.
    // -----------------------------------------------------------------------------------------

    /// Records this node's socket count for the next heartbeat.
    fn set_sockets(&mut self, sockets: u64) {
        self.sockets = sockets;
    }

    /// Records that local room `room` of `nsp` now has (`present`) or has no local members.
    /// The runtime reports a socket-id room only when the id names another node (a session
    /// recovered here). The change goes out with the next [`GossipState::take_delta`].
    pub fn set_local_room(&mut self, nsp: &str, room: &str, present: bool) {
        let rooms = self.rooms.entry(nsp.to_owned()).or_default();
        let changed = if present { rooms.insert(room.to_owned()) } else { rooms.remove(room) };
        if rooms.is_empty() {
            self.rooms.remove(nsp);
        }
        if !changed {
            return;
        }
        let (added, removed) = self.pending.entry(nsp.to_owned()).or_default();
        let (into, from) = if present { (added, removed) } else { (removed, added) };
        if let Some(pos) = from.iter().position(|r| r == room) {
            from.swap_remove(pos);
        } else {
            into.push(room.to_owned());
        }
    }

    /// The changes since the last call, as the next version; `None` when nothing changed.
    fn take_delta(&mut self) -> Option<InterestDelta> {
        let namespaces: Vec<NamespaceDelta> = self
            .pending
            .drain()
            .filter(|(_, (added, removed))| !added.is_empty() || !removed.is_empty())
            .map(|(namespace, (added, removed))| NamespaceDelta { namespace, added, removed })
            .collect();
        if namespaces.is_empty() {
            return None;
        }
        let from_version = self.version;
        self.version += 1;
        Some(InterestDelta {
            origin: self.me,
            incarnation: self.incarnation,
            from_version,
            to_version: self.version,
            namespaces,
        })
    }

    /// This node's whole interest at its current version (pending changes included: call
    /// [`GossipState::take_delta`] first so that the version covers them).
    fn snapshot(&self) -> InterestSnapshot {
        InterestSnapshot {
            origin: self.me,
            incarnation: self.incarnation,
            version: self.version,
            namespaces: self
                .rooms
                .iter()
                .map(|(ns, rooms)| NamespaceRooms { namespace: ns.clone(), rooms: rooms.iter().cloned().collect() })
                .collect(),
        }
    }

    /// Whether `digest` (what a peer holds of this node) is behind this node's interest.
    fn digest_is_behind(&self, digest: &DigestEntry) -> bool {
        digest.origin == self.me && (digest.incarnation != self.incarnation || digest.version != self.version)
    }

    /// A link to `node` (at `addr`, incarnation `incarnation`) came up.
    fn peer_up(&mut self, node: NodeId, incarnation: u64, addr: &str, now: Instant) {
        if node == self.me {
            return;
        }
        let peer = self.peer_entry(node, incarnation, now);
        if !addr.is_empty() {
            peer.addr = addr.to_owned();
        }
        if peer.incarnation == incarnation && peer.state != NodeState::Left {
            peer.heard = now;
            peer.state = NodeState::Alive;
        }
    }

    /// The entry of `node`, replaced when `incarnation` is newer than what is known.
    fn peer_entry(&mut self, node: NodeId, incarnation: u64, now: Instant) -> &mut Peer {
        let peer = self.peers.entry(node).or_insert_with(|| Peer {
            incarnation,
            heartbeat: 0,
            heard: now,
            state: NodeState::Alive,
            addr: String::new(),
            advertised: 0,
            version: 0,
            rooms: HashMap::new(),
            sockets: 0,
            room_count: 0,
        });
        if incarnation > peer.incarnation {
            let addr = std::mem::take(&mut peer.addr);
            *peer = Peer {
                incarnation,
                heartbeat: 0,
                heard: now,
                state: NodeState::Alive,
                addr,
                advertised: 0,
                version: 0,
                rooms: HashMap::new(),
                sockets: 0,
                room_count: 0,
            };
        }
        peer
    }

    /// The heartbeat message for this round: this node's entry (its heartbeat grows) and what it
    /// knows of the others.
    fn heartbeat(&mut self) -> Vec<NodeLiveness> {
        self.heartbeat += 1;
        let mut out = Vec::with_capacity(self.peers.len() + 1);
        out.push(NodeLiveness {
            node_id: self.me,
            incarnation: self.incarnation,
            state: NodeState::Alive,
            heartbeat: self.heartbeat,
            advertise_addr: self.addr.clone(),
            interest_version: self.version,
            sockets: self.sockets,
            rooms: self.rooms.values().map(|r| r.len() as u64).sum(),
        });
        out.extend(self.peers.iter().map(|(&node_id, p)| NodeLiveness {
            node_id,
            incarnation: p.incarnation,
            state: p.state,
            heartbeat: p.heartbeat,
            advertise_addr: p.addr.clone(),
            interest_version: p.advertised,
            sockets: p.sockets,
            rooms: p.room_count,
        }));
        out
    }

    /// A heartbeat message from `from`.
    fn on_liveness(&mut self, from: NodeId, entries: &[NodeLiveness], now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        for entry in entries {
            if entry.node_id == self.me {
                continue;
            }
            let direct = entry.node_id == from;
            // Relayed news of a node never creates it: it may have been removed on purpose.
            if !direct && !self.peers.contains_key(&entry.node_id) {
                continue;
            }
            let peer = self.peer_entry(entry.node_id, entry.incarnation, now);
            if entry.incarnation != peer.incarnation {
                continue;
            }
            if peer.addr.is_empty() {
                peer.addr.clone_from(&entry.advertise_addr);
            }
            if entry.state == NodeState::Left {
                if peer.state != NodeState::Left {
                    peer.state = NodeState::Left;
                    peer.rooms.clear();
                    peer.version = 0;
                }
                continue;
            }
            if entry.heartbeat > peer.heartbeat && peer.state != NodeState::Left {
                peer.heartbeat = entry.heartbeat;
                peer.heard = now;
                peer.state = NodeState::Alive;
            }
            if direct {
                peer.advertised = entry.interest_version;
                peer.sockets = entry.sockets;
                peer.room_count = entry.rooms;
                // Deltas travel before the heartbeat on the same ordered stream: being behind
                // here means one was missed.
                if peer.state == NodeState::Alive && peer.version < entry.interest_version {
                    actions.push(Action::RequestSnapshot(DigestEntry {
                        origin: entry.node_id,
                        incarnation: peer.incarnation,
                        version: peer.version,
                    }));
                }
            }
        }
        actions
    }

    /// A delta from its origin. Returns a snapshot request when it does not apply.
    fn on_delta(&mut self, delta: &InterestDelta, now: Instant) -> Option<Action> {
        if delta.origin == self.me {
            return None;
        }
        let peer = self.peer_entry(delta.origin, delta.incarnation, now);
        if delta.incarnation != peer.incarnation || matches!(peer.state, NodeState::Dead | NodeState::Left) {
            return None;
        }
        if delta.to_version <= peer.version {
            return None;
        }
        if delta.from_version != peer.version {
            return Some(Action::RequestSnapshot(DigestEntry {
                origin: delta.origin,
                incarnation: peer.incarnation,
                version: peer.version,
            }));
        }
        for ns in &delta.namespaces {
            let rooms = peer.rooms.entry(ns.namespace.clone()).or_default();
            for room in &ns.added {
                rooms.insert(room.clone());
            }
            for room in &ns.removed {
                rooms.remove(room);
            }
            if rooms.is_empty() {
                peer.rooms.remove(&ns.namespace);
            }
        }
        peer.version = delta.to_version;
        None
    }

    /// A snapshot from its origin.
    fn on_snapshot(&mut self, snapshot: &InterestSnapshot, now: Instant) {
        if snapshot.origin == self.me {
            return;
        }
        let peer = self.peer_entry(snapshot.origin, snapshot.incarnation, now);
        if snapshot.incarnation != peer.incarnation || matches!(peer.state, NodeState::Dead | NodeState::Left) {
            return;
        }
        if snapshot.version < peer.version {
            return;
        }
        peer.rooms = snapshot
            .namespaces
            .iter()
            .filter(|ns| !ns.rooms.is_empty())
            .map(|ns| (ns.namespace.clone(), ns.rooms.iter().cloned().collect()))
            .collect();
        peer.version = snapshot.version;
    }

    /// `node` said goodbye.
    pub fn on_goodbye(&mut self, node: NodeId, incarnation: u64, now: Instant) {
        if node == self.me {
            return;
        }
        let peer = self.peer_entry(node, incarnation, now);
        if peer.incarnation == incarnation {
            peer.state = NodeState::Left;
            peer.heard = now;
            peer.rooms.clear();
            peer.version = 0;
        }
    }

    /// Forgets `node` (it was removed from the cluster).
    pub fn remove(&mut self, node: NodeId) {
        self.peers.remove(&node);
    }

    /// Advances the failure detector to `now`; returns the state changes.
    fn tick(&mut self, now: Instant) -> Vec<StateChange> {
        let config = self.config;
        let mut changes = Vec::new();
        self.peers.retain(|&node, peer| {
            let silent = now.saturating_duration_since(peer.heard);
            let state = match peer.state {
                NodeState::Left | NodeState::Dead => {
                    return silent < config.forget_after;
                }
                _ if silent >= config.dead_after => NodeState::Dead,
                _ if silent >= config.suspect_after => NodeState::Suspect,
                _ => NodeState::Alive,
            };
            if state != peer.state {
                peer.state = state;
                if state == NodeState::Dead {
                    peer.rooms.clear();
                    peer.version = 0;
                }
                changes.push(StateChange { node, state });
            }
            true
        });
        self.wide.retain(|_, until| *until > now);
        changes
    }

    /// Broadcasts to `room` of `nsp` go to every node until `now + wide_room_ttl` (after a
    /// cluster-wide join made here, before the joiners' interest arrives).
    pub fn widen(&mut self, nsp: &str, room: &str, now: Instant) {
        self.wide.insert((nsp.to_owned(), room.to_owned()), now + self.config.wide_room_ttl);
    }

    /// Nodes that are not known to be dead or gone.
    pub fn live_peers(&self) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| matches!(p.state, NodeState::Alive | NodeState::Suspect))
            .map(|(&n, _)| n)
            .collect();
        out.sort_unstable();
        out
    }

    /// Whether `node` is a peer the failure detector holds alive (or suspects, not yet dead).
    pub fn is_live(&self, node: NodeId) -> bool {
        self.peers.get(&node).is_some_and(|p| matches!(p.state, NodeState::Alive | NodeState::Suspect))
    }

    /// The nodes a broadcast to `rooms` of `nsp` must be forwarded to: every live node for a
    /// namespace-wide one; else the node a socket-id room names and the nodes announcing that id
    /// (a session recovered there), and the nodes with interest in any other room.
    pub fn targets(&self, nsp: &str, rooms: &[String]) -> Vec<NodeId> {
        if rooms.is_empty() {
            return self.live_peers();
        }
        let mut out = Vec::new();
        for (&node, peer) in &self.peers {
            if !matches!(peer.state, NodeState::Alive | NodeState::Suspect) {
                continue;
            }
            let ns_rooms = peer.rooms.get(nsp);
            let wanted = rooms.iter().any(|room| match Sid::parse(room) {
                Some(sid) if u64::from(sid.tag()) == node & 0x00ff_ffff => true,
                Some(_) => ns_rooms.is_some_and(|r| r.contains(room)),
                None => {
                    ns_rooms.is_some_and(|r| r.contains(room))
                        || self.wide.contains_key(&(nsp.to_owned(), room.clone()))
                }
            });
            if wanted {
                out.push(node);
            }
        }
        out.sort_unstable();
        out
    }

    /// Whether this node holds the latest interest every live node announced.
    pub fn converged(&self) -> bool {
        self.peers.values().all(|p| p.state != NodeState::Alive || p.version == p.advertised)
    }

    /// Every known node (this one excluded), sorted by id.
    pub fn members(&self) -> Vec<MemberView> {
        let mut out: Vec<MemberView> = self
            .peers
            .iter()
            .map(|(&node, p)| MemberView {
                node,
                addr: p.addr.clone(),
                state: p.state,
                incarnation: p.incarnation,
                version: p.version,
                advertised: p.advertised,
                sockets: p.sockets,
                rooms: p.room_count,
                interest_rooms: p.rooms.values().map(|r| r.len() as u64).sum(),
            })
            .collect();
        out.sort_by_key(|m| m.node);
        out
    }

    /// The rooms of `nsp` that `node` has members in, as held here (tests and the admin API).
    pub fn rooms_of(&self, node: NodeId, nsp: &str) -> Vec<String> {
        let mut rooms: Vec<String> = self
            .peers
            .get(&node)
            .and_then(|p| p.rooms.get(nsp))
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        rooms.sort();
        rooms
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(me: NodeId) -> GossipState {
        GossipState::new(me, 1, format!("127.0.0.1:{me}"), GossipConfig::default())
    }

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Delivers `from`'s heartbeat to `to`.
    fn beat(from: &mut GossipState, to: &mut GossipState, now: Instant) -> Vec<Action> {
        let entries = from.heartbeat();
        to.on_liveness(from.me, &entries, now)
    }

    #[test]
    fn deltas_apply_in_order_and_target_interested_nodes_only() {
        let now = Instant::now();
        let (mut a, mut b, mut c) = (state(1), state(2), state(3));
        for peer in [2, 3] {
            a.peer_up(peer, 1, "", now);
        }
        b.set_local_room("/", "chat", true);
        b.set_local_room("/", "news", true);
        let d1 = b.take_delta().unwrap();
        assert_eq!((d1.from_version, d1.to_version), (0, 1));
        assert_eq!(a.on_delta(&d1, now), None);
        c.set_local_room("/other", "chat", true);
        a.on_delta(&c.take_delta().unwrap(), now);

        assert_eq!(a.targets("/", &s(&["chat"])), vec![2]);
        assert_eq!(a.targets("/other", &s(&["chat"])), vec![3]);
        assert_eq!(a.targets("/", &s(&["nobody"])), Vec::<NodeId>::new());
        assert_eq!(a.targets("/", &[]), vec![2, 3]);
        assert_eq!(a.targets("/", &s(&["news", "chat"])), vec![2]);

        b.set_local_room("/", "chat", false);
        a.on_delta(&b.take_delta().unwrap(), now);
        assert_eq!(a.targets("/", &s(&["chat"])), Vec::<NodeId>::new());
        assert_eq!(a.rooms_of(2, "/"), s(&["news"]));
    }

    #[test]
    fn add_then_remove_before_a_flush_sends_nothing() {
        let mut b = state(2);
        b.set_local_room("/", "r", true);
        b.set_local_room("/", "r", false);
        assert_eq!(b.take_delta(), None);
        assert_eq!(b.version(), 0);
        b.set_local_room("/", "r", true);
        b.set_local_room("/", "r", true);
        let delta = b.take_delta().unwrap();
        assert_eq!(delta.namespaces, vec![NamespaceDelta { namespace: "/".into(), added: s(&["r"]), removed: vec![] }]);
    }

    #[test]
    fn socket_id_rooms_are_routed_by_their_tag_and_by_announced_interest() {
        let now = Instant::now();
        let mut a = state(1);
        a.peer_up(2, 1, "", now);
        a.peer_up(3, 1, "", now);
        let sid = Sid::with_tag(3).as_str().to_owned();
        assert_eq!(a.targets("/", std::slice::from_ref(&sid)), vec![3]);
        // Node 2 holds a session recovered from node 3: it announces that id as interest.
        let mut b = state(2);
        b.set_local_room("/", &sid, true);
        let delta = b.take_delta().unwrap();
        assert!(a.on_gossip(2, &Gossip::Delta(delta), now).is_empty());
        assert_eq!(a.targets("/", std::slice::from_ref(&sid)), vec![2, 3]);
        assert_eq!(a.targets("/", &[Sid::with_tag(2).as_str().to_owned()]), vec![2]);
    }

    #[test]
    fn a_gap_asks_for_a_snapshot_and_the_snapshot_repairs_it() {
        let now = Instant::now();
        let (mut a, mut b) = (state(1), state(2));
        a.peer_up(2, 1, "", now);
        b.set_local_room("/", "x", true);
        let _lost = b.take_delta().unwrap();
        b.set_local_room("/", "y", true);
        let second = b.take_delta().unwrap();
        let action = a.on_delta(&second, now).unwrap();
        assert_eq!(action, Action::RequestSnapshot(DigestEntry { origin: 2, incarnation: 1, version: 0 }));
        let Action::RequestSnapshot(digest) = action;
        assert!(b.digest_is_behind(&digest));
        a.on_snapshot(&b.snapshot(), now);
        assert_eq!(a.rooms_of(2, "/"), s(&["x", "y"]));
        assert!(!b.digest_is_behind(&DigestEntry { origin: 2, incarnation: 1, version: 2 }));
    }

    #[test]
    fn a_heartbeat_ahead_of_the_held_version_asks_for_a_snapshot() {
        let now = Instant::now();
        let (mut a, mut b) = (state(1), state(2));
        b.set_local_room("/", "x", true);
        let _lost = b.take_delta().unwrap();
        let actions = beat(&mut b, &mut a, now);
        assert_eq!(actions, vec![Action::RequestSnapshot(DigestEntry { origin: 2, incarnation: 1, version: 0 })]);
        assert!(!a.converged());
        a.on_snapshot(&b.snapshot(), now);
        assert!(a.converged());
        assert!(beat(&mut b, &mut a, now).is_empty());
    }

    #[test]
    fn silence_makes_a_node_suspect_then_dead_and_drops_its_interest() {
        let t0 = Instant::now();
        let config = GossipConfig::default();
        let (mut a, mut b) = (state(1), state(2));
        a.peer_up(2, 1, "", t0);
        b.set_local_room("/", "r", true);
        a.on_delta(&b.take_delta().unwrap(), t0);
        beat(&mut b, &mut a, t0);
        assert!(a.tick(t0 + config.suspect_after / 2).is_empty());
        assert_eq!(a.tick(t0 + config.suspect_after), vec![StateChange { node: 2, state: NodeState::Suspect }]);
        // A suspect node still gets its broadcasts (and the requests of its sessions).
        assert_eq!(a.targets("/", &s(&["r"])), vec![2]);
        assert!(a.is_live(2));
        assert_eq!(a.tick(t0 + config.dead_after), vec![StateChange { node: 2, state: NodeState::Dead }]);
        assert_eq!(a.targets("/", &s(&["r"])), Vec::<NodeId>::new());
        assert!(a.live_peers().is_empty());
        assert!(!a.is_live(2) && !a.is_live(9));
        // It comes back (a healed partition): alive again, and its interest is fetched anew.
        let later = t0 + config.dead_after + Duration::from_millis(10);
        let actions = beat(&mut b, &mut a, later);
        assert_eq!(a.live_peers(), vec![2]);
        assert_eq!(actions.len(), 1);
        a.on_snapshot(&b.snapshot(), later);
        assert_eq!(a.targets("/", &s(&["r"])), vec![2]);
        assert!(a.tick(later + config.forget_after).len() == 1);
    }

    #[test]
    fn relayed_heartbeats_keep_an_unreachable_node_alive() {
        let t0 = Instant::now();
        let config = GossipConfig::default();
        let (mut a, mut b, mut c) = (state(1), state(2), state(3));
        a.peer_up(2, 1, "", t0);
        a.peer_up(3, 1, "", t0);
        b.peer_up(3, 1, "", t0);
        // c reaches b, b reaches a; a never hears c directly.
        let mut t = t0;
        for _ in 0..20 {
            t += config.interval;
            beat(&mut c, &mut b, t);
            beat(&mut b, &mut a, t);
            a.tick(t);
        }
        assert_eq!(a.live_peers(), vec![2, 3]);
    }

    #[test]
    fn goodbye_and_a_new_incarnation() {
        let now = Instant::now();
        let mut a = state(1);
        let mut b = state(2);
        a.peer_up(2, 1, "", now);
        b.set_local_room("/", "r", true);
        a.on_delta(&b.take_delta().unwrap(), now);
        a.on_goodbye(2, 1, now);
        assert!(a.live_peers().is_empty());
        assert!(a.targets("/", &[]).is_empty());
        // Heartbeats of the old incarnation do not revive it.
        beat(&mut b, &mut a, now);
        assert!(a.live_peers().is_empty());
        // The restarted node (new incarnation) is a new member with empty interest.
        let mut b2 = GossipState::new(2, 2, "127.0.0.1:2".into(), GossipConfig::default());
        a.peer_up(2, 2, "127.0.0.1:2", now);
        assert_eq!(a.live_peers(), vec![2]);
        assert!(a.rooms_of(2, "/").is_empty());
        b2.set_local_room("/", "again", true);
        assert_eq!(a.on_delta(&b2.take_delta().unwrap(), now), None);
        assert_eq!(a.rooms_of(2, "/"), s(&["again"]));
    }

    #[test]
    fn wide_rooms_go_everywhere_until_they_expire() {
        let now = Instant::now();
        let mut a = state(1);
        a.peer_up(2, 1, "", now);
        a.peer_up(3, 1, "", now);
        a.widen("/", "fresh", now);
        assert_eq!(a.targets("/", &s(&["fresh"])), vec![2, 3]);
        a.tick(now + a.config().wide_room_ttl);
        assert!(a.targets("/", &s(&["fresh"])).is_empty());
    }

    /// Delivers every message in `out` addressed to `to`'s node; returns its answers.
    fn deliver(from: NodeId, out: &[Outgoing], to: &mut GossipState, now: Instant) -> Vec<Outgoing> {
        let me = to.me;
        out.iter().filter(|o| o.to.contains(&me)).flat_map(|o| to.on_gossip(from, &o.gossip, now)).collect()
    }

    #[test]
    fn entry_points_return_what_to_send_and_to_whom() {
        let now = Instant::now();
        let (mut a, mut b) = (state(1), state(2));
        b.on_link_up(3, 1, "127.0.0.1:3", now);
        b.set_local_room("/", "r", true);

        // A link up: the pending change goes out as a delta to every live peer first, then the
        // whole interest (covering it) to the new peer.
        let out = b.on_link_up(1, 1, "127.0.0.1:1", now);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(&out[0], Outgoing { to, gossip: Gossip::Delta(d) } if to == &vec![1, 3] && d.to_version == 1));
        assert!(matches!(&out[1], Outgoing { to, gossip: Gossip::Snapshot(s) } if to == &vec![1] && s.version == 1));
        a.on_link_up(2, 1, "", now);
        assert!(deliver(2, &out[1..], &mut a, now).is_empty());
        assert_eq!(a.rooms_of(2, "/"), s(&["r"]));
        assert!(b.flush().is_empty(), "nothing left to flush");

        // A delta a missed: the next one asks its origin for a snapshot (a digest to 2)...
        b.set_local_room("/", "lost", true);
        let _lost = b.flush();
        b.set_local_room("/", "x", true);
        let asks = deliver(2, &b.flush(), &mut a, now);
        assert_eq!(
            asks,
            vec![Outgoing {
                to: vec![2],
                gossip: Gossip::Digest(vec![DigestEntry { origin: 2, incarnation: 1, version: 1 }])
            }]
        );
        // ... which answers with its snapshot to the asker.
        let answers = deliver(1, &asks, &mut b, now);
        assert!(matches!(&answers[..], [Outgoing { to, gossip: Gossip::Snapshot(_) }] if to == &vec![1]));
        deliver(2, &answers, &mut a, now);
        assert_eq!(a.rooms_of(2, "/"), s(&["lost", "r", "x"]));

        // A tick: pending changes before the heartbeat, the heartbeat to every linked peer.
        b.set_local_room("/", "y", true);
        let (out, changes) = b.on_tick(now, 5, vec![1, 3, 4]);
        assert!(changes.is_empty());
        assert!(matches!(&out[0].gossip, Gossip::Delta(d) if d.to_version == 4));
        let Outgoing { to, gossip: Gossip::Liveness(entries) } = &out[1] else { panic!("{out:?}") };
        assert_eq!(to, &vec![1, 3, 4]);
        assert_eq!((entries[0].node_id, entries[0].interest_version, entries[0].sockets), (2, 4, 5));
        assert!(deliver(2, &out, &mut a, now).is_empty());
        assert!(a.converged());
    }

    #[test]
    fn ten_thousand_joins_converge_through_one_delta() {
        let now = Instant::now();
        let (mut a, mut b) = (state(1), state(2));
        a.peer_up(2, 1, "", now);
        for i in 0..10_000 {
            b.set_local_room("/", &format!("room-{i}"), true);
        }
        let delta = b.take_delta().unwrap();
        assert_eq!(a.on_delta(&delta, now), None);
        beat(&mut b, &mut a, now);
        assert!(a.converged());
        assert_eq!(a.rooms_of(2, "/").len(), 10_000);
    }
}
