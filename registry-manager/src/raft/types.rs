//! openraft's type configuration for the registry: one log entry carries a [`Batch`] of
//! proposed commands (group commit: openraft flushes once per entry), and its response is one
//! [`Outcome`](crate::command::Outcome) per command.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Outcome, Proposed};
use crate::raft::state_machine::StateMachine;

/// The commands of one raft entry, applied in order.
///
/// Logged as JSON: `Apart` as an array (the form of earlier versions), `Together` as an object
/// `{"together": [...]}`, which a member of an earlier version cannot read (it stops rather
/// than number revisions differently from the others: see docs/ha.md on upgrades).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Batch {
    /// One revision per command that changes something (entries written by earlier versions).
    Apart(Vec<Proposed>),
    /// One revision for all the commands that change something, one delta to the watchers
    /// ([`crate::State::execute_together`]): every entry this version writes.
    Together {
        /// The commands, in order.
        together: Vec<Proposed>,
    },
}

impl Batch {
    /// The commands, in order.
    pub fn items(&self) -> &[Proposed] {
        match self {
            Batch::Apart(items) | Batch::Together { together: items } => items,
        }
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} command(s)", self.items().len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    fn items() -> Vec<Proposed> {
        vec![Proposed {
            command: Command::CreateHistory {
                history: "h".into(),
            },
            session: None,
        }]
    }

    #[test]
    fn entries_of_earlier_versions_still_read_apart_and_new_ones_are_not_read_as_them() {
        // An earlier version logged the array alone.
        let old = serde_json::to_vec(&items()).unwrap();
        let read: Batch = serde_json::from_slice(&old).unwrap();
        assert_eq!(read, Batch::Apart(items()));
        let new = Batch::Together { together: items() };
        let bytes = serde_json::to_vec(&new).unwrap();
        assert!(
            bytes.starts_with(b"{\"together\":["),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(serde_json::from_slice::<Batch>(&bytes).unwrap(), new);
        // What an earlier version reads an entry as: it must fail, not number it apart.
        assert!(serde_json::from_slice::<Vec<Proposed>>(&bytes).is_err());
    }
}
