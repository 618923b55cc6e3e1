//! A network partition (nftables in a throwaway network namespace; needs root, `ip` and `nft`):
//! the leader is cut off from the two other nodes. The majority elects a leader and keeps
//! serving writes and broadcasts; the isolated node never acknowledges a write it cannot
//! commit; after healing, every node reads the same state and the isolated node's clients are
//! reachable again.

use std::time::Duration;

use ioswarm_cluster_tests::{CONVERGE, Cluster, wait_for};
use serde_json::{Value, json};

#[test]
fn a_partitioned_leader_cannot_commit_and_the_cluster_heals() {
    let c = Cluster::builder(3).netns().spawn();
    let views = c.wait_converged(CONVERGE);
    let isolated = views[&1].raft.leader.expect("a leader");
    let majority: Vec<u64> = c.ids().into_iter().filter(|id| *id != isolated).collect();
    let ns = c.netns().expect("the cluster runs in a network namespace");

    let agent = c.agent();
    let mut clients = Vec::new();
    for id in c.ids() {
        clients.extend(agent.connect_with(&c.urls(&[id]), 1, json!({ "prefix": format!("n{id}-") })));
    }
    let on_isolated = clients[usize::try_from(isolated - 1).expect("index")].clone();
    let on_majority: Vec<String> = clients.iter().filter(|c| **c != on_isolated).cloned().collect();
    agent.join(&clients, &["P"]);
    c.wait_converged(CONVERGE);
    for id in c.ids() {
        agent.redis_open(&format!("n{id}"), &c.node(id).redis_url());
        assert!(agent.redis(&format!("n{id}"), &["INCR", "kv"]).is_ok(), "INCR on node {id} before the partition");
    }

    ns.isolate_udp_ports(&[c.node(isolated).cluster_addr().port()]).unwrap_or_else(|e| panic!("{e}"));

    // The majority elects a leader among itself and commits writes.
    let leader = c.wait_leader(&majority, CONVERGE);
    assert_ne!(leader, isolated);
    let mut expected = 3;
    for id in &majority {
        expected += 1;
        let got = agent.redis_timeout(&format!("n{id}"), &["INCR", "kv"], Duration::from_secs(15));
        assert_eq!(got, Ok(json!(expected)), "INCR on majority node {id}");
    }

    // The isolated node cannot commit: an error or no answer, never a success.
    agent.redis_open("isolated-incr", &c.node(isolated).redis_url());
    let write = agent.redis_timeout("isolated-incr", &["INCR", "kv"], Duration::from_secs(8));
    assert!(write.is_err(), "INCR on the isolated node must not succeed, got {write:?}");
    eprintln!("INCR on the isolated node {isolated}: {write:?}");
    // A write that timed out (at the client, or as the node says it) has an unknown outcome.
    let write_timed_out =
        write.as_ref().is_err_and(|e| ["timeout", "timed out", "may still be applied"].iter().any(|t| e.contains(t)));
    // Nor does it answer a read with the state it had before the partition.
    agent.redis_open("isolated-get", &c.node(isolated).redis_url());
    let read = agent.redis_timeout("isolated-get", &["GET", "kv"], Duration::from_secs(5));
    eprintln!("GET on the isolated node {isolated}: {read:?}");
    assert_ne!(read, Ok(json!("3")), "the isolated node answered a stale read");

    // The majority sees the isolated node as not alive and keeps broadcasting among itself.
    wait_for(&format!("nodes {majority:?} to stop counting node {isolated} alive"), CONVERGE, || {
        for id in &majority {
            let view = c.view(*id)?;
            if view.member(isolated).is_some_and(|m| m.liveness == "alive") {
                return Err(format!("node {id} still sees {isolated} alive"));
            }
        }
        Ok(())
    });
    c.emit(majority[0], json!({ "rooms": ["P"], "event": "split" }));
    agent.expect_once(&clients, "split", &on_majority);

    // Heal: everything converges to one state.
    ns.heal().unwrap_or_else(|e| panic!("{e}"));
    c.wait_converged(CONVERGE);
    agent.redis_open("isolated-after", &c.node(isolated).redis_url());
    let mut values = Vec::new();
    for id in c.ids() {
        let conn = if id == isolated { "isolated-after".to_owned() } else { format!("n{id}") };
        let got = agent.redis(&conn, &["GET", "kv"]).unwrap_or_else(|e| panic!("GET on node {id} after healing: {e}"));
        values.push(got);
    }
    assert!(values.windows(2).all(|w| w[0] == w[1]), "every node reads the same value after healing: {values:?}");
    let value: u64 = values[0].as_str().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("kv = {values:?}"));
    // A write whose outcome is unknown may commit once healed; one that failed with a definite
    // error must not have been applied.
    let allowed: Vec<u64> = if write_timed_out { vec![expected, expected + 1] } else { vec![expected] };
    assert!(
        allowed.contains(&value),
        "kv = {value} after healing, expected one of {allowed:?} (isolated write: {write:?})"
    );

    // The isolated node commits writes again and its client is reachable again.
    let got = agent.redis("isolated-after", &["INCR", "kv"]).expect("INCR on the healed node");
    assert_eq!(got, json!(value + 1));
    agent.wait_ready(&clients, CONVERGE);
    c.emit(majority[0], json!({ "rooms": ["P"], "event": "healed" }));
    let got = agent.expect_once(&clients, "healed", &clients);
    assert_eq!(got.len(), clients.len());
    let _: &Value = &got[&on_isolated];
}
