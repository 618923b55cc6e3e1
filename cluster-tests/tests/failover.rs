//! kill -9 of a node while a publisher emits continuously to a room with members on every node:
//! the survivors keep delivering, drop the dead node from their view and their forwarding, keep
//! a raft majority; the dead node's clients reconnect to a survivor; the node, restarted on the
//! same address and data dir, rejoins and its clients receive again.

use std::collections::BTreeMap;
use std::time::Duration;

use ioswarm_cluster_tests::{Agent, CONVERGE, Cluster, metric, wait_for};
use serde_json::{Value, json};

#[test]
fn kill_9_under_load_survivors_deliver_and_the_node_rejoins() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let on1 = agent.connect_with(&c.urls(&[1]), 2, json!({ "prefix": "n1-" }));
    let on2 = agent.connect_with(&c.urls(&[2]), 2, json!({ "prefix": "n2-" }));
    // Node 3's clients (one on websocket, one on long-polling) move on to node 1, then node 2,
    // when node 3 goes away.
    let mut on3 = agent.connect_with(&c.urls(&[3, 1, 2]), 1, json!({ "prefix": "n3-ws-" }));
    on3.extend(agent.connect_with(&c.urls(&[3, 1, 2]), 1, json!({ "prefix": "n3-poll-", "transports": ["polling"] })));
    let survivors: Vec<String> = on1.iter().chain(&on2).cloned().collect();
    let all: Vec<String> = survivors.iter().chain(&on3).cloned().collect();
    agent.join(&all, &["R"]);
    let incarnation = c.wait_converged(CONVERGE)[&3].incarnation;
    for id in [1, 2] {
        agent.redis_open(&format!("n{id}"), &c.node(id).redis_url());
    }

    // The publisher: @socket.io/redis-emitter into node 1, a tick to R every 50 ms.
    let loop_params =
        json!({ "name": "ticks", "redis": c.node(1).redis_url(), "to": ["R"], "event": "tick", "intervalMs": 50 });
    agent.req("loop_start", loop_params);
    agent.wait_events(&all, "tick", 3, Duration::from_secs(20));

    c.kill(3);

    // Members on the survivors keep receiving.
    let before = agent.counts(&survivors, "tick");
    wait_for_more(&agent, &survivors, &before, 10, "members on nodes 1 and 2 to keep receiving after the kill");

    // The dead node leaves the survivors' view and their forwarding.
    wait_for("nodes 1 and 2 to see node 3 dead or removed", CONVERGE, || {
        for id in [1, 2] {
            let view = c.view(id)?;
            if !view.is_gone(3, &["dead", "left"]) {
                return Err(format!("node {id} lists node 3 as {:?}", view.member(3)));
            }
        }
        Ok(())
    });
    wait_for("node 1's metrics to count one alive peer", CONVERGE, || {
        let metrics = c.metrics(1);
        match metric(&metrics, "ioswarm_cluster_peers", &[("state", "alive")]) {
            Some(1.0) => Ok(()),
            other => Err(format!("ioswarm_cluster_peers{{state=\"alive\"}} = {other:?}")),
        }
    });
    let leader = c.wait_leader(&[1, 2], CONVERGE);
    assert!([1, 2].contains(&leader));

    // Raft keeps a majority: writes commit on both survivors.
    assert_eq!(agent.redis("n1", &["INCR", "failover"]), Ok(json!(1)), "INCR on node 1 after the kill");
    assert_eq!(agent.redis("n2", &["INCR", "failover"]), Ok(json!(2)), "INCR on node 2 after the kill");

    // Node 3's clients are back on a survivor, in R, and receive again.
    let status = agent.wait_ready(&on3, CONVERGE);
    for client in &on3 {
        let url = status[client]["url"].as_str().unwrap_or_default();
        assert!(c.urls(&[1, 2]).iter().any(|u| u == url), "{client} moved to a survivor: {}", status[client]);
    }
    c.wait_converged(CONVERGE);
    let before = agent.counts(&on3, "tick");
    wait_for_more(&agent, &on3, &before, 10, "node 3's clients to receive on their new node");

    wait_for("an emit to R to be forwarded to live nodes only", CONVERGE, || {
        let reply = c.emit(1, json!({ "rooms": ["R"], "event": "probe" }));
        let to: Vec<u64> = reply["forwardedTo"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
        if to.contains(&3) { Err(format!("forwardedTo {to:?}")) } else { Ok(()) }
    });

    // Node 3 comes back on the same address and data dir, rejoins and converges.
    c.restart(3);
    let views = c.wait_converged(CONVERGE);
    for (id, view) in &views {
        assert!(view.raft_members().contains(&3), "node {id} has node 3 back in raft: {:?}", view.raft);
    }
    assert!(
        views[&3].incarnation > incarnation,
        "the restarted node has a higher incarnation: {:?} after {incarnation:?}",
        views[&3].incarnation
    );
    agent.redis_open("n3", &c.node(3).redis_url());
    assert_eq!(agent.redis("n3", &["INCR", "failover"]), Ok(json!(3)), "INCR on the restarted node");
    for id in [1, 2, 3] {
        assert_eq!(agent.redis(&format!("n{id}"), &["GET", "failover"]), Ok(json!("3")), "GET on node {id}");
    }

    // Its new clients receive the ticks too.
    let fresh = agent.connect_with(&c.urls(&[3]), 2, json!({ "prefix": "n3b-" }));
    agent.join(&fresh, &["R"]);
    c.wait_converged(CONVERGE);
    let before = agent.counts(&fresh, "tick");
    wait_for_more(&agent, &fresh, &before, 10, "new clients of the restarted node to receive");

    let stopped = agent.req("loop_stop", json!({ "name": "ticks" }));
    assert_eq!(stopped["errors"], json!([]), "the publisher never failed: {stopped}");

    // No client got a tick twice, and each got them in order.
    let everyone: Vec<String> = all.iter().chain(&fresh).cloned().collect();
    for (client, ticks) in agent.events(&everyone, "tick") {
        let seqs: Vec<u64> = ticks.iter().filter_map(|args| args[0].as_u64()).collect();
        assert_eq!(seqs.len(), ticks.len(), "{client}: tick arguments {ticks:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{client} got ticks twice or out of order: {seqs:?}");
    }
}

/// Waits until each of `clients` received `more` ticks beyond `before`.
fn wait_for_more(agent: &Agent, clients: &[String], before: &BTreeMap<String, u64>, more: u64, what: &str) {
    wait_for(what, CONVERGE, || {
        let now = agent.counts(clients, "tick");
        match now.iter().find(|(c, n)| **n < before.get(*c).copied().unwrap_or(0) + more) {
            Some((client, n)) => Err(format!("{client} is at {n} (was {:?}); all: {now:?}", before.get(client))),
            None => Ok(()),
        }
    });
}
