//! Draining a cluster node (`--drain-ms`): after SIGTERM its `/healthz` fails at once, it stays a
//! member and keeps receiving broadcasts from the other nodes for its clients until it closes
//! them; then it leaves the cluster and its clients reconnect to the others.

use std::time::Duration;

use ioswarm_cluster_tests::{CONVERGE, Cluster, wait_for};
use serde_json::json;

#[test]
fn a_draining_node_keeps_serving_its_clients_then_leaves() {
    let c = Cluster::builder(3).arg("--drain-ms").arg("4000").arg("--shutdown-grace-ms").arg("12000").spawn();
    c.wait_converged(CONVERGE);
    let gone = 3;
    let agent = c.agent();
    // The client starts on the draining node and knows the others for its reconnect.
    let mut urls = c.urls(&[gone]);
    urls.extend(c.urls(&[1, 2]));
    let client = agent.connect(&urls, 1);
    agent.join(&client, &["room"]);
    c.wait_converged(CONVERGE);

    std::thread::scope(|s| {
        let stopping = s.spawn(|| c.stop(gone));
        wait_for(&format!("node {gone}'s /healthz to fail"), Duration::from_secs(3), || {
            let res = c.http(gone, "GET", "/healthz", None)?;
            if res.status == 503 { Ok(()) } else { Err(format!("status {}", res.status)) }
        });
        // Still a member: node 1 sees it alive and forwards to it.
        let view = c.view(1).expect("node 1's view");
        assert_eq!(view.member(gone).map(|m| m.liveness.as_str()), Some("alive"), "node {gone} as seen by node 1");
        let sent = c.emit(1, json!({ "rooms": ["room"], "event": "during-drain", "args": ["x"] }));
        assert!(sent["forwardedTo"].as_array().is_some_and(|a| a.contains(&json!(gone))), "emit: {sent}");
        agent.wait_events(&client, "during-drain", 1, Duration::from_secs(3));
        let status = agent.status(&client);
        assert_eq!(
            status[&client[0]]["url"].as_str(),
            Some(c.urls(&[gone])[0].as_str()),
            "the client got the broadcast while still on the draining node: {status:?}"
        );
        let exit = stopping.join().expect("stop thread");
        assert!(exit.success(), "node {gone} exits with status 0 after draining, got {exit}");
    });

    // Then it left, and its client moved to another node and is reachable there.
    wait_for(&format!("nodes 1 and 2 to see node {gone} leave"), CONVERGE, || {
        for id in [1, 2] {
            let view = c.view(id)?;
            if !view.is_gone(gone, &["left"]) {
                return Err(format!("node {id} lists {gone} as {:?}", view.member(gone)));
            }
        }
        Ok(())
    });
    let status = agent.wait_ready(&client, CONVERGE);
    let url = status[&client[0]]["url"].as_str().expect("url").to_owned();
    assert!(c.urls(&[1, 2]).contains(&url), "the client reconnected to a remaining node, not {url}");
}

/// A Redis client publishing into a node while it shuts down: every PUBLISH the node answers
/// reaches the subscriber on another node. The node closes its Redis port before it leaves the
/// cluster, so the publisher sees its connection go instead of answers from a node that can no
/// longer deliver anything.
#[test]
fn every_publish_a_stopping_node_answers_reaches_the_other_nodes() {
    let c = Cluster::builder(3).arg("--drain-ms").arg("1000").arg("--shutdown-grace-ms").arg("8000").spawn();
    c.wait_converged(CONVERGE);
    let gone = 3;
    let agent = c.agent();
    agent.redis_open("sub", &c.node(1).redis_url());
    agent.redis_open("pub", &c.node(gone).redis_url());
    agent.req("subscribe", json!({ "conn": "sub", "channels": ["feed"] }));
    wait_for("node 3 to know of the subscriber on node 1", CONVERGE, || {
        let reply = agent.redis("pub", &["PUBSUB", "NUMSUB", "feed"])?;
        if reply == json!(["feed", 1]) { Ok(()) } else { Err(format!("NUMSUB {reply}")) }
    });

    let mut answered = Vec::new();
    let mut refused = 0;
    std::thread::scope(|s| {
        let stopping = s.spawn(|| c.stop(gone));
        let mut n = 0u64;
        while !stopping.is_finished() {
            n += 1;
            let message = n.to_string();
            match agent.redis_timeout("pub", &["PUBLISH", "feed", &message], Duration::from_millis(500)) {
                Ok(_) => answered.push(message),
                Err(_) => refused += 1,
            }
        }
        let exit = stopping.join().expect("stop thread");
        assert!(exit.success(), "node {gone} exits with status 0, got {exit}");
    });
    assert!(answered.len() > 10, "the node answered PUBLISH while it drained: {}", answered.len());
    assert!(refused > 0, "the publisher saw the Redis port close before the node exited");

    wait_for("every answered PUBLISH to reach the subscriber on node 1", Duration::from_secs(5), || {
        let got: Vec<String> = agent
            .req("messages", json!({ "conn": "sub" }))
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["message"].as_str().map(str::to_owned))
            .collect();
        let missing: Vec<&String> = answered.iter().filter(|m| !got.contains(m)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} of {} answered never arrived, first {:?}", missing.len(), answered.len(), missing.first()))
        }
    });
}
