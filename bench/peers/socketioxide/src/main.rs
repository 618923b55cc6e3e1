//! socketioxide peer server for the ioswarm benchmarks.
//!
//! Usage: `socketioxide-peer [--listen HOST:PORT]` (default 127.0.0.1:0; env `PEER_LISTEN` too).
//!
//! Speaks the same contract as the ioswarm binary for the events the benchmarks use
//! (docs/binary-spec.md), with client rooms and client relay always on:
//! - `ioswarm:join  (room | [rooms], ack)` → `ack({"rooms": [every room of the socket, sorted]})`
//! - `ioswarm:leave (room | [rooms], ack)` → same shape
//! - `ioswarm:echo  (arg, ack)`        → `ack(arg)`
//! - `ioswarm:to    (room, event, arg, ack?)` → broadcasts `event(arg)` to `room` except the
//!   sender, then `ack({"recipients": n})`; `ack({"error": "forbidden"})` when the sender is not in
//!   `room`.
//!
//! socketioxide's `Data<T>` extractor takes the first argument, or a fixed-size tuple: this peer
//! relays and echoes exactly one argument (all the benchmarks send), where ioswarm and the Node
//! peer take any number.
//! - any other event is ignored (acked with no arguments when the client asked for an ack).
//!
//! Once listening it prints exactly one line to stdout:
//! `socketioxide-peer ready socketio=127.0.0.1:41234 pid=12345`.
//! SIGINT / SIGTERM stop it (exit status 0).

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::handler::{FromMessageParts, Value as CoreValue};
use socketioxide::socket::Socket;

/// `"room"` or `["a", "b"]` → the room names; anything else → `None`.
fn room_list(arg: &Value) -> Option<Vec<String>> {
    match arg {
        Value::String(room) => Some(vec![room.clone()]),
        Value::Array(items) => items.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

fn other_rooms(socket: &SocketRef) -> Vec<String> {
    let own = socket.id.to_string();
    let mut rooms: Vec<String> = socket.rooms().into_iter().map(|r| r.to_string()).filter(|r| *r != own).collect();
    rooms.sort();
    rooms
}

fn send_ack(ack: AckSender, value: &Value) {
    // Fails only when the client asked for no ack or is gone: nothing to do then.
    let _ = ack.send(value);
}

async fn relay(socket: SocketRef, room: String, event: String, arg: Value, ack: AckSender, asked: bool) {
    if !socket.rooms().iter().any(|r| *r == room) {
        send_ack(ack, &json!({"error": "forbidden"}));
        return;
    }
    if socket.to(room.clone()).emit(&event, &arg).await.is_err() {
        send_ack(ack, &json!({"error": "broadcast failed"}));
        return;
    }
    // Counting recipients costs a walk over the room: only when an ack was asked for.
    if asked {
        let recipients = socket.within(room).sockets().len().saturating_sub(1);
        send_ack(ack, &json!({"recipients": recipients}));
    }
}

/// Whether the client asked for an ack (AckSender has no public query for it).
struct AckAsked(bool);

impl<A: Adapter> FromMessageParts<A> for AckAsked {
    type Error = Infallible;
    fn from_message_parts(_: &Arc<Socket<A>>, _: &mut CoreValue, ack_id: &Option<i64>) -> Result<Self, Infallible> {
        Ok(Self(ack_id.is_some()))
    }
}

async fn on_connect(socket: SocketRef) {
    socket.on("ioswarm:join", async |socket: SocketRef, Data::<Value>(data), ack: AckSender| {
        let Some(rooms) = room_list(&data) else {
            send_ack(ack, &json!({"error": "bad rooms"}));
            return;
        };
        socket.join(rooms);
        send_ack(ack, &json!({"rooms": other_rooms(&socket)}));
    });
    socket.on("ioswarm:leave", async |socket: SocketRef, Data::<Value>(data), ack: AckSender| {
        let Some(rooms) = room_list(&data) else {
            send_ack(ack, &json!({"error": "bad rooms"}));
            return;
        };
        socket.leave(rooms);
        send_ack(ack, &json!({"rooms": other_rooms(&socket)}));
    });
    socket.on("ioswarm:echo", async |Data::<Value>(data), ack: AckSender| {
        let _ = ack.send(&data);
    });
    socket.on(
        "ioswarm:to",
        async |socket: SocketRef, Data::<(String, String, Value)>(data), AckAsked(asked), ack: AckSender| {
            let (room, event, arg) = data;
            relay(socket, room, event, arg, ack, asked).await;
        },
    );
    socket.on_fallback(async |ack: AckSender| {
        let _ = ack.send(&());
    });
}

fn parse_listen() -> Result<String, String> {
    let mut listen = std::env::var("PEER_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".to_owned());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            listen = args.next().ok_or("--listen needs HOST:PORT")?;
        } else if let Some(value) = arg.strip_prefix("--listen=") {
            listen = value.to_owned();
        } else {
            return Err(format!("unknown argument: {arg}"));
        }
    }
    Ok(listen)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() {
    let listen = match parse_listen() {
        Ok(listen) => listen,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // Defaults match the ioswarm binary: ping 25 s / 20 s, max payload 1 MB.
    let (layer, io) = SocketIo::builder()
        .ping_interval(Duration::from_millis(25_000))
        .ping_timeout(Duration::from_millis(20_000))
        .max_payload(1_000_000)
        .build_layer();
    io.ns("/", on_connect);
    let app = axum::Router::new().layer(layer);
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("no local address: {e}");
            std::process::exit(1);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "socketioxide-peer ready socketio={addr} pid={}", std::process::id());
        let _ = out.flush();
    }
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    // Bounded shutdown: never hang on open websockets.
    tokio::select! {
        result = server => {
            if let Err(e) = result {
                eprintln!("server error: {e}");
                std::process::exit(1);
            }
        }
        () = async {
            shutdown_signal().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        } => {}
    }
}
