//! HELLO: protocol switch, optional authentication and client name, and the server map.

use bytes::Bytes;

use super::Ctx;
use super::auth::authenticate;
use super::client::set_name;
use crate::resp::frame::{Proto, Reply, string2ll};

/// The Redis version this broker reports (HELLO, INFO).
pub(crate) const REDIS_VERSION: &str = "7.0.15";

/// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
pub(crate) fn hello(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let mut proto = None;
    let mut next = 1;
    if args.len() >= 2 {
        next = 2;
        match string2ll(&args[1]) {
            None => {
                ctx.error("ERR Protocol version is not an integer or out of range");
                return;
            }
            Some(2) => proto = Some(Proto::Resp2),
            Some(3) => proto = Some(Proto::Resp3),
            Some(_) => {
                ctx.error("NOPROTO unsupported protocol version");
                return;
            }
        }
    }
    let mut credentials = None;
    let mut name = None;
    let mut j = next;
    while j < args.len() {
        let more = args.len() - 1 - j;
        let opt = &args[j];
        if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
            credentials = Some((&args[j + 1], &args[j + 2]));
            j += 3;
        } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
            name = Some(&args[j + 1]);
            j += 2;
        } else {
            let mut text = b"ERR Syntax error in HELLO option '".to_vec();
            text.extend_from_slice(super::cstr(opt, usize::MAX));
            text.push(b'\'');
            ctx.error_bytes(&text);
            return;
        }
    }
    if let Some((user, pass)) = credentials {
        if !authenticate(ctx.shared, user, pass) {
            ctx.error("WRONGPASS invalid username-password pair or user is disabled.");
            return;
        }
        ctx.client.authenticated = true;
    }
    if !ctx.client.authenticated {
        ctx.error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH \
             <user> <pass> option can be used to authenticate the client and select the RESP protocol \
             version at the same time",
        );
        return;
    }
    if let Some(name) = name
        && !set_name(ctx, name)
    {
        return;
    }
    if let Some(proto) = proto {
        ctx.client.set_proto(proto);
    }
    let id = i64::try_from(ctx.client.id).unwrap_or(i64::MAX);
    let map = Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(REDIS_VERSION)),
        (Reply::bulk("proto"), Reply::Integer(ctx.proto().version())),
        (Reply::bulk("id"), Reply::Integer(id)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("modules"), Reply::Array(Vec::new())),
    ]);
    ctx.reply(&map);
}
