//! SELECT. The broker has no keyspace; it accepts the 16 databases Redis has by default so
//! clients configured with a database index connect.

use bytes::Bytes;

use super::Ctx;
use crate::resp::frame::string2ll;

/// Databases a client may select (Redis' `databases` default).
pub(crate) const DATABASES: i64 = 16;

/// `SELECT index`.
pub(crate) fn select(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let Some(index) = string2ll(&args[1]) else {
        ctx.error("ERR value is not an integer or out of range");
        return;
    };
    if index < i64::from(i32::MIN) || index > i64::from(i32::MAX) {
        ctx.error("ERR value is out of range, value must between -2147483648 and 2147483647");
        return;
    }
    if !(0..DATABASES).contains(&index) {
        ctx.error("ERR DB index is out of range");
        return;
    }
    ctx.client.db = index;
    ctx.ok();
}
