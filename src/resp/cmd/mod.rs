//! Command table and dispatch, in the order Redis 7.0's `processCommand` checks things:
//! lookup (unknown command / unknown subcommand), arity, authentication, the RESP2 subscribed-mode
//! rule, then the command itself.
//!
//! To add a command: write `fn(&mut Ctx<'_>, &[Bytes])` in a file of this folder and add a
//! [`Spec`] row to [`COMMANDS`] (name, arity with Redis' sign convention, flags, docs fields).
//!
//! Most commands answer at once by writing into [`Ctx::out`]. A command whose answer needs a
//! round trip (the key-value commands, which go to the raft leader in a cluster; anything asking
//! other nodes) calls [`Ctx::defer`] with a future producing its [`Reply`] and writes nothing
//! else. The connection's reader then queues the replies of the earlier commands of the
//! pipeline, waits for the future (giving up if the server shuts down or the client is killed),
//! encodes the reply in the client's protocol at that moment and goes on with the next
//! pipelined command: replies keep the pipeline's order. A future that is ready when first polled
//! (a single node's key-value store) costs no extra flush. Messages published to a RESP3
//! subscriber while it waits may arrive before the deferred reply.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use super::client::Client;
use super::frame::{self, Proto, Reply};
use super::server::Shared;

pub(crate) mod auth;
pub(crate) mod client;
pub(crate) mod command;
pub(crate) mod connection;
pub(crate) mod hello;
pub(crate) mod info;
pub(crate) mod kv;
pub(crate) mod ping;
pub(crate) mod pubsub;
pub(crate) mod select;

/// What a command runs with.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    /// The calling connection.
    pub(crate) client: &'a mut Client,
    /// Listener-wide state (broker, config, client list, stats).
    pub(crate) shared: &'a Shared,
    /// Replies not yet queued to the writer.
    pub(crate) out: &'a mut BytesMut,
    /// When the current read was processed.
    pub(crate) now: Instant,
    /// The command's reply, when it comes later (see [`Ctx::defer`]).
    pub(crate) deferred: Option<Deferred>,
}

/// A reply that a command produces later. The reader awaits it before the next command.
pub(crate) struct Deferred(Pin<Box<dyn Future<Output = Reply> + Send + 'static>>);

impl Deferred {
    /// Polls once without a waker: `Some` when the reply is already there.
    pub(crate) fn ready_now(&mut self) -> Option<Reply> {
        match self.0.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(reply) => Some(reply),
            Poll::Pending => None,
        }
    }
}

impl Future for Deferred {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred(..)")
    }
}

impl Ctx<'_> {
    /// The connection's protocol.
    pub(crate) fn proto(&self) -> Proto {
        self.client.proto
    }

    /// Appends a reply value.
    pub(crate) fn reply(&mut self, reply: &Reply) {
        reply.encode(self.client.proto, self.out);
    }

    /// `+OK`
    pub(crate) fn ok(&mut self) {
        self.out.put_slice(b"+OK\r\n");
    }

    /// An error reply; `text` includes the code (`"ERR ..."`).
    pub(crate) fn error(&mut self, text: &str) {
        frame::write_error(self.out, text.as_bytes());
    }

    /// An error reply from raw bytes (may quote what the client sent).
    pub(crate) fn error_bytes(&mut self, text: &[u8]) {
        frame::write_error(self.out, text);
    }

    /// A bulk string reply.
    pub(crate) fn bulk(&mut self, data: &[u8]) {
        frame::write_bulk(self.out, data);
    }

    /// An integer reply.
    pub(crate) fn integer(&mut self, n: i64) {
        frame::write_integer(self.out, n);
    }

    /// Answers the current command with what `reply` resolves to, once it does; the command
    /// writes no other reply. The reader waits for it before running the next pipelined
    /// command (see the module documentation).
    pub(crate) fn defer(&mut self, reply: impl Future<Output = Reply> + Send + 'static) {
        debug_assert!(self.deferred.is_none(), "one deferred reply per command");
        self.deferred = Some(Deferred(Box::pin(reply)));
    }

    /// Queues the replies written so far, so that messages queued from now on come after them.
    pub(crate) fn flush(&mut self) {
        if !self.out.is_empty() {
            self.client.sub.out.push_reply(self.out.split().freeze());
        }
    }
}

/// A command handler.
pub(crate) type Handler = fn(&mut Ctx<'_>, &[Bytes]);

/// Allowed before authentication.
pub(crate) const NO_AUTH: u32 = 1;
/// Allowed in RESP2 subscribed mode.
pub(crate) const PUBSUB_OK: u32 = 1 << 1;
/// Reported as `fast` by COMMAND.
pub(crate) const FAST: u32 = 1 << 2;
/// Reported as `loading` and `stale` by COMMAND.
pub(crate) const LOADING: u32 = 1 << 3;
/// Reported as `noscript` by COMMAND.
pub(crate) const NOSCRIPT: u32 = 1 << 4;
/// Reported as `pubsub` by COMMAND.
pub(crate) const PUBSUB: u32 = 1 << 5;
/// Redis' `readonly`: reads keys.
pub(crate) const READONLY: u32 = 1 << 6;
/// Redis' `write`: changes keys.
pub(crate) const WRITE: u32 = 1 << 7;
/// Redis' `denyoom`: may add data (refused when the store is full).
pub(crate) const DENYOOM: u32 = 1 << 8;

/// One command or subcommand.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Lower-case name (`setname` for `client|setname`).
    pub(crate) name: &'static str,
    /// `client|setname` for subcommands, else the name.
    pub(crate) fullname: &'static str,
    /// Redis arity: `n` exactly n arguments (name included), `-n` at least n.
    pub(crate) arity: i32,
    /// `NO_AUTH`, `PUBSUB_OK`, ...
    pub(crate) flags: u32,
    /// The handler; `None` for containers (which have subcommands).
    pub(crate) run: Option<Handler>,
    /// Subcommands of a container command.
    pub(crate) subcommands: &'static [Spec],
    /// COMMAND DOCS group.
    pub(crate) group: &'static str,
    /// COMMAND DOCS since.
    pub(crate) since: &'static str,
    /// COMMAND DOCS summary.
    pub(crate) summary: &'static str,
}

#[allow(clippy::too_many_arguments)] // a table row constructor
const fn spec(
    name: &'static str,
    fullname: &'static str,
    arity: i32,
    flags: u32,
    run: Handler,
    group: &'static str,
    since: &'static str,
    summary: &'static str,
) -> Spec {
    Spec { name, fullname, arity, flags, run: Some(run), subcommands: &[], group, since, summary }
}

const fn container(
    name: &'static str,
    subcommands: &'static [Spec],
    group: &'static str,
    since: &'static str,
    summary: &'static str,
) -> Spec {
    Spec { name, fullname: name, arity: -2, flags: 0, run: None, subcommands, group, since, summary }
}

const CONN: &str = "connection";
const PS: &str = "pubsub";
const SERVER: &str = "server";
const STRING: &str = "string";
const GENERIC: &str = "generic";

/// Every command this server knows.
pub(crate) static COMMANDS: &[Spec] = &[
    spec("ping", "ping", -1, FAST | PUBSUB_OK, ping::ping, CONN, "1.0.0", "Ping the server"),
    spec("echo", "echo", 2, FAST, ping::echo, CONN, "1.0.0", "Echo the given string"),
    spec(
        "hello",
        "hello",
        -1,
        NO_AUTH | FAST | LOADING | NOSCRIPT,
        hello::hello,
        CONN,
        "6.0.0",
        "Handshake with Redis",
    ),
    spec(
        "auth",
        "auth",
        -2,
        NO_AUTH | FAST | LOADING | NOSCRIPT,
        auth::auth,
        CONN,
        "1.0.0",
        "Authenticate to the server",
    ),
    spec(
        "select",
        "select",
        2,
        FAST | LOADING,
        select::select,
        CONN,
        "1.0.0",
        "Change the selected database for the current connection",
    ),
    container("client", client::SUBCOMMANDS, CONN, "2.4.0", "A container for client connection commands"),
    spec("info", "info", -1, LOADING, info::info, SERVER, "1.0.0", "Get information and statistics about the server"),
    Spec {
        name: "command",
        fullname: "command",
        arity: -1,
        flags: LOADING,
        run: Some(command::command),
        subcommands: command::SUBCOMMANDS,
        group: SERVER,
        since: "2.8.13",
        summary: "Get array of Redis command details",
    },
    spec(
        "quit",
        "quit",
        -1,
        NO_AUTH | FAST | LOADING | PUBSUB_OK,
        connection::quit,
        CONN,
        "1.0.0",
        "Close the connection",
    ),
    spec(
        "reset",
        "reset",
        1,
        NO_AUTH | FAST | LOADING | NOSCRIPT | PUBSUB_OK,
        connection::reset,
        CONN,
        "6.2.0",
        "Reset the connection",
    ),
    spec("publish", "publish", 3, FAST | LOADING | PUBSUB, pubsub::publish, PS, "2.0.0", "Post a message to a channel"),
    spec(
        "subscribe",
        "subscribe",
        -2,
        LOADING | NOSCRIPT | PUBSUB | PUBSUB_OK,
        pubsub::subscribe,
        PS,
        "2.0.0",
        "Listen for messages published to the given channels",
    ),
    spec(
        "unsubscribe",
        "unsubscribe",
        -1,
        LOADING | NOSCRIPT | PUBSUB | PUBSUB_OK,
        pubsub::unsubscribe,
        PS,
        "2.0.0",
        "Stop listening for messages posted to the given channels",
    ),
    spec(
        "psubscribe",
        "psubscribe",
        -2,
        LOADING | NOSCRIPT | PUBSUB | PUBSUB_OK,
        pubsub::psubscribe,
        PS,
        "2.0.0",
        "Listen for messages published to channels matching the given patterns",
    ),
    spec(
        "punsubscribe",
        "punsubscribe",
        -1,
        LOADING | NOSCRIPT | PUBSUB | PUBSUB_OK,
        pubsub::punsubscribe,
        PS,
        "2.0.0",
        "Stop listening for messages posted to channels matching the given patterns",
    ),
    spec(
        "spublish",
        "spublish",
        3,
        FAST | LOADING | PUBSUB,
        pubsub::spublish,
        PS,
        "7.0.0",
        "Post a message to a shard channel",
    ),
    spec(
        "ssubscribe",
        "ssubscribe",
        -2,
        LOADING | NOSCRIPT | PUBSUB | PUBSUB_OK,
        pubsub::ssubscribe,
        PS,
        "7.0.0",
        "Listen for messages published to the given shard channels",
    ),
    spec(
        "sunsubscribe",
        "sunsubscribe",
        -1,
        LOADING | NOSCRIPT | PUBSUB | PUBSUB_OK,
        pubsub::sunsubscribe,
        PS,
        "7.0.0",
        "Stop listening for messages posted to the given shard channels",
    ),
    container("pubsub", pubsub::SUBCOMMANDS, PS, "2.8.0", "A container for Pub/Sub commands"),
    spec("get", "get", 2, READONLY | FAST, kv::get, STRING, "1.0.0", "Get the value of a key"),
    spec("set", "set", -3, WRITE | DENYOOM, kv::set, STRING, "1.0.0", "Set the string value of a key"),
    spec(
        "setnx",
        "setnx",
        3,
        WRITE | DENYOOM | FAST,
        kv::setnx,
        STRING,
        "1.0.0",
        "Set the value of a key, only if the key does not exist",
    ),
    spec("mget", "mget", -2, READONLY | FAST, kv::mget, STRING, "1.0.0", "Get the values of all the given keys"),
    spec(
        "incr",
        "incr",
        2,
        WRITE | DENYOOM | FAST,
        kv::incr,
        STRING,
        "1.0.0",
        "Increment the integer value of a key by one",
    ),
    spec(
        "decr",
        "decr",
        2,
        WRITE | DENYOOM | FAST,
        kv::decr,
        STRING,
        "1.0.0",
        "Decrement the integer value of a key by one",
    ),
    spec(
        "incrby",
        "incrby",
        3,
        WRITE | DENYOOM | FAST,
        kv::incrby,
        STRING,
        "1.0.0",
        "Increment the integer value of a key by the given amount",
    ),
    spec(
        "decrby",
        "decrby",
        3,
        WRITE | DENYOOM | FAST,
        kv::decrby,
        STRING,
        "1.0.0",
        "Decrement the integer value of a key by the given number",
    ),
    spec("del", "del", -2, WRITE, kv::del, GENERIC, "1.0.0", "Delete a key"),
    spec("exists", "exists", -2, READONLY | FAST, kv::exists, GENERIC, "1.0.0", "Determine if a key exists"),
    // Arity 3 (Redis 6): the Redis 7 NX|XX|GT|LT options are not supported.
    spec("expire", "expire", 3, WRITE | FAST, kv::expire, GENERIC, "1.0.0", "Set a key's time to live in seconds"),
    spec(
        "pexpire",
        "pexpire",
        3,
        WRITE | FAST,
        kv::pexpire,
        GENERIC,
        "2.6.0",
        "Set a key's time to live in milliseconds",
    ),
    spec("ttl", "ttl", 2, READONLY | FAST, kv::ttl, GENERIC, "1.0.0", "Get the time to live for a key in seconds"),
    spec(
        "pttl",
        "pttl",
        2,
        READONLY | FAST,
        kv::pttl,
        GENERIC,
        "2.6.0",
        "Get the time to live for a key in milliseconds",
    ),
];

/// Finds a top-level command by name, case-insensitively.
pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Subcommand `name` of `spec`.
pub(crate) fn lookup_sub(spec: &'static Spec, name: &[u8]) -> Option<&'static Spec> {
    spec.subcommands.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// `%.128s` of a C string: up to the first NUL, at most `max` bytes.
pub(crate) fn cstr(data: &[u8], max: usize) -> &[u8] {
    let end = memchr::memchr(0, data).unwrap_or(data.len()).min(max);
    &data[..end]
}

/// The arity error of `spec`.
pub(crate) fn arity_error(ctx: &mut Ctx<'_>, fullname: &str) {
    ctx.error(&format!("ERR wrong number of arguments for '{fullname}' command"));
}

/// Runs one request (`args` non-empty). Returns the command's full name for `CLIENT LIST`.
pub(crate) fn execute(ctx: &mut Ctx<'_>, args: &[Bytes]) -> &'static str {
    let name = &args[0];
    if name.eq_ignore_ascii_case(b"host:") || name.eq_ignore_ascii_case(b"post") {
        // Redis' "possible cross protocol scripting attack": close without a reply.
        tracing::warn!(client = ctx.client.id, "HTTP request on the redis port, closing");
        ctx.client.close_after_reply = true;
        return "NULL";
    }
    let Some(mut spec) = lookup(name) else {
        unknown_command(ctx, args);
        return "NULL";
    };
    if !spec.subcommands.is_empty() && args.len() >= 2 {
        match lookup_sub(spec, &args[1]) {
            Some(sub) => spec = sub,
            None => {
                let mut text = b"ERR unknown subcommand '".to_vec();
                text.extend_from_slice(cstr(&args[1], 128));
                text.extend_from_slice(format!("'. Try {} HELP.", spec.name.to_ascii_uppercase()).as_bytes());
                ctx.error_bytes(&text);
                return "NULL";
            }
        }
    }
    let argc = i32::try_from(args.len()).unwrap_or(i32::MAX);
    if (spec.arity > 0 && spec.arity != argc) || argc < -spec.arity {
        arity_error(ctx, spec.fullname);
        return spec.fullname;
    }
    if !ctx.client.authenticated && spec.flags & NO_AUTH == 0 {
        ctx.error("NOAUTH Authentication required.");
        return spec.fullname;
    }
    if ctx.client.pubsub && ctx.client.proto == Proto::Resp2 && spec.flags & PUBSUB_OK == 0 {
        ctx.error(&format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.fullname
        ));
        return spec.fullname;
    }
    match spec.run {
        Some(run) => run(ctx, args),
        // A container called with its name only fails the arity check above.
        None => arity_error(ctx, spec.fullname),
    }
    spec.fullname
}

fn unknown_command(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let mut shown = Vec::new();
    for arg in &args[1..] {
        if shown.len() >= 128 {
            break;
        }
        let room = 128 - shown.len();
        shown.push(b'\'');
        shown.extend_from_slice(cstr(arg, room));
        shown.extend_from_slice(b"' ");
    }
    let mut text = b"ERR unknown command '".to_vec();
    text.extend_from_slice(cstr(&args[0], 128));
    text.extend_from_slice(b"', with args beginning with: ");
    text.extend_from_slice(&shown);
    ctx.error_bytes(&text);
}
