//! The HTTP side of an Engine.IO endpoint: error codes and bodies, polling
//! and JSON responses, CORS headers and the preflight answer, the query string.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::config::Cors;
use super::packet_v3::PayloadKind;

/// Engine.IO error codes and their messages, as engine.io sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    pub(super) fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    pub(super) fn status(self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The response body type of every endpoint.
pub(crate) type Body = Full<Bytes>;

pub(crate) fn parse_query(query: &str) -> HashMap<String, String> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

pub(super) fn error_response(code: ErrorCode) -> Response<Body> {
    let body = format!(r#"{{"code":{},"message":"{}"}}"#, code as u8, code.message());
    json_response(code.status(), body)
}

pub(super) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

pub(super) fn payload_too_large() -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    res
}

pub(super) fn text_response(body: Bytes) -> Response<Body> {
    let mut res = Response::new(Full::new(body));
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The answer of a polling GET (or a polling handshake): text, or a protocol 3 binary payload.
pub(super) fn payload_response(kind: PayloadKind, body: Bytes) -> Response<Body> {
    match kind {
        PayloadKind::Text => text_response(body),
        PayloadKind::Binary => {
            let mut res = text_response(body);
            res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            res
        }
    }
}

pub(super) fn upgrade_response(response: Response<http_body_util::Empty<Bytes>>) -> Response<Body> {
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

pub(super) fn cors_headers(cors: &Cors, req: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    let origin = req.get(header::ORIGIN);
    match cors {
        Cors::Disabled => {}
        Cors::Any => {
            out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        Cors::Origins(list) => {
            if let Some(origin) = origin.filter(|o| list.iter().any(|allowed| o.as_bytes() == allowed.as_bytes())) {
                out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
                out.insert(header::VARY, HeaderValue::from_static("Origin"));
            }
        }
    }
    out
}

pub(super) fn preflight(req: &HeaderMap) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::NO_CONTENT;
    let headers = res.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET,HEAD,PUT,PATCH,POST,DELETE"));
    if let Some(requested) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    res
}
