//! QUIT and RESET.

use bytes::{BufMut, Bytes};

use super::Ctx;
use crate::resp::frame::Proto;

/// `QUIT`: `+OK`, then the connection closes once the reply is written.
pub(crate) fn quit(ctx: &mut Ctx<'_>, _args: &[Bytes]) {
    ctx.ok();
    ctx.client.close_after_reply = true;
}

/// `RESET`: back to a fresh connection's state (Redis' `clearClientConnectionState`): database
/// 0, RESP2, not authenticated when a password is set, no subscriptions (left silently), no
/// name.
pub(crate) fn reset(ctx: &mut Ctx<'_>, _args: &[Bytes]) {
    ctx.client.db = 0;
    ctx.client.set_proto(Proto::Resp2);
    ctx.client.authenticated = !ctx.shared.auth_required();
    super::pubsub::unsubscribe_all_silently(ctx.client, &ctx.shared.broker);
    ctx.client.pubsub = false;
    ctx.client.name = None;
    ctx.out.put_slice(b"+RESET\r\n");
}
