//! The `[auth]` table of the configuration file and its validation.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::token::TokenSource;
use crate::config::ConfigError;

/// Default `connect_hook_timeout_ms`.
const DEFAULT_HOOK_TIMEOUT_MS: u64 = 3_000;
/// Largest `connect_hook_timeout_ms` (one minute: a client waits this long for its CONNECT).
const MAX_HOOK_TIMEOUT_MS: u64 = 60_000;
/// Default `connect_hook_concurrency`.
const DEFAULT_HOOK_CONCURRENCY: usize = 64;
/// Largest `connect_hook_concurrency`.
const MAX_HOOK_CONCURRENCY: usize = 10_000;

/// Authentication on CONNECT: a JWT, a connect hook (the app's own endpoint), or both (the hook
/// after the JWT); the `[auth]` table. Off when neither `jwt_secret`, `jwt_public_key` nor
/// `connect_hook` is set.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret a token must be signed with.
    pub jwt_secret: Option<String>,
    /// PEM file with the public key tokens are verified with; its type fixes the algorithm
    /// (RSA: RS256, EC P-256: ES256, Ed25519: EdDSA).
    pub jwt_public_key: Option<PathBuf>,
    /// When set, a token's `iss` must be present and equal this.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must be present and contain this.
    pub jwt_audience: Option<String>,
    /// Where the token is looked for, in order: `auth` (the CONNECT payload's `token`),
    /// `query` (the handshake's `token` query parameter), `cookie:NAME`.
    pub token_from: Vec<String>,
    /// URL the app answers connect checks on (POST JSON); `http://` or `https://`.
    pub connect_hook: Option<String>,
    /// How long a client's connect check may take, queue wait included.
    pub connect_hook_timeout_ms: u64,
    /// Most connect-hook requests in flight at once; up to 16 times as many wait, beyond that a
    /// CONNECT is refused with `auth unavailable`.
    pub connect_hook_concurrency: usize,
    /// The origins (`scheme://host[:port]`) a handshake may come from when a cookie can
    /// authenticate; empty: the `cors_origin` list (a `*` there allows none).
    pub allowed_origins: Vec<String>,
    /// The namespaces that require authentication; empty: every namespace.
    pub namespaces: Vec<String>,
    /// Rooms each authenticated socket joins, as templates over its data (e.g. `user:{sub}`).
    pub rooms_on_connect: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            token_from: vec!["auth".to_owned(), "query".to_owned()],
            connect_hook: None,
            connect_hook_timeout_ms: DEFAULT_HOOK_TIMEOUT_MS,
            connect_hook_concurrency: DEFAULT_HOOK_CONCURRENCY,
            allowed_origins: Vec::new(),
            namespaces: Vec::new(),
            rooms_on_connect: Vec::new(),
        }
    }
}

// Hand-written so that logging the configuration never prints the secret.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("jwt_public_key", &self.jwt_public_key)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("token_from", &self.token_from)
            .field("connect_hook", &self.connect_hook)
            .field("connect_hook_timeout_ms", &self.connect_hook_timeout_ms)
            .field("connect_hook_concurrency", &self.connect_hook_concurrency)
            .field("allowed_origins", &self.allowed_origins)
            .field("namespaces", &self.namespaces)
            .field("rooms_on_connect", &self.rooms_on_connect)
            .finish()
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

impl AuthConfig {
    /// Whether any authentication is configured (a JWT key or a connect hook).
    pub fn enabled(&self) -> bool {
        self.has_jwt() || self.connect_hook.is_some()
    }

    /// Whether tokens are verified (a secret or a public key is set).
    pub fn has_jwt(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }

    /// Whether a browser's cookie can authenticate a client: a `cookie:` token source (with a
    /// JWT key) or a connect hook (it is sent the cookies). Handshakes are then checked for
    /// their `Origin`.
    pub fn cookie_can_authenticate(&self) -> bool {
        self.connect_hook.is_some()
            || (self.has_jwt() && self.token_sources().iter().any(|s| matches!(s, TokenSource::Cookie(_))))
    }

    /// The parsed `token_from` list (entries that do not parse are left out; [`Self::validate`]
    /// refuses them).
    pub fn token_sources(&self) -> Vec<TokenSource> {
        self.token_from.iter().filter_map(|s| TokenSource::parse(s).ok()).collect()
    }

    /// `connect_hook_timeout_ms` as a `Duration`.
    pub fn connect_hook_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_hook_timeout_ms)
    }

    /// The origins a handshake may come from when cookies can authenticate: `allowed_origins`,
    /// else the explicit origins of `cors_origin`.
    pub fn origins(&self, cors_origin: &[String]) -> Vec<String> {
        let list = if self.allowed_origins.is_empty() { cors_origin } else { &self.allowed_origins };
        list.iter().filter(|o| *o != "*").cloned().collect()
    }

    /// Checks every `[auth]` setting, reading and parsing the key file; `auth_token` is the
    /// top-level `--auth-token` (the two modes do not combine).
    pub fn validate(&self, auth_token: bool) -> Result<(), ConfigError> {
        if self.jwt_secret.is_some() && self.jwt_public_key.is_some() {
            return Err(invalid("auth.jwt_public_key", "set either jwt_secret (HS256) or jwt_public_key, not both"));
        }
        if self.jwt_secret.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("auth.jwt_secret", "must not be empty when set"));
        }
        if let Some(path) = &self.jwt_public_key {
            super::jwt::load_public_key(path).map_err(|e| invalid("auth.jwt_public_key", e.to_string()))?;
        }
        if !self.has_jwt() {
            for (field, set) in
                [("auth.jwt_issuer", self.jwt_issuer.is_some()), ("auth.jwt_audience", self.jwt_audience.is_some())]
            {
                if set {
                    return Err(invalid(field, "needs jwt_secret or jwt_public_key"));
                }
            }
        }
        if self.token_from.is_empty() {
            return Err(invalid(
                "auth.token_from",
                "must name at least one source: \"auth\", \"query\" or \"cookie:NAME\"",
            ));
        }
        for source in &self.token_from {
            TokenSource::parse(source).map_err(|e| invalid("auth.token_from", e))?;
        }
        if let Some(url) = &self.connect_hook {
            super::hook::parse_url(url).map_err(|e| invalid("auth.connect_hook", e))?;
        }
        if !self.rooms_on_connect.is_empty() {
            if !self.enabled() {
                return Err(invalid(
                    "auth.rooms_on_connect",
                    "needs jwt_secret, jwt_public_key or connect_hook: its templates read the data they give a socket",
                ));
            }
            crate::rules::ConnectRooms::parse("auth.rooms_on_connect", &self.rooms_on_connect)
                .map_err(|e| ConfigError::Setting { field: e.setting, message: e.message })?;
        }
        if self.connect_hook_timeout_ms == 0 || self.connect_hook_timeout_ms > MAX_HOOK_TIMEOUT_MS {
            return Err(invalid(
                "auth.connect_hook_timeout_ms",
                format!("{} must be between 1 and {MAX_HOOK_TIMEOUT_MS} milliseconds", self.connect_hook_timeout_ms),
            ));
        }
        if self.connect_hook_concurrency == 0 || self.connect_hook_concurrency > MAX_HOOK_CONCURRENCY {
            return Err(invalid(
                "auth.connect_hook_concurrency",
                format!("{} must be between 1 and {MAX_HOOK_CONCURRENCY}", self.connect_hook_concurrency),
            ));
        }
        for origin in &self.allowed_origins {
            if !super::origin::is_origin(origin) {
                return Err(invalid(
                    "auth.allowed_origins",
                    format!("{origin:?} is not an origin: use scheme://host[:port] without a path"),
                ));
            }
        }
        for nsp in &self.namespaces {
            if !nsp.starts_with('/') {
                return Err(invalid("auth.namespaces", format!("{nsp:?} must start with '/' (e.g. \"/chat\")")));
            }
        }
        if auth_token && self.enabled() {
            return Err(invalid(
                "auth_token",
                "--auth-token (the shared token) and [auth] (JWT / connect hook) cannot be combined: use one",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn field(c: &AuthConfig) -> &'static str {
        match c.validate(false).unwrap_err() {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    fn secret() -> AuthConfig {
        AuthConfig { jwt_secret: Some("s".into()), ..AuthConfig::default() }
    }

    #[test]
    fn defaults_are_off_and_valid() {
        let c = AuthConfig::default();
        c.validate(false).unwrap();
        c.validate(true).unwrap();
        assert!(!c.enabled());
        secret().validate(false).unwrap();
    }

    #[test]
    fn each_bad_setting_is_named() {
        let both = AuthConfig { jwt_public_key: Some("k.pem".into()), ..secret() };
        assert_eq!(field(&both), "auth.jwt_public_key");
        let missing = AuthConfig { jwt_public_key: Some("/nonexistent/k.pem".into()), ..AuthConfig::default() };
        assert_eq!(field(&missing), "auth.jwt_public_key");
        assert_eq!(field(&AuthConfig { jwt_issuer: Some("i".into()), ..AuthConfig::default() }), "auth.jwt_issuer");
        assert_eq!(field(&AuthConfig { jwt_audience: Some("a".into()), ..AuthConfig::default() }), "auth.jwt_audience");
        assert_eq!(field(&AuthConfig { token_from: vec![], ..secret() }), "auth.token_from");
        assert_eq!(field(&AuthConfig { token_from: vec!["header".into()], ..secret() }), "auth.token_from");
        assert_eq!(field(&AuthConfig { token_from: vec!["cookie:".into()], ..secret() }), "auth.token_from");
        for url in ["ftp://x/", "localhost:8080/x", "http://", "http://a b/"] {
            assert_eq!(field(&AuthConfig { connect_hook: Some(url.into()), ..secret() }), "auth.connect_hook", "{url}");
        }
        assert_eq!(field(&AuthConfig { connect_hook_timeout_ms: 0, ..secret() }), "auth.connect_hook_timeout_ms");
        let huge = AuthConfig { connect_hook_timeout_ms: MAX_HOOK_TIMEOUT_MS + 1, ..secret() };
        assert_eq!(field(&huge), "auth.connect_hook_timeout_ms");
        assert_eq!(field(&AuthConfig { connect_hook_concurrency: 0, ..secret() }), "auth.connect_hook_concurrency");
        let origins = AuthConfig { allowed_origins: vec!["app.example".into()], ..secret() };
        assert_eq!(field(&origins), "auth.allowed_origins");
        assert_eq!(field(&AuthConfig { namespaces: vec!["chat".into()], ..secret() }), "auth.namespaces");
        assert_eq!(field(&AuthConfig { jwt_secret: Some(String::new()), ..AuthConfig::default() }), "auth.jwt_secret");
        match secret().validate(true).unwrap_err() {
            ConfigError::Invalid { field, .. } => assert_eq!(field, "auth_token"),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<AuthConfig>("jwt_secret = \"s\"\njwt_secrett = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("jwt_secrett"), "{err}");
    }

    #[test]
    fn cookies_authenticate_with_a_cookie_source_or_a_hook() {
        assert!(!secret().cookie_can_authenticate());
        let cookie = AuthConfig { token_from: vec!["cookie:session_jwt".into()], ..secret() };
        assert!(cookie.cookie_can_authenticate());
        let hook = AuthConfig { connect_hook: Some("http://127.0.0.1:1/auth".into()), ..AuthConfig::default() };
        assert!(hook.cookie_can_authenticate());
        // `*` in cors_origin allows no origin here; allowed_origins wins over cors_origin.
        assert!(hook.origins(&["*".into()]).is_empty());
        assert_eq!(hook.origins(&["https://a.example".into()]), ["https://a.example"]);
        let own = AuthConfig { allowed_origins: vec!["https://b.example".into()], ..hook };
        assert_eq!(own.origins(&["https://a.example".into()]), ["https://b.example"]);
    }

    #[test]
    fn debug_redacts_the_secret() {
        let s = format!("{:?}", AuthConfig { jwt_secret: Some("hunter2".into()), ..AuthConfig::default() });
        assert!(!s.contains("hunter2") && s.contains("<redacted>"), "{s}");
    }
}
