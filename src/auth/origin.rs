//! Cross-site WebSocket hijacking guard. When a browser's cookie can authenticate a client, a page
//! on another site could open a connection that the browser sends the victim's cookie with.
//! Such a handshake (a request without `sid`, polling or WebSocket) whose `Origin` is present
//! and not allowed is refused with 403 before it reaches Engine.IO, so before any connect hook
//! call. Requests without `Origin` (non-browser clients) pass: they carry only the cookies their
//! owner gave them. So do pages the node serves itself (`--static`): their `Origin` is the
//! node's own, `<scheme>://<Host>`, and the browser sends such a request only the cookies of
//! that host (a DNS-rebound name is another host to the browser: none of the victim's cookies).

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
    scheme: &'static str,
}

impl OriginPolicy {
    /// A policy that lets handshakes from `allowed` origins (exact, ASCII case-insensitive) in,
    /// and those from the node's own origin: `scheme` (`http`, or `https` on a TLS listener)
    /// and the request's `Host`.
    pub fn new(allowed: Vec<String>, scheme: &'static str) -> Self {
        Self { allowed, scheme }
    }

    /// Whether a request may go on: one with a `sid` (an existing session), an `OPTIONS`
    /// preflight, one without `Origin`, one from an allowed origin, or one from a page the node
    /// served (`Origin` is `<scheme>://<Host>`).
    pub fn allows(
        &self,
        method: &Method,
        query: &str,
        origin: Option<&HeaderValue>,
        host: Option<&HeaderValue>,
    ) -> bool {
        if method == Method::OPTIONS || form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "sid") {
            return true;
        }
        let Some(origin) = origin else { return true };
        let origin = origin.as_bytes();
        self.allowed.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(origin)) || self.is_own(origin, host)
    }

    /// Whether `origin` is `<scheme>://<host>` (the page came from this listener), ASCII
    /// case-insensitive like the allowed origins.
    fn is_own(&self, origin: &[u8], host: Option<&HeaderValue>) -> bool {
        let Some(host) = host.map(HeaderValue::as_bytes).filter(|h| !h.is_empty()) else { return false };
        let (scheme, rest) = origin.split_at(self.scheme.len().min(origin.len()));
        scheme.eq_ignore_ascii_case(self.scheme.as_bytes())
            && rest.strip_prefix(b"://").is_some_and(|authority| authority.eq_ignore_ascii_case(host))
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
        let host = req.headers().get(header::HOST);
        if self.policy.allows(req.method(), req.uri().query().unwrap_or(""), origin, host) {
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
        let policy = OriginPolicy::new(vec!["https://app.example".to_owned()], "http");
        let allows = |query: &str, origin: Option<&'static str>| {
            policy.allows(&Method::GET, query, origin.map(HeaderValue::from_static).as_ref(), None)
        };
        let handshake = "EIO=4&transport=websocket";
        assert!(allows(handshake, Some("https://app.example")));
        assert!(allows(handshake, Some("HTTPS://APP.example")));
        assert!(!allows(handshake, Some("https://evil.example")));
        assert!(!allows("EIO=4&transport=polling", Some("https://evil.example")));
        // A look-alike is not the origin.
        assert!(!allows(handshake, Some("https://app.example.evil.example")));
        assert!(!allows(handshake, Some("null")));
        // No Origin: not a browser; an existing session; a preflight.
        assert!(allows(handshake, None));
        let evil = HeaderValue::from_static("https://evil.example");
        assert!(policy.allows(&Method::POST, "EIO=4&transport=polling&sid=abc", Some(&evil), None));
        assert!(policy.allows(&Method::OPTIONS, handshake, Some(&evil), None));
        // Nothing allowed: every browser handshake is refused.
        let app = HeaderValue::from_static("https://app.example");
        assert!(!OriginPolicy::new(Vec::new(), "http").allows(&Method::GET, handshake, Some(&app), None));
    }

    #[test]
    fn pages_the_node_served_are_its_own_origin() {
        let host = HeaderValue::from_static("127.0.0.1:3001");
        let allows = |policy: &OriginPolicy, origin: &'static str, host: Option<&HeaderValue>| {
            policy.allows(&Method::GET, "EIO=4&transport=websocket", Some(&HeaderValue::from_static(origin)), host)
        };
        let plain = OriginPolicy::new(Vec::new(), "http");
        assert!(allows(&plain, "http://127.0.0.1:3001", Some(&host)));
        assert!(allows(&plain, "HTTP://127.0.0.1:3001", Some(&host)));
        // Another port, another host, another scheme, a path, no Host: not this node's page.
        assert!(!allows(&plain, "http://127.0.0.1:3002", Some(&host)));
        assert!(!allows(&plain, "http://evil.example", Some(&host)));
        assert!(!allows(&plain, "https://127.0.0.1:3001", Some(&host)));
        assert!(!allows(&plain, "http://127.0.0.1:3001/", Some(&host)));
        assert!(!allows(&plain, "http://127.0.0.1:3001", None));
        assert!(!allows(&plain, "http://", Some(&HeaderValue::from_static(""))));
        // On a TLS listener the page's origin is https.
        let tls = OriginPolicy::new(Vec::new(), "https");
        assert!(allows(&tls, "https://127.0.0.1:3001", Some(&host)));
        assert!(!allows(&tls, "http://127.0.0.1:3001", Some(&host)));
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
