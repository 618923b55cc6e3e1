//! A client of ioswarm's admin HTTP API: `GET /cluster` on one keep-alive connection (reopened
//! when it fails), and the figures the cluster scenarios read from it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Parses `127.0.0.1:9464` or `http://127.0.0.1:9464` (loopback only); also used for Redis
/// addresses.
pub(crate) fn parse_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let bare = text.trim().trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = bare.parse().with_context(|| format!("expected HOST:PORT, got {text}"))?;
    if !addr.ip().is_loopback() {
        bail!("only loopback addresses are allowed, got {addr}");
    }
    Ok(addr)
}

/// One node's admin API.
pub(crate) struct Admin {
    addr: SocketAddr,
    conn: Option<SendRequest<Empty<Bytes>>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Admin {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path` as JSON, bounded by 5 s.
    pub(crate) async fn get_json(&mut self, path: &str) -> anyhow::Result<Value> {
        let body = self.get_body(path, Duration::from_secs(5)).await?;
        serde_json::from_slice(&body).with_context(|| format!("GET http://{}{path}: not JSON", self.addr))
    }

    /// `GET path` as text (e.g. `/metrics`), bounded by `limit`.
    pub(crate) async fn get_text(&mut self, path: &str, limit: Duration) -> anyhow::Result<String> {
        let body = self.get_body(path, limit).await?;
        String::from_utf8(body.to_vec()).with_context(|| format!("GET http://{}{path}: not UTF-8", self.addr))
    }

    async fn get_body(&mut self, path: &str, limit: Duration) -> anyhow::Result<Bytes> {
        let result = tokio::time::timeout(limit, self.get_once(path)).await;
        match result {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(anyhow!("GET http://{}{path} took over {limit:?}", self.addr))
            }
        }
    }

    async fn get_once(&mut self, path: &str) -> anyhow::Result<Bytes> {
        let conn = match &mut self.conn {
            Some(conn) if !conn.is_closed() => conn,
            _ => {
                let stream = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .with_context(|| format!("connecting to the admin API at {}", self.addr))?;
                stream.set_nodelay(true)?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    // Ends when `send` is dropped or the server closes the connection.
                    let _ = conn.await;
                });
                self.conn.insert(send)
            }
        };
        conn.ready().await?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, self.addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let response = conn.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            bail!("GET http://{}{path}: HTTP {status}: {:.200}", self.addr, String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    /// This node's view of the cluster (`GET /cluster`).
    pub(crate) async fn cluster(&mut self) -> anyhow::Result<ClusterView> {
        let value = self.get_json("/cluster").await?;
        Ok(ClusterView(value))
    }
}

/// The sum of every sample of metric `name` (any labels) in a Prometheus text exposition;
/// `None` when the metric is not there.
pub(crate) fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// One `GET /cluster` answer.
#[derive(Debug, Clone)]
pub(crate) struct ClusterView(pub(crate) Value);

impl ClusterView {
    pub(crate) fn node_id(&self) -> Option<u64> {
        self.0.get("node_id").and_then(Value::as_u64)
    }

    pub(crate) fn converged(&self) -> bool {
        self.0.get("converged").and_then(Value::as_bool) == Some(true)
    }

    pub(crate) fn leader(&self) -> Option<u64> {
        self.0.pointer("/raft/leader").and_then(Value::as_u64)
    }

    pub(crate) fn term(&self) -> Option<u64> {
        self.0.pointer("/raft/term").and_then(Value::as_u64)
    }

    fn members(&self) -> &[Value] {
        self.0.get("members").and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    fn member(&self, node: u64) -> Option<&Value> {
        self.members().iter().find(|m| m.get("node_id").and_then(Value::as_u64) == Some(node))
    }

    /// How many members this node lists, and how many of them are alive and connected.
    pub(crate) fn alive_connected(&self) -> (usize, usize) {
        let members = self.members();
        let ok = members
            .iter()
            .filter(|m| {
                m.get("liveness").and_then(Value::as_str) == Some("alive")
                    && m.get("connected").and_then(Value::as_bool) != Some(false)
            })
            .count();
        (members.len(), ok)
    }

    /// How many rooms of member `node` this node holds in its interest table.
    pub(crate) fn interest_rooms(&self, node: u64) -> Option<u64> {
        self.member(node)?.get("interest_rooms").and_then(Value::as_u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_are_loopback_only() {
        assert_eq!(parse_addr("http://127.0.0.1:9464/").expect("parses"), "127.0.0.1:9464".parse().expect("addr"));
        assert!(parse_addr("10.1.2.3:9464").is_err());
        assert!(parse_addr("localhost").is_err());
    }

    #[test]
    fn metric_sum_adds_every_label_set() {
        let text = "# HELP a x\n# TYPE a counter\na_total{peer=\"1\"} 2\na_total{peer=\"2\"} 3\nab 7\nb 1.5\n";
        assert_eq!(metric_sum(text, "a_total"), Some(5.0));
        assert_eq!(metric_sum(text, "b"), Some(1.5));
        assert_eq!(metric_sum(text, "a"), None);
    }

    #[test]
    fn cluster_view_reads_members() {
        let view = ClusterView(serde_json::json!({
            "node_id": 1, "converged": true,
            "raft": {"term": 3, "leader": 2, "state": "follower"},
            "members": [
                {"node_id": 1, "liveness": "alive", "connected": true, "self": true, "rooms": 0},
                {"node_id": 2, "liveness": "alive", "connected": true, "rooms": 5, "interest_rooms": 5},
                {"node_id": 3, "liveness": "suspect", "connected": false, "interest_rooms": 0},
            ]
        }));
        assert_eq!((view.node_id(), view.leader(), view.term()), (Some(1), Some(2), Some(3)));
        assert!(view.converged());
        assert_eq!(view.alive_connected(), (3, 2));
        assert_eq!(view.interest_rooms(2), Some(5));
        assert_eq!(view.interest_rooms(1), None);
    }
}
