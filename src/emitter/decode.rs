//! Decoding emitter messages into typed operations (wire format: docs/protocol.md#emitter-wire-format).
//!
//! [`decode_broadcast`] and [`decode_request`] take the channel and the payload and return
//! values ([`EmitterBroadcast`], [`EmitterRequest`]); they never touch a socket or a clock. The
//! msgpack values come from our reader ([`super::msgpack`]); their conversion to the JSON
//! socket.io sends (binary values become attachments, notepack's dates and `undefined`) lives
//! here.
//!
//! Tolerated variants (other-language emitters are sloppy): any msgpack integer width; packet type
//! 5 (BINARY_EVENT, old Go and PHP emitters) as well as 2; a missing `nsp` (the channel's
//! namespace, `/` on `socket.io#/#`); `opts` and `flags` as a map, an empty array or missing;
//! `rooms`/`except` as `""`, a string, an array or a map (PHP arrays with holes); binary as `bin`
//! or as a `str` that is not UTF-8; notepack's extensions (`d4 00 00` undefined, ext type 0
//! ArrayBuffer, ext type 0 / -1 dates); one PUBLISH per room with the same payload (each socket
//! still receives the event once); the byte rewriting of old PHP emitters (0xda → 0xd8 and
//! 0xdb → 0xd9 in BINARY_EVENT packets, old msgpack-js' "buffer 16/32").
//!
//! The emitters of socket.io 1.x (docs/protocol.md#emitters-of-socketio-1x) publish
//! `[packet, opts]` on `<key>#emitter`: no uid, and the namespace only in `packet.nsp` (missing
//! or empty: `/`; without its leading `/`, as `of("chat")` left it: `/chat`). A Ruby port
//! wrapped `opts` in a one-element array; that is read too.

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::{Map, Number, Value};

use super::channel::{DEFAULT_KEY, EmitterChannel, classify};
use super::msgpack::{BINARY_EVENT, EVENT, Mp, MsgpackError, get, read_message};
use crate::socketio::Payload;

/// Most binary values one message may carry.
pub(crate) const MAX_ATTACHMENTS: usize = 1024;

/// Why an emitter message was not executed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum EmitterError {
    /// The channel is not an emitter channel (ordinary pub/sub traffic; not counted).
    #[error("not an emitter channel")]
    NotEmitterChannel,
    /// The payload is not valid msgpack.
    #[error("invalid msgpack: {0}")]
    Msgpack(#[from] MsgpackError),
    /// A request payload is not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The message decodes but does not have the shape of an emitter message.
    #[error("unexpected message shape: {0}")]
    Shape(&'static str),
    /// More binary values than [`MAX_ATTACHMENTS`].
    #[error("more than {MAX_ATTACHMENTS} binary arguments")]
    TooManyAttachments,
    /// A broadcast of a socket.io packet type other than EVENT / BINARY_EVENT.
    #[error("unsupported packet type {0}")]
    UnsupportedPacketType(i128),
    /// A request type the bridge does not execute (the adapter-to-adapter ones).
    #[error("unsupported request type {0}")]
    UnsupportedRequestType(i128),
    /// The packet names another namespace than its channel.
    #[error("packet namespace {packet:?} differs from channel namespace {channel:?}")]
    NamespaceMismatch {
        /// The namespace in the channel name.
        channel: String,
        /// The namespace in the packet.
        packet: String,
    },
}

impl EmitterError {
    /// Whether the message is well-formed but deliberately not executed (the `ignored` result).
    pub(crate) fn is_ignored(&self) -> bool {
        matches!(
            self,
            Self::UnsupportedPacketType(_) | Self::UnsupportedRequestType(_) | Self::NamespaceMismatch { .. }
        )
    }
}

/// Flags of an emitter broadcast (`opts.flags`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EmitterFlags {
    /// Drop the packet for clients that are not ready.
    pub(crate) volatile: bool,
    /// Per-message compression (ioswarm never compresses; kept for completeness).
    pub(crate) compress: Option<bool>,
    /// Deliver on the receiving node only.
    pub(crate) local: bool,
    /// Set by socket.io for `socket.broadcast` (informational).
    pub(crate) broadcast: bool,
    /// The emitter claims the arguments contain binary (informational: we look at the values).
    pub(crate) binary: bool,
    /// Ack timeout in milliseconds (emitters cannot receive acks; informational).
    pub(crate) timeout: Option<u64>,
}

/// A decoded emitter broadcast: `emit(event, ...args)` to `rooms` minus `except` in `nsp`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EmitterBroadcast {
    /// The publisher's uid (`"emitter"` for the Node emitter; empty when absent).
    pub(crate) uid: String,
    /// The namespace.
    pub(crate) nsp: String,
    /// The event name.
    pub(crate) event: String,
    /// The arguments; binary values are placeholders referring to `payload.attachments`.
    pub(crate) payload: Payload,
    /// Target rooms (empty: every socket of the namespace).
    pub(crate) rooms: Vec<String>,
    /// Rooms whose sockets are skipped.
    pub(crate) except: Vec<String>,
    /// Flags.
    pub(crate) flags: EmitterFlags,
}

/// Which sockets a request acts on (`opts` of a request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Targets {
    /// Target rooms (empty: every socket of the namespace).
    pub(crate) rooms: Vec<String>,
    /// Rooms whose sockets are skipped.
    pub(crate) except: Vec<String>,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RequestAction {
    /// REMOTE_JOIN (2): the targeted sockets join `rooms`.
    Join {
        /// The sockets.
        targets: Targets,
        /// The rooms to join.
        rooms: Vec<String>,
    },
    /// REMOTE_LEAVE (3): the targeted sockets leave `rooms`.
    Leave {
        /// The sockets.
        targets: Targets,
        /// The rooms to leave.
        rooms: Vec<String>,
    },
    /// REMOTE_DISCONNECT (4): the targeted sockets are disconnected (their whole connection
    /// when `close`).
    Disconnect {
        /// The sockets.
        targets: Targets,
        /// Close the underlying connection too.
        close: bool,
    },
    /// SERVER_SIDE_EMIT (6): an event for the servers' own handlers.
    ServerSideEmit {
        /// The event name.
        event: String,
        /// Its arguments.
        payload: Payload,
    },
}

/// A decoded request on `<key>-request#<nsp>#`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EmitterRequest {
    /// The namespace (from the channel).
    pub(crate) nsp: String,
    /// The sender's uid, when it gave one (the emitter does only for serverSideEmit).
    pub(crate) uid: Option<String>,
    /// The action.
    pub(crate) action: RequestAction,
}

/// Decodes a broadcast published on `channel` (`socket.io#<nsp>#`, `socket.io#<nsp>#<room>#`, or
/// a socket.io 1.x emitter's `<key>#emitter`).
pub(crate) fn decode_broadcast(channel: &[u8], payload: &[u8]) -> Result<EmitterBroadcast, EmitterError> {
    match classify(DEFAULT_KEY, channel) {
        Some(EmitterChannel::Broadcast { nsp, room }) => broadcast_from(nsp, room, &Bytes::copy_from_slice(payload)),
        Some(EmitterChannel::Legacy { .. }) => legacy_broadcast_from(&Bytes::copy_from_slice(payload)),
        _ => Err(EmitterError::NotEmitterChannel),
    }
}

/// Decodes a request published on `channel` (`socket.io-request#<nsp>#`): JSON when the payload
/// starts with `{` (what emitters send), msgpack otherwise (what the Node adapter sends for the
/// adapter-to-adapter types).
pub(crate) fn decode_request(channel: &[u8], payload: &[u8]) -> Result<EmitterRequest, EmitterError> {
    let Some(EmitterChannel::Request { nsp }) = classify(DEFAULT_KEY, channel) else {
        return Err(EmitterError::NotEmitterChannel);
    };
    request_from(nsp, &Bytes::copy_from_slice(payload))
}

/// [`decode_broadcast`] on a classified `<key>#<nsp>#[<room>#]` channel.
pub(super) fn broadcast_from(nsp: &str, room: Option<&str>, message: &Bytes) -> Result<EmitterBroadcast, EmitterError> {
    broadcast_in(Some(nsp), room, message)
}

/// [`decode_broadcast`] on a socket.io 1.x emitter's `<key>#emitter` channel: the namespace comes
/// from the packet.
pub(super) fn legacy_broadcast_from(message: &Bytes) -> Result<EmitterBroadcast, EmitterError> {
    broadcast_in(None, None, message)
}

/// Decodes a broadcast whose channel names namespace `channel_nsp` (`None`: the channel names
/// none, the packet's is taken) and possibly one room.
fn broadcast_in(
    channel_nsp: Option<&str>,
    room: Option<&str>,
    message: &Bytes,
) -> Result<EmitterBroadcast, EmitterError> {
    let tree = read_message(message)?;
    let raw = RawBroadcast::from_tree(&tree)?;

    // BINARY_EVENT (old Go and PHP emitters) is an EVENT whose binary values we find ourselves.
    match raw.packet_type {
        None | Some(Mp::UInt(EVENT | BINARY_EVENT)) => {}
        Some(Mp::UInt(t)) => return Err(EmitterError::UnsupportedPacketType(i128::from(*t))),
        Some(Mp::Int(t)) => return Err(EmitterError::UnsupportedPacketType(i128::from(*t))),
        Some(_) => return Err(EmitterError::Shape("packet type is not an integer")),
    }
    let packet_nsp = match raw.nsp {
        None | Some(Mp::Nil) => None,
        Some(Mp::Str(s)) => Some(String::from_utf8_lossy(s).into_owned()),
        Some(_) => return Err(EmitterError::Shape("packet nsp is not a string")),
    };
    let packet_nsp = match (channel_nsp, packet_nsp) {
        (Some(nsp), None) => nsp.to_owned(),
        (Some(nsp), Some(packet)) if packet != nsp => {
            return Err(EmitterError::NamespaceMismatch { channel: nsp.to_owned(), packet });
        }
        (Some(_), Some(packet)) => packet,
        // socket.io-redis 0.1.x took a missing nsp for `/`; socket.io 1.x' `of("chat")` meant
        // `/chat`, which today's emitters send.
        (None, None) => "/".to_owned(),
        (None, Some(packet)) if packet.is_empty() => "/".to_owned(),
        (None, Some(packet)) if !packet.starts_with('/') => format!("/{packet}"),
        (None, Some(packet)) => packet,
    };

    let (event, args) = raw.data.split_first().ok_or(EmitterError::Shape("packet data is empty"))?;
    let event = match event {
        Mp::Str(s) => std::str::from_utf8(s).map_err(|_| EmitterError::Shape("event name is not UTF-8"))?,
        _ => return Err(EmitterError::Shape("event name is not a string")),
    };
    let mut payload = Payload::empty();
    for arg in args {
        let value = to_json(arg, message, &mut payload)?.unwrap_or(Value::Null);
        payload.args.push(value);
    }

    let mut rooms = room_list(raw.rooms);
    let mut except = room_list(raw.except);
    if let Some(room) = room {
        match rooms.iter().position(|r| r == room) {
            // Emitters that PUBLISH the same message once per room: this copy serves the
            // sockets of `room` that no earlier room in the list already served.
            Some(i) if rooms.len() > 1 => {
                except.extend(rooms.drain(..i));
                rooms = vec![room.to_owned()];
            }
            Some(_) => {}
            None if rooms.is_empty() => rooms.push(room.to_owned()),
            None => {}
        }
    }

    Ok(EmitterBroadcast {
        uid: match raw.uid {
            Some(Mp::Str(s)) => String::from_utf8_lossy(s).into_owned(),
            _ => String::new(),
        },
        nsp: packet_nsp,
        event: event.to_owned(),
        payload,
        rooms,
        except,
        flags: raw.flags.map(flags_of).unwrap_or_default(),
    })
}

/// The parts of `[uid, packet, opts]` before interpretation.
struct RawBroadcast<'t, 'a> {
    uid: Option<&'t Mp<'a>>,
    packet_type: Option<&'t Mp<'a>>,
    nsp: Option<&'t Mp<'a>>,
    data: Vec<&'t Mp<'a>>,
    rooms: Option<&'t Mp<'a>>,
    except: Option<&'t Mp<'a>>,
    flags: Option<&'t Mp<'a>>,
}

impl<'t, 'a> RawBroadcast<'t, 'a> {
    fn from_tree(tree: &'t Mp<'a>) -> Result<Self, EmitterError> {
        let Mp::Array(items) = tree else {
            return Err(EmitterError::Shape("message is not an array"));
        };
        // `[uid, packet, opts]`; very old emitters sent `[packet, opts]`.
        let (uid, packet, opts) = match items.as_slice() {
            [packet @ Mp::Map(_)] => (None, packet, None),
            [packet @ Mp::Map(_), opts] => (None, packet, Some(opts)),
            [uid, packet] => (Some(uid), packet, None),
            [uid, packet, opts, ..] => (Some(uid), packet, Some(opts)),
            _ => return Err(EmitterError::Shape("message is not [uid, packet, opts]")),
        };
        let Mp::Map(packet) = packet else {
            return Err(EmitterError::Shape("packet is not a map"));
        };
        let data = match get(packet, "data") {
            Some(Mp::Array(data)) => data.iter().collect(),
            // PHP arrays with holes are encoded as maps.
            Some(Mp::Map(data)) => data.iter().map(|(_, v)| v).collect(),
            Some(_) => return Err(EmitterError::Shape("packet data is not an array")),
            None => return Err(EmitterError::Shape("packet has no data")),
        };
        let opts = match opts {
            Some(Mp::Map(opts)) => opts.as_slice(),
            // A Ruby port of socket.io 1.x' emitter packed `[rooms: …, flags: …]`, which in
            // Ruby is an array holding one hash.
            Some(Mp::Array(items)) => match items.as_slice() {
                [Mp::Map(opts)] => opts.as_slice(),
                _ => &[],
            },
            _ => &[],
        };
        Ok(Self {
            uid,
            packet_type: get(packet, "type"),
            nsp: get(packet, "nsp"),
            data,
            rooms: get(opts, "rooms"),
            except: get(opts, "except"),
            flags: get(opts, "flags"),
        })
    }
}

/// Room names from `""`, a string, an array or a map of strings (numbers are stringified).
fn room_list(value: Option<&Mp<'_>>) -> Vec<String> {
    fn push(out: &mut Vec<String>, v: &Mp<'_>) {
        let room = match v {
            Mp::Str(s) => String::from_utf8_lossy(s).into_owned(),
            Mp::UInt(n) => n.to_string(),
            Mp::Int(n) => n.to_string(),
            _ => return,
        };
        if !room.is_empty() && !out.contains(&room) {
            out.push(room);
        }
    }
    let mut out = Vec::new();
    match value {
        Some(Mp::Array(items)) => items.iter().for_each(|v| push(&mut out, v)),
        Some(Mp::Map(entries)) => entries.iter().for_each(|(_, v)| push(&mut out, v)),
        Some(v) => push(&mut out, v),
        None => {}
    }
    out
}

fn flags_of(value: &Mp<'_>) -> EmitterFlags {
    let Mp::Map(map) = value else {
        return EmitterFlags::default();
    };
    let flag = |name| get(map, name).is_some_and(truthy);
    EmitterFlags {
        volatile: flag("volatile"),
        compress: get(map, "compress").map(truthy),
        local: flag("local"),
        broadcast: flag("broadcast"),
        binary: flag("binary"),
        timeout: match get(map, "timeout") {
            Some(Mp::UInt(ms)) => Some(*ms),
            Some(Mp::Float(ms)) if ms.is_finite() && *ms >= 0.0 => Some(*ms as u64),
            _ => None,
        },
    }
}

/// JavaScript truthiness of a msgpack value.
fn truthy(value: &Mp<'_>) -> bool {
    match value {
        Mp::Nil => false,
        Mp::Bool(b) => *b,
        Mp::UInt(n) => *n != 0,
        Mp::Int(n) => *n != 0,
        Mp::Float(f) => *f != 0.0 && !f.is_nan(),
        Mp::Str(s) => !s.is_empty(),
        Mp::Ext(0, [_], true) => false, // notepack's `undefined`
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// Request types (socket.io-redis-adapter's `RequestType`).
const REMOTE_JOIN: i128 = 2;
const REMOTE_LEAVE: i128 = 3;
const REMOTE_DISCONNECT: i128 = 4;
const SERVER_SIDE_EMIT: i128 = 6;

pub(super) fn request_from(nsp: &str, message: &Bytes) -> Result<EmitterRequest, EmitterError> {
    let mut msgpack_args = None;
    let request = if message.first() == Some(&b'{') {
        serde_json::from_slice::<Value>(message).map_err(|e| EmitterError::Json(e.to_string()))?
    } else {
        let tree = read_message(message)?;
        // serverSideEmit arguments are converted on their own below, so that only their binary
        // values become attachments.
        if let Mp::Map(entries) = &tree
            && let Some(Mp::Array(data)) = get(entries, "data")
            && let Some((_, args)) = data.split_first()
        {
            let mut args_payload = Payload::empty();
            let mut values = Vec::with_capacity(args.len());
            for arg in args {
                values.push(to_json(arg, message, &mut args_payload)?.unwrap_or(Value::Null));
            }
            args_payload.args = values;
            msgpack_args = Some(args_payload);
        }
        to_json(&tree, message, &mut Payload::empty())?.unwrap_or(Value::Null)
    };
    let Value::Object(request) = request else {
        return Err(EmitterError::Shape("request is not an object"));
    };
    let uid = match request.get("uid") {
        Some(Value::String(uid)) => Some(uid.clone()),
        _ => None,
    };
    let kind = match request.get("type") {
        Some(Value::Number(n)) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .ok_or(EmitterError::Shape("request type is not an integer"))?,
        _ => return Err(EmitterError::Shape("request has no integer type")),
    };
    let targets = || {
        let opts = request.get("opts");
        Targets {
            rooms: json_rooms(opts.and_then(|o| o.get("rooms"))),
            except: json_rooms(opts.and_then(|o| o.get("except"))),
        }
    };
    let action = match kind {
        REMOTE_JOIN => RequestAction::Join { targets: targets(), rooms: json_rooms(request.get("rooms")) },
        REMOTE_LEAVE => RequestAction::Leave { targets: targets(), rooms: json_rooms(request.get("rooms")) },
        REMOTE_DISCONNECT => {
            RequestAction::Disconnect { targets: targets(), close: request.get("close").is_some_and(json_truthy) }
        }
        SERVER_SIDE_EMIT => {
            let Some(Value::Array(data)) = request.get("data") else {
                return Err(EmitterError::Shape("serverSideEmit has no data array"));
            };
            let Some((Value::String(event), args)) = data.split_first() else {
                return Err(EmitterError::Shape("serverSideEmit has no event name"));
            };
            let payload = msgpack_args.take().unwrap_or_else(|| Payload::json(args.to_vec()));
            RequestAction::ServerSideEmit { event: event.clone(), payload }
        }
        other => return Err(EmitterError::UnsupportedRequestType(other)),
    };
    Ok(EmitterRequest { nsp: nsp.to_owned(), uid, action })
}

fn json_rooms(value: Option<&Value>) -> Vec<String> {
    fn push(out: &mut Vec<String>, v: &Value) {
        let room = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        if !room.is_empty() && !out.contains(&room) {
            out.push(room);
        }
    }
    let mut out = Vec::new();
    match value {
        Some(Value::Array(items)) => items.iter().for_each(|v| push(&mut out, v)),
        Some(Value::Object(map)) => map.values().for_each(|v| push(&mut out, v)),
        Some(v) => push(&mut out, v),
        None => {}
    }
    out
}

fn json_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// msgpack → JSON.

/// Converts a msgpack value to the JSON socket.io sends, moving binary values into `payload`'s
/// attachments. `None` is JavaScript's `undefined` (`null` in arrays, omitted in maps).
fn to_json(v: &Mp<'_>, message: &Bytes, payload: &mut Payload) -> Result<Option<Value>, EmitterError> {
    Ok(Some(match v {
        Mp::Nil => Value::Null,
        Mp::Bool(b) => Value::Bool(*b),
        Mp::UInt(n) => Value::from(*n),
        Mp::Int(n) => Value::from(*n),
        Mp::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Mp::Str(s) => match std::str::from_utf8(s) {
            Ok(s) => Value::String(s.to_owned()),
            // Binary sent as a msgpack `str` (older emitters had no `bin`).
            Err(_) => binary(message, s, payload)?,
        },
        Mp::Bin(b) => binary(message, b, payload)?,
        Mp::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(to_json(item, message, payload)?.unwrap_or(Value::Null));
            }
            Value::Array(out)
        }
        Mp::Map(entries) => {
            // A repeated key keeps its last value (like a JS object); earlier values are not
            // converted, so their binary does not become an attachment nobody refers to.
            let keys = entries.iter().map(|(k, _)| map_key(k)).collect::<Result<Vec<_>, _>>()?;
            let mut last = std::collections::HashMap::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                last.insert(key.as_str(), i);
            }
            let mut out = Map::new();
            for (i, ((_, v), key)) in entries.iter().zip(&keys).enumerate() {
                if last.get(key.as_str()) != Some(&i) {
                    continue;
                }
                if let Some(v) = to_json(v, message, payload)? {
                    out.insert(key.clone(), v);
                }
            }
            Value::Object(out)
        }
        Mp::Ext(ty, data, fixed) => match (*ty, data.len(), *fixed) {
            // notepack: `undefined`.
            (0, 1, true) => return Ok(None),
            // notepack: ArrayBuffer (ext 8/16/32 with type 0).
            (0, _, false) => binary(message, data, payload)?,
            // notepack's old Date: milliseconds as i32 high word, u32 low word.
            (0, 8, true) => {
                let hi = i64::from(i32::from_be_bytes([data[0], data[1], data[2], data[3]]));
                let lo = i64::from(u32::from_be_bytes([data[4], data[5], data[6], data[7]]));
                date_json(hi * (1 << 32) + lo)
            }
            // msgpack timestamps (notepack's Date).
            (-1, 4 | 8 | 12, _) => timestamp_json(data),
            // Any other extension: notepack's `[type, Buffer]`.
            (ty, _, _) => Value::Array(vec![Value::from(ty), binary(message, data, payload)?]),
        },
    }))
}

fn binary(_message: &Bytes, bytes: &[u8], payload: &mut Payload) -> Result<Value, EmitterError> {
    if payload.attachments.len() >= MAX_ATTACHMENTS {
        return Err(EmitterError::TooManyAttachments);
    }
    // Copied: a slice would keep the connection's whole read buffer alive for as long as
    // any recipient still has the attachment queued.
    Ok(payload.placeholder(Bytes::copy_from_slice(bytes)))
}

/// Object keys the way JavaScript stringifies them.
fn map_key(k: &Mp<'_>) -> Result<String, EmitterError> {
    Ok(match k {
        Mp::Str(s) | Mp::Bin(s) => String::from_utf8_lossy(s).into_owned(),
        Mp::UInt(n) => n.to_string(),
        Mp::Int(n) => n.to_string(),
        Mp::Float(f) => f.to_string(),
        Mp::Bool(b) => b.to_string(),
        Mp::Nil => "null".to_owned(),
        Mp::Ext(0, [_], true) => "undefined".to_owned(),
        Mp::Array(_) | Mp::Map(_) | Mp::Ext(..) => return Err(EmitterError::Shape("map key is not a scalar")),
    })
}

fn timestamp_json(data: &[u8]) -> Value {
    let be32 = |i: usize| data.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes).unwrap_or(0);
    let (secs, nanos) = match data.len() {
        4 => (i64::from(be32(0)), 0),
        8 => {
            let hi = be32(0);
            (i64::from(hi & 0x3) << 32 | i64::from(be32(4)), hi >> 2)
        }
        _ => {
            let secs = data.get(4..12).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes).unwrap_or(0);
            (secs, be32(0))
        }
    };
    match secs.checked_mul(1000) {
        Some(ms) => date_json(ms + i64::from(nanos / 1_000_000)),
        None => Value::Null,
    }
}

/// A JavaScript Date (ms since the epoch) as `JSON.stringify` writes it: an ISO-8601 string, or
/// `null` outside the Date range.
fn date_json(ms: i64) -> Value {
    const MAX_MS: i64 = 8_640_000_000_000_000;
    if !(-MAX_MS..=MAX_MS).contains(&ms) {
        return Value::Null;
    }
    let days = ms.div_euclid(86_400_000);
    let ms_of_day = ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);

    let mut s = String::with_capacity(27);
    let _ = if (0..=9999).contains(&year) {
        write!(s, "{year:04}")
    } else {
        write!(s, "{}{:06}", if year < 0 { '-' } else { '+' }, year.abs())
    };
    let _ = write!(
        s,
        "-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    );
    Value::String(s)
}
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    pub(crate) fn mp(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encode");
        out
    }

    pub(crate) fn s(v: &str) -> rmpv::Value {
        rmpv::Value::from(v)
    }

    pub(crate) fn map(entries: Vec<(&str, rmpv::Value)>) -> rmpv::Value {
        rmpv::Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    pub(crate) fn arr(items: Vec<rmpv::Value>) -> rmpv::Value {
        rmpv::Value::Array(items)
    }

    /// `[uid, {type, data, nsp}, {rooms, flags, except}]` built with rmpv.
    pub(crate) fn message(data: Vec<rmpv::Value>, opts: rmpv::Value) -> Vec<u8> {
        mp(&arr(vec![
            s("emitter"),
            map(vec![("type", rmpv::Value::from(2)), ("data", arr(data)), ("nsp", s("/"))]),
            opts,
        ]))
    }

    // Captured from @socket.io/redis-emitter 5.1.0 + notepack.io 3.0.1 (tests/emitter/vectors.mjs).
    pub(crate) const EMIT_ALL: &str = "93a7656d697474657283a47479706502a46461746198a568656c6c6fa5776f726c6401cb4004000000000000fdc0c381a1619201a178a36e7370a12f83a5726f6f6d7390a5666c61677380a665786365707490";
    const EMIT_ROOM: &str = "93a7656d697474657283a47479706502a46461746192a265762aa36e7370a12f83a5726f6f6d7391a5726f6f6d31a5666c61677380a665786365707490";
    const EMIT_ROOMS_EXCEPT: &str = "93a7656d697474657283a47479706502a46461746191a26576a36e7370a12f83a5726f6f6d7392a27231a27232a5666c61677380a665786365707491a27233";
    const EMIT_NSP: &str = "93a7656d697474657283a47479706502a46461746192a26576a178a36e7370a72f637573746f6d83a5726f6f6d7390a5666c61677380a665786365707490";
    const EMIT_BINARY: &str = "93a7656d697474657283a47479706502a46461746193a362696ec40301020381a66e6573746564c401ffa36e7370a12f83a5726f6f6d7390a5666c61677380a665786365707490";
    const EMIT_TYPED_ARRAY: &str = "93a7656d697474657283a47479706502a46461746192a27461c4020908a36e7370a12f83a5726f6f6d7390a5666c61677380a665786365707490";
    const EMIT_VOLATILE: &str = "93a7656d697474657283a47479706502a46461746191a176a36e7370a12f83a5726f6f6d7390a5666c61677381a8766f6c6174696c65c3a665786365707490";
    const EMIT_COMPRESS: &str = "93a7656d697474657283a47479706502a46461746191a163a36e7370a12f83a5726f6f6d7391a172a5666c61677381a8636f6d7072657373c2a665786365707490";
    const EMIT_DATE: &str = "93a7656d697474657283a47479706502a46461746193a464617465d7ffa1a5d60065937d25d6ff00000000a36e7370a12f83a5726f6f6d7390a5666c61677380a665786365707490";
    const EMIT_UNDEFINED: &str = "93a7656d697474657283a47479706502a46461746193a175c081a16a01a36e7370a12f83a5726f6f6d7390a5666c61677380a665786365707490";
    const EMIT_BIG: &str = "93a7656d697474657283a47479706502a46461746196a3626967cf0000010000000000d3ffffff0000000000cb3fb999999999999acdffffd1ff7fa36e7370a12f83a5726f6f6d7390a5666c61677380a665786365707490";

    fn decode(channel: &str, payload_hex: &str) -> EmitterBroadcast {
        decode_broadcast(channel.as_bytes(), &hex(payload_hex)).expect("decodes")
    }

    #[test]
    fn other_channels_are_not_emitter_channels() {
        assert_eq!(decode_broadcast(b"chat", b"\x90"), Err(EmitterError::NotEmitterChannel));
    }

    #[test]
    fn node_emitter_emit_to_all() {
        let b = decode("socket.io#/#", EMIT_ALL);
        assert_eq!(b.uid, "emitter");
        assert_eq!(b.nsp, "/");
        assert_eq!(b.event, "hello");
        assert_eq!(
            b.payload.args,
            vec![json!("world"), json!(1), json!(2.5), json!(-3), json!(null), json!(true), json!({"a": [1, "x"]})]
        );
        assert!(b.payload.attachments.is_empty());
        assert!(b.rooms.is_empty() && b.except.is_empty());
        assert_eq!(b.flags, EmitterFlags::default());
        // Integers stay integers, floats stay floats.
        assert!(b.payload.args[1].is_u64());
        assert!(b.payload.args[2].is_f64());
    }

    #[test]
    fn node_emitter_rooms_except_nsp_flags() {
        let b = decode("socket.io#/#room1#", EMIT_ROOM);
        assert_eq!((b.rooms, b.except, b.payload.args), (vec!["room1".to_owned()], vec![], vec![json!(42)]));

        let b = decode("socket.io#/#", EMIT_ROOMS_EXCEPT);
        assert_eq!((b.rooms, b.except), (vec!["r1".to_owned(), "r2".to_owned()], vec!["r3".to_owned()]));
        assert!(b.payload.args.is_empty());

        let b = decode("socket.io#/custom#", EMIT_NSP);
        assert_eq!((b.nsp.as_str(), b.event.as_str()), ("/custom", "ev"));

        let b = decode("socket.io#/#", EMIT_VOLATILE);
        assert!(b.flags.volatile);

        let b = decode("socket.io#/#r#", EMIT_COMPRESS);
        assert_eq!(b.flags.compress, Some(false));
        assert!(!b.flags.volatile);
    }

    #[test]
    fn node_emitter_binary_becomes_attachments() {
        let b = decode("socket.io#/#", EMIT_BINARY);
        assert_eq!(
            b.payload.args,
            vec![json!({"_placeholder": true, "num": 0}), json!({"nested": {"_placeholder": true, "num": 1}})]
        );
        assert_eq!(b.payload.attachments, vec![Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[255])]);

        let b = decode("socket.io#/#", EMIT_TYPED_ARRAY);
        assert_eq!(b.payload.attachments, vec![Bytes::from_static(&[9, 8])]);
    }

    #[test]
    fn node_emitter_dates_undefined_and_wide_numbers() {
        let b = decode("socket.io#/#", EMIT_DATE);
        assert_eq!(b.payload.args, vec![json!("2024-01-02T03:04:05.678Z"), json!("1970-01-01T00:00:00.000Z")]);

        let b = decode("socket.io#/#", EMIT_UNDEFINED);
        assert_eq!(b.payload.args, vec![json!(null), json!({"j": 1})]);

        let b = decode("socket.io#/#", EMIT_BIG);
        assert_eq!(
            b.payload.args,
            vec![json!(1_099_511_627_776_u64), json!(-1_099_511_627_776_i64), json!(0.1), json!(65535), json!(-129)]
        );
    }

    #[test]
    fn node_emitter_requests() {
        let r = decode_request(
            b"socket.io-request#/#",
            br#"{"type":2,"opts":{"rooms":["r1"],"except":["r2"]},"rooms":["a","b"]}"#,
        )
        .expect("join");
        assert_eq!(r.nsp, "/");
        assert_eq!(r.uid, None);
        assert_eq!(
            r.action,
            RequestAction::Join {
                targets: Targets { rooms: vec!["r1".into()], except: vec!["r2".into()] },
                rooms: vec!["a".into(), "b".into()]
            }
        );
        let r = decode_request(b"socket.io-request#/#", br#"{"type":3,"opts":{"rooms":[],"except":[]},"rooms":["a"]}"#)
            .expect("leave");
        assert_eq!(r.action, RequestAction::Leave { targets: Targets::default(), rooms: vec!["a".into()] });
        let r = decode_request(
            b"socket.io-request#/chat#",
            br#"{"type":4,"opts":{"rooms":["r1"],"except":[]},"close":true}"#,
        )
        .expect("disconnect");
        assert_eq!(r.nsp, "/chat");
        assert_eq!(
            r.action,
            RequestAction::Disconnect { targets: Targets { rooms: vec!["r1".into()], except: vec![] }, close: true }
        );
        let r = decode_request(b"socket.io-request#/#", br#"{"uid":"emitter","type":6,"data":["hello","world",1]}"#)
            .expect("serverSideEmit");
        assert_eq!(r.uid.as_deref(), Some("emitter"));
        assert_eq!(
            r.action,
            RequestAction::ServerSideEmit {
                event: "hello".into(),
                payload: Payload::json(vec![json!("world"), json!(1)])
            }
        );
    }

    #[test]
    fn unsupported_requests_are_ignored_not_invalid() {
        for body in [r#"{"type":0,"requestId":"x","opts":{}}"#, r#"{"type":7,"uid":"abc"}"#, r#"{"type":99}"#] {
            let err = decode_request(b"socket.io-request#/#", body.as_bytes()).expect_err(body);
            assert!(err.is_ignored(), "{body}: {err}");
        }
        for body in [&b"{"[..], b"{\"type\":\"2\"}", b"{}", b"{\"type\":6,\"data\":[]}", b"{\"type\":6}", b"[1]"] {
            let err = decode_request(b"socket.io-request#/#", body).expect_err("invalid");
            assert!(!err.is_ignored(), "{err}");
        }
        // The Node adapter's msgpack requests (e.g. BROADCAST with ack) decode and are ignored.
        let msgpack = mp(&map(vec![("uid", s("abc")), ("type", rmpv::Value::from(7))]));
        assert!(decode_request(b"socket.io-request#/#", &msgpack).expect_err("ignored").is_ignored());
    }

    #[test]
    fn every_integer_width_and_float32() {
        let ints: Vec<u8> = [
            &[0x95][..],
            &[0xa1, b'e'],
            &[0xcc, 0x07],
            &[0xcd, 0x00, 0x07],
            &[0xce, 0, 0, 0, 0x07],
            &[0xcf, 0, 0, 0, 0, 0, 0, 0, 0x07],
        ]
        .concat();
        let negs: Vec<u8> = [
            &[0x96, 0xa1, b'e'][..],
            &[0xff],
            &[0xd0, 0xfe],
            &[0xd1, 0xff, 0xfd],
            &[0xd2, 0xff, 0xff, 0xff, 0xfc],
            &[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb],
        ]
        .concat();
        let wrap = |data: &[u8], ty: &[u8]| -> Vec<u8> {
            [&[0x93, 0xa0, 0x83, 0xa4][..], b"type", ty, &[0xa4], b"data", data, &[0xa3], b"nsp", &[0xa1, b'/', 0x80]]
                .concat()
        };
        for ty in [
            &[0x02][..],
            &[0xcc, 0x02],
            &[0xcd, 0, 2],
            &[0xce, 0, 0, 0, 2],
            &[0xcf, 0, 0, 0, 0, 0, 0, 0, 2],
            &[0xd0, 2],
            &[0xd3, 0, 0, 0, 0, 0, 0, 0, 2],
            &[0x05],
        ] {
            let b = decode_broadcast(b"socket.io#/#", &wrap(&ints, ty)).expect("ints");
            assert_eq!(b.payload.args, vec![json!(7), json!(7), json!(7), json!(7)]);
            assert!(b.payload.args.iter().all(Value::is_u64));
        }
        let b = decode_broadcast(b"socket.io#/#", &wrap(&negs, &[2])).expect("negative ints");
        assert_eq!(b.payload.args, vec![json!(-1), json!(-2), json!(-3), json!(-4), json!(-5)]);
        let float32 = [&[0x92, 0xa1, b'f', 0xca][..], &1.5f32.to_be_bytes()].concat();
        let b = decode_broadcast(b"socket.io#/#", &wrap(&float32, &[2])).expect("float32");
        assert_eq!(b.payload.args, vec![json!(1.5)]);
        assert!(b.payload.args[0].is_f64());
        let nan = [&[0x92, 0xa1, b'f', 0xcb][..], &f64::NAN.to_be_bytes()].concat();
        assert_eq!(decode_broadcast(b"socket.io#/#", &wrap(&nan, &[2])).expect("nan").payload.args, vec![json!(null)]);
    }

    #[test]
    fn sloppy_opts_flags_and_rooms() {
        let data = || vec![s("ev"), s("x")];
        // opts as an empty array (PHP `array()`), flags as an empty array, no except.
        let b = decode_broadcast(b"socket.io#/#", &message(data(), arr(vec![]))).expect("empty opts");
        assert!(b.rooms.is_empty() && b.except.is_empty());
        let opts = map(vec![("rooms", s("")), ("flags", arr(vec![]))]);
        let b = decode_broadcast(b"socket.io#/#", &message(data(), opts)).expect("rooms \"\"");
        assert!(b.rooms.is_empty());
        let opts = map(vec![
            ("rooms", s("lobby")),
            ("except", s("banned")),
            (
                "flags",
                map(vec![
                    ("volatile", rmpv::Value::from(1)),
                    ("local", rmpv::Value::Boolean(true)),
                    ("timeout", rmpv::Value::from(500)),
                ]),
            ),
        ]);
        let b = decode_broadcast(b"socket.io#/#", &message(data(), opts)).expect("rooms as string");
        assert_eq!((b.rooms, b.except), (vec!["lobby".to_owned()], vec!["banned".to_owned()]));
        assert!(b.flags.volatile && b.flags.local);
        assert_eq!(b.flags.timeout, Some(500));
        // PHP arrays with holes are maps; numbers are room names too.
        let rooms =
            rmpv::Value::Map(vec![(rmpv::Value::from(0), s("a")), (rmpv::Value::from(2), rmpv::Value::from(7))]);
        let b = decode_broadcast(b"socket.io#/#", &message(data(), map(vec![("rooms", rooms)]))).expect("rooms as map");
        assert_eq!(b.rooms, vec!["a".to_owned(), "7".to_owned()]);
        // Missing opts altogether, missing nsp, no uid (very old emitters).
        let old = mp(&arr(vec![map(vec![("type", rmpv::Value::from(2)), ("data", arr(data()))])]));
        let b = decode_broadcast(b"socket.io#/#", &old).expect("old");
        assert_eq!((b.nsp.as_str(), b.uid.as_str(), b.payload.args.clone()), ("/", "", vec![json!("x")]));
        // Missing nsp on a namespaced channel: the channel's namespace.
        let b = decode_broadcast(b"socket.io#/chat#", &old).expect("nsp from channel");
        assert_eq!(b.nsp, "/chat");
    }

    #[test]
    fn one_publish_per_room_delivers_once() {
        let opts = || map(vec![("rooms", arr(vec![s("a"), s("b"), s("c")])), ("except", arr(vec![s("x")]))]);
        let per_room: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|room| {
                decode_broadcast(format!("socket.io#/#{room}#").as_bytes(), &message(vec![s("ev")], opts()))
                    .expect("per room")
            })
            .map(|b| (b.rooms, b.except))
            .collect();
        let v = |xs: &[&str]| xs.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            per_room,
            vec![(v(&["a"]), v(&["x"])), (v(&["b"]), v(&["x", "a"])), (v(&["c"]), v(&["x", "a", "b"]))]
        );
        // A room channel with no rooms in opts targets the channel's room.
        let b = decode_broadcast(b"socket.io#/#solo#", &message(vec![s("ev")], map(vec![]))).expect("solo");
        assert_eq!(b.rooms, v(&["solo"]));
    }

    #[test]
    fn binary_as_str_bin_and_ext() {
        // str with invalid UTF-8 (binary from an emitter without `bin`), ext type 0 (old
        // notepack ArrayBuffer), fixext1 type 0 (undefined) and another ext type.
        let data: Vec<u8> = [
            &[0x95, 0xa1, b'e', 0xa2, 0xff, 0xfe][..],
            &[0xc7, 0x02, 0x00, 0x01, 0x02],
            &[0xd4, 0x00, 0x00],
            &[0xd5, 0x05, 0xaa, 0xbb],
        ]
        .concat();
        let msg = [&[0x93, 0xa0, 0x82, 0xa4][..], b"type", &[0x05, 0xa4], b"data", &data, &[0x80]].concat();
        let b = decode_broadcast(b"socket.io#/#", &msg).expect("binary variants");
        assert_eq!(
            b.payload.args,
            vec![
                json!({"_placeholder": true, "num": 0}),
                json!({"_placeholder": true, "num": 1}),
                json!(null),
                json!([5, {"_placeholder": true, "num": 2}])
            ]
        );
        assert_eq!(
            b.payload.attachments,
            vec![Bytes::from_static(&[0xff, 0xfe]), Bytes::from_static(&[1, 2]), Bytes::from_static(&[0xaa, 0xbb])]
        );
    }

    /// What an old PHP emitter publishes for a BINARY_EVENT whose data items are `items`
    /// (already packed): `[uid, {type: 5, data, nsp}, {rooms: [], flags: []}]`, with every 0xda
    /// byte rewritten into 0xd8 and every 0xdb into 0xd9.
    fn php_message(items: &[&[u8]]) -> Vec<u8> {
        let len = u8::try_from(items.len()).expect("fixarray");
        let raw = [
            &[0x93, 0xa7][..],
            b"emitter",
            &[0x83, 0xa4],
            b"type",
            &[0x05, 0xa4],
            b"data",
            &[0x90 | len],
            &items.concat(),
            &[0xa3],
            b"nsp",
            &[0xa1, b'/', 0x82, 0xa5],
            b"rooms",
            &[0x90, 0xa5],
            b"flags",
            &[0x90],
        ]
        .concat();
        raw.iter()
            .map(|b| match b {
                0xda => 0xd8,
                0xdb => 0xd9,
                b => *b,
            })
            .collect()
    }

    #[test]
    fn old_php_emitter_byte_rewriting() {
        // A 300-byte binary string packed as str16 (0xda 01 2c), rewritten to 0xd8.
        let blob: Vec<u8> = (0..300u32).map(|i| (i % 200) as u8).collect();
        let str16 = [&[0xda, 0x01, 0x2c][..], &blob].concat();
        let b = decode_broadcast(b"socket.io#/#", &php_message(&[b"\xa4blob", &str16])).expect("php");
        assert_eq!(b.event, "blob");
        assert_eq!(b.payload.args, vec![json!({"_placeholder": true, "num": 0})]);
        assert_eq!(b.payload.attachments, vec![Bytes::from(blob.clone())]);

        // A str32 (0xdb) rewritten to 0xd9 (old packers have no str8).
        let str32 = [&[0xdb, 0, 0, 0x01, 0x2c][..], &blob].concat();
        let b = decode_broadcast(b"socket.io#/#", &php_message(&[b"\xa4blob", &str32])).expect("php str32");
        assert_eq!(b.payload.attachments, vec![Bytes::from(blob.clone())]);

        // A modern packer's real str8 (0xd9) next to a rewritten str16.
        let text = "t".repeat(40);
        let str8 = [&[0xd9, 40][..], text.as_bytes()].concat();
        let b = decode_broadcast(b"socket.io#/#", &php_message(&[b"\xa4blob", &str16, &str8])).expect("php str8");
        assert_eq!(b.payload.args[1], json!(text));
        assert_eq!(b.payload.attachments, vec![Bytes::from(blob)]);

        // A standard message with a real str8 is read the standard way.
        let b =
            decode_broadcast(b"socket.io#/#", &message(vec![s("ev"), s(&"y".repeat(100))], map(vec![]))).expect("str8");
        assert_eq!(b.payload.args, vec![json!("y".repeat(100))]);
    }

    /// Every 0xda byte of `packed` rewritten into 0xd8 and every 0xdb into 0xd9, as the PHP
    /// socket.io-emitter did to a BINARY_EVENT message.
    fn php_rewrite(packed: &[u8]) -> Vec<u8> {
        packed
            .iter()
            .map(|b| match b {
                0xda => 0xd8,
                0xdb => 0xd9,
                b => *b,
            })
            .collect()
    }

    /// `[packet, opts]` built with rmpv (a packer with str 8 and bin, like msgpack-php ≥ 2).
    fn v1_message(packet: Vec<(&str, rmpv::Value)>, opts: rmpv::Value) -> Vec<u8> {
        mp(&arr(vec![map(packet), opts]))
    }

    // What the PHP socket.io-emitter of socket.io 1.x publishes on `socket.io#emitter`, as
    // msgpack-php packs it without str 8 (`msgpack.use_str8_serialization=0`, i.e. msgpack-php
    // 0.5 of 2014): `emit('news', 'hello')` is `[{type: 2, data: ["news", "hello"], nsp: "/"},
    // {rooms: [], flags: []}]` (empty PHP arrays are msgpack arrays).
    pub(crate) const PHP_V1_TEXT: &str =
        "9283a47479706502a46461746192a46e657773a568656c6c6fa36e7370a12f82a5726f6f6d7390a5666c61677390";
    // `of('/chat')->in('r1')->emit('file', new Binary(<bytes 0x80..0xa7>), str_repeat('t', 33))`:
    // type 5, flags {binary: true}, both 40- and 33-byte strings packed as raw 16 (0xda) and
    // rewritten to 0xd8.
    const PHP_V1_BINARY: &str = concat!(
        "9283a47479706505a46461746193a466696c65d80028808182838485868788898a8b8c8d8e8f9091929394",
        "95969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7d80021747474747474747474747474747474747474747474",
        "747474747474747474747474a36e7370a52f6368617482a5726f6f6d7391a27231a5666c61677381a6",
        "62696e617279c3"
    );

    #[test]
    fn socketio_1x_emitter_bytes() {
        let b = decode_broadcast(b"socket.io#emitter", &hex(PHP_V1_TEXT)).expect("text");
        assert_eq!((b.nsp.as_str(), b.event.as_str(), b.uid.as_str()), ("/", "news", ""));
        assert_eq!(b.payload.args, vec![json!("hello")]);
        assert!(b.payload.attachments.is_empty());
        assert_eq!((b.rooms, b.except, b.flags), (vec![], vec![], EmitterFlags::default()));

        let b = decode_broadcast(b"socket.io#emitter", &hex(PHP_V1_BINARY)).expect("binary");
        assert_eq!((b.nsp.as_str(), b.event.as_str()), ("/chat", "file"));
        assert_eq!(b.payload.args, vec![json!({"_placeholder": true, "num": 0}), json!("t".repeat(33))]);
        assert_eq!(b.payload.attachments, vec![Bytes::from((0x80..0xa8).collect::<Vec<u8>>())]);
        assert_eq!(b.rooms, vec!["r1".to_owned()]);
        assert!(b.flags.binary && !b.flags.volatile);

        // Any key: `'key' => 'myapp'` publishes on `myapp#emitter`.
        let b = decode_broadcast(b"myapp#emitter", &hex(PHP_V1_TEXT)).expect("custom key");
        assert_eq!(b.event, "news");
    }

    #[test]
    fn socketio_1x_emitter_namespaces_rooms_flags() {
        let ev = || arr(vec![s("ev"), rmpv::Value::from(1)]);
        let decode = |packet, opts| decode_broadcast(b"socket.io#emitter", &v1_message(packet, opts));
        // The first PHP emitter sent no nsp at all; `of("chat")` and `of("")`.
        for (nsp, expected) in [(None, "/"), (Some(s("/")), "/"), (Some(s("chat")), "/chat"), (Some(s("")), "/")] {
            let mut packet = vec![("type", rmpv::Value::from(2)), ("data", ev())];
            if let Some(nsp) = nsp {
                packet.push(("nsp", nsp));
            }
            let b = decode(packet, map(vec![])).expect("nsp");
            assert_eq!(b.nsp, expected);
            assert_eq!(b.payload.args, vec![json!(1)]);
        }
        // A namespace the channel does not name is never a mismatch.
        let packet = || vec![("type", rmpv::Value::from(2)), ("data", ev()), ("nsp", s("/admin"))];
        let opts = map(vec![
            ("rooms", arr(vec![s("a"), s("b")])),
            ("flags", map(vec![("volatile", rmpv::Value::Boolean(true)), ("broadcast", rmpv::Value::Boolean(true))])),
        ]);
        let b = decode(packet(), opts.clone()).expect("rooms and flags");
        assert_eq!((b.nsp.as_str(), b.rooms.clone()), ("/admin", vec!["a".to_owned(), "b".to_owned()]));
        assert!(b.flags.volatile && b.flags.broadcast);
        // The Ruby port's `[packet, [{rooms, flags}]]`.
        let b = decode(packet(), arr(vec![opts])).expect("ruby opts");
        assert_eq!(b.rooms, vec!["a".to_owned(), "b".to_owned()]);
        assert!(b.flags.volatile);
        // The Java port's flags carry `nsp: nil`; PHP's rooms with holes are a map.
        let opts = map(vec![
            ("rooms", rmpv::Value::Map(vec![(rmpv::Value::from(1), s("x"))])),
            ("flags", map(vec![("nsp", rmpv::Value::Nil), ("json", rmpv::Value::Boolean(true))])),
        ]);
        let b = decode(packet(), opts).expect("java flags");
        assert_eq!((b.rooms, b.flags), (vec!["x".to_owned()], EmitterFlags::default()));
        // Today's `[uid, packet, opts]` on the old channel reads too (the uid is not checked).
        let b = decode_broadcast(b"socket.io#emitter", &hex(EMIT_NSP)).expect("current format");
        assert_eq!((b.nsp.as_str(), b.uid.as_str()), ("/custom", "emitter"));
        // Packet type 3 is ignored, a packet that is not a map is invalid.
        let err = decode(vec![("type", rmpv::Value::from(3)), ("data", ev())], map(vec![])).expect_err("type 3");
        assert!(err.is_ignored());
        for bad in [mp(&arr(vec![s("p"), map(vec![])])), mp(&arr(vec![])), b"\xc1".to_vec(), hex(&PHP_V1_TEXT[..20])] {
            let err = decode_broadcast(b"socket.io#emitter", &bad).expect_err("invalid");
            assert!(!err.is_ignored(), "{err}");
        }
    }

    /// `bytes` as a msgpack str of the smallest width (str 8 from 32 bytes, as msgpack-php ≥ 2).
    fn str_of(bytes: &[u8]) -> Vec<u8> {
        let n = bytes.len();
        let header = match u32::try_from(n).expect("fits") {
            n @ 0..=31 => vec![0xa0 | n as u8],
            n @ 32..=255 => vec![0xd9, n as u8],
            n @ 256..=65_535 => [&[0xda][..], &(n as u16).to_be_bytes()].concat(),
            n => [&[0xdb][..], &n.to_be_bytes()].concat(),
        };
        [header, bytes.to_vec()].concat()
    }

    #[test]
    fn socketio_1x_emitter_binary_round_trips() {
        // Packed with str 8, then rewritten: text of every length stays text, binary of every
        // length becomes an attachment with the same bytes (none of them 0xda/0xdb, which the
        // emitter itself corrupts), including a real str 8 next to a rewritten raw 32.
        let binary = |n: usize| (0..n).map(|i| 0x80 | (i % 0x50) as u8).collect::<Vec<u8>>();
        for n in [1, 31, 32, 255, 256, 65_535, 65_536, 70_000] {
            let text = "é".repeat(n / 2 + 1);
            let data =
                [&[0x94][..], &str_of(b"blob"), &str_of(text.as_bytes()), &str_of(&binary(n)), &str_of(&[b'm'; 40])]
                    .concat();
            let packed = [
                &[0x92, 0x83, 0xa4][..],
                b"type",
                &[0x05, 0xa4],
                b"data",
                &data,
                &[0xa3],
                b"nsp",
                &[0xa1, b'/', 0x82, 0xa5],
                b"rooms",
                &[0x90, 0xa5],
                b"flags",
                &[0x90],
            ]
            .concat();
            let b =
                decode_broadcast(b"socket.io#emitter", &php_rewrite(&packed)).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(
                b.payload.args,
                vec![json!(text), json!({"_placeholder": true, "num": 0}), json!("m".repeat(40))],
                "{n}"
            );
            assert_eq!(b.payload.attachments, vec![Bytes::from(binary(n))], "{n}");
            // Not rewritten (an emitter that packs bin): the same values.
            let b = decode_broadcast(b"socket.io#emitter", &packed).unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(b.payload.attachments, vec![Bytes::from(binary(n))], "{n}");
        }
    }

    #[test]
    fn ignored_and_invalid_broadcasts() {
        let with_type = |t: i64| {
            mp(&arr(vec![
                s("u"),
                map(vec![("type", rmpv::Value::from(t)), ("data", arr(vec![s("ev")])), ("nsp", s("/"))]),
                map(vec![]),
            ]))
        };
        assert_eq!(decode_broadcast(b"socket.io#/#", &with_type(3)), Err(EmitterError::UnsupportedPacketType(3)));
        assert!(decode_broadcast(b"socket.io#/#", &with_type(-1)).expect_err("negative").is_ignored());
        let err = decode_broadcast(b"socket.io#/chat#", &with_type(2)).expect_err("nsp mismatch");
        assert!(err.is_ignored());

        let invalid: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("nil", vec![0xc0]),
            ("reserved", vec![0x91, 0xc1]),
            ("truncated", hex(&EMIT_ALL[..EMIT_ALL.len() - 2])),
            ("trailing", [hex(EMIT_ALL), vec![0]].concat()),
            ("huge array", vec![0xdd, 0xff, 0xff, 0xff, 0xff]),
            ("huge map", vec![0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0]),
            ("huge bin", vec![0xc6, 0xff, 0xff, 0xff, 0xff]),
            ("huge ext", vec![0xc9, 0xff, 0xff, 0xff, 0xff, 0x01]),
            ("too deep", [vec![0x91; 200], vec![0xc0]].concat()),
            ("packet not a map", mp(&arr(vec![s("u"), s("p"), map(vec![])]))),
            ("no data", mp(&arr(vec![s("u"), map(vec![("type", rmpv::Value::from(2))]), map(vec![])]))),
            ("empty data", message(vec![], map(vec![]))),
            ("event not a string", message(vec![rmpv::Value::from(1)], map(vec![]))),
            ("event not utf-8", [&[0x93, 0xa0, 0x81, 0xa4][..], b"data", &[0x91, 0xa1, 0xff, 0x80]].concat()),
            (
                "type is a string",
                mp(&arr(vec![s("u"), map(vec![("type", s("2")), ("data", arr(vec![s("ev")]))]), map(vec![])])),
            ),
            (
                "map key is a map",
                [
                    &[0x93, 0xa0, 0x82, 0xa4][..],
                    b"data",
                    &[0x92, 0xa1, b'e', 0x81, 0x80, 0x01, 0xa3],
                    b"nsp",
                    &[0xa1, b'/', 0x80],
                ]
                .concat(),
            ),
        ];
        for (name, bytes) in invalid {
            let err = decode_broadcast(b"socket.io#/#", &bytes).expect_err(name);
            assert!(!err.is_ignored(), "{name}: {err}");
        }
    }

    #[test]
    fn repeated_keys_keep_the_last_value_and_no_orphan_attachment() {
        // {"k": <bin 1>, "k": <bin 2>, "u": <bin 3>, "u": undefined}
        let arg = [
            &[0x84, 0xa1, b'k', 0xc4, 0x01, 0x01, 0xa1, b'k', 0xc4, 0x01, 0x02][..],
            &[0xa1, b'u', 0xc4, 0x01, 0x03, 0xa1, b'u', 0xd4, 0x00, 0x00],
        ]
        .concat();
        let msg = [&[0x93, 0xa0, 0x81, 0xa4][..], b"data", &[0x92, 0xa1, b'e'], &arg, &[0x80]].concat();
        let b = decode_broadcast(b"socket.io#/#", &msg).expect("repeated keys");
        assert_eq!(b.payload.args, vec![json!({"k": {"_placeholder": true, "num": 0}})]);
        assert_eq!(b.payload.attachments, vec![Bytes::from_static(&[2])]);
    }

    #[test]
    fn msgpack_server_side_emit_keeps_binary_arguments() {
        let request = map(vec![
            ("uid", rmpv::Value::Binary(vec![9])),
            ("type", rmpv::Value::from(6)),
            ("data", arr(vec![s("ev"), rmpv::Value::Binary(vec![1, 2])])),
        ]);
        let r = decode_request(b"socket.io-request#/#", &mp(&request)).expect("msgpack serverSideEmit");
        let RequestAction::ServerSideEmit { event, payload } = r.action else { panic!("{:?}", r.action) };
        assert_eq!(event, "ev");
        assert_eq!(payload.args, vec![json!({"_placeholder": true, "num": 0})]);
        assert_eq!(payload.attachments, vec![Bytes::from_static(&[1, 2])]);
    }

    #[test]
    fn too_many_attachments() {
        let data: Vec<rmpv::Value> =
            std::iter::once(s("ev")).chain((0..=MAX_ATTACHMENTS).map(|_| rmpv::Value::Binary(vec![1]))).collect();
        assert_eq!(
            decode_broadcast(b"socket.io#/#", &message(data, map(vec![]))),
            Err(EmitterError::TooManyAttachments)
        );
    }

    #[test]
    fn round_trip_through_rmpv() {
        // Values encoded by rmpv (smallest widths) decode to the same JSON.
        let args = vec![
            rmpv::Value::from(0),
            rmpv::Value::from(u64::MAX),
            rmpv::Value::from(i64::MIN),
            rmpv::Value::F64(-0.5),
            rmpv::Value::Nil,
            rmpv::Value::Boolean(false),
            s("ünïcode"),
            arr(vec![arr(vec![]), map(vec![])]),
            map(vec![("k", rmpv::Value::Binary(vec![0; 70_000]))]),
        ];
        let b = decode_broadcast(b"socket.io#/#", &message([vec![s("ev")], args].concat(), map(vec![])))
            .expect("round trip");
        assert_eq!(
            b.payload.args,
            vec![
                json!(0),
                json!(u64::MAX),
                json!(i64::MIN),
                json!(-0.5),
                json!(null),
                json!(false),
                json!("ünïcode"),
                json!([[], {}]),
                json!({"k": {"_placeholder": true, "num": 0}})
            ]
        );
        assert_eq!(b.payload.attachments[0].len(), 70_000);
    }

    #[test]
    fn dates() {
        assert_eq!(date_json(0), json!("1970-01-01T00:00:00.000Z"));
        assert_eq!(date_json(-1), json!("1969-12-31T23:59:59.999Z"));
        assert_eq!(date_json(951_782_400_000), json!("2000-02-29T00:00:00.000Z"));
        assert_eq!(date_json(253_402_300_799_999), json!("9999-12-31T23:59:59.999Z"));
        assert_eq!(date_json(253_402_300_800_000), json!("+010000-01-01T00:00:00.000Z"));
        assert_eq!(date_json(-62_198_755_200_000), json!("-000001-01-01T00:00:00.000Z"));
        assert_eq!(date_json(8_640_000_000_000_001), json!(null));
        // timestamp 96 and notepack's old custom date (ext type 0, 8 bytes).
        let ts96 = [&[0u8, 0, 0, 0][..], &(-1i64).to_be_bytes()].concat();
        assert_eq!(timestamp_json(&ts96), json!("1969-12-31T23:59:59.000Z"));
        let old = Mp::Ext(0, &[0, 0, 0, 0, 0, 0, 0x03, 0xe8], true);
        let mut p = Payload::empty();
        assert_eq!(to_json(&old, &Bytes::new(), &mut p), Ok(Some(json!("1970-01-01T00:00:01.000Z"))));
    }
}
