//! A minimal Socket.IO v5 / Engine.IO v4 client, just enough for load generation.
//!
//! Two ways in:
//! - [`Mode::Ws`]: a websocket straight away (`/socket.io/?EIO=4&transport=websocket`).
//! - [`Mode::Upgrade`]: like a browser: polling handshake `GET`, CONNECT `40` sent with a polling
//!   `POST`, its reply read with a polling `GET`, then a websocket with the session id, `2probe` →
//!   `3probe`, `5`. (A browser keeps a `GET` pending while it probes; this client does not.)
//!
//! After that both are the same: answer every server ping `2` with `3`, optionally emit
//! `ioswarm:join` with a room and wait for its ack, then hold until told to stop.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, handshake};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

pub(crate) type Ws = WebSocket<TokioIo<Upgraded>>;

/// How a client reaches the websocket transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// Websocket directly.
    Ws,
    /// Polling handshake, then upgrade to websocket (what browsers do).
    Upgrade,
}

impl Mode {
    /// The command-line spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Ws => "ws",
            Mode::Upgrade => "upgrade",
        }
    }

    /// Sockets one client holds at most at the same time.
    pub(crate) fn sockets_per_client(self) -> usize {
        match self {
            Mode::Ws => 1,
            Mode::Upgrade => 2,
        }
    }
}

/// Where to connect: the server's address and the `Host` header to send.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) host: String,
}

impl Target {
    /// Parses `http://127.0.0.1:3000` (a path, if any, is ignored: Socket.IO lives at `/socket.io/`).
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().with_context(|| format!("bad target URL {url}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("target must be an http:// URL, got {url}");
        }
        let authority = uri.authority().ok_or_else(|| anyhow!("target {url} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr =
            host.parse().with_context(|| format!("target host must be an IP address (loopback), got {host}"))?;
        if !ip.is_loopback() {
            bail!("only loopback targets are allowed, got {ip}");
        }
        Ok(Self { addr: SocketAddr::new(ip, port), host: authority.as_str().to_owned() })
    }
}

/// A failed connect attempt, with the step that failed (used to count failures by kind).
#[derive(Debug)]
pub(crate) struct ConnectError {
    pub(crate) stage: &'static str,
    pub(crate) error: anyhow::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:#}", self.stage, self.error)
    }
}

trait StageExt<T> {
    fn stage(self, stage: &'static str) -> Result<T, ConnectError>;
}

impl<T, E: Into<anyhow::Error>> StageExt<T> for Result<T, E> {
    fn stage(self, stage: &'static str) -> Result<T, ConnectError> {
        self.map_err(|e| ConnectError { stage, error: e.into() })
    }
}

fn fail<T>(stage: &'static str, msg: String) -> Result<T, ConnectError> {
    Err(ConnectError { stage, error: anyhow!(msg) })
}

/// Why a held connection ended.
#[derive(Debug)]
pub(crate) enum HoldEnd {
    /// We were told to stop (the normal end).
    Stopped,
    /// The server or the network ended it; the reason is a short fixed label.
    Dropped(&'static str),
}

/// Acts on one frame a client holding its connection read: answers a ping (counted in
/// `pings`), ends the hold on a close or a disconnect, and hands any other text packet to
/// `on_packet`. Returns why the hold ends, if it does.
pub(crate) async fn on_held_frame(
    ws: &mut Ws,
    frame: Result<Frame<'_>, fastwebsockets::WebSocketError>,
    pings: Option<&std::sync::atomic::AtomicU64>,
    on_packet: impl FnOnce(&[u8]),
) -> Option<HoldEnd> {
    let frame = match frame {
        Ok(frame) => frame,
        Err(_) => return Some(HoldEnd::Dropped("read error")),
    };
    match frame.opcode {
        OpCode::Close => Some(HoldEnd::Dropped("websocket close")),
        OpCode::Text if &frame.payload[..] == b"2" => {
            if let Some(pings) = pings {
                pings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            send_text(ws, "3").await.is_err().then_some(HoldEnd::Dropped("write error"))
        }
        OpCode::Text if frame.payload.first() == Some(&b'1') => Some(HoldEnd::Dropped("engine.io close")),
        OpCode::Text if frame.payload.starts_with(b"41") => Some(HoldEnd::Dropped("socket.io disconnect")),
        OpCode::Text => {
            on_packet(&frame.payload);
            None
        }
        _ => None,
    }
}

/// One connected Socket.IO client on the websocket transport.
pub(crate) struct Client {
    pub(crate) ws: Ws,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// Ties hyper's background connection tasks to the tokio runtime.
#[derive(Debug, Clone, Copy)]
struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::task::spawn(fut);
    }
}

async fn tcp_connect(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // Lets a new run reuse local ports still in TIME_WAIT from the previous one.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn ws_handshake(stream: TcpStream, target: &Target, path: &str) -> anyhow::Result<Ws> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, &target.host)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (mut ws, _response) = handshake::client(&SpawnExecutor, request, stream).await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    Ok(ws)
}

pub(crate) async fn send_text(ws: &mut Ws, text: &str) -> anyhow::Result<()> {
    ws.write_frame(Frame::text(Payload::Borrowed(text.as_bytes()))).await?;
    Ok(())
}

/// Next Engine.IO text packet; server pings are answered on the way.
async fn next_packet(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text => {
                let text = String::from_utf8(frame.payload.to_vec())?;
                if text == "2" {
                    send_text(ws, "3").await?;
                    continue;
                }
                return Ok(text);
            }
            OpCode::Close => bail!("websocket closed by server"),
            _ => continue,
        }
    }
}

/// Options for one client.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    pub(crate) mode: Mode,
    /// Room to join with `ioswarm:join` once connected.
    pub(crate) room: Option<String>,
}

impl Client {
    /// Opens a connection from `source`, sends CONNECT and joins the room if asked.
    pub(crate) async fn connect(
        source: IpAddr,
        target: &Target,
        options: &ClientOptions,
    ) -> Result<Self, ConnectError> {
        let mut ws = match options.mode {
            Mode::Ws => Self::open_ws(source, target).await?,
            Mode::Upgrade => Self::open_upgrade(source, target).await?,
        };
        if let Some(room) = &options.room {
            let room = serde_json::to_string(room).stage("join")?;
            send_text(&mut ws, &format!("420[\"ioswarm:join\",{room}]")).await.stage("join")?;
            loop {
                let packet = next_packet(&mut ws).await.stage("join")?;
                if let Some(body) = packet.strip_prefix("430") {
                    if body.contains("\"error\"") {
                        return fail("join", format!("join refused: {body}"));
                    }
                    break;
                }
                if packet.starts_with('1') || packet.starts_with("41") {
                    return fail("join", format!("closed while joining: {packet}"));
                }
            }
        }
        Ok(Self { ws })
    }

    async fn open_ws(source: IpAddr, target: &Target) -> Result<Ws, ConnectError> {
        let stream = tcp_connect(source, target.addr).await.stage("tcp")?;
        let mut ws =
            ws_handshake(stream, target, "/socket.io/?EIO=4&transport=websocket").await.stage("ws-handshake")?;
        let open = next_packet(&mut ws).await.stage("open")?;
        if !open.starts_with("0{") {
            return fail("open", format!("expected an open packet, got {open:.80}"));
        }
        send_text(&mut ws, "40").await.stage("connect")?;
        loop {
            let packet = next_packet(&mut ws).await.stage("connect")?;
            if packet.starts_with("40") {
                return Ok(ws);
            }
            if packet.starts_with("44") || packet.starts_with('1') {
                return fail("connect", format!("refused: {packet:.200}"));
            }
        }
    }

    async fn open_upgrade(source: IpAddr, target: &Target) -> Result<Ws, ConnectError> {
        let stream = tcp_connect(source, target.addr).await.stage("tcp")?;
        let (mut http, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.stage("polling")?;
        tokio::spawn(async move {
            // Ends when `http` is dropped after the upgrade (or on error).
            let _ = conn.await;
        });

        let base = "/socket.io/?EIO=4&transport=polling";
        let open = http_call(&mut http, target, Method::GET, base, None).await.stage("polling")?;
        let sid = open
            .strip_prefix('0')
            .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
            .and_then(|v| v.get("sid").and_then(|s| s.as_str()).map(str::to_owned))
            .ok_or_else(|| anyhow!("expected an open packet, got {open:.80}"))
            .stage("open")?;
        let session = format!("{base}&sid={sid}");
        let ok = http_call(&mut http, target, Method::POST, &session, Some("40")).await.stage("connect")?;
        if ok != "ok" {
            return fail("connect", format!("POST answered {ok:.80}"));
        }
        // The CONNECT reply comes back on the next poll (pings are answered with a POST).
        let mut connected = false;
        while !connected {
            let payload = http_call(&mut http, target, Method::GET, &session, None).await.stage("connect")?;
            for packet in payload.split('\x1e') {
                if packet.starts_with("40") {
                    connected = true;
                } else if packet == "2" {
                    http_call(&mut http, target, Method::POST, &session, Some("3")).await.stage("connect")?;
                } else if packet.starts_with("44") || packet.starts_with('1') {
                    return fail("connect", format!("refused: {packet:.200}"));
                }
            }
        }

        let stream = tcp_connect(source, target.addr).await.stage("tcp")?;
        let ws_path = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
        let mut ws = ws_handshake(stream, target, &ws_path).await.stage("ws-handshake")?;
        send_text(&mut ws, "2probe").await.stage("probe")?;
        let probe = next_packet(&mut ws).await.stage("probe")?;
        if probe != "3probe" {
            return fail("probe", format!("expected 3probe, got {probe:.80}"));
        }
        send_text(&mut ws, "5").await.stage("probe")?;
        drop(http);
        Ok(ws)
    }

    /// Emits `event` with the single argument `arg` and ack id `id` (`42ID["event",arg]`), and
    /// waits for its ack `43ID[...]`, answering pings on the way; returns the ack's arguments.
    /// Other packets are skipped; a disconnect or close is an error.
    pub(crate) async fn call(
        &mut self,
        id: u64,
        event: &str,
        arg: &serde_json::Value,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let packet = format!("42{id}[{},{arg}]", serde_json::Value::String(event.to_owned()));
        send_text(&mut self.ws, &packet).await?;
        loop {
            let packet = next_packet(&mut self.ws).await?;
            if let Some(args) = ack_args(&packet, id) {
                return args;
            }
            if packet.starts_with('1') || packet.starts_with("41") {
                bail!("closed while waiting for the ack of {event}: {packet:.80}");
            }
        }
    }

    /// Answers pings until `stop` fires (then closes the websocket) or the server ends it.
    pub(crate) async fn hold(mut self, stop: CancellationToken, pings: &std::sync::atomic::AtomicU64) -> HoldEnd {
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    let close = self.ws.write_frame(Frame::close(1000, b""));
                    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                    return HoldEnd::Stopped;
                }
                frame = self.ws.read_frame() => {
                    if let Some(end) = on_held_frame(&mut self.ws, frame, Some(pings), |_| {}).await {
                        return end;
                    }
                }
            }
        }
    }
}

/// The arguments of `packet` when it is the ack `43ID[...]` of `id` (main namespace); `None` for
/// any other packet.
fn ack_args(packet: &str, id: u64) -> Option<anyhow::Result<Vec<serde_json::Value>>> {
    let rest = packet.strip_prefix("43")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if rest[..digits].parse::<u64>().ok()? != id {
        return None;
    }
    Some(serde_json::from_str(&rest[digits..]).with_context(|| format!("malformed ack {packet:.80}")))
}

/// One polling request; returns the body as text, failing on a non-200 status.
async fn http_call(
    http: &mut SendRequest<Full<Bytes>>,
    target: &Target,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<String> {
    http.ready().await?;
    let mut request = Request::builder().method(method).uri(path).header(header::HOST, &target.host);
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "text/plain;charset=UTF-8");
    }
    let body = Full::new(Bytes::copy_from_slice(body.unwrap_or("").as_bytes()));
    let response = http.send_request(request.body(body)?).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8(bytes.to_vec())?;
    if status != StatusCode::OK {
        bail!("HTTP {status}: {text:.200}");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_accepts_loopback_only() {
        let t = Target::parse("http://127.0.0.1:3000").expect("loopback parses");
        assert_eq!(t.addr, "127.0.0.1:3000".parse().expect("addr"));
        assert_eq!(t.host, "127.0.0.1:3000");
        assert!(Target::parse("http://10.0.0.1:3000").is_err());
        assert!(Target::parse("ws://127.0.0.1:3000").is_err());
        let v6 = Target::parse("http://[::1]:8080/socket.io/").expect("v6 parses");
        assert_eq!(v6.addr, "[::1]:8080".parse().expect("addr"));
    }

    #[test]
    fn ack_args_match_their_id_only() {
        let args = ack_args(r#"437[{"rooms":["a"]}]"#, 7).expect("an ack").expect("parses");
        assert_eq!(args, vec![serde_json::json!({"rooms": ["a"]})]);
        assert!(ack_args(r#"4371[{}]"#, 7).is_none());
        assert!(ack_args(r#"42["msg",{}]"#, 7).is_none());
        assert!(ack_args("43[]", 7).is_none());
        assert!(ack_args("437[", 7).expect("an ack").is_err());
    }
}
