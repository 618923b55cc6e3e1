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

/// Engine.IO long-polling payload codecs, protocol 4 (`\x1e`-separated) and protocol 3
/// (length-prefixed text or binary framing, [`crate::engineio::packet_v3`]), fed the same bytes:
/// decoding never panics, and a decoded payload's messages re-encode to bytes that decode to the
/// same packets (for protocol 3 in both framings; a WebSocket binary frame too).
#[doc(hidden)]
pub fn engineio_payload(data: &[u8]) {
    use crate::engineio::packet::{Packet, decode_payload, encode_payload};
    use crate::engineio::packet_v3;

    let input = Bytes::copy_from_slice(data);
    if let Ok(packets) = decode_payload(input.clone()) {
        let (frames, expected) = messages(packets);
        if !frames.is_empty() {
            let mut wire = bytes::BytesMut::new();
            encode_payload(&frames, &mut wire);
            assert_eq!(decode_payload(wire.freeze()).ok(), Some(expected));
        }
    }
    if let Ok(packets) = packet_v3::decode_payload(input.clone()) {
        let (frames, expected) = messages(packets);
        for binary in [false, true] {
            let mut wire = bytes::BytesMut::new();
            packet_v3::encode_payload(&frames, binary, &mut wire);
            if frames.is_empty() {
                continue;
            }
            let again = packet_v3::decode_payload(wire.freeze());
            assert_eq!(again.as_ref().ok(), Some(&expected), "protocol 3, binary framing: {binary}");
        }
    }
    if let Ok(Packet::Binary(raw)) = packet_v3::decode_binary(input) {
        let frame = packet_v3::ws_binary(&raw);
        assert_eq!(packet_v3::decode_binary(Bytes::from(frame)), Ok(Packet::Binary(raw)));
    }
}

/// The messages of decoded packets, as the frames that would send them and as the packets they
/// decode back to.
fn messages(
    packets: Vec<crate::engineio::packet::Packet>,
) -> (Vec<crate::engineio::packet::Frame>, Vec<crate::engineio::packet::Packet>) {
    use crate::engineio::packet::{Frame, Packet};

    packets
        .into_iter()
        .filter_map(|p| match &p {
            Packet::Message(text) => Some((Frame::message(text), p)),
            Packet::Binary(raw) => Some((Frame::Binary(raw.clone()), p)),
            _ => None,
        })
        .unzip()
}

/// Socket.IO emitter messages (the Redis ingress' msgpack broadcasts and JSON/msgpack requests).
/// Input: one selector byte choosing the channel, then the published payload.
///
/// Decoding must never panic. Checks that every placeholder in a decoded broadcast refers to an
/// attachment and every attachment is referred to, that the attachment bound holds, and
/// (differentially) that whatever `rmpv` reads as one whole msgpack value our reader reads too.
#[doc(hidden)]
pub fn emitter_payload(data: &[u8]) {
    use crate::emitter::{self, MAX_ATTACHMENTS};

    let Some((selector, payload)) = data.split_first() else {
        return;
    };
    let channel: &[u8] = match selector % 5 {
        0 => b"socket.io#/#",
        1 => b"socket.io#/chat#room#",
        2 => b"socket.io-request#/#",
        3 => b"socket.io#/#a#",
        _ => b"socket.io#emitter",
    };
    if selector % 5 == 2 {
        if let Ok(request) = emitter::decode_request(channel, payload) {
            assert_eq!(request.nsp, "/");
        }
        return;
    }
    if let Ok(b) = emitter::decode_broadcast(channel, payload) {
        assert!(b.payload.attachments.len() <= MAX_ATTACHMENTS);
        let mut seen = vec![false; b.payload.attachments.len()];
        fn walk(v: &serde_json::Value, p: &crate::socketio::Payload, seen: &mut [bool]) {
            match v {
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, p, seen)),
                serde_json::Value::Object(map) => {
                    if let Some(num) = map.get("num").and_then(serde_json::Value::as_u64)
                        && p.attachment_of(v).is_some()
                        && let Some(slot) = usize::try_from(num).ok().and_then(|n| seen.get_mut(n))
                    {
                        *slot = true;
                    }
                    map.values().for_each(|i| walk(i, p, seen));
                }
                _ => {}
            }
        }
        b.payload.args.iter().for_each(|a| walk(a, &b.payload, &mut seen));
        assert!(seen.iter().all(|s| *s), "an attachment has no placeholder");
    }
    emitter::check_against_rmpv(payload);
}

/// RESP codec (`resp::frame`). The input is fed both as a client request stream and as a
/// server reply.
///
/// Checks that request parsing never panics (with and without the unauthenticated limits),
/// that every parsed request lies inside the bytes it consumed, that re-encoding its arguments
/// as a multibulk request parses back to the same arguments, and that a decoded reply
/// re-encodes canonically in RESP3 and RESP2.
#[doc(hidden)]
pub fn resp_frame(data: &[u8]) {
    use bytes::BytesMut;

    use crate::resp::frame::{self, ParseLimits, Parsed, Proto};

    for limits in [
        ParseLimits::default(),
        ParseLimits { unauthenticated: true, ..ParseLimits::default() },
        ParseLimits { max_bulk_len: 16, max_args: 8, unauthenticated: false },
    ] {
        // Walk the whole input as a pipeline.
        let mut buf = BytesMut::from(data);
        while let Ok(parsed) = frame::parse_request(&buf, &limits) {
            let Parsed::Complete { consumed, args } = parsed else { break };
            assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed} of {}", buf.len());
            for arg in &args {
                if let frame::Arg::Span(range) = arg {
                    assert!(range.end <= consumed, "argument outside its request");
                }
            }
            let args = match frame::take_request(&mut buf, &limits) {
                Ok(Some(args)) => args,
                other => panic!("take_request disagrees with parse_request: {other:?}"),
            };
            if args.is_empty() {
                continue;
            }
            let argv: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
            let mut encoded = BytesMut::new();
            frame::encode_request(&argv, &mut encoded);
            let len = encoded.len();
            match frame::parse_request(&encoded, &ParseLimits::default()) {
                Ok(Parsed::Complete { consumed, .. }) => assert_eq!(consumed, len),
                other => panic!("re-parsing {encoded:?}: {other:?}"),
            }
            match frame::take_request(&mut encoded, &ParseLimits::default()) {
                Ok(Some(again)) => assert_eq!(again, args),
                other => panic!("re-parsing {argv:?}: {other:?}"),
            }
        }
    }

    if let Ok(Some((reply, used))) = frame::decode_reply(data) {
        assert!(used <= data.len());
        for proto in [Proto::Resp3, Proto::Resp2] {
            let mut first = BytesMut::new();
            reply.encode(proto, &mut first);
            let again = match frame::decode_reply(&first) {
                Ok(Some((again, n))) => {
                    assert_eq!(n, first.len());
                    again
                }
                other => panic!("re-decoding {first:?}: {other:?}"),
            };
            let mut second = BytesMut::new();
            again.encode(proto, &mut second);
            assert_eq!(first, second, "reply encoding is not canonical");
        }
    }
}

/// Checks that decoding an inter-node frame never panics, that what decodes re-encodes to a
/// frame that decodes to the same envelope, and that a key-value store snapshot decoder never
/// panics on the same bytes.
#[doc(hidden)]
pub fn cluster_envelope(data: &[u8]) {
    use crate::cluster::Envelope;

    if let Ok(envelope) = Envelope::decode(bytes::Bytes::copy_from_slice(data)) {
        let again = Envelope::decode(envelope.encode()).expect("a re-encoded envelope decodes");
        assert_eq!(again, envelope);
    }
    let _ = crate::resp::kv::KvStore::from_snapshot(data);
}

/// WebSocket client frames into messages ([`crate::engineio::wsread::FrameReader`]). Input: one
/// byte giving a chunk size, then the stream of frames.
///
/// Checks that reading the stream in chunks of any size gives the same messages and the same
/// outcome (an error or not) as reading it at once, and that nothing is decoded after an error.
#[doc(hidden)]
pub fn websocket_frames(data: &[u8]) {
    use crate::engineio::wsread::FrameReader;
    let Some((&chunk, stream)) = data.split_first() else { return };
    let read = |chunk: usize| {
        let mut reader = FrameReader::new(64 * 1024);
        let mut failed = false;
        for part in stream.chunks(chunk.max(1)) {
            if reader.feed(part).is_err() {
                failed = true;
                break;
            }
        }
        let messages: Vec<_> = std::iter::from_fn(|| reader.pop()).collect();
        if failed {
            assert!(reader.feed(b"\x81\x81\0\0\0\0x").is_ok() && reader.pop().is_none(), "decoded after an error");
        }
        (messages, failed)
    };
    assert_eq!(read(usize::from(chunk)), read(stream.len()), "chunks of {chunk}");
}

#[cfg(test)]
mod tests {
    /// The Engine.IO payload target on its seeds and on every truncation and one-byte change of
    /// them (the real fuzzing is `fuzz/run.sh`): nothing panics, every round trip holds.
    #[test]
    fn engineio_payload_seeds_and_their_mutations() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/engineio_payload");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("seed folder") {
            let seed = std::fs::read(entry.expect("seed").path()).expect("seed file");
            seeds += 1;
            for end in 0..=seed.len() {
                super::engineio_payload(&seed[..end]);
            }
            for i in 0..seed.len() {
                for byte in [0x00, 0x01, b'0', b'9', b':', b'b', b'4', 0x1e, 0xff, 0xc3] {
                    let mut mutated = seed.clone();
                    mutated[i] = byte;
                    super::engineio_payload(&mutated);
                }
            }
        }
        assert!(seeds >= 5, "the protocol 3 seeds are there");
    }
}
