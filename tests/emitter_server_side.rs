//! `serverSideEmit` from the real npm `@socket.io/redis-emitter` (over node-redis 4) reaches
//! the library's server-side handlers through the embedded Redis-protocol broker.
//!
//! Needs `npm ci` in `tests/emitter` (done by `.ci/run`). Requests travel as JSON, so binary
//! arguments arrive as `{"type":"Buffer","data":[…]}` objects, exactly as Node's adapter gets them.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ioswarm::socketio::{Payload, Server, SocketIoConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test]
async fn server_side_emit_reaches_namespace_handlers() {
    let io = Server::new(SocketIoConfig::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, String, Payload)>();
    for nsp in ["/", "/custom"] {
        let tx = tx.clone();
        io.of(nsp).on_server_side_any(move |event, payload| {
            let tx = tx.clone();
            let nsp = nsp.to_owned();
            async move {
                let _ = tx.send((nsp, event, payload));
            }
        });
    }

    let broker = Arc::new(ioswarm::resp::Broker::new());
    broker.set_publish_hook(ioswarm::emitter::bridge(io.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let shutdown = CancellationToken::new();
    tokio::spawn(ioswarm::resp::serve(
        listener,
        broker,
        ioswarm::resp::RedisConfig::default(),
        shutdown.clone(),
        TaskTracker::new(),
    ));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/emitter/server-side-emit.mjs");
    let status = tokio::task::spawn_blocking(move || Command::new("node").arg(script).arg(port.to_string()).status())
        .await
        .expect("join")
        .expect("node must be installed, with `npm ci` run in tests/emitter");
    assert!(status.success(), "the emitter script failed: {status}");

    let mut got = Vec::new();
    while got.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("both server-side events within 5 s")
            .expect("channel open");
        got.push(item);
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let (nsp, event, payload) = &got[0];
    assert_eq!((nsp.as_str(), event.as_str()), ("/", "hello"));
    assert_eq!(payload.args, vec![serde_json::json!(1), serde_json::json!("two"), serde_json::json!({"three": [3]})]);
    let (nsp, event, payload) = &got[1];
    assert_eq!((nsp.as_str(), event.as_str()), ("/custom", "ping"));
    // Requests travel as JSON, so a Buffer arrives the way Node's adapter sees it too.
    assert_eq!(payload.args, vec![serde_json::json!({"type": "Buffer", "data": [1, 2, 3]})]);
    shutdown.cancel();
}
