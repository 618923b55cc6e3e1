//! The broadcast value: built once by whoever emits (a handler, the HTTP API,
//! the Redis ingress, another node) and executed by the local fan-out.

use bytes::Bytes;

use super::{Offset, Selector};
use crate::engineio::packet::Frame;

/// Flags that change how a broadcast is delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BroadcastFlags {
    /// Dropped for clients that are behind instead of queued.
    pub volatile: bool,
    /// Delivered on this node only (never forwarded to other nodes).
    pub local: bool,
}

/// A Socket.IO packet encoded once: the Engine.IO text frame (`4…`) followed
/// by its binary attachments. Every recipient gets the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPacket {
    /// The text frame, including the Engine.IO `4` prefix.
    pub text: Bytes,
    /// Binary attachments, in order.
    pub attachments: Vec<Bytes>,
}

impl EncodedPacket {
    pub(crate) fn frames(&self) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(1 + self.attachments.len());
        frames.push(Frame::Text(self.text.clone()));
        frames.extend(self.attachments.iter().cloned().map(Frame::Binary));
        frames
    }

    /// Total encoded size in bytes.
    pub fn len(&self) -> usize {
        self.text.len() + self.attachments.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether the packet is empty (never for a real packet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What to send, in which namespace, to which rooms, except whom.
///
/// Plain data only, so that the cluster can serialise it as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// Namespace, target rooms and skipped rooms.
    pub selector: Selector,
    /// Delivery flags.
    pub flags: BroadcastFlags,
    /// The packet, encoded once.
    pub packet: EncodedPacket,
    /// With connection state recovery: the offset the packet carries as its last argument, under
    /// which every node that executes it logs it (`None`: not recoverable, e.g. volatile).
    pub offset: Option<Offset>,
}
