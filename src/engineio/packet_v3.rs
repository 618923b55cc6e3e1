//! Engine.IO protocol 3: how socket.io 1.x / 2.x clients (`EIO=3`) frame packets.
//!
//! Pure, bytes in and values out. It shares [`Packet`] and [`Frame`] with protocol 4
//! ([`super::packet`]): a session's queue holds the same frames whichever protocol its client
//! speaks (a broadcast is still encoded once for everyone), and only the transport's last step
//! frames them for the wire. A text packet is `<type><data>` in both protocols; protocol 3
//! differs in three ways:
//!
//! - A binary message keeps its packet type. Over WebSocket it is a binary frame whose first byte
//!   is the type (`4`, message) followed by the data; as text (a client that asked for base64
//!   with `b64=1`, or inside a text payload) it is `b4<base64>`.
//! - A long-polling payload prefixes each packet with its length. As text:
//!   `<length>:<packet>`, the length counted in UTF-16 code units (a JavaScript string's
//!   `length`), e.g. `2:40` or `3:2é`. As binary (what the server sends when the payload holds
//!   binary data and the client takes binary, and what such a client may POST): for each packet
//!   a marker byte (`0` text, `1` binary), the length's decimal digits as one byte each (values
//!   0 to 9), `0xff`, then the packet: a text packet's UTF-8 bytes, or the type byte and the
//!   data; these lengths count bytes.
//! - A zero-length record (`0:`) is skipped; an empty body is an error.

use bytes::{BufMut, Bytes, BytesMut};

use super::packet::{self, DecodeError, Frame, Packet, put_base64};

/// The message type as a byte: first byte of a protocol 3 binary frame.
const MESSAGE: u8 = 4;
/// Marker of a text packet in a binary payload.
const TEXT_MARKER: u8 = 0;
/// Marker of a binary packet in a binary payload.
const BINARY_MARKER: u8 = 1;
/// Ends a packet's length digits in a binary payload.
const LENGTH_END: u8 = 0xff;
/// Most digits a length may have (far more than any body the server reads).
const MAX_LENGTH_DIGITS: usize = 10;

/// How a long-polling payload is framed; the HTTP response's content type follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayloadKind {
    /// UTF-8 text (`text/plain; charset=UTF-8`).
    Text,
    /// Binary framing (`application/octet-stream`).
    Binary,
}

/// Decodes one text packet: `<type><data>`, or `b4<base64>` for binary data.
pub(crate) fn decode_text(bytes: Bytes) -> Result<Packet, DecodeError> {
    match bytes.split_first() {
        Some((b'b', typed)) => match typed.split_first() {
            Some((b'4', encoded)) => packet::decode_base64(encoded).map(Packet::Binary),
            Some(_) => Err(DecodeError::BinaryNotMessage),
            None => Err(DecodeError::Empty),
        },
        _ => packet::decode_text(bytes),
    }
}

/// Decodes a binary packet: the type byte, then the data (a WebSocket binary frame, or a
/// binary record of a binary payload). Only messages carry binary data.
pub(crate) fn decode_binary(bytes: Bytes) -> Result<Packet, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&MESSAGE) => Ok(Packet::Binary(bytes.slice(1..))),
        Some(_) => Err(DecodeError::BinaryNotMessage),
    }
}

/// Decodes a long-polling payload, text or binary framing (told apart by the first byte: a
/// text payload starts with a length digit, a binary one with its `0`/`1` marker).
///
/// Every record must decode; the first bad one fails the whole payload, as upstream closes the
/// session on any parse error.
pub(crate) fn decode_payload(body: Bytes) -> Result<Vec<Packet>, DecodeError> {
    match body.first() {
        None => Err(DecodeError::Empty),
        Some(&(TEXT_MARKER | BINARY_MARKER)) => decode_binary_payload(&body),
        Some(_) => decode_text_payload(&body),
    }
}

fn decode_text_payload(body: &Bytes) -> Result<Vec<Packet>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::Utf8)?;
    let mut packets = Vec::new();
    let mut pos = 0;
    while let Some(rest) = text.get(pos..).filter(|r| !r.is_empty()) {
        let colon = rest.find(':').ok_or(DecodeError::Length)?;
        let units = parse_length(rest.bytes().take(colon).map(|b| b.wrapping_sub(b'0')), colon)?;
        let start = pos + colon + 1;
        let end = start + utf16_prefix(text.get(start..).unwrap_or_default(), units)?;
        if end > start {
            packets.push(decode_text(body.slice(start..end))?);
        }
        pos = end;
    }
    Ok(packets)
}

fn decode_binary_payload(body: &Bytes) -> Result<Vec<Packet>, DecodeError> {
    let mut packets = Vec::new();
    let mut pos = 0;
    while let Some((&marker, rest)) = body.get(pos..).and_then(<[u8]>::split_first) {
        let digits = memchr::memchr(LENGTH_END, rest).ok_or(DecodeError::Length)?;
        let len = parse_length(rest.iter().take(digits).copied(), digits)?;
        let start = pos + 1 + digits + 1;
        let end = start.checked_add(len).filter(|&end| end <= body.len()).ok_or(DecodeError::Length)?;
        let record = body.slice(start..end);
        packets.push(match marker {
            TEXT_MARKER => decode_text(record)?,
            BINARY_MARKER => decode_binary(record)?,
            _ => return Err(DecodeError::Length),
        });
        pos = end;
    }
    Ok(packets)
}

/// A length from its `count` decimal digit values (each must be 0 to 9).
fn parse_length(digits: impl Iterator<Item = u8>, count: usize) -> Result<usize, DecodeError> {
    if count == 0 || count > MAX_LENGTH_DIGITS {
        return Err(DecodeError::Length);
    }
    digits.into_iter().try_fold(0usize, |n, d| {
        if d > 9 {
            return Err(DecodeError::Length);
        }
        n.checked_mul(10).and_then(|n| n.checked_add(usize::from(d))).ok_or(DecodeError::Length)
    })
}

/// The byte length of the start of `s` that is exactly `units` UTF-16 code units long; an error
/// when `s` is shorter or the boundary would split a character.
fn utf16_prefix(s: &str, units: usize) -> Result<usize, DecodeError> {
    // An ASCII run is as many units as bytes.
    let ascii = s.bytes().take(units).take_while(u8::is_ascii).count();
    if ascii == units {
        return Ok(units);
    }
    let mut count = ascii;
    for (i, c) in s.get(ascii..).unwrap_or_default().char_indices() {
        if count == units {
            return Ok(ascii + i);
        }
        count += c.len_utf16();
    }
    if count == units { Ok(s.len()) } else { Err(DecodeError::Length) }
}

/// The length of a text frame in UTF-16 code units (its JavaScript `length`).
fn utf16_len(text: &[u8]) -> usize {
    if text.is_ascii() {
        return text.len();
    }
    // Frames are built from strings; were one not UTF-8, its byte count is the best guess.
    std::str::from_utf8(text).map_or(text.len(), |s| s.chars().map(char::len_utf16).sum())
}

/// Encodes frames as one long-polling payload: binary framing when any frame is binary and
/// the client takes binary (`binary`), text framing (binary data as `b4<base64>`) otherwise.
pub(crate) fn encode_payload(frames: &[Frame], binary: bool, out: &mut BytesMut) -> PayloadKind {
    if binary && frames.iter().any(|f| matches!(f, Frame::Binary(_))) {
        for frame in frames {
            match frame {
                Frame::Text(text) => {
                    out.put_u8(TEXT_MARKER);
                    put_digit_bytes(text.len(), out);
                    out.put_u8(LENGTH_END);
                    out.put_slice(text);
                }
                Frame::Binary(raw) => {
                    out.put_u8(BINARY_MARKER);
                    put_digit_bytes(raw.len() + 1, out);
                    out.put_u8(LENGTH_END);
                    out.put_u8(MESSAGE);
                    out.put_slice(raw);
                }
            }
        }
        return PayloadKind::Binary;
    }
    for frame in frames {
        match frame {
            Frame::Text(text) => {
                put_decimal(utf16_len(text), out);
                out.put_u8(b':');
                out.put_slice(text);
            }
            Frame::Binary(raw) => {
                put_decimal(2 + base64::encoded_len(raw.len(), true).unwrap_or(0), out);
                out.put_slice(b":b4");
                put_base64(raw, out);
            }
        }
    }
    PayloadKind::Text
}

/// A binary message as a WebSocket binary frame's payload: the type byte, then the data.
pub(crate) fn ws_binary(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + raw.len());
    out.push(MESSAGE);
    out.extend_from_slice(raw);
    out
}

/// A binary message as a WebSocket text frame's payload, for a client that asked for base64:
/// `b4<base64>`.
pub(crate) fn ws_base64(raw: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(2 + base64::encoded_len(raw.len(), true).unwrap_or(0));
    out.put_slice(b"b4");
    put_base64(raw, &mut out);
    Vec::from(out.freeze())
}

/// Writes `n` in decimal, as ASCII digits.
fn put_decimal(n: usize, out: &mut BytesMut) {
    out.put_slice(itoa_buf(n).digits());
}

/// Writes `n` in decimal, each digit as a byte of value 0 to 9 (the binary payload's length).
fn put_digit_bytes(n: usize, out: &mut BytesMut) {
    for d in itoa_buf(n).digits() {
        out.put_u8(d - b'0');
    }
}

/// The decimal digits of a number, on the stack.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn digits(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }
}

fn itoa_buf(mut n: usize) -> Digits {
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    loop {
        start -= 1;
        // `n % 10 < 10`, so the cast cannot truncate.
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_payload(frames: &[Frame]) -> Bytes {
        let mut out = BytesMut::new();
        assert_eq!(encode_payload(frames, false, &mut out), PayloadKind::Text);
        out.freeze()
    }

    fn binary_payload(frames: &[Frame]) -> Bytes {
        let mut out = BytesMut::new();
        assert_eq!(encode_payload(frames, true, &mut out), PayloadKind::Binary);
        out.freeze()
    }

    fn msg(text: &str) -> Packet {
        Packet::Message(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn text_packets_are_as_in_protocol_4_and_binary_keeps_its_type() {
        assert_eq!(decode_text(Bytes::from_static(b"2")), Ok(Packet::Ping(Bytes::new())));
        assert_eq!(decode_text(Bytes::from_static(b"2probe")), Ok(Packet::Ping(Bytes::from_static(b"probe"))));
        assert_eq!(decode_text(Bytes::from_static(b"42[\"a\"]")), Ok(msg("2[\"a\"]")));
        assert_eq!(decode_text(Bytes::from_static(b"b4AQID")), Ok(Packet::Binary(Bytes::from_static(&[1, 2, 3]))));
        assert_eq!(decode_text(Bytes::from_static(b"b4")), Ok(Packet::Binary(Bytes::new())));
        // Protocol 4's `b<base64>` (no type) is not protocol 3.
        assert_eq!(decode_text(Bytes::from_static(b"bAQID")), Err(DecodeError::BinaryNotMessage));
        assert_eq!(decode_text(Bytes::from_static(b"b2AQID")), Err(DecodeError::BinaryNotMessage));
        assert_eq!(decode_text(Bytes::from_static(b"b")), Err(DecodeError::Empty));
        assert_eq!(decode_text(Bytes::from_static(b"b4!!")), Err(DecodeError::Base64));
        assert_eq!(decode_binary(Bytes::from_static(&[4, 1, 2])), Ok(Packet::Binary(Bytes::from_static(&[1, 2]))));
        assert_eq!(decode_binary(Bytes::from_static(&[4])), Ok(Packet::Binary(Bytes::new())));
        assert_eq!(decode_binary(Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(decode_binary(Bytes::from_static(&[2, 1])), Err(DecodeError::BinaryNotMessage));
    }

    #[test]
    fn text_payload_lengths_count_utf16_units() {
        // "é" is 1 unit (2 bytes), "😀" 2 units (4 bytes).
        let frames = [
            Frame::message("é".as_bytes()),
            Frame::message("😀!".as_bytes()),
            Frame::control(super::super::packet::PacketType::Pong),
        ];
        let wire = text_payload(&frames);
        assert_eq!(&wire[..], "2:4é4:4😀!1:3".as_bytes());
        assert_eq!(decode_payload(wire), Ok(vec![msg("é"), msg("😀!"), Packet::Pong(Bytes::new())]));
    }

    #[test]
    fn text_payload_carries_binary_as_typed_base64() {
        let frames = [
            Frame::message(b"51-[\"x\",{\"_placeholder\":true,\"num\":0}]"),
            Frame::Binary(Bytes::from_static(&[0, 1, 2, 255])),
        ];
        let wire = text_payload(&frames);
        assert_eq!(&wire[..], &b"39:451-[\"x\",{\"_placeholder\":true,\"num\":0}]10:b4AAEC/w=="[..]);
        let decoded = decode_payload(wire).expect("decodes");
        assert_eq!(decoded[1], Packet::Binary(Bytes::from_static(&[0, 1, 2, 255])));
    }

    #[test]
    fn binary_payload_framing() {
        let frames = [Frame::message(b"hi"), Frame::Binary(Bytes::from_static(&[9, 8, 7]))];
        let wire = binary_payload(&frames);
        // Text "4hi": marker 0, length 3, 0xff; binary: marker 1, length 4 (type + 3), 0xff, 4, data.
        assert_eq!(&wire[..], &[0, 3, 0xff, b'4', b'h', b'i', 1, 4, 0xff, 4, 9, 8, 7][..]);
        assert_eq!(decode_payload(wire), Ok(vec![msg("hi"), Packet::Binary(Bytes::from_static(&[9, 8, 7]))]));
        // Lengths of two digits and more; a text record's length counts UTF-8 bytes.
        let long = "é".repeat(30);
        let frames = [Frame::message(long.as_bytes()), Frame::Binary(Bytes::from(vec![1u8; 300]))];
        let wire = binary_payload(&frames);
        assert_eq!(&wire[..4], &[0, 6, 1, 0xff]);
        assert_eq!(decode_payload(wire), Ok(vec![msg(&long), Packet::Binary(Bytes::from(vec![1u8; 300]))]));
    }

    #[test]
    fn binary_framing_only_when_there_is_binary_and_the_client_takes_it() {
        let mut out = BytesMut::new();
        assert_eq!(encode_payload(&[Frame::message(b"x")], true, &mut out), PayloadKind::Text);
        assert_eq!(&out[..], b"2:4x");
        let mut out = BytesMut::new();
        assert_eq!(encode_payload(&[Frame::Binary(Bytes::from_static(b"x"))], false, &mut out), PayloadKind::Text);
        assert_eq!(&out[..], b"6:b4eA==");
    }

    #[test]
    fn empty_records_are_skipped_and_bad_framing_refused() {
        assert_eq!(decode_payload(Bytes::from_static(b"0:")), Ok(vec![]));
        assert_eq!(decode_payload(Bytes::from_static(b"0:1:6")), Ok(vec![Packet::Noop]));
        for bad in [
            &b""[..],
            b"1",
            b"1:",
            b":4x",
            b"a:4x",
            b"2:4x1",
            b"3:4x",
            b"-1:4",
            b"2:4x:",
            b"99999999999:4",
            b"1:7",
            b"2:b5",
            "1:😀".as_bytes(),
            // Two units end inside the emoji's surrogate pair.
            "2:4😀".as_bytes(),
            &[0, 5, 0xff, b'4'],
            &[0, 1],
            &[1, 2, 0xff, 3, 0],
            &[1, 0, 0xff],
            &[0, 10, 0xff, b'4'],
            &[0, 1, 0xff, 0xff],
            &[2, 1, 0xff, b'6'],
            &[0, 0, 0xff],
        ] {
            assert!(decode_payload(Bytes::copy_from_slice(bad)).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(decode_payload(Bytes::from_static(b"2:4\xff")), Err(DecodeError::Utf8));
    }

    #[test]
    fn websocket_binary_forms() {
        assert_eq!(ws_binary(&[1, 2]), vec![4, 1, 2]);
        assert_eq!(&ws_base64(&[1, 2, 3])[..], b"b4AQID");
        assert_eq!(decode_binary(Bytes::from(ws_binary(&[7]))), Ok(Packet::Binary(Bytes::from_static(&[7]))));
        assert_eq!(decode_text(Bytes::from(ws_base64(&[7]))), Ok(Packet::Binary(Bytes::from_static(&[7]))));
    }

    #[test]
    fn round_trip_generated() {
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        const ALPHABET: [char; 6] = ['a', 'é', '😀', ':', '\u{1e}', '中'];
        for round in 0..300 {
            let n = (next() % 5 + 1) as usize;
            let mut frames = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..n {
                let len = (next() % 40) as usize;
                if next() % 2 == 0 {
                    let text: String = (0..len).map(|_| ALPHABET[(next() % 6) as usize]).collect();
                    frames.push(Frame::message(text.as_bytes()));
                    expected.push(msg(&text));
                } else {
                    let data: Vec<u8> = (0..len).map(|_| (next() % 256) as u8).collect();
                    frames.push(Frame::Binary(Bytes::from(data.clone())));
                    expected.push(Packet::Binary(Bytes::from(data)));
                }
            }
            let binary = round % 2 == 0;
            let mut out = BytesMut::new();
            encode_payload(&frames, binary, &mut out);
            assert_eq!(decode_payload(out.freeze()), Ok(expected), "round {round}");
        }
    }
}
