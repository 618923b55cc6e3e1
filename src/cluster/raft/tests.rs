//! Raft nodes on real QUIC transports over 127.0.0.1, each with its own data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;
use crate::cluster::credentials::NodeCredentials;
use crate::cluster::credentials::tests::{TempDir, cluster};
use crate::cluster::transport::{Incoming, TransportConfig};
use crate::resp::kv::{KvRead, KvReadOp, KvStore, KvWrite, SetCondition};

const WAIT: Duration = Duration::from_secs(10);

fn transport_config(listen: SocketAddr, incarnation: u64) -> TransportConfig {
    let mut config = TransportConfig::new(listen);
    config.incarnation = incarnation;
    config.connect_timeout = Duration::from_secs(2);
    config.idle_timeout = Duration::from_secs(3);
    config.keep_alive = Duration::from_millis(500);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config
}

/// One node: its raft instance, its transport and the task answering its requests.
struct TestNode {
    id: NodeId,
    raft: RaftNode,
    transport: Transport,
    addr: SocketAddr,
    data_dir: PathBuf,
    incarnation: u64,
    server: tokio::task::JoinHandle<()>,
}

/// What the node runtime does with requests: raft and key-value ones go to the raft node.
async fn serve(node: RaftNode, mut inbox: mpsc::Receiver<Incoming>) {
    while let Some(incoming) = inbox.recv().await {
        if let Incoming::Request { from, message, responder } = incoming {
            let node = node.clone();
            tokio::spawn(async move {
                if let Some(reply) = node.handle_message(from, message).await {
                    let _ = responder.reply(&reply).await;
                }
            });
        }
    }
}

fn settings(id: NodeId, addr: SocketAddr, data_dir: &Path) -> RaftSettings {
    let mut settings = RaftSettings::new(id, addr.to_string(), data_dir);
    settings.membership_timeout = Duration::from_secs(5);
    settings
}

async fn start_node(
    creds: &NodeCredentials,
    listen: SocketAddr,
    data_dir: &Path,
    incarnation: u64,
    tweak: impl FnOnce(&mut RaftSettings),
) -> TestNode {
    let config = transport_config(listen, incarnation);
    // A restarted node rebinds its old port once the old socket is gone.
    let mut bound = Transport::bind(config.clone(), creds.clone());
    for _ in 0..50 {
        if bound.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        bound = Transport::bind(config.clone(), creds.clone());
    }
    let (transport, inbox) = bound.expect("bind");
    let addr = transport.local_addr().expect("addr");
    let id = creds.node_id();
    let mut settings = settings(id, addr, data_dir);
    tweak(&mut settings);
    let raft = RaftNode::start(settings, transport.clone()).await.expect("start raft");
    let server = tokio::spawn(serve(raft.clone(), inbox));
    TestNode { id, raft, transport, addr, data_dir: data_dir.to_owned(), incarnation, server }
}

impl TestNode {
    async fn stop(self) -> (SocketAddr, PathBuf, u64) {
        self.raft.shutdown().await;
        self.transport.shutdown(Duration::from_secs(1)).await;
        self.server.abort();
        (self.addr, self.data_dir, self.incarnation)
    }
}

/// A cluster of `ids.len()` nodes: the first initialises, the others join through it.
async fn spawn_cluster(
    label: &str,
    ids: &[NodeId],
    max_voters: usize,
) -> (TempDir, Vec<NodeCredentials>, Vec<TestNode>) {
    let (dir, creds) = cluster(label, ids);
    let mut nodes = Vec::new();
    for (i, c) in creds.iter().enumerate() {
        let data = dir.0.join(format!("data{}", ids[i]));
        let node = start_node(c, SocketAddr::from(([127, 0, 0, 1], 0)), &data, 1, |s| s.max_voters = max_voters).await;
        nodes.push(node);
    }
    assert!(nodes[0].raft.initialize().await.expect("initialize"));
    wait_for("node 1 leads", || nodes[0].raft.status().leader == Some(ids[0])).await;
    for node in &nodes[1..] {
        node.transport.connect(nodes[0].addr, ids[0]).await.expect("connect to the seed");
        node.raft.join_via(ids[0]).await.expect("join");
    }
    (dir, creds, nodes)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn incr(key: &str, delta: i64) -> KvOp {
    KvOp::Write(KvCommand { now_unix_ms: 1_000, op: KvWrite::IncrBy { key: Bytes::from(key.to_owned()), delta } })
}

fn set(key: &str, value: &str) -> KvOp {
    KvOp::Write(KvCommand {
        now_unix_ms: 1_000,
        op: KvWrite::Set {
            key: Bytes::from(key.to_owned()),
            value: Bytes::from(value.to_owned()),
            condition: SetCondition::Always,
            expire_at_unix_ms: None,
            keep_ttl: false,
            get: false,
        },
    })
}

fn get(key: &str) -> KvOp {
    KvOp::Read(KvRead { now_unix_ms: 1_000, op: KvReadOp::Get(Bytes::from(key.to_owned())) })
}

fn bulk(value: &str) -> KvValue {
    KvValue::Bulk(Bytes::from(value.to_owned()))
}

fn leader_of(nodes: &[TestNode]) -> Option<NodeId> {
    let leaders: Vec<NodeId> = nodes.iter().filter(|n| n.raft.status().state == "leader").map(|n| n.id).collect();
    (leaders.len() == 1).then(|| leaders[0])
}

/// Every node applied everything the leader has.
async fn wait_applied(nodes: &[TestNode]) {
    wait_for("every node applied the leader's log", || {
        let Some(leader) = leader_of(nodes) else { return false };
        let target = nodes.iter().find(|n| n.id == leader).and_then(|n| n.raft.status().last_log_index);
        nodes.iter().all(|n| n.raft.status().last_applied == target)
    })
    .await;
}

fn kv_of(node: &TestNode) -> KvStore {
    node.raft.inner.sm.kv()
}

#[test]
fn settings_are_validated() {
    let good = RaftSettings::new(1, "127.0.0.1:7000", "/tmp/x");
    good.validate().expect("defaults are valid");
    good.openraft_config().expect("openraft accepts the defaults");
    let mut bad = good.clone();
    bad.node_id = 0;
    assert!(matches!(bad.validate(), Err(RaftError::Config { field: "node_id", .. })));
    let mut bad = good.clone();
    bad.advertise = "no-port".into();
    assert!(matches!(bad.validate(), Err(RaftError::Config { field: "advertise", .. })));
    let mut bad = good.clone();
    bad.election_timeout_min = bad.heartbeat_interval;
    assert!(bad.validate().is_err());
    let mut bad = good.clone();
    bad.max_voters = 0;
    assert!(bad.validate().is_err());
    let mut bad = good.clone();
    bad.max_batch = 0;
    assert!(matches!(bad.validate(), Err(RaftError::Config { field: "max_batch", .. })));
    let mut bad = good;
    bad.forwards_in_flight = 0;
    assert!(matches!(bad.validate(), Err(RaftError::Config { field: "forwards_in_flight", .. })));
}

#[test]
fn log_commands_and_replies_round_trip_in_both_encodings() {
    let set = KvCommand {
        now_unix_ms: 42,
        op: KvWrite::Set {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"\x00\xffv"),
            condition: SetCondition::IfAbsent,
            expire_at_unix_ms: Some(99),
            keep_ttl: false,
            get: true,
        },
    };
    let incr = KvCommand { now_unix_ms: 43, op: KvWrite::IncrBy { key: Bytes::from_static(b"n"), delta: -2 } };
    let command = LogCommand(vec![set, incr]);
    let packed = rmp_serde::to_vec_named(&command).expect("msgpack");
    assert_eq!(rmp_serde::from_slice::<LogCommand>(&packed).expect("back"), command);
    let json = serde_json::to_vec(&command).expect("json");
    assert_eq!(serde_json::from_slice::<LogCommand>(&json).expect("back"), command);
    for reply in [
        LogReply(None),
        LogReply(Some(vec![KvValue::Integer(-3), KvValue::Array(vec![KvValue::Nil])])),
        LogReply(Some(vec![])),
    ] {
        let packed = rmp_serde::to_vec_named(&reply).expect("msgpack");
        assert_eq!(rmp_serde::from_slice::<LogReply>(&packed).expect("back"), reply);
    }
    // Garbage inside the byte string is an error, not a panic.
    let garbage = rmp_serde::to_vec_named(&vec![ProtoBytes(vec![0xff, 0xff, 0xff])]).expect("msgpack");
    assert!(rmp_serde::from_slice::<LogCommand>(&garbage).is_err());
    // So is a lone byte string where a list of writes belongs.
    let single = rmp_serde::to_vec_named(&ProtoBytes(encode_kv_command(&command.0[0]))).expect("msgpack");
    assert!(rmp_serde::from_slice::<LogCommand>(&single).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_on_concurrent_increments_from_every_node() {
    let (_dir, _creds, nodes) = spawn_cluster("raft-incr", &[1, 2, 3], 5).await;
    wait_for("three voters", || nodes.iter().all(|n| n.raft.status().voters == vec![1, 2, 3])).await;

    // A write through a follower, read back through another node.
    let follower = nodes.iter().find(|n| n.raft.status().state == "follower").expect("a follower");
    assert_eq!(follower.raft.execute(set("greeting", "hello")).await, KvValue::Ok);
    for node in &nodes {
        assert_eq!(node.raft.execute(get("greeting")).await, bulk("hello"), "read on node {}", node.id);
    }

    const TASKS_PER_NODE: usize = 4;
    const INCRS_PER_TASK: usize = 50;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..TASKS_PER_NODE {
            let raft = node.raft.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..INCRS_PER_TASK {
                    let value = raft.execute(incr("counter", 1)).await;
                    assert!(matches!(value, KvValue::Integer(_)), "{value:?}");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("incr task");
    }
    let total = nodes.len() * TASKS_PER_NODE * INCRS_PER_TASK;
    let elapsed = started.elapsed();
    eprintln!(
        "{total} INCRs from 3 nodes x {TASKS_PER_NODE} tasks in {elapsed:?} ({:.0}/s, debug build)",
        total as f64 / elapsed.as_secs_f64()
    );
    for node in &nodes {
        assert_eq!(node.raft.execute(get("counter")).await, bulk(&total.to_string()), "node {}", node.id);
    }
    // Every replica applied the same state.
    wait_applied(&nodes).await;
    let reference = kv_of(&nodes[0]);
    for node in &nodes[1..] {
        assert_eq!(kv_of(node), reference, "node {}", node.id);
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_when_the_leader_stops() {
    let (_dir, _creds, mut nodes) = spawn_cluster("raft-failover", &[1, 2, 3], 5).await;
    wait_for("three voters", || nodes.iter().all(|n| n.raft.status().voters.len() == 3)).await;
    for _ in 0..10 {
        assert!(matches!(nodes[1].raft.execute(incr("n", 1)).await, KvValue::Integer(_)));
    }
    let old_leader = leader_of(&nodes).expect("a leader");
    let old_term = nodes[0].raft.status().term;
    let index = nodes.iter().position(|n| n.id == old_leader).expect("leader index");
    nodes.remove(index).stop().await;

    wait_for("a new leader", || {
        leader_of(&nodes).is_some_and(|l| l != old_leader)
            && nodes.iter().all(|n| n.raft.status().leader.is_some_and(|l| l != old_leader))
    })
    .await;
    assert!(nodes[0].raft.status().term > old_term);
    for node in &nodes {
        for _ in 0..5 {
            assert!(matches!(node.raft.execute(incr("n", 1)).await, KvValue::Integer(_)));
        }
    }
    for node in &nodes {
        assert_eq!(node.raft.execute(get("n")).await, bulk("20"));
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_with_its_state() {
    let (_dir, creds, mut nodes) = spawn_cluster("raft-restart", &[1, 2, 3], 5).await;
    wait_for("three voters", || nodes.iter().all(|n| n.raft.status().voters.len() == 3)).await;
    for i in 0..20 {
        assert_eq!(nodes[i % 3].raft.execute(set(&format!("k{i}"), &format!("v{i}"))).await, KvValue::Ok);
    }
    wait_applied(&nodes).await;
    let node3 = nodes.pop().expect("node 3");
    let term_before = node3.raft.status().term;
    let vote_path = node3.data_dir.join("raft").join("vote");
    assert!(vote_path.exists(), "the vote is on disk");
    let (addr, data_dir, incarnation) = node3.stop().await;

    // The cluster goes on without it (two of three voters).
    for i in 20..30 {
        assert_eq!(nodes[i % 2].raft.execute(set(&format!("k{i}"), &format!("v{i}"))).await, KvValue::Ok);
    }
    let node3 = start_node(&creds[2], addr, &data_dir, incarnation + 1, |_| {}).await;
    // Its own state comes back from disk (openraft reports it once its core runs).
    wait_for("restored metrics", || !node3.raft.status().voters.is_empty()).await;
    let restored = node3.raft.status();
    assert!(restored.term >= term_before, "term {} went back from {term_before}", restored.term);
    assert_eq!(restored.voters, vec![1, 2, 3], "membership reloaded");
    // Joining again is a no-op: the persisted membership already has it at this address.
    node3.raft.join_via(1).await.expect("rejoin");
    nodes.push(node3);
    wait_applied(&nodes).await;
    let reference = kv_of(&nodes[0]);
    assert_eq!(reference.len(), 30);
    assert_eq!(kv_of(&nodes[2]), reference);
    assert_eq!(nodes[2].raft.execute(get("k25")).await, bulk("v25"));
    // One vote per term: every node agrees on the leader of the current term.
    let term = nodes[0].raft.status().term;
    wait_for("one leader in the current term", || {
        nodes.iter().all(|n| n.raft.status().term == term && n.raft.status().leader == leader_of(&nodes))
    })
    .await;
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_nodes_stay_learners_and_leaving_promotes_one() {
    let (_dir, creds, mut nodes) = spawn_cluster("raft-learners", &[1, 2, 3, 4], 3).await;
    wait_for("three voters and one learner", || {
        nodes.iter().all(|n| {
            let status = n.raft.status();
            status.voters == vec![1, 2, 3] && status.learners == vec![4]
        })
    })
    .await;
    assert_eq!(nodes[3].raft.status().state, "learner");
    // A learner forwards like any follower.
    assert_eq!(nodes[3].raft.execute(set("a", "1")).await, KvValue::Ok);
    assert_eq!(nodes[3].raft.execute(get("a")).await, bulk("1"));

    // Voter 2 leaves: learner 4 takes its place.
    nodes[1].raft.leave().await.expect("leave");
    let gone = nodes.remove(1);
    wait_for("voters 1, 3, 4 and no learner", || {
        nodes.iter().all(|n| {
            let status = n.raft.status();
            status.voters == vec![1, 3, 4] && status.learners.is_empty()
        })
    })
    .await;
    let (addr, data_dir, incarnation) = gone.stop().await;

    // Node 2 comes back with its data directory: it starts without raft state (it left) and
    // joins afresh, as a learner since the voters are full.
    let back = start_node(&creds[1], addr, &data_dir, incarnation + 1, |s| s.max_voters = 3).await;
    assert!(back.raft.status().members.is_empty(), "{:?}", back.raft.status());
    back.transport.connect(nodes[0].addr, 1).await.expect("connect");
    back.raft.join_via(1).await.expect("join again");
    nodes.insert(1, back);
    wait_for("node 2 is a learner with the data", || {
        nodes.iter().all(|n| n.raft.status().learners == vec![2]) && kv_of(&nodes[1]).len() == 1
    })
    .await;
    nodes[1].raft.remove_node(2).await.expect("remove node 2");
    wait_for("node 2 removed", || nodes.iter().all(|n| n.raft.status().members.len() == 3 || n.id == 2)).await;
    nodes.remove(1).stop().await;

    // The leader leaves: the others elect a new one and keep serving.
    let leader = leader_of(&nodes).expect("a leader");
    let index = nodes.iter().position(|n| n.id == leader).expect("leader index");
    nodes[index].raft.leave().await.expect("the leader leaves");
    let gone = nodes.remove(index);
    gone.stop().await;
    wait_for("a leader among the remaining two", || {
        leader_of(&nodes).is_some_and(|l| l != leader)
            && nodes.iter().all(|n| !n.raft.status().voters.contains(&leader))
    })
    .await;
    assert_eq!(nodes[0].raft.execute(set("b", "2")).await, KvValue::Ok);
    assert_eq!(nodes[1].raft.execute(get("b")).await, bulk("2"));
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_far_behind_catches_up_from_a_snapshot_and_journals_stay_compact() {
    let (dir, creds) = cluster("raft-snapshot", &[1, 2, 3]);
    let small = |s: &mut RaftSettings| {
        s.snapshot_every_logs = 40;
        s.logs_kept_after_snapshot = 5;
    };
    let mut nodes = Vec::new();
    for c in &creds {
        let data = dir.0.join(format!("data{}", c.node_id()));
        nodes.push(start_node(c, SocketAddr::from(([127, 0, 0, 1], 0)), &data, 1, small).await);
    }
    assert!(nodes[0].raft.initialize().await.expect("initialize"));
    wait_for("node 1 leads", || nodes[0].raft.status().leader == Some(1)).await;
    for node in &nodes[1..] {
        node.transport.connect(nodes[0].addr, 1).await.expect("connect");
        node.raft.join_via(1).await.expect("join");
    }
    let node3 = nodes.pop().expect("node 3");
    let node3_last = node3.raft.status().last_log_index.expect("node 3 has a log");
    let (addr, data_dir, incarnation) = node3.stop().await;
    for i in 0..300 {
        assert_eq!(nodes[i % 2].raft.execute(set(&format!("k{i}"), "v")).await, KvValue::Ok);
    }
    wait_for("a snapshot past the writes", || {
        nodes.iter().all(|n| n.raft.status().snapshot_index.is_some_and(|i| i > 200))
    })
    .await;
    for node in &nodes {
        let records = store::tests::journal_records(&node.data_dir.join("raft").join("log"));
        // 300 writes took at least 600 records (entries and commit marks) before compaction.
        assert!(records < 400, "node {} journal holds {records} records", node.id);
    }

    // Node 3 missed entries the others no longer have in their logs: it gets a snapshot.
    let purged = nodes[0].raft.metrics_receiver().borrow().purged.map(|p| p.index);
    assert!(purged.is_some_and(|p| p > node3_last + 1), "leader purged up to {purged:?}, node 3 has {node3_last}");
    let node3 = start_node(&creds[2], addr, &data_dir, incarnation + 1, small).await;
    nodes.push(node3);
    wait_applied(&nodes).await;
    assert_eq!(kv_of(&nodes[2]).len(), 300);
    assert_eq!(kv_of(&nodes[2]), kv_of(&nodes[0]));
    assert!(data_dir.join("raft").join("snapshot").exists());
    // And restarts from that snapshot.
    let node3 = nodes.pop().expect("node 3");
    let (addr, data_dir, incarnation) = node3.stop().await;
    let node3 = start_node(&creds[2], addr, &data_dir, incarnation + 1, small).await;
    assert!(kv_of(&node3).len() >= 250, "restored {} keys from the snapshot", kv_of(&node3).len());
    nodes.push(node3);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_answers_cluster_down() {
    let (dir, creds) = cluster("raft-down", &[1]);
    let node = start_node(&creds[0], SocketAddr::from(([127, 0, 0, 1], 0)), &dir.0.join("data"), 1, |s| {
        s.request_timeout = Duration::from_millis(300);
    })
    .await;
    // Never initialised: no leader.
    assert_eq!(node.raft.execute(get("x")).await, KvValue::Error(CLUSTER_DOWN.into()));
    let forwarded =
        node.raft.handle_kv_request(2, KvRequest { request_id: 9, ops: vec![incr("x", 1), get("x")] }).await;
    let not_leader = KvValue::NotLeader { leader_id: None, leader_addr: String::new() };
    assert_eq!(forwarded, KvReply { request_id: 9, values: vec![not_leader.clone(), not_leader] });
    // Garbage from a peer gets an empty (undecodable) reply, never a panic.
    for kind in [
        RaftRpcKind::AppendEntries,
        RaftRpcKind::Vote,
        RaftRpcKind::InstallSnapshot,
        RaftRpcKind::FullSnapshot,
        RaftRpcKind::Membership,
    ] {
        let garbage = RaftPayload {
            kind,
            encoding: crate::cluster::message::PayloadEncoding::Msgpack,
            payload: Bytes::from_static(b"\xc1\xff garbage"),
        };
        let reply = node.raft.handle_rpc(2, garbage).await;
        assert_eq!(reply.kind, kind);
        assert!(reply.payload.is_empty(), "{kind:?}");
        assert!(network::decode_payload::<Result<openraft::raft::VoteResponse<NodeId>, String>>(&reply).is_err());
    }
    // A membership request that is well-formed but sent to a node that is not the leader.
    let join =
        network::encode_payload(RaftRpcKind::Membership, &MembershipRequest::Join { node_id: 2, addr: "h:1".into() });
    let reply = node.raft.handle_rpc(2, join).await;
    assert!(matches!(
        network::decode_payload::<MembershipReply>(&reply),
        Ok(MembershipReply::NotLeader { leader: None })
    ));
    assert!(node.raft.initialize().await.expect("initialize"));
    assert!(!node.raft.initialize().await.expect("second initialize is a no-op"));
    wait_for("leader", || node.raft.status().state == "leader").await;
    assert_eq!(node.raft.execute(incr("x", 5)).await, KvValue::Integer(5));
    node.stop().await;
}

/// Writes `records` into a journal file the way the log store does.
fn journal_file(path: &Path, records: &[RecordBytes]) {
    let mut content = b"IOSWLOG1".to_vec();
    for record in records {
        content.extend_from_slice(&record.0);
    }
    std::fs::write(path, content).expect("write journal");
}

struct RecordBytes(Vec<u8>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_restarts_from_its_journal_despite_a_torn_tail() {
    let (dir, creds) = cluster("raft-torn", &[1]);
    let data = dir.0.join("data");
    let node = start_node(&creds[0], SocketAddr::from(([127, 0, 0, 1], 0)), &data, 1, |_| {}).await;
    assert!(node.raft.initialize().await.expect("initialize"));
    wait_for("leader", || node.raft.status().state == "leader").await;
    for _ in 0..25 {
        assert!(matches!(node.raft.execute(incr("c", 2)).await, KvValue::Integer(_)));
    }
    let (addr, data_dir, incarnation) = node.stop().await;
    let log = data_dir.join("raft").join("log");

    // A crash in the middle of the next append: a header promising more than was written.
    let good_len = std::fs::metadata(&log).expect("log").len();
    let mut torn = std::fs::read(&log).expect("read");
    torn.extend_from_slice(&200u64.to_le_bytes());
    torn.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
    std::fs::write(&log, &torn).expect("tear");

    let node = start_node(&creds[0], addr, &data_dir, incarnation + 1, |_| {}).await;
    assert_eq!(std::fs::metadata(&log).expect("log").len(), good_len, "the torn tail is cut off");
    wait_for("leader again", || node.raft.status().state == "leader").await;
    assert_eq!(node.raft.execute(get("c")).await, bulk("50"));
    assert_eq!(node.raft.execute(incr("c", 1)).await, KvValue::Integer(51));
    let (_, data_dir, _) = node.stop().await;

    // Damage before the end is not a torn write: the node refuses to start and names the file.
    let mut damaged = std::fs::read(&log).expect("read");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    std::fs::write(&log, &damaged).expect("damage");
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let (transport, _inbox) = Transport::bind(transport_config(any_port, 9), creds[0].clone()).expect("bind");
    let addr = transport.local_addr().expect("addr");
    let error = RaftNode::start(settings(1, addr, &data_dir), transport.clone()).await.expect_err("corrupt log");
    assert!(
        matches!(&error, RaftError::Storage(StoreError::Corrupt { path, .. }) if path.ends_with("raft/log")),
        "{error}"
    );
    assert!(error.to_string().contains("raft/log"), "{error}");
    transport.shutdown(Duration::from_secs(1)).await;
}

mod journal {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::super::store::tests::{append_record, committed_record, purge_record, truncate_record};
    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(LogCommand(vec![KvCommand {
                now_unix_ms: index,
                op: KvWrite::IncrBy { key: Bytes::from_static(b"k"), delta: 1 },
            }])),
        }
    }

    #[tokio::test]
    async fn replay_applies_truncate_and_purge_and_reloads_the_vote() {
        let dir = TempDir::new("raft-journal");
        let raft_dir = dir.0.join("raft");
        std::fs::create_dir_all(&raft_dir).expect("dir");
        let entries: Vec<_> = (1..=6).map(|i| entry(1, i)).collect();
        journal_file(
            &raft_dir.join("log"),
            &[
                RecordBytes(append_record(&entries[..4])),
                // A new leader overwrote 3 and 4.
                RecordBytes(truncate_record(3)),
                RecordBytes(append_record(&[entry(2, 3), entry(2, 4), entry(2, 5)])),
                RecordBytes(purge_record(LogId::new(CommittedLeaderId::new(1, 1), 1))),
                RecordBytes(committed_record(Some(LogId::new(CommittedLeaderId::new(2, 1), 4)))),
            ],
        );
        let (mut store, had_state, thread) = LogStore::open(&raft_dir).expect("open");
        assert!(had_state);
        use openraft::RaftLogReader as _;
        use openraft::storage::RaftLogStorage as _;
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1));
        assert_eq!(state.last_log_id, Some(LogId::new(CommittedLeaderId::new(2, 1), 5)));
        let read = store.try_get_log_entries(0..10).await.expect("read");
        let ids: Vec<(u64, u64)> = read.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect();
        assert_eq!(ids, [(1, 2), (2, 3), (2, 4), (2, 5)]);
        assert_eq!(store.read_committed().await.expect("committed").map(|l| l.index), Some(4));
        assert_eq!(store.read_vote().await.expect("vote"), None);

        // A saved vote survives a restart.
        let vote = openraft::Vote::new(7, 3);
        store.save_vote(&vote).await.expect("save vote");
        drop(store);
        thread.join().expect("journal thread");
        let (mut store, _, thread) = LogStore::open(&raft_dir).expect("reopen");
        assert_eq!(store.read_vote().await.expect("vote"), Some(vote));
        drop(store);
        thread.join().expect("journal thread");
    }

    #[test]
    fn a_zero_filled_or_short_tail_is_torn_but_a_damaged_middle_is_corrupt() {
        let dir = TempDir::new("raft-journal-tail");
        let raft_dir = dir.0.join("raft");
        std::fs::create_dir_all(&raft_dir).expect("dir");
        let log = raft_dir.join("log");
        let first = append_record(&[entry(1, 1), entry(1, 2)]);
        let second = append_record(&[entry(1, 3)]);

        // Zeros after the last record (a crash after the file grew but before data landed).
        let mut content = b"IOSWLOG1".to_vec();
        content.extend_from_slice(&first);
        let good = content.len() as u64;
        content.extend_from_slice(&[0; 40]);
        std::fs::write(&log, &content).expect("write");
        let (store, _, thread) = LogStore::open(&raft_dir).expect("zero tail is torn");
        drop(store);
        thread.join().expect("thread");
        assert_eq!(std::fs::metadata(&log).expect("log").len(), good);

        // The last record's checksum fails: torn.
        let mut content = b"IOSWLOG1".to_vec();
        content.extend_from_slice(&first);
        let mut bad_last = second.clone();
        let last = bad_last.len() - 1;
        bad_last[last] ^= 1;
        content.extend_from_slice(&bad_last);
        std::fs::write(&log, &content).expect("write");
        let (store, _, thread) = LogStore::open(&raft_dir).expect("bad last record is torn");
        drop(store);
        thread.join().expect("thread");
        assert_eq!(std::fs::metadata(&log).expect("log").len(), good);

        // A record in the middle fails: corrupt, with the file and offset.
        let mut content = b"IOSWLOG1".to_vec();
        let mut bad_first = first.clone();
        bad_first[20] ^= 1;
        content.extend_from_slice(&bad_first);
        content.extend_from_slice(&second);
        std::fs::write(&log, &content).expect("write");
        match LogStore::open(&raft_dir) {
            Err(StoreError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, log);
                assert_eq!(offset, 8);
            }
            Err(other) => panic!("expected corrupt, got {other}"),
            Ok(_) => panic!("expected corrupt, got a store"),
        }

        // Not a journal at all.
        std::fs::write(&log, b"something else entirely").expect("write");
        assert!(matches!(LogStore::open(&raft_dir), Err(StoreError::Corrupt { offset: 0, .. })));
    }
}

#[test]
fn a_data_dir_is_used_by_one_process_at_a_time() {
    let dir = TempDir::new("raft-lock");
    let held = super::store::lock_dir(&dir.0).expect("first lock");
    let second = super::store::lock_dir(&dir.0);
    assert!(matches!(second, Err(StoreError::InUse { .. })), "second lock: {second:?}");
    assert!(second.err().map(|e| e.to_string()).unwrap_or_default().contains("in use by another process"));
    drop(held);
    super::store::lock_dir(&dir.0).expect("the lock is free again");
}

/// The next key-value request a stand-in leader receives (skipping link messages).
async fn next_kv_request(inbox: &mut mpsc::Receiver<Incoming>) -> (KvRequest, crate::cluster::transport::Responder) {
    loop {
        let incoming = tokio::time::timeout(WAIT, inbox.recv()).await.expect("a request in time").expect("inbox open");
        if let Incoming::Request { message: Message::KvRequest(request), responder, .. } = incoming {
            return (request, responder);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_operations_travel_in_bounded_batches_and_each_gets_its_own_answer() {
    // Node 1 forwards to "leader" 9, a bare transport standing in for the leader: it sees the
    // requests as they arrive and answers them by hand.
    let (dir, creds) = cluster("raft-forward", &[1, 9]);
    let node = start_node(&creds[0], SocketAddr::from(([127, 0, 0, 1], 0)), &dir.0.join("data1"), 1, |s| {
        s.max_batch = 4;
        s.forwards_in_flight = 2;
    })
    .await;
    let (leader, mut inbox) =
        Transport::bind(transport_config(SocketAddr::from(([127, 0, 0, 1], 0)), 1), creds[1].clone()).expect("bind");
    node.transport.connect(leader.local_addr().expect("addr"), 9).await.expect("connect to the stand-in");

    const OPS: usize = 12;
    let mut calls = Vec::new();
    for i in 0..OPS {
        let raft = node.raft.clone();
        let op = if i % 3 == 2 { get("k") } else { incr("k", 1) };
        calls.push(tokio::spawn(async move {
            let attempt = raft.forward(9, &op, Instant::now() + WAIT).await;
            (op, attempt)
        }));
    }
    // At most `forwards_in_flight` requests are unanswered, each with at most `max_batch` ops.
    let (first, first_reply) = next_kv_request(&mut inbox).await;
    let (second, second_reply) = next_kv_request(&mut inbox).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !matches!(inbox.try_recv(), Ok(Incoming::Request { message: Message::KvRequest(_), .. })),
        "a third request while two are unanswered"
    );
    for request in [&first, &second] {
        assert!((1..=4).contains(&request.ops.len()), "{} ops in one request", request.ops.len());
    }

    // Each operation gets the value at its own position; a NotLeader one did not run here and is
    // retried by the caller, never answered with another operation's value.
    let answer = |request: &KvRequest, base: i64| -> Vec<KvValue> {
        (0..request.ops.len())
            .map(|i| match i {
                1 => KvValue::NotLeader { leader_id: Some(3), leader_addr: "h:3".into() },
                _ => KvValue::Integer(base + i as i64),
            })
            .collect()
    };
    let mut answered = vec![(first.clone(), answer(&first, 100))];
    first_reply
        .reply(&Message::KvReply(KvReply { request_id: first.request_id, values: answer(&first, 100) }))
        .await
        .expect("reply");
    // The freed slot carries the operations queued meanwhile.
    let (third, third_reply) = next_kv_request(&mut inbox).await;
    assert!((1..=4).contains(&third.ops.len()));
    answered.push((third.clone(), answer(&third, 300)));
    third_reply
        .reply(&Message::KvReply(KvReply { request_id: third.request_id, values: answer(&third, 300) }))
        .await
        .expect("reply");

    // The stand-in goes away with the second request unanswered: its writes may have run there
    // and are answered with an error saying so; its reads are retried. Later ones were never
    // sent (or are retried).
    leader.shutdown(Duration::from_millis(100)).await;
    drop(second_reply);
    let unanswered: Vec<KvOp> = second.ops.clone();

    let mut expected: Vec<(KvOp, Attempt)> = Vec::new();
    for (request, values) in &answered {
        for (op, value) in request.ops.iter().zip(values) {
            expected.push((
                op.clone(),
                match value {
                    KvValue::NotLeader { leader_id, .. } => Attempt::Retry(*leader_id),
                    value => Attempt::Done(value.clone()),
                },
            ));
        }
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.expect("forward task"));
    }
    // Every value handed out by the stand-in reached exactly one caller, with its own op kind.
    for (op, attempt) in &expected {
        if let Attempt::Done(KvValue::Integer(n)) = attempt {
            let got: Vec<_> =
                results.iter().filter(|(_, a)| matches!(a, Attempt::Done(KvValue::Integer(m)) if m == n)).collect();
            assert_eq!(got.len(), 1, "value {n} reached {} callers", got.len());
            assert_eq!(&got[0].0, op, "value {n} reached the caller of another operation");
        }
    }
    let retried = results.iter().filter(|(_, a)| matches!(a, Attempt::Retry(_))).count();
    assert!(retried >= 2, "each answered request had one NotLeader operation: {retried} retried");
    for (op, attempt) in &results {
        match (op, attempt) {
            (_, Attempt::Done(KvValue::Integer(_)) | Attempt::Retry(_)) => {}
            (KvOp::Write(_), Attempt::Done(KvValue::Error(e))) => {
                assert!(e.contains("may have been applied"), "{e}");
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    // The writes of the request left unanswered (and of any sent after the third answer) are
    // uncertain; no answered write is.
    let uncertain = results.iter().filter(|(_, a)| matches!(a, Attempt::Done(KvValue::Error(_)))).count();
    let writes = |ops: &[KvOp]| ops.iter().filter(|op| matches!(op, KvOp::Write(_))).count();
    let answered_writes: usize = answered.iter().map(|(request, _)| writes(&request.ops)).sum();
    let all_writes = results.iter().filter(|(op, _)| matches!(op, KvOp::Write(_))).count();
    assert!(
        (writes(&unanswered)..=all_writes - answered_writes).contains(&uncertain),
        "{uncertain} uncertain writes; {} in the unanswered request",
        writes(&unanswered)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_up_to_max_batch() {
    let entries_for = |max_batch: usize| async move {
        let (dir, creds) = cluster("raft-batch", &[1]);
        let node = start_node(&creds[0], SocketAddr::from(([127, 0, 0, 1], 0)), &dir.0.join("data"), 1, |s| {
            s.max_batch = max_batch;
        })
        .await;
        assert!(node.raft.initialize().await.expect("initialize"));
        wait_for("leader", || node.raft.status().state == "leader").await;
        assert_eq!(node.raft.execute(incr("n", 0)).await, KvValue::Integer(0));
        let before = node.raft.status().last_log_index.expect("a log");
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let raft = node.raft.clone();
            tasks.push(tokio::spawn(async move { raft.execute(incr("n", 1)).await }));
        }
        let mut values = Vec::new();
        for task in tasks {
            match task.await.expect("incr task") {
                KvValue::Integer(n) => values.push(n),
                other => panic!("INCR answered {other:?}"),
            }
        }
        values.sort_unstable();
        assert_eq!(values, (1..=32).collect::<Vec<i64>>(), "each INCR applied once, in some order");
        let entries = node.raft.status().last_log_index.expect("a log") - before;
        node.stop().await;
        drop(dir);
        entries
    };
    assert_eq!(entries_for(1).await, 32, "max_batch 1: one entry per write");
    let shared = entries_for(256).await;
    assert!(shared < 32, "32 concurrent writes took {shared} entries");
}
