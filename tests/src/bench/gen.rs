//! Deterministic generated fleets for the benchmarks: a domain tree of a given size and fan-out,
//! hosts spread evenly over it, and manager packages placed by a fixed rule. The same sizes
//! always give the same fleet, so runs on different days compare.

use std::fmt::Write as _;

use topology::{
    DomainName, HostName, PackageStatus, PackageType, RegistrySnapshot, Topology, TopologyBuilder,
};

/// The manager type every benchmark routes to.
pub const CCM: &str = "command-control-manager";
/// A second, sparser manager type for the in-process route table.
pub const EVENT: &str = "event-manager";

/// A generated fleet: domains in a tree (parents before children) and hosts in domains.
#[derive(Debug, Clone)]
pub struct GeneratedFleet {
    /// Domain names; index 0 is the root.
    pub domains: Vec<String>,
    /// Parent of each domain (`None` for the root).
    pub parents: Vec<Option<usize>>,
    /// Hosts of each domain, in order.
    pub hosts: Vec<Vec<String>>,
    /// `routing.revert_after`, when not the default.
    pub revert_after: Option<String>,
}

impl GeneratedFleet {
    /// `domains` domains in a tree of fan-out `fanout` (domain `i`'s parent is `(i - 1) /
    /// fanout`), with `hosts` hosts spread evenly: domain `d` holds hosts named `h{n}`.
    pub fn new(domains: usize, hosts: usize, fanout: usize) -> GeneratedFleet {
        let domains = domains.max(1);
        let fanout = fanout.max(1);
        let names = (0..domains).map(|i| format!("d{i}")).collect();
        let parents = (0..domains)
            .map(|i| (i > 0).then(|| (i - 1) / fanout))
            .collect();
        let mut per_domain = vec![Vec::new(); domains];
        for h in 0..hosts {
            // Contiguous blocks: hosts h0..hk in d0, and so on.
            per_domain[h * domains / hosts.max(1)].push(format!("h{h}"));
        }
        GeneratedFleet {
            domains: names,
            parents,
            hosts: per_domain,
            revert_after: None,
        }
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.iter().map(Vec::len).sum()
    }

    /// Every host name, domain by domain.
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().flatten().map(String::as_str)
    }

    /// The hosts that run a `command-control-manager`: the first host of every `every`-th
    /// domain (domain 0 included).
    pub fn managers(&self, every: usize) -> Vec<&str> {
        self.hosts
            .iter()
            .enumerate()
            .filter(|(i, hs)| i.is_multiple_of(every.max(1)) && !hs.is_empty())
            .map(|(_, hs)| hs[0].as_str())
            .collect()
    }

    /// The topology, built in code (fast for 100,000 hosts).
    pub fn topology(&self) -> anyhow::Result<Topology> {
        let mut b = TopologyBuilder::new(DomainName::new(self.domains[0].clone())?);
        let mut ids = Vec::with_capacity(self.domains.len());
        ids.push(b.domain_id(&self.domains[0]).expect("root exists"));
        for (i, name) in self.domains.iter().enumerate().skip(1) {
            let parent = ids[self.parents[i].expect("only the root has no parent")];
            let id = b
                .add_domain(DomainName::new(name.clone())?, parent)
                .map_err(anyhow::Error::msg)?;
            ids.push(id);
        }
        for (d, hosts) in self.hosts.iter().enumerate() {
            for h in hosts {
                b.add_host(HostName::new(h.clone())?, ids[d], None)
                    .map_err(anyhow::Error::msg)?;
            }
        }
        Ok(b.build())
    }

    /// The topology file (the topology file format (docs/topology.md)), for the manager's `--topology`.
    pub fn to_yaml(&self) -> String {
        let mut children = vec![Vec::new(); self.domains.len()];
        for (i, p) in self.parents.iter().enumerate() {
            if let Some(p) = p {
                children[*p].push(i);
            }
        }
        let mut y = String::from("version: 1\n");
        if let Some(r) = &self.revert_after {
            let _ = writeln!(y, "routing:\n  revert_after: {r}");
        }
        let _ = writeln!(y, "domain: {}", self.domains[0]);
        // Iterative pre-order walk: (domain, indentation of its keys).
        let mut stack = vec![(0usize, String::new())];
        while let Some((d, indent)) = stack.pop() {
            if d != 0 {
                let _ = writeln!(y, "{}- domain: {}", &indent[2..], self.domains[d]);
            }
            let _ = writeln!(y, "{indent}hosts: [{}]", self.hosts[d].join(", "));
            if !children[d].is_empty() {
                let _ = writeln!(y, "{indent}subdomains:");
                for &c in children[d].iter().rev() {
                    stack.push((c, format!("{indent}    ")));
                }
            }
        }
        y
    }

    /// A registry for the in-process route table: a `command-control-manager` on the first host
    /// of every 4th domain and an `event-manager` on the second host of every 16th, with one in
    /// 50 of each draining and one in 70 of their hosts not alive.
    pub fn snapshot(&self) -> anyhow::Result<RegistrySnapshot> {
        let mut s = RegistrySnapshot::default();
        let ccm = PackageType::new(CCM)?;
        let event = PackageType::new(EVENT)?;
        let mut n = 0usize;
        for (d, hosts) in self.hosts.iter().enumerate() {
            let mut place = |host: &str, ty: &PackageType| -> anyhow::Result<()> {
                n += 1;
                let status = if n.is_multiple_of(50) {
                    PackageStatus::Draining
                } else {
                    PackageStatus::Running
                };
                let name = HostName::new(host)?;
                s.set_package(name.clone(), ty.clone(), format!("{host}:7001"), status);
                if n.is_multiple_of(70) {
                    s.set_alive(name, false);
                }
                Ok(())
            };
            if d.is_multiple_of(4) {
                if let Some(h) = hosts.first() {
                    place(h, &ccm)?;
                }
            }
            if d.is_multiple_of(16) {
                if let Some(h) = hosts.get(1) {
                    place(h, &event)?;
                }
            }
        }
        Ok(s)
    }
}

/// The fleet of the failover benchmarks: the worked example of the routing rule (docs/routing.md) with more requesters.
/// `command-control-manager` runs on `agent-1` (subdomain-1) and `agent-3` (subdomain-1a);
/// `agent-3`..`agent-6` choose `agent-3`, and `agent-1` is next in line.
pub fn failover_topology(revert_after: Option<&str>) -> String {
    let routing = revert_after
        .map(|r| format!("routing:\n  revert_after: {r}\n"))
        .unwrap_or_default();
    format!(
        "version: 1
{routing}domain: framework
hosts: [fm]
subdomains:
  - domain: subdomain-1
    hosts: [agent-1, agent-2]
    subdomains:
      - domain: subdomain-1a
        hosts: [agent-3, agent-4, agent-5, agent-6]
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_yaml_parses_to_the_built_topology() {
        let g = GeneratedFleet::new(40, 400, 3);
        let parsed = Topology::from_yaml("gen", &g.to_yaml()).expect("generated YAML is valid");
        let built = g.topology().expect("builder accepts the fleet");
        assert_eq!(parsed, built);
        let s = built.summary();
        assert_eq!((s.domains, s.hosts), (40, 400));
    }

    #[test]
    fn hosts_spread_evenly_and_managers_are_placed_by_rule() {
        let g = GeneratedFleet::new(10, 100, 4);
        assert!(g.hosts.iter().all(|h| h.len() == 10));
        assert_eq!(g.managers(5), vec!["h0", "h50"]);
        let s = g.snapshot().expect("snapshot");
        assert_eq!(s.package_types().len(), 2);
    }

    #[test]
    fn failover_topology_is_valid() {
        for r in [None, Some("300ms")] {
            Topology::from_yaml("failover", &failover_topology(r)).expect("valid");
        }
    }
}
