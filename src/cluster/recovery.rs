//! Connection state recovery across nodes.
//!
//! - A client that reconnects to another node with its private id: that node asks every node
//!   ([`crate::socketio::RemoteOp::Recover`], on the wire `RecoverSession`); the one holding the
//!   session hands it over with the packets the client missed and forgets it; [`merge`] keeps
//!   that answer.
//! - A node draining on SIGTERM: once its clients are closed (their sessions kept), it hands
//!   every kept session to its live peers ([`ClusterNode::hand_off_sessions`], `HandOffSessions`),
//!   spread over them, so that its clients can still be recovered after it exits.
//! - For a few seconds after a session left, the node it left relays what concerns it
//!   ([`crate::socketio::RelayedPacket`], on the wire `RelayedPacket`) to the node that has it.
//! - A node that dies (`kill -9`) takes its kept sessions with it: its clients get fresh
//!   sessions.

use std::time::Duration;

use super::message::{ClusterReply, ClusterRequest, Message, ReplyBody, RequestOp};
use super::node::ClusterNode;
use crate::Sid;
use crate::socketio::{RecoveredSession, Refusal, Server, SessionRecord};

/// Most sessions in one hand-off request.
const CHUNK_SESSIONS: usize = 256;
/// Most bytes (estimated) of one hand-off request, well below a cluster frame (16 MiB).
const CHUNK_BYTES: usize = 8 * 1024 * 1024;

/// Folds one node's answer to a recovery request into what was gathered: a session handed over
/// wins, then a refusal from the node that held the session, then "not found".
pub(crate) fn merge(slot: &mut Option<Result<RecoveredSession, Refusal>>, answer: Result<RecoveredSession, Refusal>) {
    let better = match (&slot, &answer) {
        (None, _) | (Some(Err(_)), Ok(_)) => true,
        (Some(Err(Refusal::NotFound)), Err(refusal)) => *refusal != Refusal::NotFound,
        _ => false,
    };
    if better {
        *slot = Some(answer);
    }
}

/// Splits `records` into requests that fit a cluster frame.
fn chunks(records: Vec<SessionRecord>) -> Vec<Vec<SessionRecord>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for record in records {
        let size = 256
            + record.rooms.iter().map(|r| r.len() + 8).sum::<usize>()
            + serde_json::to_vec(&record.data).map_or(0, |d| d.len())
            + record.packets.iter().map(|p| p.packet.len() + 32).sum::<usize>();
        if !chunk.is_empty() && (chunk.len() >= CHUNK_SESSIONS || bytes + size > CHUNK_BYTES) {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(record);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

impl ClusterNode {
    /// Hands `records` (this node's kept sessions, taken out of its store) to the live peers,
    /// spread over them; a chunk a peer does not take goes to the next one. Gives up at
    /// `within`. Returns how many sessions a peer kept.
    pub async fn hand_off_sessions(&self, io: &Server, records: Vec<SessionRecord>, within: Duration) -> usize {
        if records.is_empty() {
            return 0;
        }
        let total = records.len();
        let peers = self.live_peers();
        if peers.is_empty() {
            tracing::warn!(sessions = total, "no live peer to hand the recoverable sessions to; they are lost");
            return 0;
        }
        let deadline = tokio::time::Instant::now() + within;
        let mut kept = 0usize;
        for (i, chunk) in chunks(records).into_iter().enumerate() {
            let n = chunk.len();
            let sids: Vec<Sid> = chunk.iter().map(|r| r.sid).collect();
            let request = Message::Request(ClusterRequest {
                request_id: 0,
                timeout: within,
                op: RequestOp::HandOffSessions(chunk),
            });
            let mut done = false;
            for attempt in 0..peers.len() {
                let peer = peers[(i + attempt) % peers.len()];
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                match self.transport().request(peer, &request, left).await {
                    Ok(Message::Reply(ClusterReply { result: ReplyBody::Done { affected }, .. })) => {
                        kept += usize::try_from(affected).unwrap_or(n);
                        io.recovery_handed_to(&sids, peer);
                        done = true;
                        break;
                    }
                    Ok(other) => tracing::debug!(peer, ?other, "a peer refused recoverable sessions"),
                    Err(err) => tracing::debug!(peer, %err, "recoverable sessions not handed to a peer"),
                }
            }
            if !done {
                tracing::warn!(sessions = n, "recoverable sessions not handed over: no peer took them in time");
            }
        }
        metrics::counter!(crate::metrics::RECOVERY_TRANSFERS, crate::metrics::label::KIND => "handed_off")
            .increment(kept as u64);
        tracing::info!(kept, total, "recoverable sessions handed to the peers");
        kept
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::rooms::{EncodedPacket, Offset};
    use crate::socketio::MissedPacket;

    fn session() -> RecoveredSession {
        RecoveredSession {
            sid: Sid::random(),
            secret: Sid::random(),
            nsp: "/".into(),
            rooms: Vec::new(),
            data: serde_json::Map::new(),
            missed: Vec::new(),
            client_offset: None,
            watermarks: Vec::new(),
        }
    }

    #[test]
    fn the_holders_answer_wins() {
        let mut slot = None;
        merge(&mut slot, Err(Refusal::NotFound));
        assert_eq!(slot, Some(Err(Refusal::NotFound)));
        merge(&mut slot, Err(Refusal::StaleOffset));
        merge(&mut slot, Err(Refusal::NotFound));
        assert_eq!(slot, Some(Err(Refusal::StaleOffset)));
        let s = session();
        merge(&mut slot, Ok(s.clone()));
        merge(&mut slot, Err(Refusal::TooMany));
        assert_eq!(slot, Some(Ok(s)));
    }

    #[test]
    fn hand_offs_are_split_to_fit_a_frame() {
        let record = |packets: usize| SessionRecord {
            sid: Sid::random(),
            secret: Sid::random(),
            nsp: "/".into(),
            rooms: vec!["r".into()],
            data: serde_json::Map::new(),
            expires_in: Duration::from_secs(1),
            known: None,
            start: None,
            start_valid: true,
            first_index: 0,
            packets: (0..packets)
                .map(|i| MissedPacket {
                    offset: Offset { origin: 1, counter: i as u64 + 1 },
                    packet: EncodedPacket { text: Bytes::from(vec![b'4'; 1024 * 1024]), attachments: Vec::new() },
                })
                .collect(),
            resume_index: 0,
            watermarks: Vec::new(),
        };
        let sizes: Vec<usize> = chunks((0..600).map(|_| record(0)).collect()).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![256, 256, 88]);
        let sizes: Vec<usize> = chunks((0..5).map(|_| record(3)).collect()).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        assert!(chunks(Vec::new()).is_empty());
    }
}
