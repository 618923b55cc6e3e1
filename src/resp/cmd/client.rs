//! CLIENT SETNAME / GETNAME / SETINFO / ID / INFO / LIST.

use bytes::Bytes;

use super::{Ctx, LOADING, NOSCRIPT, Spec, spec};
use crate::resp::frame::{self, string2ll};

const CONN: &str = "connection";

/// CLIENT's subcommands.
pub(crate) static SUBCOMMANDS: &[Spec] = &[
    spec("setname", "client|setname", 3, NOSCRIPT | LOADING, setname, CONN, "2.6.9", "Set the current connection name"),
    spec("getname", "client|getname", 2, NOSCRIPT | LOADING, getname, CONN, "2.6.9", "Get the current connection name"),
    spec(
        "setinfo",
        "client|setinfo",
        4,
        NOSCRIPT | LOADING,
        setinfo,
        CONN,
        "7.2.0",
        "Set client or connection specific info",
    ),
    spec(
        "id",
        "client|id",
        2,
        NOSCRIPT | LOADING,
        id,
        CONN,
        "5.0.0",
        "Returns the client ID for the current connection",
    ),
    spec(
        "info",
        "client|info",
        2,
        NOSCRIPT | LOADING,
        info,
        CONN,
        "6.2.0",
        "Returns information about the current client connection.",
    ),
    spec("list", "client|list", -2, NOSCRIPT | LOADING, list, CONN, "2.4.0", "Get the list of client connections"),
];

/// Whether `value` only has the characters Redis allows in names (`!`..`~`).
fn valid_attr(value: &[u8]) -> bool {
    value.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// Sets (or with an empty name, clears) the client name; replies with the error and returns
/// `false` when the name is invalid.
pub(crate) fn set_name(ctx: &mut Ctx<'_>, name: &Bytes) -> bool {
    if name.is_empty() {
        ctx.client.name = None;
        return true;
    }
    if !valid_attr(name) {
        ctx.error("ERR Client names cannot contain spaces, newlines or special characters.");
        return false;
    }
    ctx.client.name = Some(name.clone());
    true
}

fn setname(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    if set_name(ctx, &args[2]) {
        ctx.ok();
    }
}

fn getname(ctx: &mut Ctx<'_>, _args: &[Bytes]) {
    match ctx.client.name.clone() {
        Some(name) => ctx.bulk(&name),
        None => frame::write_null(ctx.out, ctx.client.proto),
    }
}

/// `CLIENT SETINFO LIB-NAME|LIB-VER value` (Redis 7.2; clients send it and ignore errors).
fn setinfo(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let (attr, value) = (&args[2], &args[3]);
    let lib_name = attr.eq_ignore_ascii_case(b"lib-name");
    if !lib_name && !attr.eq_ignore_ascii_case(b"lib-ver") {
        let mut text = b"ERR Unrecognized option '".to_vec();
        text.extend_from_slice(super::cstr(attr, usize::MAX));
        text.push(b'\'');
        ctx.error_bytes(&text);
        return;
    }
    if !valid_attr(value) {
        let mut text = b"ERR ".to_vec();
        text.extend_from_slice(super::cstr(attr, usize::MAX));
        text.extend_from_slice(b" cannot contain spaces, newlines or special characters.");
        ctx.error_bytes(&text);
        return;
    }
    let value = if value.is_empty() { None } else { Some(value.clone()) };
    if lib_name {
        ctx.client.lib_name = value;
    } else {
        ctx.client.lib_ver = value;
    }
    ctx.ok();
}

fn id(ctx: &mut Ctx<'_>, _args: &[Bytes]) {
    ctx.integer(i64::try_from(ctx.client.id).unwrap_or(i64::MAX));
}

fn info(ctx: &mut Ctx<'_>, _args: &[Bytes]) {
    ctx.client.sync_meta("client|info", ctx.now);
    let line = ctx.client.meta.line(ctx.now, ctx.client.sub.out.pending());
    frame::write_verbatim(ctx.out, ctx.client.proto, b"txt", line.as_bytes());
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id [id ...]]`.
fn list(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    ctx.client.sync_meta("client|list", ctx.now);
    let mut ids: Option<Vec<u64>> = None;
    let mut kind: Option<bool> = None; // Some(true): pubsub clients only.
    if args.len() == 4 && args[2].eq_ignore_ascii_case(b"type") {
        let t = &args[3];
        if t.eq_ignore_ascii_case(b"normal") {
            kind = Some(false);
        } else if t.eq_ignore_ascii_case(b"pubsub") {
            kind = Some(true);
        } else if t.eq_ignore_ascii_case(b"master")
            || t.eq_ignore_ascii_case(b"replica")
            || t.eq_ignore_ascii_case(b"slave")
        {
            frame::write_verbatim(ctx.out, ctx.client.proto, b"txt", b"");
            return;
        } else {
            let mut text = b"ERR Unknown client type '".to_vec();
            text.extend_from_slice(super::cstr(t, usize::MAX));
            text.push(b'\'');
            ctx.error_bytes(&text);
            return;
        }
    } else if args.len() > 3 && args[2].eq_ignore_ascii_case(b"id") {
        let mut wanted = Vec::new();
        for arg in &args[3..] {
            match string2ll(arg).and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0) {
                Some(n) => wanted.push(n),
                None => {
                    ctx.error("ERR Invalid client ID");
                    return;
                }
            }
        }
        ids = Some(wanted);
    } else if args.len() != 2 {
        ctx.error("ERR syntax error");
        return;
    }
    let own_pending = ctx.client.sub.out.pending();
    let mut metas: Vec<_> = match &ids {
        Some(ids) => ids.iter().filter_map(|id| ctx.shared.clients.get(id).map(|m| m.clone())).collect(),
        None => ctx.shared.clients.iter().map(|m| m.value().clone()).collect(),
    };
    if ids.is_none() {
        metas.sort_by_key(|m| m.id);
    }
    let mut text = String::new();
    for meta in metas {
        if let Some(pubsub) = kind
            && meta.info.lock().pubsub != pubsub
        {
            continue;
        }
        let omem = if meta.id == ctx.client.id { own_pending } else { 0 };
        text.push_str(&meta.line(ctx.now, omem));
    }
    frame::write_verbatim(ctx.out, ctx.client.proto, b"txt", text.as_bytes());
}
