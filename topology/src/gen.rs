//! Deterministic generated fleets for benchmarks and property tests: a seeded tree of
//! domains, hosts spread over it, and managers of several types in about one domain in ten
//! plus the root. The same spec always yields the same fleet.

use crate::names::{DomainName, HostName, PackageType};
use crate::snapshot::{PackageStatus, RegistrySnapshot};
use crate::tree::{DomainId, Topology, TopologyBuilder};

/// The shape of a generated fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSpec {
    /// Seed of the generator.
    pub seed: u64,
    /// Number of hosts.
    pub hosts: usize,
    /// Number of domains, root included (at least 1).
    pub domains: usize,
    /// Number of manager types (`type-0`, `type-1`, ...).
    pub types: usize,
    /// Deepest domain (root = 0).
    pub max_depth: u32,
    /// One domain in `manager_every` holds managers of a type (the root always does).
    pub manager_every: usize,
    /// One package in `not_running_every` is not `running` (failing, draining, ...); 0 = none.
    pub not_running_every: usize,
    /// One host in `dead_every` is not alive; 0 = none.
    pub dead_every: usize,
}

impl FleetSpec {
    /// The performance targets (BENCHMARKS.md) benchmark fleet: 100,000 hosts in 5,000 domains, 4 manager types.
    pub fn large(seed: u64) -> Self {
        FleetSpec {
            seed,
            hosts: 100_000,
            domains: 5_000,
            types: 4,
            max_depth: 6,
            manager_every: 10,
            not_running_every: 20,
            dead_every: 100,
        }
    }

    /// A small fleet of the same shape, for tests.
    pub fn small(seed: u64, hosts: usize, domains: usize) -> Self {
        FleetSpec {
            hosts,
            domains,
            ..FleetSpec::large(seed)
        }
    }
}

/// SplitMix64: small, fast and good enough for generating test fleets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Name of the `i`-th manager type.
pub fn type_name(i: usize) -> PackageType {
    PackageType::new(format!("type-{i}")).expect("valid by construction")
}

/// Generates a fleet: its topology and a registry snapshot listing every host.
pub fn fleet(spec: &FleetSpec) -> (Topology, RegistrySnapshot) {
    let mut rng = Rng::new(spec.seed);
    let mut b = TopologyBuilder::new(DomainName::new("root").expect("valid"));
    let mut depth = vec![0u32];
    for i in 1..spec.domains.max(1) {
        let mut parent = rng.below(i);
        while depth[parent] >= spec.max_depth.max(1) {
            parent = rng.below(parent.max(1));
        }
        let name = DomainName::new(format!("dom-{i:05}")).expect("valid");
        b.add_domain(name, DomainId(parent as u32))
            .expect("unique by construction");
        depth.push(depth[parent] + 1);
    }
    let n_domains = depth.len();
    let mut hosts_of: Vec<Vec<HostName>> = vec![Vec::new(); n_domains];
    for i in 0..spec.hosts {
        let d = if i < n_domains {
            i
        } else {
            rng.below(n_domains)
        };
        let name = HostName::new(format!("host-{i:06}")).expect("valid");
        b.add_host(name.clone(), DomainId(d as u32), None)
            .expect("unique by construction");
        hosts_of[d].push(name);
    }
    let topology = b.build();

    let mut snapshot = RegistrySnapshot {
        revision: crate::names::Revision(spec.seed),
        ..Default::default()
    };
    for h in topology.hosts() {
        let alive = spec.dead_every == 0 || rng.below(spec.dead_every) != 0;
        snapshot.set_alive(h.name.clone(), alive);
    }
    let mut port = 10_000u32;
    for t in 0..spec.types {
        let ty = type_name(t);
        for (d, hosts) in hosts_of.iter().enumerate() {
            if hosts.is_empty() || (d != 0 && rng.below(spec.manager_every.max(1)) != 0) {
                continue;
            }
            let count = 1 + rng.below(2.min(hosts.len()));
            for _ in 0..count {
                let h = hosts[rng.below(hosts.len())].clone();
                let status =
                    if spec.not_running_every != 0 && rng.below(spec.not_running_every) == 0 {
                        PackageStatus::ALL[rng.below(PackageStatus::ALL.len())]
                    } else {
                        PackageStatus::Running
                    };
                port = port.wrapping_add(1);
                snapshot.set_package(
                    h,
                    ty.clone(),
                    format!("127.0.0.1:{}", port % 60_000 + 1024),
                    status,
                );
            }
        }
    }
    (topology, snapshot)
}
