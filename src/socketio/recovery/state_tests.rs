//! Simulated-time tests of the recovery store: a test plays the socket layer (what was queued to
//! which socket) and the clock.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

fn limits() -> Limits {
    Limits {
        window: Duration::from_secs(120),
        retain: Duration::from_secs(200),
        max_packets: 100,
        max_bytes: 100_000,
        max_sessions: 100,
        log_bytes: 1_000_000,
    }
}

fn off(n: u64) -> Offset {
    Offset { origin: 1, counter: n }
}

fn packet(n: u64) -> EncodedPacket {
    EncodedPacket { text: Bytes::from(format!("42[\"e\",{n},\"{}\"]", off(n))), attachments: Vec::new() }
}

fn to(rooms: &[&str]) -> Selector {
    Selector::new("/", &rooms.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>(), &[])
}

/// One socket as the socket layer sees it: its id, secret, rooms and tracking.
#[derive(Clone)]
struct Sock {
    sid: Sid,
    secret: Sid,
    rooms: Vec<String>,
    tracking: Tracking,
}

impl Sock {
    fn connect(state: &RecoveryState, rooms: &[&str]) -> Self {
        Self {
            sid: Sid::with_tag(1),
            secret: Sid::random(),
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            tracking: Tracking::new(state.next_seq(), None, true, None),
        }
    }

    fn in_selector(&self, selector: &Selector) -> bool {
        let member = |r: &String| *r == self.sid.as_str() || self.rooms.contains(r);
        (selector.rooms.is_empty() || selector.rooms.iter().any(member)) && !selector.except.iter().any(member)
    }

    fn persist(&self, state: &mut RecoveryState, now: Instant) -> Changes {
        state.persist(
            now,
            Persist {
                sid: self.sid,
                secret: self.secret,
                nsp: "/".to_owned(),
                rooms: self.rooms.clone(),
                data: Map::new(),
                tracking: self.tracking.clone(),
                sid_interest: false,
            },
        )
    }
}

/// Logs broadcast `n` to `selector` and "delivers" it to the connected sockets it selects.
fn broadcast(state: &mut RecoveryState, now: Instant, n: u64, selector: &Selector, connected: &mut [&mut Sock]) {
    let (seq, _) = state.log(now, off(n), selector, &packet(n)).unwrap();
    for sock in connected.iter_mut() {
        if sock.in_selector(selector) {
            sock.tracking.queued(off(n));
        }
    }
    let _ = seq;
}

/// A store with `limits` and one socket in `rooms` that was queued broadcast 1 (to room `r`).
fn one_socket(limits: Limits, rooms: &[&str]) -> (Instant, RecoveryState, Sock) {
    let t0 = Instant::now();
    let mut st = RecoveryState::new(limits);
    let mut s = Sock::connect(&st, rooms);
    broadcast(&mut st, t0, 1, &to(&["r"]), &mut [&mut s]);
    (t0, st, s)
}

fn offsets(missed: &[MissedPacket]) -> Vec<u64> {
    missed.iter().map(|p| p.offset.counter).collect()
}

fn take(state: &mut RecoveryState, now: Instant, sock: &Sock, client: Option<u64>) -> Result<Vec<u64>, Refusal> {
    let text = client.map(|n| off(n).to_string());
    state.take(now, "/", sock.sid, sock.secret, text.as_deref(), None).0.map(|r| offsets(&r.missed))
}

#[test]
fn a_blip_replays_what_the_rooms_got_while_away_in_order() {
    let (t0, mut st, s) = one_socket(limits(), &["r"]);
    s.persist(&mut st, t0);
    broadcast(&mut st, t0, 2, &to(&["r"]), &mut []);
    broadcast(&mut st, t0, 3, &to(&["other"]), &mut []);
    broadcast(&mut st, t0, 4, &to(&[]), &mut []);
    broadcast(&mut st, t0, 5, &Selector::namespace("/chat"), &mut []);
    broadcast(&mut st, t0, 6, &to(&[s.sid.as_str()]), &mut []);
    let (recovered, _) = st.take(t0 + Duration::from_secs(1), "/", s.sid, s.secret, Some(&off(1).to_string()), None);
    let recovered = recovered.unwrap();
    assert_eq!(offsets(&recovered.missed), vec![2, 4, 6]);
    assert_eq!(
        (recovered.sid, recovered.rooms.clone(), recovered.client_offset),
        (s.sid, s.rooms.clone(), Some(off(1)))
    );
    // Taken once: a second attempt finds nothing.
    assert_eq!(take(&mut st, t0, &s, Some(1)), Err(Refusal::NotFound));
}

#[test]
fn packets_queued_but_lost_with_the_connection_are_replayed_from_the_clients_offset() {
    let t0 = Instant::now();
    let mut st = RecoveryState::new(limits());
    let mut s = Sock::connect(&st, &["r"]);
    for n in 1..=3 {
        broadcast(&mut st, t0, n, &to(&["r"]), &mut [&mut s]);
    }
    s.persist(&mut st, t0);
    broadcast(&mut st, t0, 4, &to(&["r"]), &mut []);
    // The client got only 1: 2 and 3 died in the connection.
    assert_eq!(take(&mut st, t0, &s, Some(1)), Ok(vec![2, 3, 4]));
}

#[test]
fn a_client_that_never_got_a_broadcast_sends_no_offset() {
    let t0 = Instant::now();
    let mut st = RecoveryState::new(limits());
    broadcast(&mut st, t0, 1, &to(&["r"]), &mut []);
    let mut s = Sock::connect(&st, &["r"]);
    broadcast(&mut st, t0, 2, &to(&["x"]), &mut [&mut s]);
    s.persist(&mut st, t0);
    broadcast(&mut st, t0, 3, &to(&["r"]), &mut []);
    assert_eq!(take(&mut st, t0, &s, None), Ok(vec![3]));

    // Queued 4 and 5 but the client got neither: everything since it connected.
    let mut s = Sock::connect(&st, &["r"]);
    broadcast(&mut st, t0, 4, &to(&["r"]), &mut [&mut s]);
    broadcast(&mut st, t0, 5, &to(&["r"]), &mut [&mut s]);
    s.persist(&mut st, t0);
    broadcast(&mut st, t0, 6, &to(&["r"]), &mut []);
    assert_eq!(take(&mut st, t0, &s, None), Ok(vec![4, 5, 6]));
}

#[test]
fn a_packet_that_found_the_connection_closed_is_missed_even_by_a_client_with_the_last_queued_offset() {
    let (t0, mut st, mut s) = one_socket(limits(), &["r"]);
    // The connection is closed; the socket layer has not noticed yet.
    let (seq, _) = st.log(t0, off(2), &to(&["r"]), &packet(2)).unwrap();
    s.tracking.failed(seq);
    s.persist(&mut st, t0);
    assert_eq!(take(&mut st, t0, &s, Some(1)), Ok(vec![2]));
}

#[test]
fn except_skips_the_session_and_its_own_id_is_a_room() {
    let (t0, mut st, s) = one_socket(limits(), &["r", "vip"]);
    s.persist(&mut st, t0);
    broadcast(&mut st, t0, 2, &to(&["r"]).except("vip"), &mut []);
    broadcast(&mut st, t0, 3, &to(&[]).except(s.sid.as_str()), &mut []);
    broadcast(&mut st, t0, 4, &to(&["a", s.sid.as_str()]), &mut []);
    broadcast(&mut st, t0, 5, &to(&["a"]), &mut []);
    assert_eq!(take(&mut st, t0, &s, Some(1)), Ok(vec![4]));
}

#[test]
fn the_window_the_bounds_and_unknown_offsets_give_a_fresh_session() {
    let (t0, mut st, mut s) = one_socket(Limits { max_packets: 3, max_bytes: 10_000, ..limits() }, &["r"]);

    // Expired: found, dropped, refused.
    s.persist(&mut st, t0);
    assert_eq!(take(&mut st, t0 + Duration::from_secs(120), &s, Some(1)), Err(Refusal::Expired));
    assert_eq!(st.session_count(), 0);

    // Three missed: recovered; four: too many.
    s.persist(&mut st, t0);
    for n in 2..=4 {
        broadcast(&mut st, t0, n, &to(&["r"]), &mut []);
    }
    assert_eq!(take(&mut st, t0, &s, Some(1)), Ok(vec![2, 3, 4]));
    s.tracking.queued(off(4));
    s.persist(&mut st, t0);
    for n in 5..=8 {
        broadcast(&mut st, t0, n, &to(&["r"]), &mut []);
    }
    assert_eq!(take(&mut st, t0, &s, Some(4)), Err(Refusal::TooMany));

    // Bytes count too.
    let mut st2 = RecoveryState::new(Limits { max_bytes: 20, ..limits() });
    let mut s2 = Sock::connect(&st2, &["r"]);
    broadcast(&mut st2, t0, 1, &to(&["r"]), &mut [&mut s2]);
    s2.persist(&mut st2, t0);
    broadcast(&mut st2, t0, 2, &to(&["r"]), &mut []);
    broadcast(&mut st2, t0, 3, &to(&["r"]), &mut []);
    assert_eq!(take(&mut st2, t0, &s2, Some(1)), Err(Refusal::TooMany));

    // An offset nobody logged, a string that is no offset, an offset logged before the socket
    // connected: stale.
    for client in [Some(off(999).to_string()), Some("hello".to_owned()), Some(off(1).to_string())] {
        let mut s = Sock::connect(&st, &["r"]);
        let n = 100 + st.next_seq();
        broadcast(&mut st, t0, n, &to(&["r"]), &mut [&mut s]);
        s.persist(&mut st, t0);
        let result = st.take(t0, "/", s.sid, s.secret, client.as_deref(), None).0;
        assert_eq!(result.map(|r| r.missed.len()), Err(Refusal::StaleOffset), "{client:?}");
    }
}

#[test]
fn an_evicted_log_refuses_rather_than_recovering_with_a_hole() {
    let t0 = Instant::now();
    let cost = ENTRY_OVERHEAD + packet(10).len() + 2;
    let mut st = RecoveryState::new(Limits { log_bytes: 3 * cost, ..limits() });
    let mut s = Sock::connect(&st, &["r"]);
    broadcast(&mut st, t0, 10, &to(&["r"]), &mut [&mut s]);
    broadcast(&mut st, t0, 11, &to(&["r"]), &mut [&mut s]);
    s.persist(&mut st, t0);
    broadcast(&mut st, t0, 12, &to(&["r"]), &mut []);
    // 10 is still logged: the client that got only 10 is recovered.
    let mut copy = s.clone();
    assert_eq!(take(&mut st, t0, &copy, Some(10)), Ok(vec![11, 12]));
    copy.tracking.queued(off(12));
    copy.persist(&mut st, t0);
    broadcast(&mut st, t0, 13, &to(&["r"]), &mut []);
    // 10 and 11 are evicted now: a client at 10 would need 11.
    assert_eq!(take(&mut st, t0, &copy, Some(10)), Err(Refusal::StaleOffset));

    // Age evicts too: after `retain`, nothing older is left, and a client that needs it is refused.
    let mut st = RecoveryState::new(limits());
    let mut s = Sock::connect(&st, &["r"]);
    broadcast(&mut st, t0, 1, &to(&["r"]), &mut [&mut s]);
    broadcast(&mut st, t0 + Duration::from_secs(150), 2, &to(&["r"]), &mut [&mut s]);
    let later = t0 + Duration::from_secs(201);
    s.persist(&mut st, later);
    assert_eq!(take(&mut st, later, &s, Some(2)), Ok(vec![]));
    s.persist(&mut st, later);
    assert_eq!(take(&mut st, later, &s, Some(1)), Err(Refusal::StaleOffset));
    assert_eq!(st.log_bytes(), ENTRY_OVERHEAD + packet(2).len() + 2);
}

#[test]
fn a_wrong_secret_or_namespace_leaves_the_session_alone() {
    let t0 = Instant::now();
    let mut st = RecoveryState::new(limits());
    let s = Sock::connect(&st, &["r"]);
    s.persist(&mut st, t0);
    assert_eq!(st.take(t0, "/", s.sid, Sid::random(), None, None).0.map(|_| ()), Err(Refusal::NotFound));
    assert_eq!(st.take(t0, "/chat", s.sid, s.secret, None, None).0.map(|_| ()), Err(Refusal::NotFound));
    assert_eq!(take(&mut st, t0, &s, None), Ok(vec![]));
}

#[test]
fn sessions_are_bounded_and_expire_and_their_rooms_are_interest_while_kept() {
    let t0 = Instant::now();
    let mut st = RecoveryState::new(Limits { max_sessions: 2, ..limits() });
    let a = Sock::connect(&st, &["r", "a"]);
    let b = Sock::connect(&st, &["r"]);
    let c = Sock::connect(&st, &["c"]);
    let mut changes = a.persist(&mut st, t0);
    changes.sort();
    assert_eq!(changes, vec![("/".to_owned(), "a".to_owned()), ("/".to_owned(), "r".to_owned())]);
    assert!(b.persist(&mut st, t0 + Duration::from_secs(1)).is_empty(), "r is already held");
    assert!(st.has_interest("/", "r") && st.has_interest("/", "a") && !st.has_interest("/chat", "r"));
    // A third session evicts the one closest to expiry (a): "a" is no longer held.
    let mut changes = c.persist(&mut st, t0 + Duration::from_secs(2));
    changes.sort();
    assert_eq!(changes, vec![("/".to_owned(), "a".to_owned()), ("/".to_owned(), "c".to_owned())]);
    assert_eq!(take(&mut st, t0, &a, None), Err(Refusal::NotFound));
    assert!(st.holds(&b.sid) && st.holds(&c.sid));
    assert!(st.session_bytes() >= 2 * SESSION_OVERHEAD);
    // b's window ends first.
    assert!(st.expire(t0 + Duration::from_secs(120)).is_empty());
    let changes = st.expire(t0 + Duration::from_secs(121));
    assert_eq!(changes, vec![("/".to_owned(), "r".to_owned())]);
    assert_eq!(st.session_count(), 1);
    st.expire(t0 + Duration::from_secs(122));
    assert_eq!((st.session_count(), st.session_bytes()), (0, 0));
    assert!(!st.has_interest("/", "c"));

    // A socket id naming another node is interest too.
    let d = Sock::connect(&st, &[]);
    let persist = Persist {
        sid: d.sid,
        secret: d.secret,
        nsp: "/".into(),
        rooms: Vec::new(),
        data: Map::new(),
        tracking: d.tracking.clone(),
        sid_interest: true,
    };
    assert_eq!(st.persist(t0, persist), vec![("/".to_owned(), d.sid.to_string())]);
    assert!(st.has_interest("/", d.sid.as_str()));
}

#[test]
fn a_broadcast_is_logged_once() {
    let t0 = Instant::now();
    let mut st = RecoveryState::new(limits());
    assert_eq!(st.log(t0, off(1), &to(&["r"]), &packet(1)), Some((1, Vec::new())));
    assert_eq!(st.log(t0, off(1), &to(&["r"]), &packet(1)), None);
    assert_eq!(st.next_seq(), 2);
}

#[test]
fn after_a_recovery_the_socket_resumes_from_the_replay() {
    let (t0, mut st, mut s) = one_socket(limits(), &["r"]);
    s.persist(&mut st, t0);
    broadcast(&mut st, t0, 2, &to(&["r"]), &mut []);
    let recovered = st.take(t0, "/", s.sid, s.secret, Some(&off(1).to_string()), None).0.unwrap();
    assert_eq!(offsets(&recovered.missed), vec![2]);

    // Restored with a replay: the client is at 2 once it got it.
    s.tracking = Tracking::new(st.next_seq(), Some(off(1)), false, Some(off(2)));
    s.persist(&mut st, t0);
    broadcast(&mut st, t0, 3, &to(&["r"]), &mut []);
    let mut again = s.clone();
    assert_eq!(take(&mut st, t0, &again, Some(2)), Ok(vec![3]));
    // A client that lost the replay itself cannot be given it again.
    again.persist(&mut st, t0);
    assert_eq!(take(&mut st, t0, &again, Some(1)), Err(Refusal::StaleOffset));

    // Restored with nothing to replay: a client still at its old offset missed only later ones.
    again.tracking = Tracking::new(st.next_seq(), Some(off(3)), true, Some(off(3)));
    broadcast(&mut st, t0, 4, &to(&["r"]), &mut [&mut again]);
    again.persist(&mut st, t0);
    broadcast(&mut st, t0, 5, &to(&["r"]), &mut []);
    assert_eq!(take(&mut st, t0, &again, Some(3)), Ok(vec![4, 5]));
}

#[test]
fn a_session_handed_to_another_node_keeps_what_it_missed() {
    let t0 = Instant::now();
    let mut a = RecoveryState::new(limits());
    let mut s = Sock::connect(&a, &["r"]);
    broadcast(&mut a, t0, 1, &to(&["x"]), &mut [&mut s]);
    for n in 2..=4 {
        broadcast(&mut a, t0, n, &to(&["r"]), &mut [&mut s]);
    }
    s.persist(&mut a, t0);
    broadcast(&mut a, t0, 5, &to(&["r"]), &mut []);
    broadcast(&mut a, t0, 6, &to(&["x"]), &mut []);
    let (records, changes) = a.export_all(t0 + Duration::from_secs(20));
    assert!(changes.is_empty(), "the moved record keeps r while the hand-over goes: {changes:?}");
    assert!(a.has_interest("/", "r"));
    assert_eq!(a.session_count(), 0);
    let record = records[0].clone();
    assert_eq!(offsets(&record.packets), vec![2, 3, 4, 5]);
    assert_eq!((record.first_index, record.resume_index, record.expires_in), (0, 3, Duration::from_secs(100)));

    // Node b logged things before the session arrives: from an origin a never heard of, an older
    // one from a's origin, and a newer one that a had not logged when it exported (it reached b
    // first): only that one is the session's. Then 7 is broadcast to r.
    let mut b = RecoveryState::new(limits());
    b.log(t0, Offset { origin: 9, counter: 100 }, &to(&["r"]), &packet(100)).unwrap();
    b.log(t0, off(1), &to(&["r"]), &packet(1)).unwrap();
    b.log(t0, off(60), &to(&["r"]), &packet(60)).unwrap();
    assert_eq!(records[0].watermarks, vec![off(6)]);
    // Exported sessions are moved until the hand-over lands: what concerns them waits.
    let (_, relays) = a.log(t0, off(50), &to(&["r"]), &packet(50)).unwrap();
    assert!(relays.is_empty());
    let relays = a.moved_to(s.sid, 2);
    assert_eq!(relays.iter().map(|r| (r.to, r.sid, r.packet.offset)).collect::<Vec<_>>(), vec![(2, s.sid, off(50))]);
    let changes = b.import(t0, records.clone(), |_| true);
    assert!(changes.contains(&("/".to_owned(), s.sid.to_string())));
    assert!(b.has_interest("/", "r") && b.has_interest("/", s.sid.as_str()));
    broadcast(&mut b, t0, 7, &to(&["r"]), &mut []);
    let mut b2 = RecoveryState::new(limits());
    b2.import(t0, records.clone(), |_| false);
    let mut b3 = RecoveryState::new(limits());
    b3.import(t0, records.clone(), |_| false);
    let mut b4 = RecoveryState::new(limits());
    b4.import(t0, records, |_| false);
    // Client at 4 (everything queued arrived): 5, 60 that reached b first, then what b logged.
    assert_eq!(take(&mut b, t0, &s, Some(4)), Ok(vec![5, 60, 7]));
    // Client at 2: 3, 4, 5 from a.
    assert_eq!(take(&mut b2, t0, &s, Some(2)), Ok(vec![3, 4, 5]));
    // Client at 1, an offset the socket was never sent: unknown.
    assert_eq!(take(&mut b3, t0, &s, Some(1)), Err(Refusal::StaleOffset));
    // Client with no offset lost everything: all of it.
    assert_eq!(take(&mut b4, t0, &s, None), Ok(vec![2, 3, 4, 5]));

    // Exported again from b (b drains too): a's packets, then b's own, positions kept.
    let mut b = RecoveryState::new(limits());
    let mut s = Sock::connect(&a, &["r"]);
    broadcast(&mut a, t0, 8, &to(&["r"]), &mut [&mut s]);
    s.persist(&mut a, t0);
    broadcast(&mut a, t0, 9, &to(&["r"]), &mut []);
    b.import(t0, a.export_all(t0).0, |_| false);
    broadcast(&mut b, t0, 10, &to(&["r"]), &mut []);
    let mut c = RecoveryState::new(limits());
    let records = b.export_all(t0).0;
    assert_eq!((offsets(&records[0].packets), records[0].resume_index), (vec![8, 9, 10], 1));
    c.import(t0, records, |_| false);
    assert_eq!(take(&mut c, t0, &s, Some(8)), Ok(vec![9, 10]));
}

#[test]
fn a_handed_over_history_is_trimmed_to_the_bounds_and_a_client_before_it_is_refused() {
    let t0 = Instant::now();
    let mut a = RecoveryState::new(Limits { max_packets: 2, ..limits() });
    let mut s = Sock::connect(&a, &["r"]);
    for n in 1..=4 {
        broadcast(&mut a, t0, n, &to(&["r"]), &mut [&mut s]);
    }
    s.persist(&mut a, t0);
    let records = a.export_all(t0).0;
    assert_eq!((offsets(&records[0].packets), records[0].first_index, records[0].resume_index), (vec![3, 4], 2, 4));
    let mut b = RecoveryState::new(limits());
    b.import(t0, records.clone(), |_| false);
    assert_eq!(take(&mut b, t0, &s, Some(3)), Ok(vec![4]));
    let mut b = RecoveryState::new(limits());
    b.import(t0, records.clone(), |_| false);
    assert_eq!(take(&mut b, t0, &s, Some(4)), Ok(vec![]));
    let mut b = RecoveryState::new(limits());
    b.import(t0, records, |_| false);
    assert_eq!(take(&mut b, t0, &s, None), Err(Refusal::StaleOffset), "1 and 2 were dropped");

    // A node whose log already lost part of a session's history exports only what it has.
    let cost = ENTRY_OVERHEAD + packet(10).len() + 2;
    let mut a = RecoveryState::new(Limits { log_bytes: 2 * cost, ..limits() });
    let mut s = Sock::connect(&a, &["r"]);
    for n in 10..=12 {
        broadcast(&mut a, t0, n, &to(&["r"]), &mut [&mut s]);
    }
    s.persist(&mut a, t0);
    broadcast(&mut a, t0, 13, &to(&["r"]), &mut []);
    let records = a.export_all(t0).0;
    assert_eq!(offsets(&records[0].packets), vec![12, 13]);
    let mut b = RecoveryState::new(limits());
    b.import(t0, records.clone(), |_| false);
    assert_eq!(take(&mut b, t0, &s, Some(12)), Ok(vec![13]));
    let mut b = RecoveryState::new(limits());
    b.import(t0, records, |_| false);
    assert_eq!(take(&mut b, t0, &s, None), Err(Refusal::StaleOffset));
}

#[test]
fn a_session_taken_by_another_node_has_what_arrives_later_relayed_there() {
    let (t0, mut a, s) = one_socket(limits(), &["r"]);
    s.persist(&mut a, t0);
    broadcast(&mut a, t0, 2, &to(&["r"]), &mut []);
    // Node 2 takes it: the session is gone, its rooms stay interest for the grace period.
    let (taken, changes) = a.take(t0, "/", s.sid, s.secret, Some(&off(1).to_string()), Some(2));
    assert_eq!(offsets(&taken.unwrap().missed), vec![2]);
    assert!(changes.is_empty(), "r goes from the session to the moved record: {changes:?}");
    assert!(a.has_interest("/", "r"));
    // Late broadcasts that concern it are relayed; others are not.
    let (_, relays) = a.log(t0, off(3), &to(&["r"]), &packet(3)).unwrap();
    assert_eq!(
        relays,
        vec![Relay { to: 2, nsp: "/".into(), sid: s.sid, packet: MissedPacket { offset: off(3), packet: packet(3) } }]
    );
    assert!(a.log(t0, off(4), &to(&["x"]), &packet(4)).unwrap().1.is_empty());
    assert!(a.log(t0, off(5), &to(&["r"]).except(s.sid.as_str()), &packet(5)).unwrap().1.is_empty());
    // The session coming back here ends the relaying at once.
    let mut back = RecoveryState::new(limits());
    let mut s3 = Sock::connect(&back, &["r"]);
    broadcast(&mut back, t0, 1, &to(&["r"]), &mut [&mut s3]);
    s3.persist(&mut back, t0);
    assert!(back.take(t0, "/", s3.sid, s3.secret, Some(&off(1).to_string()), Some(2)).0.is_ok());
    let (_, changes) = back.arrived(&s3.sid);
    assert_eq!(changes, vec![("/".to_owned(), "r".to_owned())]);
    assert!(back.log(t0, off(9), &to(&["r"]), &packet(9)).unwrap().1.is_empty());
    // After the grace period: nothing relayed, no interest.
    let later = t0 + RELAY_GRACE;
    assert!(a.log(later, off(6), &to(&["r"]), &packet(6)).unwrap().1.is_empty());
    assert_eq!(a.expire(later), vec![("/".to_owned(), "r".to_owned())]);
    assert!(!a.has_interest("/", "r"));
    // A refused take leaves no moved record.
    let mut s2 = Sock::connect(&a, &["q"]);
    broadcast(&mut a, later, 7, &to(&["q"]), &mut [&mut s2]);
    s2.persist(&mut a, later);
    assert!(a.take(later, "/", s2.sid, s2.secret, Some("nonsense"), Some(2)).0.is_err());
    assert!(!a.has_interest("/", "q"));
}

#[test]
fn a_relayed_packet_is_kept_once_for_the_socket_it_names() {
    let t0 = Instant::now();
    let mut b = RecoveryState::new(limits());
    let sid = Sid::with_tag(1);
    let relayed = |n| MissedPacket { offset: off(n), packet: packet(n) };
    // Logged here before the socket arrived (this node sent it, the socket was elsewhere).
    b.log(t0, off(1), &to(&["r"]), &packet(1)).unwrap();
    let since = b.next_seq();
    assert!(b.log_relayed(t0, "/", sid, &relayed(1), Some(since)), "not sent to the socket here: send it");
    // Logged here while the socket was here: it had it.
    b.log(t0, off(2), &to(&["r"]), &packet(2)).unwrap();
    assert!(!b.log_relayed(t0, "/", sid, &relayed(2), Some(since)));
    // Nothing here holds that socket: dropped, unless its recovery is expected here.
    let early = Sid::random();
    assert!(!b.log_relayed(t0, "/", early, &relayed(3), None));
    assert!(b.expect(t0, early));
    assert!(!b.log_relayed(t0, "/", early, &relayed(30), None));
    assert!(!b.log_relayed(t0, "/", early, &relayed(31), None));
    assert_eq!(offsets(&b.arrived(&early).0), vec![30, 31]);
    assert!(b.arrived(&early).0.is_empty());
    assert!(!b.log_relayed(t0, "/", early, &relayed(32), None), "no longer expected");
    assert!(b.arrived(&early).0.is_empty());
    // A recovery that came to nothing drops what waited.
    assert!(b.expect(t0, early));
    assert!(!b.log_relayed(t0, "/", early, &relayed(33), None));
    b.unexpect(&early);
    assert!(b.arrived(&early).0.is_empty());
    // A lost answer does not keep them forever.
    assert!(b.expect(t0, early));
    assert!(!b.log_relayed(t0, "/", early, &relayed(34), None));
    b.expire(t0 + Duration::from_secs(61));
    assert!(b.arrived(&early).0.is_empty());
    // The broadcast itself arriving afterwards still runs for everyone.
    assert!(b.log_relayed(t0, "/", sid, &relayed(4), Some(since)));
    assert!(b.log(t0, off(4), &to(&["r"]), &packet(4)).is_some());

    // A kept session picks relayed packets up, once each.
    let mut s = Sock::connect(&b, &["r"]);
    broadcast(&mut b, t0, 5, &to(&["r"]), &mut [&mut s]);
    s.persist(&mut b, t0);
    assert!(b.log_relayed(t0, "/", s.sid, &relayed(6), None));
    broadcast(&mut b, t0, 6, &to(&["r"]), &mut []);
    assert_eq!(take(&mut b, t0, &s, Some(5)), Ok(vec![6]));
}

#[test]
fn a_replay_is_logged_for_the_socket_so_a_client_that_loses_it_gets_it_again() {
    let t0 = Instant::now();
    let mut st = RecoveryState::new(limits());
    // Recovered here with 7 and 8 replayed (they came from another node, so not logged here).
    let mut s = Sock::connect(&st, &["r"]);
    let since = st.next_seq();
    for n in [7, 8] {
        st.log_for(t0, "/", s.sid, &MissedPacket { offset: off(n), packet: packet(n) });
    }
    s.tracking = Tracking::new(since, Some(off(6)), true, Some(off(8)));
    broadcast(&mut st, t0, 9, &to(&["r"]), &mut [&mut s]);
    s.persist(&mut st, t0);
    broadcast(&mut st, t0, 10, &to(&["r"]), &mut []);
    let again = |st: &mut RecoveryState, client| {
        s.persist(st, t0);
        take(st, t0, &s, client)
    };
    // Lost everything since the recovery: the replay again, then the rest.
    assert_eq!(take(&mut st, t0, &s, Some(6)), Ok(vec![7, 8, 9, 10]));
    // Got part of the replay.
    assert_eq!(again(&mut st, Some(7)), Ok(vec![8, 9, 10]));
    // Got all of it.
    assert_eq!(again(&mut st, Some(8)), Ok(vec![9, 10]));
    // Another socket's packets are not its own.
    let other = Sid::random();
    st.log_for(t0, "/", other, &MissedPacket { offset: off(11), packet: packet(11) });
    assert_eq!(again(&mut st, Some(8)), Ok(vec![9, 10]));
}

#[test]
fn a_session_taken_by_another_node_brings_the_marks_that_tell_what_reached_that_node_first() {
    let (t0, mut a, s) = one_socket(limits(), &["r"]);
    s.persist(&mut a, t0);
    broadcast(&mut a, t0, 2, &to(&["r"]), &mut []);
    let x = |counter| Offset { origin: 7, counter };
    a.log(t0, x(10), &to(&["other"]), &packet(10)).unwrap();
    // Taken here for this node: no marks.
    let mut local = RecoveryState::new(limits());
    local.log(t0, off(1), &to(&["r"]), &packet(1)).unwrap();
    assert!(a.watermarks().contains(&x(10)));
    let taken = a.take(t0, "/", s.sid, s.secret, Some(&off(1).to_string()), Some(2)).0.unwrap();
    assert_eq!(taken.watermarks, vec![off(2), x(10)]);

    // Node b got 3 (origin 1) and 11 (origin 7) before the session, and 12 for another room.
    let mut b = RecoveryState::new(limits());
    b.log(t0, off(2), &to(&["r"]), &packet(2)).unwrap();
    b.log(t0, off(3), &to(&["r"]), &packet(3)).unwrap();
    b.log(t0, x(11), &to(&[]), &packet(11)).unwrap();
    b.log(t0, x(12), &to(&["other"]), &packet(12)).unwrap();
    b.log(t0, Offset { origin: 8, counter: 1 }, &to(&["r"]), &packet(13)).unwrap();
    let seen: HashSet<Offset> = taken.missed.iter().map(|p| p.offset).collect();
    let recent = b.recent_missed(t0, "/", s.sid, &taken.rooms, &taken.watermarks, &seen);
    assert_eq!(recent.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![off(3), x(11)]);
    // Only what was logged recently counts.
    assert!(
        b.recent_missed(t0 + Duration::from_secs(7), "/", s.sid, &taken.rooms, &taken.watermarks, &seen).is_empty()
    );
    // No marks (taken on the same node): nothing.
    assert!(b.recent_missed(t0, "/", s.sid, &taken.rooms, &[], &seen).is_empty());
}
