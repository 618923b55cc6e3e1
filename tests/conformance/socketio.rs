//! Socket.IO v5 cases at `/socket.io/`: namespaces, events, binary attachments, acks, invalid
//! input. Every case runs over long-polling and over WebSocket.

use std::time::Duration;

use crate::both_transports;
use crate::harness::*;

/// Opens an Engine.IO session on `/socket.io/`.
async fn open(transport: Transport) -> Conn {
    Conn::open(transport, SIO).await
}

/// Asserts a CONNECT reply `40[<nsp>,]{"sid":"…"}` with only `sid`; returns that sid.
fn check_connect_reply(packet: &str, nsp_prefix: &str, engine_sid: &str) -> String {
    let json = packet
        .strip_prefix(&format!("40{nsp_prefix}"))
        .unwrap_or_else(|| panic!("expected CONNECT reply `40{nsp_prefix}{{…}}`, got {packet:?}"));
    let value: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("CONNECT reply {packet:?}: {e}"));
    let obj = value.as_object().unwrap_or_else(|| panic!("CONNECT reply data is not an object: {packet:?}"));
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(keys, ["sid"], "CONNECT reply keys in {packet:?}");
    let sid = obj["sid"].as_str().unwrap_or_else(|| panic!("sid is not a string: {packet:?}")).to_owned();
    assert!(!sid.is_empty(), "empty sid: {packet:?}");
    assert_eq!(packet, format!(r#"40{nsp_prefix}{{"sid":"{sid}"}}"#), "compact JSON");
    assert_ne!(sid, engine_sid, "Socket.IO sid must differ from the Engine.IO sid");
    sid
}

/// Opens a session and connects to `/`, consuming the `auth` event.
async fn connected(transport: Transport) -> Conn {
    let mut conn = open(transport).await;
    conn.send_text("40").await;
    let reply = conn.recv_text().await;
    let engine_sid = conn.sid().to_owned();
    check_connect_reply(&reply, "", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42["auth",{}]"#);
    conn
}

// ---------------------------------------------------------------------------------------------
// Connect
// ---------------------------------------------------------------------------------------------

async fn connect_main(transport: Transport) {
    let mut conn = open(transport).await;
    conn.send_text("40").await;
    let reply = conn.recv_text().await;
    let engine_sid = conn.sid().to_owned();
    check_connect_reply(&reply, "", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42["auth",{}]"#);
}
both_transports!(connect_main => connect_main);

async fn connect_main_with_auth(transport: Transport) {
    let mut conn = open(transport).await;
    conn.send_text(r#"40{"token":"123"}"#).await;
    let reply = conn.recv_text().await;
    let engine_sid = conn.sid().to_owned();
    check_connect_reply(&reply, "", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42["auth",{"token":"123"}]"#);
}
both_transports!(connect_main_with_auth => connect_main_with_auth);

async fn connect_custom(transport: Transport) {
    let mut conn = open(transport).await;
    conn.send_text("40/custom,").await;
    let reply = conn.recv_text().await;
    let engine_sid = conn.sid().to_owned();
    check_connect_reply(&reply, "/custom,", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42/custom,["auth",{}]"#);
}
both_transports!(connect_custom => connect_custom);

async fn connect_custom_with_auth(transport: Transport) {
    let mut conn = open(transport).await;
    conn.send_text(r#"40/custom,{"token":"abc"}"#).await;
    let reply = conn.recv_text().await;
    let engine_sid = conn.sid().to_owned();
    check_connect_reply(&reply, "/custom,", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42/custom,["auth",{"token":"abc"}]"#);
}
both_transports!(connect_custom_with_auth => connect_custom_with_auth);

/// Both namespaces on one Engine.IO session get distinct Socket.IO sids.
async fn connect_both_namespaces(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send_text("40/custom,").await;
    let engine_sid = conn.sid().to_owned();
    let custom = check_connect_reply(&conn.recv_text().await, "/custom,", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42/custom,["auth",{}]"#);
    conn.send_text(r#"42/custom,["message","x"]"#).await;
    assert_eq!(conn.recv_text().await, r#"42/custom,["message-back","x"]"#);
    conn.send_text(r#"42["message","y"]"#).await;
    assert_eq!(conn.recv_text().await, r#"42["message-back","y"]"#);
    assert!(!custom.is_empty());
}
both_transports!(connect_both_namespaces => connect_both_namespaces);

async fn connect_unknown_namespace(transport: Transport) {
    let mut conn = open(transport).await;
    conn.send_text("40/random").await;
    assert_eq!(conn.recv_text().await, r#"44/random,{"message":"Invalid namespace"}"#);
    // The Engine.IO session stays open: a ping still comes, and `/` can still be joined.
    conn.expect_ping_and_pong().await;
    conn.send_text("40").await;
    let engine_sid = conn.sid().to_owned();
    check_connect_reply(&conn.recv_text().await, "", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42["auth",{}]"#);
}
both_transports!(connect_unknown_namespace => connect_unknown_namespace);

async fn connect_invalid_handshake_closes(transport: Transport) {
    let mut conn = open(transport).await;
    conn.send_text("4abc").await;
    conn.expect_closed().await;
}
both_transports!(connect_invalid_handshake_closes => connect_invalid_handshake_closes);

/// CONNECT data must be an object.
async fn connect_non_object_auth_closes(transport: Transport) {
    // (`401` is not in this list: socket.io-parser reads it as a CONNECT with ack id 1.)
    for bad in [r#"40"abc""#, "40[1]", r#"40/custom,"x""#, "40null", r#"40/custom,[]"#] {
        eprintln!("case {bad:?}");
        let mut conn = open(transport).await;
        conn.send_text(bad).await;
        conn.expect_closed().await;
    }
}
both_transports!(connect_non_object_auth_closes => connect_non_object_auth_closes);

async fn no_handshake_closes(transport: Transport) {
    let mut conn = open(transport).await;
    // Pings are answered meanwhile, so only connectTimeout can close the session.
    let elapsed = conn.expect_closed_within(CONNECT_TIMEOUT + Duration::from_millis(1500)).await;
    assert!(elapsed >= CONNECT_TIMEOUT - Duration::from_millis(300), "closed after {elapsed:?}, before connectTimeout");
}
both_transports!(no_handshake_closes => no_handshake_closes);

async fn disconnect_main_keeps_engine_open(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send_text("41").await;
    conn.expect_ping_and_pong().await;
    conn.expect_ping_and_pong().await;
    // Events for the left namespace are no longer allowed, but it can be joined again.
    conn.send_text("40").await;
    let engine_sid = conn.sid().to_owned();
    check_connect_reply(&conn.recv_text().await, "", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42["auth",{}]"#);
}
both_transports!(disconnect_main_keeps_engine_open => disconnect_main_keeps_engine_open);

async fn disconnect_custom_keeps_engine_open(transport: Transport) {
    let mut conn = open(transport).await;
    conn.send_text("40/custom,").await;
    let engine_sid = conn.sid().to_owned();
    check_connect_reply(&conn.recv_text().await, "/custom,", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42/custom,["auth",{}]"#);
    conn.send_text("41/custom,").await;
    conn.expect_ping_and_pong().await;
    conn.expect_ping_and_pong().await;
}
both_transports!(disconnect_custom_keeps_engine_open => disconnect_custom_keeps_engine_open);

async fn second_connect_closes(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send_text("40").await;
    conn.expect_closed().await;
}
both_transports!(second_connect_closes => second_connect_closes);

async fn event_for_unjoined_namespace_closes(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send_text(r#"42/custom,["message","x"]"#).await;
    conn.expect_closed().await;
}
both_transports!(event_for_unjoined_namespace_closes => event_for_unjoined_namespace_closes);

async fn event_after_unknown_namespace_closes(transport: Transport) {
    let mut conn = open(transport).await;
    conn.send_text("40/random").await;
    assert_eq!(conn.recv_text().await, r#"44/random,{"message":"Invalid namespace"}"#);
    conn.send_text(r#"42/random,["message"]"#).await;
    conn.expect_closed().await;
}
both_transports!(event_after_unknown_namespace_closes => event_after_unknown_namespace_closes);

// ---------------------------------------------------------------------------------------------
// Events and acks
// ---------------------------------------------------------------------------------------------

async fn event_text(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send_text(r#"42["message",1,"2",{"3":[true]}]"#).await;
    assert_eq!(conn.recv_text().await, r#"42["message-back",1,"2",{"3":[true]}]"#);
    conn.send_text(r#"42["message"]"#).await;
    assert_eq!(conn.recv_text().await, r#"42["message-back"]"#);
    conn.send_text(r#"42["message",null,false,[],{},"é\n\"q\"","😀"]"#).await;
    assert_eq!(conn.recv_text().await, r#"42["message-back",null,false,[],{},"é\n\"q\"","😀"]"#);
}
both_transports!(event_text => event_text);

/// Insignificant whitespace in input is not echoed: output JSON is compact.
async fn event_output_is_compact(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send_text(r#"42[ "message" , 1 , { "a" : [ 1 , 2 ] } ]"#).await;
    assert_eq!(conn.recv_text().await, r#"42["message-back",1,{"a":[1,2]}]"#);
}
both_transports!(event_output_is_compact => event_output_is_compact);

/// Numbers whose JSON.stringify form equals their input text come back byte for byte.
async fn numbers_echoed_exactly(transport: Transport) {
    let mut conn = connected(transport).await;
    let args = "1,-1,0,1.5,-0.25,0.1,123456789,9007199254740991,1e+21,1.5e-7,3.141592653589793";
    conn.send_text(&format!(r#"42["message",{args}]"#)).await;
    assert_eq!(conn.recv_text().await, format!(r#"42["message-back",{args}]"#));
}
both_transports!(numbers_echoed_exactly => numbers_echoed_exactly);

async fn event_custom_namespace(transport: Transport) {
    let mut conn = open(transport).await;
    conn.send_text(r#"40/custom,{"token":"abc"}"#).await;
    let engine_sid = conn.sid().to_owned();
    check_connect_reply(&conn.recv_text().await, "/custom,", &engine_sid);
    assert_eq!(conn.recv_text().await, r#"42/custom,["auth",{"token":"abc"}]"#);
    conn.send_text(r#"42/custom,["message",1,"2"]"#).await;
    assert_eq!(conn.recv_text().await, r#"42/custom,["message-back",1,"2"]"#);
    conn.send_text(r#"42/custom,7["message-with-ack",{"k":"v"}]"#).await;
    assert_eq!(conn.recv_text().await, r#"43/custom,7[{"k":"v"}]"#);
}
both_transports!(event_custom_namespace => event_custom_namespace);

async fn binary_event_two_attachments(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send(&[
        t(r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#),
        b(&[1, 2, 3]),
        b(&[4, 5, 6]),
    ])
    .await;
    assert_eq!(
        conn.recv_text().await,
        r#"452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
    );
    assert_eq!(conn.recv_binary().await, [1, 2, 3]);
    assert_eq!(conn.recv_binary().await, [4, 5, 6]);
}
both_transports!(binary_event_two_attachments => binary_event_two_attachments);

/// Placeholder keys may come in any order; the reply is canonical.
async fn binary_event_placeholder_key_order(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send(&[t(r#"451-["message","x",{"num":0,"_placeholder":true}]"#), b(&[9, 8])]).await;
    assert_eq!(conn.recv_text().await, r#"451-["message-back","x",{"_placeholder":true,"num":0}]"#);
    assert_eq!(conn.recv_binary().await, [9, 8]);
}
both_transports!(binary_event_placeholder_key_order => binary_event_placeholder_key_order);

async fn ack_text(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send_text(r#"42456["message-with-ack",1,"2",{"3":[false]}]"#).await;
    assert_eq!(conn.recv_text().await, r#"43456[1,"2",{"3":[false]}]"#);
    conn.send_text(r#"420["message-with-ack"]"#).await;
    assert_eq!(conn.recv_text().await, "430[]");
}
both_transports!(ack_text => ack_text);

async fn ack_binary(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send(&[
        t(r#"452-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#),
        b(&[1, 2, 3]),
        b(&[4, 5, 6]),
    ])
    .await;
    assert_eq!(conn.recv_text().await, r#"462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#);
    assert_eq!(conn.recv_binary().await, [1, 2, 3]);
    assert_eq!(conn.recv_binary().await, [4, 5, 6]);
}
both_transports!(ack_binary => ack_binary);

// ---------------------------------------------------------------------------------------------
// Invalid input
// ---------------------------------------------------------------------------------------------

/// Each malformed packet, sent on a freshly connected `/` socket, closes the connection.
async fn invalid_formats_close(transport: Transport) {
    for bad in [
        "4abc",
        "42{}",
        r#"42abc["message"]"#,
        r#"42["message""#,
        "42[]",
        "42[{}]",
        r#"42"message""#,
        r#"42["disconnect"]"#,
        r#"42["connect"]"#,
        "43{}",
        "41{}",
        "4-",
        r#"45x-["message",{"_placeholder":true,"num":0}]"#,
    ] {
        eprintln!("case {bad:?}");
        let mut conn = connected(transport).await;
        conn.send_text(bad).await;
        let closed = tokio::time::timeout(Duration::from_secs(3), conn.expect_closed()).await;
        assert!(closed.is_ok(), "{bad:?} did not close the connection");
    }
}
both_transports!(invalid_formats_close => invalid_formats_close);

/// A placeholder pointing past the attachments closes the connection.
async fn placeholder_out_of_range_closes(transport: Transport) {
    let mut conn = connected(transport).await;
    conn.send(&[t(r#"451-["message",{"_placeholder":true,"num":1}]"#), b(&[1])]).await;
    conn.expect_closed().await;
}
both_transports!(placeholder_out_of_range_closes => placeholder_out_of_range_closes);

/// Breaking one connection leaves another untouched.
async fn malformed_input_is_isolated(transport: Transport) {
    let mut good = connected(transport).await;
    let mut bad = connected(transport).await;
    bad.send_text("42{}").await;
    bad.expect_closed().await;
    good.send_text(r#"42["message","still here"]"#).await;
    assert_eq!(good.recv_text().await, r#"42["message-back","still here"]"#);
    good.expect_ping_and_pong().await;
    good.send_text(r#"421["message-with-ack",2]"#).await;
    assert_eq!(good.recv_text().await, "431[2]");
}
both_transports!(malformed_input_is_isolated => malformed_input_is_isolated);
