//! PING and ECHO.

use bytes::{BufMut, Bytes};

use super::{Ctx, arity_error};
use crate::resp::frame::Proto;

/// `PING [message]`. In RESP2 subscribed mode Redis answers `*2 pong <message or "">`.
pub(crate) fn ping(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    if args.len() > 2 {
        arity_error(ctx, "ping");
        return;
    }
    if ctx.client.pubsub && ctx.proto() == Proto::Resp2 {
        ctx.out.put_slice(b"*2\r\n$4\r\npong\r\n");
        ctx.bulk(args.get(1).map_or(&b""[..], |m| &m[..]));
    } else if let Some(message) = args.get(1) {
        ctx.bulk(message);
    } else {
        ctx.out.put_slice(b"+PONG\r\n");
    }
}

/// `ECHO message`.
pub(crate) fn echo(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    ctx.bulk(&args[1]);
}
