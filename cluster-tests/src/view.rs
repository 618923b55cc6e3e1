//! What a node says about the cluster on `GET /cluster`.

use std::collections::BTreeSet;

use serde::Deserialize;

/// `GET /cluster` of one node.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterView {
    /// The answering node.
    pub node_id: u64,
    /// The answering node's incarnation (changes on every start).
    #[serde(default)]
    pub incarnation: Option<u64>,
    /// This node holds the latest room interest of every alive member.
    pub converged: bool,
    /// This node's raft state.
    pub raft: RaftView,
    /// Every member this node knows of (left or dead ones possibly included).
    pub members: Vec<MemberView>,
}

/// The `raft` object of `GET /cluster`.
#[derive(Debug, Clone, Deserialize)]
pub struct RaftView {
    /// Current term.
    pub term: u64,
    /// The leader this node knows of, if any.
    #[serde(default)]
    pub leader: Option<u64>,
    /// `leader`, `follower`, `candidate`, `learner`, ...
    pub state: String,
    /// Voting members of the raft group.
    #[serde(default)]
    pub voters: Vec<u64>,
    /// Non-voting members.
    #[serde(default)]
    pub learners: Vec<u64>,
    /// The last log index applied to the state machine.
    #[serde(default)]
    pub last_applied: Option<u64>,
}

/// One entry of `members`.
#[derive(Debug, Clone, Deserialize)]
pub struct MemberView {
    /// The member's node id.
    pub node_id: u64,
    /// Its cluster address.
    pub addr: String,
    /// `voter`, `learner` or `none`.
    pub role: String,
    /// `alive`, `suspect`, `dead` or `left`.
    pub liveness: String,
    /// Whether the answering node has a live connection to it.
    #[serde(default)]
    pub connected: bool,
    /// The member is the answering node.
    #[serde(rename = "self", default)]
    pub is_self: bool,
    /// Its socket count (as last gossiped).
    #[serde(default)]
    pub sockets: u64,
    /// Its room count (as last gossiped).
    #[serde(default)]
    pub rooms: u64,
    /// The version of its room interest the answering node holds.
    #[serde(default)]
    pub interest_version: u64,
    /// How many rooms of its interest the answering node holds (other members only).
    #[serde(default)]
    pub interest_rooms: Option<u64>,
}

impl ClusterView {
    /// The entry for member `id`.
    pub fn member(&self, id: u64) -> Option<&MemberView> {
        self.members.iter().find(|m| m.node_id == id)
    }

    /// Voters and learners.
    pub fn raft_members(&self) -> BTreeSet<u64> {
        self.raft.voters.iter().chain(&self.raft.learners).copied().collect()
    }

    /// Members listed with liveness `alive`.
    pub fn alive(&self) -> BTreeSet<u64> {
        self.members.iter().filter(|m| m.liveness == "alive").map(|m| m.node_id).collect()
    }

    /// Whether member `id` is gone from this view: absent, or listed with one of `liveness`.
    pub fn is_gone(&self, id: u64, liveness: &[&str]) -> bool {
        self.member(id).is_none_or(|m| liveness.contains(&m.liveness.as_str()))
    }
}
