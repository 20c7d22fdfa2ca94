//! What-if answers agree with recomputing routes: the one-pass loss list of every manager
//! equals the route changes of a snapshot where that manager's host is lost.

use std::collections::BTreeMap;

use proptest::prelude::*;
use topology::gen::{fleet, FleetSpec};
use topology::what_if::{if_lost, loss_moves};
use topology::{HostName, RegistrySnapshot, RouteTable, Topology};

fn check(t: &Topology, s: &RegistrySnapshot) -> Result<(), TestCaseError> {
    let table = RouteTable::build(t, s);
    for ty in s.package_types() {
        let loads = loss_moves(&table, &ty);
        // By count descending, each manager once.
        prop_assert!(loads
            .windows(2)
            .all(|w| w[0].hosts.len() >= w[1].hosts.len()));
        for load in &loads {
            let slow: BTreeMap<HostName, Option<HostName>> =
                if_lost(t, s, &load.manager, Some(&ty))
                    .into_iter()
                    .filter(|c| c.host != load.manager)
                    .map(|c| {
                        assert_eq!(c.old.as_ref(), Some(&load.manager), "{c:?}");
                        (c.host, c.new)
                    })
                    .collect();
            let fast: BTreeMap<HostName, Option<HostName>> = load.hosts.iter().cloned().collect();
            prop_assert_eq!(&fast, &slow, "manager {} of {}", load.manager, ty);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn loss_moves_agree_with_recomputed_routes(seed in any::<u64>(), hosts in 1usize..120, domains in 1usize..30,
                                              manager_every in 1usize..10, not_running_every in 0usize..4,
                                              dead_every in 0usize..8, cross in any::<bool>()) {
        let spec = FleetSpec { manager_every, not_running_every, dead_every, types: 2, ..FleetSpec::small(seed, hosts, domains) };
        let (t, s) = fleet(&spec);
        let t = Topology::from_yaml("t", &t.to_yaml().replace("cross_branch: true", &format!("cross_branch: {cross}"))).unwrap();
        check(&t, &s)?;
    }
}
