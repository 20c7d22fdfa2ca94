//! The route table: every host's route prefix for every manager type, built once per
//! registry revision so that a lookup is a map access.
//!
//! How it stays fast (SPEC §9: 100,000 hosts in 5,000 domains under 20 ms): hosts and domains
//! are dense ids; per type, only the domains that hold eligible managers matter. For each
//! domain we know its nearest ancestor holding managers, so a host walks the ancestor tiers
//! without visiting empty domains; the branch tiers (ordered by `(hops, up)`) are computed once
//! per domain, and only for domains whose own chain holds fewer than [`ROUTE_PREFIX_LEN`]
//! managers. Per host, only the candidates of the tiers needed to fill the prefix are hashed.
//! Prefixes are stored as host ids (no reference counting during a rebuild); the name slices
//! are made on first use. Hosts are split across the available cores.

use std::sync::{Arc, OnceLock};

use crate::names::{HostName, PackageType};
use crate::snapshot::{PackageStatus, RegistrySnapshot};
use crate::tree::{HostIndex, Topology};

/// How many hosts of each route the table keeps: the chosen one and the next in line.
pub const ROUTE_PREFIX_LEN: usize = 2;
const K: usize = ROUTE_PREFIX_LEN;
const NONE: u32 = u32::MAX;

/// Routes of one type, by dense host id.
#[derive(Debug, Clone)]
struct TypeRoutes {
    ty: PackageType,
    /// Route prefix of each host as host ids; unused slots hold NONE.
    ids: Vec<[u32; K]>,
    /// The same prefix as names, made on first use by [`RouteTable::route`] so that a rebuild
    /// touches no reference counts.
    names: Vec<OnceLock<Box<[HostName]>>>,
}

/// Chosen manager and the next few in line, per (host, type): a prefix of the route of SPEC §5
/// (without any agent's hold-downs).
#[derive(Debug, Clone)]
pub struct RouteTable {
    index: Arc<HostIndex>,
    host_names: Arc<[HostName]>,
    types: Vec<TypeRoutes>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            index: Arc::new(HostIndex {
                by_name: Default::default(),
                host_domain: vec![],
                domain_start: vec![0],
            }),
            host_names: Arc::from(Vec::new()),
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
    /// Manager domains of each subtree, by depth (CSR): `sub[sub_start[x]..sub_start[x + 1]]`.
    sub_start: Vec<u32>,
    sub: Vec<u32>,
    /// Whether each host id is an eligible manager of this type.
    is_mgr: Vec<bool>,
}

impl TypeView {
    fn managers(&self, d: u32) -> &[u32] {
        &self.mgrs[self.mgr_start[d as usize] as usize..self.mgr_start[d as usize + 1] as usize]
    }
}

/// Eligible managers (running and alive, named by the topology) of each type, as host ids.
fn eligible_by_type(
    topology: &Topology,
    snapshot: &RegistrySnapshot,
    types: &[PackageType],
) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); types.len()];
    for (name, state) in &snapshot.hosts {
        if state.packages.is_empty() || !state.alive {
            continue;
        }
        let Some(&id) = topology.index.by_name.get(name) else {
            continue;
        };
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
    // Every manager domain is listed under itself and each of its ancestors.
    let mut sub_start = vec![0u32; n + 1];
    let mut by_depth: Vec<(u32, u32)> = (0..n)
        .filter(|&d| count(d) > 0)
        .map(|d| (topology.domains[d].depth, d as u32))
        .collect();
    by_depth.sort_unstable();
    for &(_, c) in &by_depth {
        let mut x = Some(crate::tree::DomainId(c));
        while let Some(a) = x {
            sub_start[a.index() + 1] += 1;
            x = topology.domains[a.index()].parent;
        }
    }
    for i in 0..n {
        sub_start[i + 1] += sub_start[i];
    }
    let mut fill = sub_start.clone();
    let mut sub = vec![0u32; sub_start[n] as usize];
    for &(_, c) in &by_depth {
        let mut x = Some(crate::tree::DomainId(c));
        while let Some(a) = x {
            sub[fill[a.index()] as usize] = c;
            fill[a.index()] += 1;
            x = topology.domains[a.index()].parent;
        }
    }
    TypeView {
        mgr_start,
        mgrs,
        nearest,
        chain_count,
        sub_start,
        sub,
        is_mgr,
    }
}

/// The first branch tiers of domain `d`: groups of managers with the same `(hops, up)`,
/// nearest first, until the groups hold at least [`ROUTE_PREFIX_LEN`] managers (no host of `d`
/// can need more from them).
///
/// For each ancestor `A_u` of `d` (`A_0 = d`), the domains whose lowest common ancestor with
/// `d` is `A_u` are the subtree of `A_u` minus the subtree of `A_(u-1)`; their key is
/// `(u + depth(C) - depth(A_u), u)`. `view.sub` lists the manager domains of every subtree
/// by depth, so each `u` is a stream in key order and the groups come from merging the
/// streams.
fn branch_groups(topology: &Topology, view: &TypeView, d: u32) -> Vec<Vec<u32>> {
    struct Stream {
        up: u32,
        anchor: u32,
        exclude: u32,
        pos: usize,
        end: usize,
    }
    let domains = &topology.domains;
    let mut streams = Vec::new();
    let (mut anchor, mut exclude, mut up) = (d, NONE, 0u32);
    loop {
        let a = anchor as usize;
        streams.push(Stream {
            up,
            anchor,
            exclude,
            pos: view.sub_start[a] as usize,
            end: view.sub_start[a + 1] as usize,
        });
        match domains[a].parent {
            None => break,
            Some(p) => {
                exclude = anchor;
                anchor = p.0;
                up += 1;
            }
        }
    }
    let valid = |s: &Stream, c: u32| {
        c != s.anchor
            && (s.exclude == NONE
                || !topology
                    .is_in_subtree(crate::tree::DomainId(c), crate::tree::DomainId(s.exclude)))
    };
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let mut total = 0usize;
    while total < K {
        let mut best: Option<((u32, u32), usize)> = None;
        for (i, s) in streams.iter_mut().enumerate() {
            while s.pos < s.end && !valid(s, view.sub[s.pos]) {
                s.pos += 1;
            }
            if s.pos < s.end {
                let c = view.sub[s.pos] as usize;
                let key = (
                    s.up + domains[c].depth - domains[s.anchor as usize].depth,
                    s.up,
                );
                if best.is_none_or(|(b, _)| key < b) {
                    best = Some((key, i));
                }
            }
        }
        let Some((_, i)) = best else { break };
        let s = &mut streams[i];
        let depth = domains[view.sub[s.pos] as usize].depth;
        let mut group = Vec::new();
        while s.pos < s.end && domains[view.sub[s.pos] as usize].depth == depth {
            let c = view.sub[s.pos];
            if valid(s, c) {
                group.extend_from_slice(view.managers(c));
            }
            s.pos += 1;
        }
        total += group.len();
        groups.push(group);
    }
    groups
}

/// Rendezvous hashing for one requester: `requester + "\0"` is written once (on the first
/// score needed), and each candidate name (at most 63 bytes) is copied with a fixed-size copy,
/// so scoring a candidate costs one xxh3 call and no allocation. Same value as
/// [`crate::rendezvous_score`].
struct Scorer<'a> {
    requester: &'a str,
    buf: [u8; 128],
    prefix: usize,
}

impl<'a> Scorer<'a> {
    fn new(requester: &'a str) -> Self {
        Scorer {
            requester,
            buf: [0u8; 128],
            prefix: 0,
        }
    }

    #[inline]
    fn score(&mut self, padded: &[u8; 64], len: usize) -> u64 {
        if self.prefix == 0 {
            let r = self.requester.as_bytes();
            self.buf[..r.len()].copy_from_slice(r);
            self.prefix = r.len() + 1;
        }
        let p = self.prefix;
        let dst: &mut [u8; 64] = (&mut self.buf[p..p + 64]).try_into().expect("64 bytes");
        *dst = *padded;
        xxhash_rust::xxh3::xxh3_64(&self.buf[..p + len])
    }
}

/// Candidate names padded to 64 bytes, for [`Scorer`].
struct Padded {
    bytes: Vec<[u8; 64]>,
    len: Vec<u8>,
    /// Host id -> slot in `bytes` (managers only).
    slot: Vec<u32>,
}

impl Padded {
    fn new(names: &[HostName], managers: &[u32], n_hosts: usize) -> Self {
        let mut p = Padded {
            bytes: Vec::with_capacity(managers.len()),
            len: Vec::new(),
            slot: vec![NONE; n_hosts],
        };
        for &m in managers {
            let name = names[m as usize].as_str().as_bytes();
            let mut b = [0u8; 64];
            b[..name.len()].copy_from_slice(name);
            p.slot[m as usize] = p.bytes.len() as u32;
            p.bytes.push(b);
            p.len.push(name.len() as u8);
        }
        p
    }
}

/// Appends to `out` the best `need` of `tier` for the requester (score descending, id
/// ascending on equal scores), skipping `skip`.
#[allow(clippy::too_many_arguments)]
fn take_best(
    scorer: &mut Scorer,
    padded: &Padded,
    tier: &[u32],
    skip: u32,
    need: usize,
    out: &mut [u32; K],
    len: &mut usize,
) {
    if need == 0 {
        return;
    }
    // A tier with a single candidate needs no hashing.
    match tier {
        [] => return,
        [m] => {
            if *m != skip {
                out[*len] = *m;
                *len += 1;
            }
            return;
        }
        [a, b] if *a == skip || *b == skip => {
            out[*len] = if *a == skip { *b } else { *a };
            *len += 1;
            return;
        }
        _ => {}
    }
    let mut scored: [(u64, u32); K] = [(0, NONE); K];
    let mut have = 0usize;
    for &m in tier {
        if m == skip {
            continue;
        }
        let slot = padded.slot[m as usize] as usize;
        let s = scorer.score(&padded.bytes[slot], padded.len[slot] as usize);
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

/// Fills the route prefixes of the hosts `first..first + out.len()`.
#[allow(clippy::needless_range_loop)]
fn compute_hosts(
    topology: &Topology,
    view: &TypeView,
    padded: &Padded,
    branch: &[Vec<Vec<u32>>],
    first: usize,
    out: &mut [[u32; K]],
) {
    let idx = &topology.index;
    let names = &topology.host_ids;
    for (i, route) in out.iter_mut().enumerate() {
        let h = (first + i) as u32;
        let d = idx.host_domain[h as usize];
        let mut scorer = Scorer::new(names[h as usize].as_str());
        let mut len = 0usize;
        if view.is_mgr[h as usize] {
            route[0] = h;
            len = 1;
        }
        take_best(
            &mut scorer,
            padded,
            view.managers(d),
            h,
            K - len,
            route,
            &mut len,
        );
        let mut a = view.nearest[d as usize];
        while len < K && a != NONE {
            take_best(
                &mut scorer,
                padded,
                view.managers(a),
                NONE,
                K - len,
                route,
                &mut len,
            );
            a = view.nearest[a as usize];
        }
        for g in &branch[d as usize] {
            if len >= K {
                break;
            }
            take_best(&mut scorer, padded, g, NONE, K - len, route, &mut len);
        }
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
}

/// Runs `f(first, chunk)` over `parts` contiguous chunks of `items` in parallel.
fn par_chunks<T: Send>(items: &mut [T], parts: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if parts <= 1 || items.len() < 2 {
        f(0, items);
        return;
    }
    let size = items.len().div_ceil(parts);
    std::thread::scope(|s| {
        for (i, chunk) in items.chunks_mut(size).enumerate() {
            let f = &f;
            s.spawn(move || f(i * size, chunk));
        }
    });
}

fn compute_type(topology: &Topology, ty: PackageType, eligible: &[u32]) -> TypeRoutes {
    let n_hosts = topology.index.host_domain.len();
    let mut ids = vec![[NONE; K]; n_hosts];
    if !eligible.is_empty() {
        let view = type_view(topology, eligible);
        let padded = Padded::new(&topology.host_ids, eligible, n_hosts);
        let parts = if n_hosts >= 4096 { threads() } else { 1 };
        // Branch tiers, only for domains whose own chain cannot fill a prefix.
        let mut branch: Vec<Vec<Vec<u32>>> = vec![Vec::new(); topology.domains.len()];
        if topology.routing.cross_branch {
            par_chunks(&mut branch, parts, |first, chunk| {
                for (i, groups) in chunk.iter_mut().enumerate() {
                    let d = first + i;
                    let has_hosts =
                        topology.index.domain_start[d] < topology.index.domain_start[d + 1];
                    if has_hosts && (view.chain_count[d] as usize) < K {
                        *groups = branch_groups(topology, &view, d as u32);
                    }
                }
            });
        }
        par_chunks(&mut ids, parts, |first, chunk| {
            compute_hosts(topology, &view, &padded, &branch, first, chunk)
        });
    }
    let names = (0..n_hosts).map(|_| OnceLock::new()).collect();
    TypeRoutes { ty, ids, names }
}

impl RouteTable {
    /// Computes the route prefix of every host of the topology for every type in the snapshot.
    pub fn build(topology: &Topology, snapshot: &RegistrySnapshot) -> RouteTable {
        let types = snapshot.package_types();
        let eligible = eligible_by_type(topology, snapshot, &types);
        let types = types
            .into_iter()
            .zip(eligible)
            .map(|(ty, el)| compute_type(topology, ty, &el))
            .collect();
        RouteTable {
            index: topology.index.clone(),
            host_names: topology.host_ids.clone(),
            types,
        }
    }

    fn entry(&self, host: &str, package_type: &str) -> Option<(&TypeRoutes, usize)> {
        let &h = self.index.by_name.get(host)?;
        let t = self.types.iter().find(|t| t.ty.as_str() == package_type)?;
        Some((t, h as usize))
    }

    /// The chosen manager of `host` for `package_type`: `None` when no manager is eligible, or
    /// the host or type is unknown.
    pub fn chosen(&self, host: &str, package_type: &str) -> Option<&HostName> {
        let (t, h) = self.entry(host, package_type)?;
        let first = t.ids[h][0];
        (first != NONE).then(|| &self.host_names[first as usize])
    }

    /// The chosen manager and the next in line, at most [`ROUTE_PREFIX_LEN`] hosts: a prefix of
    /// the full route. `None` for a host the topology does not name or a type no host runs;
    /// an empty slice when nothing is eligible. The first call for an entry builds its slice.
    pub fn route(&self, host: &str, package_type: &str) -> Option<&[HostName]> {
        let (t, h) = self.entry(host, package_type)?;
        Some(t.names[h].get_or_init(|| self.route_iter(t, h).cloned().collect()))
    }

    /// The same prefix as [`RouteTable::route`], without building a slice.
    pub fn route_hosts(&self, host: &str, package_type: &str) -> impl Iterator<Item = &HostName> {
        self.entry(host, package_type)
            .into_iter()
            .flat_map(|(t, h)| self.route_iter(t, h))
    }

    fn route_iter<'a>(&'a self, t: &'a TypeRoutes, h: usize) -> impl Iterator<Item = &'a HostName> {
        t.ids[h]
            .iter()
            .take_while(|&&m| m != NONE)
            .map(|&m| &self.host_names[m as usize])
    }

    /// Recomputes the routes of one type only (after status or liveness changes that affect
    /// only that type). `topology` must be the one the table was built from.
    pub fn update_type(
        &mut self,
        topology: &Topology,
        snapshot: &RegistrySnapshot,
        package_type: &str,
    ) {
        let Ok(ty) = PackageType::new(package_type) else {
            return;
        };
        let eligible = eligible_by_type(topology, snapshot, std::slice::from_ref(&ty))
            .pop()
            .unwrap_or_default();
        self.index = topology.index.clone();
        self.host_names = topology.host_ids.clone();
        let runs_anywhere = snapshot
            .hosts
            .values()
            .any(|h| h.packages.contains_key(&ty));
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
