//! The selection every broadcast and every operation on sockets makes: a namespace, the rooms
//! whose members are targeted, and the rooms whose members are skipped.

/// Which sockets of a namespace a broadcast or an operation (`socketsJoin`, `socketsLeave`,
/// `disconnectSockets`, `fetchSockets`, a broadcast with acks) applies to, on any node.
///
/// A socket id names a room of its own (the socket with that id), so `rooms: [id]` picks that
/// socket and `except: [id]` skips it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Namespace name, e.g. `/` or `/chat`.
    pub nsp: String,
    /// Target rooms; empty means every socket of the namespace.
    pub rooms: Vec<String>,
    /// Sockets in any of these rooms are skipped.
    pub except: Vec<String>,
}

impl Selector {
    /// Every socket of `nsp`.
    pub fn namespace(nsp: impl Into<String>) -> Self {
        Self { nsp: nsp.into(), rooms: Vec::new(), except: Vec::new() }
    }

    /// The sockets of `nsp` in any of `rooms` (every socket when empty) except those in any of
    /// `except`.
    pub fn new(nsp: impl Into<String>, rooms: &[String], except: &[String]) -> Self {
        Self { nsp: nsp.into(), rooms: rooms.to_vec(), except: except.to_vec() }
    }

    /// Adds a target room.
    pub fn to(mut self, room: impl Into<String>) -> Self {
        self.rooms.push(room.into());
        self
    }

    /// Skips the sockets in `room`.
    pub fn except(mut self, room: impl Into<String>) -> Self {
        self.except.push(room.into());
        self
    }
}
