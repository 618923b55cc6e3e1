//! A tiny blocking HTTP/1.1 client for the admin API (one request per connection).

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

/// What an HTTP request got back.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body, decoded as UTF-8 (lossy).
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.body).map_err(|e| format!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends `method path` with an optional JSON `body` to `addr` (`host:port`) and reads the whole
/// response (`Connection: close`). Errors are strings saying what failed.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let mut stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("{method} http://{addr}{path}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if let Some(body) = body {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out).map_err(|e| format!("{method} http://{addr}{path}: writing: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("{method} http://{addr}{path}: reading: {e}"))?;
    parse(&raw).map_err(|e| format!("{method} http://{addr}{path}: {e}"))
}

fn parse(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("incomplete response ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let rest = &raw[split + 4..];
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Ok(HttpResponse { status, body: String::from_utf8_lossy(&body).into_owned() })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let nl = rest.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..nl]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[nl + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size {
            return Err("truncated chunk".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let plain = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").expect("plain");
        assert_eq!((plain.status, plain.body.as_str()), (200, "ok"));
        let chunked = parse(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((chunked.status, chunked.body.as_str()), (503, "abcde"));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
