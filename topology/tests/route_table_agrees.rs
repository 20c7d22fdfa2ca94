//! The route table must agree exactly with `explain`: its route is a prefix of the full route.

use proptest::prelude::*;
use topology::gen::{fleet, FleetSpec};
use topology::{explain, RegistrySnapshot, RouteTable, RoutingPolicy, Topology, TopologyBuilder};

fn assert_agrees(t: &Topology, s: &RegistrySnapshot) {
    let table = RouteTable::build(t, s);
    for ty in s.package_types() {
        for h in t.hosts() {
            let e = explain(t, s, h.name.as_str(), ty.as_str(), &|_| false).expect("known host");
            let r = table
                .route(h.name.as_str(), ty.as_str())
                .expect("known host and type");
            let n = r.len().min(e.route.len());
            assert_eq!(r, &e.route[..n], "host {} type {}", h.name, ty);
            assert_eq!(
                r.len(),
                e.route.len().min(topology::route_table::ROUTE_PREFIX_LEN)
            );
            assert_eq!(
                table.chosen(h.name.as_str(), ty.as_str()),
                e.chosen.as_ref()
            );
        }
    }
}

/// The same fleet with another routing policy.
fn with_policy(t: &Topology, routing: RoutingPolicy) -> Topology {
    let mut b = TopologyBuilder::new(t.domain(t.root()).name.clone());
    b.routing(routing);
    for (id, d) in t.domains().skip(1) {
        let p = b
            .domain_id(t.domain(d.parent.expect("not root")).name.as_str())
            .expect("parents first");
        let _ = id;
        b.add_domain(d.name.clone(), p).expect("unique");
    }
    for h in t.hosts() {
        let d = b
            .domain_id(t.domain(h.domain).name.as_str())
            .expect("added");
        b.add_host(h.name.clone(), d, h.address.clone())
            .expect("unique");
    }
    b.build()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn table_is_a_prefix_of_explain(seed in any::<u64>(), hosts in 1usize..300, domains in 1usize..60,
                                    manager_every in 1usize..12, cross in any::<bool>()) {
        let spec = FleetSpec { manager_every, not_running_every: 4, dead_every: 7, ..FleetSpec::small(seed, hosts, domains) };
        let (t, s) = fleet(&spec);
        let t = with_policy(&t, RoutingPolicy { cross_branch: cross, ..RoutingPolicy::default() });
        assert_agrees(&t, &s);
    }
}

#[test]
fn agrees_on_a_mid_size_fleet() {
    let (t, s) = fleet(&FleetSpec::small(7, 1200, 100));
    assert_agrees(&t, &s);
}

#[test]
fn update_type_matches_a_full_rebuild() {
    let (t, mut s) = fleet(&FleetSpec::small(11, 2000, 150));
    let mut table = RouteTable::build(&t, &s);
    let ty = topology::gen::type_name(1);
    // Stop every manager of type-1 in the root: many routes move.
    let root_hosts: Vec<_> = t.domain(t.root()).hosts.clone();
    for h in root_hosts {
        if let Some(p) = s.hosts.get_mut(&h).and_then(|st| st.packages.get_mut(&ty)) {
            p.status = topology::PackageStatus::Stopped;
        }
    }
    table.update_type(&t, &s, ty.as_str());
    let fresh = RouteTable::build(&t, &s);
    for h in t.hosts() {
        for ty in s.package_types() {
            assert_eq!(
                table.route(h.name.as_str(), ty.as_str()),
                fresh.route(h.name.as_str(), ty.as_str())
            );
        }
    }
    assert_agrees(&t, &s);
}
