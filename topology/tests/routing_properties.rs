//! Property tests of the routing rule (the routing rule (docs/routing.md)) and of the YAML round trip.

use std::collections::BTreeSet;

use proptest::prelude::*;
use topology::gen::{fleet, type_name, FleetSpec, Rng};
use topology::{
    explain, DomainName, HostName, PackageStatus, PackageType, RegistrySnapshot, RouteTable,
    RoutingPolicy, Tier, Topology, TopologyBuilder,
};

fn spec(seed: u64, hosts: usize, domains: usize) -> FleetSpec {
    FleetSpec {
        manager_every: 3,
        not_running_every: 3,
        dead_every: 6,
        types: 2,
        ..FleetSpec::small(seed, hosts, domains)
    }
}

/// Writes the topology with hosts and subdomains in a seeded random order.
fn shuffled_yaml(t: &Topology, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = format!(
        "version: 1\nrouting: {{cross_branch: {}}}\n",
        t.routing().cross_branch
    );
    let mut stack = vec![(t.root(), 0usize)];
    while let Some((id, indent)) = stack.pop() {
        let pad = " ".repeat(indent);
        let d = t.domain(id);
        if indent == 0 {
            out.push_str(&format!("domain: {}\n", d.name));
        } else {
            out.push_str(&format!("{}- domain: {}\n", " ".repeat(indent - 2), d.name));
        }
        let mut hosts = d.hosts.clone();
        for i in (1..hosts.len()).rev() {
            hosts.swap(i, rng.below(i + 1));
        }
        if !hosts.is_empty() {
            out.push_str(&format!(
                "{pad}hosts: [{}]\n",
                hosts
                    .iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut children = d.children.clone();
        for i in (1..children.len()).rev() {
            children.swap(i, rng.below(i + 1));
        }
        if !children.is_empty() {
            out.push_str(&format!("{pad}subdomains:\n"));
            // Depth-first through the stack: each entry follows its parent's `subdomains:`
            // line or the end of a sibling's subtree, so the YAML nests correctly.
            for c in children {
                stack.push((c, indent + 4));
            }
        }
    }
    out
}

fn eligible_set(
    t: &Topology,
    s: &RegistrySnapshot,
    ty: &PackageType,
    requester: &str,
    held: &BTreeSet<String>,
) -> BTreeSet<String> {
    let d = t.host(requester).unwrap().domain;
    s.hosts
        .iter()
        .filter(|(name, st)| {
            let Some(p) = st.packages.get(ty) else {
                return false;
            };
            let Some(host) = t.host(name.as_str()) else {
                return false;
            };
            let branch = matches!(
                Tier::of(t, d, host.domain, name.as_str() == requester),
                Tier::Branch { .. }
            );
            p.status == PackageStatus::Running
                && st.alive
                && !held.contains(name.as_str())
                && (t.routing().cross_branch || !branch)
        })
        .map(|(n, _)| n.to_string())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn route_is_exactly_the_eligible_set_in_nondecreasing_tiers(seed in any::<u64>(), hosts in 1usize..120, domains in 1usize..30,
                                                                held_mask in any::<u64>(), cross in any::<bool>()) {
        let (t, s) = fleet(&spec(seed, hosts, domains));
        let t = Topology::from_yaml("t", &t.to_yaml().replace("cross_branch: true", &format!("cross_branch: {cross}"))).unwrap();
        let held: BTreeSet<String> = t.hosts().enumerate().filter(|(i, _)| held_mask >> (i % 64) & 1 == 1 && i % 3 == 0).map(|(_, h)| h.name.to_string()).collect();
        for ty in s.package_types() {
            for h in t.hosts() {
                let e = explain(&t, &s, h.name.as_str(), ty.as_str(), &|m| held.contains(m)).unwrap();
                let route: BTreeSet<String> = e.route.iter().map(|h| h.to_string()).collect();
                prop_assert_eq!(route.len(), e.route.len());
                prop_assert_eq!(&route, &eligible_set(&t, &s, &ty, h.name.as_str(), &held));
                let tiers: Vec<Tier> = e.route.iter().map(|r| e.candidates.iter().find(|c| &c.host == r).unwrap().tier.unwrap()).collect();
                prop_assert!(tiers.windows(2).all(|w| w[0] <= w[1]), "{:?}", tiers);
                prop_assert_eq!(e.chosen.as_ref(), e.route.first());
                // Every host running the type is a candidate, eligible ones exactly on the route.
                let running: usize = s.hosts.values().filter(|st| st.packages.contains_key(&ty)).count();
                prop_assert_eq!(e.candidates.len(), running);
                for c in &e.candidates {
                    prop_assert_eq!(c.eligible, c.reason.is_none());
                }
            }
        }
    }

    #[test]
    fn answer_does_not_depend_on_file_order(seed in any::<u64>(), hosts in 1usize..80, domains in 1usize..20, order in any::<u64>()) {
        let (t, s) = fleet(&spec(seed, hosts, domains));
        let y = shuffled_yaml(&t, order);
        let t2 = Topology::from_yaml("shuffled.yaml", &y).map_err(|e| TestCaseError::fail(format!("{e}\n{y}")))?;
        prop_assert!(t == t2);
        for ty in s.package_types() {
            for h in t.hosts() {
                let a = explain(&t, &s, h.name.as_str(), ty.as_str(), &|_| false).unwrap();
                let b = explain(&t2, &s, h.name.as_str(), ty.as_str(), &|_| false).unwrap();
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn yaml_round_trips(seed in any::<u64>(), hosts in 0usize..80, domains in 1usize..25, cross in any::<bool>(), ms in 0u64..100_000) {
        let (t, _) = fleet(&spec(seed, hosts, domains));
        let mut b = TopologyBuilder::new(DomainName::new("root").unwrap());
        b.routing(RoutingPolicy { cross_branch: cross, revert_after: topology::RevertAfter::After(std::time::Duration::from_millis(ms)) });
        for (_, d) in t.domains().skip(1) {
            let p = b.domain_id(t.domain(d.parent.unwrap()).name.as_str()).unwrap();
            b.add_domain(d.name.clone(), p).unwrap();
        }
        for (i, h) in t.hosts().enumerate() {
            let d = b.domain_id(t.domain(h.domain).name.as_str()).unwrap();
            let addr = (i % 3 == 0).then(|| format!("10.0.{}.{}: \"odd\" #text", i / 256, i % 256));
            b.add_host(h.name.clone(), d, addr).unwrap();
        }
        let t = b.build();
        let y = t.to_yaml();
        let back = Topology::from_yaml("rt.yaml", &y).map_err(|e| TestCaseError::fail(format!("{e}\n{y}")))?;
        prop_assert!(back == t);
        prop_assert_eq!(back.to_yaml(), y);
    }

    #[test]
    fn choice_among_equal_managers_is_stable_when_unrelated_hosts_come_and_go(seed in any::<u64>(), k in 2usize..8, extra in 0usize..20) {
        // Managers m0..mk in the root, requesters in a subdomain.
        let ty = type_name(0);
        let build = |managers: &[usize], extra_hosts: usize| {
            let mut b = TopologyBuilder::new(DomainName::new("root").unwrap());
            let sub = b.add_domain(DomainName::new("sub").unwrap(), b.domain_id("root").unwrap()).unwrap();
            let other = b.add_domain(DomainName::new("other").unwrap(), b.domain_id("root").unwrap()).unwrap();
            let mut s = RegistrySnapshot::default();
            for i in 0..8 {
                b.add_host(HostName::new(format!("m{i}")).unwrap(), b.domain_id("root").unwrap(), None).unwrap();
            }
            for &i in managers {
                s.set_package(HostName::new(format!("m{i}")).unwrap(), ty.clone(), "127.0.0.1:1", PackageStatus::Running);
            }
            for r in 0..20 {
                b.add_host(HostName::new(format!("r{r}-{seed}")).unwrap(), sub, None).unwrap();
            }
            for x in 0..extra_hosts {
                b.add_host(HostName::new(format!("x{x}")).unwrap(), other, None).unwrap();
            }
            (b.build(), s)
        };
        let all: Vec<usize> = (0..k).collect();
        let (t, s) = build(&all, 0);
        for r in 0..20 {
            let req = format!("r{r}-{seed}");
            let chosen = explain(&t, &s, &req, ty.as_str(), &|_| false).unwrap().chosen.unwrap();
            // Unrelated hosts appear elsewhere: no change.
            let (t2, s2) = build(&all, extra);
            prop_assert_eq!(explain(&t2, &s2, &req, ty.as_str(), &|_| false).unwrap().chosen, Some(chosen.clone()));
            // Another manager of the same tier leaves: no change.
            let others: Vec<usize> = all.iter().copied().filter(|&i| format!("m{i}") != chosen.as_str()).collect();
            let gone = others[(seed as usize + r) % others.len()];
            let fewer: Vec<usize> = all.iter().copied().filter(|&i| i != gone).collect();
            let (t3, s3) = build(&fewer, extra);
            prop_assert_eq!(explain(&t3, &s3, &req, ty.as_str(), &|_| false).unwrap().chosen, Some(chosen.clone()));
        }
    }
}

#[test]
fn ten_thousand_requesters_spread_evenly_over_equal_managers() {
    let ty = type_name(0);
    for k in 2..=8usize {
        let mut b = TopologyBuilder::new(DomainName::new("root").unwrap());
        let sub = b
            .add_domain(
                DomainName::new("edge").unwrap(),
                b.domain_id("root").unwrap(),
            )
            .unwrap();
        let mut s = RegistrySnapshot::default();
        for i in 0..k {
            let m = HostName::new(format!("manager-{i}")).unwrap();
            b.add_host(m.clone(), b.domain_id("root").unwrap(), None)
                .unwrap();
            s.set_package(m, ty.clone(), "127.0.0.1:1", PackageStatus::Running);
        }
        for r in 0..10_000 {
            b.add_host(HostName::new(format!("agent-{r}")).unwrap(), sub, None)
                .unwrap();
        }
        let t = b.build();
        let table = RouteTable::build(&t, &s);
        let mut counts = vec![0usize; k];
        for r in 0..10_000 {
            let c = table.chosen(&format!("agent-{r}"), ty.as_str()).unwrap();
            counts[c
                .as_str()
                .trim_start_matches("manager-")
                .parse::<usize>()
                .unwrap()] += 1;
        }
        let even = 10_000.0 / k as f64;
        for c in &counts {
            assert!((*c as f64 - even).abs() <= even * 0.10, "k={k}: {counts:?}");
        }
        // Spot-check the table against explain.
        for r in (0..10_000).step_by(997) {
            let h = format!("agent-{r}");
            assert_eq!(
                table.chosen(&h, ty.as_str()),
                explain(&t, &s, &h, ty.as_str(), &|_| false)
                    .unwrap()
                    .chosen
                    .as_ref()
            );
        }
    }
}
