//! Authentication on CONNECT, configured by the `[auth]` table (no Rust code needed):
//!
//! - [`config`](AuthConfig): the settings and their validation at start.
//! - `token`: where a client's token is found ([`TokenSource`]: the CONNECT payload, the
//!   handshake's `token` query parameter, a cookie).
//! - `jwt`: [`JwtVerifier`], with the algorithm fixed by the configured key.
//! - `hook`: [`ConnectHook`], the app's own endpoint deciding about each CONNECT.
//! - `origin`: [`OriginGuard`], the cross-site hijacking check on handshakes.
//!
//! [`Authenticator`] runs the JWT check and then the hook as a namespace middleware; the claims
//! and the hook's data become the socket's data ([`crate::socketio::Socket::data`]) and the
//! hook's rooms are joined before the client sees `connect`.

mod config;
mod hook;
mod jwt;
mod origin;
mod token;

pub use config::AuthConfig;
pub use hook::{ConnectHook, HookError, HookGrant, QUEUE_PER_SLOT, parse_reply, parse_url};
pub use jwt::{JwtError, JwtVerifier, KeyError, LEEWAY_S, load_public_key};
pub use origin::{OriginGuard, OriginPolicy};
pub use token::{TokenInput, TokenSource, cookie, find_token};

use http::header;
use serde_json::{Map, Value, json};

use crate::metrics::{AuthRejectReason, HookResult};
use crate::rules::ConnectRooms;
use crate::socketio::{ConnectError, ConnectRequest};

/// The message a client gets when its token is missing or refused.
pub const UNAUTHORIZED: &str = "unauthorized";
/// The message a client gets when the connect hook could not decide.
pub const UNAVAILABLE: &str = "auth unavailable";
/// Longest room name the hook may hand out.
const MAX_ROOM_NAME: usize = 256;
/// Handshake headers sent to the hook.
const HOOK_HEADERS: [&str; 4] = ["cookie", "origin", "user-agent", "x-forwarded-for"];

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The public key file is unreadable or not a supported key.
    #[error("auth.jwt_public_key: {0}")]
    Key(#[from] KeyError),
    /// The connect hook client could not be set up.
    #[error("auth.connect_hook: {0}")]
    Hook(String),
    /// A `rooms_on_connect` template is invalid.
    #[error(transparent)]
    Rooms(#[from] crate::rules::RuleError),
}

/// Runs the configured checks for one CONNECT.
#[derive(Debug)]
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    sources: Vec<TokenSource>,
    hook: Option<ConnectHook>,
    namespaces: Vec<String>,
    /// `rooms_on_connect`: rooms rendered from the socket's data once it is granted.
    rooms: ConnectRooms,
}

impl Authenticator {
    /// The authenticator `config` describes; `None` when authentication is off.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Self>, AuthError> {
        if !config.enabled() {
            return Ok(None);
        }
        Ok(Some(Self {
            jwt: JwtVerifier::from_config(config)?,
            sources: config.token_sources(),
            hook: ConnectHook::from_config(config).map_err(AuthError::Hook)?,
            namespaces: config.namespaces.clone(),
            rooms: ConnectRooms::parse("auth.rooms_on_connect", &config.rooms_on_connect)?,
        }))
    }

    /// Whether CONNECTs to namespace `nsp` are checked.
    pub fn applies_to(&self, nsp: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == nsp)
    }

    /// Checks one CONNECT: the token (when a JWT key is set), then the hook (when one is set).
    /// On success the claims and the hook's data are merged into `req.grant`'s data and the
    /// hook's rooms are added to it.
    pub async fn check(&self, req: &ConnectRequest) -> Result<(), ConnectError> {
        let claims = match &self.jwt {
            Some(jwt) => Some(self.verify(jwt, req)?),
            None => None,
        };
        let grant = match &self.hook {
            Some(hook) => {
                let body = hook_request(req, claims.as_ref());
                let result = hook.check(&body).await;
                let label = result.as_ref().map_or_else(HookError::label, |_| HookResult::Accepted);
                ::metrics::counter!(crate::metrics::AUTH_HOOK_REQUESTS, "result" => label.as_str()).increment(1);
                match result {
                    Ok(grant) => Some(grant),
                    Err(HookError::Refused(message)) => return Err(reject(AuthRejectReason::HookRefused, message)),
                    Err(err) => {
                        tracing::warn!(nsp = %req.nsp, error = %err, "connect hook failed; client refused");
                        return Err(reject(AuthRejectReason::HookUnavailable, UNAVAILABLE));
                    }
                }
            }
            None => None,
        };
        let mut data = claims.unwrap_or_default();
        if let Some(grant) = grant {
            data.extend(grant.data);
            for room in grant.rooms {
                if room.is_empty() || room.len() > MAX_ROOM_NAME || crate::Sid::parse(&room).is_some() {
                    tracing::warn!(room = %room, "connect hook named a room a socket may not join; skipped");
                    continue;
                }
                req.grant.join(room);
            }
        }
        // `rooms_on_connect` over the socket's whole data: the claims and the hook's data.
        let data = Value::Object(data);
        for room in self.rooms.render(&data) {
            req.grant.join(room);
        }
        if let Value::Object(data) = data {
            req.grant.merge_data(data);
        }
        ::metrics::counter!(crate::metrics::AUTH_ACCEPTED).increment(1);
        Ok(())
    }

    fn verify(&self, jwt: &JwtVerifier, req: &ConnectRequest) -> Result<Map<String, Value>, ConnectError> {
        let input = TokenInput { auth: &req.auth, query: &req.handshake.query, headers: &req.handshake.headers };
        let Some(token) = find_token(&self.sources, input) else {
            return Err(reject(AuthRejectReason::MissingToken, UNAUTHORIZED));
        };
        jwt.verify(&token).map_err(|err| {
            tracing::debug!(nsp = %req.nsp, error = %err, "token refused");
            let reason = match err {
                JwtError::Expired => AuthRejectReason::ExpiredToken,
                JwtError::Invalid(_) => AuthRejectReason::InvalidToken,
            };
            reject(reason, UNAUTHORIZED)
        })
    }
}

fn reject(reason: AuthRejectReason, message: impl Into<String>) -> ConnectError {
    ::metrics::counter!(crate::metrics::AUTH_REJECTED, crate::metrics::label::REASON => reason.as_str()).increment(1);
    ConnectError::new(message)
}

/// The JSON body POSTed to the connect hook for `req`.
pub fn hook_request(req: &ConnectRequest, claims: Option<&Map<String, Value>>) -> Value {
    let query: Map<String, Value> = form_urlencoded::parse(req.handshake.query.as_bytes())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let mut headers = Map::new();
    for name in HOOK_HEADERS {
        let values: Vec<&str> = req.handshake.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        if !values.is_empty() {
            let sep = if name == header::COOKIE.as_str() { "; " } else { ", " };
            headers.insert(name.to_owned(), Value::String(values.join(sep)));
        }
    }
    json!({
        "nsp": req.nsp,
        "auth": req.auth,
        "query": query,
        "headers": headers,
        "address": req.handshake.remote_addr.to_string(),
        "claims": claims.map_or(Value::Null, |c| Value::Object(c.clone())),
    })
}
