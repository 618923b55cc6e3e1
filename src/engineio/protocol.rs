//! Which Engine.IO protocol a session speaks, and how its transports frame packets for it.
//!
//! A handshake asks for a revision with its `EIO` query parameter: `4` for socket.io 3.x / 4.x
//! clients, `3` for socket.io 1.x / 2.x ones (engine.io takes anything but `4` as 3). The
//! session keeps it for life ([`super::session::Session`] runs the heartbeat its way); the
//! transports decode what the client sends and frame what they write with [`Framing`], the
//! codecs being [`super::packet`] (4) and [`super::packet_v3`] (3).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::packet::{self, DecodeError, Frame, Packet};
use super::packet_v3::{self, PayloadKind};

/// The Engine.IO protocol revision of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Revision 3: socket.io 1.x / 2.x clients (`EIO=3`). The client sends the pings and the
    /// server answers them; payloads carry length prefixes.
    V3,
    /// Revision 4: socket.io 3.x / 4.x clients (`EIO=4`). The server sends the pings.
    V4,
}

impl Protocol {
    /// The revision a request asks for by its `EIO` query parameter: `4` is 4, anything else
    /// (a missing parameter included) is 3, as engine.io decides.
    pub(crate) fn of_query(query: &HashMap<String, String>) -> Self {
        match query.get("EIO").map(String::as_str) {
            Some("4") => Self::V4,
            _ => Self::V3,
        }
    }

    /// The revision number (3 or 4).
    pub const fn revision(self) -> u8 {
        match self {
            Self::V3 => 3,
            Self::V4 => 4,
        }
    }
}

/// How a session's transports frame its packets: the protocol and, for protocol 3, whether the
/// client takes binary data (it asks for base64 with a non-empty `b64` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Framing {
    pub(crate) protocol: Protocol,
    /// Protocol 3: binary data is sent as `b4<base64>` text, never as binary.
    pub(crate) base64: bool,
}

impl Framing {
    /// Protocol 4 (binary data is binary on WebSocket, base64 in polling payloads).
    #[cfg(test)]
    pub(crate) const V4: Self = Self { protocol: Protocol::V4, base64: false };

    /// The framing a handshake's query asks for.
    pub(crate) fn of_query(query: &HashMap<String, String>) -> Self {
        Self { protocol: Protocol::of_query(query), base64: query.get("b64").is_some_and(|v| !v.is_empty()) }
    }

    /// Decodes the body of a polling POST.
    pub(crate) fn decode_payload(self, body: Bytes) -> Result<Vec<Packet>, DecodeError> {
        match self.protocol {
            Protocol::V4 => packet::decode_payload(body),
            Protocol::V3 => packet_v3::decode_payload(body),
        }
    }

    /// Encodes the answer of a polling GET; its content type follows the returned kind.
    pub(crate) fn encode_payload(self, frames: &[Frame], out: &mut BytesMut) -> PayloadKind {
        match self.protocol {
            Protocol::V4 => {
                packet::encode_payload(frames, out);
                PayloadKind::Text
            }
            Protocol::V3 => packet_v3::encode_payload(frames, !self.base64, out),
        }
    }

    /// Decodes a WebSocket text message.
    pub(crate) fn decode_ws_text(self, text: Bytes) -> Result<Packet, DecodeError> {
        match self.protocol {
            Protocol::V4 => packet::decode_text(text),
            Protocol::V3 => packet_v3::decode_text(text),
        }
    }

    /// Decodes a WebSocket binary message.
    pub(crate) fn decode_ws_binary(self, data: Bytes) -> Result<Packet, DecodeError> {
        match self.protocol {
            Protocol::V4 => Ok(Packet::Binary(data)),
            Protocol::V3 => packet_v3::decode_binary(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn eio_4_is_protocol_4_and_anything_else_3() {
        assert_eq!(Protocol::of_query(&query(&[("EIO", "4")])), Protocol::V4);
        for eio in ["3", "2", "5", "", "four"] {
            assert_eq!(Protocol::of_query(&query(&[("EIO", eio)])), Protocol::V3, "EIO={eio}");
        }
        assert_eq!(Protocol::of_query(&query(&[])), Protocol::V3);
    }

    #[test]
    fn b64_asks_protocol_3_for_base64() {
        assert!(Framing::of_query(&query(&[("EIO", "3"), ("b64", "1")])).base64);
        assert!(!Framing::of_query(&query(&[("EIO", "3"), ("b64", "")])).base64);
        assert!(!Framing::of_query(&query(&[("EIO", "3")])).base64);
        let v3_base64 = Framing { protocol: Protocol::V3, base64: true };
        let mut out = BytesMut::new();
        assert_eq!(v3_base64.encode_payload(&[Frame::Binary(Bytes::from_static(&[1]))], &mut out), PayloadKind::Text);
        assert_eq!(&out[..], b"6:b4AQ==");
        let mut out = BytesMut::new();
        assert_eq!(Framing::V4.encode_payload(&[Frame::Binary(Bytes::from_static(&[1]))], &mut out), PayloadKind::Text);
        assert_eq!(&out[..], b"bAQ==");
    }
}
