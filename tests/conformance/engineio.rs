//! Engine.IO v4 cases: handshake, errors, payloads, heartbeat, close, upgrade, CORS.
//! Message cases talk to the raw echo endpoint `/engine.io/`.

use std::time::{Duration, Instant};

use crate::both_transports;
use crate::harness::*;
use fastwebsockets::OpCode;

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

async fn polling_handshake_ok(path: &'static str) {
    let resp = http("GET", &polling_url(path, None), &[], b"").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("text/plain; charset=UTF-8"), "{resp:?}");
    assert_eq!(resp.header("cache-control"), Some("no-store"), "{resp:?}");
    check_open(&resp.text(), r#"["websocket"]"#);
}

#[tokio::test]
async fn handshake_polling_ok_engineio() {
    polling_handshake_ok(EIO).await;
}

#[tokio::test]
async fn handshake_polling_ok_socketio() {
    polling_handshake_ok(SIO).await;
}

#[tokio::test]
async fn handshake_polling_sids_are_unique() {
    let a = Polling::open(EIO).await;
    let b = Polling::open(EIO).await;
    assert_ne!(a.sid, b.sid);
}

#[tokio::test]
async fn handshake_polling_ignores_cache_buster() {
    let resp = http("GET", "/engine.io/?EIO=4&transport=polling&t=Ow3x_1a", &[], b"").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    check_open(&resp.text(), r#"["websocket"]"#);
}

/// A websocket-only session advertises no upgrades.
async fn websocket_handshake_ok(path: &'static str) {
    let mut ws = ws_connect(&websocket_url(path, None)).await;
    let Packet::Text(open) = ws.recv_raw().await else { panic!("open packet must be a text frame") };
    check_open(&open, "[]");
}

#[tokio::test]
async fn handshake_websocket_ok_engineio() {
    websocket_handshake_ok(EIO).await;
}

#[tokio::test]
async fn handshake_websocket_ok_socketio() {
    websocket_handshake_ok(SIO).await;
}

#[tokio::test]
async fn handshake_bad_eio_polling() {
    for query in
        ["EIO=3&transport=polling", "EIO=5&transport=polling", "EIO=abc&transport=polling", "transport=polling"]
    {
        for path in [EIO, SIO] {
            http("GET", &format!("{path}?{query}"), &[], b"").await.assert_error(5);
        }
    }
}

/// An upgrade refused before the websocket exists: status 400 with the error message in the
/// body (Node writes the bare message as text/html; a JSON error body also matches).
async fn assert_ws_rejected(path_and_query: &str, message: &str) {
    let resp = raw_upgrade(path_and_query).await;
    assert_eq!(resp.status, 400, "upgrade {path_and_query}: {resp:?}");
    let body = resp.text();
    assert!(body.contains(message), "upgrade {path_and_query}: body {body:?} lacks {message:?}");
    // And a real websocket client sees a failed handshake.
    match ws_try_connect(path_and_query).await {
        Err(fastwebsockets::WebSocketError::InvalidStatusCode(400)) => {}
        Err(e) => panic!("websocket {path_and_query}: expected status 400, got {e}"),
        Ok(_) => panic!("websocket {path_and_query}: upgrade accepted"),
    }
}

async fn raw_upgrade(path_and_query: &str) -> HttpResponse {
    http(
        "GET",
        path_and_query,
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    )
    .await
}

/// Node checks `EIO` only after the websocket handshake: it answers 101 and then drops the
/// connection without an open packet. A 400 before the upgrade is accepted too.
async fn assert_ws_no_session(path_and_query: &str, message: &str) {
    let resp = raw_upgrade(path_and_query).await;
    match resp.status {
        400 => {
            assert!(resp.text().contains(message), "upgrade {path_and_query}: body {:?} lacks {message:?}", resp.text())
        }
        101 => {}
        other => panic!("upgrade {path_and_query}: status {other}: {resp:?}"),
    }
    match ws_try_connect(path_and_query).await {
        Err(fastwebsockets::WebSocketError::InvalidStatusCode(400)) => {}
        Err(e) => panic!("websocket {path_and_query}: expected status 400 or close, got {e}"),
        Ok(mut ws) => match ws.next_event_within(STEP).await {
            WsEvent::Closed(_) => {}
            WsEvent::Packet(p) => panic!("websocket {path_and_query}: got {p:?}, expected no session"),
        },
    }
}

#[tokio::test]
async fn handshake_bad_eio_websocket() {
    for query in ["EIO=3", "EIO=abc", ""] {
        for path in [EIO, SIO] {
            assert_ws_no_session(&format!("{path}?{query}&transport=websocket"), "Unsupported protocol version").await;
        }
    }
}

#[tokio::test]
async fn handshake_bad_transport_polling() {
    for query in [
        "EIO=4&transport=tobi",
        "EIO=4",
        "EIO=4&transport=constructor",
        "EIO=4&transport=__proto__",
        "EIO=4&transport=",
    ] {
        for path in [EIO, SIO] {
            http("GET", &format!("{path}?{query}"), &[], b"").await.assert_error(0);
        }
    }
}

#[tokio::test]
async fn handshake_bad_transport_websocket() {
    assert_ws_rejected("/engine.io/?EIO=4&transport=tobi", "Transport unknown").await;
}

#[tokio::test]
async fn handshake_websocket_transport_without_upgrade() {
    http("GET", &websocket_url(EIO, None), &[], b"").await.assert_error(3);
}

#[tokio::test]
async fn handshake_bad_method() {
    for method in ["POST", "PUT"] {
        for path in [EIO, SIO] {
            http(method, &polling_url(path, None), &[], b"").await.assert_error(2);
        }
    }
}

#[tokio::test]
async fn unknown_sid_polling() {
    for method in ["GET", "POST"] {
        for path in [EIO, SIO] {
            http(method, &polling_url(path, Some("unknown")), &[], b"4hello").await.assert_error(1);
        }
    }
}

#[tokio::test]
async fn unknown_sid_websocket() {
    assert_ws_rejected(&websocket_url(EIO, Some("unknown")), "Session ID unknown").await;
}

/// A websocket session's sid used over polling is a transport mismatch.
#[tokio::test]
async fn transport_mismatch() {
    let mut conn = Conn::open(Transport::WebSocket, EIO).await;
    http("GET", &polling_url(EIO, Some(conn.sid())), &[], b"").await.assert_error(3);
    // The websocket session is unaffected.
    conn.send_text("4still here").await;
    assert_eq!(conn.recv().await, t("4still here"));
}

// ---------------------------------------------------------------------------------------------
// Messages (echo)
// ---------------------------------------------------------------------------------------------

async fn echo_text(transport: Transport) {
    let mut conn = Conn::open(transport, EIO).await;
    conn.send_text("4hello").await;
    assert_eq!(conn.recv().await, t("4hello"));
    // Non-ASCII text and an empty message survive unchanged.
    conn.send_text("4é€😀").await;
    assert_eq!(conn.recv().await, t("4é€😀"));
    conn.send_text("4").await;
    assert_eq!(conn.recv().await, t("4"));
}
both_transports!(echo_text => echo_text);

#[tokio::test]
async fn echo_text_polling_exact_payload() {
    let p = Polling::open(EIO).await;
    p.send(&[t("4hello")]).await;
    let resp = p.get().await;
    assert_eq!((resp.status, resp.text()), (200, "4hello".to_owned()), "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("text/plain; charset=UTF-8"));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn echo_binary_polling() {
    let p = Polling::open(EIO).await;
    let resp = p.post(b"bAQIDBA==").await;
    assert_eq!((resp.status, resp.text()), (200, "ok".to_owned()), "{resp:?}");
    let resp = p.get().await;
    assert_eq!((resp.status, resp.text()), (200, "bAQIDBA==".to_owned()), "{resp:?}");
}

#[tokio::test]
async fn echo_binary_websocket() {
    let mut conn = Conn::open(Transport::WebSocket, EIO).await;
    conn.send(&[b(&[1, 2, 3, 4])]).await;
    assert_eq!(conn.recv().await, b(&[1, 2, 3, 4]));
    // Binary that happens to look like text stays binary.
    conn.send(&[b(b"4hello")]).await;
    assert_eq!(conn.recv().await, b(b"4hello"));
}

#[tokio::test]
async fn echo_mixed_polling() {
    let p = Polling::open(EIO).await;
    let payload = "4hello\x1ebAQIDBA==\x1e4world";
    let resp = p.post(payload.as_bytes()).await;
    assert_eq!((resp.status, resp.text()), (200, "ok".to_owned()), "{resp:?}");
    let resp = p.get().await;
    assert_eq!((resp.status, resp.text()), (200, payload.to_owned()), "{resp:?}");
}

#[tokio::test]
async fn echo_mixed_websocket() {
    let mut conn = Conn::open(Transport::WebSocket, EIO).await;
    conn.send(&[t("4hello"), b(&[1, 2, 3, 4]), t("4world")]).await;
    assert_eq!(conn.recv().await, t("4hello"));
    assert_eq!(conn.recv().await, b(&[1, 2, 3, 4]));
    assert_eq!(conn.recv().await, t("4world"));
}

async fn invalid_packet_closes(transport: Transport) {
    for bad in ["abc", "9", "7x"] {
        let mut conn = Conn::open(transport, EIO).await;
        match &mut conn {
            // The POST itself may be answered or cut; what matters is the session is gone.
            Conn::Polling(p) => {
                let _ = tokio::time::timeout(STEP, p.post(bad.as_bytes())).await;
            }
            Conn::Ws { ws, .. } => ws.send_text(bad).await,
        }
        conn.expect_closed().await;
    }
}
both_transports!(invalid_packet_closes => invalid_packet_closes);

/// A client ping is an error in Engine.IO v4 (the server pings).
async fn client_ping_closes(transport: Transport) {
    let mut conn = Conn::open(transport, EIO).await;
    match &mut conn {
        Conn::Polling(p) => {
            let _ = tokio::time::timeout(STEP, p.post(b"2")).await;
        }
        Conn::Ws { ws, .. } => ws.send_text("2").await,
    }
    conn.expect_closed().await;
}
both_transports!(client_ping_closes => client_ping_closes);

#[tokio::test]
async fn duplicate_get_closes() {
    let p = Polling::open(EIO).await;
    let first = {
        let url = p.url();
        tokio::spawn(async move { http("GET", &url, &[], b"").await })
    };
    // Let the first GET become pending.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Node answers a bare 400 with an empty body here (no JSON error).
    let second = p.get().await;
    assert_eq!(second.status, 400, "{second:?}");
    let first = within("first GET", first).await.expect("first GET task");
    assert_eq!((first.status, first.text()), (200, "1".to_owned()), "{first:?}");
    p.get().await.assert_error(1);
}

#[tokio::test]
async fn overlapping_post_closes() {
    let p = Polling::open(EIO).await;
    // A POST whose body never completes stays in flight.
    let addr = server_addr();
    let mut slow = within("connect", tokio::net::TcpStream::connect(addr)).await.expect("connect");
    let head = format!("POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\n\r\n4hel", p.url());
    use tokio::io::AsyncWriteExt;
    within("slow POST", slow.write_all(head.as_bytes())).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Node answers a bare 400 with an empty body here (no JSON error).
    let second = p.post(b"4world").await;
    assert_eq!(second.status, 400, "{second:?}");
    p.get().await.assert_error(1);
    drop(slow);
}

#[tokio::test]
async fn post_over_max_payload_is_413() {
    let p = Polling::open(EIO).await;
    let mut body = b"4".to_vec();
    body.resize(MAX_PAYLOAD + 1, b'a');
    let resp = within_for(Duration::from_secs(10), "oversized POST", p.post(&body)).await;
    assert_eq!(resp.status, 413, "status {} headers {:?}", resp.status, resp.headers);
}

#[tokio::test]
async fn post_at_max_payload_is_accepted() {
    let p = Polling::open(EIO).await;
    let mut body = b"4".to_vec();
    body.resize(MAX_PAYLOAD, b'a');
    let resp = within_for(Duration::from_secs(10), "max-size POST", p.post(&body)).await;
    assert_eq!((resp.status, resp.text()), (200, "ok".to_owned()));
    let resp = p.get().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, body, "echo of a max-size message");
}

#[tokio::test]
async fn websocket_frame_over_max_payload_closes() {
    let mut conn = Conn::open(Transport::WebSocket, EIO).await;
    let mut text = "4".to_owned();
    text.push_str(&"a".repeat(MAX_PAYLOAD + 10));
    if let Conn::Ws { ws, .. } = &mut conn {
        ws.send_text(&text).await;
    }
    conn.expect_closed().await;
}

#[tokio::test]
async fn websocket_fragmented_message_is_reassembled() {
    let mut conn = Conn::open(Transport::WebSocket, EIO).await;
    if let Conn::Ws { ws, .. } = &mut conn {
        ws.send_fragments(OpCode::Text, &[b"4hel", b"lo ", b"world"]).await;
    }
    assert_eq!(conn.recv().await, t("4hello world"));
}

#[tokio::test]
async fn websocket_fragments_over_max_payload_in_total_close() {
    // Each frame is under maxPayload; together they are not.
    let mut conn = Conn::open(Transport::WebSocket, EIO).await;
    let chunk = vec![b'a'; MAX_PAYLOAD / 2];
    if let Conn::Ws { ws, .. } = &mut conn {
        ws.send_fragments(OpCode::Text, &[b"4", &chunk, &chunk, &chunk]).await;
    }
    conn.expect_closed().await;
}

// ---------------------------------------------------------------------------------------------
// Heartbeat
// ---------------------------------------------------------------------------------------------

async fn ping_pong(transport: Transport) {
    let start = Instant::now();
    let mut conn = Conn::open(transport, EIO).await;
    for i in 0..3 {
        let packet = within_for(Duration::from_secs(2), "server ping", conn.recv_raw()).await;
        assert_eq!(packet, t("2"), "ping #{i}");
        if i == 0 {
            // The first ping comes pingInterval after the handshake, not before.
            let elapsed = start.elapsed();
            assert!(
                elapsed >= PING_INTERVAL - Duration::from_millis(20),
                "first ping after {elapsed:?}, before pingInterval"
            );
        }
        match &mut conn {
            Conn::Polling(p) => p.send(&[t("3")]).await,
            Conn::Ws { ws, .. } => ws.send_text("3").await,
        }
    }
    // Still alive and echoing after three heartbeats.
    conn.send_text("4alive").await;
    assert_eq!(conn.recv().await, t("4alive"));
}
both_transports!(ping_pong => ping_pong);

#[tokio::test]
async fn ping_timeout_closes_polling() {
    let p = Polling::open(EIO).await;
    // Nobody fetches the ping, so no pong comes back.
    tokio::time::sleep(PING_INTERVAL + PING_TIMEOUT + Duration::from_millis(100)).await;
    p.get().await.assert_error(1);
}

#[tokio::test]
async fn ping_timeout_closes_websocket() {
    let mut ws = ws_connect(&websocket_url(EIO, None)).await;
    let Packet::Text(open) = ws.recv_raw().await else { panic!("binary open packet") };
    let sid = check_open(&open, "[]");
    assert_eq!(ws.recv_raw().await, t("2"));
    // No pong.
    let start = Instant::now();
    match ws.next_event_within(Duration::from_secs(2)).await {
        WsEvent::Closed(_) => {}
        WsEvent::Packet(p) => panic!("expected close after missed pong, got {p:?}"),
    }
    assert!(
        start.elapsed() >= PING_TIMEOUT - Duration::from_millis(50),
        "closed {:?} after the ping, before pingTimeout",
        start.elapsed()
    );
    http("GET", &polling_url(EIO, Some(&sid)), &[], b"").await.assert_error(1);
}

// ---------------------------------------------------------------------------------------------
// Close
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn forced_close_polling() {
    let p = Polling::open(EIO).await;
    let pending = {
        let url = p.url();
        tokio::spawn(async move { http("GET", &url, &[], b"").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let resp = p.post(b"1").await;
    assert_eq!((resp.status, resp.text()), (200, "ok".to_owned()), "{resp:?}");
    let pending = within("pending GET", pending).await.expect("GET task");
    assert_eq!((pending.status, pending.text()), (200, "6".to_owned()), "pending GET after client close: {pending:?}");
    p.get().await.assert_error(1);
    p.post(b"4hello").await.assert_error(1);
}

/// Over websocket a client closes with a close frame (engine.io-client never sends `1` there,
/// and Node ignores a `1` on a websocket); the session is then gone.
#[tokio::test]
async fn client_close_websocket() {
    let conn = Conn::open(Transport::WebSocket, EIO).await;
    let sid = conn.sid().to_owned();
    let Conn::Ws { mut ws, .. } = conn else { unreachable!() };
    ws.close(1000).await;
    within("session removal after close", async {
        loop {
            let resp = http("GET", &polling_url(EIO, Some(&sid)), &[], b"").await;
            if resp.text() == error_body(1) {
                resp.assert_error(1);
                return;
            }
            // Still registered (transport mismatch) for a moment.
            resp.assert_error(3);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_ws_rejected(&websocket_url(EIO, Some(&sid)), "Session ID unknown").await;
}

// ---------------------------------------------------------------------------------------------
// Upgrade
// ---------------------------------------------------------------------------------------------

/// Polls until a GET answers exactly `6`, answering pings that race in.
async fn expect_noop_get(p: &Polling) {
    loop {
        let packets = p.get_packets().await;
        if packets == [t("2")] {
            p.send(&[t("3")]).await;
            continue;
        }
        assert_eq!(packets, [t("6")], "GET during upgrade");
        return;
    }
}

#[tokio::test]
async fn upgrade() {
    let p = Polling::open(EIO).await;
    // A GET pending when the probe arrives is answered with a noop.
    let pending = {
        let url = p.url();
        tokio::spawn(async move { http("GET", &url, &[], b"").await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;

    let mut ws = ws_connect(&websocket_url(EIO, Some(&p.sid))).await;
    ws.send_text("2probe").await;
    assert_eq!(ws.recv_raw().await, t("3probe"));

    let pending = within("pending GET", pending).await.expect("GET task");
    assert_eq!(pending.status, 200, "{pending:?}");
    match decode_payload(&pending.text()).as_slice() {
        [only] if *only == t("6") => {}
        // The first ping won the race: answer it, the next GET must be the noop.
        [only] if *only == t("2") => {
            p.send(&[t("3")]).await;
            expect_noop_get(&p).await;
        }
        other => panic!("pending GET during upgrade answered {other:?}"),
    }
    // Every new GET is answered with a noop until the upgrade completes.
    expect_noop_get(&p).await;

    // A message sent now is buffered (no GET pending) and flushed over the websocket.
    p.send(&[t("4buffered")]).await;
    ws.send_text("5").await;
    let mut conn = Conn::Ws { ws, sid: p.sid.clone() };
    assert_eq!(conn.recv().await, t("4buffered"));

    // The websocket now carries the session.
    conn.send_text("4hello").await;
    assert_eq!(conn.recv().await, t("4hello"));
    conn.send(&[b(&[1, 2, 3])]).await;
    assert_eq!(conn.recv().await, b(&[1, 2, 3]));

    // Polling with that sid is refused.
    p.get().await.assert_error(3);
    p.post(b"4nope").await.assert_error(3);

    // A second websocket for the same sid is accepted and then closed, without data.
    let mut second = ws_connect(&websocket_url(EIO, Some(&p.sid))).await;
    match second.next_event_within(STEP).await {
        WsEvent::Closed(_) => {}
        WsEvent::Packet(packet) => panic!("second websocket received {packet:?}"),
    }

    // The upgraded websocket is unaffected and heartbeats over it.
    conn.send_text("4still").await;
    assert_eq!(conn.recv().await, t("4still"));
    within_for(Duration::from_secs(2), "ping after upgrade", conn.expect_ping_and_pong_any()).await;
}

impl Conn {
    /// Skips echoes already in flight and waits for one ping, then pongs.
    async fn expect_ping_and_pong_any(&mut self) {
        loop {
            if self.recv_raw().await == t("2") {
                self.pong().await;
                return;
            }
        }
    }
}

#[tokio::test]
async fn upgrade_probe_without_session_is_rejected() {
    assert_ws_rejected(&websocket_url(EIO, Some("nope")), "Session ID unknown").await;
}

// ---------------------------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cors_handshake() {
    for path in [EIO, SIO] {
        let resp = http("GET", &polling_url(path, None), &[("Origin", "http://example.com")], b"").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("access-control-allow-origin"), Some("*"), "{resp:?}");
        check_open(&resp.text(), r#"["websocket"]"#);
    }
}

#[tokio::test]
async fn cors_on_errors() {
    let resp = http("GET", "/engine.io/?EIO=4&transport=tobi", &[("Origin", "http://example.com")], b"").await;
    resp.assert_error(0);
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"), "{resp:?}");
}

#[tokio::test]
async fn cors_post() {
    let p = Polling::open(EIO).await;
    let resp = http("POST", &p.url(), &[("Origin", "http://example.com")], b"4x").await;
    assert_eq!((resp.status, resp.text()), (200, "ok".to_owned()));
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"), "{resp:?}");
}

#[tokio::test]
async fn cors_preflight() {
    for path in [EIO, SIO] {
        let resp = http(
            "OPTIONS",
            &polling_url(path, None),
            &[("Origin", "http://example.com"), ("Access-Control-Request-Method", "POST")],
            b"",
        )
        .await;
        assert_eq!(resp.status, 204, "{resp:?}");
        assert_eq!(resp.header("access-control-allow-origin"), Some("*"), "{resp:?}");
        let methods = resp
            .header("access-control-allow-methods")
            .unwrap_or_else(|| panic!("no Access-Control-Allow-Methods: {resp:?}"));
        for m in ["GET", "POST"] {
            assert!(methods.split(',').any(|x| x.trim() == m), "allow-methods {methods:?} lacks {m}");
        }
        assert!(resp.body.is_empty(), "{resp:?}");
    }
}
