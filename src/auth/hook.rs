//! The connect hook: the app's own endpoint decides about each CONNECT (this is how a PHP, Rails
//! or Django app shares its session cookie). ioswarm POSTs what it knows of the client; `200`
//! accepts (with data and rooms), `401`/`403` refuses with the app's message, anything else
//! (timeout, connection refused, 5xx, bad JSON, a full queue) refuses with `auth unavailable`.
//!
//! Requests are bounded: at most `connect_hook_concurrency` in flight and
//! [`QUEUE_PER_SLOT`] times as many waiting; a slow hook delays only the clients waiting on it
//! (every CONNECT with middleware runs in its own task).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::config::AuthConfig;
pub use crate::httpclient::parse_url;
use crate::httpclient::{JsonClient, PostError};

/// Waiting requests allowed per slot of `connect_hook_concurrency`.
pub const QUEUE_PER_SLOT: usize = 16;
/// Largest hook reply read, in bytes.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// What the hook said yes with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HookGrant {
    /// Merged into `socket.data` (top-level keys replace the claims' keys).
    pub data: Map<String, Value>,
    /// Rooms the socket joins.
    pub rooms: Vec<String>,
}

/// Why the hook did not accept a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// `401`/`403`: the app refused the client; the message is sent to it.
    #[error("refused: {0}")]
    Refused(String),
    /// No answer within `connect_hook_timeout_ms` (queue wait included).
    #[error("the connect hook did not answer in time")]
    Timeout,
    /// The hook could not be reached (connection refused, reset, TLS).
    #[error("the connect hook could not be reached: {0}")]
    Unreachable(String),
    /// The hook answered with another status, or a body that is not the expected JSON.
    #[error("bad reply from the connect hook: {0}")]
    BadReply(String),
    /// Too many clients were already waiting on the hook.
    #[error("too many connect checks waiting")]
    QueueFull,
}

impl HookError {
    /// The `result` label of [`crate::metrics::AUTH_HOOK_REQUESTS`].
    pub(crate) fn label(&self) -> crate::metrics::HookResult {
        use crate::metrics::HookResult;
        match self {
            Self::Refused(_) => HookResult::Refused,
            Self::Timeout => HookResult::Timeout,
            Self::Unreachable(_) => HookResult::Unreachable,
            Self::BadReply(_) => HookResult::BadReply,
            Self::QueueFull => HookResult::QueueFull,
        }
    }
}

/// Reads the hook's answer (pure: status and body in, decision out).
pub fn parse_reply(status: StatusCode, body: &[u8]) -> Result<HookGrant, HookError> {
    match status {
        StatusCode::OK => {
            let value: Value =
                serde_json::from_slice(body).map_err(|e| HookError::BadReply(format!("200 with invalid JSON: {e}")))?;
            let Value::Object(mut reply) = value else {
                return Err(HookError::BadReply("200 whose body is not a JSON object".to_owned()));
            };
            let data = match reply.remove("data") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(data)) => data,
                Some(_) => return Err(HookError::BadReply("\"data\" must be an object".to_owned())),
            };
            let rooms = match reply.remove("rooms") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s),
                        _ => Err(HookError::BadReply("\"rooms\" must be an array of strings".to_owned())),
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(HookError::BadReply("\"rooms\" must be an array of strings".to_owned())),
            };
            Ok(HookGrant { data, rooms })
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            let message = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "unauthorized".to_owned());
            Err(HookError::Refused(message))
        }
        other => Err(HookError::BadReply(format!("status {other}"))),
    }
}

/// The client of the connect hook. Cheap to clone.
#[derive(Clone)]
pub struct ConnectHook(Arc<HookInner>);

struct HookInner {
    url: Uri,
    timeout: Duration,
    client: JsonClient,
    /// Requests in flight.
    slots: Semaphore,
    /// Requests in flight or waiting for a slot.
    admitted: Semaphore,
}

impl std::fmt::Debug for ConnectHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectHook")
            .field("url", &self.0.url)
            .field("timeout", &self.0.timeout)
            .finish_non_exhaustive()
    }
}

impl ConnectHook {
    /// The hook `config` names; `None` when it names none.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, String> {
        let Some(url) = &config.connect_hook else { return Ok(None) };
        let url = parse_url(url)?;
        let client = JsonClient::for_url(&url)?;
        let n = config.connect_hook_concurrency;
        Ok(Some(Self(Arc::new(HookInner {
            url,
            timeout: config.connect_hook_timeout(),
            client,
            slots: Semaphore::new(n),
            admitted: Semaphore::new(n.saturating_mul(QUEUE_PER_SLOT + 1)),
        }))))
    }

    /// Asks the hook about one CONNECT described by `request` (the JSON body).
    pub async fn check(&self, request: &Value) -> Result<HookGrant, HookError> {
        let inner = &self.0;
        let Ok(_admitted) = inner.admitted.try_acquire() else {
            return Err(HookError::QueueFull);
        };
        let body = Bytes::from(request.to_string());
        let call = async {
            let _slot = inner.slots.acquire().await.map_err(|_| HookError::Unreachable("closed".to_owned()))?;
            let (status, body) = inner.client.post(&inner.url, body, MAX_REPLY_BYTES).await.map_err(|e| match e {
                PostError::Unreachable(e) => HookError::Unreachable(e),
                PostError::Body(e) => HookError::BadReply(format!("reading the body: {e}")),
            })?;
            parse_reply(status, &body)
        };
        tokio::time::timeout(inner.timeout, call).await.unwrap_or(Err(HookError::Timeout))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ok_replies_give_data_and_rooms() {
        let grant = parse_reply(StatusCode::OK, br#"{"data":{"uid":7},"rooms":["user:7","org:1"]}"#).unwrap();
        assert_eq!(Value::Object(grant.data), json!({"uid": 7}));
        assert_eq!(grant.rooms, ["user:7", "org:1"]);
        assert_eq!(parse_reply(StatusCode::OK, b"{}").unwrap(), HookGrant::default());
        assert_eq!(parse_reply(StatusCode::OK, br#"{"data":null,"rooms":null}"#).unwrap(), HookGrant::default());
    }

    #[test]
    fn refusals_carry_the_apps_message() {
        let refused = |status, body: &[u8]| parse_reply(status, body).unwrap_err();
        assert_eq!(
            refused(StatusCode::UNAUTHORIZED, br#"{"message":"session expired"}"#),
            HookError::Refused("session expired".into())
        );
        assert_eq!(refused(StatusCode::FORBIDDEN, br#"{"message":"banned"}"#), HookError::Refused("banned".into()));
        assert_eq!(refused(StatusCode::FORBIDDEN, b"nope"), HookError::Refused("unauthorized".into()));
        assert_eq!(refused(StatusCode::UNAUTHORIZED, br#"{"message":""}"#), HookError::Refused("unauthorized".into()));
    }

    #[test]
    fn anything_else_is_a_bad_reply() {
        for (status, body) in [
            (StatusCode::OK, &b"not json"[..]),
            (StatusCode::OK, b""),
            (StatusCode::OK, b"[1]"),
            (StatusCode::OK, br#"{"data":[1]}"#),
            (StatusCode::OK, br#"{"rooms":"r"}"#),
            (StatusCode::OK, br#"{"rooms":[1]}"#),
            (StatusCode::INTERNAL_SERVER_ERROR, br#"{"message":"x"}"#),
            (StatusCode::NOT_FOUND, b""),
            (StatusCode::FOUND, b""),
        ] {
            assert!(matches!(parse_reply(status, body), Err(HookError::BadReply(_))), "{status} {body:?}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_hook_and_a_full_queue_refuse() {
        // A port nothing listens on (bound, then dropped).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = AuthConfig {
            connect_hook: Some(format!("http://127.0.0.1:{port}/auth")),
            connect_hook_concurrency: 1,
            ..AuthConfig::default()
        };
        let hook = ConnectHook::from_config(&config).unwrap().unwrap();
        assert!(matches!(hook.check(&json!({})).await, Err(HookError::Unreachable(_))));

        // Every admission taken: the next check is refused at once.
        let permits = hook.0.admitted.try_acquire_many(u32::try_from(QUEUE_PER_SLOT + 1).unwrap()).unwrap();
        assert_eq!(hook.check(&json!({})).await, Err(HookError::QueueFull));
        drop(permits);
    }
}
