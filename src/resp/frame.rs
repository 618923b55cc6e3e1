//! The RESP2/RESP3 codec: request parsing and reply encoding. Pure: bytes in, values out.
//!
//! Requests are parsed exactly the way Redis 7.0's `processMultibulkBuffer` and
//! `processInlineBuffer` parse them (including their quirks, so the differential tests see the
//! same bytes): a buffer starting with `*` is a multibulk request, anything else is an inline
//! command line split with `sdssplitargs` rules. [`parse_request`] tells "need more bytes"
//! ([`Parsed::Incomplete`]) apart from "malformed" ([`ProtocolError`], whose `Display` is the
//! exact text Redis replies with before closing the connection).
//!
//! Replies are built either as a [`Reply`] value ([`Reply::encode`]) or streamed with the
//! `write_*` helpers; both take the connection's [`Proto`] and write RESP2 downgrades
//! (maps flattened to arrays, pushes as arrays, `$-1` nulls...) the way Redis does.
//! [`decode_reply`] reads a reply back (tests, fuzzing).

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// Longest inline command line (and longest `*`/`$` header line) Redis accepts: 64 KiB.
pub(crate) const MAX_INLINE_LEN: usize = 64 * 1024;
/// Redis' `proto-max-bulk-len` default: 512 MiB.
pub(crate) const DEFAULT_MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Arguments per command accepted by default.
pub(crate) const DEFAULT_MAX_ARGS: usize = 1024 * 1024;
/// Largest multibulk count accepted from a client that still has to authenticate.
const UNAUTH_MAX_ARGS: i64 = 10;
/// Largest bulk length accepted from a client that still has to authenticate.
const UNAUTH_MAX_BULK: i64 = 16384;

/// Protocol version of a connection (`HELLO 2` / `HELLO 3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Proto {
    /// RESP2, what every connection starts with.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

impl Proto {
    /// The number `HELLO` reports.
    pub(crate) fn version(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

/// Limits applied while parsing requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParseLimits {
    /// Longest bulk string argument (`proto-max-bulk-len`).
    pub(crate) max_bulk_len: usize,
    /// Most arguments in one multibulk request.
    pub(crate) max_args: usize,
    /// Whether the client still has to authenticate (Redis then refuses multibulk counts above
    /// 10 and bulk lengths above 16384).
    pub(crate) unauthenticated: bool,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self { max_bulk_len: DEFAULT_MAX_BULK_LEN, max_args: DEFAULT_MAX_ARGS, unauthenticated: false }
    }
}

/// A malformed request. `Display` is the text Redis sends after `-ERR `; the connection is
/// closed after the reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtocolError {
    /// An inline line (or a `*`/`$` header) longer than 64 KiB without a newline.
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    /// A `*` header line longer than 64 KiB.
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A `$` header line longer than 64 KiB.
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// The `*` count is not a number or above the argument limit.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `*` count above 10 before authentication.
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// An argument header that does not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    /// A `$` length that is not a number, negative or above the bulk limit.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A `$` length above 16384 before authentication.
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    /// Unbalanced quotes (or a closing quote followed by something) in an inline command.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// One argument of a parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Arg {
    /// Bytes of the input buffer, verbatim.
    Span(Range<usize>),
    /// Unescaped bytes of a quoted inline argument.
    Owned(Vec<u8>),
}

/// Result of [`parse_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The buffer does not hold a whole request yet.
    Incomplete,
    /// A whole request: `consumed` bytes from the start of the buffer. `args` may be empty
    /// (`*0`, `*-1`, a blank line): Redis ignores such requests without a reply.
    Complete {
        /// Bytes the request occupied.
        consumed: usize,
        /// The command name and its arguments.
        args: Vec<Arg>,
    },
}

/// Parses one request from the start of `buf`.
pub(crate) fn parse_request(buf: &[u8], limits: &ParseLimits) -> Result<Parsed, ProtocolError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => parse_multibulk(buf, limits),
        Some(_) => parse_inline(buf),
    }
}

/// Parses a request and splits it off `buf`. `Ok(None)`: need more bytes. `Ok(Some(vec![]))`:
/// an empty request (ignored by the caller).
pub(crate) fn take_request(buf: &mut BytesMut, limits: &ParseLimits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    match parse_request(buf, limits)? {
        Parsed::Incomplete => Ok(None),
        Parsed::Complete { consumed, args } => {
            let frame = buf.split_to(consumed).freeze();
            Ok(Some(
                args.into_iter()
                    .map(|arg| match arg {
                        Arg::Span(range) => frame.slice(range),
                        Arg::Owned(bytes) => Bytes::from(bytes),
                    })
                    .collect(),
            ))
        }
    }
}

/// Position of the first `needle` before any NUL byte (C `strchr` on the NUL-terminated query
/// buffer, which Redis uses to find line ends).
fn strchr(buf: &[u8], needle: u8) -> Option<usize> {
    memchr::memchr2(needle, 0, buf).filter(|&i| buf[i] == needle)
}

/// Redis' `string2ll`: optional `-`, no `+`, no leading zeros, no spaces, fits an `i64`.
pub(crate) fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if value > i64::MAX as u64 + 1 {
            return None;
        }
        Some((value as i128).wrapping_neg() as i64)
    } else {
        i64::try_from(value).ok()
    }
}

fn parse_multibulk(buf: &[u8], limits: &ParseLimits) -> Result<Parsed, ProtocolError> {
    let Some(cr) = strchr(buf, b'\r') else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(ProtocolError::TooBigMultibulkCount);
        }
        return Ok(Parsed::Incomplete);
    };
    // Redis only checks that two bytes follow the `\r`, not that the second is `\n`.
    if cr + 2 > buf.len() {
        return Ok(Parsed::Incomplete);
    }
    let count = match string2ll(&buf[1..cr]) {
        Some(n) if n <= i64::from(i32::MAX) && usize::try_from(n).map_or(true, |n| n <= limits.max_args) => n,
        _ => return Err(ProtocolError::InvalidMultibulkLength),
    };
    if count > UNAUTH_MAX_ARGS && limits.unauthenticated {
        return Err(ProtocolError::UnauthenticatedMultibulkLength);
    }
    let mut pos = cr + 2;
    if count <= 0 {
        return Ok(Parsed::Complete { consumed: pos, args: Vec::new() });
    }
    let count = usize::try_from(count).unwrap_or(0);
    let mut args = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let rest = &buf[pos..];
        let Some(cr) = strchr(rest, b'\r') else {
            if rest.len() > MAX_INLINE_LEN {
                return Err(ProtocolError::TooBigBulkCount);
            }
            return Ok(Parsed::Incomplete);
        };
        if cr + 2 > rest.len() {
            return Ok(Parsed::Incomplete);
        }
        if rest[0] != b'$' {
            return Err(ProtocolError::ExpectedDollar(rest[0]));
        }
        let len = match string2ll(&rest[1..cr]) {
            Some(n) if n >= 0 && usize::try_from(n).is_ok_and(|n| n <= limits.max_bulk_len) => n,
            _ => return Err(ProtocolError::InvalidBulkLength),
        };
        if len > UNAUTH_MAX_BULK && limits.unauthenticated {
            return Err(ProtocolError::UnauthenticatedBulkLength);
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let start = pos + cr + 2;
        // The two bytes after the payload are skipped unchecked, like Redis does.
        if buf.len() - start < len + 2 {
            return Ok(Parsed::Incomplete);
        }
        args.push(Arg::Span(start..start + len));
        pos = start + len + 2;
    }
    Ok(Parsed::Complete { consumed: pos, args })
}

fn parse_inline(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    let Some(nl) = strchr(buf, b'\n') else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(ProtocolError::TooBigInline);
        }
        return Ok(Parsed::Incomplete);
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    let args = split_args(&buf[..line_end]).ok_or(ProtocolError::UnbalancedQuotes)?;
    Ok(Parsed::Complete { consumed: nl + 1, args: args.into_iter().map(Arg::Owned).collect() })
}

/// C `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Redis' `sdssplitargs`: whitespace-separated tokens, `"..."` with `\n \r \t \b \a \xHH`
/// escapes, `'...'` with `\'`. `None` on unbalanced quotes. Stops at a NUL byte like the C
/// string it was written for.
pub(crate) fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let line = match memchr::memchr(0, line) {
        Some(nul) => &line[..nul],
        None => line,
    };
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut p = 0;
    let mut out = Vec::new();
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p >= line.len() {
            return Some(out);
        }
        let (mut in_dq, mut in_sq, mut done) = (false, false, false);
        let mut current = Vec::new();
        while !done {
            let c = at(p);
            if in_dq {
                if c == b'\\' && at(p + 1) == b'x' && at(p + 2).is_ascii_hexdigit() && at(p + 3).is_ascii_hexdigit() {
                    current.push(hex(at(p + 2)) * 16 + hex(at(p + 3)));
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    current.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    current.push(c);
                }
            } else if in_sq {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    _ => current.push(c),
                }
            }
            if at(p) != 0 {
                p += 1;
            }
        }
        out.push(current);
    }
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

// ---- replies ---------------------------------------------------------------------------------

/// A reply value. Encoded per [`Proto`]; RESP3-only types are downgraded for RESP2 the way
/// Redis does it.
#[derive(Clone, Debug, PartialEq)]
// The codec's whole vocabulary: not every variant has a command using it yet.
#[allow(dead_code)]
pub(crate) enum Reply {
    /// `+text`
    Simple(Bytes),
    /// `-text` (the text includes the code, e.g. `ERR ...`).
    Error(Bytes),
    /// `:n`
    Integer(i64),
    /// `$len` + bytes.
    Bulk(Bytes),
    /// Null bulk: RESP2 `$-1`, RESP3 `_`.
    Null,
    /// Null array: RESP2 `*-1`, RESP3 `_`.
    NullArray,
    /// `*n` + items.
    Array(Vec<Reply>),
    /// RESP3 `%n` + key/value pairs; RESP2 `*2n`.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 `~n`; RESP2 `*n`.
    Set(Vec<Reply>),
    /// RESP3 `>n` (out-of-band push); RESP2 `*n`.
    Push(Vec<Reply>),
    /// RESP3 `,d`; RESP2 bulk string of `%.17g`.
    Double(f64),
    /// RESP3 `#t`/`#f`; RESP2 `:1`/`:0`.
    Boolean(bool),
    /// RESP3 `=len` + `fmt:` + text; RESP2 bulk string of the text.
    Verbatim {
        /// Three-letter format, `txt` or `mkd`.
        format: [u8; 3],
        /// The text.
        text: Bytes,
    },
}

impl Reply {
    /// An error reply from its full text (`"ERR ..."`).
    #[cfg(test)]
    pub(crate) fn error(text: impl Into<String>) -> Self {
        Reply::Error(Bytes::from(text.into()))
    }

    /// A bulk string copied from a `&str` or `&[u8]`.
    pub(crate) fn bulk(data: impl AsRef<[u8]>) -> Self {
        Reply::Bulk(Bytes::copy_from_slice(data.as_ref()))
    }

    /// Appends this reply's encoding for `proto` to `out`.
    pub(crate) fn encode(&self, proto: Proto, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => write_simple(out, s),
            Reply::Error(s) => write_error(out, s),
            Reply::Integer(n) => write_integer(out, *n),
            Reply::Bulk(b) => write_bulk(out, b),
            Reply::Null => write_null(out, proto),
            Reply::NullArray => write_null_array(out, proto),
            Reply::Array(items) => {
                write_array_len(out, items.len());
                items.iter().for_each(|i| i.encode(proto, out));
            }
            Reply::Map(pairs) => {
                write_map_len(out, proto, pairs.len());
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Set(items) => {
                write_set_len(out, proto, items.len());
                items.iter().for_each(|i| i.encode(proto, out));
            }
            Reply::Push(items) => {
                write_push_len(out, proto, items.len());
                items.iter().for_each(|i| i.encode(proto, out));
            }
            Reply::Double(d) => write_double(out, proto, *d),
            Reply::Boolean(b) => match proto {
                Proto::Resp2 => write_integer(out, i64::from(*b)),
                Proto::Resp3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            },
            Reply::Verbatim { format, text } => write_verbatim(out, proto, format, text),
        }
    }

    /// The reply as a RESP2 client decodes it (what `encode(Resp2)` then [`decode_reply`] gives).
    #[cfg(test)]
    pub(crate) fn downgraded(&self) -> Reply {
        match self {
            Reply::Array(items) | Reply::Set(items) | Reply::Push(items) => {
                Reply::Array(items.iter().map(Reply::downgraded).collect())
            }
            Reply::Map(pairs) => {
                Reply::Array(pairs.iter().flat_map(|(k, v)| [k.downgraded(), v.downgraded()]).collect())
            }
            Reply::Double(d) => Reply::Bulk(Bytes::from(format_double(*d))),
            Reply::Boolean(b) => Reply::Integer(i64::from(*b)),
            Reply::Verbatim { text, .. } => Reply::Bulk(text.clone()),
            other => other.clone(),
        }
    }
}

fn put_line(out: &mut BytesMut, prefix: u8, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.reserve(digits.len() - at + 4);
    out.put_u8(prefix);
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[at..]);
    out.put_slice(b"\r\n");
}

fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// `+text`. Carriage returns and newlines become spaces (they would break the protocol).
pub(crate) fn write_simple(out: &mut BytesMut, text: &[u8]) {
    out.put_u8(b'+');
    put_sanitized(out, text);
    out.put_slice(b"\r\n");
}

/// `-text`. Like Redis' `addReplyError`, newlines become spaces.
pub(crate) fn write_error(out: &mut BytesMut, text: &[u8]) {
    out.put_u8(b'-');
    put_sanitized(out, text);
    out.put_slice(b"\r\n");
}

fn put_sanitized(out: &mut BytesMut, text: &[u8]) {
    if memchr::memchr2(b'\r', b'\n', text).is_none() {
        out.put_slice(text);
    } else {
        out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    }
}

/// `:n`
pub(crate) fn write_integer(out: &mut BytesMut, n: i64) {
    put_line(out, b':', n);
}

/// `$len\r\nbytes\r\n`
pub(crate) fn write_bulk(out: &mut BytesMut, data: &[u8]) {
    put_line(out, b'$', len_i64(data.len()));
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Null bulk string.
pub(crate) fn write_null(out: &mut BytesMut, proto: Proto) {
    out.put_slice(match proto {
        Proto::Resp2 => b"$-1\r\n",
        Proto::Resp3 => b"_\r\n",
    });
}

/// Null array.
pub(crate) fn write_null_array(out: &mut BytesMut, proto: Proto) {
    out.put_slice(match proto {
        Proto::Resp2 => b"*-1\r\n",
        Proto::Resp3 => b"_\r\n",
    });
}

/// `*n`
pub(crate) fn write_array_len(out: &mut BytesMut, n: usize) {
    put_line(out, b'*', len_i64(n));
}

/// `%n` (RESP3) or `*2n` (RESP2).
pub(crate) fn write_map_len(out: &mut BytesMut, proto: Proto, pairs: usize) {
    match proto {
        Proto::Resp2 => put_line(out, b'*', len_i64(pairs.saturating_mul(2))),
        Proto::Resp3 => put_line(out, b'%', len_i64(pairs)),
    }
}

/// `~n` (RESP3) or `*n` (RESP2).
pub(crate) fn write_set_len(out: &mut BytesMut, proto: Proto, n: usize) {
    match proto {
        Proto::Resp2 => put_line(out, b'*', len_i64(n)),
        Proto::Resp3 => put_line(out, b'~', len_i64(n)),
    }
}

/// `>n` (RESP3) or `*n` (RESP2).
pub(crate) fn write_push_len(out: &mut BytesMut, proto: Proto, n: usize) {
    match proto {
        Proto::Resp2 => put_line(out, b'*', len_i64(n)),
        Proto::Resp3 => put_line(out, b'>', len_i64(n)),
    }
}

/// Verbatim string (`=`), a plain bulk string for RESP2.
pub(crate) fn write_verbatim(out: &mut BytesMut, proto: Proto, format: &[u8; 3], text: &[u8]) {
    match proto {
        Proto::Resp2 => write_bulk(out, text),
        Proto::Resp3 => {
            put_line(out, b'=', len_i64(text.len() + 4));
            out.put_slice(format);
            out.put_u8(b':');
            out.put_slice(text);
            out.put_slice(b"\r\n");
        }
    }
}

/// Double, formatted like C's `%.17g` (Redis' `addReplyDouble`).
pub(crate) fn write_double(out: &mut BytesMut, proto: Proto, d: f64) {
    let text = format_double(d);
    match proto {
        Proto::Resp2 => write_bulk(out, text.as_bytes()),
        Proto::Resp3 => {
            out.put_u8(b',');
            out.put_slice(text.as_bytes());
            out.put_slice(b"\r\n");
        }
    }
}

/// `%.17g`, with `inf`/`-inf`/`nan` spelled like Redis.
pub(crate) fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "nan".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    const P: i32 = 17;
    let sci = format!("{:.*e}", (P - 1) as usize, d);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let strip = |s: String| -> String {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    };
    if !(-4..P).contains(&exp) {
        let m = strip(mantissa.to_string());
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.abs())
    } else {
        let decimals = usize::try_from(P - 1 - exp).unwrap_or(0);
        strip(format!("{:.*}", decimals, d))
    }
}

/// Why [`decode_reply`] refused its input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplyDecodeError {
    /// An unknown type byte.
    #[error("unknown reply type byte {0:#04x}")]
    UnknownType(u8),
    /// A length or number that does not parse.
    #[error("invalid number in reply")]
    InvalidNumber,
    /// Payload not followed by CRLF, or otherwise malformed.
    #[error("malformed reply")]
    Malformed,
    /// Nested deeper than the decoder allows.
    #[error("reply nested too deeply")]
    TooDeep,
}

const MAX_REPLY_DEPTH: usize = 64;

/// Decodes one reply (RESP2 or RESP3). `Ok(None)`: need more bytes.
pub(crate) fn decode_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyDecodeError> {
    decode_at(buf, 0, 0)
}

fn decode_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, ReplyDecodeError> {
    if depth > MAX_REPLY_DEPTH {
        return Err(ReplyDecodeError::TooDeep);
    }
    let Some(&kind) = buf.get(pos) else { return Ok(None) };
    let Some(nl) = memchr::memchr(b'\n', &buf[pos..]).map(|i| pos + i) else { return Ok(None) };
    if nl < pos + 2 || buf[nl - 1] != b'\r' {
        return Err(ReplyDecodeError::Malformed);
    }
    let line = &buf[pos + 1..nl - 1];
    let next = nl + 1;
    let number = || string2ll(line).ok_or(ReplyDecodeError::InvalidNumber);
    let text = || Bytes::copy_from_slice(line);
    let reply = match kind {
        b'+' => (Reply::Simple(text()), next),
        b'-' => (Reply::Error(text()), next),
        b':' => (Reply::Integer(number()?), next),
        b'_' if line.is_empty() => (Reply::Null, next),
        b'#' => match line {
            b"t" => (Reply::Boolean(true), next),
            b"f" => (Reply::Boolean(false), next),
            _ => return Err(ReplyDecodeError::Malformed),
        },
        b',' => {
            let s = std::str::from_utf8(line).map_err(|_| ReplyDecodeError::InvalidNumber)?;
            (Reply::Double(s.parse().map_err(|_| ReplyDecodeError::InvalidNumber)?), next)
        }
        b'$' | b'=' => {
            let n = number()?;
            if n == -1 && kind == b'$' {
                return Ok(Some((Reply::Null, next)));
            }
            let n = usize::try_from(n).map_err(|_| ReplyDecodeError::InvalidNumber)?;
            let Some(end) = next.checked_add(n) else { return Err(ReplyDecodeError::InvalidNumber) };
            if buf.len() < end.saturating_add(2) {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ReplyDecodeError::Malformed);
            }
            let data = &buf[next..end];
            let reply = if kind == b'$' {
                Reply::Bulk(Bytes::copy_from_slice(data))
            } else {
                match data {
                    [a, b, c, b':', text @ ..] => {
                        Reply::Verbatim { format: [*a, *b, *c], text: Bytes::copy_from_slice(text) }
                    }
                    _ => return Err(ReplyDecodeError::Malformed),
                }
            };
            (reply, end + 2)
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = number()?;
            if n == -1 && kind == b'*' {
                return Ok(Some((Reply::NullArray, next)));
            }
            let n = usize::try_from(n).map_err(|_| ReplyDecodeError::InvalidNumber)?;
            let items = if kind == b'%' { n.checked_mul(2).ok_or(ReplyDecodeError::InvalidNumber)? } else { n };
            let mut values = Vec::with_capacity(items.min(1024));
            let mut at = next;
            for _ in 0..items {
                match decode_at(buf, at, depth + 1)? {
                    Some((v, end)) => {
                        values.push(v);
                        at = end;
                    }
                    None => return Ok(None),
                }
            }
            let reply = match kind {
                b'*' => Reply::Array(values),
                b'~' => Reply::Set(values),
                b'>' => Reply::Push(values),
                _ => {
                    let mut pairs = Vec::with_capacity(n);
                    let mut it = values.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    Reply::Map(pairs)
                }
            };
            (reply, at)
        }
        other => return Err(ReplyDecodeError::UnknownType(other)),
    };
    Ok(Some(reply))
}

/// Encodes `args` as a multibulk request (what clients send).
pub(crate) fn encode_request(args: &[&[u8]], out: &mut BytesMut) {
    write_array_len(out, args.len());
    args.iter().for_each(|a| write_bulk(out, a));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Parsed, ProtocolError> {
        parse_request(input, &ParseLimits::default())
    }

    fn args(input: &[u8]) -> Vec<Vec<u8>> {
        let mut buf = BytesMut::from(input);
        match take_request(&mut buf, &ParseLimits::default()) {
            Ok(Some(args)) => args.into_iter().map(|a| a.to_vec()).collect(),
            other => panic!("expected a request from {input:?}, got {other:?}"),
        }
    }

    fn v(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_requests_and_pipelines() {
        assert_eq!(args(b"*2\r\n$4\r\nECHO\r\n$3\r\nhey\r\n"), v(&["ECHO", "hey"]));
        assert_eq!(args(b"*1\r\n$0\r\n\r\n"), v(&[""]));
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\nPI"[..]);
        let limits = ParseLimits::default();
        assert_eq!(take_request(&mut buf, &limits), Ok(Some(vec![Bytes::from_static(b"PING")])));
        assert_eq!(take_request(&mut buf, &limits), Ok(Some(vec![Bytes::from_static(b"PING")])));
        assert_eq!(take_request(&mut buf, &limits), Ok(None));
        assert_eq!(&buf[..], b"PI");
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let full = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n$10\r\n0123456789\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        assert!(matches!(parse(full), Ok(Parsed::Complete { consumed, .. }) if consumed == full.len()));
    }

    #[test]
    fn empty_multibulk_is_ignored() {
        assert_eq!(parse(b"*0\r\n"), Ok(Parsed::Complete { consumed: 4, args: vec![] }));
        assert_eq!(parse(b"*-1\r\n"), Ok(Parsed::Complete { consumed: 5, args: vec![] }));
        assert_eq!(parse(b"*-5\r\n"), Ok(Parsed::Complete { consumed: 5, args: vec![] }));
    }

    #[test]
    fn malformed_multibulk() {
        assert_eq!(parse(b"*x\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse(b"*\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse(b"*01\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse(b"*+1\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse(b"*99999999999\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse(b"*1048577\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse(b"*1\r\n:1\r\n"), Err(ProtocolError::ExpectedDollar(b':')));
        assert_eq!(parse(b"*1\r\n$-5\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse(b"*1\r\n$x\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse(b"*1\r\n$99999999999999999999\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(ProtocolError::ExpectedDollar(b'x').to_string(), "Protocol error: expected '$', got 'x'");
        let small = ParseLimits { max_bulk_len: 4, ..ParseLimits::default() };
        assert_eq!(parse_request(b"*1\r\n$5\r\n", &small), Err(ProtocolError::InvalidBulkLength));
        assert!(matches!(parse_request(b"*1\r\n$4\r\nPING\r\n", &small), Ok(Parsed::Complete { .. })));
    }

    #[test]
    fn unauthenticated_limits() {
        let unauth = ParseLimits { unauthenticated: true, ..ParseLimits::default() };
        assert_eq!(parse_request(b"*11\r\n", &unauth), Err(ProtocolError::UnauthenticatedMultibulkLength));
        assert_eq!(parse_request(b"*10\r\n", &unauth), Ok(Parsed::Incomplete));
        assert_eq!(parse_request(b"*1\r\n$16385\r\n", &unauth), Err(ProtocolError::UnauthenticatedBulkLength));
        assert_eq!(parse_request(b"*1\r\n$16384\r\n", &unauth), Ok(Parsed::Incomplete));
    }

    #[test]
    fn oversized_header_lines() {
        let mut long = b"*".to_vec();
        long.resize(MAX_INLINE_LEN + 2, b'1');
        assert_eq!(parse(&long), Err(ProtocolError::TooBigMultibulkCount));
        let mut long = b"*1\r\n$".to_vec();
        long.resize(MAX_INLINE_LEN + 10, b'1');
        assert_eq!(parse(&long), Err(ProtocolError::TooBigBulkCount));
        let mut long = b"PING ".to_vec();
        long.resize(MAX_INLINE_LEN + 1, b'a');
        assert_eq!(parse(&long), Err(ProtocolError::TooBigInline));
        long.truncate(MAX_INLINE_LEN);
        assert_eq!(parse(&long), Ok(Parsed::Incomplete));
    }

    #[test]
    fn inline_commands() {
        assert_eq!(args(b"PING\r\n"), v(&["PING"]));
        assert_eq!(args(b"PING\n"), v(&["PING"]));
        assert_eq!(args(b"  echo   a\tb  \r\n"), v(&["echo", "a", "b"]));
        assert_eq!(
            args(b"echo \"a b\\n\\x41\" 'c\\'d'\r\n"),
            vec![b"echo".to_vec(), b"a b\nA".to_vec(), b"c'd".to_vec()]
        );
        assert_eq!(args(b"echo a\"b c\"\r\n"), v(&["echo", "ab c"]));
        assert_eq!(args(b"echo \"\"\r\n"), v(&["echo", ""]));
        assert_eq!(args(b"\r\n"), Vec::<Vec<u8>>::new());
        assert_eq!(parse(b"echo \"abc\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse(b"echo \"a\"b\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse(b"echo 'a\r\n"), Err(ProtocolError::UnbalancedQuotes));
        // A NUL byte hides the newline, like C's strchr on the query buffer.
        assert_eq!(parse(b"PI\0NG\r\n"), Ok(Parsed::Incomplete));
    }

    #[test]
    fn string2ll_matches_redis() {
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(string2ll(b"-1"), Some(-1));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [&b""[..], b"-", b"-0", b"01", b"+1", b" 1", b"1 ", b"9223372036854775808", b"1a"] {
            assert_eq!(string2ll(bad), None, "{bad:?}");
        }
    }

    fn enc(reply: &Reply, proto: Proto) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.encode(proto, &mut out);
        out.to_vec()
    }

    #[test]
    fn encodings_match_redis() {
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]);
        assert_eq!(enc(&map, Proto::Resp2), b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&map, Proto::Resp3), b"%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&Reply::Null, Proto::Resp2), b"$-1\r\n");
        assert_eq!(enc(&Reply::NullArray, Proto::Resp2), b"*-1\r\n");
        assert_eq!(enc(&Reply::Null, Proto::Resp3), b"_\r\n");
        assert_eq!(enc(&Reply::Push(vec![Reply::bulk("x")]), Proto::Resp3), b">1\r\n$1\r\nx\r\n");
        assert_eq!(enc(&Reply::Push(vec![Reply::bulk("x")]), Proto::Resp2), b"*1\r\n$1\r\nx\r\n");
        assert_eq!(enc(&Reply::Set(vec![]), Proto::Resp3), b"~0\r\n");
        assert_eq!(enc(&Reply::Boolean(true), Proto::Resp2), b":1\r\n");
        assert_eq!(enc(&Reply::Boolean(false), Proto::Resp3), b"#f\r\n");
        assert_eq!(enc(&Reply::Double(1.5), Proto::Resp3), b",1.5\r\n");
        assert_eq!(enc(&Reply::Double(0.1), Proto::Resp2), b"$19\r\n0.10000000000000001\r\n");
        assert_eq!(enc(&Reply::Double(f64::NEG_INFINITY), Proto::Resp3), b",-inf\r\n");
        let verbatim = Reply::Verbatim { format: *b"txt", text: Bytes::from_static(b"hi") };
        assert_eq!(enc(&verbatim, Proto::Resp3), b"=6\r\ntxt:hi\r\n");
        assert_eq!(enc(&verbatim, Proto::Resp2), b"$2\r\nhi\r\n");
        assert_eq!(enc(&Reply::error("ERR a\r\nb"), Proto::Resp2), b"-ERR a  b\r\n");
    }

    #[test]
    fn double_formatting_is_percent_17g() {
        assert_eq!(format_double(1.0), "1");
        assert_eq!(format_double(-2.5), "-2.5");
        assert_eq!(format_double(1e17), "1e+17");
        assert_eq!(format_double(1e16), "10000000000000000");
        assert_eq!(format_double(1.5e-5), "1.5e-05");
        assert_eq!(format_double(0.0001), "0.0001");
        assert_eq!(format_double(3.0e100), "2.9999999999999999e+100");
    }

    #[test]
    fn replies_round_trip() {
        let reply = Reply::Array(vec![
            Reply::Simple(Bytes::from_static(b"OK")),
            Reply::error("ERR x"),
            Reply::Integer(-7),
            Reply::bulk("bin\r\n\0"),
            Reply::Null,
            Reply::NullArray,
            Reply::Map(vec![(Reply::bulk("k"), Reply::Set(vec![Reply::Integer(1)]))]),
            Reply::Push(vec![Reply::bulk("message")]),
            Reply::Double(2.25),
            Reply::Boolean(true),
            Reply::Verbatim { format: *b"txt", text: Bytes::from_static(b"a\r\nb") },
            Reply::Array(vec![]),
        ]);
        let bytes = enc(&reply, Proto::Resp3);
        let decoded = decode_reply(&bytes).expect("decodes").expect("complete");
        let resp3_null_array = match decoded.0 {
            Reply::Array(mut items) => {
                // RESP3 has one null type: `_` decodes as Null.
                assert_eq!(items[5], Reply::Null);
                items[5] = Reply::NullArray;
                Reply::Array(items)
            }
            other => other,
        };
        assert_eq!(resp3_null_array, reply);
        assert_eq!(decoded.1, bytes.len());
        let bytes2 = enc(&reply, Proto::Resp2);
        assert_eq!(decode_reply(&bytes2), Ok(Some((reply.downgraded(), bytes2.len()))));
        for cut in 0..bytes.len() {
            assert_eq!(decode_reply(&bytes[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn requests_round_trip() {
        let argv: [&[u8]; 3] = [b"PUBLISH", b"ch\r\n", b""];
        let mut out = BytesMut::new();
        encode_request(&argv, &mut out);
        let got = take_request(&mut out, &ParseLimits::default()).expect("valid").expect("complete");
        assert_eq!(got.iter().map(|b| &b[..]).collect::<Vec<_>>(), argv);
        assert!(out.is_empty());
    }
}
