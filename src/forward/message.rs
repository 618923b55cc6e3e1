//! What is sent to the application and what its webhook answers, as values (pure).
//!
//! The message, for a webhook body and a channel payload alike:
//! `{"nsp", "event", "args", "socket": {"id", "data", "rooms"}, "node"}`, plus `"reason"` for
//! `$disconnect`. A binary argument is `{"_binary": "<base64>"}` wherever it sits in `args`.
//!
//! The webhook's reply (2xx; an empty body is `{}`):
//! `{"ack": [...], "emit": [{"rooms", "except", "event", "args"}], "join": [...], "leave": [...],
//! "disconnect": false}`, every key optional.

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Largest webhook reply read, in bytes.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;
/// The key of a binary argument's object.
pub const BINARY_KEY: &str = "_binary";

/// Who sent the event.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketInfo {
    /// The socket id.
    pub id: String,
    /// `socket.data`.
    pub data: Value,
    /// Its rooms, its own id left out, sorted.
    pub rooms: Vec<String>,
}

/// The JSON message for event `event` of namespace `nsp` with `args` (binary already replaced,
/// see [`args_json`]); `node` is the cluster node id, `null` on a single node.
pub fn event_message(nsp: &str, event: &str, args: Vec<Value>, socket: &SocketInfo, node: Option<u64>) -> Value {
    json!({
        "nsp": nsp,
        "event": event,
        "args": args,
        "socket": { "id": socket.id, "data": socket.data, "rooms": socket.rooms },
        "node": node,
    })
}

/// `args` with each attachment placeholder replaced by `{"_binary": "<base64>"}`.
pub fn args_json(args: Vec<Value>, attachments: &[Bytes]) -> Vec<Value> {
    if attachments.is_empty() {
        return args;
    }
    args.into_iter().map(|v| replace_binary(v, attachments)).collect()
}

fn replace_binary(value: Value, attachments: &[Bytes]) -> Value {
    match value {
        Value::Object(obj) => {
            if obj.get("_placeholder") == Some(&Value::Bool(true)) {
                let data = obj
                    .get("num")
                    .and_then(Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .and_then(|n| attachments.get(n));
                if let Some(data) = data {
                    let mut out = Map::new();
                    out.insert(
                        BINARY_KEY.to_owned(),
                        Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
                    );
                    return Value::Object(out);
                }
            }
            Value::Object(obj.into_iter().map(|(k, v)| (k, replace_binary(v, attachments))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| replace_binary(v, attachments)).collect()),
        other => other,
    }
}

/// One `emit` order of a webhook reply: sent cluster-wide like an emitter's broadcast.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitOrder {
    /// Rooms to send to; empty sends to the whole namespace.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Rooms whose members are left out.
    #[serde(default)]
    pub except: Vec<String>,
    /// The event name.
    pub event: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<Value>,
}

/// What a webhook answered, to carry out.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookReply {
    /// The arguments of the client's ack (none: the ack gets no arguments).
    #[serde(default)]
    pub ack: Option<Vec<Value>>,
    /// Broadcasts to send.
    #[serde(default)]
    pub emit: Vec<EmitOrder>,
    /// Rooms the sending socket joins.
    #[serde(default)]
    pub join: Vec<String>,
    /// Rooms the sending socket leaves.
    #[serde(default)]
    pub leave: Vec<String>,
    /// Disconnect the sending socket (after the ack).
    #[serde(default)]
    pub disconnect: bool,
}

/// Why a forwarded event got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// No answer within `timeout_ms` (waiting for a slot included).
    #[error("webhook timeout")]
    Timeout,
    /// The webhook could not be reached.
    #[error("webhook unreachable: {0}")]
    Unreachable(String),
    /// A status other than 2xx.
    #[error("webhook answered {0}")]
    Status(u16),
    /// A 2xx whose body is not the expected JSON.
    #[error("bad webhook reply: {0}")]
    BadReply(String),
    /// Too many requests already waiting; the webhook was not called.
    #[error("busy")]
    Busy,
}

impl DeliveryError {
    /// The `error` the client's ack carries (short; details go to the log).
    pub fn client_message(&self) -> &'static str {
        match self {
            Self::Timeout => "webhook timeout",
            Self::Unreachable(_) => "webhook unavailable",
            Self::Status(_) => "webhook error",
            Self::BadReply(_) => "bad webhook reply",
            Self::Busy => "busy",
        }
    }

    /// The `result` label of `ioswarm_forward_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Status(_) => "bad_status",
            Self::BadReply(_) => "bad_reply",
            Self::Busy => "busy",
        }
    }
}

/// Reads a webhook's answer (pure: status and body in, what to do out).
pub fn parse_reply(status: StatusCode, body: &[u8]) -> Result<WebhookReply, DeliveryError> {
    if !status.is_success() {
        return Err(DeliveryError::Status(status.as_u16()));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(WebhookReply::default());
    }
    let reply: WebhookReply = serde_json::from_slice(body).map_err(|e| DeliveryError::BadReply(e.to_string()))?;
    if let Some(order) = reply.emit.iter().find(|o| o.event.is_empty()) {
        return Err(DeliveryError::BadReply(format!("an emit order with an empty event: {order:?}")));
    }
    Ok(reply)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_message_carries_the_socket_and_base64_binary() {
        let socket = SocketInfo { id: "abc".into(), data: json!({"sub": "7"}), rooms: vec!["r".into()] };
        let args = args_json(
            vec![
                json!("x"),
                json!({"_placeholder": true, "num": 0}),
                json!({"deep": [{"_placeholder": true, "num": 1}]}),
            ],
            &[Bytes::from_static(b"\x00\x01"), Bytes::from_static(b"hi")],
        );
        let msg = event_message("/", "document::clicked", args, &socket, Some(2));
        assert_eq!(
            msg,
            json!({
                "nsp": "/", "event": "document::clicked",
                "args": ["x", {"_binary": "AAE="}, {"deep": [{"_binary": "aGk="}]}],
                "socket": {"id": "abc", "data": {"sub": "7"}, "rooms": ["r"]},
                "node": 2,
            })
        );
        // A placeholder that refers to nothing is left as it is; no attachments: args unchanged.
        let odd = json!({"_placeholder": true, "num": 5});
        assert_eq!(args_json(vec![odd.clone()], &[Bytes::from_static(b"a")]), vec![odd.clone()]);
        assert_eq!(args_json(vec![odd.clone()], &[]), vec![odd]);
        assert_eq!(event_message("/", "e", vec![], &socket, None)["node"], Value::Null);
    }

    #[test]
    fn replies_give_ack_emit_rooms_and_disconnect() {
        let reply = parse_reply(
            StatusCode::OK,
            br#"{"ack":["ok"],"emit":[{"event":"Analytics::counter","args":[1]},{"rooms":["a"],"except":["b"],"event":"m"}],
                "join":["r1"],"leave":["r2"],"disconnect":true}"#,
        )
        .unwrap();
        assert_eq!(reply.ack, Some(vec![json!("ok")]));
        assert_eq!(
            reply.emit,
            vec![
                EmitOrder { rooms: vec![], except: vec![], event: "Analytics::counter".into(), args: vec![json!(1)] },
                EmitOrder { rooms: vec!["a".into()], except: vec!["b".into()], event: "m".into(), args: vec![] },
            ]
        );
        assert_eq!((reply.join, reply.leave, reply.disconnect), (vec!["r1".into()], vec!["r2".into()], true));
        assert_eq!(parse_reply(StatusCode::OK, b"{}").unwrap(), WebhookReply::default());
        assert_eq!(parse_reply(StatusCode::NO_CONTENT, b"").unwrap(), WebhookReply::default());
        assert_eq!(parse_reply(StatusCode::OK, b" \n").unwrap(), WebhookReply::default());
    }

    #[test]
    fn failures_are_told_apart() {
        assert_eq!(parse_reply(StatusCode::INTERNAL_SERVER_ERROR, b"{}"), Err(DeliveryError::Status(500)));
        assert_eq!(parse_reply(StatusCode::FOUND, b""), Err(DeliveryError::Status(302)));
        for bad in [
            &b"not json"[..],
            b"[1]",
            br#"{"ack":"ok"}"#,
            br#"{"acks":[]}"#,
            br#"{"emit":[{"args":[]}]}"#,
            br#"{"emit":[{"event":""}]}"#,
            br#"{"join":"r"}"#,
            br#"{"disconnect":1}"#,
        ] {
            assert!(matches!(parse_reply(StatusCode::OK, bad), Err(DeliveryError::BadReply(_))), "{bad:?}");
        }
        assert_eq!(DeliveryError::Status(500).client_message(), "webhook error");
        assert_eq!(DeliveryError::Busy.label(), "busy");
    }
}
