//! Cross-site WebSocket hijacking guard. When a browser's cookie can authenticate a client, a page
//! on another site could open a connection that the browser sends the victim's cookie with.
//! Such a handshake (a request without `sid`, polling or WebSocket) whose `Origin` is present
//! and not allowed is refused with 403 before it reaches Engine.IO, so before any connect hook
//! call. Requests without `Origin` (non-browser clients) pass: they carry only the cookies their
//! owner gave them.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::engineio::Body;
use crate::http::Endpoint;

/// The body engine.io sends with 403 `Forbidden`.
const FORBIDDEN_BODY: &str = r#"{"code":4,"message":"Forbidden"}"#;

/// Whether `text` is an origin: `scheme://host[:port]`, no path.
pub(crate) fn is_origin(text: &str) -> bool {
    match text.split_once("://") {
        Some((scheme, host)) => {
            !scheme.is_empty()
                && !host.is_empty()
                && !host.contains('/')
                && !text.contains(|c: char| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// Which handshakes may open a session (pure: request parts in, a decision out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// A policy that lets handshakes from `allowed` origins (exact, ASCII case-insensitive) in.
    pub fn new(allowed: Vec<String>) -> Self {
        Self { allowed }
    }

    /// Whether a request may go on: one with a `sid` (an existing session), an `OPTIONS`
    /// preflight, one without `Origin`, or one from an allowed origin.
    pub fn allows(&self, method: &Method, query: &str, origin: Option<&HeaderValue>) -> bool {
        if method == Method::OPTIONS || form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "sid") {
            return true;
        }
        let Some(origin) = origin else { return true };
        let origin = origin.as_bytes();
        self.allowed.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(origin))
    }
}

/// The Socket.IO endpoint behind the [`OriginPolicy`].
#[derive(Debug)]
pub struct OriginGuard<E> {
    inner: E,
    policy: OriginPolicy,
}

impl<E: Endpoint> OriginGuard<E> {
    /// `inner`, guarded by `policy`.
    pub fn new(inner: E, policy: OriginPolicy) -> Self {
        Self { inner, policy }
    }
}

impl<E: Endpoint> Endpoint for OriginGuard<E> {
    fn call(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send + '_>> {
        let origin = req.headers().get(header::ORIGIN);
        if self.policy.allows(req.method(), req.uri().query().unwrap_or(""), origin) {
            return self.inner.call(req, remote);
        }
        tracing::debug!(%remote, origin = ?origin, "handshake from a foreign origin refused");
        ::metrics::counter!(
            crate::metrics::AUTH_REJECTED,
            crate::metrics::label::REASON => crate::metrics::AuthRejectReason::Origin.as_str()
        )
        .increment(1);
        let mut res = Response::new(Full::new(Bytes::from_static(FORBIDDEN_BODY.as_bytes())));
        *res.status_mut() = StatusCode::FORBIDDEN;
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Box::pin(std::future::ready(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_handshakes_from_foreign_origins_are_refused() {
        let policy = OriginPolicy::new(vec!["https://app.example".to_owned()]);
        let app = HeaderValue::from_static("https://app.example");
        let evil = HeaderValue::from_static("https://evil.example");
        let handshake = "EIO=4&transport=websocket";
        assert!(policy.allows(&Method::GET, handshake, Some(&app)));
        assert!(policy.allows(&Method::GET, handshake, Some(&HeaderValue::from_static("HTTPS://APP.example"))));
        assert!(!policy.allows(&Method::GET, handshake, Some(&evil)));
        assert!(!policy.allows(&Method::GET, "EIO=4&transport=polling", Some(&evil)));
        // A look-alike is not the origin.
        let like = HeaderValue::from_static("https://app.example.evil.example");
        assert!(!policy.allows(&Method::GET, handshake, Some(&like)));
        assert!(!policy.allows(&Method::GET, handshake, Some(&HeaderValue::from_static("null"))));
        // No Origin: not a browser; an existing session; a preflight.
        assert!(policy.allows(&Method::GET, handshake, None));
        assert!(policy.allows(&Method::POST, "EIO=4&transport=polling&sid=abc", Some(&evil)));
        assert!(policy.allows(&Method::OPTIONS, handshake, Some(&evil)));
        // Nothing allowed: every browser handshake is refused.
        assert!(!OriginPolicy::new(Vec::new()).allows(&Method::GET, handshake, Some(&app)));
    }

    #[test]
    fn origins_are_scheme_host_port() {
        for good in ["https://app.example", "http://localhost:8080"] {
            assert!(is_origin(good), "{good}");
        }
        for bad in ["app.example", "https://", "https://a.example/", "://x", "https://a b"] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
