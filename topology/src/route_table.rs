//! The route table: every host's route prefix for every manager type, built once per
//! registry revision so that a lookup is a map access.
//!
//! How it stays fast (the performance targets (BENCHMARKS.md): 100,000 hosts in 5,000 domains under 20 ms):
//! - one pass over the snapshot (split across cores by name range) finds the types and the
//!   eligible managers of each; host ids come mostly from a cursor over the topology's sorted
//!   names rather than from hashing.
//! - rows are kept by *slot* (hosts grouped by domain, see `tree::HostIndex`), and the work is
//!   done domain by domain, in runs of whole domains the cores take in turn. For each domain
//!   and type, the tiers its hosts walk (own domain, ancestors holding managers, then branch
//!   groups ordered by `(hops, up)`) are listed once, only as far as a prefix of
//!   [`ROUTE_PREFIX_LEN`] hosts can need. When that walk meets no tier of two or more
//!   candidates, every host of the domain that is not itself a manager gets the same prefix,
//!   written without hashing.
//! - rendezvous scores are computed from the requester's name in place (no buffer to lay out
//!   per candidate), see `Scorer`.
//! - prefixes are stored as host ids; the name slices [`RouteTable::route`] returns are made
//!   on first use, a block of hosts at a time, so a rebuild touches no reference counts.

use std::ops::Bound;
use std::sync::{Arc, Mutex, OnceLock};

use crate::names::{HostName, PackageType};
use crate::snapshot::{PackageStatus, RegistrySnapshot};
use crate::tree::{DomainId, HostIndex, Topology};

/// How many hosts of each route the table keeps: the chosen one and the next in line.
pub const ROUTE_PREFIX_LEN: usize = 2;
const K: usize = ROUTE_PREFIX_LEN;
const NONE: u32 = u32::MAX;
/// Hosts per lazily built block of name slices.
const NAME_CHUNK: usize = 64;
/// Hosts per unit of parallel work.
const HOST_CHUNK: usize = 1024;
/// Longest host name (the name rules (docs/topology.md)), so that a rendezvous input fits the scorer's buffer.
const MAX_NAME: usize = crate::names::MAX_NAME_LEN;

/// Routes of one type, by host slot (see `tree::HostIndex`).
#[derive(Debug, Clone)]
struct TypeRoutes {
    ty: PackageType,
    /// Route prefix of each host (by slot) as host ids; unused entries hold NONE.
    ids: Vec<[u32; K]>,
    /// The same prefixes as names, one block per [`NAME_CHUNK`] hosts (`K` slots per host),
    /// made on first use by [`RouteTable::route`].
    names: Vec<OnceLock<Box<[HostName]>>>,
}

impl TypeRoutes {
    fn new(ty: PackageType, ids: Vec<[u32; K]>) -> Self {
        let names = (0..ids.len().div_ceil(NAME_CHUNK))
            .map(|_| OnceLock::new())
            .collect();
        TypeRoutes { ty, ids, names }
    }
}

/// Chosen manager and the next few in line, per (host, type): a prefix of the route of the routing rule (docs/routing.md)
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
            index: Arc::new(HostIndex::new(&[], vec![], 0)),
            host_names: Arc::from(Vec::new()),
            types: vec![],
        }
    }
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
}

/// `f(0) .. f(parts - 1)`, in parallel: `parts - 1` scoped threads, part 0 on this thread.
fn par_map<R: Send>(parts: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    if parts <= 1 {
        return vec![f(0)];
    }
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = (1..parts).map(|p| s.spawn(move || f(p))).collect();
        let mut out = vec![f(0)];
        out.extend(
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))),
        );
        out
    })
}

/// What one pass over the snapshot finds.
struct Scan {
    /// Every type some host runs (any status, any host), sorted.
    types: Vec<PackageType>,
    /// Per type: host ids of its eligible managers (running, alive, named by the topology),
    /// sorted.
    eligible: Vec<Vec<u32>>,
}

/// Dense ids of the names of a snapshot, met in name order. The snapshot usually shares its
/// names' text with the topology, so the id of the next name is mostly found by address
/// (the topology's next name), without hashing.
struct IdCursor<'a> {
    index: &'a HostIndex,
    names: &'a [HostName],
    /// The id the next name probably has.
    next: usize,
}

impl IdCursor<'_> {
    /// Moves past `name` when it is the expected next one; true then.
    #[inline]
    fn step(&mut self, name: &HostName) -> bool {
        let hit = self
            .names
            .get(self.next)
            .is_some_and(|c| std::ptr::eq(c.as_str(), name.as_str()));
        self.next += usize::from(hit);
        hit
    }

    /// The id of `name` (`None` when the topology does not name it).
    fn id(&mut self, name: &HostName) -> Option<u32> {
        if self.step(name) {
            return Some(self.next as u32 - 1);
        }
        let id = *self.index.by_name.get(name)?;
        self.next = id as usize + 1;
        Some(id)
    }
}

/// One pass over `snapshot.hosts` (split by name across `parts` threads). With `only`, just
/// that type is looked at.
fn scan(
    topology: &Topology,
    snapshot: &RegistrySnapshot,
    only: Option<&PackageType>,
    parts: usize,
) -> Scan {
    let names = &topology.host_ids;
    let parts = if names.len() < 2 * parts { 1 } else { parts };
    // Split points: topology names, which are usually the snapshot's names too.
    let bounds: Vec<Bound<&str>> = (0..=parts)
        .map(|p| match p {
            0 => Bound::Unbounded,
            p if p == parts => Bound::Unbounded,
            p => Bound::Excluded(names[names.len() * p / parts].as_str()),
        })
        .collect();
    let pieces = par_map(parts, |p| {
        let (lo, hi) = if parts == 1 {
            (Bound::Unbounded, Bound::Unbounded)
        } else {
            let lo = match bounds[p] {
                Bound::Excluded(s) => Bound::Included(s),
                b => b,
            };
            (lo, bounds[p + 1])
        };
        // The snapshot and `names` are both in name order, and a snapshot usually shares its
        // names' text with the topology: a cursor over `names` finds most ids by address,
        // without hashing.
        let mut ids = IdCursor {
            index: &topology.index,
            names,
            next: names.len() * p / parts,
        };
        let mut types: Vec<PackageType> = Vec::new();
        let mut eligible: Vec<Vec<u32>> = Vec::new();
        let mut add = |types: &mut Vec<PackageType>, ty: &PackageType| -> usize {
            match types.iter().position(|t| t == ty) {
                Some(i) => i,
                None => {
                    types.push(ty.clone());
                    eligible.push(Vec::new());
                    types.len() - 1
                }
            }
        };
        let mut found: Vec<(usize, u32)> = Vec::new();
        for (name, state) in snapshot.hosts.range::<str, _>((lo, hi)) {
            if state.packages.is_empty() {
                ids.step(name);
                continue;
            }
            let id = ids.id(name).filter(|_| state.alive);
            match only {
                Some(ty) => {
                    if let Some(pkg) = state.packages.get(ty) {
                        let i = add(&mut types, ty);
                        if let (Some(id), PackageStatus::Running) = (id, pkg.status) {
                            found.push((i, id));
                        }
                    }
                }
                None => {
                    for (ty, pkg) in &state.packages {
                        let i = add(&mut types, ty);
                        if let (Some(id), PackageStatus::Running) = (id, pkg.status) {
                            found.push((i, id));
                        }
                    }
                }
            }
        }
        for (i, id) in found {
            eligible[i].push(id);
        }
        (types, eligible)
    });
    let mut types: Vec<PackageType> = Vec::new();
    for (ts, _) in &pieces {
        for t in ts {
            if !types.contains(t) {
                types.push(t.clone());
            }
        }
    }
    types.sort();
    let mut eligible = vec![Vec::new(); types.len()];
    for (ts, els) in pieces {
        for (t, el) in ts.iter().zip(els) {
            let i = types.binary_search(t).expect("collected above");
            eligible[i].extend(el);
        }
    }
    for el in &mut eligible {
        el.sort_unstable();
    }
    Scan { types, eligible }
}

/// Per type: the eligible managers, by domain, and what the tier walk needs.
struct TypePrep {
    /// Manager index `mi` -> host id. Managers are ordered by domain, then id; those of
    /// domain `d` are `mgr_start[d]..mgr_start[d + 1]`.
    mgr_id: Vec<u32>,
    mgr_start: Vec<u32>,
    /// `0..mgr_id.len()`: the managers of a domain as a slice of manager indexes.
    ident: Vec<u32>,
    /// Each manager's name, zero-padded, and its length, for [`Scorer`].
    mgr_pad: Vec<[u8; 64]>,
    mgr_len: Vec<u8>,
    /// Nearest strict ancestor holding managers (NONE when none).
    nearest: Vec<u32>,
    /// Managers in the domain and all its ancestors.
    chain_count: Vec<u32>,
    /// Manager domains of each subtree, by depth (CSR): `sub[sub_start[x]..sub_start[x + 1]]`;
    /// empty when no domain needs branch tiers.
    sub_start: Vec<u32>,
    sub: Vec<u32>,
}

impl TypePrep {
    fn count(&self, d: usize) -> u32 {
        self.mgr_start[d + 1] - self.mgr_start[d]
    }

    /// Whether hosts of `d` may need branch tiers: their own chain holds fewer than
    /// [`ROUTE_PREFIX_LEN`] managers, and there are others.
    fn needs_branch(&self, topology: &Topology, d: usize) -> bool {
        topology.routing.cross_branch
            && (self.chain_count[d] as usize) < K
            && (self.chain_count[d] as usize) < self.mgr_id.len()
    }
}

fn prepare_type(topology: &Topology, eligible: &[u32]) -> TypePrep {
    let idx = &topology.index;
    let n = topology.domains.len();
    // Managers by domain (eligible is sorted by id, so each domain's slice is too).
    let mut mgr_start = vec![0u32; n + 1];
    for &h in eligible {
        mgr_start[idx.host_domain[h as usize] as usize + 1] += 1;
    }
    for i in 0..n {
        mgr_start[i + 1] += mgr_start[i];
    }
    let mut fill = mgr_start.clone();
    let mut mgr_id = vec![0u32; eligible.len()];
    for &h in eligible {
        let d = idx.host_domain[h as usize] as usize;
        mgr_id[fill[d] as usize] = h;
        fill[d] += 1;
    }
    let mut mgr_pad = Vec::with_capacity(mgr_id.len());
    let mut mgr_len = Vec::with_capacity(mgr_id.len());
    for &m in &mgr_id {
        let name = topology.host_ids[m as usize].as_str().as_bytes();
        let mut b = [0u8; 64];
        b[..name.len()].copy_from_slice(name);
        mgr_pad.push(b);
        mgr_len.push(name.len() as u8);
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
    let mut prep = TypePrep {
        ident: (0..mgr_id.len() as u32).collect(),
        mgr_id,
        mgr_start,
        mgr_pad,
        mgr_len,
        nearest,
        chain_count,
        sub_start: Vec::new(),
        sub: Vec::new(),
    };
    let has_hosts = |d: usize| idx.domain_start[d] < idx.domain_start[d + 1];
    if (0..n).any(|d| has_hosts(d) && prep.needs_branch(topology, d)) {
        subtree_lists(topology, &mut prep);
    }
    prep
}

/// Fills `sub_start` / `sub`: every manager domain is listed under itself and each of its
/// ancestors, shallowest first.
fn subtree_lists(topology: &Topology, prep: &mut TypePrep) {
    let n = topology.domains.len();
    let mut sub_start = vec![0u32; n + 1];
    let mut by_depth: Vec<(u32, u32)> = (0..n)
        .filter(|&d| prep.count(d) > 0)
        .map(|d| (topology.domains[d].depth, d as u32))
        .collect();
    by_depth.sort_unstable();
    for &(_, c) in &by_depth {
        let mut x = Some(DomainId(c));
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
        let mut x = Some(DomainId(c));
        while let Some(a) = x {
            sub[fill[a.index()] as usize] = c;
            fill[a.index()] += 1;
            x = topology.domains[a.index()].parent;
        }
    }
    prep.sub_start = sub_start;
    prep.sub = sub;
}

/// Where a tier's candidates (manager indexes) are: a range of [`TypePrep::ident`] (the
/// managers of one domain) or of [`DomainWalk::groups`] (a branch group).
#[derive(Debug, Clone, Copy)]
struct TierRef {
    in_groups: bool,
    start: u32,
    end: u32,
}

/// The walk of the hosts of one domain for one type: its tiers, nearest first, only as far as
/// a prefix can need. Reused from domain to domain.
#[derive(Debug, Default)]
struct DomainWalk {
    /// The domain's own managers: `mgr_id[own.0..own.1]`.
    own: (u32, u32),
    tiers: Vec<TierRef>,
    groups: Vec<u32>,
    /// The prefix of every host of the domain that is not a manager itself, when no
    /// rendezvous score decides it.
    fixed: Option<[u32; K]>,
}

impl DomainWalk {
    fn plan(&mut self, topology: &Topology, prep: &TypePrep, d: usize) {
        self.tiers.clear();
        self.groups.clear();
        self.own = (prep.mgr_start[d], prep.mgr_start[d + 1]);
        let mut total = 0usize;
        let mut a = if prep.count(d) > 0 {
            d as u32
        } else {
            prep.nearest[d]
        };
        while total < K && a != NONE {
            let a_ = a as usize;
            self.tiers.push(TierRef {
                in_groups: false,
                start: prep.mgr_start[a_],
                end: prep.mgr_start[a_ + 1],
            });
            total += prep.count(a_) as usize;
            a = prep.nearest[a_];
        }
        if prep.needs_branch(topology, d) {
            branch_groups(topology, prep, d as u32, total, self);
        }
        self.fixed = self.fixed_prefix(prep);
    }

    fn tier<'a>(&'a self, prep: &'a TypePrep, t: TierRef) -> &'a [u32] {
        let all = if t.in_groups {
            &self.groups
        } else {
            &prep.ident
        };
        &all[t.start as usize..t.end as usize]
    }

    /// The prefix of a host that is not a manager, when every tier it takes from holds a
    /// single candidate (so no rendezvous score orders anything).
    fn fixed_prefix(&self, prep: &TypePrep) -> Option<[u32; K]> {
        let mut out = [NONE; K];
        let mut len = 0;
        for &t in &self.tiers {
            if len == K {
                break;
            }
            match self.tier(prep, t) {
                [] => {}
                [m] => {
                    out[len] = prep.mgr_id[*m as usize];
                    len += 1;
                }
                _ => return None,
            }
        }
        Some(out)
    }
}

/// Appends to `walk` the first branch tiers of domain `d`: groups of managers with the same
/// `(hops, up)`, nearest first, until `total` (the managers of the tiers before) reaches
/// [`ROUTE_PREFIX_LEN`] (no host of `d` can need more).
///
/// For each ancestor `A_u` of `d` (`A_0 = d`), the domains whose lowest common ancestor with
/// `d` is `A_u` are the subtree of `A_u` minus the subtree of `A_(u-1)`; their key is
/// `(u + depth(C) - depth(A_u), u)`. `prep.sub` lists the manager domains of every subtree
/// by depth, so each `u` is a stream in key order and the groups come from merging the
/// streams.
fn branch_groups(
    topology: &Topology,
    prep: &TypePrep,
    d: u32,
    mut total: usize,
    walk: &mut DomainWalk,
) {
    #[derive(Clone, Copy)]
    struct Stream {
        up: u32,
        anchor: u32,
        anchor_depth: u32,
        exclude: u32,
        pos: usize,
        end: usize,
    }
    let domains = &topology.domains;
    // At most MAX_DEPTH + 1 ancestors.
    let mut streams = [Stream {
        up: 0,
        anchor: 0,
        anchor_depth: 0,
        exclude: NONE,
        pos: 0,
        end: 0,
    }; crate::tree::MAX_DEPTH + 1];
    let mut n_streams = 0;
    let (mut anchor, mut exclude, mut up) = (d, NONE, 0u32);
    loop {
        let a = anchor as usize;
        streams[n_streams] = Stream {
            up,
            anchor,
            anchor_depth: domains[a].depth,
            exclude,
            pos: prep.sub_start[a] as usize,
            end: prep.sub_start[a + 1] as usize,
        };
        n_streams += 1;
        match domains[a].parent {
            None => break,
            Some(p) => {
                exclude = anchor;
                anchor = p.0;
                up += 1;
            }
        }
    }
    let streams = &mut streams[..n_streams];
    let valid = |s: &Stream, c: u32| {
        c != s.anchor
            && (s.exclude == NONE || !topology.is_in_subtree(DomainId(c), DomainId(s.exclude)))
    };
    while total < K {
        let mut best: Option<((u32, u32), usize)> = None;
        for (i, s) in streams.iter_mut().enumerate() {
            while s.pos < s.end && !valid(s, prep.sub[s.pos]) {
                s.pos += 1;
            }
            if s.pos < s.end {
                let c = prep.sub[s.pos] as usize;
                let key = (s.up + domains[c].depth - s.anchor_depth, s.up);
                if best.is_none_or(|(b, _)| key < b) {
                    best = Some((key, i));
                }
            }
        }
        let Some((_, i)) = best else { break };
        let s = &mut streams[i];
        let depth = domains[prep.sub[s.pos] as usize].depth;
        let start = walk.groups.len();
        while s.pos < s.end && domains[prep.sub[s.pos] as usize].depth == depth {
            let c = prep.sub[s.pos];
            if valid(s, c) {
                let c = c as usize;
                walk.groups.extend(prep.mgr_start[c]..prep.mgr_start[c + 1]);
            }
            s.pos += 1;
        }
        total += walk.groups.len() - start;
        walk.tiers.push(TierRef {
            in_groups: true,
            start: start as u32,
            end: walk.groups.len() as u32,
        });
    }
}

/// The xxh3 default secret, as the 16 words the 17..=128-byte path reads.
const SECRET: [u64; 16] = {
    let bytes = xxhash_rust::const_xxh3::const_custom_default_secret(0);
    let mut out = [0u64; 16];
    let mut i = 0;
    while i < 16 {
        let mut w = [0u8; 8];
        let mut j = 0;
        while j < 8 {
            w[j] = bytes[i * 8 + j];
            j += 1;
        }
        out[i] = u64::from_le_bytes(w);
        i += 1;
    }
    out
};
const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;

/// Rendezvous hashing for one requester: the value of [`crate::rendezvous_score`], that is
/// xxh3-64 (seed 0) of `requester + "\0" + candidate`, computed without laying the input out
/// in memory: each 8-byte word the hash reads is taken from the requester's name (where it
/// sits among the index's back-to-back names), from the candidate's zero-padded name, or from
/// both across the separator. (Writing the input to a buffer and reading it back straight
/// away would stall on store forwarding at every score.)
struct Scorer<'a> {
    /// The requester's name and whatever follows it (at least 8 bytes).
    text: &'a [u8],
    /// Length of the requester's name.
    n: usize,
}

impl<'a> Scorer<'a> {
    /// `text` starts with the requester's name, `n` bytes, and holds 8 more bytes of any value.
    fn new(text: &'a [u8], n: usize) -> Self {
        debug_assert!(n <= MAX_NAME && text.len() >= n + 8);
        Scorer { text, n }
    }

    #[inline(always)]
    fn raw(&self, o: usize) -> u64 {
        u64::from_le_bytes(self.text[o..o + 8].try_into().expect("8 bytes"))
    }

    /// The 8 bytes at `o` of `requester + "\0" + candidate`, `o + 8 <= len`.
    #[inline(always)]
    fn word(&self, padded: &[u8; 64], o: usize) -> u64 {
        let n = self.n;
        let cand = |j: usize| u64::from_le_bytes(padded[j..j + 8].try_into().expect("8 bytes"));
        if o + 8 <= n {
            self.raw(o)
        } else if o > n {
            cand(o - n - 1)
        } else {
            // `n - o` bytes of the name, the separator, then the candidate.
            let k = n - o;
            let mine = self.raw(o) & ((1u64 << (8 * k)) - 1);
            mine | cand(0).checked_shl(8 * (k as u32 + 1)).unwrap_or(0)
        }
    }

    #[inline(always)]
    fn mix16(&self, padded: &[u8; 64], o: usize, k: usize) -> u64 {
        let lo = self.word(padded, o) ^ SECRET[2 * k];
        let hi = self.word(padded, o + 8) ^ SECRET[2 * k + 1];
        let p = u128::from(lo) * u128::from(hi);
        (p as u64) ^ ((p >> 64) as u64)
    }

    /// The score of a candidate given as its zero-padded name and its length.
    #[inline(always)]
    fn score(&self, padded: &[u8; 64], len: usize) -> u64 {
        let total = self.n + 1 + len;
        if !(17..=128).contains(&total) {
            let mut buf = [0u8; 128];
            buf[..self.n].copy_from_slice(&self.text[..self.n]);
            buf[self.n + 1..total].copy_from_slice(&padded[..len]);
            return xxhash_rust::xxh3::xxh3_64(&buf[..total]);
        }
        // xxh3's 17..=128-byte path.
        let mut acc = (total as u64).wrapping_mul(PRIME64_1);
        if total > 32 {
            if total > 64 {
                if total > 96 {
                    acc = acc.wrapping_add(self.mix16(padded, 48, 6));
                    acc = acc.wrapping_add(self.mix16(padded, total - 64, 7));
                }
                acc = acc.wrapping_add(self.mix16(padded, 32, 4));
                acc = acc.wrapping_add(self.mix16(padded, total - 48, 5));
            }
            acc = acc.wrapping_add(self.mix16(padded, 16, 2));
            acc = acc.wrapping_add(self.mix16(padded, total - 32, 3));
        }
        acc = acc.wrapping_add(self.mix16(padded, 0, 0));
        acc = acc.wrapping_add(self.mix16(padded, total - 16, 1));
        acc ^= acc >> 37;
        acc = acc.wrapping_mul(0x1656_6791_9E37_79F9);
        acc ^ (acc >> 32)
    }
}

/// One key that orders candidates both ways: higher score first, then lower id. Never 0.
#[inline(always)]
fn rank_key(scorer: &Scorer, prep: &TypePrep, m: u32) -> u128 {
    let m = m as usize;
    let s = scorer.score(&prep.mgr_pad[m], prep.mgr_len[m] as usize);
    (u128::from(s) << 32) | u128::from(!prep.mgr_id[m])
}

/// Appends to `out[..]` (from `*len`) the best `K - *len` of `tier` (manager indexes) for the
/// requester: score descending, id ascending on equal scores; `skip` (a manager index) is
/// left out. Writes `out` element by element and never reads it back.
#[inline]
fn take_best(
    scorer: &Scorer,
    prep: &TypePrep,
    tier: &[u32],
    skip: u32,
    out: &mut [u32; K],
    len: &mut usize,
) {
    let need = K - *len;
    // A tier with a single candidate (after the skip) needs no hashing.
    match tier {
        [] => return,
        [m] => {
            if *m != skip {
                out[*len] = prep.mgr_id[*m as usize];
                *len += 1;
            }
            return;
        }
        [a, b] if *a == skip || *b == skip => {
            let m = if *a == skip { *b } else { *a };
            out[*len] = prep.mgr_id[m as usize];
            *len += 1;
            return;
        }
        _ => {}
    }
    let key = |m: u32| rank_key(scorer, prep, m);
    let id_of = |k: u128| !(k as u32);
    if need == 1 {
        let mut best = 0u128;
        for &m in tier {
            if m != skip {
                best = best.max(key(m));
            }
        }
        out[*len] = id_of(best);
        *len += 1;
        return;
    }
    // The best `need` keys, best first (0 = empty).
    let mut top = [0u128; K];
    for &m in tier {
        if m == skip {
            continue;
        }
        let k = key(m);
        if k <= top[need - 1] {
            continue;
        }
        let mut i = need - 1;
        while i > 0 && top[i - 1] < k {
            top[i] = top[i - 1];
            i -= 1;
        }
        top[i] = k;
    }
    for &k in &top[..need] {
        if k == 0 {
            break;
        }
        out[*len] = id_of(k);
        *len += 1;
    }
}

/// Writes the route prefix of host `h` for one type to `out`, given its domain's walk.
#[inline]
fn host_route(prep: &TypePrep, walk: &DomainWalk, scorer: &Scorer, h: u32, out: &mut [u32; K]) {
    let own = &prep.mgr_id[walk.own.0 as usize..walk.own.1 as usize];
    let me = match own {
        [] => None,
        [m] => (*m == h).then_some(0),
        _ => own.binary_search(&h).ok(),
    };
    let mut len = 0usize;
    let skip = match (me, walk.fixed) {
        (None, Some(fixed)) => {
            *out = fixed;
            return;
        }
        (None, None) => NONE,
        (Some(i), _) => {
            out[0] = h;
            len = 1;
            walk.own.0 + i as u32
        }
    };
    for &t in &walk.tiers {
        if len >= K {
            break;
        }
        take_best(scorer, prep, walk.tier(prep, t), skip, out, &mut len);
    }
}

/// Fills the prefixes of the hosts of the domains `domains`, for every type: `out[t]` is
/// type `t`'s rows from the first slot of those domains. `walk` is scratch space.
fn compute_hosts(
    topology: &Topology,
    preps: &[Option<TypePrep>],
    domains: std::ops::Range<usize>,
    out: &mut [&mut [[u32; K]]],
    walk: &mut DomainWalk,
) {
    let idx = &topology.index;
    let first = idx.domain_start[domains.start] as usize;
    for d in domains {
        let slots = idx.domain_start[d] as usize..idx.domain_start[d + 1] as usize;
        if slots.is_empty() {
            continue;
        }
        for (prep, o) in preps.iter().zip(out.iter_mut()) {
            let Some(prep) = prep else { continue };
            walk.plan(topology, prep, d);
            let rows = &mut o[slots.start - first..slots.end - first];
            if let (true, Some(fixed)) = (walk.own.0 == walk.own.1, walk.fixed) {
                rows.fill(fixed);
                continue;
            }
            for (s, row) in slots.clone().zip(rows) {
                let at = idx.slot_name_start[s] as usize;
                let n = idx.slot_name_start[s + 1] as usize - at;
                let scorer = Scorer::new(&idx.slot_names[at..], n);
                host_route(prep, walk, &scorer, idx.slot_host[s], row);
            }
        }
    }
}

/// A run of whole domains and, per type, the rows of their hosts.
type Chunk<'a> = (std::ops::Range<usize>, Vec<&'a mut [[u32; K]]>);

/// The routes of every type in `types` (eligible managers in `eligible`), in parallel.
fn compute_types(
    topology: &Topology,
    types: Vec<PackageType>,
    eligible: &[Vec<u32>],
    parts: usize,
) -> Vec<TypeRoutes> {
    let idx = &topology.index;
    let n_hosts = idx.host_domain.len();
    let preps: Vec<Option<TypePrep>> = eligible
        .iter()
        .map(|el| (!el.is_empty() && n_hosts > 0).then(|| prepare_type(topology, el)))
        .collect();
    let mut ids: Vec<Vec<[u32; K]>> = (0..types.len()).map(|_| vec![[NONE; K]; n_hosts]).collect();
    if preps.iter().any(Option::is_some) {
        // Runs of whole domains of about HOST_CHUNK hosts, each with every type's rows, taken
        // in turn by the threads.
        let n = topology.domains.len();
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        let mut start = 0;
        for d in 0..n {
            if (idx.domain_start[d + 1] - idx.domain_start[start]) as usize >= HOST_CHUNK {
                runs.push(start..d + 1);
                start = d + 1;
            }
        }
        if start < n {
            runs.push(start..n);
        }
        let mut chunks: Vec<Chunk> = runs
            .iter()
            .map(|r| (r.clone(), Vec::with_capacity(types.len())))
            .collect();
        for v in &mut ids {
            let mut rest: &mut [[u32; K]] = v;
            for (r, rows) in &mut chunks {
                let len = (idx.domain_start[r.end] - idx.domain_start[r.start]) as usize;
                let (mine, tail) = rest.split_at_mut(len);
                rows.push(mine);
                rest = tail;
            }
        }
        let parts = parts.min(chunks.len());
        let queue = Mutex::new(chunks.into_iter());
        par_map(parts, |_| {
            let mut walk = DomainWalk::default();
            loop {
                let item = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some((domains, mut out)) = item else {
                    break;
                };
                compute_hosts(topology, &preps, domains, &mut out, &mut walk);
            }
        });
    }
    types
        .into_iter()
        .zip(ids)
        .map(|(ty, ids)| TypeRoutes::new(ty, ids))
        .collect()
}

impl RouteTable {
    /// Computes the route prefix of every host of the topology for every type in the snapshot.
    pub fn build(topology: &Topology, snapshot: &RegistrySnapshot) -> RouteTable {
        let parts = threads();
        let Scan { types, eligible } = scan(topology, snapshot, None, parts);
        let types = compute_types(topology, types, &eligible, parts);
        RouteTable {
            index: topology.index.clone(),
            host_names: topology.host_ids.clone(),
            types,
        }
    }

    /// The routes of `package_type` and the row (slot) of `host` in them.
    fn entry(&self, host: &str, package_type: &str) -> Option<(&TypeRoutes, usize)> {
        let &h = self.index.by_name.get(host)?;
        let t = self.types.iter().find(|t| t.ty.as_str() == package_type)?;
        Some((t, self.index.host_slot[h as usize] as usize))
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
    /// an empty slice when nothing is eligible. The first call for a block of hosts builds
    /// their slices.
    pub fn route(&self, host: &str, package_type: &str) -> Option<&[HostName]> {
        let (t, h) = self.entry(host, package_type)?;
        let (chunk, at) = (h / NAME_CHUNK, h % NAME_CHUNK);
        let block = t.names[chunk].get_or_init(|| {
            let first = chunk * NAME_CHUNK;
            let last = (first + NAME_CHUNK).min(t.ids.len());
            (first..last)
                .flat_map(|x| {
                    // Unused slots hold the host's own name; they are never handed out.
                    let own = &self.host_names[self.index.slot_host[x] as usize];
                    t.ids[x].map(|m| {
                        if m == NONE {
                            own.clone()
                        } else {
                            self.host_names[m as usize].clone()
                        }
                    })
                })
                .collect()
        });
        let len = t.ids[h].iter().take_while(|&&m| m != NONE).count();
        Some(&block[at * K..at * K + len])
    }

    /// The same prefix as [`RouteTable::route`], without building a slice.
    pub fn route_hosts(&self, host: &str, package_type: &str) -> impl Iterator<Item = &HostName> {
        self.entry(host, package_type)
            .into_iter()
            .flat_map(|(t, h)| {
                t.ids[h]
                    .iter()
                    .take_while(|&&m| m != NONE)
                    .map(|&m| &self.host_names[m as usize])
            })
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
        let parts = threads();
        let Scan { types, eligible } = scan(topology, snapshot, Some(&ty), parts);
        self.index = topology.index.clone();
        self.host_names = topology.host_ids.clone();
        let pos = self.types.iter().position(|t| t.ty == ty);
        let fresh = compute_types(topology, types, &eligible, parts).pop();
        match (pos, fresh) {
            (Some(i), Some(routes)) => self.types[i] = routes,
            (Some(i), None) => {
                self.types.remove(i);
            }
            (None, Some(routes)) => {
                let at = self.types.partition_point(|t| t.ty < routes.ty);
                self.types.insert(at, routes);
            }
            (None, None) => {}
        }
    }

    /// The types the table holds routes for, sorted.
    pub fn package_types(&self) -> impl Iterator<Item = &PackageType> {
        self.types.iter().map(|t| &t.ty)
    }

    /// The names of the table's hosts (those of the topology it was built from), by dense id.
    pub(crate) fn host_names(&self) -> &[HostName] {
        &self.host_names
    }

    /// Every host's route prefix of `package_type` as dense ids (indexes into
    /// `host_names()`), in dense id order; `None` for a type the table does not
    /// hold. For `crate::coverage`, which reads every row without hashing names.
    pub(crate) fn prefixes_by_host(
        &self,
        package_type: &str,
    ) -> Option<impl Iterator<Item = &[u32]> + '_> {
        let t = self.types.iter().find(|t| t.ty.as_str() == package_type)?;
        Some(self.index.host_slot.iter().map(move |&slot| {
            let row = &t.ids[slot as usize];
            let len = row.iter().take_while(|&&m| m != NONE).count();
            &row[..len]
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(name: &str) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b
    }

    /// Every pair of name lengths, with bytes that differ at every position.
    #[test]
    fn scorer_matches_rendezvous_score() {
        let text: String = (0..MAX_NAME)
            .map(|i| (b'a' + (i * 7 % 26) as u8) as char)
            .collect();
        let other: String = (0..MAX_NAME)
            .map(|i| (b'0' + (i * 3 % 10) as u8) as char)
            .collect();
        for n in 1..=MAX_NAME {
            let requester = &text[..n];
            // The bytes after the name are another name's, as in the index.
            let mut bytes = requester.as_bytes().to_vec();
            bytes.extend_from_slice(b"zzzzzzzz");
            let scorer = Scorer::new(&bytes, n);
            for m in 1..=MAX_NAME {
                let candidate = &other[MAX_NAME - m..];
                assert_eq!(
                    scorer.score(&padded(candidate), m),
                    crate::rendezvous_score(requester, candidate),
                    "requester length {n}, candidate length {m}"
                );
            }
        }
    }

    /// Ids found by the name cursor (names shared with the topology) or by hashing (a
    /// snapshot with its own copies of the names, and names the topology lacks) agree.
    #[test]
    fn snapshot_names_need_not_share_the_topologys_text() {
        use crate::gen::{fleet, FleetSpec};
        let (t, shared) = fleet(&FleetSpec::small(3, 3000, 120));
        let mut own = RegistrySnapshot {
            revision: shared.revision,
            ..Default::default()
        };
        for (i, (name, state)) in shared.hosts.iter().enumerate() {
            // Every third host missing: alive, no packages.
            if i % 3 != 1 {
                let copy = HostName::new(name.as_str()).expect("valid");
                own.hosts.insert(copy, state.clone());
            }
        }
        if let Some(st) = shared.hosts.values().find(|h| !h.packages.is_empty()) {
            let stray = HostName::new("zz-not-in-topology").expect("valid");
            own.hosts.insert(stray, st.clone());
        }
        let mut mixed = shared.clone();
        for (i, name) in shared.hosts.keys().enumerate() {
            if i % 5 == 0 {
                let st = mixed.hosts.remove(name).expect("present");
                mixed
                    .hosts
                    .insert(HostName::new(name.as_str()).expect("valid"), st);
            }
        }
        let a = RouteTable::build(&t, &shared);
        let stripped = RegistrySnapshot {
            revision: shared.revision,
            hosts: shared
                .hosts
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 != 1)
                .map(|(_, (n, s))| (n.clone(), s.clone()))
                .collect(),
        };
        let b = RouteTable::build(&t, &stripped);
        let c = RouteTable::build(&t, &own);
        let m = RouteTable::build(&t, &mixed);
        assert!(a.package_types().eq(m.package_types()));
        assert!(b.package_types().eq(c.package_types()));
        for h in t.hosts() {
            for ty in a.package_types() {
                let (h, ty) = (h.name.as_str(), ty.as_str());
                assert_eq!(a.route(h, ty), m.route(h, ty), "{h} {ty}");
                assert_eq!(b.route(h, ty), c.route(h, ty), "{h} {ty}");
            }
        }
    }
}
