//! Engine.IO v4 packets and the long-polling payload codec.
//!
//! Pure: bytes in, values out. Outbound packets are kept as [`Frame`]s, the
//! exact bytes of one Engine.IO packet, so that a broadcast is encoded once
//! and the same buffer is written to every recipient whatever its transport.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};

/// The record separator between packets of a long-polling payload.
pub(crate) const SEPARATOR: u8 = 0x1e;

/// Engine.IO packet types, as their wire digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PacketType {
    Open = 0,
    Close = 1,
    Ping = 2,
    Pong = 3,
    Message = 4,
    Upgrade = 5,
    Noop = 6,
}

impl PacketType {
    fn from_digit(b: u8) -> Option<Self> {
        Some(match b {
            b'0' => Self::Open,
            b'1' => Self::Close,
            b'2' => Self::Ping,
            b'3' => Self::Pong,
            b'4' => Self::Message,
            b'5' => Self::Upgrade,
            b'6' => Self::Noop,
            _ => return None,
        })
    }

    fn digit(self) -> u8 {
        b'0' + self as u8
    }
}

/// A decoded inbound packet. Text data is kept as bytes that are known to be
/// valid UTF-8 (the transport checked it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Packet {
    /// `0…`: only servers send it; a client sending one is a parse error upstream.
    Open,
    /// `1`: the client closes the session.
    Close,
    /// `2<data>`: a ping (`2probe` during an upgrade).
    Ping(Bytes),
    /// `3<data>`: a pong (`3probe` answers a probe).
    Pong(Bytes),
    /// `4<text>`: a text message.
    Message(Bytes),
    /// A binary message (`b<base64>` in polling, a binary frame over WebSocket).
    Binary(Bytes),
    /// `5`: the client completes an upgrade.
    Upgrade,
    /// `6`: no operation.
    Noop,
}

/// Why bytes could not be decoded into packets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// A packet with no bytes at all.
    #[error("empty packet")]
    Empty,
    /// The first byte is not a packet type digit.
    #[error("unknown packet type")]
    UnknownType,
    /// A `b…` packet whose base64 does not decode.
    #[error("invalid base64 in binary packet")]
    Base64,
    /// Text that is not UTF-8.
    #[error("text packet is not UTF-8")]
    Utf8,
    /// A protocol 3 payload whose length prefixes do not match its packets.
    #[error("bad packet length in payload")]
    Length,
    /// Protocol 3 binary data in a packet other than a message.
    #[error("binary data in a packet that is not a message")]
    BinaryNotMessage,
}

/// Decodes one text packet (`<type><data>`), as carried by a WebSocket text
/// frame or one record of a polling payload.
pub(crate) fn decode_text(bytes: Bytes) -> Result<Packet, DecodeError> {
    let Some(&first) = bytes.first() else {
        return Err(DecodeError::Empty);
    };
    if first == b'b' {
        return decode_base64(&bytes[1..]).map(Packet::Binary);
    }
    if std::str::from_utf8(&bytes).is_err() {
        return Err(DecodeError::Utf8);
    }
    let data = bytes.slice(1..);
    Ok(match PacketType::from_digit(first).ok_or(DecodeError::UnknownType)? {
        PacketType::Open => Packet::Open,
        PacketType::Close => Packet::Close,
        PacketType::Ping => Packet::Ping(data),
        PacketType::Pong => Packet::Pong(data),
        PacketType::Message => Packet::Message(data),
        PacketType::Upgrade => Packet::Upgrade,
        PacketType::Noop => Packet::Noop,
    })
}

/// Decodes the standard base64 of a binary packet.
pub(super) fn decode_base64(encoded: &[u8]) -> Result<Bytes, DecodeError> {
    BASE64.decode(encoded).map(Bytes::from).map_err(|_| DecodeError::Base64)
}

/// Decodes a long-polling payload: packets separated by `\x1e`.
///
/// Every record must decode; the first bad one fails the whole payload, as
/// upstream closes the session on any parse error.
pub(crate) fn decode_payload(body: Bytes) -> Result<Vec<Packet>, DecodeError> {
    let mut packets = Vec::new();
    let mut start = 0;
    for end in memchr::memchr_iter(SEPARATOR, &body).chain(std::iter::once(body.len())) {
        packets.push(decode_text(body.slice(start..end))?);
        start = end + 1;
    }
    Ok(packets)
}

/// One outbound Engine.IO packet, already encoded. Cloning is cheap (shared bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// The full text form `<type><data>`, e.g. `42["ev"]` or `2`.
    Text(Bytes),
    /// A binary message (raw bytes).
    Binary(Bytes),
}

impl Frame {
    /// A control packet with no data.
    pub(crate) fn control(kind: PacketType) -> Self {
        Self::Text(Bytes::from_static(match kind {
            PacketType::Open => b"0",
            PacketType::Close => b"1",
            PacketType::Ping => b"2",
            PacketType::Pong => b"3",
            PacketType::Message => b"4",
            PacketType::Upgrade => b"5",
            PacketType::Noop => b"6",
        }))
    }

    /// A packet of `kind` carrying `data`.
    pub(crate) fn with_data(kind: PacketType, data: &[u8]) -> Self {
        let mut buf = BytesMut::with_capacity(1 + data.len());
        buf.put_u8(kind.digit());
        buf.put_slice(data);
        Self::Text(buf.freeze())
    }

    /// A text message (`4<text>`).
    pub(crate) fn message(text: &[u8]) -> Self {
        Self::with_data(PacketType::Message, text)
    }

    /// Bytes this frame occupies in a send queue.
    pub(crate) fn len(&self) -> usize {
        self.bytes().len()
    }

    /// The frame's bytes (as a WebSocket message's payload).
    pub(crate) fn bytes(&self) -> &Bytes {
        match self {
            Self::Text(b) | Self::Binary(b) => b,
        }
    }
}

/// Encodes frames as one long-polling payload.
pub(crate) fn encode_payload<'a>(frames: impl IntoIterator<Item = &'a Frame>, out: &mut BytesMut) {
    for (i, frame) in frames.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(SEPARATOR);
        }
        match frame {
            Frame::Text(text) => out.put_slice(text),
            Frame::Binary(raw) => {
                out.put_u8(b'b');
                put_base64(raw, out);
            }
        }
    }
}

/// Appends `raw` as standard base64 (with padding).
pub(super) fn put_base64(raw: &[u8], out: &mut BytesMut) {
    let start = out.len();
    let encoded_len = base64::encoded_len(raw.len(), true).unwrap_or(0);
    out.resize(start + encoded_len, 0);
    let written = BASE64.encode_slice(raw, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frames: &[Frame]) -> Bytes {
        let mut out = BytesMut::new();
        encode_payload(frames, &mut out);
        out.freeze()
    }

    #[test]
    fn decodes_each_type() {
        let cases: [(&[u8], Packet); 8] = [
            (b"0", Packet::Open),
            (b"1", Packet::Close),
            (b"2probe", Packet::Ping(Bytes::from_static(b"probe"))),
            (b"3", Packet::Pong(Bytes::new())),
            (b"4hello", Packet::Message(Bytes::from_static(b"hello"))),
            (b"5", Packet::Upgrade),
            (b"6", Packet::Noop),
            (b"bAQID", Packet::Binary(Bytes::from_static(&[1, 2, 3]))),
        ];
        for (wire, expected) in cases {
            assert_eq!(decode_text(Bytes::from_static(wire)), Ok(expected));
        }
    }

    #[test]
    fn rejects_bad_packets() {
        assert_eq!(decode_text(Bytes::new()), Err(DecodeError::Empty));
        assert_eq!(decode_text(Bytes::from_static(b"7")), Err(DecodeError::UnknownType));
        assert_eq!(decode_text(Bytes::from_static(b"x")), Err(DecodeError::UnknownType));
        assert_eq!(decode_text(Bytes::from_static(b"b!!")), Err(DecodeError::Base64));
        assert_eq!(decode_text(Bytes::from_static(b"4\xff")), Err(DecodeError::Utf8));
    }

    #[test]
    fn payload_round_trip_mixed() {
        let frames = [
            Frame::message(b"hello"),
            Frame::Binary(Bytes::from_static(&[0, 1, 2, 255])),
            Frame::control(PacketType::Ping),
            Frame::message("é\u{1e}".trim_end_matches('\u{1e}').as_bytes()),
        ];
        let wire = payload(&frames);
        assert_eq!(&wire[..], "4hello\x1ebAAEC/w==\x1e2\x1e4é".as_bytes());
        let decoded = decode_payload(wire).expect("decodes");
        assert_eq!(
            decoded,
            vec![
                Packet::Message(Bytes::from_static(b"hello")),
                Packet::Binary(Bytes::from_static(&[0, 1, 2, 255])),
                Packet::Ping(Bytes::new()),
                Packet::Message(Bytes::from("é")),
            ]
        );
    }

    #[test]
    fn payload_with_empty_record_is_an_error() {
        assert_eq!(decode_payload(Bytes::from_static(b"4a\x1e")), Err(DecodeError::Empty));
        assert_eq!(decode_payload(Bytes::new()), Err(DecodeError::Empty));
    }

    #[test]
    fn round_trip_generated() {
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..200 {
            let n = (next() % 5 + 1) as usize;
            let mut frames = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..n {
                let len = (next() % 40) as usize;
                let data: Vec<u8> = (0..len).map(|_| (next() % 256) as u8).collect();
                if next() % 2 == 0 {
                    let text: String = data.iter().map(|b| char::from(b'a' + b % 26)).collect();
                    frames.push(Frame::message(text.as_bytes()));
                    expected.push(Packet::Message(Bytes::from(text)));
                } else {
                    frames.push(Frame::Binary(Bytes::from(data.clone())));
                    expected.push(Packet::Binary(Bytes::from(data)));
                }
            }
            assert_eq!(decode_payload(payload(&frames)).expect("decodes"), expected);
        }
    }
}
