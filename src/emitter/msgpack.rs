//! The tolerant msgpack reader for emitter messages.
//!
//! Our own rather than a library so that it can borrow strings and binary values from the
//! message ([`Mp`]), bound its depth ([`MAX_DEPTH`]) and allocations (a length is checked
//! against the bytes left before anything is allocated), and read the dialect of old PHP
//! emitters (0xda → 0xd8 and 0xdb → 0xd9 in BINARY_EVENT packets, old msgpack-js' "buffer
//! 16/32"; docs/protocol.md#emitters-of-socketio-1x). Pure: bytes in, a value or a
//! [`MsgpackError`] out.

/// Deepest msgpack nesting accepted (the JSON handed to clients stays well below serde's limits).
pub(crate) const MAX_DEPTH: usize = 64;

/// Socket.IO packet types an emitter broadcast may carry.
pub(super) const EVENT: u64 = 2;
pub(super) const BINARY_EVENT: u64 = 5;

/// Malformed msgpack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MsgpackError {
    /// The payload ends inside a value (also: a length larger than what is left).
    #[error("truncated at byte {at}")]
    Truncated {
        /// Offset of the value that does not fit.
        at: usize,
    },
    /// The never-used marker 0xc1.
    #[error("reserved marker 0xc1 at byte {at}")]
    Reserved {
        /// Offset of the marker.
        at: usize,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH} at byte {at}")]
    TooDeep {
        /// Offset of the value that is too deep.
        at: usize,
    },
    /// Bytes left after the top-level value.
    #[error("{count} trailing bytes")]
    TrailingBytes {
        /// How many bytes are left.
        count: usize,
    },
}

/// The value under string key `key` (the last one, like a JS object).
pub(super) fn get<'t, 'a>(map: &'t [(Mp<'a>, Mp<'a>)], key: &str) -> Option<&'t Mp<'a>> {
    map.iter().rev().find(|(k, _)| matches!(k, Mp::Str(s) if *s == key.as_bytes())).map(|(_, v)| v)
}

/// A msgpack value borrowing strings and binary from the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mp<'a> {
    /// nil
    Nil,
    /// true / false
    Bool(bool),
    /// A non-negative integer of any width.
    UInt(u64),
    /// A negative integer of any width.
    Int(i64),
    /// float 32 or 64.
    Float(f64),
    /// str (not necessarily UTF-8).
    Str(&'a [u8]),
    /// bin.
    Bin(&'a [u8]),
    /// array.
    Array(Vec<Mp<'a>>),
    /// map, in wire order.
    Map(Vec<(Mp<'a>, Mp<'a>)>),
    /// ext: type, data, and whether it was a fixext.
    Ext(i8, &'a [u8], bool),
}

/// How to read the markers 0xd8 and 0xd9.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// The msgpack spec: fixext 16 and str 8.
    Standard,
    /// The PHP socket.io-emitter of socket.io 1.x: in a BINARY_EVENT message it replaced every
    /// byte 0xda by 0xd8 and every 0xdb by 0xd9, so that msgpack-js (socket.io-redis' decoder
    /// then) read the raw 16 / raw 32 strings of msgpack-php as its own "buffer 16" (0xd8) and
    /// "buffer 32" (0xd9). msgpack-js itself wrote Buffers that way, so the old Node emitter's
    /// BINARY_EVENT messages read the same. Here 0xd8 is a raw 16. 0xd9 is a raw 32 when the
    /// byte after it is below 32, a real str 8 otherwise: a packer with str 8 (msgpack-php ≥ 2)
    /// uses it for 32 to 255 bytes only, and a raw 32 holds at least 65536 bytes, so its first
    /// length byte is below 32 for anything under 512 MiB. Both read as [`Mp::Str`]: PHP strings
    /// are bytes, UTF-8 ones stay text, the others become binary attachments.
    Php,
}

/// Reads one whole message: the standard dialect, or the old PHP one when the message is a
/// BINARY_EVENT that only makes sense in it.
pub(super) fn read_message(buf: &[u8]) -> Result<Mp<'_>, MsgpackError> {
    let standard = Reader::read_all(buf, Dialect::Standard);
    let retry = match &standard {
        Ok((_, false)) => false,
        Ok((tree, true)) => packet_type(tree) == Some(BINARY_EVENT),
        Err(_) => memchr::memchr2(0xd8, 0xd9, buf).is_some(),
    };
    if retry
        && let Ok((tree, _)) = Reader::read_all(buf, Dialect::Php)
        && packet_type(&tree) == Some(BINARY_EVENT)
    {
        return Ok(tree);
    }
    standard.map(|(tree, _)| tree)
}

/// The `type` of the packet in `[uid, packet, opts]` (or socket.io 1.x' `[packet, opts]`: the
/// first map either way), if it is an unsigned integer.
fn packet_type(tree: &Mp<'_>) -> Option<u64> {
    let Mp::Array(items) = tree else { return None };
    let packet = items.iter().find_map(|i| match i {
        Mp::Map(m) => Some(m),
        _ => None,
    })?;
    match get(packet, "type") {
        Some(Mp::UInt(t)) => Some(*t),
        _ => None,
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    dialect: Dialect,
    /// Whether a 0xd8 / 0xd9 marker was read (the standard reading of a PHP message is suspect).
    saw_php_markers: bool,
}

impl<'a> Reader<'a> {
    /// Reads exactly one value spanning `buf`; also says whether 0xd8/0xd9 markers were seen.
    fn read_all(buf: &'a [u8], dialect: Dialect) -> Result<(Mp<'a>, bool), MsgpackError> {
        let mut r = Reader { buf, pos: 0, dialect, saw_php_markers: false };
        let value = r.value(0)?;
        match buf.len() - r.pos {
            0 => Ok((value, r.saw_php_markers)),
            count => Err(MsgpackError::TrailingBytes { count }),
        }
    }

    fn take(&mut self, n: usize, at: usize) -> Result<&'a [u8], MsgpackError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.buf.len()).ok_or(MsgpackError::Truncated { at })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn be<const N: usize>(&mut self, at: usize) -> Result<[u8; N], MsgpackError> {
        let bytes = self.take(N, at)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn len8(&mut self, at: usize) -> Result<usize, MsgpackError> {
        Ok(usize::from(self.be::<1>(at)?[0]))
    }

    fn len16(&mut self, at: usize) -> Result<usize, MsgpackError> {
        Ok(usize::from(u16::from_be_bytes(self.be(at)?)))
    }

    fn len32(&mut self, at: usize) -> Result<usize, MsgpackError> {
        usize::try_from(u32::from_be_bytes(self.be(at)?)).map_err(|_| MsgpackError::Truncated { at })
    }

    fn ext(&mut self, len: usize, fixed: bool, at: usize) -> Result<Mp<'a>, MsgpackError> {
        let ty = i8::from_be_bytes(self.be(at)?);
        Ok(Mp::Ext(ty, self.take(len, at)?, fixed))
    }

    fn int(n: i64) -> Mp<'a> {
        match u64::try_from(n) {
            Ok(n) => Mp::UInt(n),
            Err(_) => Mp::Int(n),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Mp<'a>, MsgpackError> {
        let at = self.pos;
        if depth > MAX_DEPTH {
            return Err(MsgpackError::TooDeep { at });
        }
        let marker = self.be::<1>(at)?[0];
        Ok(match marker {
            0x00..=0x7f => Mp::UInt(u64::from(marker)),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth, at)?,
            0x90..=0x9f => self.array(usize::from(marker & 0x0f), depth, at)?,
            0xa0..=0xbf => Mp::Str(self.take(usize::from(marker & 0x1f), at)?),
            0xc0 => Mp::Nil,
            0xc1 => return Err(MsgpackError::Reserved { at }),
            0xc2 => Mp::Bool(false),
            0xc3 => Mp::Bool(true),
            0xc4 => {
                let n = self.len8(at)?;
                Mp::Bin(self.take(n, at)?)
            }
            0xc5 => {
                let n = self.len16(at)?;
                Mp::Bin(self.take(n, at)?)
            }
            0xc6 => {
                let n = self.len32(at)?;
                Mp::Bin(self.take(n, at)?)
            }
            0xc7 => {
                let n = self.len8(at)?;
                self.ext(n, false, at)?
            }
            0xc8 => {
                let n = self.len16(at)?;
                self.ext(n, false, at)?
            }
            0xc9 => {
                let n = self.len32(at)?;
                self.ext(n, false, at)?
            }
            0xca => Mp::Float(f64::from(f32::from_be_bytes(self.be(at)?))),
            0xcb => Mp::Float(f64::from_be_bytes(self.be(at)?)),
            0xcc => Mp::UInt(u64::from(self.be::<1>(at)?[0])),
            0xcd => Mp::UInt(u64::from(u16::from_be_bytes(self.be(at)?))),
            0xce => Mp::UInt(u64::from(u32::from_be_bytes(self.be(at)?))),
            0xcf => Mp::UInt(u64::from_be_bytes(self.be(at)?)),
            0xd0 => Self::int(i64::from(i8::from_be_bytes(self.be(at)?))),
            0xd1 => Self::int(i64::from(i16::from_be_bytes(self.be(at)?))),
            0xd2 => Self::int(i64::from(i32::from_be_bytes(self.be(at)?))),
            0xd3 => Self::int(i64::from_be_bytes(self.be(at)?)),
            0xd4 => self.ext(1, true, at)?,
            0xd5 => self.ext(2, true, at)?,
            0xd6 => self.ext(4, true, at)?,
            0xd7 => self.ext(8, true, at)?,
            0xd8 => {
                self.saw_php_markers = true;
                match self.dialect {
                    Dialect::Standard => self.ext(16, true, at)?,
                    Dialect::Php => {
                        let n = self.len16(at)?;
                        Mp::Str(self.take(n, at)?)
                    }
                }
            }
            0xd9 => {
                self.saw_php_markers = true;
                let raw32 = self.dialect == Dialect::Php && self.buf.get(self.pos).is_some_and(|b| *b < 32);
                let n = if raw32 { self.len32(at)? } else { self.len8(at)? };
                Mp::Str(self.take(n, at)?)
            }
            0xda => {
                let n = self.len16(at)?;
                Mp::Str(self.take(n, at)?)
            }
            0xdb => {
                let n = self.len32(at)?;
                Mp::Str(self.take(n, at)?)
            }
            0xdc => {
                let n = self.len16(at)?;
                self.array(n, depth, at)?
            }
            0xdd => {
                let n = self.len32(at)?;
                self.array(n, depth, at)?
            }
            0xde => {
                let n = self.len16(at)?;
                self.map(n, depth, at)?
            }
            0xdf => {
                let n = self.len32(at)?;
                self.map(n, depth, at)?
            }
            0xe0..=0xff => Mp::Int(i64::from(i8::from_be_bytes([marker]))),
        })
    }

    /// Checks that `n` values of at least `per` bytes each can still follow, before allocating.
    fn fits(&self, n: usize, per: usize, at: usize) -> Result<(), MsgpackError> {
        match n.checked_mul(per) {
            Some(need) if need <= self.buf.len() - self.pos => Ok(()),
            _ => Err(MsgpackError::Truncated { at }),
        }
    }

    fn array(&mut self, n: usize, depth: usize, at: usize) -> Result<Mp<'a>, MsgpackError> {
        self.fits(n, 1, at)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Mp::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize, at: usize) -> Result<Mp<'a>, MsgpackError> {
        self.fits(n, 2, at)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            entries.push((k, v));
        }
        Ok(Mp::Map(entries))
    }
}

/// Fuzzing oracle: whatever `rmpv` reads as exactly one msgpack value, the standard reader reads
/// too (unless it is nested deeper than [`MAX_DEPTH`] or uses the reserved marker 0xc1), with the
/// same value. Panics otherwise.
#[doc(hidden)]
pub(crate) fn check_against_rmpv(payload: &[u8]) {
    let mut rest = payload;
    let Ok(expected) = rmpv::decode::read_value(&mut rest) else {
        return;
    };
    if !rest.is_empty() {
        return;
    }
    match Reader::read_all(payload, Dialect::Standard) {
        Ok((value, _)) => assert!(same_value(&value, &expected), "{value:?} != {expected:?}"),
        // rmpv reads the never-used marker 0xc1 as nil; notepack (and we) refuse it.
        Err(MsgpackError::TooDeep { .. } | MsgpackError::Reserved { .. }) => {}
        Err(err) => panic!("rmpv reads {expected:?} but we fail: {err}"),
    }
}

fn same_value(ours: &Mp<'_>, theirs: &rmpv::Value) -> bool {
    use rmpv::Value as V;
    match (ours, theirs) {
        (Mp::Nil, V::Nil) => true,
        (Mp::Bool(a), V::Boolean(b)) => a == b,
        (Mp::UInt(a), V::Integer(b)) => b.as_u64() == Some(*a),
        (Mp::Int(a), V::Integer(b)) => *a < 0 && b.as_i64() == Some(*a),
        (Mp::Float(a), V::F32(b)) => a.to_bits() == f64::from(*b).to_bits(),
        (Mp::Float(a), V::F64(b)) => a.to_bits() == b.to_bits(),
        (Mp::Str(a), V::String(b)) => *a == b.as_bytes(),
        (Mp::Bin(a), V::Binary(b)) => a == b,
        (Mp::Ext(t, a, _), V::Ext(u, b)) => t == u && a == b,
        (Mp::Array(a), V::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y)),
        (Mp::Map(a), V::Map(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|((k1, v1), (k2, v2))| same_value(k1, k2) && same_value(v1, v2))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_borrow_from_the_message() {
        let buf = b"\x93\xc4\x02ab\xa1c\x81\xa1k\xd4\x00\x00";
        let value = read_message(buf).expect("reads");
        let Mp::Array(items) = &value else { panic!("{value:?}") };
        assert_eq!(items[0], Mp::Bin(b"ab"));
        assert_eq!(items[1], Mp::Str(b"c"));
        assert_eq!(items[2], Mp::Map(vec![(Mp::Str(b"k"), Mp::Ext(0, &[0], true))]));
        let Mp::Bin(bin) = items[0] else { unreachable!() };
        assert!(std::ptr::eq(bin.as_ptr(), buf[3..].as_ptr()), "binary is a slice of the message");
    }

    #[test]
    fn malformed_input_says_where() {
        assert_eq!(read_message(b""), Err(MsgpackError::Truncated { at: 0 }));
        assert_eq!(read_message(b"\x91\xa3ab"), Err(MsgpackError::Truncated { at: 1 }));
        assert_eq!(read_message(b"\x92\xc0\xc1"), Err(MsgpackError::Reserved { at: 2 }));
        assert_eq!(read_message(b"\xc0\x00\x00"), Err(MsgpackError::TrailingBytes { count: 2 }));
        // A length larger than what is left fails before anything is allocated.
        assert_eq!(read_message(b"\xdd\xff\xff\xff\xff\xc0"), Err(MsgpackError::Truncated { at: 0 }));
        let nested = |arrays: usize| [vec![0x91; arrays], vec![0xc0]].concat();
        assert!(read_message(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(read_message(&nested(MAX_DEPTH + 1)), Err(MsgpackError::TooDeep { at: MAX_DEPTH + 1 }));
    }

    #[test]
    fn agrees_with_rmpv() {
        for bytes in [&b"\x93\x01\xa1x\xc0"[..], b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00", b"\xd3\x80\0\0\0\0\0\0\0"] {
            check_against_rmpv(bytes);
        }
    }
}
