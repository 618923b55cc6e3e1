//! Redis pub/sub across nodes with node-redis 4: a PUBLISH into one node reaches subscribers
//! (channels and patterns) on the others, and PUBSUB NUMSUB counts subscribers on every node.

use ioswarm_cluster_tests::{Agent, CONVERGE, Cluster, QUIET, quiet, wait_for};
use serde_json::{Value, json};

#[test]
fn publish_on_one_node_reaches_subscribers_on_the_others() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    agent.redis_open("sub1", &c.node(1).redis_url());
    agent.redis_open("sub2", &c.node(2).redis_url());
    for id in c.ids() {
        agent.redis_open(&format!("cmd{id}"), &c.node(id).redis_url());
    }
    agent.req("subscribe", json!({ "conn": "sub1", "channels": ["news"] }));
    agent.req("subscribe", json!({ "conn": "sub2", "channels": ["news"], "patterns": ["ne*"] }));

    wait_numsub(&agent, &c.ids(), "news", 2);
    // PUBSUB NUMSUB of several channels, one of them without subscribers.
    let reply = agent.redis("cmd1", &["PUBSUB", "NUMSUB", "news", "nobody"]).expect("NUMSUB");
    assert_eq!(reply, json!(["news", 2, "nobody", 0]));

    agent.redis("cmd3", &["PUBLISH", "news", "hello"]).expect("PUBLISH");
    wait_for("both subscribers to get the message", CONVERGE, || {
        let (m1, m2) = (messages(&agent, "sub1"), messages(&agent, "sub2"));
        if m1.is_empty() || m2.len() < 2 { Err(format!("sub1 {m1:?}, sub2 {m2:?}")) } else { Ok(()) }
    });
    // A channel only the pattern matches, and one nobody listens to.
    agent.redis("cmd3", &["PUBLISH", "nest", "p"]).expect("PUBLISH");
    agent.redis("cmd2", &["PUBLISH", "other", "x"]).expect("PUBLISH");
    wait_for("the pattern subscriber to get nest", CONVERGE, || {
        let m2 = messages(&agent, "sub2");
        if m2.iter().any(|m| m.1 == "nest") { Ok(()) } else { Err(format!("sub2 {m2:?}")) }
    });
    quiet(QUIET);
    assert_eq!(messages(&agent, "sub1"), vec![("message".to_owned(), "news".to_owned(), "hello".to_owned())]);
    let mut m2 = messages(&agent, "sub2");
    m2.sort();
    assert_eq!(
        m2,
        vec![
            ("message".to_owned(), "news".to_owned(), "hello".to_owned()),
            ("pmessage".to_owned(), "nest".to_owned(), "p".to_owned()),
            ("pmessage".to_owned(), "news".to_owned(), "hello".to_owned()),
        ],
        "the channel subscription and the pattern each deliver once"
    );

    // Unsubscribing on node 1 is counted everywhere; its subscriber gets nothing more.
    agent.req("unsubscribe", json!({ "conn": "sub1", "channels": ["news"] }));
    wait_numsub(&agent, &c.ids(), "news", 1);
    agent.redis("cmd1", &["PUBLISH", "news", "again"]).expect("PUBLISH");
    wait_for("sub2 to get the second message", CONVERGE, || {
        let m2 = messages(&agent, "sub2");
        if m2.iter().filter(|m| m.2 == "again").count() == 2 { Ok(()) } else { Err(format!("sub2 {m2:?}")) }
    });
    quiet(QUIET);
    assert_eq!(messages(&agent, "sub1").len(), 1, "the unsubscribed connection got nothing more");
}

/// Waits until `PUBSUB NUMSUB channel` answers `n` on every node of `ids`.
fn wait_numsub(agent: &Agent, ids: &[u64], channel: &str, n: u64) {
    wait_for(&format!("NUMSUB {channel} = {n} on nodes {ids:?}"), CONVERGE, || {
        for id in ids {
            let reply = agent.redis(&format!("cmd{id}"), &["PUBSUB", "NUMSUB", channel])?;
            if reply != json!([channel, n]) {
                return Err(format!("node {id}: {reply}"));
            }
        }
        Ok(())
    });
}

/// `(kind, channel, message)` of what connection `conn` received.
fn messages(agent: &Agent, conn: &str) -> Vec<(String, String, String)> {
    let reply = agent.req("messages", json!({ "conn": conn }));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    reply
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (text(&m["kind"]), text(&m["channel"]), text(&m["message"])))
        .collect()
}
