//! AUTH, with `requirepass` semantics: one user, `default`, whose password is `requirepass`
//! (or who needs none when it is unset).

use bytes::Bytes;

use super::Ctx;
use crate::resp::server::Shared;

/// `AUTH [username] password`.
pub(crate) fn auth(ctx: &mut Ctx<'_>, args: &[Bytes]) {
    if args.len() > 3 {
        ctx.error("ERR syntax error");
        return;
    }
    let (user, pass): (&[u8], &[u8]) = if args.len() == 2 {
        if ctx.shared.config.requirepass.is_none() {
            ctx.error(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            );
            return;
        }
        (b"default", &args[1])
    } else {
        (&args[1], &args[2])
    };
    if authenticate(ctx.shared, user, pass) {
        ctx.client.authenticated = true;
        ctx.ok();
    } else {
        ctx.error("WRONGPASS invalid username-password pair or user is disabled.");
    }
}

/// Whether `user`/`pass` are valid credentials (Redis' `ACLAuthenticateUser` for a server with
/// only the default user).
pub(crate) fn authenticate(shared: &Shared, user: &[u8], pass: &[u8]) -> bool {
    if user != b"default" {
        return false;
    }
    match &shared.config.requirepass {
        None => true,
        Some(expected) => constant_time_eq(expected.as_bytes(), pass),
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(constant_time_eq(b"", b""));
    }
}
