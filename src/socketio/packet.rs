//! Socket.IO v5 packet codec (the text inside an Engine.IO `4…` message).
//!
//! Wire format: `<type>[<attachments>-][<nsp>,][<ackId>][<JSON>]`.
//!
//! * `type` is one digit, `0`..=`6` ([`PacketKind`]).
//! * `attachments` (decimal, then `-`) is present exactly for BINARY_EVENT and BINARY_ACK.
//! * `nsp` is present when the next byte is `/`; it runs until the first `,` (or the end of
//!   the text, as the reference parser allows) and is `/` when omitted.
//! * `ackId` is the run of decimal digits right before the JSON.
//! * `JSON` is the rest of the text; nothing may follow it.
//!
//! The codec is pure: [`decode`] checks the text and the per-type payload rules and returns a
//! [`Packet`]; [`encode`] / [`encode_event`] append compact text to a `Vec<u8>`. Binary packets
//! are reassembled with [`BinaryCollector`]. Placeholders (`{"_placeholder":true,"num":i}`) are
//! kept as they are in [`Packet::data`]; only their range is checked.
//!
//! JSON numbers keep their text (serde_json's `arbitrary_precision`) and object keys keep their
//! order (`preserve_order`), so `1` stays `1` and `1.50` stays `1.50` on the way through.

use std::fmt;

use bytes::Bytes;
use serde_json::Value;

/// Event names a peer may not emit: the reference parser rejects them.
pub(crate) const RESERVED_EVENTS: [&str; 6] =
    ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// Whether Socket.IO reserves `name` (a client may not emit it, a server should not use it).
pub(crate) fn is_reserved_event(name: &str) -> bool {
    RESERVED_EVENTS.contains(&name)
}

/// Longest accepted ack id, in digits (`u64::MAX` has 20).
const MAX_ACK_ID_DIGITS: usize = 20;

/// Longest accepted namespace, in bytes (including the leading `/`).
pub(crate) const MAX_NAMESPACE_LEN: usize = 1024;

/// The seven Socket.IO packet types; the discriminant is the wire digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PacketKind {
    /// `0`: join a namespace (client) / namespace joined (server).
    Connect = 0,
    /// `1`: leave a namespace.
    Disconnect = 1,
    /// `2`: an event, `[name, ...args]`.
    Event = 2,
    /// `3`: an acknowledgement, `[...args]`.
    Ack = 3,
    /// `4`: namespace join refused (server to client).
    ConnectError = 4,
    /// `5`: an event carrying binary attachments.
    BinaryEvent = 5,
    /// `6`: an acknowledgement carrying binary attachments.
    BinaryAck = 6,
}

impl PacketKind {
    /// The kind for a wire byte, `b'0'..=b'6'`.
    pub(crate) fn from_digit(byte: u8) -> Option<Self> {
        Some(match byte {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    /// The wire byte, `b'0'..=b'6'`.
    pub(crate) fn as_digit(self) -> u8 {
        b'0' + self as u8
    }

    /// Whether packets of this kind carry an attachments count.
    pub(crate) fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

impl fmt::Display for PacketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "CONNECT",
            Self::Disconnect => "DISCONNECT",
            Self::Event => "EVENT",
            Self::Ack => "ACK",
            Self::ConnectError => "CONNECT_ERROR",
            Self::BinaryEvent => "BINARY_EVENT",
            Self::BinaryAck => "BINARY_ACK",
        })
    }
}

/// One decoded Socket.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packet {
    /// The packet type.
    pub(crate) kind: PacketKind,
    /// The namespace, `/` when omitted on the wire.
    pub(crate) nsp: String,
    /// The ack id, when the sender wants an acknowledgement (or this is one).
    pub(crate) id: Option<u64>,
    /// The JSON payload, placeholders kept as sent.
    pub(crate) data: Option<Value>,
    /// The declared number of binary attachments; 0 unless `kind.is_binary()`.
    pub(crate) attachments: usize,
}

impl Packet {
    /// Appends this packet's wire text to `out` (see [`encode`]).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        encode(self.kind, &self.nsp, self.id, self.data.as_ref(), self.attachments, out);
    }
}

/// Bounds applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most binary attachments one packet may declare (upstream default: 10).
    pub(crate) max_attachments: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_attachments: 10 }
    }
}

/// Why a packet's payload does not fit its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadProblem {
    /// CONNECT data is present but not a JSON object.
    #[error("CONNECT data must be an object")]
    ConnectNotObject,
    /// DISCONNECT carries data.
    #[error("DISCONNECT must not carry data")]
    DisconnectWithData,
    /// CONNECT_ERROR data is present but neither an object nor a string.
    #[error("CONNECT_ERROR data must be an object or a string")]
    ConnectErrorNotObjectOrString,
    /// EVENT data is missing or not an array.
    #[error("EVENT data must be an array")]
    EventNotArray,
    /// EVENT data is an empty array.
    #[error("EVENT data must not be empty")]
    EventEmpty,
    /// The first EVENT item is neither a string nor a number.
    #[error("event name must be a string or a number")]
    EventNameNotStringOrNumber,
    /// The event name is one the server reserves for itself.
    #[error("event name is reserved")]
    ReservedEventName,
    /// ACK data is missing or not an array.
    #[error("ACK data must be an array")]
    AckNotArray,
}

/// Why a Socket.IO packet (or one of its attachments) was refused. Any of these closes the
/// connection that sent it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The text is empty.
    #[error("empty packet")]
    Empty,
    /// The first byte is not a packet type digit `0`..=`6`.
    #[error("unknown packet type")]
    BadType,
    /// A binary packet lacks its `<digits>-` attachments count, or a non-binary one has one.
    #[error("malformed attachments count")]
    BadAttachments,
    /// The declared attachments count is above the limit.
    #[error("too many attachments (limit {max})")]
    TooManyAttachments {
        /// The configured limit.
        max: usize,
    },
    /// The namespace is longer than [`MAX_NAMESPACE_LEN`].
    #[error("namespace too long")]
    BadNamespace,
    /// The ack id has too many digits or does not fit a `u64`.
    #[error("ack id out of range")]
    BadAckId,
    /// The payload is not valid JSON, or something follows it.
    #[error("invalid JSON payload: {0}")]
    BadJson(#[source] serde_json::Error),
    /// The payload is valid JSON but not allowed for this packet type.
    #[error("invalid {kind} payload: {problem}")]
    InvalidPayload {
        /// The packet type.
        kind: PacketKind,
        /// What is wrong with the payload.
        problem: PayloadProblem,
    },
    /// A `{"_placeholder":true}` object has no valid `num` below the attachments count.
    #[error("invalid attachment placeholder")]
    BadPlaceholder,
    /// A binary attachment arrived when no binary packet was waiting for one.
    #[error("unexpected binary attachment")]
    UnexpectedAttachment,
}

/// Decodes one Socket.IO packet from the text of an Engine.IO message (without its `4`).
///
/// Checks the framing, the per-type payload rules and, for binary packets, that every
/// placeholder refers to a declared attachment.
pub(crate) fn decode(text: &str, limits: &Limits) -> Result<Packet, DecodeError> {
    let first = *text.as_bytes().first().ok_or(DecodeError::Empty)?;
    let kind = PacketKind::from_digit(first).ok_or(DecodeError::BadType)?;
    // The type digit is ASCII, so byte 1 is a char boundary.
    let mut rest = text.get(1..).unwrap_or_default();

    let mut attachments = 0;
    if kind.is_binary() {
        let (digits, after) = split_digits(rest);
        let Some(after) = after.strip_prefix('-').filter(|_| !digits.is_empty()) else {
            return Err(DecodeError::BadAttachments);
        };
        attachments = parse_bounded(digits, limits.max_attachments)
            .ok_or(DecodeError::TooManyAttachments { max: limits.max_attachments })?;
        rest = after;
    } else if let (digits, after) = split_digits(rest)
        && !digits.is_empty()
        && after.starts_with('-')
    {
        // `21-[…]`: an attachments count on a non-binary type. (Read as an ack id it would
        // be followed by JSON starting with `-`, which no packet type accepts either.)
        return Err(DecodeError::BadAttachments);
    }

    let mut nsp = "/";
    if rest.starts_with('/') {
        (nsp, rest) = rest.split_once(',').unwrap_or((rest, ""));
        if nsp.len() > MAX_NAMESPACE_LEN {
            return Err(DecodeError::BadNamespace);
        }
    }

    let (digits, after) = split_digits(rest);
    let id = if digits.is_empty() {
        None
    } else {
        if digits.len() > MAX_ACK_ID_DIGITS {
            return Err(DecodeError::BadAckId);
        }
        Some(digits.parse::<u64>().map_err(|_| DecodeError::BadAckId)?)
    };
    rest = after;

    let data =
        if rest.is_empty() { None } else { Some(serde_json::from_str::<Value>(rest).map_err(DecodeError::BadJson)?) };

    check_payload(kind, data.as_ref()).map_err(|problem| DecodeError::InvalidPayload { kind, problem })?;
    if kind.is_binary()
        && let Some(data) = &data
    {
        validate_placeholders(data, attachments)?;
    }

    Ok(Packet { kind, nsp: nsp.to_owned(), id, data, attachments })
}

/// Splits `s` after its leading ASCII digits.
fn split_digits(s: &str) -> (&str, &str) {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    // `n` counts ASCII bytes from the start, so it is a char boundary.
    s.split_at_checked(n).unwrap_or((s, ""))
}

/// Parses ASCII `digits` as a number no greater than `max` (leading zeros allowed).
fn parse_bounded(digits: &str, max: usize) -> Option<usize> {
    digits.bytes().try_fold(0usize, |acc, b| {
        acc.checked_mul(10)?.checked_add(usize::from(b.wrapping_sub(b'0'))).filter(|n| *n <= max)
    })
}

/// Checks the payload rules of one packet type.
fn check_payload(kind: PacketKind, data: Option<&Value>) -> Result<(), PayloadProblem> {
    match kind {
        PacketKind::Connect => match data {
            None | Some(Value::Object(_)) => Ok(()),
            Some(_) => Err(PayloadProblem::ConnectNotObject),
        },
        PacketKind::Disconnect => match data {
            None => Ok(()),
            Some(_) => Err(PayloadProblem::DisconnectWithData),
        },
        PacketKind::ConnectError => match data {
            None | Some(Value::Object(_) | Value::String(_)) => Ok(()),
            Some(_) => Err(PayloadProblem::ConnectErrorNotObjectOrString),
        },
        PacketKind::Event | PacketKind::BinaryEvent => {
            let Some(Value::Array(items)) = data else {
                return Err(PayloadProblem::EventNotArray);
            };
            match items.first() {
                None => Err(PayloadProblem::EventEmpty),
                Some(Value::Number(_)) => Ok(()),
                Some(Value::String(name)) if RESERVED_EVENTS.contains(&name.as_str()) => {
                    Err(PayloadProblem::ReservedEventName)
                }
                Some(Value::String(_)) => Ok(()),
                Some(_) => Err(PayloadProblem::EventNameNotStringOrNumber),
            }
        }
        PacketKind::Ack | PacketKind::BinaryAck => match data {
            Some(Value::Array(_)) => Ok(()),
            _ => Err(PayloadProblem::AckNotArray),
        },
    }
}

/// Checks every placeholder in `data`: an object whose `_placeholder` is `true` must have a
/// `num` that is an integer in `0..attachments` (keys may come in any order; other keys are
/// ignored, as upstream does). Objects without `"_placeholder": true` are ordinary data.
///
/// [`decode`] already runs this for binary packets, since the count is declared up front.
pub(crate) fn validate_placeholders(data: &Value, attachments: usize) -> Result<(), DecodeError> {
    // Depth is bounded by serde_json's recursion limit (128) for decoded values.
    match data {
        Value::Array(items) => items.iter().try_for_each(|item| validate_placeholders(item, attachments)),
        Value::Object(map) => {
            if map.get("_placeholder") == Some(&Value::Bool(true)) {
                match map.get("num").and_then(Value::as_u64) {
                    Some(num) if usize::try_from(num).is_ok_and(|n| n < attachments) => Ok(()),
                    _ => Err(DecodeError::BadPlaceholder),
                }
            } else {
                map.values().try_for_each(|value| validate_placeholders(value, attachments))
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(()),
    }
}

/// Appends a packet as Socket.IO text (WITHOUT the Engine.IO `4` prefix) to `out`.
///
/// `nsp` must start with `/` and contain no `,`; `attachments` is written only for binary
/// kinds. The JSON is compact, numbers are written as they were parsed, key order is kept.
pub(crate) fn encode(
    kind: PacketKind,
    nsp: &str,
    id: Option<u64>,
    data: Option<&Value>,
    attachments: usize,
    out: &mut Vec<u8>,
) {
    write_header(kind, nsp, id, attachments, out);
    if let Some(data) = data {
        write_json(out, data);
    }
}

/// Appends an EVENT (or, when `attachments > 0`, a BINARY_EVENT) whose data is
/// `[event, ...args]` to `out`, without building the array. Same output as [`encode`].
pub(crate) fn encode_event(
    nsp: &str,
    id: Option<u64>,
    event: &str,
    args: &[Value],
    attachments: usize,
    out: &mut Vec<u8>,
) {
    let kind = if attachments > 0 { PacketKind::BinaryEvent } else { PacketKind::Event };
    write_header(kind, nsp, id, attachments, out);
    out.push(b'[');
    write_json(out, event);
    for arg in args {
        out.push(b',');
        write_json(out, arg);
    }
    out.push(b']');
}

/// Writes everything before the JSON.
fn write_header(kind: PacketKind, nsp: &str, id: Option<u64>, attachments: usize, out: &mut Vec<u8>) {
    debug_assert!(
        nsp.is_empty() || (nsp.starts_with('/') && !nsp.contains(',')),
        "namespace {nsp:?} cannot be encoded"
    );
    out.push(kind.as_digit());
    if kind.is_binary() {
        write_decimal(out, attachments as u64);
        out.push(b'-');
    }
    if !nsp.is_empty() && nsp != "/" {
        out.extend_from_slice(nsp.as_bytes());
        out.push(b',');
    }
    if let Some(id) = id {
        write_decimal(out, id);
    }
}

/// Writes `n` in decimal.
fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    for slot in buf.iter_mut().rev() {
        // `n % 10 < 10`, so the cast cannot truncate.
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        start -= 1;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(start..).unwrap_or_default());
}

/// Writes compact JSON. Serializing into a `Vec` cannot fail: its `io::Write` never errors and
/// `Value` map keys are always strings.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let written = serde_json::to_writer(&mut *out, value);
    debug_assert!(written.is_ok(), "JSON serialization into a Vec failed");
}

/// Reassembles a binary packet: created from a decoded BINARY_EVENT/BINARY_ACK header whose
/// `attachments > 0`, it is fed each following binary Engine.IO message in order.
///
/// A header with `attachments == 0` is already complete: do not make a collector for it.
#[derive(Debug)]
pub(crate) struct BinaryCollector {
    /// The header, until the last attachment arrives.
    packet: Option<Packet>,
    /// Attachments received so far.
    buffers: Vec<Bytes>,
}

impl BinaryCollector {
    /// Starts collecting the attachments of `packet`.
    pub(crate) fn new(packet: Packet) -> Self {
        let buffers = Vec::with_capacity(packet.attachments.min(16));
        Self { packet: Some(packet), buffers }
    }

    /// How many attachments are still expected.
    pub(crate) fn remaining(&self) -> usize {
        self.packet.as_ref().map_or(0, |p| p.attachments.saturating_sub(self.buffers.len()))
    }

    /// Adds the next attachment. Returns the packet and its attachments (index `i` is what
    /// placeholder `num: i` stands for) once the last one arrives, `None` before that, and
    /// [`DecodeError::UnexpectedAttachment`] when nothing more was expected.
    pub(crate) fn push(&mut self, attachment: Bytes) -> Result<Option<(Packet, Vec<Bytes>)>, DecodeError> {
        let expected = match &self.packet {
            Some(packet) if self.buffers.len() < packet.attachments => packet.attachments,
            _ => return Err(DecodeError::UnexpectedAttachment),
        };
        self.buffers.push(attachment);
        if self.buffers.len() < expected {
            return Ok(None);
        }
        Ok(self.packet.take().map(|packet| (packet, std::mem::take(&mut self.buffers))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dec(text: &str) -> Result<Packet, DecodeError> {
        decode(text, &Limits::default())
    }

    fn ok(text: &str) -> Packet {
        match dec(text) {
            Ok(packet) => packet,
            Err(err) => panic!("{text:?} should decode: {err}"),
        }
    }

    fn err(text: &str) -> DecodeError {
        match dec(text) {
            Ok(packet) => panic!("{text:?} should be refused, got {packet:?}"),
            Err(err) => err,
        }
    }

    fn problem(text: &str) -> PayloadProblem {
        match err(text) {
            DecodeError::InvalidPayload { problem, .. } => problem,
            other => panic!("{text:?}: expected InvalidPayload, got {other:?}"),
        }
    }

    fn enc(packet: &Packet) -> String {
        let mut out = Vec::new();
        packet.encode(&mut out);
        String::from_utf8(out).expect("encoder writes UTF-8")
    }

    /// Parses JSON with the crate's settings (numbers keep their text).
    fn j(text: &str) -> Value {
        serde_json::from_str(text).expect("test JSON")
    }

    fn pkt(kind: PacketKind, nsp: &str, id: Option<u64>, data: Option<Value>, att: usize) -> Packet {
        Packet { kind, nsp: nsp.to_owned(), id, data, attachments: att }
    }

    #[test]
    fn decodes_the_documented_examples() {
        use PacketKind::*;
        let cases = [
            ("0", pkt(Connect, "/", None, None, 0)),
            (r#"0/admin,{"token":"x"}"#, pkt(Connect, "/admin", None, Some(json!({"token": "x"})), 0)),
            ("1/admin,", pkt(Disconnect, "/admin", None, None, 0)),
            (r#"2["hello",1]"#, pkt(Event, "/", None, Some(json!(["hello", 1])), 0)),
            (r#"2/admin,12["x"]"#, pkt(Event, "/admin", Some(12), Some(json!(["x"])), 0)),
            ("3/admin,12[]", pkt(Ack, "/admin", Some(12), Some(json!([])), 0)),
            (
                // `451-…` on the Engine.IO wire: `4` is the Engine.IO MESSAGE prefix.
                r#"51-["bin",{"_placeholder":true,"num":0}]"#,
                pkt(BinaryEvent, "/", None, Some(json!(["bin", {"_placeholder": true, "num": 0}])), 1),
            ),
            (
                r#"61-/admin,12[{"_placeholder":true,"num":0}]"#,
                pkt(BinaryAck, "/admin", Some(12), Some(json!([{"_placeholder": true, "num": 0}])), 1),
            ),
            (r#"2[1,"a"]"#, pkt(Event, "/", None, Some(json!([1, "a"])), 0)),
            (
                r#"4{"message":"Invalid namespace"}"#,
                pkt(ConnectError, "/", None, Some(json!({"message": "Invalid namespace"})), 0),
            ),
            (r#"4/x,"nope""#, pkt(ConnectError, "/x", None, Some(json!("nope")), 0)),
        ];
        for (text, want) in cases {
            assert_eq!(ok(text), want, "{text:?}");
        }
    }

    #[test]
    fn refuses_bad_framing() {
        assert!(matches!(err(""), DecodeError::Empty));
        assert!(matches!(err("7"), DecodeError::BadType));
        assert!(matches!(err("9[\"x\"]"), DecodeError::BadType));
        assert!(matches!(err("a"), DecodeError::BadType));
        assert!(matches!(err("é"), DecodeError::BadType));
        assert!(matches!(err(r#"5["x"]"#), DecodeError::BadAttachments));
        assert!(matches!(err(r#"5-["x"]"#), DecodeError::BadAttachments));
        assert!(matches!(err(r#"51["x"]"#), DecodeError::BadAttachments));
        assert!(matches!(err("6"), DecodeError::BadAttachments));
        assert!(matches!(err(r#"21-["x"]"#), DecodeError::BadAttachments));
        assert!(matches!(err(r#"31-[]"#), DecodeError::BadAttachments));
        assert!(matches!(err(r#"2abc["x"]"#), DecodeError::BadJson(_)));
        assert!(matches!(err(r#"2["x""#), DecodeError::BadJson(_)));
        assert!(matches!(err(r#"2["x"]]"#), DecodeError::BadJson(_)));
        assert!(matches!(err(r#"2["x"]garbage"#), DecodeError::BadJson(_)));
        assert!(matches!(err(r#"2["x"]{}"#), DecodeError::BadJson(_)));
        assert!(matches!(err("0 "), DecodeError::BadJson(_)));
    }

    #[test]
    fn namespace_runs_to_the_first_comma_or_the_end() {
        assert_eq!(ok("1/admin").nsp, "/admin");
        assert_eq!(ok("0/admin").nsp, "/admin");
        assert_eq!(ok("1/,").nsp, "/");
        let p = ok(r#"2/a b/ü,["x,y"]"#);
        assert_eq!((p.nsp.as_str(), p.data), ("/a b/ü", Some(json!(["x,y"]))));
        // A namespace without its comma swallows what follows, which then is not JSON data.
        assert_eq!(ok(r#"0/admin{"a":1}"#).nsp, r#"/admin{"a":1}"#);
        // An event without a comma after the namespace has no data left: refused.
        assert_eq!(problem(r#"2/admin["x"]"#), PayloadProblem::EventNotArray);
        // A `/` inside the JSON is not a namespace.
        assert_eq!(ok(r#"2["/x,y"]"#).nsp, "/");
        let long = format!("1/{},", "a".repeat(MAX_NAMESPACE_LEN));
        assert!(matches!(err(&long), DecodeError::BadNamespace));
        let longest = format!("1/{},", "a".repeat(MAX_NAMESPACE_LEN - 1));
        assert_eq!(ok(&longest).nsp.len(), MAX_NAMESPACE_LEN);
    }

    #[test]
    fn ack_ids_are_bounded() {
        assert_eq!(ok(r#"20["x"]"#).id, Some(0));
        assert_eq!(ok(r#"2007["x"]"#).id, Some(7));
        let max = format!(r#"2{}["x"]"#, u64::MAX);
        assert_eq!(ok(&max).id, Some(u64::MAX));
        let over = format!(r#"2{}["x"]"#, u128::from(u64::MAX) + 1);
        assert!(matches!(err(&over), DecodeError::BadAckId));
        let zeros = format!(r#"2{}1["x"]"#, "0".repeat(MAX_ACK_ID_DIGITS));
        assert!(matches!(err(&zeros), DecodeError::BadAckId));
        let huge = format!(r#"2{}["x"]"#, "9".repeat(100_000));
        assert!(matches!(err(&huge), DecodeError::BadAckId));
        // An ack id with no data: allowed for CONNECT/DISCONNECT (as upstream), refused for EVENT.
        assert_eq!(ok("1/a,5").id, Some(5));
        assert_eq!(problem("2/a,5"), PayloadProblem::EventNotArray);
        assert_eq!(problem("35"), PayloadProblem::AckNotArray);
    }

    #[test]
    fn attachment_counts_are_bounded() {
        let limits = Limits { max_attachments: 3 };
        let three = r#"53-["x",{"_placeholder":true,"num":2}]"#;
        assert_eq!(decode(three, &limits).map(|p| p.attachments).ok(), Some(3));
        assert!(matches!(decode(r#"54-["x"]"#, &limits), Err(DecodeError::TooManyAttachments { max: 3 })));
        assert!(matches!(err(r#"511-["x"]"#), DecodeError::TooManyAttachments { max: 10 }));
        assert_eq!(ok(r#"510-["x"]"#).attachments, 10);
        assert_eq!(ok(r#"50003-["x"]"#).attachments, 3);
        let overflow = format!(r#"5{}-["x"]"#, "9".repeat(100));
        assert!(matches!(err(&overflow), DecodeError::TooManyAttachments { .. }));
        let unbounded = Limits { max_attachments: usize::MAX };
        assert!(matches!(decode(&overflow, &unbounded), Err(DecodeError::TooManyAttachments { .. })));
        // Zero attachments is legal upstream (the packet is complete at once).
        assert_eq!(ok(r#"50-["x"]"#).attachments, 0);
        assert_eq!(ok(r#"60-[]"#).kind, PacketKind::BinaryAck);
    }

    #[test]
    fn payload_rules_per_type() {
        use PayloadProblem::*;
        assert_eq!(problem("0[]"), ConnectNotObject);
        assert_eq!(problem(r#"0"x""#), ConnectNotObject);
        assert_eq!(problem("0null"), ConnectNotObject);
        assert_eq!(problem("1{}"), DisconnectWithData);
        assert_eq!(problem("1/a,null"), DisconnectWithData);
        assert_eq!(problem("2"), EventNotArray);
        assert_eq!(problem("2{}"), EventNotArray);
        assert_eq!(problem(r#"2"x""#), EventNotArray);
        assert_eq!(problem("2[]"), EventEmpty);
        assert_eq!(problem("2[null]"), EventNameNotStringOrNumber);
        assert_eq!(problem("2[[\"x\"]]"), EventNameNotStringOrNumber);
        assert_eq!(problem("2[{}]"), EventNameNotStringOrNumber);
        assert_eq!(problem("2[true]"), EventNameNotStringOrNumber);
        for name in RESERVED_EVENTS {
            assert_eq!(problem(&format!(r#"2["{name}",1]"#)), ReservedEventName);
            assert_eq!(problem(&format!(r#"51-["{name}"]"#)), ReservedEventName);
        }
        // Near-misses of reserved names are ordinary events.
        assert!(dec(r#"2["Connect"]"#).is_ok());
        assert!(dec(r#"2["connect "]"#).is_ok());
        assert!(dec(r#"2["\u0063onnect"]"#).is_err(), "escapes are decoded before the check");
        assert_eq!(problem("3"), AckNotArray);
        assert_eq!(problem("3{}"), AckNotArray);
        assert_eq!(problem("61-{}"), AckNotArray);
        assert_eq!(problem("4[]"), ConnectErrorNotObjectOrString);
        assert_eq!(problem("4/a,true"), ConnectErrorNotObjectOrString);
        assert_eq!(ok("4/a,1").id, Some(1), "digits before the JSON are an ack id");
        assert_eq!(problem("4null"), ConnectErrorNotObjectOrString);
        assert!(dec("4").is_ok());
        assert!(matches!(err("1{}"), DecodeError::InvalidPayload { kind: PacketKind::Disconnect, .. }));
    }

    #[test]
    fn json_is_kept_as_sent() {
        let p = ok(r#"2["n",1,1.50,-0,123456789012345678901234567890,{"b":1,"a":2}]"#);
        assert_eq!(enc(&p), r#"2["n",1,1.50,-0,123456789012345678901234567890,{"b":1,"a":2}]"#);
        // serde_json spells exponents one way (same value): `1e3` -> `1e+3`, `1E-7` -> `1e-7`.
        assert_eq!(enc(&ok("2[1e3,1E-7,2.5E+10]")), "2[1e+3,1e-7,2.5e+10]");
        // Whitespace is accepted around and inside the JSON and dropped on output.
        let p = ok("2 [ \"n\" ,\t{ \"k\" : [ 1 , 2 ] } ]\n");
        assert_eq!(enc(&p), r#"2["n",{"k":[1,2]}]"#);
        let p = ok(r#"2["\u00e9\n\"",1]"#);
        assert_eq!(p.data, Some(json!(["é\n\"", 1])));
        assert_eq!(enc(&p), r#"2["é\n\"",1]"#);
        assert_eq!(ok(r#"2[7]"#).data, Some(j("[7]")));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("2[\"x\",{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(err(&deep), DecodeError::BadJson(_)));
    }

    #[test]
    fn placeholders_must_be_in_range() {
        let cases = [
            (r#"51-["x",{"_placeholder":true,"num":0}]"#, true),
            (r#"51-["x",{"num":0,"_placeholder":true}]"#, true),
            (r#"52-["x",{"a":[{"num":1,"_placeholder":true}]}]"#, true),
            (r#"52-["x",{"_placeholder":true,"num":0,"extra":1}]"#, true),
            (r#"51-["x",{"_placeholder":true,"num":1}]"#, false),
            (r#"51-["x",{"_placeholder":true,"num":-1}]"#, false),
            (r#"51-["x",{"_placeholder":true,"num":0.0}]"#, false),
            (r#"51-["x",{"_placeholder":true,"num":"0"}]"#, false),
            (r#"51-["x",{"_placeholder":true}]"#, false),
            (r#"51-["x",{"_placeholder":true,"num":99999999999999999999999}]"#, false),
            (r#"50-["x",{"_placeholder":true,"num":0}]"#, false),
            (r#"61-[[[{"_placeholder":true,"num":3}]]]"#, false),
            // Not placeholders: ordinary data.
            (r#"51-["x",{"_placeholder":false,"num":7}]"#, true),
            (r#"51-["x",{"_placeholder":"true","num":7}]"#, true),
            (r#"51-["x",{"num":7}]"#, true),
        ];
        for (text, valid) in cases {
            match dec(text) {
                Ok(_) => assert!(valid, "{text:?} should be refused"),
                Err(DecodeError::BadPlaceholder) => assert!(!valid, "{text:?} should decode"),
                Err(other) => panic!("{text:?}: unexpected {other:?}"),
            }
        }
        // Non-binary packets are not checked: a placeholder-looking object is plain data.
        assert!(dec(r#"2["x",{"_placeholder":true,"num":5}]"#).is_ok());
        assert!(validate_placeholders(&json!([{"_placeholder": true, "num": 5}]), 6).is_ok());
        assert!(validate_placeholders(&json!([{"_placeholder": true, "num": 6}]), 6).is_err());
    }

    #[test]
    fn encodes_compactly() {
        let mut out = Vec::new();
        encode(PacketKind::Connect, "/", None, Some(&json!({"sid": "abc"})), 0, &mut out);
        assert_eq!(out, br#"0{"sid":"abc"}"#);
        out.clear();
        encode(PacketKind::ConnectError, "/nsp", None, Some(&json!({"message": "Invalid namespace"})), 0, &mut out);
        assert_eq!(out, br#"4/nsp,{"message":"Invalid namespace"}"#);
        out.clear();
        encode(PacketKind::Disconnect, "/admin", None, None, 0, &mut out);
        assert_eq!(out, b"1/admin,");
        out.clear();
        encode(PacketKind::Disconnect, "/", None, None, 0, &mut out);
        assert_eq!(out, b"1");
        out.clear();
        encode(PacketKind::Ack, "/a", Some(0), Some(&j("[1.0,2]")), 0, &mut out);
        assert_eq!(out, b"3/a,0[1.0,2]");
        out.clear();
        encode(PacketKind::BinaryAck, "/", Some(u64::MAX), Some(&json!([])), 2, &mut out);
        assert_eq!(out, format!("62-{}[]", u64::MAX).as_bytes());
        out.clear();
        // The attachments count is written only for binary kinds.
        encode(PacketKind::Event, "/", None, Some(&json!(["x"])), 3, &mut out);
        assert_eq!(out, br#"2["x"]"#);
        // Appends, never clears.
        encode(PacketKind::Connect, "/", None, None, 0, &mut out);
        assert_eq!(out, br#"2["x"]0"#);
    }

    #[test]
    fn encode_event_matches_encode() {
        let args = [json!(1), j("2.50"), json!({"z": null, "a": [true]}), json!("s\"")];
        for (nsp, id, att) in [("/", None, 0), ("/chat", Some(42), 0), ("/", Some(1), 2), ("/b", None, 1)] {
            let mut fast = Vec::new();
            encode_event(nsp, id, "msg", &args, att, &mut fast);
            let mut full = vec![json!("msg")];
            full.extend(args.iter().cloned());
            let kind = if att > 0 { PacketKind::BinaryEvent } else { PacketKind::Event };
            let mut slow = Vec::new();
            encode(kind, nsp, id, Some(&Value::Array(full)), att, &mut slow);
            assert_eq!(fast, slow);
        }
        let mut out = Vec::new();
        encode_event("/", None, "ping", &[], 0, &mut out);
        assert_eq!(out, br#"2["ping"]"#);
        out.clear();
        encode_event("/x", Some(3), "a\u{0}b", &[json!(1)], 0, &mut out);
        assert_eq!(out, br#"2/x,3["a\u0000b",1]"#);
    }

    #[test]
    fn binary_collector_completes_on_the_last_attachment() {
        let header = ok(r#"52-/x,7["up",{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]"#);
        let mut collector = BinaryCollector::new(header.clone());
        assert_eq!(collector.remaining(), 2);
        assert!(matches!(collector.push(Bytes::from_static(b"zero")), Ok(None)));
        assert_eq!(collector.remaining(), 1);
        let Ok(Some((packet, buffers))) = collector.push(Bytes::from_static(b"one")) else {
            panic!("collector should complete");
        };
        assert_eq!(packet, header);
        assert_eq!(buffers, [Bytes::from_static(b"zero"), Bytes::from_static(b"one")]);
        assert_eq!(collector.remaining(), 0);
        assert!(matches!(collector.push(Bytes::new()), Err(DecodeError::UnexpectedAttachment)));
    }

    #[test]
    fn binary_collector_with_nothing_expected_refuses() {
        let mut collector = BinaryCollector::new(ok(r#"50-["x"]"#));
        assert_eq!(collector.remaining(), 0);
        assert!(matches!(collector.push(Bytes::new()), Err(DecodeError::UnexpectedAttachment)));
    }

    #[test]
    fn kinds_round_trip_their_digit() {
        for digit in b'0'..=b'6' {
            let kind = PacketKind::from_digit(digit).expect("valid digit");
            assert_eq!(kind.as_digit(), digit);
            assert_eq!(kind.is_binary(), digit >= b'5');
        }
        assert_eq!(PacketKind::from_digit(b'7'), None);
        assert_eq!(PacketKind::from_digit(b'/'), None);
    }

    #[test]
    fn write_decimal_covers_the_range() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            write_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    /// Tiny deterministic generator (xorshift64*), enough for round-trip coverage.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
        fn chance(&mut self, one_in: usize) -> bool {
            self.below(one_in) == 0
        }

        fn string(&mut self) -> String {
            const PIECES: [&str; 14] =
                ["", "a", "hello", " ", ",", "/", "-", "\"", "\\", "\n", "é", "💥", "\u{0}", "[1]"];
            (0..self.below(4)).map(|_| *self.pick(&PIECES)).collect()
        }

        fn number(&mut self) -> Value {
            const NUMBERS: [&str; 12] = [
                "0",
                "1",
                "-1",
                "1.50",
                "-0",
                "3.14159",
                "1e3",
                "1E-7",
                "2.5e+10",
                "18446744073709551615",
                "18446744073709551616",
                "-123456789012345678901234567890.5",
            ];
            let text: &&str = self.pick(&NUMBERS);
            j(text)
        }

        fn value(&mut self, depth: usize) -> Value {
            let top = if depth == 0 { 4 } else { 6 };
            match self.below(top) {
                0 => Value::Null,
                1 => Value::Bool(self.chance(2)),
                2 => self.number(),
                3 => Value::String(self.string()),
                4 => Value::Array((0..self.below(4)).map(|_| self.value(depth - 1)).collect()),
                _ => Value::Object((0..self.below(4)).map(|_| (self.string(), self.value(depth - 1))).collect()),
            }
        }

        fn placeholder(&mut self, attachments: usize) -> Value {
            let num = Value::from(self.below(attachments));
            if self.chance(2) {
                json!({"_placeholder": true, "num": num})
            } else {
                json!({"num": num, "_placeholder": true})
            }
        }

        fn args(&mut self, attachments: usize) -> Vec<Value> {
            let mut args: Vec<Value> = (0..self.below(4)).map(|_| self.value(2)).collect();
            for _ in 0..attachments.min(3) {
                let at = self.below(args.len() + 1);
                let placeholder = self.placeholder(attachments);
                let wrapped = if self.chance(2) { json!({"file": placeholder}) } else { placeholder };
                args.insert(at, wrapped);
            }
            args
        }

        fn packet(&mut self) -> Packet {
            use PacketKind::*;
            const KINDS: [PacketKind; 7] = [Connect, Disconnect, Event, Ack, ConnectError, BinaryEvent, BinaryAck];
            const NSPS: [&str; 7] = ["/", "/", "/admin", "/a/b", "/ü -x", "/[1]", "/{\"a\":1}"];
            let kind = *self.pick(&KINDS);
            let nsp = (*self.pick(&NSPS)).to_owned();
            let id = match self.below(4) {
                0 => Some(0),
                1 => Some(self.next() >> self.below(64)),
                _ => None,
            };
            let attachments = if kind.is_binary() { self.below(11) } else { 0 };
            let data = match kind {
                Connect => self.chance(2).then(|| self.object()),
                Disconnect => None,
                ConnectError => match self.below(3) {
                    0 => None,
                    1 => Some(Value::String(self.string())),
                    _ => Some(self.object()),
                },
                Event | BinaryEvent => {
                    let name =
                        if self.chance(4) { self.number() } else { Value::String(format!("ev{}", self.string())) };
                    let mut items = vec![name];
                    items.extend(self.args(attachments));
                    Some(Value::Array(items))
                }
                Ack | BinaryAck => Some(Value::Array(self.args(attachments))),
            };
            Packet { kind, nsp, id, data, attachments }
        }

        fn object(&mut self) -> Value {
            Value::Object((0..self.below(4)).map(|_| (self.string(), self.value(2))).collect())
        }
    }

    #[test]
    fn round_trips_generated_packets() {
        let mut rng = Gen(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let packet = rng.packet();
            let text = enc(&packet);
            let back = match dec(&text) {
                Ok(back) => back,
                Err(err) => panic!("round {round}: {text:?} failed to decode: {err}"),
            };
            assert_eq!(back, packet, "round {round}: {text:?}");
            assert_eq!(enc(&back), text, "round {round}: not canonical");
            let event_kind = if packet.attachments > 0 { PacketKind::BinaryEvent } else { PacketKind::Event };
            if packet.kind == event_kind
                && let Some(Value::Array(items)) = &packet.data
                && let Some((Value::String(name), args)) = items.split_first()
            {
                let mut fast = Vec::new();
                encode_event(&packet.nsp, packet.id, name, args, packet.attachments, &mut fast);
                assert_eq!(fast, text.as_bytes(), "round {round}: encode_event differs");
            }
        }
    }

    #[test]
    fn mutated_packets_never_panic_and_stay_consistent() {
        // Byte-level mutations of valid packets go through the same checks as the fuzz target.
        let mut rng = Gen(42);
        for _ in 0..20_000 {
            let mut bytes = enc(&rng.packet()).into_bytes();
            for _ in 0..=rng.below(3) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.below(bytes.len());
                match rng.below(3) {
                    0 => bytes[at] = *rng.pick(b"0123456789-/,[]{}\":x \\"),
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, *rng.pick(b"0123456789-/,[]{}\":x ")),
                }
            }
            crate::fuzzing::socketio_packet(&bytes);
        }
    }
}
