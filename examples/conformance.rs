//! The server the upstream Engine.IO / Socket.IO protocol test suites expect
//! (see `docs/conformance.md`): on `localhost:3000` (IPv4 and IPv6), a raw
//! Engine.IO echo endpoint at `/engine.io/` and Socket.IO at `/socket.io/`
//! with namespaces `/` and `/custom`.
//!
//! ```text
//! cargo run --example conformance             # localhost:3000
//! cargo run --example conformance -- 0        # a free port (printed)
//! ```
//!
//! Prints `listening on <port>` once it accepts connections, like the Node
//! reference server (`tests/reference/conformance-server.mjs`).
//!
//! The integration tests include this file as a module and call [`start`].

use std::sync::Arc;
use std::time::Duration;

use ioswarm::engineio::{CloseReason, Connection, Cors, Engine, EngineConfig, Handler, Message};
use ioswarm::http::{ListenerLimits, Router};
use ioswarm::socketio::{NamespacePolicy, Server, SocketIoConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Echoes every Engine.IO message back, text as text and binary as binary.
#[derive(Debug)]
pub struct Echo;

impl Handler for Echo {
    type State = ();

    fn on_open(&self, _conn: &Arc<Connection<()>>) {}

    fn on_message(&self, conn: &Arc<Connection<()>>, msg: Message) {
        match msg {
            Message::Text(text) => {
                conn.send_text(std::str::from_utf8(&text).unwrap_or_default());
            }
            Message::Binary(data) => {
                conn.send_binary(data);
            }
        }
    }

    fn on_close(&self, _conn: &Arc<Connection<()>>, _reason: CloseReason) {}
}

/// The settings the test suites are written against.
pub fn engine_config() -> EngineConfig {
    EngineConfig {
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        cors: Cors::Any,
        ..EngineConfig::default()
    }
}

/// Builds the two endpoints.
pub fn router() -> Router {
    let engine = Engine::new(engine_config(), Echo);
    let io = Server::new(SocketIoConfig {
        engine: engine_config(),
        connect_timeout: Duration::from_millis(1000),
        namespaces: NamespacePolicy::Registered,
        ..SocketIoConfig::default()
    });
    for name in ["/", "/custom"] {
        let ns = io.of(name);
        ns.on_connect(|socket| async move {
            let _ = socket.emit("auth", socket.auth().clone());
        });
        ns.on("message", |socket, event| async move {
            let _ = socket.emit("message-back", event.payload);
        });
        ns.on("message-with-ack", |_socket, event| async move {
            if let Some(ack) = event.ack {
                let _ = ack.send(event.payload);
            }
        });
    }
    Router::new().route("/engine.io/", engine).route("/socket.io/", io)
}

/// Serves the conformance endpoints on `listener` until the process ends.
pub async fn start(listener: TcpListener) {
    ioswarm::http::serve(
        listener,
        router(),
        ListenerLimits::default(),
        None,
        CancellationToken::new(),
        TaskTracker::new(),
    )
    .await;
}

/// The port: the first argument, else `$PORT`, else 3000 (0 picks a free one).
fn port() -> std::io::Result<u16> {
    let arg = std::env::args().nth(1).or_else(|| std::env::var("PORT").ok());
    match arg {
        Some(p) => {
            p.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("port {p:?}: {e}")))
        }
        None => Ok(3000),
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let v4 = TcpListener::bind(("127.0.0.1", port()?)).await?;
    // IPv6 on the same port (the one picked for IPv4 when asked for 0).
    let port = v4.local_addr()?.port();
    let v6 = TcpListener::bind(("::1", port)).await;
    println!("listening on {port}");
    match v6 {
        Ok(v6) => {
            tokio::join!(start(v4), start(v6));
        }
        Err(err) => {
            eprintln!("IPv6 loopback unavailable ({err}); serving IPv4 only");
            start(v4).await;
        }
    }
    Ok(())
}
