//! Room membership of one namespace: room → sockets. Each socket keeps its
//! own list of rooms (socket → rooms) next to its state; this map is the
//! reverse index the fan-out walks. Members are stored with a handle `T` (the
//! socket itself in the server), so a broadcast reaches each member without a
//! second lookup. A socket's own id is a room too: it is resolved through the
//! namespace's socket table instead of being stored here.

use std::collections::HashMap;

use dashmap::DashMap;

use super::Room;
use crate::sid::Sid;

/// room → members (id and handle) for one namespace.
#[derive(Debug)]
pub(crate) struct RoomRegistry<T> {
    rooms: DashMap<Room, HashMap<Sid, T>>,
}

impl<T> Default for RoomRegistry<T> {
    fn default() -> Self {
        Self { rooms: DashMap::new() }
    }
}

impl<T> RoomRegistry<T> {
    /// Adds `sid` (with its handle) to `room`; returns the shared room name and whether the room was created.
    pub(crate) fn join(&self, room: &str, sid: Sid, handle: T) -> (Room, bool) {
        if let Some(mut members) = self.rooms.get_mut(room) {
            members.insert(sid, handle);
            return (members.key().clone(), false);
        }
        let name: Room = Room::from(room);
        let mut created = false;
        self.rooms
            .entry(name.clone())
            .or_insert_with(|| {
                created = true;
                HashMap::new()
            })
            .insert(sid, handle);
        if created {
            metrics::gauge!(crate::metrics::ROOMS).increment(1.0);
        }
        (name, created)
    }

    /// Removes `sid` from `room`; returns whether the room is now gone.
    pub(crate) fn leave(&self, room: &str, sid: Sid) -> bool {
        let removed = self
            .rooms
            .remove_if_mut(room, |_, members| {
                members.remove(&sid);
                members.is_empty()
            })
            .is_some();
        if removed {
            metrics::gauge!(crate::metrics::ROOMS).decrement(1.0);
        }
        removed
    }

    /// Calls `f` with every member of `room` (none if it does not exist).
    /// The shard lock is held while `f` runs: `f` must not touch this registry.
    pub(crate) fn for_each_member(&self, room: &str, mut f: impl FnMut(Sid, &T)) {
        if let Some(members) = self.rooms.get(room) {
            for (sid, handle) in members.iter() {
                f(*sid, handle);
            }
        }
    }

    /// Number of members of `room`.
    pub(crate) fn len_of(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |m| m.len())
    }

    /// Names of every room with at least one member.
    pub(crate) fn room_names(&self) -> Vec<String> {
        self.rooms.iter().map(|e| e.key().to_string()).collect()
    }

    /// Number of rooms.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_leave_and_members() {
        let reg = RoomRegistry::default();
        let (a, b) = (Sid::random(), Sid::random());
        assert!(reg.join("r", a, 1).1);
        assert!(!reg.join("r", b, 2).1);
        assert!(!reg.join("r", b, 2).1);
        assert_eq!(reg.len_of("r"), 2);
        let mut seen = Vec::new();
        reg.for_each_member("r", |s, handle| {
            assert_eq!(*handle, if s == a { 1 } else { 2 });
            seen.push(s);
        });
        seen.sort();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(seen, expected);
        assert!(!reg.leave("r", a));
        assert!(reg.leave("r", b));
        assert_eq!(reg.len(), 0);
        assert!(!reg.leave("missing", a));
    }

    #[test]
    fn rooms_share_one_name_allocation() {
        let reg = RoomRegistry::default();
        let (first, _) = reg.join("shared", Sid::random(), ());
        let (second, _) = reg.join("shared", Sid::random(), ());
        assert!(std::sync::Arc::ptr_eq(&first, &second));
    }
}
