//! The route table: every host's route prefix for every manager type, built once per
//! registry revision so that a lookup is a map access.
//!
//! How it stays fast (SPEC §9: 100,000 hosts in 5,000 domains under 20 ms): hosts and domains
//! are dense ids; per type, only the domains that hold eligible managers matter. For each
//! domain we know its nearest ancestor holding managers, so a host walks the ancestor tiers
//! without visiting empty domains; the branch tiers (ordered by `(hops, up)`) are computed once
//! per domain, and only for domains whose own chain holds fewer than [`ROUTE_PREFIX_LEN`]
//! managers. Per host, only the candidates of the tiers needed to fill the prefix are hashed.
//! Hosts of one domain share few distinct prefixes, so names are stored once per distinct
//! prefix. Domains are split across the available cores.

use std::sync::Arc;

use crate::names::{HostName, PackageType};
use crate::route::rendezvous_score;
use crate::snapshot::{PackageStatus, RegistrySnapshot};
use crate::tree::{HostIndex, Topology};

/// How many hosts of each route the table keeps: the chosen one and the next in line.
pub const ROUTE_PREFIX_LEN: usize = 3;
const K: usize = ROUTE_PREFIX_LEN;
const NONE: u32 = u32::MAX;

/// Routes of one type.
#[derive(Debug, Clone)]
struct TypeRoutes {
    ty: PackageType,
    /// Distinct route prefixes, back to back.
    arena: Vec<HostName>,
    /// Per host id: start in `arena` (NONE when the host has no route), and length.
    start: Vec<u32>,
    len: Vec<u8>,
}

/// Chosen manager and the next few in line, per (host, type): a prefix of the route of SPEC §5
/// (without any agent's hold-downs).
#[derive(Debug, Clone)]
pub struct RouteTable {
    index: Arc<HostIndex>,
    types: Vec<TypeRoutes>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            index: Arc::new(HostIndex {
                by_name: Default::default(),
                host_domain: vec![],
                domain_start: vec![0],
                domain_hosts: vec![],
            }),
            types: vec![],
        }
    }
}

/// Per type: eligible managers by domain, and the data the tier walk needs.
struct TypeView {
    /// Eligible managers of each domain, sorted by id (CSR).
    mgr_start: Vec<u32>,
    mgrs: Vec<u32>,
    /// Nearest strict ancestor holding eligible managers (NONE when none).
    nearest: Vec<u32>,
    /// Eligible managers in the domain and all its ancestors.
    chain_count: Vec<u32>,
    /// Domains holding eligible managers.
    mgr_domains: Vec<u32>,
    /// Whether each host id is an eligible manager of this type.
    is_mgr: Vec<bool>,
}

impl TypeView {
    fn managers(&self, d: u32) -> &[u32] {
        &self.mgrs[self.mgr_start[d as usize] as usize..self.mgr_start[d as usize + 1] as usize]
    }
}

/// Eligible managers (running and alive, named by the topology) of each type, as host ids.
fn eligible_by_type(topology: &Topology, snapshot: &RegistrySnapshot, types: &[PackageType]) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); types.len()];
    for (name, state) in &snapshot.hosts {
        if state.packages.is_empty() || !state.alive {
            continue;
        }
        let Some(&id) = topology.index.by_name.get(name) else { continue };
        for (ty, pkg) in &state.packages {
            if pkg.status != PackageStatus::Running {
                continue;
            }
            if let Ok(i) = types.binary_search(ty) {
                out[i].push(id);
            }
        }
    }
    out
}

fn type_view(topology: &Topology, eligible: &[u32]) -> TypeView {
    let idx = &topology.index;
    let n = topology.domains.len();
    let mut mgr_start = vec![0u32; n + 1];
    let mut is_mgr = vec![false; idx.host_domain.len()];
    for &h in eligible {
        mgr_start[idx.host_domain[h as usize] as usize + 1] += 1;
        is_mgr[h as usize] = true;
    }
    for i in 0..n {
        mgr_start[i + 1] += mgr_start[i];
    }
    let mut fill = mgr_start.clone();
    let mut mgrs = vec![0u32; eligible.len()];
    let mut sorted = eligible.to_vec();
    sorted.sort_unstable();
    for h in sorted {
        let d = idx.host_domain[h as usize] as usize;
        mgrs[fill[d] as usize] = h;
        fill[d] += 1;
    }
    let count = |d: usize| mgr_start[d + 1] - mgr_start[d];
    let mut nearest = vec![NONE; n];
    let mut chain_count = vec![0u32; n];
    // Parents come before children in the arena.
    for d in 0..n {
        match topology.domains[d].parent {
            None => chain_count[d] = count(d),
            Some(p) => {
                let p = p.index();
                nearest[d] = if count(p) > 0 { p as u32 } else { nearest[p] };
                chain_count[d] = count(d) + chain_count[p];
            }
        }
    }
    let mgr_domains = (0..n).filter(|&d| count(d) > 0).map(|d| d as u32).collect();
    TypeView { mgr_start, mgrs, nearest, chain_count, mgr_domains, is_mgr }
}

/// The branch tiers of domain `d`: groups of managers with the same `(hops, up)`, nearest
/// first.
fn branch_groups(topology: &Topology, view: &TypeView, d: u32) -> Vec<Vec<u32>> {
    let dd = topology.domains[d as usize].depth;
    let mut keyed: Vec<((u32, u32), u32)> = Vec::new();
    for &c in &view.mgr_domains {
        if c == d {
            continue;
        }
        let cid = crate::tree::DomainId(c);
        let did = crate::tree::DomainId(d);
        if topology.is_in_subtree(did, cid) {
            continue; // an ancestor
        }
        let l = topology.lca(did, cid);
        let dl = topology.domains[l.index()].depth;
        let up = dd - dl;
        let down = topology.domains[c as usize].depth - dl;
        keyed.push(((up + down, up), c));
    }
    keyed.sort_unstable();
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut last = None;
    for (key, c) in keyed {
        if last != Some(key) {
            groups.push(Vec::new());
            last = Some(key);
        }
        groups.last_mut().expect("pushed above").extend_from_slice(view.managers(c));
    }
    groups
}

/// Appends to `out` the best `need` of `tier` for `requester` (score descending, id ascending
/// on equal scores), skipping `skip`.
fn take_best(names: &[HostName], requester: &str, tier: &[u32], skip: u32, need: usize, out: &mut [u32; K], len: &mut usize) {
    if need == 0 {
        return;
    }
    let mut scored: [(u64, u32); K] = [(0, NONE); K];
    let mut have = 0usize;
    for &m in tier {
        if m == skip {
            continue;
        }
        let s = rendezvous_score(requester, names[m as usize].as_str());
        // Keep the best `need` in `scored[..have]`, best first.
        let better = |a: (u64, u32), b: (u64, u32)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
        if have < need {
            scored[have] = (s, m);
            have += 1;
        } else if better((s, m), scored[have - 1]) {
            scored[have - 1] = (s, m);
        } else {
            continue;
        }
        let mut i = have - 1;
        while i > 0 && better(scored[i], scored[i - 1]) {
            scored.swap(i, i - 1);
            i -= 1;
        }
    }
    for &(_, m) in &scored[..have] {
        out[*len] = m;
        *len += 1;
    }
}

/// Distinct route prefixes of a chunk of domains, and which host uses which.
struct ChunkRoutes {
    routes: Vec<([u32; K], u8)>,
    /// (host id, index into `routes`)
    hosts: Vec<(u32, u32)>,
}

fn compute_chunk(topology: &Topology, view: &TypeView, domains: std::ops::Range<usize>) -> ChunkRoutes {
    let idx = &topology.index;
    let names = &topology.host_ids;
    let cross_branch = topology.routing.cross_branch;
    let mut out = ChunkRoutes { routes: Vec::new(), hosts: Vec::new() };
    for d in domains {
        let hosts = &idx.domain_hosts[idx.domain_start[d] as usize..idx.domain_start[d + 1] as usize];
        if hosts.is_empty() {
            continue;
        }
        let branch = if cross_branch && (view.chain_count[d] as usize) < K {
            branch_groups(topology, view, d as u32)
        } else {
            Vec::new()
        };
        let first_route = out.routes.len();
        for &h in hosts {
            let requester = names[h as usize].as_str();
            let mut route = [NONE; K];
            let mut len = 0usize;
            if view.is_mgr[h as usize] {
                route[0] = h;
                len = 1;
            }
            take_best(names, requester, view.managers(d as u32), h, K - len, &mut route, &mut len);
            let mut a = view.nearest[d];
            while len < K && a != NONE {
                take_best(names, requester, view.managers(a), NONE, K - len, &mut route, &mut len);
                a = view.nearest[a as usize];
            }
            for g in &branch {
                if len >= K {
                    break;
                }
                take_best(names, requester, g, NONE, K - len, &mut route, &mut len);
            }
            let key = (route, len as u8);
            let i = match out.routes[first_route..].iter().position(|r| *r == key) {
                Some(i) => first_route + i,
                None => {
                    out.routes.push(key);
                    out.routes.len() - 1
                }
            };
            out.hosts.push((h, i as u32));
        }
    }
    out
}

/// Splits the domains into `parts` contiguous ranges of similar host counts.
fn split_domains(index: &HostIndex, parts: usize) -> Vec<std::ops::Range<usize>> {
    let n = index.domain_start.len() - 1;
    let total = index.domain_hosts.len().max(1);
    let mut ranges = Vec::new();
    let mut begin = 0;
    for p in 1..=parts {
        let target = total * p / parts;
        let mut end = begin;
        while end < n && (index.domain_start[end] as usize) < target {
            end += 1;
        }
        if p == parts {
            end = n;
        }
        if end > begin {
            ranges.push(begin..end);
        }
        begin = end;
    }
    ranges
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8)
}

fn compute_type(topology: &Topology, ty: PackageType, eligible: &[u32]) -> TypeRoutes {
    let view = type_view(topology, eligible);
    let n_hosts = topology.index.host_domain.len();
    let mut routes = TypeRoutes { ty, arena: Vec::new(), start: vec![NONE; n_hosts], len: vec![0; n_hosts] };
    if eligible.is_empty() {
        // No eligible manager: every host of the topology has an empty route.
        routes.start.iter_mut().for_each(|s| *s = 0);
        return routes;
    }
    let parts = if n_hosts >= 4096 { threads() } else { 1 };
    let chunks: Vec<ChunkRoutes> = if parts <= 1 {
        vec![compute_chunk(topology, &view, 0..topology.domains.len())]
    } else {
        let ranges = split_domains(&topology.index, parts);
        std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .into_iter()
                .map(|r| {
                    let view = &view;
                    s.spawn(move || compute_chunk(topology, view, r))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("route worker panicked")).collect()
        })
    };
    let names = &topology.host_ids;
    for chunk in chunks {
        let mut starts = Vec::with_capacity(chunk.routes.len());
        for (ids, len) in &chunk.routes {
            starts.push(routes.arena.len() as u32);
            routes.arena.extend(ids[..*len as usize].iter().map(|&m| names[m as usize].clone()));
        }
        for (h, i) in chunk.hosts {
            routes.start[h as usize] = starts[i as usize];
            routes.len[h as usize] = chunk.routes[i as usize].1;
        }
    }
    routes
}

impl RouteTable {
    /// Computes the route prefix of every host of the topology for every type in the snapshot.
    pub fn build(topology: &Topology, snapshot: &RegistrySnapshot) -> RouteTable {
        let types = snapshot.package_types();
        let eligible = eligible_by_type(topology, snapshot, &types);
        let types = types.into_iter().zip(eligible).map(|(ty, el)| compute_type(topology, ty, &el)).collect();
        RouteTable { index: topology.index.clone(), types }
    }

    fn lookup(&self, host: &str, package_type: &str) -> Option<&[HostName]> {
        let &h = self.index.by_name.get(host)?;
        let t = self.types.iter().find(|t| t.ty.as_str() == package_type)?;
        let start = t.start[h as usize];
        if start == NONE {
            return None;
        }
        let start = start as usize;
        Some(&t.arena[start..start + t.len[h as usize] as usize])
    }

    /// The chosen manager of `host` for `package_type`: `None` when no manager is eligible, or
    /// the host or type is unknown.
    pub fn chosen(&self, host: &str, package_type: &str) -> Option<&HostName> {
        self.lookup(host, package_type).and_then(|r| r.first())
    }

    /// The chosen manager and the next in line, at most [`ROUTE_PREFIX_LEN`] hosts: a prefix of
    /// the full route. `None` for a host the topology does not name or a type no host runs;
    /// an empty slice when nothing is eligible.
    pub fn route(&self, host: &str, package_type: &str) -> Option<&[HostName]> {
        self.lookup(host, package_type)
    }

    /// Recomputes the routes of one type only (after status or liveness changes that affect
    /// only that type). `topology` must be the one the table was built from.
    pub fn update_type(&mut self, topology: &Topology, snapshot: &RegistrySnapshot, package_type: &str) {
        let Ok(ty) = PackageType::new(package_type) else { return };
        let eligible = eligible_by_type(topology, snapshot, std::slice::from_ref(&ty)).pop().unwrap_or_default();
        self.index = topology.index.clone();
        let runs_anywhere = snapshot.hosts.values().any(|h| h.packages.contains_key(&ty));
        let pos = self.types.iter().position(|t| t.ty == ty);
        match (pos, runs_anywhere) {
            (Some(i), true) => self.types[i] = compute_type(topology, ty, &eligible),
            (Some(i), false) => {
                self.types.remove(i);
            }
            (None, true) => {
                let routes = compute_type(topology, ty, &eligible);
                let at = self.types.partition_point(|t| t.ty < routes.ty);
                self.types.insert(at, routes);
            }
            (None, false) => {}
        }
    }

    /// The types the table holds routes for, sorted.
    pub fn package_types(&self) -> impl Iterator<Item = &PackageType> {
        self.types.iter().map(|t| &t.ty)
    }
}
