//! Presence on three nodes: `GET users:count` on any node's Redis port is the cluster-wide number
//! of sockets, the pages are told it, and a node killed with SIGKILL leaves the count once the
//! failure detector declares it dead.

use std::time::{Duration, Instant};

use ioswarm_cluster_tests::{CONVERGE, Cluster, wait_for};
use serde_json::{Value, json};

const CONFIG: &str = "[[presence]]\nkey = \"users:count\"\nevent = \"users:count\"\n";

fn count_on(agent: &ioswarm_cluster_tests::Agent, id: u64) -> Result<u64, String> {
    match agent.redis(&format!("n{id}"), &["GET", "users:count"])? {
        Value::String(s) => s.parse().map_err(|e| format!("{s:?}: {e}")),
        other => Err(format!("GET users:count on node {id}: {other}")),
    }
}

#[test]
fn users_count_is_cluster_wide_and_a_killed_node_leaves_it() {
    let dir = std::env::temp_dir().join(format!("ioswarm-presence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("presence.toml");
    std::fs::write(&config, CONFIG).expect("config file");
    let c = Cluster::builder(3).arg("--config").arg(config.to_str().expect("utf-8 path")).spawn();
    c.wait_converged(CONVERGE);
    let agent = c.agent();
    for id in c.ids() {
        agent.redis_open(&format!("n{id}"), &c.node(id).redis_url());
    }

    let mut clients = Vec::new();
    for id in c.ids() {
        // Only their own node's address: the clients of the killed node do not come back.
        clients.push(agent.connect_with(&c.urls(&[id]), 100, json!({ "prefix": format!("n{id}-") })));
    }
    wait_for("users:count = 300 on every node", CONVERGE, || {
        for id in c.ids() {
            let n = count_on(&agent, id)?;
            if n != 300 {
                return Err(format!("node {id} says {n}"));
            }
        }
        Ok(())
    });
    // Every page was told the cluster-wide value (each by its own node).
    wait_for("pages told 300", CONVERGE, || {
        let events = agent.events(&[clients[0][0].clone(), clients[2][0].clone()], "users:count");
        let last: Vec<Option<&Value>> = events.values().map(|e| e.last()).collect();
        if last.iter().all(|v| *v == Some(&json!([300]))) { Ok(()) } else { Err(format!("last events {last:?}")) }
    });

    let killed = Instant::now();
    c.kill(3);
    wait_for("users:count = 200 on the survivors", Duration::from_secs(10), || {
        for id in [1, 2] {
            let n = count_on(&agent, id)?;
            if n != 200 {
                return Err(format!("node {id} says {n}"));
            }
        }
        Ok(())
    });
    eprintln!("presence: the killed node's 100 sockets left the count after {:?}", killed.elapsed());
    wait_for("pages on the survivors told 200", CONVERGE, || {
        let events = agent.events(&[clients[0][0].clone(), clients[1][0].clone()], "users:count");
        let last: Vec<Option<&Value>> = events.values().map(|e| e.last()).collect();
        if last.iter().all(|v| *v == Some(&json!([200]))) { Ok(()) } else { Err(format!("last events {last:?}")) }
    });

    // New clients on the survivors are counted by every node, once.
    let more = agent.connect_with(&c.urls(&[1, 2]), 30, json!({ "prefix": "more-" }));
    agent.wait_ready(&more, CONVERGE);
    wait_for("users:count = 230 on the survivors", CONVERGE, || {
        for id in [1, 2] {
            let n = count_on(&agent, id)?;
            if n != 230 {
                return Err(format!("node {id} says {n}"));
            }
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
}
