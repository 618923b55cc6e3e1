//! Redis' protected mode on the broker, compared byte for byte with a real `redis-server`: with
//! no password, a client that is not on loopback gets Redis' `-DENIED` error and is
//! disconnected; loopback clients, and every client once a password is set, are served.
//!
//! A client "not on loopback" connects to this machine's own non-loopback IPv4 address (the
//! source address is then that address too). The test needs `redis-server` and `ip` (iproute2),
//! both installed by `.ci/run`; it fails, never skips, when they are missing.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ioswarm::resp::{Broker, RedisConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TIMEOUT: Duration = Duration::from_secs(5);

/// This machine's first global-scope IPv4 address (e.g. eth0's).
fn non_loopback_ip() -> IpAddr {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` ({e}): install iproute2"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no global IPv4 address on this machine to connect from (ip said: {text:?})"))
}

struct RedisServer(Child, u16);

impl RedisServer {
    fn start(extra: &[&str]) -> Self {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
        let port_s = port.to_string();
        let mut args = vec!["--port", &port_s, "--bind", "0.0.0.0", "--protected-mode", "yes", "--save", ""];
        args.extend_from_slice(extra);
        let child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{bin}` ({e}): install redis-server"));
        let server = Self(child, port);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start listening on port {port}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An ioswarm broker on `0.0.0.0`, like a node started with `--redis-listen 0.0.0.0:PORT`.
async fn ioswarm(requirepass: Option<&str>) -> (u16, CancellationToken) {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let config = RedisConfig { requirepass: requirepass.map(str::to_owned), ..RedisConfig::default() };
    tokio::spawn(ioswarm::resp::serve(listener, Arc::new(Broker::new()), config, shutdown.clone(), TaskTracker::new()));
    (port, shutdown)
}

/// Sends `request` to `addr` and returns everything received until the server closes the
/// connection or `quiet` passes without more bytes.
async fn exchange(addr: SocketAddr, request: &[u8], quiet: Duration) -> (Vec<u8>, bool) {
    let mut stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await.unwrap().unwrap();
    // The peer may already have closed; a failed write is part of what we observe.
    let _ = stream.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

#[tokio::test]
async fn a_remote_client_without_a_password_is_denied_like_redis() {
    let ip = non_loopback_ip();
    let redis = RedisServer::start(&[]);
    let (port, _shutdown) = ioswarm(None).await;
    let (want, redis_closed) = exchange((ip, redis.1).into(), b"PING\r\n", TIMEOUT).await;
    let (got, ioswarm_closed) = exchange((ip, port).into(), b"PING\r\n", TIMEOUT).await;
    assert!(want.starts_with(b"-DENIED Redis is running in protected mode"), "{}", String::from_utf8_lossy(&want));
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    assert!(redis_closed && ioswarm_closed, "both close the connection after the error");
}

#[tokio::test]
async fn loopback_clients_are_served_without_a_password() {
    let (port, _shutdown) = ioswarm(None).await;
    let (got, closed) = exchange(([127, 0, 0, 1], port).into(), b"PING\r\n", Duration::from_millis(300)).await;
    assert_eq!(got, b"+PONG\r\n");
    assert!(!closed);
}

#[tokio::test]
async fn with_a_password_remote_clients_are_asked_to_auth_like_redis() {
    let ip = non_loopback_ip();
    let redis = RedisServer::start(&["--requirepass", "pw"]);
    let (port, _shutdown) = ioswarm(Some("pw")).await;
    let request = b"PING\r\nAUTH pw\r\nPING\r\n";
    let quiet = Duration::from_millis(300);
    let (want, _) = exchange((ip, redis.1).into(), request, quiet).await;
    let (got, closed) = exchange((ip, port).into(), request, quiet).await;
    assert_eq!(String::from_utf8_lossy(&want), "-NOAUTH Authentication required.\r\n+OK\r\n+PONG\r\n");
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    assert!(!closed);
}
