//! The selection every broadcast and every operation on sockets makes: a namespace, the rooms
//! whose members are targeted, and the rooms whose members are skipped.

/// Which sockets of a namespace a broadcast or an operation (`socketsJoin`, `socketsLeave`,
/// `disconnectSockets`, `fetchSockets`, a broadcast with acks) applies to, on any node.
///
/// A socket id names a room of its own (the socket with that id), so `rooms: [id]` picks that
/// socket and `except: [id]` skips it. A socket.io 2.x client calls its socket of namespace
/// `/chat` `/chat#<id>` (socket.io 4 names such sockets so too): in a selector of `/chat` that
/// name is the id (see [`Selector::new`]).
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
        let nsp = nsp.into();
        let named = |rooms: &[String]| rooms.iter().map(|r| own_room(&nsp, r).to_owned()).collect();
        Self { rooms: named(rooms), except: named(except), nsp }
    }

    /// Adds a target room.
    pub fn to(mut self, room: impl Into<String>) -> Self {
        let room = room.into();
        self.rooms.push(own_room(&self.nsp, &room).to_owned());
        self
    }

    /// Skips the sockets in `room`.
    pub fn except(mut self, room: impl Into<String>) -> Self {
        let room = room.into();
        self.except.push(own_room(&self.nsp, &room).to_owned());
        self
    }
}

/// `room`, or the socket id in it when it is a 2.x client's name for its socket of `nsp`
/// (`/chat#<id>`).
pub(crate) fn own_room<'a>(nsp: &str, room: &'a str) -> &'a str {
    match room.strip_prefix(nsp).and_then(|rest| rest.strip_prefix('#')) {
        Some(id) if nsp != "/" && crate::Sid::parse(id).is_some() => id,
        _ => room,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Sid;

    #[test]
    fn a_2x_clients_name_for_its_socket_of_a_namespace_is_its_id_there() {
        let id = Sid::random();
        let named = format!("/chat#{}", id.as_str());
        let s = Selector::new("/chat", std::slice::from_ref(&named), std::slice::from_ref(&named));
        assert_eq!((s.rooms, s.except), (vec![id.as_str().to_owned()], vec![id.as_str().to_owned()]));
        let s = Selector::namespace("/chat").to(named.clone()).except(named.clone());
        assert_eq!((s.rooms[0].as_str(), s.except[0].as_str()), (id.as_str(), id.as_str()));
        // Only in its own namespace, only with an id after the '#', never for `/`.
        for (nsp, room) in [
            ("/other", named.clone()),
            ("/chat", "/chat#lobby".to_owned()),
            ("/chat", format!("/chat#{}x", id.as_str())),
            ("/", format!("/#{}", id.as_str())),
            ("/chat", "lobby".to_owned()),
        ] {
            assert_eq!(Selector::namespace(nsp).to(room.clone()).rooms, [room]);
        }
    }
}
