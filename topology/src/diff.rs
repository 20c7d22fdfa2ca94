//! What changes between two topologies, and who moves (`registry-manager topology diff`).

use std::collections::BTreeSet;

use crate::names::{DomainName, HostName, PackageType};
use crate::route_table::RouteTable;
use crate::snapshot::RegistrySnapshot;
use crate::tree::Topology;

/// One (host, type) whose chosen manager changes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteChange {
    /// The requester.
    pub host: HostName,
    /// The manager type.
    pub package_type: PackageType,
    /// Chosen under the old topology.
    pub old: Option<HostName>,
    /// Chosen under the new topology (`None` when the host is gone).
    pub new: Option<HostName>,
}

/// Tree changes and their blast radius.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyDiff {
    /// Domains only in the new topology.
    pub domains_added: Vec<DomainName>,
    /// Domains only in the old topology.
    pub domains_removed: Vec<DomainName>,
    /// `(domain, old parent, new parent)`.
    pub domains_moved: Vec<(DomainName, DomainName, DomainName)>,
    /// Hosts only in the new topology.
    pub hosts_added: Vec<HostName>,
    /// Hosts only in the old topology.
    pub hosts_removed: Vec<HostName>,
    /// `(host, from domain, to domain)`.
    pub hosts_moved: Vec<(HostName, DomainName, DomainName)>,
    /// Every (host, type) whose chosen manager changes, sorted by host then type.
    pub route_changes: Vec<RouteChange>,
}

impl TopologyDiff {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.domains_added.is_empty()
            && self.domains_removed.is_empty()
            && self.domains_moved.is_empty()
            && self.hosts_added.is_empty()
            && self.hosts_removed.is_empty()
            && self.hosts_moved.is_empty()
            && self.route_changes.is_empty()
    }
}

/// Compares two topologies under the same registry snapshot.
pub fn diff(old: &Topology, new: &Topology, snapshot: &RegistrySnapshot) -> TopologyDiff {
    let mut d = TopologyDiff::default();
    for (_, dom) in new.domains() {
        match old.domain_id(dom.name.as_str()) {
            None => d.domains_added.push(dom.name.clone()),
            Some(oid) => {
                let op = old.parent(oid).map(|p| old.domain(p).name.clone());
                let np = dom.parent.map(|p| new.domain(p).name.clone());
                if let (Some(op), Some(np)) = (op, np) {
                    if op != np {
                        d.domains_moved.push((dom.name.clone(), op, np));
                    }
                }
            }
        }
    }
    for (_, dom) in old.domains() {
        if new.domain_id(dom.name.as_str()).is_none() {
            d.domains_removed.push(dom.name.clone());
        }
    }
    for h in new.hosts() {
        match old.host(h.name.as_str()) {
            None => d.hosts_added.push(h.name.clone()),
            Some(oh) => {
                let from = &old.domain(oh.domain).name;
                let to = &new.domain(h.domain).name;
                if from != to {
                    d.hosts_moved
                        .push((h.name.clone(), from.clone(), to.clone()));
                }
            }
        }
    }
    for h in old.hosts() {
        if new.host(h.name.as_str()).is_none() {
            d.hosts_removed.push(h.name.clone());
        }
    }
    d.domains_added.sort();
    d.domains_removed.sort();
    d.domains_moved.sort();

    let old_table = RouteTable::build(old, snapshot);
    let new_table = RouteTable::build(new, snapshot);
    let hosts: BTreeSet<&HostName> = old.hosts().chain(new.hosts()).map(|h| &h.name).collect();
    let types = snapshot.package_types();
    for h in hosts {
        for t in &types {
            let o = old_table.chosen(h.as_str(), t.as_str());
            let n = new_table.chosen(h.as_str(), t.as_str());
            if o != n {
                d.route_changes.push(RouteChange {
                    host: h.clone(),
                    package_type: t.clone(),
                    old: o.cloned(),
                    new: n.cloned(),
                });
            }
        }
    }
    d
}
