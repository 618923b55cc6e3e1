//! The broadcast builder: `io.of("/").to("room").except("x").volatile().emit(…)`.

use std::time::Duration;

use super::namespace::Namespace;
use super::payload::Payload;
use super::socket::{Socket, encode_event};
use crate::rooms::{Broadcast, BroadcastFlags};

/// Targets and flags of a broadcast, and the actions on those targets.
#[derive(Debug, Clone)]
pub struct BroadcastOperator {
    ns: Namespace,
    rooms: Vec<String>,
    except: Vec<String>,
    flags: BroadcastFlags,
}

/// Answers collected by [`BroadcastOperator::emit_with_ack`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AckResults {
    /// How many sockets were sent the event.
    pub recipients: usize,
    /// Each answer that arrived in time.
    pub acks: Vec<Payload>,
    /// Recipients that did not answer in time (or disconnected).
    pub timed_out: usize,
}

impl BroadcastOperator {
    pub(crate) fn new(ns: Namespace) -> Self {
        Self { ns, rooms: Vec::new(), except: Vec::new(), flags: BroadcastFlags::default() }
    }

    /// Adds a target room (a socket id targets that socket).
    pub fn to(mut self, room: impl Into<String>) -> Self {
        self.rooms.push(room.into());
        self
    }

    /// Skips sockets that are in `room`.
    pub fn except(mut self, room: impl Into<String>) -> Self {
        self.except.push(room.into());
        self
    }

    /// Drops the packet for clients that are behind instead of queueing it.
    pub fn volatile(mut self) -> Self {
        self.flags.volatile = true;
        self
    }

    /// Delivers on this node only.
    pub fn local(mut self) -> Self {
        self.flags.local = true;
        self
    }

    /// The broadcast value this operator would execute for `event`.
    pub fn build(&self, event: &str, payload: &Payload) -> Broadcast {
        Broadcast {
            nsp: self.ns.name().to_owned(),
            rooms: self.rooms.clone(),
            except: self.except.clone(),
            flags: self.flags,
            packet: encode_event(self.ns.name(), None, event, payload),
        }
    }

    /// Emits `event` to the targets; returns the number of recipients.
    pub fn emit(&self, event: &str, payload: impl Into<Payload>) -> usize {
        let b = self.build(event, &payload.into());
        self.ns.execute(&b)
    }

    /// Emits `event` asking each recipient for an acknowledgement, and waits
    /// until every recipient answered or `timeout` passed.
    pub async fn emit_with_ack(&self, event: &str, payload: impl Into<Payload>, timeout: Duration) -> AckResults {
        let payload = payload.into();
        let mut waiting = Vec::new();
        let mut failed = 0;
        for socket in self.sockets() {
            match socket.send_with_ack(event, &payload) {
                Ok(rx) => waiting.push(rx),
                Err(_) => failed += 1,
            }
        }
        let recipients = waiting.len() + failed;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut acks = Vec::with_capacity(waiting.len());
        let mut timed_out = failed;
        for rx in waiting {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(p)) => acks.push(p),
                _ => timed_out += 1,
            }
        }
        AckResults { recipients, acks, timed_out }
    }

    /// The sockets this operator targets.
    pub fn sockets(&self) -> Vec<Socket> {
        let except = self.ns.members_of(&self.except);
        let all = if self.rooms.is_empty() {
            self.ns.sockets()
        } else {
            self.ns.members_of(&self.rooms).into_iter().filter_map(|sid| self.ns.socket(sid.as_str())).collect()
        };
        all.into_iter().filter(|s| !except.contains(&s.sid())).collect()
    }

    /// Makes every targeted socket join `room`.
    pub fn join(&self, room: &str) -> usize {
        let sockets = self.sockets();
        for s in &sockets {
            s.join(room);
        }
        sockets.len()
    }

    /// Makes every targeted socket leave `room`.
    pub fn leave(&self, room: &str) -> usize {
        let sockets = self.sockets();
        for s in &sockets {
            s.leave(room);
        }
        sockets.len()
    }

    /// Disconnects every targeted socket from the namespace (or closes their
    /// whole connection when `close` is true).
    pub fn disconnect(&self, close: bool) -> usize {
        let sockets = self.sockets();
        for s in &sockets {
            if close {
                s.close_connection();
            } else {
                s.disconnect();
            }
        }
        sockets.len()
    }
}
