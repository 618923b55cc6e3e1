//! GET, SET, SETNX, INCR, DECR, INCRBY, DECRBY, MGET, DEL, EXISTS, EXPIRE, PEXPIRE, TTL, PTTL.
//!
//! Arguments are checked here, with Redis 7.0's exact errors and in its order; the operation then
//! goes to the listener's [`KvBackend`](crate::resp::kv::KvBackend) (the node's own store, or
//! the raft leader in a cluster) and the reply is deferred until it answers ([`Ctx::defer`]).
//!
//! Time: each command reads the system clock once, sends that reading as `now_unix_ms` and turns
//! `EX`/`PX`/`EXPIRE`/`PEXPIRE` into absolute unix milliseconds with the same reading; backends
//! use both as given.
//!
//! Differences from Redis: one keyspace per listener (SELECT's database is not part of the key);
//! EXPIRE and PEXPIRE take exactly one time argument, as in Redis 6 (the Redis 7 NX|XX|GT|LT
//! options would need a condition in the replicated command).

use bytes::Bytes;

use super::{Ctx, cstr};
use crate::resp::frame::{Reply, string2ll};
use crate::resp::kv::{
    KvCommand, KvOp, KvRead, KvReadOp, KvValue, KvWrite, NOT_INTEGER_ERROR, SetCondition, system_unix_ms,
};

/// What a client sees when the cluster cannot take a key-value operation right now (no leader
/// elected or reachable; backends retry before giving this back).
pub(crate) const NO_LEADER_ERROR: &str = "ERR cluster has no leader, try again";

const SYNTAX_ERROR: &str = "ERR syntax error";
const INVALID_SET_EXPIRE: &str = "ERR invalid expire time in 'set' command";

/// The Redis reply for a key-value answer.
pub(crate) fn to_reply(value: KvValue) -> Reply {
    match value {
        KvValue::Ok => Reply::Simple(Bytes::from_static(b"OK")),
        KvValue::Integer(n) => Reply::Integer(n),
        KvValue::Bulk(data) => Reply::Bulk(data),
        KvValue::Nil => Reply::Null,
        KvValue::Array(items) => Reply::Array(items.into_iter().map(to_reply).collect()),
        KvValue::Error(text) => Reply::Error(Bytes::from(text)),
        KvValue::NotLeader { .. } => Reply::Error(Bytes::from_static(NO_LEADER_ERROR.as_bytes())),
    }
}

/// SETNX answers 1 or 0 where SET NX answers OK or nil.
fn setnx_reply(value: KvValue) -> Reply {
    match value {
        KvValue::Ok => Reply::Integer(1),
        KvValue::Nil => Reply::Integer(0),
        other => to_reply(other),
    }
}

fn submit(ctx: &mut Ctx<'_>, op: KvOp, shape: fn(KvValue) -> Reply) {
    let answer = ctx.shared.kv.execute(op);
    ctx.defer(async move { shape(answer.await) });
}

fn read(ctx: &mut Ctx<'_>, op: KvReadOp) {
    submit(ctx, KvOp::Read(KvRead { now_unix_ms: system_unix_ms(), op }), to_reply);
}

fn write(ctx: &mut Ctx<'_>, now_unix_ms: u64, op: KvWrite, shape: fn(KvValue) -> Reply) {
    submit(ctx, KvOp::Write(KvCommand { now_unix_ms, op }), shape);
}

/// `GET key`.
pub(crate) fn get(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    read(ctx, KvReadOp::Get(args[1].clone()));
}

/// `MGET key [key ...]`.
pub(crate) fn mget(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    read(ctx, KvReadOp::MGet(args[1..].to_vec()));
}

/// `EXISTS key [key ...]`: a key named twice counts twice.
pub(crate) fn exists(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    read(ctx, KvReadOp::Exists(args[1..].to_vec()));
}

/// `TTL key`.
pub(crate) fn ttl(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    read(ctx, KvReadOp::Ttl(args[1].clone()));
}

/// `PTTL key`.
pub(crate) fn pttl(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    read(ctx, KvReadOp::Pttl(args[1].clone()));
}

/// `DEL key [key ...]`.
pub(crate) fn del(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    write(ctx, system_unix_ms(), KvWrite::Del(args[1..].to_vec()), to_reply);
}

/// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT unix-s | PXAT unix-ms | KEEPTTL]`.
pub(crate) fn set(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let now = system_unix_ms();
    match parse_set(args, now) {
        Ok(op) => write(ctx, now, op, to_reply),
        Err(text) => ctx.error(text),
    }
}

/// `SETNX key value`.
pub(crate) fn setnx(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    let op = KvWrite::Set {
        key: args[1].clone(),
        value: args[2].clone(),
        condition: SetCondition::IfAbsent,
        expire_at_unix_ms: None,
        keep_ttl: false,
        get: false,
    };
    write(ctx, system_unix_ms(), op, setnx_reply);
}

/// `INCR key`.
pub(crate) fn incr(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    incr_by(ctx, &args[1], 1);
}

/// `DECR key`.
pub(crate) fn decr(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    incr_by(ctx, &args[1], -1);
}

/// `INCRBY key increment`.
pub(crate) fn incrby(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    match string2ll(&args[2]) {
        Some(delta) => incr_by(ctx, &args[1], delta),
        None => ctx.error(NOT_INTEGER_ERROR),
    }
}

/// `DECRBY key decrement`.
pub(crate) fn decrby(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    match string2ll(&args[2]) {
        // Its negation does not fit: Redis refuses before looking at the key.
        Some(i64::MIN) => ctx.error("ERR decrement would overflow"),
        Some(decrement) => incr_by(ctx, &args[1], -decrement),
        None => ctx.error(NOT_INTEGER_ERROR),
    }
}

fn incr_by(ctx: &mut Ctx<'_>, key: &Bytes, delta: i64) {
    write(ctx, system_unix_ms(), KvWrite::IncrBy { key: key.clone(), delta }, to_reply);
}

/// `EXPIRE key seconds`.
pub(crate) fn expire(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    expire_generic(ctx, args, 1000, "expire");
}

/// `PEXPIRE key milliseconds`.
pub(crate) fn pexpire(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    expire_generic(ctx, args, 1, "pexpire");
}

fn expire_generic(ctx: &mut Ctx<'_>, args: &[Bytes], unit_ms: i64, name: &str) {
    let now = system_unix_ms();
    match expire_at(&args[2], unit_ms, now, name) {
        Ok(at) => write(ctx, now, KvWrite::Expire { key: args[1].clone(), expire_at_unix_ms: at }, to_reply),
        Err(text) => ctx.error(&text),
    }
}

/// EXPIRE/PEXPIRE's time as an absolute unix millisecond, checked like Redis'
/// `expireGenericCommand` (a negative result is a time in the past: 0).
fn expire_at(arg: &[u8], unit_ms: i64, now: u64, name: &str) -> Result<u64, String> {
    let invalid = || format!("ERR invalid expire time in '{name}' command");
    let when = string2ll(arg).ok_or_else(|| NOT_INTEGER_ERROR.to_owned())?;
    let when = when.checked_mul(unit_ms).ok_or_else(invalid)?;
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let when = when.checked_add(now).ok_or_else(invalid)?;
    Ok(u64::try_from(when).unwrap_or(0))
}

/// SET's expiry options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExpireOption {
    Ex,
    Px,
    ExAt,
    PxAt,
}

impl ExpireOption {
    fn parse(opt: &[u8]) -> Option<Self> {
        [(b"ex".as_slice(), Self::Ex), (b"px", Self::Px), (b"exat", Self::ExAt), (b"pxat", Self::PxAt)]
            .into_iter()
            .find(|(name, _)| opt.eq_ignore_ascii_case(name))
            .map(|(_, option)| option)
    }

    fn in_seconds(self) -> bool {
        matches!(self, Self::Ex | Self::ExAt)
    }

    fn relative(self) -> bool {
        matches!(self, Self::Ex | Self::Px)
    }
}

/// SET's arguments, as Redis 7.0's `parseExtendedStringArgumentsOrReply` and
/// `getExpireMillisecondsOrReply` read them: options in any order, compared as C strings; NX
/// excludes XX; one expiry kind (repeating the same one is allowed, the last wins) and not with
/// KEEPTTL; then the expiry must be a positive integer that does not overflow.
fn parse_set(args: &[Bytes], now: u64) -> Result<KvWrite, &'static str> {
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut expire: Option<(ExpireOption, &Bytes)> = None;
    let mut j = 3;
    while j < args.len() {
        let opt = cstr(&args[j], usize::MAX);
        let is = |name: &[u8]| opt.eq_ignore_ascii_case(name);
        if is(b"nx") && !xx {
            nx = true;
        } else if is(b"xx") && !nx {
            xx = true;
        } else if is(b"get") {
            get = true;
        } else if is(b"keepttl") && expire.is_none() {
            keep_ttl = true;
        } else if let Some(option) = ExpireOption::parse(opt)
            && !keep_ttl
            && expire.is_none_or(|(previous, _)| previous == option)
            && let Some(value) = args.get(j + 1)
        {
            expire = Some((option, value));
            j += 1;
        } else {
            return Err(SYNTAX_ERROR);
        }
        j += 1;
    }
    let expire_at_unix_ms = match expire {
        None => None,
        Some((option, value)) => {
            let mut ms = string2ll(value).ok_or(NOT_INTEGER_ERROR)?;
            if ms <= 0 || (option.in_seconds() && ms > i64::MAX / 1000) {
                return Err(INVALID_SET_EXPIRE);
            }
            if option.in_seconds() {
                ms *= 1000;
            }
            if option.relative() {
                ms = ms.checked_add(i64::try_from(now).unwrap_or(i64::MAX)).ok_or(INVALID_SET_EXPIRE)?;
            }
            Some(u64::try_from(ms).map_err(|_| INVALID_SET_EXPIRE)?)
        }
    };
    let condition = match (nx, xx) {
        (true, _) => SetCondition::IfAbsent,
        (_, true) => SetCondition::IfPresent,
        _ => SetCondition::Always,
    };
    Ok(KvWrite::Set { key: args[1].clone(), value: args[2].clone(), condition, expire_at_unix_ms, keep_ttl, get })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn args(line: &str) -> Vec<Bytes> {
        line.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn set(line: &str) -> Result<KvWrite, &'static str> {
        parse_set(&args(line), NOW)
    }

    fn set_op(condition: SetCondition, expire_at_unix_ms: Option<u64>, keep_ttl: bool, get: bool) -> KvWrite {
        KvWrite::Set { key: Bytes::from("k"), value: Bytes::from("v"), condition, expire_at_unix_ms, keep_ttl, get }
    }

    #[test]
    fn set_options_in_any_order() {
        use SetCondition::*;
        assert_eq!(set("SET k v"), Ok(set_op(Always, None, false, false)));
        assert_eq!(set("set k v nx"), Ok(set_op(IfAbsent, None, false, false)));
        assert_eq!(set("set k v Xx get"), Ok(set_op(IfPresent, None, false, true)));
        assert_eq!(set("set k v get nx nx get"), Ok(set_op(IfAbsent, None, false, true)));
        assert_eq!(set("set k v ex 10"), Ok(set_op(Always, Some(NOW + 10_000), false, false)));
        assert_eq!(set("set k v PX 10 xx"), Ok(set_op(IfPresent, Some(NOW + 10), false, false)));
        assert_eq!(set("set k v exat 5"), Ok(set_op(Always, Some(5_000), false, false)));
        assert_eq!(set("set k v get pxat 5"), Ok(set_op(Always, Some(5), false, true)));
        assert_eq!(set("set k v keepttl keepttl"), Ok(set_op(Always, None, true, false)));
        // The same expiry option twice: the last one wins.
        assert_eq!(set("set k v ex 10 ex 20"), Ok(set_op(Always, Some(NOW + 20_000), false, false)));
        // Options are C strings: whatever follows a NUL is ignored.
        let with_nul = vec![Bytes::from("set"), Bytes::from("k"), Bytes::from("v"), Bytes::from_static(b"nX\0junk")];
        assert_eq!(parse_set(&with_nul, NOW), Ok(set_op(IfAbsent, None, false, false)));
    }

    #[test]
    fn set_errors_match_redis() {
        for bad in [
            "set k v nx xx",
            "set k v xx nx",
            "set k v ex 1 px 1",
            "set k v px 1 exat 1",
            "set k v ex 10 keepttl",
            "set k v keepttl pxat 10",
            "set k v ex",
            "set k v foo",
            "set k v nxx",
            "set k v ",
            "set k v 10",
        ] {
            assert_eq!(set(bad), Err(SYNTAX_ERROR), "{bad}");
        }
        for bad in ["set k v ex 0", "set k v px -1", "set k v exat 0", "set k v ex 9223372036854776"] {
            assert_eq!(set(bad), Err(INVALID_SET_EXPIRE), "{bad}");
        }
        // In range after * 1000 but not after adding now.
        assert_eq!(set("set k v ex 9223372036854775"), Err(INVALID_SET_EXPIRE));
        assert_eq!(set("set k v px 9223372036854775807"), Err(INVALID_SET_EXPIRE));
        // EXAT/PXAT add nothing: the largest values are fine.
        assert_eq!(
            set("set k v pxat 9223372036854775807"),
            Ok(set_op(SetCondition::Always, Some(i64::MAX as u64), false, false))
        );
        for bad in
            ["set k v ex 1x", "set k v px 01", "set k v ex +1", "set k v ex 1.5", "set k v ex 99999999999999999999"]
        {
            assert_eq!(set(bad), Err(NOT_INTEGER_ERROR), "{bad}");
        }
        // Syntax is checked before the expiry value.
        assert_eq!(set("set k v ex x foo"), Err(SYNTAX_ERROR));
    }

    #[test]
    fn expire_times_match_redis() {
        let at = |arg: &str, unit| expire_at(arg.as_bytes(), unit, NOW, "expire");
        assert_eq!(at("10", 1000), Ok(NOW + 10_000));
        assert_eq!(at("10", 1), Ok(NOW + 10));
        assert_eq!(at("0", 1000), Ok(NOW));
        assert_eq!(at("-1", 1000), Ok(NOW - 1000));
        assert_eq!(at("-99999999999999", 1000), Ok(0));
        let invalid = Err("ERR invalid expire time in 'expire' command".to_owned());
        assert_eq!(at("99999999999999999", 1000), invalid);
        assert_eq!(at("-9223372036854776", 1000), invalid);
        assert_eq!(at("9223372036854775807", 1), invalid);
        assert_eq!(at("-9223372036854775808", 1), Ok(0));
        assert_eq!(at("x", 1000), Err(NOT_INTEGER_ERROR.to_owned()));
        assert_eq!(at("", 1), Err(NOT_INTEGER_ERROR.to_owned()));
    }

    #[test]
    fn replies_map_from_kv_values() {
        assert_eq!(to_reply(KvValue::Ok), Reply::Simple(Bytes::from("OK")));
        assert_eq!(
            to_reply(KvValue::Array(vec![KvValue::Nil, KvValue::Bulk(Bytes::from("x")), KvValue::Integer(3)])),
            Reply::Array(vec![Reply::Null, Reply::bulk("x"), Reply::Integer(3)])
        );
        assert_eq!(to_reply(KvValue::Error("ERR boom".into())), Reply::error("ERR boom"));
        assert_eq!(
            to_reply(KvValue::NotLeader { leader_id: Some(2), leader_addr: String::new() }),
            Reply::error(NO_LEADER_ERROR)
        );
        assert_eq!(setnx_reply(KvValue::Ok), Reply::Integer(1));
        assert_eq!(setnx_reply(KvValue::Nil), Reply::Integer(0));
        assert_eq!(setnx_reply(KvValue::Error("OOM x".into())), Reply::error("OOM x"));
    }
}
