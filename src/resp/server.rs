//! The Redis-protocol listener: accepts connections and runs one reader (parse, execute,
//! reply) and one writer (drain the output queue to the socket) per connection.
//!
//! The reader executes pipelined commands in order and hands each read's replies on as one
//! frame: on plain TCP, when nothing is queued or being written, it writes them to the socket
//! itself (`send_replies`), else it queues them; published messages are queued by the publishers themselves (see [`super::broker`]). Commands
//! that change what a client receives flush the replies queued so far first, so replies and
//! messages reach the client in the order Redis would write them. A command whose reply comes
//! later (the key-value commands) hands the reader a future; the reader waits for it before the
//! next command of the pipeline (see `cmd`'s documentation).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::net::{Accepted, Acceptor, WhenFull};

use super::broker::{Broker, Subscriber};
use super::client::{Client, ClientMeta, initial_meta};
use super::cmd::{self, Ctx};
use super::frame::{self, DEFAULT_MAX_BULK_LEN};
use super::kv::{KvBackend, KvLimits, LocalKv};
use super::output::{ClientOutput, Next, OutputLimits};

/// Configuration of the Redis-protocol listener.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// Password of the `default` user (`requirepass`). `None`: no authentication.
    pub requirepass: Option<String>,
    /// Most simultaneous connections (`maxclients`); more are refused with Redis' error.
    pub max_clients: usize,
    /// Queued output bytes at which a subscriber is disconnected at once
    /// (`client-output-buffer-limit pubsub` hard limit, 32 MiB). 0: no limit.
    pub pubsub_output_limit_hard: usize,
    /// Queued output bytes a subscriber may exceed for at most `pubsub_output_soft_seconds`
    /// (soft limit, 8 MiB). 0: no limit.
    pub pubsub_output_limit_soft: usize,
    /// How long the soft limit may be exceeded, in seconds (60).
    pub pubsub_output_soft_seconds: u64,
    /// Longest bulk string accepted in a request (`proto-max-bulk-len`, 512 MiB).
    pub max_bulk_len: usize,
    /// Redis' protected mode: while no `requirepass` is set, clients that are not on loopback
    /// get Redis' `-DENIED` error and are disconnected (default on, as in Redis).
    pub protected_mode: bool,
    /// Where GET/SET/INCR/... run: the raft node in a cluster. `None`: a [`LocalKv`] of this
    /// listener's own, with default [`KvLimits`] except values bounded by `max_bulk_len`.
    pub kv: Option<Arc<dyn KvBackend>>,
    /// TLS on every connection (Redis' `tls-port`: this port then speaks only TLS). `None`:
    /// plain TCP.
    pub tls: Option<crate::tls::ServerTls>,
}

impl PartialEq for RedisConfig {
    /// Field by field; backends are equal when they are the same object.
    fn eq(&self, other: &Self) -> bool {
        let same_kv = match (&self.kv, &other.kv) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        let same_tls = match (&self.tls, &other.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same(b),
            _ => false,
        };
        same_kv
            && same_tls
            && self.requirepass == other.requirepass
            && self.max_clients == other.max_clients
            && self.pubsub_output_limit_hard == other.pubsub_output_limit_hard
            && self.pubsub_output_limit_soft == other.pubsub_output_limit_soft
            && self.pubsub_output_soft_seconds == other.pubsub_output_soft_seconds
            && self.max_bulk_len == other.max_bulk_len
            && self.protected_mode == other.protected_mode
    }
}

impl Eq for RedisConfig {}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            requirepass: None,
            max_clients: 10_000,
            pubsub_output_limit_hard: 32 * 1024 * 1024,
            pubsub_output_limit_soft: 8 * 1024 * 1024,
            pubsub_output_soft_seconds: 60,
            max_bulk_len: DEFAULT_MAX_BULK_LEN,
            protected_mode: true,
            kv: None,
            tls: None,
        }
    }
}

/// Redis' reply to a client refused because `maxclients` connections are open.
const MAX_CLIENTS_ERROR: &[u8] = b"-ERR max number of clients reached\r\n";
/// Redis 7.0's reply to a client that is not on loopback while no password is set (protected
/// mode), byte for byte (typo included); the connection is closed after it.
const PROTECTED_MODE_ERROR: &[u8] =
    b"-DENIED Redis is running in protected mode because protected mode is enabled and \
no password is set for the default user. In this mode connections are only accepted from the loopback interface. If \
you want to connect from external computers to Redis you may adopt one of the following solutions: 1) Just disable \
protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by connecting to Redis \
from the same host the server is running, however MAKE SURE Redis is not publicly accessible from internet if you do \
so. Use CONFIG REWRITE to make this change permanent. 2) Alternatively you can just disable the protected mode by \
editing the Redis configuration file, and setting the protected mode option to 'no', and then restarting the server. \
3) If you started the server manually just for testing, restart it with the '--protected-mode no' option. 4) Setup \
a an authentication password for the default user. NOTE: You only need to do one of the above things in order for \
the server to start accepting connections from the outside.\r\n";

/// Pending output at which a connection's reader stops reading until its writer catches up.
const READER_PAUSE_BYTES: usize = 1024 * 1024;
/// How long a closing connection may take to flush its queued replies at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);
/// Read buffer size.
const READ_CHUNK: usize = 16 * 1024;
/// Queued replies larger than this are written without copying into the coalescing buffer.
const COALESCE_MAX: usize = 16 * 1024;

/// Counters `INFO` reports.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) total_connections: AtomicU64,
    pub(crate) total_commands: AtomicU64,
    pub(crate) rejected_connections: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
}

/// State shared by every connection of one listener.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) broker: Arc<Broker>,
    /// The key-value backend (`RedisConfig::kv`, or a local store).
    pub(crate) kv: Arc<dyn KvBackend>,
    pub(crate) config: RedisConfig,
    pub(crate) clients: DashMap<u64, Arc<ClientMeta>>,
    pub(crate) connected: AtomicUsize,
    pub(crate) started: Instant,
    pub(crate) started_unix: u64,
    pub(crate) port: u16,
    pub(crate) run_id: String,
    pub(crate) stats: Stats,
}

impl Shared {
    fn new(broker: Arc<Broker>, config: RedisConfig, port: u16) -> Self {
        let started_unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let run_id = (0..40).map(|_| char::from(b"0123456789abcdef"[rand::random_range(0..16)])).collect();
        let kv = config.kv.clone().unwrap_or_else(|| {
            Arc::new(LocalKv::new(KvLimits { max_value_bytes: config.max_bulk_len, ..KvLimits::default() }))
        });
        Self {
            broker,
            kv,
            config,
            clients: DashMap::new(),
            connected: AtomicUsize::new(0),
            started: Instant::now(),
            started_unix,
            port,
            run_id,
            stats: Stats::default(),
        }
    }

    fn output_limits(&self) -> OutputLimits {
        OutputLimits {
            hard: self.config.pubsub_output_limit_hard,
            soft: self.config.pubsub_output_limit_soft,
            soft_period: Duration::from_secs(self.config.pubsub_output_soft_seconds),
        }
    }

    /// Whether a password is configured.
    pub(crate) fn auth_required(&self) -> bool {
        self.config.requirepass.is_some()
    }

    /// Redis' protected mode: with no password, only loopback clients are served.
    fn denied_by_protected_mode(&self, peer: SocketAddr) -> bool {
        let loopback = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.is_loopback(), |v4| v4.is_loopback()),
            ip => ip.is_loopback(),
        };
        self.config.protected_mode && !self.auth_required() && !loopback
    }
}

/// Serves the Redis protocol on `listener` until `shutdown` is cancelled. Every connection
/// task is spawned on `tasks`; this function returns once it stopped accepting (connections
/// close on their own as `shutdown` is cancelled).
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    config: RedisConfig,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    let shared = Arc::new(Shared::new(broker, config, port));
    tracing::info!(port, "redis protocol listener started");
    let acceptor = Acceptor::new(listener, shared.config.max_clients, WhenFull::Refuse, shutdown.clone(), "redis");
    while let Some(Accepted { stream, remote: addr, permit }) = acceptor.next().await {
        shared.stats.total_connections.fetch_add(1, Ordering::Relaxed);
        let refusal = if shared.denied_by_protected_mode(addr) {
            tracing::warn!(
                %addr,
                "refused a Redis client that is not on loopback: protected mode (no --requirepass is set); \
                 set --requirepass to accept clients from other hosts"
            );
            Some(PROTECTED_MODE_ERROR)
        } else if permit.is_none() {
            Some(MAX_CLIENTS_ERROR)
        } else {
            None
        };
        if refusal.is_some() {
            shared.stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
            ::metrics::counter!(crate::metrics::REDIS_CONNECTIONS_REJECTED).increment(1);
        } else {
            shared.connected.fetch_add(1, Ordering::Relaxed);
        }
        let accepted = Conn { addr, refusal, shared: shared.clone(), shutdown: shutdown.clone(), tasks: tasks.clone() };
        tasks.spawn(async move {
            let laddr = stream.local_addr().unwrap_or(addr);
            match accepted.shared.config.tls.clone() {
                None => {
                    let (reader, writer) = stream.into_split();
                    // Shared by the writer task and the reader, which writes a read's replies
                    // itself when the output is idle (`send_replies`).
                    let writer = Arc::new(writer);
                    accepted.run(reader, SharedTcpWrite(writer.clone()), Some(writer), laddr).await;
                }
                Some(tls) => {
                    // A refused client is told why over TLS too, so it gets the handshake first.
                    let handshake = tokio::select! {
                        tls_stream = tls.accept(stream, crate::tls::HANDSHAKE_TIMEOUT) => tls_stream,
                        () = accepted.shutdown.cancelled() => None,
                    };
                    match handshake {
                        Some(tls_stream) => {
                            // The TLS stream's halves share a lock: replies always go through the
                            // output queue and its writer task.
                            let (reader, writer) = tokio::io::split(tls_stream);
                            accepted.run(reader, writer, None, laddr).await;
                        }
                        None if accepted.refusal.is_none() => {
                            accepted.shared.connected.fetch_sub(1, Ordering::Relaxed);
                        }
                        None => {}
                    }
                }
            }
            drop(permit);
        });
    }
    tracing::info!(port, "redis protocol listener stopped accepting");
}

/// One accepted connection, before its stream is split (and, with TLS, before the handshake).
struct Conn {
    addr: SocketAddr,
    /// The error to answer with instead of serving (protected mode, max clients).
    refusal: Option<&'static [u8]>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Conn {
    /// Serves the connection (or writes its refusal) on a TCP or TLS stream's halves. `inline`:
    /// the plain TCP socket `writer` writes to, for the reader's own writes.
    async fn run<R, W>(self, reader: R, mut writer: W, inline: Option<Arc<OwnedWriteHalf>>, laddr: SocketAddr)
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let Conn { addr, refusal, shared, shutdown, tasks } = self;
        if let Some(refusal) = refusal {
            let refuse = async {
                writer.write_all(refusal).await?;
                writer.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), refuse).await;
            return;
        }
        connection(reader, writer, inline, addr, laddr, shared.clone(), shutdown, tasks).await;
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

#[allow(clippy::too_many_arguments)] // one connection's whole context
async fn connection<R, W>(
    reader: R,
    writer: W,
    inline: Option<Arc<OwnedWriteHalf>>,
    addr: SocketAddr,
    laddr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let id = shared.broker.next_client_id();
    let now = Instant::now();
    let out = Arc::new(ClientOutput::new(id, shared.output_limits()));
    let meta = Arc::new(ClientMeta { id, addr, laddr, created: now, info: Mutex::new(initial_meta(now)) });
    shared.clients.insert(id, meta.clone());
    ::metrics::gauge!(crate::metrics::REDIS_CONNECTIONS).increment(1.0);
    ::metrics::counter!(crate::metrics::REDIS_CONNECTIONS_OPENED).increment(1);

    let writer_task = tasks.spawn(write_loop(writer, out.clone()));
    let mut client = Client::new(Subscriber { out: out.clone() }, meta, !shared.auth_required());
    let span = tracing::debug_span!("redis_conn", client = id, %addr);
    let clean_eof = read_loop(reader, inline, &mut client, &shared, &shutdown).instrument(span).await;
    count_publishes(&mut client);

    // Leave the broker before anything else so publishers stop queuing to us.
    cmd::pubsub::unsubscribe_all_silently(&mut client, &shared.broker);
    shared.clients.remove(&id);
    ::metrics::gauge!(crate::metrics::REDIS_CONNECTIONS).decrement(1.0);
    if clean_eof {
        // QUIT / protocol error / shutdown: write what is queued, then close.
        out.close_when_flushed();
        if tokio::time::timeout(SHUTDOWN_FLUSH, wait_writer(&writer_task)).await.is_err() {
            out.abort();
        }
    } else {
        // The peer went away (or was killed): drop the rest, like Redis frees the client.
        out.abort();
    }
    let _ = writer_task.await;
    if let Some(reason) = out.kill_reason() {
        tracing::debug!(client = id, reason = reason.as_str(), "redis client killed");
    }
}

async fn wait_writer(task: &tokio::task::JoinHandle<()>) {
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads, parses and executes until the connection should close. Returns `true` when the
/// queued output should still be flushed (QUIT, protocol error, shutdown), `false` when the
/// peer is gone or the client was killed.
async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: R,
    inline: Option<Arc<OwnedWriteHalf>>,
    client: &mut Client,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> bool {
    let out = client.sub.out.clone();
    let killed = out.killed_token().clone();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut replies = BytesMut::with_capacity(READ_CHUNK);
    loop {
        if out.pending() >= READER_PAUSE_BYTES {
            tokio::select! {
                () = shutdown.cancelled() => return true,
                () = killed.cancelled() => return false,
                () = out.wait_below(READER_PAUSE_BYTES) => {}
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            () = shutdown.cancelled() => return true,
            () = killed.cancelled() => return false,
            read = reader.read_buf(&mut buf) => read,
        };
        match read {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let now = Instant::now();
        let mut commands = 0u64;
        loop {
            let limits = client.parse_limits(shared.config.max_bulk_len);
            match frame::take_request(&mut buf, &limits) {
                Ok(None) => break,
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => {
                    commands += 1;
                    let mut ctx = Ctx { client: &mut *client, shared, out: &mut replies, now, deferred: None };
                    let name = cmd::execute(&mut ctx, &args);
                    let deferred = ctx.deferred.take();
                    client.sync_meta(name, now);
                    if let Some(mut deferred) = deferred {
                        let reply = match deferred.ready_now() {
                            Some(reply) => reply,
                            None => {
                                // The earlier replies go out while this one is computed.
                                if !replies.is_empty() {
                                    out.push_reply(replies.split().freeze());
                                }
                                tokio::select! {
                                    () = shutdown.cancelled() => return true,
                                    () = killed.cancelled() => return false,
                                    reply = &mut deferred => reply,
                                }
                            }
                        };
                        reply.encode(client.proto, &mut replies);
                    }
                    if client.close_after_reply {
                        break;
                    }
                    // A pipeline whose replies pile up (e.g. many PUBSUB CHANNELS in one
                    // read) waits for the client to take them before running the rest.
                    if replies.len() + out.pending() >= READER_PAUSE_BYTES {
                        out.push_reply(replies.split().freeze());
                        tokio::select! {
                            () = shutdown.cancelled() => return true,
                            () = killed.cancelled() => return false,
                            () = out.wait_below(READER_PAUSE_BYTES) => {}
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(%err, "redis protocol error");
                    shared.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    ::metrics::counter!(crate::metrics::REDIS_PROTOCOL_ERRORS).increment(1);
                    frame::write_error(&mut replies, format!("ERR {err}").as_bytes());
                    client.close_after_reply = true;
                    break;
                }
            }
        }
        if commands > 0 {
            shared.stats.total_commands.fetch_add(commands, Ordering::Relaxed);
            ::metrics::counter!(crate::metrics::REDIS_COMMANDS).increment(commands);
            count_publishes(client);
        }
        send_replies(inline.as_deref(), &out, &mut replies);
        if client.close_after_reply {
            return true;
        }
    }
}

/// Hands one read's replies to the client. On plain TCP, when nothing is queued or being
/// written, the reader writes them itself with one non-blocking write from its reused buffer:
/// no wakeup of the writer task (often on the other worker thread), no copy. Whatever the socket
/// does not take, and everything on TLS or behind queued output, goes through the queue, so the
/// bytes keep Redis' order.
fn send_replies(inline: Option<&OwnedWriteHalf>, out: &ClientOutput, replies: &mut BytesMut) {
    if replies.is_empty() {
        return;
    }
    let Some(socket) = inline.filter(|_| out.claim_inline(replies.len())) else {
        out.push_reply(replies.split().freeze());
        return;
    };
    // An error other than "would block" leaves everything queued: the writer task meets it
    // again and drops the connection.
    let n = socket.try_write(replies).unwrap_or(0);
    let rest = replies.split_off(n).freeze();
    replies.clear();
    out.release_inline(n, rest);
}

/// Adds the client's PUBLISH / SPUBLISH since the last call to the metric (once per read, not
/// once per pipelined command: the metric's counter is shared by every connection).
fn count_publishes(client: &mut Client) {
    if client.publishes > 0 {
        ::metrics::counter!(crate::metrics::REDIS_PUBLISHES).increment(client.publishes);
        client.publishes = 0;
    }
}

/// The writer task's handle on a plain TCP socket whose write half the reader shares (see
/// [`send_replies`]). Dropping the last handle shuts the socket's write side, so shutting it
/// down explicitly does nothing.
struct SharedTcpWrite(Arc<OwnedWriteHalf>);

impl AsyncWrite for SharedTcpWrite {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            match self.0.try_write(buf) {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    let socket: &tokio::net::TcpStream = (*self.0).as_ref();
                    ready!(socket.poll_write_ready(cx))?;
                }
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut writer: W, out: Arc<ClientOutput>) {
    let killed = out.killed_token().clone();
    let mut coalesce = BytesMut::new();
    loop {
        let frames = match out.next().await {
            Next::Write(frames) => frames,
            Next::Close => {
                let _ = writer.shutdown().await;
                return;
            }
            Next::Killed => return,
        };
        let total: usize = frames.iter().map(Bytes::len).sum();
        let write = write_frames(&mut writer, &frames, &mut coalesce);
        let result = tokio::select! {
            () = killed.cancelled() => return,
            result = write => result,
        };
        if result.is_err() {
            out.abort();
            return;
        }
        out.written(total);
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[Bytes],
    coalesce: &mut BytesMut,
) -> std::io::Result<()> {
    if let [only] = frames {
        return writer.write_all(only).await;
    }
    for frame in frames {
        if frame.len() > COALESCE_MAX {
            if !coalesce.is_empty() {
                writer.write_all(coalesce).await?;
                coalesce.clear();
            }
            writer.write_all(frame).await?;
        } else {
            coalesce.extend_from_slice(frame);
        }
    }
    if !coalesce.is_empty() {
        writer.write_all(coalesce).await?;
        coalesce.clear();
    }
    Ok(())
}
