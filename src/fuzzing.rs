//! Entry points for the `cargo fuzz` targets in `fuzz/` (run them with `fuzz/run.sh`).
//!
//! Hidden and not part of the supported API: they exist because the codecs are crate-private.
//! Each function takes arbitrary bytes, must never panic on them, and asserts the codec's
//! invariants (a panic here is a finding).

use bytes::Bytes;

use crate::socketio::packet::{self, BinaryCollector, DecodeError, Limits, MAX_NAMESPACE_LEN, PacketKind};

/// Socket.IO packet codec. Input: the packet text, then optionally a NUL byte followed by
/// binary attachments separated by NUL bytes.
///
/// Checks that a decoded packet re-encodes to text that decodes to the same packet, that the
/// encoding is canonical (encoding twice gives the same bytes), that [`packet::encode_event`]
/// agrees with [`packet::encode`], and that a [`BinaryCollector`] completes exactly on the last
/// declared attachment.
#[doc(hidden)]
pub fn socketio_packet(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let limits = Limits::default();

    let Ok(packet) = packet::decode(&text, &limits) else {
        return;
    };
    assert!(packet.nsp.starts_with('/') && !packet.nsp.contains(','));
    assert!(packet.nsp.len() <= MAX_NAMESPACE_LEN);
    assert!(packet.attachments <= limits.max_attachments);
    assert!(packet.kind.is_binary() || packet.attachments == 0);

    let mut encoded = Vec::new();
    packet.encode(&mut encoded);
    let Ok(encoded_text) = std::str::from_utf8(&encoded) else {
        panic!("encoder produced invalid UTF-8: {encoded:?}");
    };
    match packet::decode(encoded_text, &limits) {
        Ok(again) => assert_eq!(again, packet, "re-decoding {encoded_text:?}"),
        Err(err) => panic!("re-decoding {encoded_text:?} failed: {err}"),
    }
    let mut twice = Vec::new();
    packet::encode(packet.kind, &packet.nsp, packet.id, packet.data.as_ref(), packet.attachments, &mut twice);
    assert_eq!(twice, encoded, "encoding is not canonical");

    let event_kind = match packet.attachments {
        0 => PacketKind::Event,
        _ => PacketKind::BinaryEvent,
    };
    if packet.kind == event_kind
        && let Some(serde_json::Value::Array(items)) = &packet.data
        && let Some((serde_json::Value::String(name), args)) = items.split_first()
    {
        let mut fast = Vec::new();
        packet::encode_event(&packet.nsp, packet.id, name, args, packet.attachments, &mut fast);
        assert_eq!(fast, encoded, "encode_event disagrees with encode");
    }

    if packet.attachments == 0 {
        return;
    }
    let expected = packet.attachments;
    let mut collector = BinaryCollector::new(packet.clone());
    for i in 0..expected {
        assert_eq!(collector.remaining(), expected - i);
        let chunk = Bytes::copy_from_slice(parts.next().unwrap_or_default());
        match collector.push(chunk) {
            Ok(None) => assert!(i + 1 < expected, "collector did not complete"),
            Ok(Some((done, buffers))) => {
                assert_eq!(i + 1, expected, "collector completed early");
                assert_eq!(done, packet);
                assert_eq!(buffers.len(), expected);
            }
            Err(err) => panic!("collector refused attachment {i}: {err}"),
        }
    }
    assert_eq!(collector.remaining(), 0);
    assert!(matches!(collector.push(Bytes::new()), Err(DecodeError::UnexpectedAttachment)));
}

/// Engine.IO long-polling payload codec: decoding never panics, and a decoded payload whose
/// packets are messages re-encodes to bytes that decode to the same packets.
#[doc(hidden)]
pub fn engineio_payload(data: &[u8]) {
    use crate::engineio::packet::{Frame, Packet, decode_payload, encode_payload};

    let Ok(packets) = decode_payload(Bytes::copy_from_slice(data)) else {
        return;
    };
    let frames: Vec<Frame> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::Message(text) => Some(Frame::message(text)),
            Packet::Binary(raw) => Some(Frame::Binary(raw.clone())),
            _ => None,
        })
        .collect();
    if frames.is_empty() {
        return;
    }
    let mut wire = bytes::BytesMut::new();
    encode_payload(&frames, &mut wire);
    let again = decode_payload(wire.freeze());
    let expected: Vec<Packet> =
        packets.into_iter().filter(|p| matches!(p, Packet::Message(_) | Packet::Binary(_))).collect();
    assert_eq!(again.ok(), Some(expected));
}
