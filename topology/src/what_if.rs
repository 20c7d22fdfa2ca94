//! What-if: who would move before anything happens. Two questions, both answered with the
//! routing rule of [`crate::route`] (through [`RouteTable`]), never with a rule of their own:
//!
//! - [`moves`]: every (host, type) whose chosen manager differs between two registry snapshots
//!   of the same topology — the blast radius of an operator action (drain, withdraw, restore)
//!   computed by applying it to a copy of the snapshot.
//! - [`loss_moves`]: for one type, every manager with the hosts that choose it now and where
//!   each would go if that manager's host were lost (its next in line), read from one table in
//!   one pass. Losing a candidate never reorders the others (tiers and rendezvous scores are per
//!   candidate), so the next in line is exactly the new choice; [`if_lost`] recomputes it the
//!   slow way and the property tests hold the two equal.

use std::collections::BTreeMap;

use crate::diff::RouteChange;
use crate::names::{HostName, PackageType};
use crate::route_table::RouteTable;
use crate::snapshot::RegistrySnapshot;
use crate::tree::Topology;

/// Every (host, type) whose chosen manager differs between `before` and `after` (two tables of
/// the same topology), for `package_type` or every type either table holds; sorted by host,
/// then type. `old`/`new` are `None` where no manager is eligible.
pub fn moves_between(
    before: &RouteTable,
    after: &RouteTable,
    package_type: Option<&PackageType>,
) -> Vec<RouteChange> {
    let mut types: Vec<PackageType> = match package_type {
        Some(t) => vec![t.clone()],
        None => before
            .package_types()
            .chain(after.package_types())
            .cloned()
            .collect(),
    };
    types.sort();
    types.dedup();
    let mut out = Vec::new();
    for host in before.host_names() {
        for ty in &types {
            let old = before.chosen(host.as_str(), ty.as_str());
            let new = after.chosen(host.as_str(), ty.as_str());
            if old != new {
                out.push(RouteChange {
                    host: host.clone(),
                    package_type: ty.clone(),
                    old: old.cloned(),
                    new: new.cloned(),
                });
            }
        }
    }
    out
}

/// Every (host, type) of `topology` whose chosen manager differs between the registry
/// snapshots `before` and `after`. See [`moves_between`]; this builds both tables.
pub fn moves(
    topology: &Topology,
    before: &RegistrySnapshot,
    after: &RegistrySnapshot,
    package_type: Option<&PackageType>,
) -> Vec<RouteChange> {
    moves_between(
        &RouteTable::build(topology, before),
        &RouteTable::build(topology, after),
        package_type,
    )
}

/// Who would move if `lost` (the whole host: agent and packages) were lost, recomputed with
/// the routing rule on a copy of the snapshot where `lost` is not alive.
pub fn if_lost(
    topology: &Topology,
    snapshot: &RegistrySnapshot,
    lost: &HostName,
    package_type: Option<&PackageType>,
) -> Vec<RouteChange> {
    let mut after = snapshot.clone();
    after.set_alive(lost.clone(), false);
    moves(topology, snapshot, &after, package_type)
}

/// The hosts one manager carries for a type, and where each would go without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerLoad {
    /// The manager's host.
    pub manager: HostName,
    /// `(host, next)`: every host that chooses `manager` now (by name), and the manager it
    /// would choose if `manager`'s host were lost (`None`: no other manager is eligible).
    pub hosts: Vec<(HostName, Option<HostName>)>,
}

/// For `package_type`, every manager chosen by at least one host, with the hosts that would
/// move if it were lost and where to: by the number of hosts, descending, then by name.
/// A manager's own host is not listed (it is lost with it). One pass over the table: `O(H)`.
pub fn loss_moves(table: &RouteTable, package_type: &PackageType) -> Vec<ManagerLoad> {
    let mut by_manager: BTreeMap<&HostName, Vec<(HostName, Option<HostName>)>> = BTreeMap::new();
    for host in table.host_names() {
        let mut route = table.route_hosts(host.as_str(), package_type.as_str());
        let Some(chosen) = route.next() else {
            continue;
        };
        if chosen == host {
            // The host itself is lost with its manager: it moves nowhere.
            continue;
        }
        by_manager
            .entry(chosen)
            .or_default()
            .push((host.clone(), route.next().cloned()));
    }
    let mut loads: Vec<ManagerLoad> = by_manager
        .into_iter()
        .map(|(m, mut hosts)| {
            hosts.sort();
            ManagerLoad {
                manager: m.clone(),
                hosts,
            }
        })
        .collect();
    // Stable: equal counts stay by name.
    loads.sort_by_key(|l| std::cmp::Reverse(l.hosts.len()));
    loads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::PackageStatus;

    use crate::fixtures::CCM;

    use crate::fixtures::TREE;

    fn h(s: &str) -> HostName {
        HostName::new(s).expect("valid")
    }

    fn ccm() -> PackageType {
        PackageType::new(CCM).expect("valid")
    }

    fn worked_example() -> (Topology, RegistrySnapshot) {
        let mut s = RegistrySnapshot::default();
        for m in ["fm", "agent-1", "agent-3"] {
            s.set_package(h(m), ccm(), "127.0.0.1:7001", PackageStatus::Running);
        }
        (Topology::from_yaml("tree.yaml", TREE).expect("valid"), s)
    }

    #[test]
    fn draining_agent_3_moves_agent_4_and_agent_3_to_agent_1() {
        let (t, before) = worked_example();
        let mut after = before.clone();
        after.set_package(
            h("agent-3"),
            ccm(),
            "127.0.0.1:7001",
            PackageStatus::Draining,
        );
        let m = moves(&t, &before, &after, None);
        let got: Vec<(&str, Option<&str>, Option<&str>)> = m
            .iter()
            .map(|c| {
                (
                    c.host.as_str(),
                    c.old.as_ref().map(HostName::as_str),
                    c.new.as_ref().map(HostName::as_str),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("agent-3", Some("agent-3"), Some("agent-1")),
                ("agent-4", Some("agent-3"), Some("agent-1")),
            ]
        );
    }

    #[test]
    fn nothing_changes_nobody_moves() {
        let (t, s) = worked_example();
        assert!(moves(&t, &s, &s, None).is_empty());
    }

    #[test]
    fn losing_agent_1_moves_agent_2_to_fm_and_losing_agent_3_moves_agent_4_to_agent_1() {
        let (t, s) = worked_example();
        let table = RouteTable::build(&t, &s);
        let loads = loss_moves(&table, &ccm());
        assert_eq!(
            loads,
            vec![
                ManagerLoad {
                    manager: h("agent-1"),
                    hosts: vec![(h("agent-2"), Some(h("fm")))],
                },
                ManagerLoad {
                    manager: h("agent-3"),
                    hosts: vec![(h("agent-4"), Some(h("agent-1")))],
                },
            ]
        );
        // The slow way says the same.
        let slow = if_lost(&t, &s, &h("agent-3"), None);
        assert_eq!(slow.len(), 2, "{slow:?}"); // agent-3 itself and agent-4
        let agent_4 = slow.iter().find(|c| c.host.as_str() == "agent-4").unwrap();
        assert_eq!(agent_4.new, Some(h("agent-1")));
    }
}
