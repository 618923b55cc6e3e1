//! Wire-level clients for the conformance suite: a raw HTTP/1.1 long-polling client, a raw
//! WebSocket client, Engine.IO payload codecs and a transport-neutral `Conn`.
//!
//! Every network await goes through [`within`], so a silent server fails the test instead of
//! hanging it.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for any single network step.
pub(crate) const STEP: Duration = Duration::from_secs(3);

/// Server options every conformance server runs with (docs/conformance.md).
pub(crate) const PING_INTERVAL: Duration = Duration::from_millis(300);
pub(crate) const PING_TIMEOUT: Duration = Duration::from_millis(200);
pub(crate) const MAX_PAYLOAD: usize = 1_000_000;
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Raw Engine.IO echo endpoint.
pub(crate) const EIO: &str = "/engine.io/";
/// Socket.IO endpoint.
pub(crate) const SIO: &str = "/socket.io/";

static ADDR: OnceLock<String> = OnceLock::new();

/// Address (`host:port`) of the server under test: `$CONFORMANCE_ADDR` when set, else the
/// in-process conformance server, started once per test binary.
pub(crate) fn server_addr() -> &'static str {
    ADDR.get_or_init(|| match std::env::var("CONFORMANCE_ADDR") {
        Ok(addr) if !addr.is_empty() => addr,
        _ => crate::start_in_process(),
    })
}

/// Awaits `fut` for at most [`STEP`]; panics with `what` on timeout.
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(STEP, what, fut).await
}

/// Awaits `fut` for at most `limit`; panics with `what` on timeout.
pub(crate) async fn within_for<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Engine.IO packets and payloads
// ---------------------------------------------------------------------------------------------

/// One Engine.IO packet as seen on the wire: text packets keep their type digit
/// (`"4hello"`), binary messages are the raw bytes (no type).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Packet {
    Text(String),
    Binary(Vec<u8>),
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Packet::Text(s) => write!(f, "Text({s:?})"),
            Packet::Binary(b) => write!(f, "Binary({b:?})"),
        }
    }
}

/// Shorthand for a text packet.
pub(crate) fn t(s: &str) -> Packet {
    Packet::Text(s.to_owned())
}

/// Shorthand for a binary packet.
pub(crate) fn b(bytes: &[u8]) -> Packet {
    Packet::Binary(bytes.to_vec())
}

/// Splits a long-polling payload (`\x1e`-separated, binary as `b<base64>`).
pub(crate) fn decode_payload(body: &str) -> Vec<Packet> {
    body.split('\x1e')
        .map(|part| match part.strip_prefix('b') {
            Some(b64) => Packet::Binary(
                BASE64.decode(b64).unwrap_or_else(|e| panic!("bad base64 in payload part {part:?}: {e}")),
            ),
            None => Packet::Text(part.to_owned()),
        })
        .collect()
}

/// Joins packets into a long-polling payload.
pub(crate) fn encode_payload(packets: &[Packet]) -> String {
    packets
        .iter()
        .map(|p| match p {
            Packet::Text(s) => s.clone(),
            Packet::Binary(bytes) => format!("b{}", BASE64.encode(bytes)),
        })
        .collect::<Vec<_>>()
        .join("\x1e")
}

/// The exact open packet a conformance server must send.
pub(crate) fn expected_open(sid: &str, upgrades: &str) -> String {
    format!(r#"0{{"sid":"{sid}","upgrades":{upgrades},"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}}"#)
}

/// Parses an open packet and returns its sid, asserting the exact bytes and key order.
pub(crate) fn check_open(packet: &str, upgrades: &str) -> String {
    let json = packet.strip_prefix('0').unwrap_or_else(|| panic!("not an open packet: {packet:?}"));
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("open packet {packet:?}: {e}"));
    let sid = value["sid"].as_str().unwrap_or_else(|| panic!("open packet without string sid: {packet:?}")).to_owned();
    assert!(!sid.is_empty(), "empty sid in {packet:?}");
    assert_eq!(packet, expected_open(&sid, upgrades), "open packet bytes");
    sid
}

/// The exact JSON body of an Engine.IO HTTP error.
pub(crate) fn error_body(code: u8) -> String {
    let message = match code {
        0 => "Transport unknown",
        1 => "Session ID unknown",
        2 => "Bad handshake method",
        3 => "Bad request",
        4 => "Forbidden",
        5 => "Unsupported protocol version",
        _ => panic!("no Engine.IO error code {code}"),
    };
    format!(r#"{{"code":{code},"message":"{message}"}}"#)
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap_or_else(|e| panic!("non-UTF-8 body ({e}): {:?}", self.body))
    }

    /// Asserts an Engine.IO JSON error: status 400 (403 for code 4), JSON content type, exact body.
    pub(crate) fn assert_error(&self, code: u8) {
        let status = if code == 4 { 403 } else { 400 };
        assert_eq!((self.status, self.text()), (status, error_body(code)), "error response: {self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"), "error content type: {self:?}");
    }
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the whole response.
pub(crate) async fn http(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let what = format!("{method} {path}");
    let resp = within(&what, http_raw(method, path, headers, body)).await.unwrap_or_else(|e| panic!("{what}: {e}"));
    trace(|| {
        format!(
            "{what} {:?} -> {} {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)]),
            resp.status,
            String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
        )
    });
    resp
}

/// With `CONFORMANCE_TRACE` set, prints every exchange to stderr (shown for failing tests).
pub(crate) fn trace(line: impl FnOnce() -> String) {
    if std::env::var_os("CONFORMANCE_TRACE").is_some() {
        eprintln!("[{:?}] {}", std::thread::current().id(), line());
    }
}

async fn http_raw(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<HttpResponse> {
    let addr = server_addr();
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // Write concurrently with reading: a server may answer (413) before taking the whole body.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match rd.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(resp) = parse_complete_response(&buf, method, false)? {
                    writer.abort();
                    return Ok(resp);
                }
            }
            // A reset after the response arrived (e.g. 413 before the body was read) still
            // leaves a usable response in `buf`.
            Err(_) if !buf.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    writer.abort();
    parse_complete_response(&buf, method, true)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("connection closed before a complete response: {:?}", String::from_utf8_lossy(&buf)),
        )
    })
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Parses `buf` if it holds a complete response: framed by Content-Length or chunked encoding,
/// or close-delimited once `eof`.
fn parse_complete_response(buf: &[u8], method: &str, eof: bool) -> std::io::Result<Option<HttpResponse>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|e| invalid(format!("non-UTF-8 response head: {e}")))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let rest = &buf[head_end + 4..];
    let get = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let no_body = method == "HEAD" || status == 204 || status == 304 || status / 100 == 1;
    let body = if no_body {
        Vec::new()
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| invalid(format!("bad content-length {len:?}")))?;
        if rest.len() < len {
            return Ok(None);
        }
        rest[..len].to_vec()
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        match decode_chunked(rest)? {
            Some(body) => body,
            None => return Ok(None),
        }
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(HttpResponse { status, headers, body }))
}

fn decode_chunked(mut rest: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_str = std::str::from_utf8(&rest[..line_end]).unwrap_or("");
        let size_str = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| invalid(format!("bad chunk size {size_str:?}")))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `<path>?EIO=4&transport=polling[&sid=…]`.
pub(crate) fn polling_url(path: &str, sid: Option<&str>) -> String {
    match sid {
        Some(sid) => format!("{path}?EIO=4&transport=polling&sid={sid}"),
        None => format!("{path}?EIO=4&transport=polling"),
    }
}

/// `<path>?EIO=4&transport=websocket[&sid=…]`.
pub(crate) fn websocket_url(path: &str, sid: Option<&str>) -> String {
    match sid {
        Some(sid) => format!("{path}?EIO=4&transport=websocket&sid={sid}"),
        None => format!("{path}?EIO=4&transport=websocket"),
    }
}

// ---------------------------------------------------------------------------------------------
// Long-polling client
// ---------------------------------------------------------------------------------------------

/// A long-polling Engine.IO session.
#[derive(Debug)]
pub(crate) struct Polling {
    pub(crate) path: &'static str,
    pub(crate) sid: String,
    pending: std::collections::VecDeque<Packet>,
}

impl Polling {
    /// Performs the polling handshake, asserting the exact open packet and headers.
    pub(crate) async fn open(path: &'static str) -> Polling {
        let resp = http("GET", &polling_url(path, None), &[], b"").await;
        assert_eq!(resp.status, 200, "handshake: {resp:?}");
        let sid = check_open(&resp.text(), r#"["websocket"]"#);
        Polling { path, sid, pending: Default::default() }
    }

    pub(crate) fn url(&self) -> String {
        polling_url(self.path, Some(&self.sid))
    }

    /// One raw GET on the session.
    pub(crate) async fn get(&self) -> HttpResponse {
        http("GET", &self.url(), &[], b"").await
    }

    /// One raw POST on the session.
    pub(crate) async fn post(&self, body: &[u8]) -> HttpResponse {
        http("POST", &self.url(), &[], body).await
    }

    /// GET that must succeed; returns its packets.
    pub(crate) async fn get_packets(&self) -> Vec<Packet> {
        let resp = self.get().await;
        assert_eq!(resp.status, 200, "GET on live session: {resp:?}");
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=UTF-8"),
            "polling GET content type: {resp:?}"
        );
        decode_payload(&resp.text())
    }

    /// POSTs `packets` as one payload and asserts `200 ok`.
    pub(crate) async fn send(&self, packets: &[Packet]) {
        let resp = self.post(encode_payload(packets).as_bytes()).await;
        assert_eq!((resp.status, resp.text()), (200, "ok".to_owned()), "POST {packets:?}: {resp:?}");
    }

    /// Next packet, pings included.
    pub(crate) async fn recv_raw(&mut self) -> Packet {
        while self.pending.is_empty() {
            let packets = self.get_packets().await;
            self.pending.extend(packets);
        }
        self.pending.pop_front().expect("non-empty")
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// What a websocket read produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WsEvent {
    Packet(Packet),
    /// A close frame (with its code, if any), an error or EOF.
    Closed(Option<u16>),
}

/// A raw websocket connection.
pub(crate) struct Ws {
    ws: FragmentCollector<TokioIo<Upgraded>>,
}

impl std::fmt::Debug for Ws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ws")
    }
}

/// Opens a websocket on `path_and_query`; `Err` carries the handshake failure (e.g. status 400).
pub(crate) async fn ws_try_connect(path_and_query: &str) -> Result<Ws, WebSocketError> {
    let addr = server_addr();
    within(&format!("websocket connect {path_and_query}"), async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let req = hyper::Request::builder()
            .method("GET")
            .uri(path_and_query)
            .header("Host", addr)
            .header(hyper::header::UPGRADE, "websocket")
            .header(hyper::header::CONNECTION, "upgrade")
            .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let (mut ws, _resp) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream).await?;
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        Ok(Ws { ws: FragmentCollector::new(ws) })
    })
    .await
}

/// Opens a websocket that must succeed.
pub(crate) async fn ws_connect(path_and_query: &str) -> Ws {
    ws_try_connect(path_and_query).await.unwrap_or_else(|e| panic!("websocket connect {path_and_query}: {e}"))
}

impl Ws {
    pub(crate) async fn send_text(&mut self, text: &str) {
        trace(|| format!("ws >> {:?}", text.chars().take(200).collect::<String>()));
        within(
            &format!("ws send {text:?}"),
            self.ws.write_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec()))),
        )
        .await
        .unwrap_or_else(|e| panic!("ws send {text:?}: {e}"));
    }

    pub(crate) async fn send_binary(&mut self, bytes: &[u8]) {
        trace(|| format!("ws >> binary {:?}", &bytes[..bytes.len().min(50)]));
        within("ws send binary", self.ws.write_frame(Frame::binary(Payload::Owned(bytes.to_vec()))))
            .await
            .unwrap_or_else(|e| panic!("ws send binary: {e}"));
    }

    /// Sends one message split into frames: the first with `opcode`, the rest as continuations.
    pub(crate) async fn send_fragments(&mut self, opcode: OpCode, parts: &[&[u8]]) {
        for (i, part) in parts.iter().enumerate() {
            let fin = i + 1 == parts.len();
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            within("ws send fragment", self.ws.write_frame(Frame::new(fin, op, None, Payload::Owned(part.to_vec()))))
                .await
                .unwrap_or_else(|e| panic!("ws send fragment: {e}"));
        }
    }

    pub(crate) async fn send(&mut self, packet: &Packet) {
        match packet {
            Packet::Text(s) => self.send_text(s).await,
            Packet::Binary(bytes) => self.send_binary(bytes).await,
        }
    }

    /// Sends a close frame and waits for the server's close (or the connection's end).
    pub(crate) async fn close(&mut self, code: u16) {
        within("ws close", self.ws.write_frame(Frame::close(code, b"")))
            .await
            .unwrap_or_else(|e| panic!("ws close: {e}"));
        loop {
            match self.next_event_within(STEP).await {
                WsEvent::Closed(_) => return,
                WsEvent::Packet(_) => continue,
            }
        }
    }

    /// Next data frame or the end of the connection, within `limit`.
    pub(crate) async fn next_event_within(&mut self, limit: Duration) -> WsEvent {
        let event = self.next_event_inner(limit).await;
        trace(|| match &event {
            WsEvent::Packet(Packet::Text(s)) => format!("ws << {:?}", s.chars().take(200).collect::<String>()),
            other => format!("ws << {other:?}"),
        });
        event
    }

    async fn next_event_inner(&mut self, limit: Duration) -> WsEvent {
        within_for(limit, "websocket read", async {
            loop {
                match self.ws.read_frame().await {
                    Ok(frame) => match frame.opcode {
                        OpCode::Text => {
                            let text = String::from_utf8(frame.payload.to_vec()).expect("text frame is UTF-8");
                            return WsEvent::Packet(Packet::Text(text));
                        }
                        OpCode::Binary => {
                            return WsEvent::Packet(Packet::Binary(frame.payload.to_vec()));
                        }
                        OpCode::Close => {
                            let code = (frame.payload.len() >= 2)
                                .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
                            return WsEvent::Closed(code);
                        }
                        _ => continue,
                    },
                    Err(_) => return WsEvent::Closed(None),
                }
            }
        })
        .await
    }

    /// Next packet, pings included; panics if the connection ends.
    pub(crate) async fn recv_raw(&mut self) -> Packet {
        match self.next_event_within(STEP).await {
            WsEvent::Packet(p) => p,
            WsEvent::Closed(code) => panic!("websocket closed (code {code:?}) while a packet was expected"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Transport-neutral connection
// ---------------------------------------------------------------------------------------------

/// Which Engine.IO transport a test runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Polling,
    WebSocket,
}

/// An Engine.IO session over either transport.
#[derive(Debug)]
pub(crate) enum Conn {
    Polling(Polling),
    Ws { ws: Ws, sid: String },
}

impl Conn {
    /// Handshakes on `path` (`EIO` or `SIO`), asserting the exact open packet.
    pub(crate) async fn open(transport: Transport, path: &'static str) -> Conn {
        match transport {
            Transport::Polling => Conn::Polling(Polling::open(path).await),
            Transport::WebSocket => {
                let mut ws = ws_connect(&websocket_url(path, None)).await;
                let Packet::Text(open) = ws.recv_raw().await else { panic!("websocket open packet is binary") };
                let sid = check_open(&open, "[]");
                Conn::Ws { ws, sid }
            }
        }
    }

    pub(crate) fn sid(&self) -> &str {
        match self {
            Conn::Polling(p) => &p.sid,
            Conn::Ws { sid, .. } => sid,
        }
    }

    /// Sends packets (one POST payload over polling, one frame each over websocket).
    pub(crate) async fn send(&mut self, packets: &[Packet]) {
        match self {
            Conn::Polling(p) => p.send(packets).await,
            Conn::Ws { ws, .. } => {
                for packet in packets {
                    ws.send(packet).await;
                }
            }
        }
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.send(&[t(text)]).await;
    }

    /// Next packet, pings included.
    pub(crate) async fn recv_raw(&mut self) -> Packet {
        match self {
            Conn::Polling(p) => p.recv_raw().await,
            Conn::Ws { ws, .. } => ws.recv_raw().await,
        }
    }

    /// Next packet other than a ping; pings are answered with a pong.
    pub(crate) async fn recv(&mut self) -> Packet {
        loop {
            match self.recv_raw().await {
                Packet::Text(s) if s == "2" => self.pong().await,
                other => return other,
            }
        }
    }

    /// Next packet, which must be text; pings answered.
    pub(crate) async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Packet::Text(s) => s,
            Packet::Binary(bytes) => panic!("expected a text packet, got binary {bytes:?}"),
        }
    }

    /// Next packet, which must be binary; pings answered.
    pub(crate) async fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv().await {
            Packet::Binary(bytes) => bytes,
            Packet::Text(s) => panic!("expected a binary packet, got text {s:?}"),
        }
    }

    /// Sends a pong. Over polling the POST may race a close, so its answer is not checked.
    pub(crate) async fn pong(&mut self) {
        match self {
            Conn::Polling(p) => {
                let _ = p.post(b"3").await;
            }
            Conn::Ws { ws, .. } => {
                let _ = within("ws pong", ws.ws.write_frame(Frame::text(Payload::Borrowed(b"3")))).await;
            }
        }
    }

    /// Waits for a server ping (nothing else may arrive first) and answers it.
    pub(crate) async fn expect_ping_and_pong(&mut self) {
        let packet = self.recv_raw().await;
        assert_eq!(packet, t("2"), "expected a server ping");
        self.pong().await;
    }

    /// Asserts the server closes the session within `limit`, answering pings meanwhile so that
    /// a ping timeout cannot be mistaken for the close under test. No other packet may arrive.
    /// Returns how long the close took.
    pub(crate) async fn expect_closed_within(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        within_for(limit, "waiting for the server to close the session", async {
            match self {
                Conn::Polling(p) => loop {
                    let resp = p.get().await;
                    if resp.status == 400 {
                        resp.assert_error(1);
                        return start.elapsed();
                    }
                    assert_eq!(resp.status, 200, "GET while waiting for close: {resp:?}");
                    let mut closed = false;
                    for packet in decode_payload(&resp.text()) {
                        match packet {
                            Packet::Text(s) if s == "2" => {
                                let _ = p.post(b"3").await;
                            }
                            Packet::Text(s) if s == "6" => {}
                            Packet::Text(s) if s == "1" => closed = true,
                            other => panic!("unexpected {other:?} while waiting for close"),
                        }
                    }
                    if closed {
                        let at = start.elapsed();
                        p.get().await.assert_error(1);
                        return at;
                    }
                },
                Conn::Ws { ws, .. } => loop {
                    match ws.next_event_within(STEP).await {
                        WsEvent::Closed(_) => return start.elapsed(),
                        WsEvent::Packet(Packet::Text(s)) if s == "2" => {
                            let _ = ws.ws.write_frame(Frame::text(Payload::Borrowed(b"3"))).await;
                        }
                        WsEvent::Packet(other) => {
                            panic!("unexpected {other:?} while waiting for close")
                        }
                    }
                },
            }
        })
        .await
    }

    /// [`Conn::expect_closed_within`] with a 2 s limit.
    pub(crate) async fn expect_closed(&mut self) -> Duration {
        self.expect_closed_within(Duration::from_secs(2)).await
    }
}

/// Generates `polling` and `websocket` tests that run `$body(Transport)`.
#[macro_export]
macro_rules! both_transports {
    ($(#[$meta:meta])* $name:ident => $body:path) => {
        $(#[$meta])*
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn polling() {
                $body($crate::harness::Transport::Polling).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn websocket() {
                $body($crate::harness::Transport::WebSocket).await;
            }
        }
    };
}
