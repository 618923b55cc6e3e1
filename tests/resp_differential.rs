//! Differential tests of the Redis-protocol broker against a real `redis-server`.
//!
//! Each test starts `redis-server` (from `$REDIS_SERVER` or `PATH`; the tests fail, never skip,
//! when it is missing) on a free port and the ioswarm broker in-process on `127.0.0.1:0`, sends
//! both the same raw bytes and asserts identical reply bytes. Only what legitimately differs is
//! normalised: client ids (HELLO's `id`, CLIENT ID), INFO contents and COMMAND output, whose
//! structure is asserted instead.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ioswarm::resp::{Broker, RedisConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const TIMEOUT: Duration = Duration::from_secs(5);

// ---- servers ---------------------------------------------------------------------------------

struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl RedisServer {
    fn start(extra: &[&str]) -> Self {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let port_s = port.to_string();
        let mut args =
            vec!["--port", &port_s, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"];
        args.extend_from_slice(extra);
        let child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{bin}` ({e}): install redis-server (apt-get install redis-server) or set REDIS_SERVER")
            });
        // Owned by `Self` from here on: dropping it (also on the panic below) kills the process.
        let server = Self { child, addr: ([127, 0, 0, 1], port).into() };
        for _ in 0..200 {
            if std::net::TcpStream::connect(server.addr).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start listening on {}", server.addr);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ioswarm {
    addr: SocketAddr,
    shutdown: CancellationToken,
    broker: Arc<Broker>,
}

impl Ioswarm {
    async fn start(config: RedisConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let broker = Arc::new(Broker::new());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tokio::spawn(ioswarm::resp::serve(listener, broker.clone(), config, shutdown.clone(), tasks));
        Self { addr, shutdown, broker }
    }
}

impl Drop for Ioswarm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A redis-server and an ioswarm broker with the same configuration.
struct Pair {
    redis: RedisServer,
    ours: Ioswarm,
}

impl Pair {
    async fn start() -> Self {
        Self { redis: RedisServer::start(&[]), ours: Ioswarm::start(RedisConfig::default()).await }
    }

    async fn with_password(password: &str) -> Self {
        let config = RedisConfig { requirepass: Some(password.into()), ..RedisConfig::default() };
        Self { redis: RedisServer::start(&["--requirepass", password]), ours: Ioswarm::start(config).await }
    }

    fn addrs(&self) -> [SocketAddr; 2] {
        [self.redis.addr, self.ours.addr]
    }
}

// ---- a raw client and a reply reader -------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Value {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Null,
    Agg(u8, Vec<Value>),
    Other(u8, Vec<u8>),
}

/// One reply: its raw bytes and parsed value.
#[derive(Clone, Debug)]
struct Frame {
    raw: Vec<u8>,
    value: Value,
}

fn parse(buf: &[u8], pos: usize) -> Option<(Value, usize)> {
    let kind = *buf.get(pos)?;
    let nl = pos + buf[pos..].windows(2).position(|w| w == b"\r\n")?;
    let line = &buf[pos + 1..nl];
    let next = nl + 2;
    let num = || std::str::from_utf8(line).unwrap().parse::<i64>().unwrap();
    Some(match kind {
        b'+' => (Value::Simple(line.to_vec()), next),
        b'-' => (Value::Error(line.to_vec()), next),
        b':' => (Value::Int(num()), next),
        b'_' => (Value::Null, next),
        b',' | b'#' | b'(' => (Value::Other(kind, line.to_vec()), next),
        b'$' | b'=' => {
            let n = num();
            if n < 0 {
                return Some((Value::Bulk(None), next));
            }
            let end = next + usize::try_from(n).unwrap();
            if buf.len() < end + 2 {
                return None;
            }
            (Value::Bulk(Some(buf[next..end].to_vec())), end + 2)
        }
        b'*' | b'%' | b'~' | b'>' => {
            let n = num();
            if n < 0 {
                return Some((Value::Bulk(None), next));
            }
            let count = usize::try_from(n).unwrap() * if kind == b'%' { 2 } else { 1 };
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..count {
                let (v, end) = parse(buf, at)?;
                items.push(v);
                at = end;
            }
            (Value::Agg(kind, items), at)
        }
        other => panic!("unexpected reply byte {other:#x} in {:?}", String::from_utf8_lossy(buf)),
    })
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new(), eof: false }
    }

    async fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("timed out waiting for a reply; have {:?}", String::from_utf8_lossy(&self.buf)),
        }
    }

    /// The next reply.
    async fn reply(&mut self) -> Frame {
        loop {
            if let Some((value, used)) = parse(&self.buf, 0) {
                let raw = self.buf.drain(..used).collect();
                return Frame { raw, value };
            }
            if !self.fill().await {
                panic!("connection closed; unparsed {:?}", String::from_utf8_lossy(&self.buf));
            }
        }
    }

    async fn replies(&mut self, n: usize) -> Vec<Frame> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.reply().await);
        }
        out
    }

    /// Every reply until the server closes the connection.
    async fn until_closed(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            while let Some((value, used)) = parse(&self.buf, 0) {
                out.push(Frame { raw: self.buf.drain(..used).collect(), value });
            }
            if self.eof || !self.fill().await {
                assert!(self.buf.is_empty(), "trailing bytes {:?}", String::from_utf8_lossy(&self.buf));
                return out;
            }
        }
    }

    /// Bytes received before `wait` passes without more (for inputs Redis never answers).
    async fn quiet(&mut self, wait: Duration) -> Vec<u8> {
        let mut chunk = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            if n == 0 {
                self.eof = true;
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        std::mem::take(&mut self.buf)
    }
}

fn is_hello_map(v: &Value) -> bool {
    matches!(v, Value::Agg(_, items) if items.first() == Some(&Value::Bulk(Some(b"server".to_vec()))))
}

/// HELLO's map with `id` zeroed (the only field that differs).
fn normalise(frame: &Frame) -> Value {
    let mut value = frame.value.clone();
    if is_hello_map(&value)
        && let Value::Agg(_, items) = &mut value
    {
        assert_eq!(items.len(), 14, "HELLO map has 7 entries");
        assert_eq!(items[6], Value::Bulk(Some(b"id".to_vec())));
        assert!(matches!(items[7], Value::Int(_)));
        items[7] = Value::Int(0);
    }
    value
}

fn show(frames: &[Frame]) -> String {
    frames.iter().map(|f| String::from_utf8_lossy(&f.raw).into_owned()).collect::<Vec<_>>().join("")
}

/// Asserts both servers sent the same replies (raw bytes, or normalised for HELLO maps).
fn assert_same(what: &str, redis: &[Frame], ours: &[Frame]) {
    let same = redis.len() == ours.len()
        && redis
            .iter()
            .zip(ours)
            .all(|(r, o)| if is_hello_map(&r.value) { normalise(r) == normalise(o) } else { r.raw == o.raw });
    assert!(same, "{what}: replies differ\n--- redis ---\n{}\n--- ioswarm ---\n{}", show(redis), show(ours));
}

/// Sends `script` followed by QUIT to both servers and compares everything until close.
async fn compare_script(pair: &Pair, what: &str, script: &[u8]) {
    let mut results = Vec::new();
    for addr in pair.addrs() {
        let mut conn = Conn::open(addr).await;
        conn.send(script).await;
        conn.send(b"QUIT\r\n").await;
        results.push(conn.until_closed().await);
    }
    assert!(!results[0].is_empty(), "{what}: no replies from redis");
    assert_same(what, &results[0], &results[1]);
}

/// Sends `input` (no QUIT) and compares everything until the server closes the connection.
async fn compare_until_closed(pair: &Pair, what: &str, input: &[u8]) {
    let mut results = Vec::new();
    for addr in pair.addrs() {
        let mut conn = Conn::open(addr).await;
        conn.send(input).await;
        results.push(conn.until_closed().await);
    }
    assert_same(what, &results[0], &results[1]);
}

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

// ---- tests -----------------------------------------------------------------------------------

const BASIC: &[&[u8]] = &[
    b"PING\r\n",
    b"ping hello\r\n",
    b"PING a b\r\n",
    b"ECHO\r\n",
    b"ECHO \"quoted \\x41\\n\" 'single \\' q'\r\n",
    b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
    b"*2\r\n$4\r\necho\r\n$5\r\nbin\x00\xff\r\n",
    b"foo a b\r\n",
    b"foo\r\n",
    b"\r\n",
    b"   \r\n",
    b"\n",
    b"*0\r\n",
    b"*-1\r\n",
    b"SELECT 0\r\nSELECT 15\r\nSELECT 16\r\nSELECT -1\r\nSELECT x\r\nSELECT 01\r\nSELECT 99999999999\r\nSELECT\r\n",
    b"CLIENT SETNAME\r\nCLIENT GETNAME\r\nCLIENT SETNAME myname\r\nCLIENT GETNAME\r\nCLIENT SETNAME \"a b\"\r\n",
    b"CLIENT SETNAME \"\"\r\nCLIENT GETNAME\r\nCLIENT\r\nCLIENT FOO\r\nclient getname x\r\n",
    b"AUTH\r\nAUTH x\r\nAUTH default anything\r\nAUTH nobody x\r\nAUTH a b c\r\n",
    b"HELLO 4\r\nHELLO x\r\nHELLO 1\r\nHELLO 3 FOO\r\nHELLO 2 SETNAME\r\nHELLO 3 AUTH default\r\n",
    b"HELLO 3 AUTH default y SETNAME a b\r\nHELLO 2 AUTH nobody x\r\n",
    b"PUBSUB\r\nPUBSUB FOO\r\nPUBSUB NUMPAT x\r\nPUBSUB CHANNELS a b\r\nPUBSUB NUMPAT\r\n",
    b"PUBSUB NUMSUB\r\nPUBSUB NUMSUB a b\r\nPUBSUB SHARDNUMSUB a\r\nPUBSUB CHANNELS\r\nPUBSUB SHARDCHANNELS x*\r\n",
    b"PUBLISH\r\nPUBLISH ch\r\nPUBLISH ch msg\r\nSPUBLISH ch msg\r\nSPUBLISH ch\r\n",
    b"SUBSCRIBE\r\nPSUBSCRIBE\r\nSSUBSCRIBE\r\nUNSUBSCRIBE\r\nPUNSUBSCRIBE\r\nSUNSUBSCRIBE\r\n",
    b"INFO foo\r\nINFO keyspace\r\nINFO KEYSPACE foo\r\nRESET x\r\nRESET\r\n",
    b"COMMAND FOO\r\nCOMMAND COUNT x\r\nCOMMAND LIST x y\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_commands_match_redis() {
    let pair = Pair::start().await;
    for script in BASIC {
        compare_script(&pair, &String::from_utf8_lossy(script), script).await;
    }
    // The same in RESP3 (HELLO's id is normalised).
    for script in BASIC {
        let mut resp3 = b"HELLO 3\r\n".to_vec();
        resp3.extend_from_slice(script);
        compare_script(&pair, &format!("RESP3 {}", String::from_utf8_lossy(script)), &resp3).await;
    }
    // Unknown command errors quote at most 128 bytes of name and arguments.
    let long = vec![b'x'; 300];
    let script = [cmd(&[&long, b"a", &long, b"b"]), cmd(&[b"nope", &long[..100], &long[..40], b"c"])].concat();
    compare_script(&pair, "long unknown command", &script).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_split_delivery_match_redis() {
    let pair = Pair::start().await;
    let script: Vec<u8> = BASIC.concat();
    compare_script(&pair, "whole pipeline", &script).await;
    // One byte per write: every split point of the pipeline.
    let mut results = Vec::new();
    for addr in pair.addrs() {
        let mut conn = Conn::open(addr).await;
        for b in &script[..600] {
            conn.send(std::slice::from_ref(b)).await;
        }
        conn.send(&script[600..]).await;
        conn.send(b"QUIT\r\n").await;
        results.push(conn.until_closed().await);
    }
    assert_same("byte by byte", &results[0], &results[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_mode_matches_redis() {
    let pair = Pair::start().await;
    let resp2: &[u8] = b"SUBSCRIBE a b\r\nSUBSCRIBE a\r\nPSUBSCRIBE p* q?\r\nECHO x\r\nfoo\r\nPING\r\nPING x\r\nPING a b\r\n\
        CLIENT SETNAME n\r\nPUBLISH a x\r\nHELLO 3 AUTH\r\nUNSUBSCRIBE a zz\r\nPUNSUBSCRIBE p*\r\nPUNSUBSCRIBE\r\nPUNSUBSCRIBE\r\n\
        UNSUBSCRIBE\r\nUNSUBSCRIBE\r\nECHO back\r\nSSUBSCRIBE s1\r\nSSUBSCRIBE s1 s2\r\nSUNSUBSCRIBE s2\r\nECHO no\r\n\
        SUNSUBSCRIBE\r\nSUNSUBSCRIBE\r\nSUBSCRIBE c\r\nPSUBSCRIBE d\r\nRESET\r\nECHO reset\r\nPUBSUB NUMPAT\r\n\
        PUBSUB NUMSUB c\r\nUNSUBSCRIBE\r\n";
    compare_script(&pair, "RESP2 subscribed mode", resp2).await;

    let resp3: &[u8] = b"HELLO 3\r\nSUBSCRIBE a\r\nPUBLISH a x\r\nPING\r\nPING x\r\nECHO ok\r\nPSUBSCRIBE *\r\nPUBLISH a y\r\n\
        PUBLISH other z\r\nSSUBSCRIBE s\r\nSPUBLISH s m\r\nSPUBLISH a m\r\nCLIENT GETNAME\r\nUNSUBSCRIBE\r\nPUNSUBSCRIBE\r\n\
        PUBLISH a none\r\nSUNSUBSCRIBE\r\nUNSUBSCRIBE\r\nSUBSCRIBE b\r\nHELLO 2\r\nECHO now2\r\nPING\r\nRESET\r\nPING\r\n";
    compare_script(&pair, "RESP3 subscribed mode", resp3).await;
}

/// Several subscribers (RESP2, RESP3, channels, patterns, shard channels) and a pipelined
/// publisher: every subscriber receives the same frames in the same order from both servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_order_with_several_subscribers_matches_redis() {
    let pair = Pair::start().await;
    let setups: [(&[u8], usize); 4] = [
        (b"SUBSCRIBE news sport\r\n", 2),
        (b"HELLO 3\r\nSUBSCRIBE news\r\nPSUBSCRIBE n*\r\n", 3),
        (b"PSUBSCRIBE s[a-p]ort* ?ews\r\n", 2),
        (b"HELLO 3\r\nSSUBSCRIBE shard\r\nPSUBSCRIBE sh*\r\n", 3),
    ];
    let mut publish = Vec::new();
    for i in 0..40 {
        let channel: &[u8] = match i % 5 {
            0 => b"news",
            1 => b"sport",
            2 => b"sportive",
            3 => b"nothing",
            _ => b"shard",
        };
        publish.extend(cmd(&[b"PUBLISH", channel, format!("message {i}").as_bytes()]));
        if i % 7 == 0 {
            publish.extend(cmd(&[b"SPUBLISH", b"shard", format!("sharded {i}").as_bytes()]));
        }
    }
    let mut streams = Vec::new();
    for addr in pair.addrs() {
        let mut subscribers = Vec::new();
        let mut setup_frames = Vec::new();
        for (setup, n) in setups {
            let mut conn = Conn::open(addr).await;
            conn.send(setup).await;
            setup_frames.push(conn.replies(n).await);
            subscribers.push(conn);
        }
        let mut publisher = Conn::open(addr).await;
        publisher.send(&publish).await;
        publisher.send(b"QUIT\r\n").await;
        let publisher_frames = publisher.until_closed().await;
        let mut per_subscriber = Vec::new();
        for mut conn in subscribers {
            conn.send(b"QUIT\r\n").await;
            per_subscriber.push(conn.until_closed().await);
        }
        streams.push((setup_frames, publisher_frames, per_subscriber));
    }
    let (redis, ours) = (&streams[0], &streams[1]);
    for (i, (r, o)) in redis.0.iter().zip(&ours.0).enumerate() {
        assert_same(&format!("subscriber {i} setup"), r, o);
    }
    assert_same("publisher", &redis.1, &ours.1);
    for (i, (r, o)) in redis.2.iter().zip(&ours.2).enumerate() {
        assert!(r.len() > 2, "subscriber {i} got messages");
        assert_same(&format!("subscriber {i} messages"), r, o);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_flows_match_redis() {
    let pair = Pair::with_password("s3cret").await;
    let script: &[u8] = b"PING\r\nfoo a\r\nECHO x\r\nSUBSCRIBE a\r\nCLIENT SETNAME\r\nAUTH\r\nAUTH wrong\r\nAUTH default wrong\r\n\
        AUTH nobody s3cret\r\nAUTH a b c\r\nHELLO 3\r\nHELLO\r\nHELLO 3 AUTH default wrong\r\nHELLO 4 AUTH default s3cret\r\n\
        *10\r\n$4\r\nECHO\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n$1\r\n4\r\n$1\r\n5\r\n$1\r\n6\r\n$1\r\n7\r\n$1\r\n8\r\n$1\r\n9\r\n\
        RESET\r\nAUTH s3cret\r\nPING\r\nECHO y\r\nAUTH wrong\r\nPING\r\nRESET\r\nPING\r\nHELLO 3 AUTH default s3cret SETNAME me\r\n\
        CLIENT GETNAME\r\nSELECT 3\r\nRESET\r\nCLIENT GETNAME\r\nHELLO 2 AUTH default s3cret\r\nCLIENT GETNAME\r\nAUTH default s3cret\r\n";
    compare_script(&pair, "auth flow", script).await;
    compare_until_closed(&pair, "unauthenticated multibulk", b"PING\r\n*11\r\n").await;
    compare_until_closed(&pair, "unauthenticated bulk", b"*1\r\n$16385\r\n").await;
    let mut big = b"AUTH s3cret\r\n*2\r\n$4\r\nECHO\r\n$16385\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'z', 16385));
    big.extend_from_slice(b"\r\n");
    compare_script(&pair, "authenticated big bulk", &big).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_client() {
    let pair = Pair::start().await;
    let mut huge_inline = b"PING ".to_vec();
    huge_inline.resize(70 * 1024, b'a');
    let mut huge_count = b"*1".to_vec();
    huge_count.resize(70 * 1024, b'1');
    let mut huge_bulk_count = b"*1\r\n$".to_vec();
    huge_bulk_count.resize(70 * 1024, b'2');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("absurd multibulk", b"*99999999999\r\n".to_vec()),
        ("negative bulk", b"*1\r\n$-5\r\n".to_vec()),
        ("bulk over proto-max-bulk-len", b"*1\r\n$536870913\r\n".to_vec()),
        ("not a number", b"*x\r\n".to_vec()),
        ("expected dollar", b"*1\r\n:1\r\n".to_vec()),
        ("expected dollar after good args", b"*2\r\n$4\r\nECHO\r\n+x\r\n".to_vec()),
        ("pipeline then error", b"PING\r\nECHO a\r\n*1\r\n$x\r\nPING\r\n".to_vec()),
        ("unbalanced quotes", b"ECHO \"abc\r\n".to_vec()),
        ("quote followed by text", b"ECHO 'a'b\r\n".to_vec()),
        ("huge inline", huge_inline),
        ("huge multibulk count line", huge_count),
        ("huge bulk count line", huge_bulk_count),
        ("http post", b"POST / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("host header", b"Host: x\r\nPING\r\n".to_vec()),
        ("quit with pipeline after", b"PING\r\nQUIT\r\nPING\r\n".to_vec()),
    ];
    // A bystander on each server keeps working through all of it.
    let mut bystanders = [Conn::open(pair.redis.addr).await, Conn::open(pair.ours.addr).await];
    for (what, input) in &cases {
        compare_until_closed(&pair, what, input).await;
        for b in &mut bystanders {
            b.send(b"PING\r\n").await;
            assert_eq!(b.reply().await.raw, b"+PONG\r\n", "bystander after {what}");
        }
    }
    // Inputs Redis never answers: a truncated frame, binary without a newline, a NUL hiding the
    // newline. Neither server replies; the bystander is unaffected.
    let silent: [&[u8]; 4] =
        [b"*2\r\n$4\r\nECHO\r\n$5\r\nab", b"*3\r\n$3\r\nfoo", b"\x00\x01\x02\x03", b"PI\x00NG\r\nPING\r\n"];
    for input in silent {
        for addr in pair.addrs() {
            let mut conn = Conn::open(addr).await;
            conn.send(input).await;
            assert_eq!(conn.quiet(Duration::from_millis(150)).await, b"", "{input:?} got a reply");
            assert!(!conn.eof, "{input:?} closed the connection");
        }
    }
    // Non-RESP bytes that do form an inline line: an unknown-command error, same bytes.
    compare_script(&pair, "binary inline", b"\xff\xfe\x80 \x01\r\n").await;
    for b in &mut bystanders {
        b.send(b"PING\r\n").await;
        assert_eq!(b.reply().await.raw, b"+PONG\r\n");
    }
}

/// Commands whose replies differ by nature (ids, INFO, COMMAND): same reply types and the
/// structure clients rely on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_has_redis_structure() {
    let pair = Pair::start().await;
    for proto in [2, 3] {
        let mut replies = Vec::new();
        for addr in pair.addrs() {
            let mut conn = Conn::open(addr).await;
            conn.send(format!("HELLO {proto}\r\n").as_bytes()).await;
            conn.send(b"CLIENT ID\r\nINFO\r\nINFO server clients\r\nCLIENT INFO\r\nCLIENT LIST\r\nCOMMAND COUNT\r\n")
                .await;
            conn.send(b"COMMAND INFO ping nosuch\r\nCOMMAND DOCS echo\r\nCOMMAND\r\nCOMMAND LIST\r\nCLIENT SETINFO LIB-NAME x\r\n").await;
            replies.push(conn.replies(12).await);
        }
        let (redis, ours) = (&replies[0], &replies[1]);
        for (i, (r, o)) in redis.iter().zip(ours).enumerate() {
            let kind = |f: &Frame| f.raw[0];
            // CLIENT SETINFO is Redis 7.2 (Redis 7.0 answers an error; clients ignore it).
            if i == 11 {
                assert_eq!(o.raw, b"+OK\r\n");
                continue;
            }
            assert_eq!(
                kind(r),
                kind(o),
                "reply {i} type (RESP{proto}): {:?} vs {:?}",
                show(std::slice::from_ref(r)),
                show(std::slice::from_ref(o))
            );
        }
        assert_eq!(normalise(&redis[0]), normalise(&ours[0]), "HELLO {proto}");
        let text = |f: &Frame| match &f.value {
            Value::Bulk(Some(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("not text: {other:?}"),
        };
        let info = text(&ours[2]);
        let info = info.strip_prefix("txt:").unwrap_or(&info);
        for needle in ["# Server\r\n", "redis_version:7.0.15\r\n", "loading:0\r\n", "role:master\r\n", "# Keyspace\r\n"]
        {
            assert!(info.contains(needle), "INFO lacks {needle:?}");
        }
        assert!(info.lines().all(|l| l.is_empty() || l.starts_with('#') || l.contains(':')));
        assert!(!info.replace("\r\n", "").contains('\n'), "INFO uses \\r\\n line endings");
        let sections = |f: &Frame| text(f).lines().filter(|l| l.starts_with('#')).map(String::from).collect::<Vec<_>>();
        assert_eq!(sections(&redis[3]), sections(&ours[3]), "INFO server clients sections");
        let client_info = text(&ours[4]);
        assert!(client_info.contains("id=") && client_info.contains(&format!("resp={proto}")), "{client_info}");
        assert!(text(&ours[5]).lines().count() >= 1);
        let Value::Agg(_, entries) = &ours[7].value else { panic!("COMMAND INFO") };
        assert!(
            matches!(&entries[0], Value::Agg(_, e) if e.len() == 10 && e[0] == Value::Bulk(Some(b"ping".to_vec())))
        );
        assert!(matches!(entries[1], Value::Bulk(None) | Value::Null));
        let Value::Agg(_, all) = &ours[9].value else { panic!("COMMAND") };
        let Value::Int(count) = ours[6].value else { panic!("COMMAND COUNT") };
        assert_eq!(all.len(), usize::try_from(count).unwrap());
    }
}

/// `redis-cli` works against the broker and prints what it prints for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_works() {
    let pair = Pair::start().await;
    let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
    let runs: [&[&str]; 6] = [
        &["ping"],
        &["echo", "hello world"],
        &["publish", "ch", "msg"],
        &["-3", "ping"],
        &["pubsub", "numsub", "a", "b"],
        &["client", "getname"],
    ];
    for args in runs {
        let mut outputs = Vec::new();
        for addr in pair.addrs() {
            let port = addr.port().to_string();
            let out = tokio::process::Command::new(&cli)
                .args(["-h", "127.0.0.1", "-p", &port])
                .args(args)
                .output()
                .await
                .unwrap_or_else(|e| panic!("cannot run {cli} ({e}): install redis-tools or set REDIS_CLI"));
            assert!(out.status.success(), "redis-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            outputs.push(out.stdout);
        }
        assert_eq!(outputs[0], outputs[1], "redis-cli {args:?}");
    }
}

/// A subscriber that stops reading is disconnected once its output passes the hard limit, the
/// publisher is never blocked and other subscribers keep receiving; Redis does the same with the
/// same limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_disconnected_like_redis() {
    let limit = 256 * 1024;
    let config = RedisConfig { pubsub_output_limit_hard: limit, pubsub_output_limit_soft: 0, ..RedisConfig::default() };
    let ours = Ioswarm::start(config).await;
    let redis = RedisServer::start(&["--client-output-buffer-limit", "pubsub 262144 0 0"]);
    let payload = vec![b'x'; 64 * 1024];
    let mut keep = Vec::new();
    let mut peak_output = 0;
    for addr in [redis.addr, ours.addr] {
        let mut slow = Conn::open(addr).await;
        slow.send(b"SUBSCRIBE ch\r\n").await;
        slow.reply().await;
        let mut fast = Conn::open(addr).await;
        fast.send(b"SUBSCRIBE ch\r\n").await;
        fast.reply().await;
        let mut publisher = Conn::open(addr).await;
        let mut killed_seen = false;
        for i in 0..400 {
            publisher.send(&cmd(&[b"PUBLISH", b"ch", &payload])).await;
            let Value::Int(n) = publisher.reply().await.value else { panic!("PUBLISH reply") };
            if addr == ours.addr {
                // What the slow subscriber does not read waits in its output buffer, on the gauge.
                peak_output = peak_output.max(ours.broker.subscriber_output_bytes());
            }
            let msg = fast.reply().await;
            assert!(matches!(&msg.value, Value::Agg(_, items) if items.len() == 3), "fast subscriber, message {i}");
            if n == 1 {
                killed_seen = true;
                break;
            }
        }
        assert!(killed_seen, "{addr}: the slow subscriber was never disconnected");
        // The slow subscriber reads what was flushed before the kill, then EOF.
        let mut total = 0usize;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match tokio::time::timeout(TIMEOUT, slow.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => total += n,
                Err(_) => panic!("{addr}: slow subscriber not closed"),
            }
        }
        assert!(total < 400 * payload.len());
        keep.push((fast, publisher));
    }
    // The killed subscriber has left the registry; the other one is still subscribed.
    for _ in 0..100 {
        if ours.broker.numsub(b"ch") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ours.broker.numsub(b"ch"), 1);
    assert_eq!(ours.broker.clients_killed(), 1);
    assert!(peak_output > payload.len(), "the slow subscriber's output showed: peak {peak_output}");
    // The killed subscriber's buffer is gone with it and the fast one read everything.
    for _ in 0..100 {
        if ours.broker.subscriber_output_bytes() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ours.broker.subscriber_output_bytes(), 0);
    for (fast, _) in &mut keep {
        fast.send(b"PING\r\n").await;
        assert_eq!(fast.reply().await.raw, b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_refuses_with_redis_error() {
    let ours = Ioswarm::start(RedisConfig { max_clients: 2, ..RedisConfig::default() }).await;
    let mut a = Conn::open(ours.addr).await;
    let mut b = Conn::open(ours.addr).await;
    for c in [&mut a, &mut b] {
        c.send(b"PING\r\n").await;
        assert_eq!(c.reply().await.raw, b"+PONG\r\n");
    }
    let mut c = Conn::open(ours.addr).await;
    let frames = c.until_closed().await;
    assert_eq!(show(&frames), "-ERR max number of clients reached\r\n");
    drop(a);
    // The slot frees up once the first connection is gone.
    let mut ok = false;
    for _ in 0..100 {
        let mut d = Conn::open(ours.addr).await;
        d.send(b"PING\r\n").await;
        if d.reply().await.raw == b"+PONG\r\n" {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok, "a freed slot is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_hook_sees_client_publishes() {
    struct Rec(parking_lot::Mutex<Vec<(Vec<u8>, Vec<u8>)>>);
    impl ioswarm::resp::PublishHook for Rec {
        fn on_publish(&self, channel: &[u8], message: &bytes::Bytes) {
            self.0.lock().push((channel.to_vec(), message.to_vec()));
        }
    }
    let ours = Ioswarm::start(RedisConfig::default()).await;
    let rec = Arc::new(Rec(parking_lot::Mutex::new(Vec::new())));
    ours.broker.set_publish_hook(rec.clone());
    let mut sub = Conn::open(ours.addr).await;
    sub.send(b"SUBSCRIBE socket.io#/#\r\n").await;
    sub.reply().await;
    let mut conn = Conn::open(ours.addr).await;
    conn.send(b"PUBLISH socket.io#/# payload\r\nSPUBLISH s x\r\n").await;
    assert_eq!(show(&conn.replies(2).await), ":1\r\n:0\r\n");
    // Node-originated deliveries do not run the hook.
    assert_eq!(ours.broker.publish(b"socket.io#/#", &bytes::Bytes::from_static(b"from node")), 1);
    assert_eq!(
        rec.0.lock().clone(),
        vec![(b"socket.io#/#".to_vec(), b"payload".to_vec()), (b"s".to_vec(), b"x".to_vec())]
    );
    let frames = sub.replies(2).await;
    assert!(show(&frames).ends_with("$9\r\nfrom node\r\n"));
}

/// The fuzz entry point holds its invariants on hand-picked inputs and on a few thousand
/// deterministic pseudo-random mutations of them (the real fuzzing is `fuzz/run.sh`).
#[test]
fn fuzz_entry_point_smoke() {
    let mut seeds: Vec<Vec<u8>> = BASIC.iter().map(|s| s.to_vec()).collect();
    seeds.push(b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n_\r\n".to_vec());
    seeds.push(b"*3\r\n,1.5\r\n#t\r\n=6\r\ntxt:hi\r\n".to_vec());
    seeds.push(b"*2\r\n$-1\r\n*-1\r\n".to_vec());
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in &seeds {
        ioswarm::fuzzing::resp_frame(seed);
        for _ in 0..200 {
            let mut input = seed.clone();
            for _ in 0..(next() % 4 + 1) {
                let alphabet = b"*$:+-_%>~#,=\r\n0123456789-\"'\\ x\x00";
                let byte = alphabet[usize::try_from(next() % alphabet.len() as u64).unwrap()];
                let at = usize::try_from(next() % (input.len() as u64 + 1)).unwrap();
                match next() % 3 {
                    0 => input.insert(at, byte),
                    1 if at < input.len() => input[at] = byte,
                    _ => input.truncate(at),
                }
            }
            ioswarm::fuzzing::resp_frame(&input);
        }
    }
}

// ---- key-value commands ----------------------------------------------------------------------

/// Each script runs on a fresh connection, in order, against both servers, so the keyspace
/// evolves the same way on both; TTLs stay far from a rounding edge.
const KV: &[&[u8]] = &[
    b"SET k v\r\nGET k\r\nGET nokey\r\nSET k v2 GET\r\nGET k\r\nset K lower\r\nGET K\r\nGET k\r\nDEL k K\r\n",
    b"SET k v NX\r\nSET k w NX\r\nGET k\r\nSET k w XX\r\nSET nx v XX\r\nGET nx\r\nSET k x NX GET\r\nSET k y XX GET\r\n\
      SET new v NX GET\r\nSET new2 v XX GET\r\nGET k\r\nGET new\r\nGET new2\r\nSET k z GET GET\r\nDEL k new\r\n",
    b"SET\r\nSET k\r\nSET k v NX XX\r\nSET k v XX NX\r\nSET k v EX\r\nSET k v EX 0\r\nSET k v EX -1\r\nSET k v PX 0\r\n\
      SET k v EX 1x\r\nSET k v EX 10 PX 10\r\nSET k v PX 10 EXAT 10\r\nSET k v KEEPTTL EX 10\r\nSET k v EX 10 KEEPTTL\r\n\
      SET k v FOO\r\nSET k v EX 9223372036854775\r\nSET k v EX 9223372036854776\r\nSET k v PX 9223372036854775807\r\n\
      SET k v EXAT 0\r\nSET k v PXAT -5\r\nSET k v ex x foo\r\nSET k v NX 10\r\nGET k\r\nSET k v EX 10 EX 200\r\nTTL k\r\n\
      SET k v keepttl KEEPTTL\r\nTTL k\r\nSET k w\r\nTTL k\r\nSET k v PX 100000 NX\r\nSET k v XX PXAT 99999999999999 GET\r\n\
      TTL k\r\nDEL k\r\n",
    b"INCR n\r\nINCR n\r\nDECR n\r\nINCRBY n 10\r\nDECRBY n 3\r\nINCRBY n -20\r\nGET n\r\nINCRBY n x\r\nINCRBY n 1.5\r\n\
      INCRBY n 01\r\nDECRBY n -9223372036854775808\r\nDECRBY n 9223372036854775808\r\nDECRBY missing -9223372036854775808\r\n\
      INCR\r\nINCR a b\r\nINCRBY n\r\nDECR\r\nDECRBY n 1 2\r\nGET n\r\nDEL n\r\n",
    b"SET n 9223372036854775806\r\nINCR n\r\nINCR n\r\nGET n\r\nSET n -9223372036854775808\r\nDECR n\r\nINCRBY n -1\r\n\
      INCRBY n 9223372036854775807\r\nSET s abc\r\nINCR s\r\nSET s \" 1\"\r\nINCR s\r\nSET s 010\r\nINCR s\r\nSET s \"\"\r\n\
      INCR s\r\nSET s -0\r\nDECR s\r\nSET s +5\r\nINCR s\r\nSET s 99999999999999999999\r\nINCR s\r\nGET s\r\n\
      SETNX s x\r\nSETNX s2 x\r\nSETNX s2 y\r\nGET s2\r\nSETNX s2\r\nDEL n s s2\r\n",
    b"SET a 1\r\nSET b 2\r\nEXISTS a a b c\r\nMGET a nokey b a\r\nDEL a a c\r\nEXISTS a\r\nMGET a\r\nDEL\r\nEXISTS\r\nMGET\r\n\
      GET\r\nGET a b\r\nDEL b\r\nEXISTS b\r\n",
    b"TTL nokey\r\nPTTL nokey\r\nSET k v\r\nTTL k\r\nPTTL k\r\nEXPIRE nokey 10\r\nPEXPIRE nokey 10\r\nEXPIRE k 100\r\nTTL k\r\n\
      SET k v KEEPTTL\r\nTTL k\r\nSET k v\r\nTTL k\r\nEXPIRE k -1\r\nEXISTS k\r\nGET k\r\nTTL k\r\nSET k v\r\nEXPIRE k 0\r\n\
      EXISTS k\r\nSET k v\r\nPEXPIRE k -100\r\nGET k\r\nSET k v\r\nEXPIRE k x\r\nEXPIRE k 99999999999999999\r\n\
      EXPIRE k -99999999999999999\r\nPEXPIRE k 9223372036854775807\r\nEXPIRE k\r\nTTL\r\nTTL a b\r\nPTTL\r\nTTL k\r\n\
      SET n 1 EX 100\r\nINCR n\r\nTTL n\r\nINCRBY n 5\r\nTTL n\r\nGET n\r\nSET n 2\r\nTTL n\r\n\
      SET k v EXAT 1\r\nGET k\r\nEXISTS k\r\nTTL k\r\nSET k v PXAT 1000\r\nEXISTS k\r\nPEXPIRE k 100000\r\n\
      SET k v\r\nEXPIRE k 9223372036854775\r\nEXPIRE k -9223372036854775\r\nEXISTS k\r\nDEL k n\r\n",
    b"PING\r\nSET p 1\r\nPING\r\nINCR p\r\nECHO x\r\nGET p\r\nPING\r\nMGET p q\r\nEXISTS p\r\nPING hi\r\nDEL p\r\nGET p\r\n",
    b"SET \"a key\" \"a value\"\r\nGET \"a key\"\r\nMGET \"a key\" 'a key'\r\nDEL \"a key\"\r\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_commands_match_redis() {
    let pair = Pair::start().await;
    for proto in [2, 3] {
        for script in KV {
            let mut input = format!("HELLO {proto}\r\n").into_bytes();
            input.extend_from_slice(script);
            compare_script(&pair, &format!("RESP{proto} {}", String::from_utf8_lossy(script)), &input).await;
        }
    }
    // Binary keys and values; an option ending in a NUL byte reads as a C string.
    let script = [
        cmd(&[b"SET", b"bin\x00\xff", b"\x00\x01\r\n"]),
        cmd(&[b"GET", b"bin\x00\xff"]),
        cmd(&[b"GET", b"bin"]),
        cmd(&[b"SET", b"bin\x00\xff", b"x", b"XX\x00junk", b"GET"]),
        cmd(&[b"SET", b"bin\x00\xff", b"x", b"NX\x00"]),
        cmd(&[b"SET", b"k", b"x", b"EX\x00", b"10"]),
        cmd(&[b"TTL", b"k"]),
        cmd(&[b"SET", b"", b""]),
        cmd(&[b"GET", b""]),
        cmd(&[b"DEL", b"bin\x00\xff", b"", b"k"]),
    ]
    .concat();
    compare_script(&pair, "binary keys", &script).await;
    // A value as large as an authenticated client may send in one go.
    let big = vec![b'z'; 200_000];
    compare_script(
        &pair,
        "big value",
        &[cmd(&[b"SET", b"big", &big]), cmd(&[b"GET", b"big"]), cmd(&[b"DEL", b"big"])].concat(),
    )
    .await;
    // One pipeline holding every script.
    compare_script(&pair, "kv pipeline", &KV.concat()).await;
}

/// RESP2 subscribed mode refuses key-value commands like Redis; RESP3 runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_commands_in_subscribed_mode_match_redis() {
    let pair = Pair::start().await;
    let script: &[u8] =
        b"SET k v\r\nSUBSCRIBE ch\r\nGET k\r\nSET k w\r\nINCR n\r\nTTL k\r\nPING\r\nUNSUBSCRIBE\r\nGET k\r\n\
        HELLO 3\r\nSUBSCRIBE ch\r\nGET k\r\nSET k w\r\nINCR n\r\nDEL n\r\nUNSUBSCRIBE\r\nGET k\r\nDEL k\r\n";
    compare_script(&pair, "subscribed mode", script).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_commands_need_auth_like_redis() {
    let pair = Pair::with_password("s3cret").await;
    let script: &[u8] =
        b"GET k\r\nSET k v\r\nINCR n\r\nDEL k\r\nAUTH s3cret\r\nSET k v\r\nGET k\r\nRESET\r\nGET k\r\nAUTH s3cret\r\nDEL k\r\n";
    compare_script(&pair, "kv auth", script).await;
}

/// TTLs depend on each server's clock: same sign and within a second (or 1000 ms) of Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_ttls_and_expiry_match_redis_loosely() {
    let pair = Pair::start().await;
    let script: &[u8] =
        b"SET a v EX 100\r\nTTL a\r\nPTTL a\r\nSET b v PX 1500\r\nTTL b\r\nPTTL b\r\nSET c v\r\nPEXPIRE c 2500\r\n\
        TTL c\r\nPTTL c\r\nEXPIRE c 7\r\nPTTL c\r\nSET d 1 PX 250\r\nINCR d\r\nPTTL d\r\nTTL none\r\nPTTL none\r\n";
    let mut results = Vec::new();
    for addr in pair.addrs() {
        let mut conn = Conn::open(addr).await;
        conn.send(script).await;
        results.push(conn.replies(17).await);
    }
    for (i, (r, o)) in results[0].iter().zip(&results[1]).enumerate() {
        match (&r.value, &o.value) {
            (Value::Int(r), Value::Int(o)) => {
                let slack = if *r > 100 || *o > 100 { 1000 } else { 1 };
                assert!(r.signum() == o.signum() && (r - o).abs() <= slack, "reply {i}: redis {r}, ioswarm {o}");
            }
            _ => assert_eq!(r.raw, o.raw, "reply {i}"),
        }
    }
    // After the deadline the keys are gone on both servers.
    tokio::time::sleep(Duration::from_millis(400)).await;
    compare_script(
        &pair,
        "after expiry",
        b"GET d\r\nEXISTS d\r\nTTL d\r\nPTTL d\r\nINCR d\r\nTTL d\r\nGET a\r\nTTL a\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    compare_script(&pair, "later", b"MGET a b c\r\nEXISTS a b c\r\nDEL a b c\r\nPTTL b\r\n").await;
}

/// Two connections each pipeline 1000 INCRs of one key: every reply is a distinct count and
/// the key ends at 2000, on Redis and on ioswarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_incr_from_two_connections_adds_up() {
    let pair = Pair::start().await;
    let pipeline: Vec<u8> = std::iter::repeat_n(&b"INCR counter\r\n"[..], 1000).collect::<Vec<_>>().concat();
    for addr in pair.addrs() {
        let mut a = Conn::open(addr).await;
        let mut b = Conn::open(addr).await;
        let (ra, rb) = tokio::join!(
            async {
                a.send(&pipeline).await;
                a.replies(1000).await
            },
            async {
                b.send(&pipeline).await;
                b.replies(1000).await
            }
        );
        let mut seen: Vec<i64> = ra
            .iter()
            .chain(&rb)
            .map(|f| match f.value {
                Value::Int(n) => n,
                ref other => panic!("{addr}: INCR answered {other:?}"),
            })
            .collect();
        for replies in [&ra, &rb] {
            let counts: Vec<i64> = replies.iter().map(|f| if let Value::Int(n) = f.value { n } else { 0 }).collect();
            assert!(counts.windows(2).all(|w| w[0] < w[1]), "{addr}: each connection's counts increase");
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=2000).collect::<Vec<_>>(), "{addr}");
        a.send(b"GET counter\r\n").await;
        assert_eq!(a.reply().await.raw, b"$4\r\n2000\r\n", "{addr}");
    }
}

/// COMMAND DOCS and COMMAND INFO describe the key-value commands as Redis 7.0 does (EXPIRE and
/// PEXPIRE keep Redis 6's arity: no NX|XX|GT|LT options).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_command_docs_match_redis() {
    let pair = Pair::start().await;
    let names = [
        "get", "set", "setnx", "mget", "incr", "decr", "incrby", "decrby", "del", "exists", "expire", "pexpire", "ttl",
        "pttl",
    ];
    let field = |doc: &Value, name: &str| -> Value {
        let Value::Agg(_, items) = doc else { panic!("docs entry {doc:?}") };
        let at = items.iter().position(|v| *v == Value::Bulk(Some(name.as_bytes().to_vec()))).unwrap();
        items[at + 1].clone()
    };
    let mut answers = Vec::new();
    for addr in pair.addrs() {
        let mut conn = Conn::open(addr).await;
        let mut request = b"COMMAND INFO".to_vec();
        for name in names {
            request.extend_from_slice(format!(" {name}").as_bytes());
        }
        request.extend_from_slice(b"\r\n");
        conn.send(&request).await;
        let info = conn.reply().await;
        let mut docs = Vec::new();
        for name in names {
            conn.send(format!("COMMAND DOCS {name}\r\n").as_bytes()).await;
            docs.push(conn.reply().await);
        }
        answers.push((info, docs));
    }
    let (redis, ours) = (&answers[0], &answers[1]);
    let (Value::Agg(_, redis_info), Value::Agg(_, our_info)) = (&redis.0.value, &ours.0.value) else {
        panic!("COMMAND INFO")
    };
    for (i, name) in names.iter().enumerate() {
        let (Value::Agg(_, r), Value::Agg(_, o)) = (&redis_info[i], &our_info[i]) else { panic!("{name} info") };
        assert_eq!(r[0], o[0], "{name} name");
        let Value::Int(redis_arity) = r[1] else { panic!("{name} arity") };
        let expected = if matches!(*name, "expire" | "pexpire") { -redis_arity } else { redis_arity };
        assert_eq!(o[1], Value::Int(expected), "{name} arity");
        let fast = |v: &Value| matches!(v, Value::Agg(_, f) if f.contains(&Value::Simple(b"fast".to_vec())));
        assert_eq!(fast(&r[2]), fast(&o[2]), "{name} fast flag");
        let (Value::Agg(_, rd), Value::Agg(_, od)) = (&redis.1[i].value, &ours.1[i].value) else {
            panic!("{name} docs")
        };
        for key in ["summary", "since", "group"] {
            assert_eq!(field(&rd[1], key), field(&od[1], key), "{name} {key}");
        }
    }
}

/// A backend that answers later (like a raft leader across the network): replies still follow
/// the pipeline's order, a slow command does not hold up other connections, and a backend
/// without a leader answers a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_kv_backend_keeps_pipeline_order() {
    use ioswarm::resp::kv::{KvBackend, KvFuture, KvOp, KvValue, LocalKv};

    #[derive(Debug)]
    struct Slow(LocalKv);
    impl KvBackend for Slow {
        fn execute(&self, op: KvOp) -> KvFuture {
            let value = self.0.execute_now(op);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                value
            })
        }
    }
    #[derive(Debug)]
    struct Leaderless;
    impl KvBackend for Leaderless {
        fn execute(&self, _op: KvOp) -> KvFuture {
            Box::pin(async { KvValue::NotLeader { leader_id: None, leader_addr: String::new() } })
        }
    }

    let redis = RedisServer::start(&[]);
    let backend: Arc<dyn KvBackend> = Arc::new(Slow(LocalKv::default()));
    let ours = Ioswarm::start(RedisConfig { kv: Some(backend), ..RedisConfig::default() }).await;
    let pair = Pair { redis, ours };
    let script: Vec<u8> =
        [KV[0], KV[1], KV[7], b"SUBSCRIBE x\r\nGET k\r\nHELLO 3\r\nGET nokey\r\nMGET a b\r\n"].concat();
    compare_script(&pair, "slow backend pipeline", &script).await;
    for script in KV {
        compare_script(&pair, "slow backend", &[b"HELLO 3\r\n", *script].concat()).await;
    }
    // A pipeline of 200 slow INCRs on one connection; another connection is answered meanwhile.
    let mut busy = Conn::open(pair.ours.addr).await;
    busy.send(&std::iter::repeat_n(&b"INCR slow\r\n"[..], 200).collect::<Vec<_>>().concat()).await;
    let mut other = Conn::open(pair.ours.addr).await;
    other.send(b"PING\r\nGET nokey\r\n").await;
    assert_eq!(show(&other.replies(2).await), "+PONG\r\n$-1\r\n");
    let counts: Vec<Value> = busy.replies(200).await.into_iter().map(|f| f.value).collect();
    assert_eq!(counts, (1..=200).map(Value::Int).collect::<Vec<_>>());
    // A client that leaves in the middle of a slow pipeline does not disturb the listener.
    let mut leaver = Conn::open(pair.ours.addr).await;
    leaver.send(&std::iter::repeat_n(&b"INCR gone\r\n"[..], 100).collect::<Vec<_>>().concat()).await;
    drop(leaver);
    other.send(b"INCR slow\r\n").await;
    assert_eq!(other.reply().await.raw, b":201\r\n");

    let ours = Ioswarm::start(RedisConfig { kv: Some(Arc::new(Leaderless)), ..RedisConfig::default() }).await;
    let mut conn = Conn::open(ours.addr).await;
    conn.send(b"GET k\r\nPING\r\nSET k v\r\nSET k v EX x\r\n").await;
    assert_eq!(
        show(&conn.replies(4).await),
        "-ERR cluster has no leader, try again\r\n+PONG\r\n-ERR cluster has no leader, try again\r\n\
         -ERR value is not an integer or out of range\r\n"
    );
}
