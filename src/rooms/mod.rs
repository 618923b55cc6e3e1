//! Room registry and broadcasts.
//!
//! - [`registry`]: room → members per namespace, on dashmap.
//! - [`broadcast`]: the [`Broadcast`] value: what to send and to whom. The
//!   local fan-out executes it; the cluster forwards it to other nodes.

mod broadcast;
mod registry;

pub use broadcast::{Broadcast, BroadcastFlags, EncodedPacket};
pub(crate) use registry::RoomRegistry;

/// A room name. Shared between the registry and each member's room list.
pub type Room = std::sync::Arc<str>;
