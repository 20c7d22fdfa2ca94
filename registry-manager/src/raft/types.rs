//! openraft's type configuration for the registry: one log entry carries a [`Batch`] of
//! proposed commands (group commit: openraft flushes once per entry), and its response is one
//! [`Outcome`](crate::command::Outcome) per command.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Outcome, Proposed};
use crate::raft::state_machine::StateMachine;

/// The commands of one raft entry, applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Proposed>);

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} command(s)", self.0.len())
    }
}

/// One outcome per command of a [`Batch`] (empty for blank and membership entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome(pub Vec<Outcome>);

/// A member as the raft membership records it: its name and gRPC address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The member's name (section 2 rules).
    pub name: String,
    /// `host:port` of its gRPC server.
    pub addr: String,
}

openraft::declare_raft_types!(
    /// The registry's raft types. Standard raft leader ids (one leader per term): log ids are
    /// (term, index), so the membership entry every voter writes when the group forms is the
    /// same entry on every member.
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = u64,
        Node = MemberNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// A raft log id.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A raft vote.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A raft log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A membership with the log id that set it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot: its meta and the encoded registry state.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;
/// The raft handle.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;
