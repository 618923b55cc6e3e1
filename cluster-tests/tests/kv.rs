//! The replicated key-value store through each node's Redis port (node-redis 4): writes from
//! every node at once are neither lost nor doubled (also when the leader is killed under load,
//! with writes forwarded to it in batches), SET NX has one winner cluster-wide, and every command
//! reads the same state from any node.

use std::collections::BTreeSet;
use std::time::Duration;

use ioswarm_cluster_tests::{CONVERGE, Cluster, wait_for};
use serde_json::{Value, json};

#[test]
fn concurrent_incr_from_every_node_adds_up_exactly() {
    const CONNS_PER_NODE: u64 = 4;
    const PER_CONN: u64 = 250;
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let urls: Vec<String> = c.ids().iter().map(|id| c.node(*id).redis_url()).collect();
    let total = CONNS_PER_NODE * PER_CONN * urls.len() as u64;

    let params = json!({ "urls": urls, "connsPerUrl": CONNS_PER_NODE, "perConn": PER_CONN, "key": "counter", "timeoutMs": 240_000 });
    let reply = agent.call_timeout("incr_load", params, Duration::from_secs(260)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply["errorCount"], json!(0), "INCR errors: {}", reply["errors"]);
    assert_eq!(reply["ok"], json!(total));
    // Linearizable: every value from 1 to the total was handed out exactly once.
    let replies: BTreeSet<u64> =
        reply["replies"].as_array().expect("replies").iter().filter_map(Value::as_u64).collect();
    assert_eq!(replies, (1..=total).collect::<BTreeSet<u64>>(), "each INCR got its own value");

    for id in c.ids() {
        agent.redis_open(&format!("n{id}"), &c.node(id).redis_url());
        let got = agent.redis(&format!("n{id}"), &["GET", "counter"]).expect("GET");
        assert_eq!(got, json!(total.to_string()), "GET counter on node {id}");
    }
}

#[test]
fn kill_9_of_the_leader_under_incr_load_counts_each_answered_incr_once() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let leader = c.wait_leader(&c.ids(), CONVERGE);
    let survivors: Vec<u64> = c.ids().into_iter().filter(|&id| id != leader).collect();
    for id in &survivors {
        agent.redis_open(&format!("n{id}"), &c.node(*id).redis_url());
    }
    let counter = |id: u64| -> Result<u64, String> {
        match agent.redis(&format!("n{id}"), &["GET", "counter"])? {
            Value::Null => Ok(0),
            v => v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| format!("GET counter = {v}")),
        }
    };
    let wait_counter = |what: &str, at_least: u64| {
        wait_for(what, CONVERGE, || match counter(survivors[0])? {
            n if n >= at_least => Ok(n),
            n => Err(format!("counter at {n}")),
        })
    };

    // INCRs through every node at once; the followers forward theirs to the leader in batches.
    let urls: Vec<String> = c.ids().iter().map(|id| c.node(*id).redis_url()).collect();
    agent.req("incr_start", json!({ "name": "load", "urls": urls, "connsPerUrl": 4, "key": "counter" }));
    wait_counter("INCRs to be applied before the kill", 300);
    c.kill(leader);
    c.wait_leader(&survivors, CONVERGE);
    let after_election = wait_counter("a survivor to answer GET", 0);
    wait_counter("INCRs to be applied by the new leader", after_election + 300);
    let load = agent.req("incr_stop", json!({ "name": "load" }));

    let replies: Vec<u64> = load["replies"].as_array().expect("replies").iter().filter_map(Value::as_u64).collect();
    let errors = load["errorCount"].as_u64().expect("errorCount");
    let distinct: BTreeSet<u64> = replies.iter().copied().collect();
    assert_eq!(distinct.len(), replies.len(), "an INCR value was handed out twice");
    let finals: Vec<u64> = survivors.iter().map(|&id| counter(id).unwrap_or_else(|e| panic!("{e}"))).collect();
    assert!(finals.iter().all(|&f| f == finals[0]), "the survivors disagree: {finals:?}");
    let applied = finals[0];
    let answered = replies.len() as u64;
    assert!(distinct.last().is_none_or(|&max| max <= applied), "an answer above the final count {applied}");
    // Each answered INCR counts once; a failed one (the killed node's connections, a write
    // forwarded when the leader died) may or may not have been applied, never twice.
    assert!(
        (answered..=answered + errors).contains(&applied),
        "counter {applied} after {answered} answered INCRs and {errors} failed ones (first errors: {})",
        load["errors"]
    );
}

#[test]
fn set_nx_race_has_exactly_one_winner() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    let urls: Vec<String> = c.ids().iter().map(|id| c.node(*id).redis_url()).collect();
    for id in c.ids() {
        agent.redis_open(&format!("n{id}"), &c.node(id).redis_url());
    }
    for round in 0..5 {
        let key = format!("lock-{round}");
        let reply = agent.req("setnx_race", json!({ "urls": urls, "connsPerUrl": 4, "key": key }));
        let results = reply.as_array().expect("results");
        assert_eq!(results.len(), 12);
        for r in results {
            assert!(r.get("error").is_none(), "SET NX failed: {r}");
        }
        let winners: Vec<&Value> = results.iter().filter(|r| r["reply"] == json!("OK")).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one SET NX wins: {reply}");
        assert!(
            results.iter().filter(|r| r["reply"] != json!("OK")).all(|r| r["reply"].is_null()),
            "round {round}: the losers get nil: {reply}"
        );
        let winner = winners[0]["conn"].clone();
        for id in c.ids() {
            let got = agent.redis(&format!("n{id}"), &["GET", &key]).expect("GET");
            assert_eq!(got, winner, "round {round}: node {id} reads the winner's value");
        }
    }
    // SETNX (the command) too.
    assert_eq!(agent.redis("n2", &["SETNX", "solo", "2"]), Ok(json!(1)));
    assert_eq!(agent.redis("n3", &["SETNX", "solo", "3"]), Ok(json!(0)));
    assert_eq!(agent.redis("n1", &["GET", "solo"]), Ok(json!("2")));
}

#[test]
fn string_commands_read_the_same_state_from_every_node() {
    let c = Cluster::spawn(3);
    let agent = c.agent();
    for id in c.ids() {
        agent.redis_open(&format!("n{id}"), &c.node(id).redis_url());
    }
    let r = |id: u64, args: &[&str]| {
        agent.redis(&format!("n{id}"), args).unwrap_or_else(|e| panic!("node {id} {args:?}: {e}"))
    };

    assert_eq!(r(1, &["SET", "k", "v1"]), json!("OK"));
    assert_eq!(r(2, &["GET", "k"]), json!("v1"), "a write on node 1 is read on node 2 at once");
    assert_eq!(r(3, &["SET", "k", "v2", "GET"]), json!("v1"));
    assert_eq!(r(1, &["GET", "k"]), json!("v2"));
    assert_eq!(r(2, &["SET", "k", "v3", "NX"]), Value::Null);
    assert_eq!(r(3, &["SET", "missing", "x", "XX"]), Value::Null);
    assert_eq!(r(1, &["EXISTS", "k", "missing", "k"]), json!(2));

    assert_eq!(r(1, &["INCRBY", "n", "10"]), json!(10));
    assert_eq!(r(2, &["DECRBY", "n", "3"]), json!(7));
    assert_eq!(r(3, &["DECR", "n"]), json!(6));
    assert_eq!(r(1, &["INCR", "n"]), json!(7));
    assert_eq!(r(2, &["MGET", "k", "n", "missing"]), json!(["v2", "7", null]));
    let err = agent.redis("n3", &["INCR", "k"]).expect_err("INCR of a string is an error");
    assert!(err.contains("not an integer"), "{err}");

    assert_eq!(r(1, &["EXPIRE", "k", "100"]), json!(1));
    let ttl = r(2, &["TTL", "k"]).as_i64().expect("TTL");
    assert!((1..=100).contains(&ttl), "TTL on node 2 after EXPIRE 100 on node 1: {ttl}");
    assert_eq!(r(3, &["PEXPIRE", "n", "100000"]), json!(1));
    let pttl = r(1, &["PTTL", "n"]).as_i64().expect("PTTL");
    assert!((1..=100_000).contains(&pttl), "PTTL: {pttl}");
    assert_eq!(r(2, &["TTL", "missing"]), json!(-2));

    // A short expiry set on one node ends on every node.
    assert_eq!(r(3, &["SET", "short", "x", "PX", "300"]), json!("OK"));
    wait_for("the key to expire on every node", CONVERGE, || {
        for id in c.ids() {
            let got = agent.redis(&format!("n{id}"), &["GET", "short"])?;
            if !got.is_null() {
                return Err(format!("node {id} still reads {got}"));
            }
        }
        Ok(())
    });

    assert_eq!(r(2, &["DEL", "k", "n", "missing"]), json!(2));
    for id in c.ids() {
        assert_eq!(r(id, &["EXISTS", "k", "n"]), json!(0), "node {id} after DEL");
    }
}
