//! What differs for socket.io 1.x / 2.x clients (Engine.IO 3, Socket.IO protocol 4): pure
//! decisions the server applies when a connection's [`crate::engineio::Protocol`] is 3.
//!
//! Event, ack and binary packets are the same as in protocol 5 (so a broadcast's bytes are the
//! same for every client). What differs is joining a namespace:
//!
//! - the server connects the client to `/` by itself once the session opens (the client never
//!   sends a CONNECT for `/`); [`handshake_auth`] is that socket's auth;
//! - a CONNECT to another namespace carries no JSON: its auth is the query string appended to
//!   the namespace (`0/chat?token=abc,`), see [`namespace_and_auth`];
//! - the CONNECT reply carries no payload (the client makes its own id: the session id for `/`,
//!   `<nsp>#<session id>` elsewhere) and a refusal's payload is a plain value, usually the
//!   message string ([`refusal_data`]), where protocol 5 sends `{message, data}`.

use serde_json::{Map, Value};

use super::namespace::ConnectError;

/// Query parameters of the Engine.IO handshake itself, left out of the auth made from it.
const ENGINE_QUERY_KEYS: [&str; 6] = ["EIO", "transport", "t", "b64", "sid", "j"];

/// A CONNECT packet's namespace as a protocol 4 client writes it, `/chat?token=abc`: the
/// namespace, and its query parameters as the auth object (string values; a repeated key
/// keeps its last value).
pub(crate) fn namespace_and_auth(nsp: &str) -> (String, Value) {
    match nsp.split_once('?') {
        Some((name, query)) => (name.to_owned(), query_object(query, &[])),
        None => (nsp.to_owned(), Value::Object(Map::new())),
    }
}

/// The auth of the socket the server connects to `/` by itself: the handshake's query
/// parameters (what a 2.x page passes as `io(url, {query})`), without Engine.IO's own. This is
/// how `--auth-token` and a `token` parameter reach `/`, where socket.io 4 gives an empty object.
pub(crate) fn handshake_auth(query: &str) -> Value {
    query_object(query, &ENGINE_QUERY_KEYS)
}

/// The payload of a CONNECT_ERROR for a refusal by middleware: its data when it has some,
/// else the message (what socket.io 4 sends a protocol 4 client; the 2.x client's `error`
/// event carries it as is).
pub(crate) fn refusal_data(err: &ConnectError) -> Value {
    match &err.data {
        Some(data) if !data.is_null() => data.clone(),
        _ => Value::String(err.message.clone()),
    }
}

fn query_object(query: &str, skip: &[&str]) -> Value {
    let mut object = Map::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if !skip.contains(&key.as_ref()) {
            object.insert(key.into_owned(), Value::String(value.into_owned()));
        }
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_query_of_a_namespace_is_its_auth() {
        assert_eq!(namespace_and_auth("/chat"), ("/chat".to_owned(), json!({})));
        assert_eq!(
            namespace_and_auth("/chat?token=abc&x=1&x=2&e=%C3%A9+b"),
            ("/chat".to_owned(), json!({"token": "abc", "x": "2", "e": "é b"}))
        );
        assert_eq!(namespace_and_auth("/?a=1"), ("/".to_owned(), json!({"a": "1"})));
        assert_eq!(namespace_and_auth("/chat?"), ("/chat".to_owned(), json!({})));
    }

    #[test]
    fn the_handshake_query_without_engine_keys_is_the_auth_of_root() {
        assert_eq!(
            handshake_auth("EIO=3&transport=polling&t=NxYz&b64=1&token=abc&room=r"),
            json!({"token": "abc", "room": "r"})
        );
        assert_eq!(handshake_auth(""), json!({}));
    }

    #[test]
    fn a_refusal_is_its_data_or_its_message() {
        assert_eq!(refusal_data(&ConnectError::new("unauthorized")), json!("unauthorized"));
        let with_data = ConnectError { message: "no".into(), data: Some(json!({"retry": 3})) };
        assert_eq!(refusal_data(&with_data), json!({"retry": 3}));
        let null_data = ConnectError { message: "no".into(), data: Some(Value::Null) };
        assert_eq!(refusal_data(&null_data), json!("no"));
    }
}
