//! Executing decoded emitter operations on the local Socket.IO [`Server`]: broadcasts become
//! `io.of(nsp).to(…).except(…).emit(…)`, requests become joins, leaves, disconnects and
//! server-side events, each also sent in order to the other nodes of the cluster.

use super::Outcome;
use super::decode::{EmitterBroadcast, EmitterRequest, RequestAction};
use crate::socketio::{RemoteOp, Server, SocketsOp};

/// Emits `b` on `io`.
pub(super) fn broadcast(io: &Server, b: EmitterBroadcast) -> Outcome {
    // Nobody is connected to a namespace that does not exist (here, or in the cluster).
    let Some(ns) = io.namespace_for_broadcast(&b.nsp) else {
        return Outcome::Ok;
    };
    let mut op = ns.select(&b.rooms, &b.except);
    if b.flags.volatile {
        op = op.volatile();
    }
    if b.flags.local {
        op = op.local();
    }
    let recipients = op.emit(&b.event, b.payload);
    tracing::trace!(nsp = %b.nsp, event = %b.event, recipients, "emitter broadcast");
    Outcome::Ok
}

/// Runs `r` on `io` (the caller has already dropped the requests this node sent itself).
pub(super) fn request(io: &Server, r: EmitterRequest) -> Outcome {
    let Some(ns) = io.namespace_for_broadcast(&r.nsp) else {
        return Outcome::Ok;
    };
    // Each action runs here and, in order with this node's broadcasts, on every other node
    // of the cluster (the emitter published once, to this node only).
    match r.action {
        RequestAction::Join { targets, rooms } => {
            ns.select(&targets.rooms, &targets.except).run_ordered(SocketsOp::Join(rooms));
        }
        RequestAction::Leave { targets, rooms } => {
            ns.select(&targets.rooms, &targets.except).run_ordered(SocketsOp::Leave(rooms));
        }
        RequestAction::Disconnect { targets, close } => {
            ns.select(&targets.rooms, &targets.except).run_ordered(SocketsOp::Disconnect { close });
        }
        RequestAction::ServerSideEmit { event, payload } => {
            let remote = (!payload.has_binary()).then(|| (event.clone(), payload.args.clone()));
            ns.dispatch_server_side(&event, payload);
            if let Some((event, args)) = remote {
                ns.broadcast().send_ordered(|s| RemoteOp::ServerSideEmit { nsp: s.nsp, event, args });
            }
        }
    }
    Outcome::Ok
}
