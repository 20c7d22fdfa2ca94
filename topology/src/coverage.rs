//! Route coverage: per manager type, which hosts of the topology have no eligible manager,
//! which have exactly one (a single point of failure), and how many hosts each chosen
//! manager carries (the hosts that would move if it were lost).
//!
//! Eligibility is exactly that of [`crate::explain`] offline (no agent's hold-downs), read from
//! a [`RouteTable`]: its prefix of [`ROUTE_PREFIX_LEN`] hosts tells 0, 1 or at least 2 eligible
//! managers apart.

use crate::names::{HostName, PackageType};
use crate::route_table::{RouteTable, ROUTE_PREFIX_LEN};
use crate::snapshot::RegistrySnapshot;
use crate::tree::Topology;

// Coverage needs the chosen manager and whether a second one exists.
const _: () = assert!(ROUTE_PREFIX_LEN >= 2);

/// Route coverage of one manager type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeCoverage {
    /// The manager type.
    pub package_type: PackageType,
    /// Number of hosts of the topology.
    pub hosts_total: usize,
    /// Hosts of the topology with no eligible manager of the type (empty route), by name.
    pub no_manager: Vec<HostName>,
    /// `(host, manager)`: hosts with exactly one eligible manager, which is `manager`
    /// (a single point of failure), by host name.
    pub single: Vec<(HostName, HostName)>,
    /// `(manager, hosts)`: every manager chosen by at least one host, with how many hosts
    /// choose it now (they would move if it were lost); by count descending, then name.
    /// The counts add up to `hosts_total - no_manager.len()`.
    pub by_manager: Vec<(HostName, usize)>,
    /// The first entry of `by_manager`: the manager whose loss moves the most hosts (`None`
    /// when no host has a manager).
    pub worst: Option<(HostName, usize)>,
}

/// Route coverage of every type asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// One entry per type, sorted by type.
    pub types: Vec<TypeCoverage>,
}

impl Coverage {
    /// The coverage of one type, when it was computed.
    pub fn get(&self, package_type: &str) -> Option<&TypeCoverage> {
        self.types
            .iter()
            .find(|t| t.package_type.as_str() == package_type)
    }
}

/// Route coverage of `package_type`, or of every type some host of the snapshot runs when
/// `None` (sorted by type). A given type that no host runs has every host in `no_manager`.
///
/// Builds the [`RouteTable`] of `(topology, snapshot)` and calls [`coverage_from_table`]; use
/// that one directly when a table of the revision is at hand.
///
/// Cost: the table build (the performance targets (BENCHMARKS.md): under 20 ms for 100,000 hosts in 5,000 domains), then
/// `O(T·H)` for `T` types and `H` hosts (one row read per host and type, no hashing), plus
/// `O(M log M)` per type to sort the `M` chosen managers; memory `O(H)`. About 9 ms in all
/// for 100,000 hosts, 5,000 domains and 4 types (`cargo bench -p topology --bench routing`).
pub fn coverage(
    topology: &Topology,
    snapshot: &RegistrySnapshot,
    package_type: Option<&PackageType>,
) -> Coverage {
    coverage_from_table(&RouteTable::build(topology, snapshot), package_type)
}

/// Route coverage from a route table: the hosts are those of the topology the table was built
/// from, eligibility that of the snapshot it was built from. `package_type`, or every type of
/// the table when `None` (sorted by type). A type the table does not hold has every host in
/// `no_manager`.
///
/// Cost: `O(T·H)` for `T` types and `H` hosts (one row read per host and type, no hashing),
/// plus `O(M log M)` per type to sort the `M` chosen managers; memory `O(H)`. Under 1 ms for
/// 100,000 hosts and 4 types.
pub fn coverage_from_table(table: &RouteTable, package_type: Option<&PackageType>) -> Coverage {
    let types: Vec<PackageType> = match package_type {
        Some(t) => vec![t.clone()],
        None => table.package_types().cloned().collect(),
    };
    Coverage {
        types: types
            .into_iter()
            .map(|ty| type_coverage(table, ty))
            .collect(),
    }
}

fn type_coverage(table: &RouteTable, package_type: PackageType) -> TypeCoverage {
    let names = table.host_names();
    let mut no_manager = Vec::new();
    let mut single = Vec::new();
    // Hosts choosing each host (by dense id).
    let mut chosen_by = vec![0usize; names.len()];
    match table.prefixes_by_host(package_type.as_str()) {
        None => no_manager.extend(names.iter().cloned()),
        Some(rows) => {
            for (h, row) in rows.enumerate() {
                match *row {
                    [] => no_manager.push(names[h].clone()),
                    [m] => {
                        single.push((names[h].clone(), names[m as usize].clone()));
                        chosen_by[m as usize] += 1;
                    }
                    [m, ..] => chosen_by[m as usize] += 1,
                }
            }
        }
    }
    let mut by_manager: Vec<(HostName, usize)> = chosen_by
        .iter()
        .enumerate()
        .filter(|&(_, &n)| n > 0)
        .map(|(m, &n)| (names[m].clone(), n))
        .collect();
    // Ids are in name order and the sort is stable: equal counts stay by name.
    by_manager.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    TypeCoverage {
        package_type,
        hosts_total: names.len(),
        no_manager,
        single,
        worst: by_manager.first().cloned(),
        by_manager,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::PackageStatus;

    use crate::fixtures::CCM;

    use crate::fixtures::TREE;

    const HOSTS: [&str; 5] = ["agent-1", "agent-2", "agent-3", "agent-4", "fm"];

    fn h(s: &str) -> HostName {
        HostName::new(s).expect("valid")
    }

    fn ccm() -> PackageType {
        PackageType::new(CCM).expect("valid")
    }

    /// Command-control-managers on `managers`, all running.
    fn snapshot(managers: &[&str]) -> RegistrySnapshot {
        let mut s = RegistrySnapshot::default();
        for (i, m) in managers.iter().enumerate() {
            s.set_package(
                h(m),
                ccm(),
                format!("127.0.0.1:{}", 7001 + i),
                PackageStatus::Running,
            );
        }
        s
    }

    fn tree() -> Topology {
        Topology::from_yaml("tree.yaml", TREE).expect("valid")
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(HostName, HostName)> {
        v.iter().map(|(a, b)| (h(a), h(b))).collect()
    }

    fn counts(v: &[(&str, usize)]) -> Vec<(HostName, usize)> {
        v.iter().map(|(a, n)| (h(a), *n)).collect()
    }

    #[test]
    fn worked_example_all_running() {
        let t = tree();
        let c = coverage(&t, &snapshot(&["fm", "agent-1", "agent-3"]), None);
        assert_eq!(c.types.len(), 1);
        let tc = c.get(CCM).expect("computed");
        assert_eq!(tc.package_type, ccm());
        assert_eq!(tc.hosts_total, 5);
        assert!(tc.no_manager.is_empty());
        // Every host has at least two eligible managers (cross-branch is on by default).
        assert!(tc.single.is_empty(), "{:?}", tc.single);
        assert_eq!(
            tc.by_manager,
            counts(&[("agent-1", 2), ("agent-3", 2), ("fm", 1)])
        );
        assert_eq!(tc.worst, Some((h("agent-1"), 2)));
    }

    #[test]
    fn worked_example_only_fm_running_every_host_is_single_on_fm() {
        let t = tree();
        let c = coverage(&t, &snapshot(&["fm"]), Some(&ccm()));
        let tc = c.get(CCM).expect("computed");
        assert!(tc.no_manager.is_empty());
        let want: Vec<(&str, &str)> = HOSTS.iter().map(|x| (*x, "fm")).collect();
        assert_eq!(tc.single, pairs(&want));
        assert_eq!(tc.by_manager, counts(&[("fm", 5)]));
        assert_eq!(tc.worst, Some((h("fm"), 5)));
    }

    #[test]
    fn worked_example_no_manager_running_every_host_is_uncovered() {
        let t = tree();
        // Managers deployed but none running: the type is known, nothing is eligible.
        let mut s = snapshot(&[]);
        for (i, m) in ["fm", "agent-1", "agent-3"].into_iter().enumerate() {
            s.set_package(
                h(m),
                ccm(),
                format!("127.0.0.1:{}", 7001 + i),
                PackageStatus::Stopped,
            );
        }
        for s in [s, snapshot(&[])] {
            let c = coverage(&t, &s, Some(&ccm()));
            let tc = c.get(CCM).expect("computed");
            assert_eq!(tc.no_manager, HOSTS.map(h).to_vec());
            assert!(tc.single.is_empty());
            assert!(tc.by_manager.is_empty());
            assert_eq!(tc.worst, None);
            assert_eq!(tc.hosts_total, 5);
        }
        // Without a type, a snapshot with no packages has no type to report.
        assert!(coverage(&t, &snapshot(&[]), None).types.is_empty());
    }

    #[test]
    fn without_cross_branch_a_lone_manager_leaves_the_other_branch_uncovered() {
        let t = Topology::from_yaml(
            "tree.yaml",
            &format!(
                "version: 1\nrouting: {{cross_branch: false}}\n{}  - domain: subdomain-2\n    hosts: [s2-host]\n",
                TREE.trim_start_matches("version: 1\n")
            ),
        )
        .expect("valid");
        let c = coverage(&t, &snapshot(&["agent-3"]), Some(&ccm()));
        let tc = c.get(CCM).expect("computed");
        // agent-3 is a descendant (branch) of fm, subdomain-1 and subdomain-2.
        assert_eq!(
            tc.no_manager,
            vec![h("agent-1"), h("agent-2"), h("fm"), h("s2-host")]
        );
        assert_eq!(
            tc.single,
            pairs(&[("agent-3", "agent-3"), ("agent-4", "agent-3")])
        );
        assert_eq!(tc.by_manager, counts(&[("agent-3", 2)]));
        assert_eq!(tc.hosts_total, 6);
    }

    #[test]
    fn from_table_matches_and_ties_sort_by_name() {
        let t = tree();
        let s = snapshot(&["fm", "agent-1", "agent-3"]);
        let table = RouteTable::build(&t, &s);
        assert_eq!(coverage_from_table(&table, None), coverage(&t, &s, None));
        // agent-1 and agent-3 both carry 2: name order breaks the tie.
        let tc = &coverage_from_table(&table, None).types[0];
        assert!(tc.by_manager[0].0 < tc.by_manager[1].0);
        // A type nobody runs: every host uncovered.
        let other = PackageType::new("other-manager").expect("valid");
        let c = coverage_from_table(&table, Some(&other));
        assert_eq!(c.types[0].no_manager.len(), 5);
        assert_eq!(c.types[0].package_type, other);
    }
}
