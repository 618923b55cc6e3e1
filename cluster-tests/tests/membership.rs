//! Three nodes form one cluster with one leader; a node that gets SIGTERM leaves it for good
//! while the others keep serving.

use std::collections::BTreeSet;

use ioswarm_cluster_tests::{CONVERGE, Cluster, metric, wait_for};
use serde_json::json;

#[test]
fn three_nodes_join_one_cluster_with_one_leader() {
    let c = Cluster::spawn(3);
    let views = c.wait_converged(CONVERGE);
    let all: BTreeSet<u64> = [1, 2, 3].into();
    let leader = views[&1].raft.leader.expect("a leader");

    for (id, view) in &views {
        assert_eq!(view.raft_members(), all, "node {id}: raft voters + learners");
        assert_eq!(view.raft.leader, Some(leader), "node {id} names the same leader");
        assert_eq!(view.raft.term, views[&leader].raft.term, "node {id} is in the leader's term");
        let listed: BTreeSet<u64> = view.members.iter().map(|m| m.node_id).collect();
        assert_eq!(listed, all, "node {id} lists every member");
        for m in &view.members {
            assert_eq!(m.liveness, "alive", "node {id} sees {} {}", m.node_id, m.liveness);
            assert_eq!(m.is_self, m.node_id == *id, "node {id}: `self` flag of member {}", m.node_id);
            assert_eq!(m.addr, c.node(m.node_id).cluster_addr().to_string(), "node {id}: addr of {}", m.node_id);
            let expected_role = if view.raft.voters.contains(&m.node_id) { "voter" } else { "learner" };
            assert_eq!(m.role, expected_role, "node {id}: role of {}", m.node_id);
            if !m.is_self {
                assert!(m.connected, "node {id} has a connection to {}", m.node_id);
            }
        }
    }
    let leaders: Vec<u64> = views.iter().filter(|(_, v)| v.raft.state == "leader").map(|(id, _)| *id).collect();
    assert_eq!(leaders, vec![leader], "exactly one node says it is the leader");

    for id in c.ids() {
        let health = c.http(id, "GET", "/healthz", None).expect("healthz");
        assert_eq!(health.status, 200, "node {id} /healthz");
        // Metrics are sampled every gossip round: wait for them to catch up with /cluster.
        let term = views[&leader].raft.term as f64;
        wait_for(&format!("node {id}'s cluster metrics"), CONVERGE, || {
            let metrics = c.metrics(id);
            let got = [
                metric(&metrics, "ioswarm_raft_leader_id", &[]),
                metric(&metrics, "ioswarm_raft_term", &[]),
                metric(&metrics, "ioswarm_gossip_converged", &[]),
                metric(&metrics, "ioswarm_cluster_peers", &[("state", "alive")]),
            ];
            let want = [Some(leader as f64), Some(term), Some(1.0), Some(2.0)];
            if got == want {
                Ok(())
            } else {
                Err(format!("leader id, term, converged, alive peers: {got:?}, want {want:?}"))
            }
        });
    }
}

#[test]
fn sigterm_of_a_follower_leaves_the_cluster() {
    graceful_leave(false);
}

#[test]
fn sigterm_of_the_leader_leaves_the_cluster() {
    graceful_leave(true);
}

/// SIGTERM one node (the leader or a follower): it exits 0, the others drop it from the raft
/// voters and from their members (or list it as `left`), elect or keep a leader, serve writes
/// and broadcasts, and the leaving node's clients reconnect to them.
fn graceful_leave(leader_leaves: bool) {
    let c = Cluster::spawn(3);
    let views = c.wait_converged(CONVERGE);
    let leader = views[&1].raft.leader.expect("a leader");
    let gone =
        if leader_leaves { leader } else { *c.ids().iter().rev().find(|id| **id != leader).expect("a follower") };
    let rest: Vec<u64> = c.ids().into_iter().filter(|id| *id != gone).collect();

    let agent = c.agent();
    let on_rest: Vec<String> = rest.iter().flat_map(|id| agent.connect(&c.urls(&[*id]), 1)).collect();
    // A client of the leaving node, told where to go next.
    let mut urls = c.urls(&[gone]);
    urls.extend(c.urls(&rest));
    let leaver = agent.connect(&urls, 1);
    let members: Vec<String> = on_rest.iter().chain(&leaver).cloned().collect();
    agent.join(&members, &["room"]);
    c.wait_converged(CONVERGE);

    let status = c.stop(gone);
    assert!(status.success(), "node {gone} exits with status 0 after SIGTERM, got {status}");

    wait_for(&format!("nodes {rest:?} to forget node {gone}"), CONVERGE, || {
        for id in &rest {
            let view = c.view(*id)?;
            if view.raft_members().contains(&gone) {
                return Err(format!("node {id} still has {gone} in raft {:?}", view.raft));
            }
            if !view.is_gone(gone, &["left"]) {
                return Err(format!("node {id} lists {gone} as {:?}", view.member(gone)));
            }
        }
        Ok(())
    });
    let views = c.wait_converged(CONVERGE);
    let new_leader = views[&rest[0]].raft.leader.expect("a leader");
    assert!(rest.contains(&new_leader), "the leader {new_leader} is one of {rest:?}");

    // Writes still commit, on either remaining node.
    for id in &rest {
        agent.redis_open(&format!("n{id}"), &c.node(*id).redis_url());
    }
    let first = agent.redis(&format!("n{}", rest[0]), &["INCR", "after-leave"]).expect("INCR");
    let second = agent.redis(&format!("n{}", rest[1]), &["INCR", "after-leave"]).expect("INCR");
    assert_eq!((first, second), (json!(1), json!(2)), "INCR on each remaining node");

    // The leaving node's client is back, on a remaining node, in its room.
    let status = agent.wait_ready(&leaver, CONVERGE);
    let url = status[&leaver[0]]["url"].as_str().expect("url").to_owned();
    assert!(c.urls(&rest).contains(&url), "the client of node {gone} reconnected to a remaining node, not {url}");
    c.wait_converged(CONVERGE);

    // A broadcast from one remaining node reaches the room on the other and the moved client.
    let ack = agent.relay(&on_rest[0], "room", "after", json!(["leave"]));
    assert!(ack["recipients"].is_u64(), "relay ack: {ack}");
    let got = agent.expect_once(&members, "after", &members[1..]);
    for args in got.values() {
        assert_eq!(args, &json!(["leave"]));
    }
}
