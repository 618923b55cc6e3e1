//! Room registry and broadcasts.
//!
//! - [`registry`]: room → members per namespace, on dashmap.
//! - [`broadcast`]: the [`Broadcast`] value: what to send and to whom. The
//!   local fan-out executes it; the cluster forwards it to other nodes.
//! - `selector`: the [`Selector`] (namespace, rooms, except) shared by broadcasts
//!   and every operation on a selection of sockets, local or cluster-wide.
//! - `offset`: the [`Offset`] of a recoverable broadcast (connection state recovery).

mod broadcast;
mod offset;
mod registry;
mod selector;

pub use broadcast::{Broadcast, BroadcastFlags, EncodedPacket};
pub use offset::Offset;
pub(crate) use registry::RoomRegistry;
pub use selector::Selector;

/// A room name. Shared between the registry and each member's room list.
pub type Room = std::sync::Arc<str>;
