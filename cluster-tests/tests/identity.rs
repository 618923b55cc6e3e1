//! Identity on three nodes: clients authenticate with an HS256 JWT (`[auth]`), join `user:<sub>`
//! from `rooms_on_connect`, and a Redis emitter publishing into another node reaches every tab
//! of that user and nobody else; a `unique` presence key counts users, not tabs, cluster-wide.

use std::time::{SystemTime, UNIX_EPOCH};

use ioswarm_cluster_tests::{CONVERGE, Cluster, QUIET, quiet, wait_for};
use serde_json::{Value, json};

const SECRET: &str = "cluster-test-secret";

fn token(sub: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("a token")
}

#[test]
fn a_users_tabs_on_every_node_get_what_is_sent_to_user_sub() {
    let dir = std::env::temp_dir().join(format!("ioswarm-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("identity.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\njwt_secret = \"{SECRET}\"\nrooms_on_connect = [\"user:{{sub}}\"]\n\
             [[presence]]\nkey = \"users:online\"\nunique = \"sub\"\n\
             [[presence]]\nkey = \"tabs:open\"\n"
        ),
    )
    .expect("config file");
    let c = Cluster::builder(3).arg("--config").arg(config.to_str().expect("utf-8 path")).spawn();
    c.wait_converged(CONVERGE);
    let agent = c.agent();
    let alice = json!({ "auth": { "token": token("alice") } });
    let bob = json!({ "auth": { "token": token("bob") } });
    // Alice has a tab on each node, two on node 1; Bob one on node 3.
    let mut alice_tabs = agent.connect_with(&c.urls(&[1]), 2, merge(&alice, "alice-n1-"));
    alice_tabs.extend(agent.connect_with(&c.urls(&[2]), 1, merge(&alice, "alice-n2-")));
    alice_tabs.extend(agent.connect_with(&c.urls(&[3]), 1, merge(&alice, "alice-n3-")));
    let bob_tabs = agent.connect_with(&c.urls(&[3]), 1, merge(&bob, "bob-n3-"));
    let all: Vec<String> = alice_tabs.iter().chain(&bob_tabs).cloned().collect();
    agent.wait_ready(&all, CONVERGE);
    c.wait_converged(CONVERGE);

    // The claims are each socket's data, seen from any node.
    let sockets = c.admin_json(2, "GET", "/v1/sockets?room=user:alice", None);
    let subs: Vec<&Value> = sockets["sockets"].as_array().expect("sockets").iter().map(|s| &s["data"]["sub"]).collect();
    assert_eq!(subs, vec![&json!("alice"); 4], "{sockets}");

    // An emitter publishing into node 3 reaches Alice's four tabs, on every node, once each.
    agent.emitter(&c.node(3).redis_url(), json!({ "op": "emit", "to": ["user:alice"], "event": "dm", "args": ["hi"] }));
    let got = agent.expect_once(&all, "dm", &alice_tabs);
    for args in got.values() {
        assert_eq!(args, &json!(["hi"]));
    }
    quiet(QUIET);
    assert_eq!(agent.counts(&bob_tabs, "dm").values().sum::<u64>(), 0, "Bob got Alice's message");

    // Users, not tabs: 2 users, 5 tabs, on every node.
    for id in c.ids() {
        agent.redis_open(&format!("n{id}"), &c.node(id).redis_url());
    }
    wait_for("users:online = 2 and tabs:open = 5 on every node", CONVERGE, || {
        for id in c.ids() {
            let conn = format!("n{id}");
            let users = agent.redis(&conn, &["GET", "users:online"])?;
            let tabs = agent.redis(&conn, &["GET", "tabs:open"])?;
            if (users.clone(), tabs.clone()) != (json!("2"), json!("5")) {
                return Err(format!("node {id}: users {users}, tabs {tabs}"));
            }
        }
        Ok(())
    });

    let _ = std::fs::remove_dir_all(&dir);
}

fn merge(options: &Value, prefix: &str) -> Value {
    let mut v = options.clone();
    v["prefix"] = json!(prefix);
    v
}
