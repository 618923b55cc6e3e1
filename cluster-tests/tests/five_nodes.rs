//! Five nodes: a broadcast reaches all of them; with two of them killed (the leader among them)
//! the other three keep or elect a leader and commit writes; restarted, the two converge again.

use std::collections::BTreeMap;

use ioswarm_cluster_tests::{CONVERGE, Cluster};
use serde_json::{Value, json};

#[test]
fn five_nodes_keep_serving_with_two_crashed_and_converge_after_restart() {
    let c = Cluster::spawn(5);
    let views = c.wait_converged(CONVERGE);
    let agent = c.agent();
    // One client per node, always reconnecting to its own node (it comes back on the same URL).
    let mut on: BTreeMap<u64, String> = BTreeMap::new();
    for id in c.ids() {
        let ids = agent.connect_with(&c.urls(&[id]), 1, json!({ "prefix": format!("n{id}-") }));
        on.insert(id, ids[0].clone());
    }
    let all: Vec<String> = on.values().cloned().collect();
    agent.join(&all, &["all"]);
    c.wait_converged(CONVERGE);

    let reply = c.emit(5, json!({ "rooms": ["all"], "event": "hello" }));
    assert_eq!(sorted_ids(&reply["forwardedTo"]), vec![1, 2, 3, 4], "{reply}");
    agent.expect_once(&all, "hello", &all);

    // Crash the leader and one follower.
    let leader = views[&1].raft.leader.expect("a leader");
    let follower = *c.ids().iter().rev().find(|id| **id != leader).expect("a follower");
    let victims = [leader, follower];
    for v in victims {
        c.kill(v);
    }
    let survivors: Vec<u64> = c.ids().into_iter().filter(|id| !victims.contains(id)).collect();

    let new_leader = c.wait_leader(&survivors, CONVERGE);
    assert!(survivors.contains(&new_leader));
    for id in &survivors {
        agent.redis_open(&format!("n{id}"), &c.node(*id).redis_url());
    }
    for (n, id) in (1u64..).zip(&survivors) {
        assert_eq!(agent.redis(&format!("n{id}"), &["INCR", "five"]), Ok(json!(n)), "INCR on survivor {id}");
    }
    for id in &survivors {
        assert_eq!(agent.redis(&format!("n{id}"), &["GET", "five"]), Ok(json!("3")), "GET on survivor {id}");
    }
    c.wait_converged(CONVERGE);
    let on_survivors: Vec<String> = survivors.iter().map(|id| on[id].clone()).collect();
    c.emit(survivors[0], json!({ "rooms": ["all"], "event": "degraded" }));
    agent.expect_once(&all, "degraded", &on_survivors);

    // Both come back and converge; their clients reconnect to them.
    for v in victims {
        c.restart(v);
        agent.redis_open(&format!("n{v}"), &c.node(v).redis_url());
    }
    c.wait_converged(CONVERGE);
    for id in c.ids() {
        assert_eq!(agent.redis(&format!("n{id}"), &["GET", "five"]), Ok(json!("3")), "GET on node {id} after restart");
    }
    agent.wait_ready(&all, CONVERGE);
    c.wait_converged(CONVERGE);
    let reply = c.emit(victims[0], json!({ "rooms": ["all"], "event": "again" }));
    assert_eq!(sorted_ids(&reply["forwardedTo"]).len(), 4, "{reply}");
    agent.expect_once(&all, "again", &all);
}

fn sorted_ids(v: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = v.as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    ids.sort_unstable();
    ids
}
