//! The registry manager group as configured (`group:` in the `serve` config) and the pure
//! decisions about it: member ids, the state names operators see in `ha status`, and which
//! membership changes are allowed.
//!
//! A manager without `group` is a group of one named [`STAND_ALONE_NAME`], on the same code
//! path as a group of three or five.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use topology::HostName;

/// The member name of a manager configured without `group`.
pub const STAND_ALONE_NAME: &str = "local";

/// One member: its name (section 2 rules) and its gRPC address.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Member {
    /// The member's name; by convention the host it runs on.
    pub name: String,
    /// `host:port` of its gRPC server (agents, operators and members use the same port).
    pub address: String,
}

/// The `group:` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// This member.
    pub name: HostName,
    /// Every voter, this one included: name -> address.
    pub members: BTreeMap<HostName, String>,
    /// Non-voting warm spares: name -> address.
    pub learners: BTreeMap<HostName, String>,
    /// Where `ha failback` moves leadership.
    pub preferred: Option<HostName>,
    /// Addresses this member dials to reach some members instead of their `members` address
    /// (behind NAT or a proxy); every member must still list the same `members`.
    pub dial: BTreeMap<HostName, String>,
    /// The event script, run on group events.
    pub hook: Option<PathBuf>,
}

impl GroupConfig {
    /// A group of one: this manager alone, at `address`.
    pub fn stand_alone(address: String) -> GroupConfig {
        let name = HostName::new(STAND_ALONE_NAME).expect("a valid name");
        GroupConfig {
            members: BTreeMap::from([(name.clone(), address)]),
            name,
            learners: BTreeMap::new(),
            preferred: None,
            dial: BTreeMap::new(),
            hook: None,
        }
    }

    /// True for a group of one with no learners.
    pub fn is_stand_alone(&self) -> bool {
        self.members.len() == 1 && self.learners.is_empty()
    }

    /// This member's configured address.
    pub fn own_address(&self) -> Option<&String> {
        self.members
            .get(&self.name)
            .or_else(|| self.learners.get(&self.name))
    }

    /// Checks the section: this member is listed, no name is both voter and learner, the
    /// preferred member is a voter, and there are not exactly two voters.
    pub fn validate(&self) -> Result<(), String> {
        if self.members.is_empty() {
            return Err("group.members is empty; list every voter, this one included".into());
        }
        if !self.members.contains_key(&self.name) && !self.learners.contains_key(&self.name) {
            return Err(format!(
                "group.name {:?} is not listed in group.members or group.learners; add it with its address",
                self.name.as_str()
            ));
        }
        if let Some(both) = self.members.keys().find(|n| self.learners.contains_key(*n)) {
            return Err(format!(
                "{:?} is listed both in group.members and group.learners; a member is a voter or a learner",
                both.as_str()
            ));
        }
        if let Some(p) = &self.preferred {
            if !self.members.contains_key(p) {
                return Err(format!(
                    "group.preferred {:?} is not one of group.members",
                    p.as_str()
                ));
            }
        }
        if self.members.len() == 2 {
            return Err("a group of two voters cannot survive the loss of either; use one, three or five members".into());
        }
        if let Some(n) = self
            .dial
            .keys()
            .find(|n| !self.members.contains_key(*n) && !self.learners.contains_key(*n))
        {
            return Err(format!(
                "group.dial names {:?}, which is not a member or learner",
                n.as_str()
            ));
        }
        let mut seen = BTreeSet::new();
        for addr in self.members.values().chain(self.learners.values()) {
            if !seen.insert(addr) {
                return Err(format!(
                    "address {addr} is given to two members; each member needs its own address"
                ));
            }
        }
        Ok(())
    }
}

/// The raft node id of a member: a stable hash of its name, so every member derives the same
/// ids from the same configuration without coordination.
pub fn node_id(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// What a member knows of itself when `ha status` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Leads the group.
    Leader,
    /// A voter following the leader.
    Follower,
    /// A non-voting member.
    Learner,
    /// Asking for votes.
    Candidate,
    /// Did not answer.
    Unreachable,
}

impl Role {
    /// The name shown in `ha status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Learner => "learner",
            Role::Candidate => "candidate",
            Role::Unreachable => "unreachable",
        }
    }
}

/// A leadership move in progress (`ha failover` or `ha failback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// `ha failover`.
    Failover,
    /// `ha failback`.
    Failback,
}

/// The facts [`ha_state`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFacts {
    /// The member's role.
    pub role: Role,
    /// A group of one.
    pub stand_alone: bool,
    /// Joined a formed group and caught up at least once.
    pub initialized: bool,
    /// This member is the `preferred` one, or none is set.
    pub preferred_or_unset: bool,
    /// Leader: a majority acknowledged it within the election timeout.
    pub quorum_acked: bool,
    /// Leader: every voter acknowledges it.
    pub all_voters_acked: bool,
    /// Follower/learner: heard from a leader within the election timeout.
    pub leader_heard: bool,
    /// A requested move in progress: this member is its source (`Some(true)`) or target.
    pub moving: Option<(Move, bool)>,
}

/// The state name of the classic active/standby products for a member.
pub fn ha_state(f: StateFacts) -> &'static str {
    if f.role == Role::Unreachable {
        return "Unreachable";
    }
    if f.stand_alone {
        return "Stand Alone";
    }
    if let Some((mv, source)) = f.moving {
        return match (mv, source) {
            (Move::Failover, true) => "Primary Failover",
            (Move::Failover, false) => "Secondary Failover",
            (Move::Failback, true) => "Primary Preparing for Failback",
            (Move::Failback, false) => "Secondary Post Failback",
        };
    }
    if !f.initialized {
        return "HA Initializing";
    }
    match f.role {
        Role::Leader if !f.quorum_acked => "Primary Uncertain",
        Role::Leader if !f.all_voters_acked => "Primary Lost Secondary",
        Role::Leader if f.preferred_or_unset => "Primary Active",
        Role::Leader => "Secondary Active",
        Role::Candidate => "Secondary Lost Primary",
        Role::Follower | Role::Learner if f.leader_heard => "Secondary Syncing",
        Role::Follower | Role::Learner => "Secondary Lost Primary",
        Role::Unreachable => "Unreachable",
    }
}

/// Why a membership change is refused, or `None` when it is allowed. `voters` is the current
/// voter set, `after` the voter set the change would leave.
pub fn check_voters(after: &BTreeSet<String>) -> Option<String> {
    match after.len() {
        0 => Some("the change would leave no voter".into()),
        2 => Some(format!(
            "the change would leave two voters ({}); a group of two stops when either is lost. \
             Add or promote a third member first, or remove down to one",
            after.iter().cloned().collect::<Vec<_>>().join(", ")
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }

    fn three() -> GroupConfig {
        GroupConfig {
            name: h("m1"),
            members: BTreeMap::from([
                (h("m1"), "127.0.0.1:7400".into()),
                (h("m2"), "127.0.0.1:7410".into()),
                (h("m3"), "127.0.0.1:7420".into()),
            ]),
            learners: BTreeMap::new(),
            preferred: Some(h("m1")),
            dial: BTreeMap::new(),
            hook: None,
        }
    }

    #[test]
    fn a_valid_group_and_each_refusal() {
        assert_eq!(three().validate(), Ok(()));
        let mut g = three();
        g.name = h("m9");
        assert!(g.validate().unwrap_err().contains("m9"));
        let mut g = three();
        g.members.remove(&h("m3"));
        assert!(g.validate().unwrap_err().contains("two voters"));
        let mut g = three();
        g.learners.insert(h("m2"), "127.0.0.1:7430".into());
        assert!(g.validate().unwrap_err().contains("both"));
        let mut g = three();
        g.preferred = Some(h("m7"));
        assert!(g.validate().unwrap_err().contains("preferred"));
        let mut g = three();
        g.members.insert(h("m3"), "127.0.0.1:7400".into());
        assert!(g.validate().unwrap_err().contains("two members"));
        assert!(GroupConfig::stand_alone("127.0.0.1:7400".into()).is_stand_alone());
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("m1"), node_id("m1"));
        assert_ne!(node_id("m1"), node_id("m2"));
    }

    fn facts(role: Role) -> StateFacts {
        StateFacts {
            role,
            stand_alone: false,
            initialized: true,
            preferred_or_unset: true,
            quorum_acked: true,
            all_voters_acked: true,
            leader_heard: true,
            moving: None,
        }
    }

    #[test]
    fn state_names_follow_the_table() {
        assert_eq!(ha_state(facts(Role::Leader)), "Primary Active");
        let f = StateFacts {
            preferred_or_unset: false,
            ..facts(Role::Leader)
        };
        assert_eq!(ha_state(f), "Secondary Active");
        let f = StateFacts {
            all_voters_acked: false,
            ..facts(Role::Leader)
        };
        assert_eq!(ha_state(f), "Primary Lost Secondary");
        let f = StateFacts {
            quorum_acked: false,
            all_voters_acked: false,
            ..facts(Role::Leader)
        };
        assert_eq!(ha_state(f), "Primary Uncertain");
        assert_eq!(ha_state(facts(Role::Follower)), "Secondary Syncing");
        assert_eq!(ha_state(facts(Role::Learner)), "Secondary Syncing");
        let f = StateFacts {
            leader_heard: false,
            ..facts(Role::Follower)
        };
        assert_eq!(ha_state(f), "Secondary Lost Primary");
        let f = StateFacts {
            initialized: false,
            ..facts(Role::Follower)
        };
        assert_eq!(ha_state(f), "HA Initializing");
        let f = StateFacts {
            stand_alone: true,
            ..facts(Role::Leader)
        };
        assert_eq!(ha_state(f), "Stand Alone");
        for (mv, src, name) in [
            (Move::Failover, true, "Primary Failover"),
            (Move::Failover, false, "Secondary Failover"),
            (Move::Failback, true, "Primary Preparing for Failback"),
            (Move::Failback, false, "Secondary Post Failback"),
        ] {
            let f = StateFacts {
                moving: Some((mv, src)),
                ..facts(Role::Leader)
            };
            assert_eq!(ha_state(f), name);
        }
    }

    #[test]
    fn two_voters_are_refused() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(check_voters(&set(&["m1", "m2"]))
            .unwrap()
            .contains("two voters"));
        assert!(check_voters(&set(&[])).is_some());
        assert_eq!(check_voters(&set(&["m1"])), None);
        assert_eq!(check_voters(&set(&["m1", "m2", "m3"])), None);
    }
}
