//! COMMAND, COMMAND COUNT / DOCS / INFO / LIST: enough for `redis-cli` and client libraries
//! that introspect the server.

use bytes::Bytes;

use super::{COMMANDS, Ctx, FAST, LOADING, NO_AUTH, NOSCRIPT, PUBSUB, Spec, lookup, spec};
use crate::resp::frame::Reply;

const SERVER: &str = "server";

/// COMMAND's subcommands.
pub(crate) static SUBCOMMANDS: &[Spec] = &[
    spec("count", "command|count", 2, LOADING, count, SERVER, "2.8.13", "Get total number of Redis commands"),
    spec(
        "docs",
        "command|docs",
        -2,
        LOADING,
        docs,
        SERVER,
        "7.0.0",
        "Get array of specific Redis command documentation",
    ),
    spec(
        "info",
        "command|info",
        -2,
        LOADING,
        info,
        SERVER,
        "2.8.13",
        "Get array of specific Redis command details, or all when no argument is given.",
    ),
    spec("list", "command|list", -2, LOADING, list, SERVER, "7.0.0", "Get an array of Redis command names"),
];

fn status(text: &str) -> Reply {
    Reply::Simple(Bytes::copy_from_slice(text.as_bytes()))
}

fn flag_names(spec: &Spec) -> Vec<Reply> {
    let mut names = Vec::new();
    if spec.flags & NOSCRIPT != 0 {
        names.push(status("noscript"));
    }
    if spec.flags & LOADING != 0 {
        names.push(status("loading"));
        names.push(status("stale"));
    }
    if spec.flags & FAST != 0 {
        names.push(status("fast"));
    }
    if spec.flags & NO_AUTH != 0 {
        names.push(status("no_auth"));
    }
    if spec.flags & PUBSUB != 0 {
        names.push(status("pubsub"));
    }
    names
}

fn categories(spec: &Spec) -> Vec<Reply> {
    let mut cats = vec![status(if spec.flags & FAST != 0 { "@fast" } else { "@slow" })];
    match spec.group {
        "connection" => cats.push(status("@connection")),
        "pubsub" => cats.push(status("@pubsub")),
        _ => {}
    }
    cats
}

/// The 10-element COMMAND INFO entry of `spec`.
fn command_info(spec: &Spec) -> Reply {
    Reply::Array(vec![
        Reply::bulk(spec.fullname),
        Reply::Integer(i64::from(spec.arity)),
        Reply::Set(flag_names(spec)),
        Reply::Integer(0),
        Reply::Integer(0),
        Reply::Integer(0),
        Reply::Set(categories(spec)),
        Reply::Set(Vec::new()),
        Reply::Set(Vec::new()),
        Reply::Set(spec.subcommands.iter().map(command_info).collect()),
    ])
}

fn command_docs(spec: &Spec) -> Reply {
    let mut doc = vec![
        (Reply::bulk("summary"), Reply::bulk(spec.summary)),
        (Reply::bulk("since"), Reply::bulk(spec.since)),
        (Reply::bulk("group"), Reply::bulk(spec.group)),
        (Reply::bulk("complexity"), Reply::bulk("O(1)")),
    ];
    if !spec.subcommands.is_empty() {
        let subs = spec.subcommands.iter().map(|s| (Reply::bulk(s.fullname), command_docs(s))).collect();
        doc.push((Reply::bulk("subcommands"), Reply::Map(subs)));
    }
    Reply::Map(doc)
}

/// Finds `client|setname` style names as well as top-level ones.
fn find(name: &[u8]) -> Option<&'static Spec> {
    match name.iter().position(|b| *b == b'|') {
        None => lookup(name),
        Some(bar) => {
            let parent = lookup(&name[..bar])?;
            super::lookup_sub(parent, &name[bar + 1..])
        }
    }
}

/// `COMMAND`: every command's info.
pub(crate) fn command(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    debug_assert_eq!(args.len(), 1);
    ctx.reply(&Reply::Array(COMMANDS.iter().map(command_info).collect()));
}

fn count(ctx: &mut Ctx<'_>, _args: &[Bytes]) {
    ctx.integer(i64::try_from(COMMANDS.len()).unwrap_or(i64::MAX));
}

fn docs(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let specs: Vec<&Spec> =
        if args.len() == 2 { COMMANDS.iter().collect() } else { args[2..].iter().filter_map(|n| find(n)).collect() };
    ctx.reply(&Reply::Map(specs.into_iter().map(|s| (Reply::bulk(s.fullname), command_docs(s))).collect()));
}

fn info(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let reply = if args.len() == 2 {
        Reply::Array(COMMANDS.iter().map(command_info).collect())
    } else {
        Reply::Array(args[2..].iter().map(|n| find(n).map_or(Reply::NullArray, command_info)).collect())
    };
    ctx.reply(&reply);
}

fn list(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    if args.len() != 2 {
        ctx.error("ERR syntax error");
        return;
    }
    let mut names = Vec::new();
    for spec in COMMANDS {
        names.push(Reply::bulk(spec.fullname));
        names.extend(spec.subcommands.iter().map(|s| Reply::bulk(s.fullname)));
    }
    ctx.reply(&Reply::Array(names));
}
