//! Route coverage agrees with `explain` (how many eligible managers each host has) and with
//! the route table (who each host chooses).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use topology::gen::{fleet, FleetSpec};
use topology::{
    coverage, coverage_from_table, explain, HostName, RegistrySnapshot, RouteTable, Topology,
};

fn check(t: &Topology, s: &RegistrySnapshot) -> Result<(), TestCaseError> {
    let table = RouteTable::build(t, s);
    let c = coverage(t, s, None);
    prop_assert_eq!(&c, &coverage_from_table(&table, None));
    let types: Vec<_> = c.types.iter().map(|tc| tc.package_type.clone()).collect();
    prop_assert_eq!(types, s.package_types());
    let n_hosts = t.hosts().count();
    for tc in &c.types {
        let ty = tc.package_type.as_str();
        prop_assert_eq!(tc.hosts_total, n_hosts);
        // Sorted by host name, each host at most once.
        prop_assert!(tc.no_manager.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(tc.single.windows(2).all(|w| w[0].0 < w[1].0));
        let none: BTreeSet<&HostName> = tc.no_manager.iter().collect();
        let single: BTreeMap<&HostName, &HostName> =
            tc.single.iter().map(|(h, m)| (h, m)).collect();
        let mut chosen_by: BTreeMap<&HostName, usize> = BTreeMap::new();
        for h in t.hosts() {
            let e = explain(t, s, h.name.as_str(), ty, &|_| false).expect("known host");
            if none.contains(&h.name) {
                prop_assert!(e.route.is_empty(), "{} {}: {:?}", h.name, ty, e.route);
            } else if let Some(m) = single.get(&h.name) {
                prop_assert_eq!(&e.route, &vec![(*m).clone()], "{} {}", h.name, ty);
            } else {
                prop_assert!(e.route.len() >= 2, "{} {}: {:?}", h.name, ty, e.route);
            }
            if let Some(m) = table.chosen(h.name.as_str(), ty) {
                *chosen_by.entry(m).or_default() += 1;
            }
        }
        prop_assert_eq!(none.len(), tc.no_manager.len());
        prop_assert_eq!(single.len(), tc.single.len());
        let listed: BTreeMap<&HostName, usize> =
            tc.by_manager.iter().map(|(m, n)| (m, *n)).collect();
        prop_assert_eq!(listed.len(), tc.by_manager.len());
        prop_assert_eq!(&listed, &chosen_by);
        let sum: usize = tc.by_manager.iter().map(|(_, n)| n).sum();
        prop_assert_eq!(sum, tc.hosts_total - tc.no_manager.len());
        prop_assert!(tc
            .by_manager
            .windows(2)
            .all(|w| (std::cmp::Reverse(w[0].1), &w[0].0) < (std::cmp::Reverse(w[1].1), &w[1].0)));
        prop_assert_eq!(tc.worst.as_ref(), tc.by_manager.first());
        // One type asked for: the same answer.
        let one = coverage_from_table(&table, Some(&tc.package_type));
        prop_assert_eq!(one.types.as_slice(), std::slice::from_ref(tc));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn coverage_agrees_with_explain_and_the_route_table(seed in any::<u64>(), hosts in 1usize..200, domains in 1usize..40,
                                                        manager_every in 1usize..12, not_running_every in 0usize..4,
                                                        dead_every in 0usize..8, cross in any::<bool>()) {
        let spec = FleetSpec { manager_every, not_running_every, dead_every, types: 3, ..FleetSpec::small(seed, hosts, domains) };
        let (t, s) = fleet(&spec);
        let t = Topology::from_yaml("t", &t.to_yaml().replace("cross_branch: true", &format!("cross_branch: {cross}"))).unwrap();
        check(&t, &s)?;
    }
}

#[test]
fn agrees_on_mid_size_fleets_that_show_every_case() {
    let (t, mut s) = fleet(&FleetSpec {
        manager_every: 6,
        not_running_every: 3,
        dead_every: 5,
        ..FleetSpec::small(7, 1500, 120)
    });
    // No manager of type-0 in the root: without cross-branch routing, the hosts of subtrees
    // holding none have no manager at all.
    let ty = topology::gen::type_name(0);
    for h in &t.domain(t.root()).hosts {
        if let Some(p) = s.hosts.get_mut(h).and_then(|st| st.packages.get_mut(&ty)) {
            p.status = topology::PackageStatus::Stopped;
        }
    }
    let no_cross = Topology::from_yaml(
        "t",
        &t.to_yaml()
            .replace("cross_branch: true", "cross_branch: false"),
    )
    .unwrap();
    let (mut none, mut single, mut more) = (0, 0, 0);
    for t in [&t, &no_cross] {
        check(t, &s).unwrap();
        for tc in coverage(t, &s, None).types {
            none += tc.no_manager.len();
            single += tc.single.len();
            more += tc.hosts_total - tc.no_manager.len() - tc.single.len();
        }
    }
    // The fleets exercise all three classes.
    assert!(none > 0 && single > 0 && more > 0, "{none} {single} {more}");
}
