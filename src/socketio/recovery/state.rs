//! The recovery store of one node, pure: no sockets, no clock (every call that needs time takes
//! `now`), so its tests run on simulated time.
//!
//! Two structures:
//!
//! - **The log**: every recoverable broadcast this node executed (an EVENT without ack id, not
//!   volatile, with an [`Offset`]), in execution order, each with a local sequence number, its
//!   selection and its encoded packet. One copy per broadcast, however many sessions may need it.
//!   Bounded by `log_bytes` and by age (`retain`).
//! - **The sessions**: sockets that left for a recoverable reason (transport close or error, ping
//!   timeout, shutdown), keyed by socket id, each with its secret, namespace, rooms, data and
//!   where its missed packets start. At most `max_sessions`; each expires `window` after it
//!   left. A session handed over by another node (a draining one) also carries the packets that
//!   node logged for it ([`SessionRecord`]).
//!
//! What a client missed is decided from the offset it sends back (the last one it received):
//!
//! 1. it equals `known`, the last offset queued to the socket: the client got everything up to
//!    where the socket stopped receiving (`resume`), so it missed what came after;
//! 2. it equals the offset the client had when the socket (re)connected: it lost everything
//!    queued since, so it missed everything since then;
//! 3. it names a packet carried from another node, or one logged here after the socket
//!    connected: it missed what follows;
//! 4. anything else (an unknown or evicted offset, a string that is no offset): the session
//!    cannot be recovered, and the client gets a fresh one.
//!
//! A recovery that would replay more than `max_packets` packets or `max_bytes` bytes is refused
//! too. The log must still hold every entry from where the replay starts, or the session is
//! refused rather than recovered with a hole.
//!
//! **Moved sessions.** A session taken by another node (its client reconnected there) or handed
//! to one (this node is draining) leaves a *moved* record here for [`RELAY_GRACE`]: its rooms
//! stay this node's interest, and every broadcast logged here that concerns it is returned as a
//! [`Relay`] for the runtime to send on to that node. That covers the broadcasts still on their
//! way here when the session left, and those sent by nodes that had not yet learnt the new
//! node's interest. The new node logs a relayed packet as an entry for that socket alone
//! ([`RecoveryState::log_relayed`]), unless it logged the broadcast itself while the socket was
//! there; a replay never holds the same offset twice.
//!
//! **Watermarks.** A session that moves carries, per origin node, the newest offset the node it
//! leaves had logged ([`RecoveryState::watermarks`]; offsets from one origin only grow, and each
//! origin sends a node its broadcasts in order). The receiving node adds what it logged itself,
//! shortly before, that concerns the session and is newer than those marks
//! ([`RecoveryState::recent_missed`]): broadcasts that reached it before the session did and the
//! old node only after the session left. Without that they would come later, by relay, behind
//! newer broadcasts from the same origin.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::{MissedPacket, RecoveredSession as Recovered, Refusal, SessionRecord};
use crate::rooms::{EncodedPacket, Offset, Selector};
use crate::sid::Sid;

/// Bytes counted for each log entry besides its packet and room names (the entry, its index
/// slot, the queue slot).
pub(crate) const ENTRY_OVERHEAD: usize = 160;
/// Bytes counted for each session besides its rooms, data and carried packets.
pub(crate) const SESSION_OVERHEAD: usize = 320;
/// How long a moved session's rooms stay this node's interest and its broadcasts are relayed to
/// the node that has it (as long as room interest takes to reach every node, with margin: the
/// same bound as the gossip's wide rooms).
pub(crate) const RELAY_GRACE: Duration = Duration::from_secs(3);
/// Longest a node waits for the answer to a recovery it asked the cluster for (the cluster
/// timeout is far shorter; this only bounds what a lost answer leaves behind).
const EXPECT_MAX: Duration = Duration::from_secs(60);
/// How far back a node looks in its log for broadcasts a session arriving from another node
/// missed (see [`RecoveryState::recent_missed`]).
const RECENT: Duration = Duration::from_secs(6);
/// Added to the virtual index of carried packets where an exporting node had lost part of a
/// session's history (its log evicted entries): every position before the gap is unusable.
const LOST_GAP: u64 = 1 << 40;

/// The bounds of the store (the `recovery_*` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// How long a disconnected session can be recovered.
    pub(crate) window: Duration,
    /// How long a logged broadcast is kept: the window plus the longest a dead connection can go
    /// unnoticed (ping interval + ping timeout), during which packets were still queued to it.
    pub(crate) retain: Duration,
    /// Most packets one recovery replays.
    pub(crate) max_packets: usize,
    /// Most bytes of packets one recovery replays.
    pub(crate) max_bytes: usize,
    /// Most disconnected sessions kept; the one closest to expiry goes first.
    pub(crate) max_sessions: usize,
    /// Most bytes the log holds (packets, room names and per-entry overhead).
    pub(crate) log_bytes: usize,
}

/// Where a session's replay starts: a virtual index into its carried packets (those logged by
/// the node it came from; past the last one, the local log from `since`) or a local sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    Carried(u64),
    Local(u64),
}

/// What the socket layer knows of a socket whose session is kept (see [`RecoveryState::persist`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Persist {
    /// Socket id.
    pub(crate) sid: Sid,
    /// The secret half of its private id.
    pub(crate) secret: Sid,
    /// Namespace.
    pub(crate) nsp: String,
    /// Rooms, its own id left out.
    pub(crate) rooms: Vec<String>,
    /// `socket.data`.
    pub(crate) data: Map<String, Value>,
    /// Where the socket's deliveries stood: see [`Tracking`].
    pub(crate) tracking: Tracking,
    /// Whether this node must keep receiving broadcasts to the socket's own id room (an id that
    /// names another node: the other nodes route it by room interest, not by the id's tag).
    pub(crate) sid_interest: bool,
}

/// Most offsets a socket remembers as sent apart from the fan-out (see [`Tracking::apart`]).
const APART_KEPT: usize = 1024;

/// Per connected socket: what was queued to it, in terms of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tracking {
    /// The log sequence when the socket (re)connected: later entries may concern it.
    pub(crate) since: u64,
    /// The offset the client had when the socket (re)connected (what it sends back if it got
    /// nothing since).
    pub(crate) start: Option<Offset>,
    /// Whether a client still at `start` missed nothing this node cannot replay. The socket
    /// layer logs what it replays, so it keeps this true; a history that is not whole (packets
    /// sent that no log holds) would set it false.
    pub(crate) start_valid: bool,
    /// The last offset queued to the socket (`start` until one is).
    pub(crate) known: Option<Offset>,
    /// The first log sequence that could not be queued because the connection was closed.
    pub(crate) failed_at: Option<u64>,
    /// Offsets of packets it was sent apart from this node's fan-out (replayed on recovery,
    /// relayed by the node its session came from) in the last [`RELAY_GRACE`], when each was
    /// sent: if the broadcast itself reaches this node meanwhile, the socket already had it.
    pub(crate) apart: VecDeque<(Offset, Instant)>,
}

impl Tracking {
    /// A socket that connected when the log's next sequence was `since`, its client holding
    /// `start`; `start_valid` as in the field.
    pub(crate) fn new(since: u64, start: Option<Offset>, start_valid: bool, known: Option<Offset>) -> Self {
        Self { since, start, start_valid, known, failed_at: None, apart: VecDeque::new() }
    }

    /// A packet was queued to the socket at `now` apart from the fan-out (replayed, relayed).
    pub(crate) fn queued_apart(&mut self, now: Instant, offset: Offset) {
        self.known = Some(offset);
        if self.apart.len() >= APART_KEPT {
            self.apart.pop_front();
        }
        self.apart.push_back((offset, now));
    }

    /// Whether the broadcast `offset`, reaching this node at `now`, was already sent to the
    /// socket apart from the fan-out (then forgotten: a broadcast reaches a node once).
    pub(crate) fn take_apart(&mut self, now: Instant, offset: Offset) -> bool {
        while self.apart.front().is_some_and(|(_, at)| now.saturating_duration_since(*at) >= RELAY_GRACE) {
            self.apart.pop_front();
        }
        match self.apart.iter().position(|(o, _)| *o == offset) {
            Some(i) => {
                self.apart.remove(i);
                true
            }
            None => false,
        }
    }

    /// The broadcast with `offset` was queued to the socket by the fan-out.
    pub(crate) fn queued(&mut self, offset: Offset) {
        self.known = Some(offset);
    }

    /// The broadcast logged at `seq` found the connection closed.
    pub(crate) fn failed(&mut self, seq: u64) {
        self.failed_at.get_or_insert(seq);
    }
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    offset: Offset,
    at: Instant,
    nsp: String,
    rooms: Vec<String>,
    except: Vec<String>,
    packet: EncodedPacket,
    cost: usize,
}

#[derive(Debug)]
struct Session {
    secret: Sid,
    nsp: String,
    rooms: Vec<String>,
    data: Map<String, Value>,
    expires: Instant,
    known: Option<Offset>,
    start: Option<Offset>,
    start_valid: bool,
    since: u64,
    resume: Cursor,
    first_index: u64,
    carried: Vec<MissedPacket>,
    sid_interest: bool,
    cost: usize,
}

/// A session that left for another node, for [`RELAY_GRACE`].
#[derive(Debug)]
struct Moved {
    nsp: String,
    rooms: Vec<String>,
    sid_interest: bool,
    /// The node that has it; `None` while a hand-over is on its way (relays wait in `pending`).
    to: Option<u64>,
    until: Instant,
    pending: Vec<MissedPacket>,
}

/// A broadcast logged here that concerns a session now on node `to`: send it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relay {
    /// The node holding the session.
    pub(crate) to: u64,
    /// Its namespace.
    pub(crate) nsp: String,
    /// Its socket id.
    pub(crate) sid: Sid,
    /// The packet and its offset.
    pub(crate) packet: MissedPacket,
}

/// Rooms whose interest (from the kept sessions) appeared or vanished: `(namespace, room)`.
pub(crate) type Changes = Vec<(String, String)>;

/// The log and the sessions of one node; see the module documentation.
#[derive(Debug)]
pub(crate) struct RecoveryState {
    limits: Limits,
    log: VecDeque<Entry>,
    index: HashMap<Offset, u64>,
    next_seq: u64,
    log_cost: usize,
    sessions: HashMap<Sid, Session>,
    expiry: BTreeSet<(Instant, Sid)>,
    session_cost: usize,
    interest: HashMap<(String, String), u32>,
    moved: HashMap<Sid, Moved>,
    /// Sockets whose recovery this node asked the cluster for, until the answer is handled.
    expecting: HashMap<Sid, Instant>,
    /// Per origin node, the newest offset logged here.
    latest: HashMap<u32, u64>,
    /// Relayed packets for an expected socket not here yet (the relays travel on another stream
    /// than the answer and may overtake it).
    orphans: HashMap<Sid, Vec<MissedPacket>>,
}

impl RecoveryState {
    /// An empty store with `limits`.
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            log: VecDeque::new(),
            index: HashMap::new(),
            next_seq: 1,
            log_cost: 0,
            sessions: HashMap::new(),
            expiry: BTreeSet::new(),
            session_cost: 0,
            interest: HashMap::new(),
            moved: HashMap::new(),
            expecting: HashMap::new(),
            orphans: HashMap::new(),
            latest: HashMap::new(),
        }
    }

    /// The sequence the next logged broadcast gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Sessions kept.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Bytes counted for the kept sessions.
    pub(crate) fn session_bytes(&self) -> usize {
        self.session_cost
    }

    /// Bytes counted for the log.
    pub(crate) fn log_bytes(&self) -> usize {
        self.log_cost
    }

    /// The sequence of the oldest entry still logged (the next one when the log is empty).
    fn front_seq(&self) -> u64 {
        self.log.front().map_or(self.next_seq, |e| e.seq)
    }

    /// Logs a broadcast executed at `now`; returns its sequence and the relays it calls for
    /// (moved sessions it concerns), or `None` when this offset was already logged (the same
    /// broadcast must not be executed twice).
    pub(crate) fn log(
        &mut self,
        now: Instant,
        offset: Offset,
        selector: &Selector,
        packet: &EncodedPacket,
    ) -> Option<(u64, Vec<Relay>)> {
        if self.index.contains_key(&offset) {
            return None;
        }
        let seq =
            self.append(now, offset, selector.nsp.clone(), selector.rooms.clone(), selector.except.clone(), packet);
        self.index.insert(offset, seq);
        let latest = self.latest.entry(offset.origin).or_insert(0);
        *latest = (*latest).max(offset.counter);
        let mut relays = Vec::new();
        if !self.moved.is_empty() {
            let entry = self.log.back();
            for (sid, moved) in &mut self.moved {
                let rooms: HashSet<&str> = moved.rooms.iter().map(String::as_str).collect();
                if !entry.is_some_and(|e| concerns(e, &moved.nsp, &rooms, sid.as_str())) || moved.until <= now {
                    continue;
                }
                let packet = MissedPacket { offset, packet: packet.clone() };
                match moved.to {
                    Some(to) => relays.push(Relay { to, nsp: moved.nsp.clone(), sid: *sid, packet }),
                    None if moved.pending.len() < self.limits.max_packets => moved.pending.push(packet),
                    None => {}
                }
            }
        }
        self.prune_log(now);
        Some((seq, relays))
    }

    /// Appends an entry (the caller indexes it or not).
    fn append(
        &mut self,
        now: Instant,
        offset: Offset,
        nsp: String,
        rooms: Vec<String>,
        except: Vec<String>,
        packet: &EncodedPacket,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let names =
            nsp.len() + rooms.iter().map(String::len).sum::<usize>() + except.iter().map(String::len).sum::<usize>();
        let cost = ENTRY_OVERHEAD + packet.len() + names;
        self.log.push_back(Entry { seq, offset, at: now, nsp, rooms, except, packet: packet.clone(), cost });
        self.log_cost += cost;
        seq
    }

    /// Another node relayed `packet` for socket `sid` of `nsp`, which is here: connected since
    /// the log sequence `since` (`None`: not connected; its kept session's is used). Returns
    /// whether the connected socket should be sent it: false when this node logged that
    /// broadcast itself since then (the socket got it, or it was not meant for it here), or
    /// when nothing here holds that socket yet (the packet waits for it: see
    /// [`RecoveryState::arrived`]).
    pub(crate) fn log_relayed(
        &mut self,
        now: Instant,
        nsp: &str,
        sid: Sid,
        packet: &MissedPacket,
        since: Option<u64>,
    ) -> bool {
        let Some(since) = since.or_else(|| self.sessions.get(&sid).filter(|s| s.nsp == nsp).map(|s| s.since)) else {
            // Kept only for a socket whose recovery this node is waiting for; anything else is
            // a relay that outlived a session that moved on.
            if self.expecting.contains_key(&sid) {
                let waiting = self.orphans.entry(sid).or_default();
                if waiting.len() < self.limits.max_packets {
                    waiting.push(packet.clone());
                }
            }
            return false;
        };
        if self.index.get(&packet.offset).is_some_and(|seq| *seq >= since) {
            return false;
        }
        self.log_for(now, nsp, sid, packet);
        true
    }

    /// Logs `packet` as sent to socket `sid` of `nsp` alone (a replayed or relayed packet), so
    /// that a later recovery finds the client's offset and what followed. Not indexed: the
    /// broadcast itself, should it run here later, still runs for everyone else.
    pub(crate) fn log_for(&mut self, now: Instant, nsp: &str, sid: Sid, packet: &MissedPacket) {
        self.append(now, packet.offset, nsp.to_owned(), vec![sid.as_str().to_owned()], Vec::new(), &packet.packet);
        self.prune_log(now);
    }

    /// Per origin node, the newest offset logged here (see the module documentation).
    pub(crate) fn watermarks(&self) -> Vec<Offset> {
        let mut marks: Vec<Offset> = self.latest.iter().map(|(&origin, &counter)| Offset { origin, counter }).collect();
        marks.sort_unstable();
        marks
    }

    /// What this node logged in the last [`RECENT`] that concerns socket `sid` of `nsp` in
    /// `rooms`, from an origin in `marks` and newer than its mark, `seen` left out; in log order.
    /// For a session arriving from the node whose `marks` they are.
    pub(crate) fn recent_missed(
        &self,
        now: Instant,
        nsp: &str,
        sid: Sid,
        rooms: &[String],
        marks: &[Offset],
        seen: &HashSet<Offset>,
    ) -> Vec<MissedPacket> {
        if marks.is_empty() {
            return Vec::new();
        }
        let rooms: HashSet<&str> = rooms.iter().map(String::as_str).collect();
        let newer = |o: &Offset| marks.iter().any(|m| m.origin == o.origin && o.counter > m.counter);
        let mut out: Vec<MissedPacket> = self
            .log
            .iter()
            .rev()
            .take_while(|e| now.saturating_duration_since(e.at) <= RECENT)
            .filter(|e| newer(&e.offset) && !seen.contains(&e.offset) && concerns(e, nsp, &rooms, sid.as_str()))
            .map(|e| MissedPacket { offset: e.offset, packet: e.packet.clone() })
            .collect();
        out.reverse();
        let mut once = HashSet::new();
        out.retain(|p| once.insert(p.offset));
        out
    }

    /// This node asks the cluster for the session of `sid` (a client reconnected here): relays
    /// for it that arrive first are kept for it (see [`RecoveryState::arrived`]).
    pub(crate) fn expect(&mut self, now: Instant, sid: Sid) -> bool {
        if self.expecting.len() >= self.limits.max_sessions {
            return false;
        }
        self.expecting.insert(sid, now + EXPECT_MAX);
        true
    }

    /// The recovery of `sid` asked of the cluster came to nothing: drop what waited for it.
    pub(crate) fn unexpect(&mut self, sid: &Sid) {
        self.expecting.remove(sid);
        self.orphans.remove(sid);
    }

    /// Socket `sid` is here now (connected or recovered): it is no longer waited for nor a
    /// session this node handed on. Returns the relayed packets that arrived for it first, in
    /// order. Returns the interest changes too.
    pub(crate) fn arrived(&mut self, sid: &Sid) -> (Vec<MissedPacket>, Changes) {
        self.expecting.remove(sid);
        let changes = self.forget_moved(sid);
        (self.orphans.remove(sid).unwrap_or_default(), changes)
    }

    /// A hand-over of `sid` reached node `to`: the broadcasts kept for it meanwhile, to relay.
    pub(crate) fn moved_to(&mut self, sid: Sid, to: u64) -> Vec<Relay> {
        let Some(moved) = self.moved.get_mut(&sid) else { return Vec::new() };
        moved.to = Some(to);
        let nsp = moved.nsp.clone();
        std::mem::take(&mut moved.pending)
            .into_iter()
            .map(|packet| Relay { to, nsp: nsp.clone(), sid, packet })
            .collect()
    }

    /// Records that `session` left for another node (`to`, or not known yet).
    fn mark_moved(&mut self, now: Instant, sid: Sid, session: &Session, to: Option<u64>) -> Changes {
        let mut changes = self.forget_moved(&sid);
        let moved = Moved {
            nsp: session.nsp.clone(),
            rooms: session.rooms.clone(),
            sid_interest: session.sid_interest,
            to,
            until: now + RELAY_GRACE,
            pending: Vec::new(),
        };
        for key in keys(&sid, &moved.nsp, &moved.rooms, moved.sid_interest) {
            if self.add_interest(key.clone()) {
                changes.push(key);
            }
        }
        self.moved.insert(sid, moved);
        changes
    }

    fn forget_moved(&mut self, sid: &Sid) -> Changes {
        let Some(moved) = self.moved.remove(sid) else { return Vec::new() };
        keys(sid, &moved.nsp, &moved.rooms, moved.sid_interest).into_iter().filter(|k| self.drop_interest(k)).collect()
    }

    /// Counts one more holder of `key`; true when it is the first.
    fn add_interest(&mut self, key: (String, String)) -> bool {
        let count = self.interest.entry(key).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Counts one holder of `key` less; true when it was the last.
    fn drop_interest(&mut self, key: &(String, String)) -> bool {
        let Some(count) = self.interest.get_mut(key) else { return false };
        *count -= 1;
        if *count == 0 {
            self.interest.remove(key);
            return true;
        }
        false
    }

    fn prune_log(&mut self, now: Instant) {
        while let Some(front) = self.log.front() {
            let old = now.saturating_duration_since(front.at) >= self.limits.retain;
            if !old && self.log_cost <= self.limits.log_bytes {
                break;
            }
            if let Some(entry) = self.log.pop_front() {
                self.log_cost -= entry.cost;
                if self.index.get(&entry.offset) == Some(&entry.seq) {
                    self.index.remove(&entry.offset);
                }
            }
        }
    }

    /// Keeps the session of a socket that left at `now`. Returns the rooms whose interest
    /// changed (this session's rooms, and those of a session evicted to make room).
    pub(crate) fn persist(&mut self, now: Instant, p: Persist) -> Changes {
        let mut changes = self.expire(now);
        let Tracking { since, start, start_valid, known, failed_at, .. } = p.tracking;
        let resume = Cursor::Local(failed_at.unwrap_or(self.next_seq).min(self.next_seq));
        let session = Session {
            secret: p.secret,
            nsp: p.nsp,
            rooms: p.rooms,
            data: p.data,
            expires: now + self.limits.window,
            known,
            start,
            start_valid,
            since,
            resume,
            first_index: 0,
            carried: Vec::new(),
            sid_interest: p.sid_interest,
            cost: 0,
        };
        changes.extend(self.insert(p.sid, session));
        changes
    }

    fn insert(&mut self, sid: Sid, mut session: Session) -> Changes {
        let mut changes = self.remove(&sid).map(|(_, c)| c).unwrap_or_default();
        while self.sessions.len() >= self.limits.max_sessions.max(1) {
            let Some(&(_, oldest)) = self.expiry.first() else { break };
            metrics::counter!(crate::metrics::RECOVERY_SESSIONS_DROPPED, crate::metrics::label::REASON => "evicted")
                .increment(1);
            changes.extend(self.remove(&oldest).map(|(_, c)| c).unwrap_or_default());
        }
        session.cost = session_cost(&session);
        self.session_cost += session.cost;
        for key in keys(&sid, &session.nsp, &session.rooms, session.sid_interest) {
            if self.add_interest(key.clone()) {
                changes.push(key);
            }
        }
        self.expiry.insert((session.expires, sid));
        self.sessions.insert(sid, session);
        changes
    }

    fn remove(&mut self, sid: &Sid) -> Option<(Session, Changes)> {
        let session = self.sessions.remove(sid)?;
        self.expiry.remove(&(session.expires, *sid));
        self.session_cost -= session.cost;
        let changes = keys(sid, &session.nsp, &session.rooms, session.sid_interest)
            .into_iter()
            .filter(|k| self.drop_interest(k))
            .collect();
        Some((session, changes))
    }

    /// Drops the sessions whose window has passed at `now` and the log entries too old to be
    /// needed; returns the rooms whose interest changed.
    pub(crate) fn expire(&mut self, now: Instant) -> Changes {
        let mut changes = Vec::new();
        while let Some(&(expires, sid)) = self.expiry.first() {
            if expires > now {
                break;
            }
            metrics::counter!(crate::metrics::RECOVERY_SESSIONS_DROPPED, crate::metrics::label::REASON => "expired")
                .increment(1);
            changes.extend(self.remove(&sid).map(|(_, c)| c).unwrap_or_default());
        }
        let over: Vec<Sid> = self.moved.iter().filter(|(_, m)| m.until <= now).map(|(sid, _)| *sid).collect();
        for sid in over {
            changes.extend(self.forget_moved(&sid));
        }
        self.expecting.retain(|_, until| *until > now);
        let expecting = &self.expecting;
        self.orphans.retain(|sid, _| expecting.contains_key(sid));
        self.prune_log(now);
        changes
    }

    /// Whether a kept session holds `room` of `nsp` (its own id included when it names another
    /// node), so that this node must keep receiving the broadcasts to it.
    pub(crate) fn has_interest(&self, nsp: &str, room: &str) -> bool {
        // Keys are owned pairs; the sessions' rooms are few, a lookup allocates two short strings.
        self.interest.contains_key(&(nsp.to_owned(), room.to_owned()))
    }

    /// Whether a session for `sid` is kept.
    #[cfg(test)]
    pub(crate) fn holds(&self, sid: &Sid) -> bool {
        self.sessions.contains_key(sid)
    }

    /// Takes the session `sid` of `nsp` for a client proving `secret` and holding `client`
    /// (the offset it sent, as text; `None` when it sent none), connected here or to node `to`
    /// (which then gets what this node logs for it for a while: see [`Relay`]). The session is
    /// gone afterwards, recovered or not; a wrong secret or namespace leaves it in place and
    /// reads as unknown.
    pub(crate) fn take(
        &mut self,
        now: Instant,
        nsp: &str,
        sid: Sid,
        secret: Sid,
        client: Option<&str>,
        to: Option<u64>,
    ) -> (Result<Recovered, Refusal>, Changes) {
        let found = self.sessions.get(&sid).is_some_and(|s| s.secret == secret && s.nsp == nsp);
        if !found {
            return (Err(Refusal::NotFound), Vec::new());
        }
        let before = self.presence_of(&sid);
        let Some((session, _)) = self.remove(&sid) else {
            return (Err(Refusal::NotFound), Vec::new());
        };
        if session.expires <= now {
            metrics::counter!(crate::metrics::RECOVERY_SESSIONS_DROPPED, crate::metrics::label::REASON => "expired")
                .increment(1);
            return (Err(Refusal::Expired), self.net(before));
        }
        let client_offset = client.map(Offset::parse);
        let replay = self.replay_of(&session, &sid, client_offset);
        if replay.is_ok() && to.is_some() {
            self.mark_moved(now, sid, &session, to);
        }
        let changes = self.net(before);
        let result = replay.map(|missed| Recovered {
            sid,
            secret: session.secret,
            nsp: session.nsp,
            rooms: session.rooms,
            data: session.data,
            missed,
            client_offset: client_offset.flatten(),
            watermarks: if to.is_some() { self.watermarks() } else { Vec::new() },
        });
        (result, changes)
    }

    /// Where the replay of `session` starts for a client holding `client` (`Some(None)`: a
    /// string that is no offset), and what it holds.
    fn replay_of(
        &self,
        session: &Session,
        sid: &Sid,
        client: Option<Option<Offset>>,
    ) -> Result<Vec<MissedPacket>, Refusal> {
        let client = match client {
            None => None,
            Some(Some(offset)) => Some(offset),
            Some(None) => return Err(Refusal::StaleOffset),
        };
        let cursor = if client == session.known {
            session.resume
        } else if client == session.start && session.start_valid {
            Cursor::Carried(0)
        } else if let Some(i) =
            client.and_then(|o| session.carried.iter().position(|p| p.offset == o)).map(|i| i as u64)
        {
            Cursor::Carried(session.first_index + i + 1)
        } else if let Some(seq) = client.and_then(|o| self.position_since(o, session.since)) {
            Cursor::Local(seq + 1)
        } else {
            return Err(Refusal::StaleOffset);
        };
        let (carried, local_from) = match cursor {
            Cursor::Carried(i) if i < session.first_index => return Err(Refusal::StaleOffset),
            Cursor::Carried(i) => {
                let skip = usize::try_from(i - session.first_index).unwrap_or(usize::MAX);
                (session.carried.get(skip..).unwrap_or_default(), session.since)
            }
            Cursor::Local(seq) => (&[][..], seq.max(session.since)),
        };
        if self.front_seq() > local_from {
            // Entries the replay needs were evicted: a hole, never a recovery.
            return Err(Refusal::StaleOffset);
        }
        let mut missed = Vec::new();
        let mut bytes = 0usize;
        let mut seen: HashSet<Offset> = client.into_iter().collect();
        let mut push = |p: MissedPacket| {
            if !seen.insert(p.offset) {
                return Ok(());
            }
            bytes += p.packet.len();
            missed.push(p);
            if missed.len() > self.limits.max_packets || bytes > self.limits.max_bytes {
                return Err(Refusal::TooMany);
            }
            Ok(())
        };
        for p in carried {
            push(p.clone())?;
        }
        let rooms: HashSet<&str> = session.rooms.iter().map(String::as_str).collect();
        for entry in self.entries_from(local_from) {
            if concerns(entry, &session.nsp, &rooms, sid.as_str()) {
                push(MissedPacket { offset: entry.offset, packet: entry.packet.clone() })?;
            }
        }
        Ok(missed)
    }

    /// Where the socket connected at `since` was sent `offset`: the broadcast logged here since
    /// then, or a packet logged for it alone (replayed, relayed).
    fn position_since(&self, offset: Offset, since: u64) -> Option<u64> {
        match self.index.get(&offset) {
            Some(seq) if *seq >= since => Some(*seq),
            _ => self.entries_from(since).find(|e| e.offset == offset).map(|e| e.seq),
        }
    }

    /// The logged entries with a sequence of at least `seq`, in order.
    fn entries_from(&self, seq: u64) -> impl Iterator<Item = &Entry> {
        let skip = usize::try_from(seq.saturating_sub(self.front_seq())).unwrap_or(usize::MAX);
        self.log.iter().skip(skip)
    }

    /// Takes every kept session out as records another node can import (a node draining on
    /// SIGTERM hands them to a peer). Each carries the packets logged here that concern it, the
    /// newest ones within the replay bounds.
    pub(crate) fn export_all(&mut self, now: Instant) -> (Vec<SessionRecord>, Changes) {
        let mut changes = self.expire(now);
        let sids: Vec<Sid> = self.sessions.keys().copied().collect();
        let mut records = Vec::with_capacity(sids.len());
        for sid in sids {
            let before = self.presence_of(&sid);
            let Some((session, _)) = self.remove(&sid) else { continue };
            self.mark_moved(now, sid, &session, None);
            changes.extend(self.net(before));
            records.push(self.export(now, sid, session));
        }
        (records, changes)
    }

    /// The interest keys of kept session `sid`, each with whether it is interest now.
    fn presence_of(&self, sid: &Sid) -> Vec<((String, String), bool)> {
        let Some(s) = self.sessions.get(sid) else { return Vec::new() };
        keys(sid, &s.nsp, &s.rooms, s.sid_interest)
            .into_iter()
            .map(|k| {
                let had = self.interest.contains_key(&k);
                (k, had)
            })
            .collect()
    }

    /// Of `before`, the keys whose interest changed since.
    fn net(&self, before: Vec<((String, String), bool)>) -> Changes {
        before.into_iter().filter(|(k, had)| self.interest.contains_key(k) != *had).map(|(k, _)| k).collect()
    }

    fn export(&self, now: Instant, sid: Sid, session: Session) -> SessionRecord {
        let rooms: HashSet<&str> = session.rooms.iter().map(String::as_str).collect();
        let mut first_index = session.first_index;
        let mut packets = session.carried;
        // Virtual index of the first local entry from `since`, after a gap when some were evicted.
        let mut local_index = first_index + packets.len() as u64;
        let local_from = if self.front_seq() > session.since {
            local_index += LOST_GAP;
            first_index = local_index;
            packets.clear();
            self.front_seq()
        } else {
            session.since
        };
        let mut resume_index = match session.resume {
            Cursor::Carried(i) => i,
            Cursor::Local(_) => local_index,
        };
        let mut seen: HashSet<Offset> = packets.iter().map(|p| p.offset).collect();
        for entry in self.entries_from(local_from) {
            if !concerns(entry, &session.nsp, &rooms, sid.as_str()) || !seen.insert(entry.offset) {
                continue;
            }
            if matches!(session.resume, Cursor::Local(seq) if entry.seq < seq) {
                resume_index += 1;
            }
            packets.push(MissedPacket { offset: entry.offset, packet: entry.packet.clone() });
        }
        if matches!(session.resume, Cursor::Local(seq) if seq < local_from) {
            resume_index = 0;
        }
        // The newest packets within the replay bounds.
        let mut bytes = 0usize;
        let keep = packets
            .iter()
            .rev()
            .take_while(|p| {
                bytes += p.packet.len();
                bytes <= self.limits.max_bytes
            })
            .count()
            .min(self.limits.max_packets);
        let dropped = packets.len() - keep;
        packets.drain(..dropped);
        first_index += dropped as u64;
        SessionRecord {
            sid,
            secret: session.secret,
            nsp: session.nsp,
            rooms: session.rooms,
            data: session.data,
            expires_in: session.expires.saturating_duration_since(now),
            known: session.known,
            start: session.start,
            start_valid: session.start_valid,
            first_index,
            packets,
            resume_index,
            watermarks: self.watermarks(),
        }
    }

    /// Keeps sessions another node handed over at `now`; `sid_interest` says which socket ids
    /// name another node. Returns the rooms whose interest changed.
    pub(crate) fn import(
        &mut self,
        now: Instant,
        records: Vec<SessionRecord>,
        sid_interest: impl Fn(&Sid) -> bool,
    ) -> Changes {
        let mut changes = self.expire(now);
        for r in records {
            if r.expires_in.is_zero() {
                continue;
            }
            // Back here: this node no longer relays what concerns it elsewhere.
            changes.extend(self.forget_moved(&r.sid));
            // What reached this node first and the old one only after the hand-over: after the
            // old node's packets, as the last ones before this node's own from now on.
            let seen: HashSet<Offset> = r.packets.iter().map(|p| p.offset).collect();
            let mut packets = r.packets;
            packets.extend(self.recent_missed(now, &r.nsp, r.sid, &r.rooms, &r.watermarks, &seen));
            let session = Session {
                secret: r.secret,
                nsp: r.nsp,
                rooms: r.rooms,
                data: r.data,
                expires: now + r.expires_in.min(self.limits.window),
                known: r.known,
                start: r.start,
                start_valid: r.start_valid,
                since: self.next_seq,
                resume: Cursor::Carried(r.resume_index),
                first_index: r.first_index,
                carried: packets,
                sid_interest: sid_interest(&r.sid),
                cost: 0,
            };
            changes.extend(self.insert(r.sid, session));
        }
        changes
    }
}

/// Whether the logged broadcast `entry` reached a socket `sid` of `nsp` in `rooms`.
fn concerns(entry: &Entry, nsp: &str, rooms: &HashSet<&str>, sid: &str) -> bool {
    let member = |r: &String| r == sid || rooms.contains(r.as_str());
    entry.nsp == nsp && (entry.rooms.is_empty() || entry.rooms.iter().any(member)) && !entry.except.iter().any(member)
}

/// The `(namespace, room)` interest a session (or a moved one) holds: its rooms, and its own id
/// when that names another node.
fn keys(sid: &Sid, nsp: &str, rooms: &[String], sid_interest: bool) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = rooms.iter().map(|r| (nsp.to_owned(), r.clone())).collect();
    if sid_interest {
        keys.push((nsp.to_owned(), sid.as_str().to_owned()));
    }
    keys
}

fn session_cost(session: &Session) -> usize {
    let data = serde_json::to_vec(&session.data).map_or(0, |v| v.len());
    SESSION_OVERHEAD
        + session.nsp.len()
        + session.rooms.iter().map(|r| r.len() + 24).sum::<usize>()
        + data
        + session.carried.iter().map(|p| p.packet.len() + 64).sum::<usize>()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
