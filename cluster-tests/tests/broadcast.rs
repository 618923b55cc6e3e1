//! Broadcasts across three nodes reach exactly the sockets they target, once each, whichever
//! node they enter through: client relay (`ioswarm:to`), the admin API, and
//! `@socket.io/redis-emitter` publishing into one node's Redis port; cluster-wide fetchSockets,
//! socketsJoin/Leave, disconnectSockets and broadcasts with acknowledgements.

use std::collections::{BTreeMap, BTreeSet};

use ioswarm_cluster_tests::{Agent, CONVERGE, Cluster, QUIET, metric_sum, quiet, strings, wait_for};
use serde_json::{Value, json};

/// Clients spread over every node: per node two in room A, two in room B, one in both (on
/// long-polling), one in neither (all in namespace `/`, websocket unless said otherwise).
struct Layout {
    a: Vec<String>,
    b: Vec<String>,
    ab: Vec<String>,
    none: Vec<String>,
    node_of: BTreeMap<String, u64>,
}

impl Layout {
    fn spread(c: &Cluster, agent: &Agent) -> Layout {
        let mut l = Layout { a: vec![], b: vec![], ab: vec![], none: vec![], node_of: BTreeMap::new() };
        for id in c.ids() {
            let urls = c.urls(&[id]);
            let a = agent.connect_with(&urls, 2, json!({ "prefix": format!("n{id}-a-") }));
            agent.join(&a, &["A"]);
            let b = agent.connect_with(&urls, 2, json!({ "prefix": format!("n{id}-b-") }));
            agent.join(&b, &["B"]);
            // Long-polling, to show forwarded broadcasts reach both transports.
            let ab = agent.connect_with(&urls, 1, json!({ "prefix": format!("n{id}-ab-"), "transports": ["polling"] }));
            agent.join(&ab, &["A", "B"]);
            let none = agent.connect_with(&urls, 1, json!({ "prefix": format!("n{id}-none-") }));
            for client in a.iter().chain(&b).chain(&ab).chain(&none) {
                l.node_of.insert(client.clone(), id);
            }
            l.a.extend(a);
            l.b.extend(b);
            l.ab.extend(ab);
            l.none.extend(none);
        }
        c.wait_converged(CONVERGE);
        l
    }

    fn all(&self) -> Vec<String> {
        self.node_of.keys().cloned().collect()
    }

    /// Members of room A (A only and A+B).
    fn room_a(&self) -> Vec<String> {
        sorted(self.a.iter().chain(&self.ab))
    }

    fn room_b(&self) -> Vec<String> {
        sorted(self.b.iter().chain(&self.ab))
    }

    fn on(&self, node: u64, clients: &[String]) -> Vec<String> {
        clients.iter().filter(|c| self.node_of[*c] == node).cloned().collect()
    }
}

fn sorted<'a>(it: impl Iterator<Item = &'a String>) -> Vec<String> {
    it.cloned().collect::<BTreeSet<_>>().into_iter().collect()
}

fn minus(list: &[String], gone: &[String]) -> Vec<String> {
    list.iter().filter(|c| !gone.contains(c)).cloned().collect()
}

fn forwarded_to(reply: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = reply["forwardedTo"]
        .as_array()
        .unwrap_or_else(|| panic!("no forwardedTo in {reply}"))
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn client_relay_reaches_room_members_on_every_node_exactly_once() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let l = Layout::spread(&c, &agent);
    let all = l.all();

    // From an A member on node 1: every other A member, on every node, once; the sender never.
    let sender = l.a[0].clone();
    assert_eq!(l.node_of[&sender], 1);
    let ack = agent.relay(&sender, "A", "msg", json!([1, "x", { "k": [true, null] }]));
    let local = minus(&l.on(1, &l.room_a()), std::slice::from_ref(&sender)).len();
    assert_eq!(ack, json!({ "recipients": local }), "the ack counts the recipients on the sender's node");
    let got = agent.expect_once(&all, "msg", &minus(&l.room_a(), std::slice::from_ref(&sender)));
    for (client, args) in &got {
        assert_eq!(args, &json!([1, "x", { "k": [true, null] }]), "arguments {client} received");
    }

    // From the A+B member of node 2 to B.
    let sender = l.on(2, &l.ab)[0].clone();
    agent.relay(&sender, "B", "msg-b", json!(["b"]));
    agent.expect_once(&all, "msg-b", &minus(&l.room_b(), std::slice::from_ref(&sender)));

    // A client outside the room may not relay to it; nobody receives anything.
    let outsider = l.on(3, &l.none)[0].clone();
    let ack = agent.relay(&outsider, "A", "nope", json!([]));
    assert_eq!(ack, json!({ "error": "forbidden" }));
    agent.expect_once(&all, "nope", &[]);

    // Node 1 forwarded the first relay to the other nodes.
    let metrics = c.metrics(1);
    let forwarded = metric_sum(&metrics, "ioswarm_cluster_forwarded_messages_total");
    assert!(forwarded >= 2.0, "node 1 counts forwarded messages: {forwarded}");
    let bytes = metric_sum(&metrics, "ioswarm_cluster_forwarded_bytes_total");
    assert!(bytes > 0.0, "node 1 counts forwarded bytes: {bytes}");
    // The queue to each peer is sampled on the read, one series per peer.
    for peer in [2, 3] {
        let series = format!("\nioswarm_cluster_peer_queue{{peer=\"{peer}\"}} ");
        assert!(metrics.contains(&series), "node 1 lists its queue to node {peer}:\n{metrics}");
    }
}

#[test]
fn admin_emit_on_one_node_targets_rooms_and_except_cluster_wide() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let l = Layout::spread(&c, &agent);
    let all = l.all();

    // rooms A except B: the A-only members.
    let reply = c.emit(2, json!({ "rooms": ["A"], "except": ["B"], "event": "adm", "args": ["a-not-b"] }));
    assert_eq!(reply["recipients"], json!(l.on(2, &l.a).len()), "recipients on node 2: {reply}");
    assert_eq!(forwarded_to(&reply), vec![1, 3], "{reply}");
    for args in agent.expect_once(&all, "adm", &sorted(l.a.iter())).values() {
        assert_eq!(args, &json!(["a-not-b"]));
    }

    // Two rooms: their union, the members of both once.
    let reply = c.emit(2, json!({ "rooms": ["A", "B"], "event": "adm2" }));
    assert_eq!(forwarded_to(&reply), vec![1, 3], "{reply}");
    agent.expect_once(&all, "adm2", &sorted(l.room_a().iter().chain(&l.room_b())));

    // Namespace-wide except A: B-only members and those in no room.
    let reply = c.emit(2, json!({ "except": ["A"], "event": "adm3" }));
    assert_eq!(forwarded_to(&reply), vec![1, 3], "every live node for a namespace-wide emit: {reply}");
    agent.expect_once(&all, "adm3", &sorted(l.b.iter().chain(&l.none)));

    // A room nobody is in: no recipient, forwarded nowhere.
    let reply = c.emit(2, json!({ "rooms": ["empty"], "event": "adm4" }));
    assert_eq!(reply["recipients"], json!(0));
    assert_eq!(forwarded_to(&reply), Vec::<u64>::new(), "{reply}");
    agent.expect_once(&all, "adm4", &[]);

    // A room with members on node 3 only is forwarded to node 3 only.
    let lonely = l.on(3, &l.none);
    agent.join(&lonely, &["only3"]);
    c.wait_converged(CONVERGE);
    let reply = c.emit(2, json!({ "rooms": ["only3"], "event": "adm5" }));
    assert_eq!(forwarded_to(&reply), vec![3], "{reply}");
    agent.expect_once(&all, "adm5", &lonely);

    // Another namespace: only its sockets.
    let other = agent.connect_with(&c.urls(&[1]), 1, json!({ "nsp": "/other", "prefix": "o1-" }));
    let other3 = agent.connect_with(&c.urls(&[3]), 1, json!({ "nsp": "/other", "prefix": "o3-" }));
    c.wait_converged(CONVERGE);
    let everyone: Vec<String> = all.iter().chain(&other).chain(&other3).cloned().collect();
    c.emit(2, json!({ "nsp": "/other", "event": "adm6" }));
    agent.expect_once(&everyone, "adm6", &sorted(other.iter().chain(&other3)));
}

#[test]
fn redis_emitter_into_one_node_reaches_sockets_on_every_node() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let l = Layout::spread(&c, &agent);
    let redis = c.node(3).redis_url();
    let other = agent.connect_with(&c.urls(&[1]), 1, json!({ "nsp": "/other", "prefix": "o1-" }));
    let other2 = agent.connect_with(&c.urls(&[2]), 1, json!({ "nsp": "/other", "prefix": "o2-" }));
    let others = sorted(other.iter().chain(&other2));
    c.wait_converged(CONVERGE);
    let root = l.all();
    let everyone: Vec<String> = root.iter().chain(&others).cloned().collect();

    agent.emitter(&redis, json!({ "op": "emit", "event": "e-all", "args": ["all", 1] }));
    for args in agent.expect_once(&everyone, "e-all", &root).values() {
        assert_eq!(args, &json!(["all", 1]));
    }

    agent.emitter(&redis, json!({ "op": "emit", "to": ["A"], "event": "e-a" }));
    agent.expect_once(&everyone, "e-a", &l.room_a());

    agent.emitter(&redis, json!({ "op": "emit", "except": ["A"], "event": "e-not-a" }));
    agent.expect_once(&everyone, "e-not-a", &minus(&root, &l.room_a()));

    agent.emitter(&redis, json!({ "op": "emit", "nsp": "/other", "event": "e-other" }));
    agent.expect_once(&everyone, "e-other", &others);

    // socketsJoin: every B member (on every node) joins C; then C reaches them.
    let sids = agent.sids(&root);
    let b_sids: BTreeSet<String> = l.room_b().iter().map(|c| sids[c].clone()).collect();
    agent.emitter(&redis, json!({ "op": "socketsJoin", "to": ["B"], "rooms": ["C"] }));
    wait_for("the B members to be in room C", CONVERGE, || {
        let listed = socket_ids(&c, 1, "/v1/sockets?nsp=/&room=C")?;
        if listed == b_sids { Ok(()) } else { Err(format!("room C lists {listed:?}, want {b_sids:?}")) }
    });
    c.wait_converged(CONVERGE);
    agent.emitter(&redis, json!({ "op": "emit", "to": ["C"], "event": "e-c" }));
    agent.expect_once(&everyone, "e-c", &l.room_b());

    // socketsLeave: C is empty again, an emit to C reaches nobody.
    agent.emitter(&redis, json!({ "op": "socketsLeave", "to": ["C"], "rooms": ["C"] }));
    wait_for("room C to be empty", CONVERGE, || {
        let listed = socket_ids(&c, 2, "/v1/sockets?nsp=/&room=C")?;
        if listed.is_empty() { Ok(()) } else { Err(format!("room C lists {listed:?}")) }
    });
    c.wait_converged(CONVERGE);
    agent.emitter(&redis, json!({ "op": "emit", "to": ["C"], "event": "e-c2" }));
    agent.expect_once(&everyone, "e-c2", &[]);

    // disconnectSockets: the A members (on every node) are disconnected by the server; the
    // others stay connected.
    agent.emitter(&redis, json!({ "op": "disconnectSockets", "to": ["A"], "close": true }));
    let room_a = l.room_a();
    wait_for("the A members to be disconnected", CONVERGE, || {
        let status = agent.status(&room_a);
        match status.iter().find(|(_, s)| s["connected"] != json!(false)) {
            Some((client, s)) => Err(format!("{client} is still connected: {s}")),
            None => Ok(()),
        }
    });
    for (client, s) in agent.status(&room_a) {
        assert_eq!(s["disconnects"], json!(["io server disconnect"]), "{client} was disconnected by the server");
    }
    quiet(QUIET);
    for (client, s) in agent.status(&minus(&everyone, &room_a)) {
        assert_eq!((s["connected"].clone(), s["disconnects"].clone()), (json!(true), json!([])), "{client} stays");
    }
}

#[test]
fn fetch_sockets_on_one_node_lists_sockets_of_every_node() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let l = Layout::spread(&c, &agent);
    let root = l.all();
    let sids = agent.sids(&root);
    let client_of: BTreeMap<String, String> = sids.iter().map(|(c, s)| (s.clone(), c.clone())).collect();

    let reply = c.admin_json(1, "GET", "/v1/sockets?nsp=/", None);
    assert_eq!(reply["missingNodes"], json!([]), "{reply}");
    let sockets = reply["sockets"].as_array().expect("sockets");
    let listed: BTreeSet<String> = sockets.iter().filter_map(|s| s["id"].as_str().map(str::to_owned)).collect();
    assert_eq!(listed, sids.values().cloned().collect::<BTreeSet<_>>(), "every socket of every node, once");
    assert_eq!(sockets.len(), listed.len(), "no socket listed twice");
    for s in sockets {
        let sid = s["id"].as_str().expect("id");
        let client = &client_of[sid];
        assert_eq!(s["node"], json!(l.node_of[client]), "the node of {client}: {s}");
        let rooms = strings(&s["rooms"]);
        assert_eq!(rooms.contains(&"A".to_owned()), l.room_a().contains(client), "rooms of {client}: {s}");
        assert_eq!(rooms.contains(&"B".to_owned()), l.room_b().contains(client), "rooms of {client}: {s}");
    }

    let in_a = socket_ids(&c, 3, "/v1/sockets?nsp=/&room=A").expect("room A");
    assert_eq!(in_a, l.room_a().iter().map(|c| sids[c].clone()).collect::<BTreeSet<_>>(), "room A from node 3");
}

#[test]
fn admin_socket_operations_act_on_every_node() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let l = Layout::spread(&c, &agent);
    let root = l.all();
    let sids = agent.sids(&root);
    let sids_of = |clients: &[String]| clients.iter().map(|c| sids[c].clone()).collect::<BTreeSet<_>>();

    let reply = c.admin_json(2, "POST", "/v1/sockets/join", Some(json!({ "rooms": ["A"], "join": ["J"] })));
    assert_eq!(reply, json!({ "affected": l.room_a().len(), "missingNodes": [] }), "join");
    wait_for("room J to hold the A members", CONVERGE, || {
        let listed = socket_ids(&c, 1, "/v1/sockets?nsp=/&room=J")?;
        if listed == sids_of(&l.room_a()) { Ok(()) } else { Err(format!("J lists {listed:?}")) }
    });
    c.wait_converged(CONVERGE);
    c.emit(1, json!({ "rooms": ["J"], "event": "to-j" }));
    agent.expect_once(&root, "to-j", &l.room_a());

    let reply =
        c.admin_json(3, "POST", "/v1/sockets/leave", Some(json!({ "rooms": ["J"], "except": ["B"], "leave": ["J"] })));
    assert_eq!(reply, json!({ "affected": l.a.len(), "missingNodes": [] }), "leave");
    wait_for("room J to hold the A+B members only", CONVERGE, || {
        let listed = socket_ids(&c, 2, "/v1/sockets?nsp=/&room=J")?;
        if listed == sids_of(&l.ab) { Ok(()) } else { Err(format!("J lists {listed:?}")) }
    });

    let reply = c.admin_json(1, "POST", "/v1/sockets/disconnect", Some(json!({ "rooms": ["B"], "close": true })));
    assert_eq!(reply, json!({ "affected": l.room_b().len(), "missingNodes": [] }), "disconnect");
    let room_b = l.room_b();
    wait_for("the B members to be disconnected", CONVERGE, || {
        match agent.status(&room_b).iter().find(|(_, s)| s["connected"] != json!(false)) {
            Some((client, s)) => Err(format!("{client} is still connected: {s}")),
            None => Ok(()),
        }
    });
    wait_for("the node views to lose the disconnected sockets", CONVERGE, || {
        let listed = socket_ids(&c, 3, "/v1/sockets?nsp=/")?;
        let want = sids_of(&minus(&root, &room_b));
        if listed == want { Ok(()) } else { Err(format!("sockets: {listed:?}, want {want:?}")) }
    });
}

#[test]
fn broadcast_with_acks_collects_the_acks_of_every_node() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let l = Layout::spread(&c, &agent);
    let root = l.all();

    let reply = c.emit(2, json!({ "rooms": ["A"], "event": "ask", "args": [7], "ackTimeoutMs": 5000 }));
    assert_eq!(reply["recipients"], json!(l.room_a().len()), "recipients on every node: {reply}");
    assert_eq!(reply["timedOut"], json!(0), "{reply}");
    assert_eq!(reply["missingNodes"], json!([]), "{reply}");
    let acks: Vec<Value> = reply["acks"].as_array().expect("acks").clone();
    let mut acked: Vec<String> = acks
        .iter()
        .map(|a| a[0].as_str().unwrap_or_else(|| panic!("each client acks with its id: {a}")).to_owned())
        .collect();
    acked.sort();
    assert_eq!(acked, l.room_a(), "one ack from each A member, on every node");
    agent.expect_once(&root, "ask", &l.room_a());

    let reply = c.emit(3, json!({ "event": "ask-all", "ackTimeoutMs": 5000 }));
    assert_eq!(reply["recipients"], json!(root.len()), "{reply}");
    assert_eq!(reply["acks"].as_array().map(Vec::len), Some(root.len()), "{reply}");
    assert_eq!(reply["timedOut"], json!(0), "{reply}");
}

/// The socket ids `GET path` on node `id` lists (no node may be missing).
fn socket_ids(c: &Cluster, id: u64, path: &str) -> Result<BTreeSet<String>, String> {
    let res = c.http(id, "GET", path, None)?;
    if res.status != 200 {
        return Err(format!("{path}: {} {}", res.status, res.body));
    }
    let json = res.json()?;
    if json["missingNodes"] != json!([]) {
        return Err(format!("{path}: missing nodes: {json}"));
    }
    Ok(json["sockets"].as_array().into_iter().flatten().filter_map(|s| s["id"].as_str().map(str::to_owned)).collect())
}
