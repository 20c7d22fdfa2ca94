//! The domain tree (the topology file format (docs/topology.md)): an arena of domains, every host in exactly one of them, and the
//! routing policy. Built only from a validated file ([`Topology::from_yaml`]) or through
//! [`TopologyBuilder`], which keeps the same invariants.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use crate::error::TopologyErrors;
use crate::names::{DomainName, HostName};
use crate::policy::RoutingPolicy;

/// Deepest subdomain nesting accepted: the root has depth 0, a domain may have depth
/// `MAX_DEPTH` at most. Deeper files get a located error, never a crash.
pub const MAX_DEPTH: usize = 64;

/// Largest topology file accepted, in bytes (32 MiB: room for far more than 100,000 hosts).
pub const MAX_FILE_BYTES: usize = 32 * 1024 * 1024;

/// Index of a domain in the topology's arena. Only meaningful for the topology it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub(crate) u32);

impl DomainId {
    /// The arena index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A domain of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// Unique in the tree.
    pub name: DomainName,
    /// `None` for the root only.
    pub parent: Option<DomainId>,
    /// Distance from the root (root = 0); the tier keys of the routing rule (docs/routing.md) are built from it.
    pub depth: u32,
    /// Subdomains, in file order.
    pub children: Vec<DomainId>,
    /// Hosts placed directly in this domain, in file order.
    pub hosts: Vec<HostName>,
}

/// A host of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Unique in the tree.
    pub name: HostName,
    /// The one domain it belongs to.
    pub domain: DomainId,
    /// Informational address from the long form `{name, address}`.
    pub address: Option<String>,
}

/// Size of a topology, as `topology check` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Number of domains, root included.
    pub domains: usize,
    /// Number of hosts.
    pub hosts: usize,
    /// Depth of the deepest domain (root = 0).
    pub depth: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} domains, {} hosts, depth {}",
            self.domains, self.hosts, self.depth
        )
    }
}

/// The validated domain tree. Cheap lookups by name; hosts iterate in name order.
#[derive(Debug, Clone)]
pub struct Topology {
    pub(crate) routing: RoutingPolicy,
    pub(crate) domains: Vec<Domain>,
    pub(crate) domain_index: HashMap<DomainName, DomainId>,
    pub(crate) hosts: BTreeMap<HostName, Host>,
    /// Host names sorted, so that a host's position is a dense id ordered like its name.
    pub(crate) host_ids: Arc<[HostName]>,
    /// Dense-id indexes shared with route tables.
    pub(crate) index: Arc<HostIndex>,
    /// Euler-tour entry / exit times: `C` is in the subtree of `X` iff
    /// `tin[X] <= tin[C] < tout[X]`.
    pub(crate) tin: Vec<u32>,
    pub(crate) tout: Vec<u32>,
}

/// Zero bytes after the last name of [`HostIndex::slot_names`].
pub(crate) const NAME_SLACK: usize = 8;

/// Dense-id views of the tree for the route table: built once per topology.
///
/// Besides the dense id (rank by name), every host has a *slot*: its position when hosts are
/// grouped by domain (domain by domain, by id within one). The route table keeps its rows by
/// slot, so that the hosts of a domain, which share most of their routing work, are done
/// together and written in sequence.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    /// Host name -> dense id.
    pub(crate) by_name: HashMap<HostName, u32>,
    /// Dense host id -> domain index.
    pub(crate) host_domain: Vec<u32>,
    /// The hosts of domain `d` are the slots `domain_start[d]..domain_start[d + 1]`.
    pub(crate) domain_start: Vec<u32>,
    /// Slot -> dense host id.
    pub(crate) slot_host: Vec<u32>,
    /// Dense host id -> slot.
    pub(crate) host_slot: Vec<u32>,
    /// Host names by slot, back to back, then [`NAME_SLACK`] zero bytes: the name of slot `s`
    /// is `slot_names[slot_name_start[s]..slot_name_start[s + 1]]`, and 8 bytes can be read
    /// from any offset of it.
    pub(crate) slot_names: Vec<u8>,
    pub(crate) slot_name_start: Vec<u32>,
}

impl HostIndex {
    /// The index of hosts named `host_ids` (sorted) in the domains `host_domain`, among
    /// `n_domains` domains.
    pub(crate) fn new(host_ids: &[HostName], host_domain: Vec<u32>, n_domains: usize) -> Self {
        let by_name: HashMap<HostName, u32> = host_ids
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), i as u32))
            .collect();
        let mut domain_start = vec![0u32; n_domains + 1];
        for &d in &host_domain {
            domain_start[d as usize + 1] += 1;
        }
        for i in 0..n_domains {
            domain_start[i + 1] += domain_start[i];
        }
        let mut fill = domain_start.clone();
        let mut slot_host = vec![0u32; host_domain.len()];
        let mut host_slot = vec![0u32; host_domain.len()];
        for (h, &d) in host_domain.iter().enumerate() {
            let s = fill[d as usize];
            fill[d as usize] += 1;
            slot_host[s as usize] = h as u32;
            host_slot[h] = s;
        }
        let mut slot_names = Vec::with_capacity(
            host_ids.iter().map(|h| h.as_str().len()).sum::<usize>() + NAME_SLACK,
        );
        let mut slot_name_start = Vec::with_capacity(host_ids.len() + 1);
        slot_name_start.push(0u32);
        for &h in &slot_host {
            slot_names.extend_from_slice(host_ids[h as usize].as_str().as_bytes());
            slot_name_start.push(slot_names.len() as u32);
        }
        slot_names.extend_from_slice(&[0; NAME_SLACK]);
        HostIndex {
            by_name,
            host_domain,
            domain_start,
            slot_host,
            host_slot,
            slot_names,
            slot_name_start,
        }
    }
}

impl Topology {
    /// Parses and validates a topology file (the topology file format (docs/topology.md)). All errors of the file are returned,
    /// each as `FILE:LINE:COL: message`; a file with any error yields no topology.
    pub fn from_yaml(file_name: &str, text: &str) -> Result<Topology, TopologyErrors> {
        crate::parse::parse_topology(file_name, text)
    }

    /// Canonical YAML: domains and hosts sorted by name, defaults written out.
    /// `from_yaml(to_yaml(t)) == t`.
    pub fn to_yaml(&self) -> String {
        crate::file_format::to_yaml(self)
    }

    /// The `routing:` section (defaults when absent).
    pub fn routing(&self) -> &RoutingPolicy {
        &self.routing
    }

    /// The root domain.
    pub fn root(&self) -> DomainId {
        DomainId(0)
    }

    /// A domain by id. Panics on an id from another topology that is out of range.
    pub fn domain(&self, id: DomainId) -> &Domain {
        &self.domains[id.index()]
    }

    /// A domain id by name.
    pub fn domain_id(&self, name: &str) -> Option<DomainId> {
        self.domain_index.get(name).copied()
    }

    /// Every domain, root first, parents before children.
    pub fn domains(&self) -> impl Iterator<Item = (DomainId, &Domain)> {
        self.domains
            .iter()
            .enumerate()
            .map(|(i, d)| (DomainId(i as u32), d))
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    /// Every host, sorted by name.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// The name of the domain a host belongs to.
    pub fn host_domain(&self, host: &str) -> Option<&DomainName> {
        self.hosts
            .get(host)
            .map(|h| &self.domains[h.domain.index()].name)
    }

    /// Number of domains, hosts and the depth of the tree.
    pub fn summary(&self) -> Summary {
        Summary {
            domains: self.domains.len(),
            hosts: self.hosts.len(),
            depth: self
                .domains
                .iter()
                .map(|d| d.depth as usize)
                .max()
                .unwrap_or(0),
        }
    }

    /// The parent of a domain (`None` for the root).
    pub fn parent(&self, id: DomainId) -> Option<DomainId> {
        self.domains[id.index()].parent
    }

    /// True when `inner` is `outer` or lies below it.
    pub fn is_in_subtree(&self, inner: DomainId, outer: DomainId) -> bool {
        let (i, o) = (inner.index(), outer.index());
        self.tin[o] <= self.tin[i] && self.tin[i] < self.tout[o]
    }

    /// The lowest common ancestor of two domains.
    pub fn lca(&self, a: DomainId, b: DomainId) -> DomainId {
        let mut x = a;
        while !self.is_in_subtree(b, x) {
            x = self.domains[x.index()]
                .parent
                .expect("the root contains every domain");
        }
        x
    }

    /// Host names in name order; a host's index here is its dense id.
    pub fn host_names(&self) -> &Arc<[HostName]> {
        &self.host_ids
    }

    /// The dense id of a host (its rank by name).
    pub fn host_index(&self, name: &str) -> Option<u32> {
        self.host_ids
            .binary_search_by(|h| h.as_str().cmp(name))
            .ok()
            .map(|i| i as u32)
    }
}

impl PartialEq for Topology {
    /// Semantic equality: same routing policy, same domains under the same parents, same hosts
    /// in the same domains with the same addresses. The order of entries in the file is
    /// irrelevant.
    fn eq(&self, other: &Self) -> bool {
        if self.routing != other.routing
            || self.domains.len() != other.domains.len()
            || self.hosts.len() != other.hosts.len()
            || self.domains[0].name != other.domains[0].name
        {
            return false;
        }
        let parent_name =
            |t: &Topology, d: &Domain| d.parent.map(|p| t.domains[p.index()].name.clone());
        for d in &self.domains {
            let Some(od) = other.domain_id(d.name.as_str()) else {
                return false;
            };
            if parent_name(self, d) != parent_name(other, other.domain(od)) {
                return false;
            }
        }
        self.hosts.values().all(|h| {
            other.hosts.get(h.name.as_str()).is_some_and(|oh| {
                oh.address == h.address
                    && other.domain(oh.domain).name == self.domain(h.domain).name
            })
        })
    }
}

impl Eq for Topology {}

/// Builds a topology in code (generators, tests) with the same invariants as the file:
/// unique valid names, one domain per host, depth at most [`MAX_DEPTH`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    routing: RoutingPolicy,
    domains: Vec<Domain>,
    domain_index: HashMap<DomainName, DomainId>,
    hosts: BTreeMap<HostName, Host>,
}

impl TopologyBuilder {
    /// A tree with only its root domain.
    pub fn new(root: DomainName) -> Self {
        let mut domain_index = HashMap::new();
        domain_index.insert(root.clone(), DomainId(0));
        TopologyBuilder {
            routing: RoutingPolicy::default(),
            domains: vec![Domain {
                name: root,
                parent: None,
                depth: 0,
                children: vec![],
                hosts: vec![],
            }],
            domain_index,
            hosts: BTreeMap::new(),
        }
    }

    /// Sets the routing policy.
    pub fn routing(&mut self, routing: RoutingPolicy) -> &mut Self {
        self.routing = routing;
        self
    }

    /// The id of a domain already added.
    pub fn domain_id(&self, name: &str) -> Option<DomainId> {
        self.domain_index.get(name).copied()
    }

    /// Adds a subdomain under `parent`.
    pub fn add_domain(&mut self, name: DomainName, parent: DomainId) -> Result<DomainId, String> {
        if self.domain_index.contains_key(&name) {
            return Err(format!(
                "domain {:?} is already defined; domain names are unique in the tree",
                name.as_str()
            ));
        }
        let p = self
            .domains
            .get(parent.index())
            .ok_or_else(|| format!("parent domain id {} does not exist", parent.0))?;
        let depth = p.depth + 1;
        if depth as usize > MAX_DEPTH {
            return Err(format!(
                "domain {:?} would be nested {depth} levels deep; the limit is {MAX_DEPTH}",
                name.as_str()
            ));
        }
        let id = DomainId(self.domains.len() as u32);
        self.domains[parent.index()].children.push(id);
        self.domains.push(Domain {
            name: name.clone(),
            parent: Some(parent),
            depth,
            children: vec![],
            hosts: vec![],
        });
        self.domain_index.insert(name, id);
        Ok(id)
    }

    /// Adds a host to `domain`.
    pub fn add_host(
        &mut self,
        name: HostName,
        domain: DomainId,
        address: Option<String>,
    ) -> Result<(), String> {
        if let Some(h) = self.hosts.get(&name) {
            return Err(format!(
                "host {:?} is already in domain {:?}; a host belongs to exactly one domain",
                name.as_str(),
                self.domains[h.domain.index()].name.as_str()
            ));
        }
        let d = self
            .domains
            .get_mut(domain.index())
            .ok_or_else(|| format!("domain id {} does not exist", domain.0))?;
        d.hosts.push(name.clone());
        self.hosts.insert(
            name.clone(),
            Host {
                name,
                domain,
                address,
            },
        );
        Ok(())
    }

    /// The finished topology.
    pub fn build(self) -> Topology {
        let n = self.domains.len();
        let mut tin = vec![0u32; n];
        let mut tout = vec![0u32; n];
        // Iterative DFS: depth is bounded, but no recursion is needed at all.
        let mut clock = 0u32;
        let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
        tin[0] = 0;
        clock += 1;
        while let Some(&mut (d, ref mut next)) = stack.last_mut() {
            if let Some(&c) = self.domains[d].children.get(*next) {
                *next += 1;
                tin[c.index()] = clock;
                clock += 1;
                stack.push((c.index(), 0));
            } else {
                tout[d] = clock;
                stack.pop();
            }
        }
        let host_ids: Arc<[HostName]> = self.hosts.keys().cloned().collect();
        let host_domain: Vec<u32> = self.hosts.values().map(|h| h.domain.0).collect();
        let index = Arc::new(HostIndex::new(&host_ids, host_domain, n));
        Topology {
            index,
            routing: self.routing,
            domains: self.domains,
            domain_index: self.domain_index,
            hosts: self.hosts,
            host_ids,
            tin,
            tout,
        }
    }
}
