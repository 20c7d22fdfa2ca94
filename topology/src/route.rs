//! The routing rule of the routing rule (docs/routing.md), written for clarity: `explain` ranks every host running a
//! type and says why each skipped one was skipped. [`crate::RouteTable`] computes the same
//! answer fast for every host at once, and the tests hold the two together.

use std::cmp::Reverse;
use std::fmt;

use serde_json::Value;

use crate::names::{DomainName, HostName, NameError, PackageType};
use crate::snapshot::{PackageStatus, RegistrySnapshot};
use crate::tree::{DomainId, Topology};

/// How near a candidate is to the requester; `Ord` puts the nearest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// The requester itself.
    SelfHost,
    /// Another host of the requester's domain.
    Domain,
    /// A host of an ancestor domain, `up` levels above (nearer first).
    Ancestor {
        /// `depth(D) - depth(C)`, at least 1.
        up: u32,
    },
    /// A host of another branch or of a descendant domain; key `(hops, up)`.
    Branch {
        /// `up + down`.
        hops: u32,
        /// `depth(D) - depth(LCA)`.
        up: u32,
    },
}

impl Tier {
    /// `self`, `domain`, `ancestor` or `branch`, as in the JSON answer.
    pub fn name(&self) -> &'static str {
        match self {
            Tier::SelfHost => "self",
            Tier::Domain => "domain",
            Tier::Ancestor { .. } => "ancestor",
            Tier::Branch { .. } => "branch",
        }
    }

    /// The tier of a candidate in domain `c` (host `m`) for a requester `h` in domain `d`.
    pub fn of(topology: &Topology, d: DomainId, c: DomainId, is_self: bool) -> Tier {
        if is_self {
            return Tier::SelfHost;
        }
        if c == d {
            return Tier::Domain;
        }
        let l = topology.lca(d, c);
        let dd = topology.domain(d).depth;
        let dl = topology.domain(l).depth;
        let dc = topology.domain(c).depth;
        let up = dd - dl;
        let down = dc - dl;
        if down == 0 {
            Tier::Ancestor { up }
        } else {
            Tier::Branch {
                hops: up + down,
                up,
            }
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tier::Ancestor { up } => write!(f, "ancestor (up {up})"),
            Tier::Branch { hops, up } => write!(f, "branch (hops {hops}, up {up})"),
            t => f.write_str(t.name()),
        }
    }
}

/// Rendezvous score of the routing rule (docs/routing.md): `xxh3_64` (seed 0) of `requester + "\0" + candidate`.
/// Higher is preferred.
pub fn rendezvous_score(requester: &str, candidate: &str) -> u64 {
    let mut buf = [0u8; 128];
    let n = requester.len() + 1 + candidate.len();
    if n <= buf.len() {
        buf[..requester.len()].copy_from_slice(requester.as_bytes());
        buf[requester.len()] = 0;
        buf[requester.len() + 1..n].copy_from_slice(candidate.as_bytes());
        xxhash_rust::xxh3::xxh3_64(&buf[..n])
    } else {
        let mut v = Vec::with_capacity(n);
        v.extend_from_slice(requester.as_bytes());
        v.push(0);
        v.extend_from_slice(candidate.as_bytes());
        xxhash_rust::xxh3::xxh3_64(&v)
    }
}

/// One host running the type, ranked, with why it was skipped when it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The host running the package.
    pub host: HostName,
    /// Its domain; `None` when the topology does not name the host.
    pub domain: Option<DomainName>,
    /// Its tier; `None` when the topology does not name the host.
    pub tier: Option<Tier>,
    /// True when it is on the route.
    pub eligible: bool,
    /// Why it is not eligible (`None` when eligible).
    pub reason: Option<String>,
    /// The package's endpoint.
    pub endpoint: String,
}

/// The full answer of `route explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The requester.
    pub host: HostName,
    /// The manager type.
    pub package_type: PackageType,
    /// The first host of the route.
    pub chosen: Option<HostName>,
    /// The chosen host's endpoint for this type.
    pub endpoint: Option<String>,
    /// Eligible hosts, nearest first.
    pub route: Vec<HostName>,
    /// Every host running the type: ranked hosts of the topology first, then hosts the
    /// topology does not name.
    pub candidates: Vec<Candidate>,
}

impl Explanation {
    /// The JSON answer of the command-line contract (docs/routing.md), as
    /// [`crate::Explained::to_json`] prints it:
    /// `{"host","type","chosen","endpoint","route","candidates":[{"host","domain","tier","eligible","reason","endpoint"}]}`.
    pub fn to_json(&self) -> Value {
        crate::Explained::from(self).to_json()
    }
}

/// Why a route could not be explained at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The requester is not a host of the topology.
    #[error("host {0:?} is not in the topology; add it to a domain of the topology file or check the spelling")]
    UnknownHost(String),
    /// A name breaks the name rules (docs/topology.md).
    #[error(transparent)]
    BadName(#[from] NameError),
}

/// Reason text for hosts the topology does not name.
pub const REASON_NOT_IN_TOPOLOGY: &str = "host is not in the topology";
/// Reason text for hosts whose agent lost its session.
pub const REASON_NOT_ALIVE: &str = "host is not alive";
/// Reason text for hosts the requester's own health checks hold down.
pub const REASON_HELD_DOWN: &str = "held down by this agent's health checks";
/// Reason text for other-branch hosts when `cross_branch` is false.
pub const REASON_CROSS_BRANCH: &str =
    "cross-branch routing is disabled (routing.cross_branch: false)";

/// Explains the route of `requester` for `package_type` (the routing rule (docs/routing.md)). `held_down` is the live
/// agent's health view of candidate hosts; pass `&|_| false` offline.
pub fn explain(
    topology: &Topology,
    snapshot: &RegistrySnapshot,
    requester: &str,
    package_type: &str,
    held_down: &dyn Fn(&str) -> bool,
) -> Result<Explanation, RouteError> {
    let host = HostName::new(requester)?;
    let ptype = PackageType::new(package_type)?;
    let me = topology
        .host(requester)
        .ok_or_else(|| RouteError::UnknownHost(requester.to_owned()))?;
    let d = me.domain;

    let mut known: Vec<(Tier, Reverse<u64>, Candidate)> = Vec::new();
    let mut unknown: Vec<(Reverse<u64>, Candidate)> = Vec::new();
    for (name, state) in &snapshot.hosts {
        let Some(pkg) = state.packages.get(package_type) else {
            continue;
        };
        let score = Reverse(rendezvous_score(requester, name.as_str()));
        let Some(h) = topology.host(name.as_str()) else {
            unknown.push((
                score,
                Candidate {
                    host: name.clone(),
                    domain: None,
                    tier: None,
                    eligible: false,
                    reason: Some(REASON_NOT_IN_TOPOLOGY.to_owned()),
                    endpoint: pkg.endpoint.clone(),
                },
            ));
            continue;
        };
        let tier = Tier::of(topology, d, h.domain, name.as_str() == requester);
        let reason = if pkg.status != PackageStatus::Running {
            Some(format!("package status is {}", pkg.status))
        } else if !state.alive {
            Some(REASON_NOT_ALIVE.to_owned())
        } else if held_down(name.as_str()) {
            Some(REASON_HELD_DOWN.to_owned())
        } else if matches!(tier, Tier::Branch { .. }) && !topology.routing().cross_branch {
            Some(REASON_CROSS_BRANCH.to_owned())
        } else {
            None
        };
        known.push((
            tier,
            score,
            Candidate {
                host: name.clone(),
                domain: Some(topology.domain(h.domain).name.clone()),
                tier: Some(tier),
                eligible: reason.is_none(),
                reason,
                endpoint: pkg.endpoint.clone(),
            },
        ));
    }
    known.sort_by(|a, b| (a.0, a.1, &a.2.host).cmp(&(b.0, b.1, &b.2.host)));
    unknown.sort_by(|a, b| (a.0, &a.1.host).cmp(&(b.0, &b.1.host)));

    let candidates: Vec<Candidate> = known
        .into_iter()
        .map(|k| k.2)
        .chain(unknown.into_iter().map(|u| u.1))
        .collect();
    let route: Vec<HostName> = candidates
        .iter()
        .filter(|c| c.eligible)
        .map(|c| c.host.clone())
        .collect();
    let first = candidates.iter().find(|c| c.eligible);
    Ok(Explanation {
        host,
        package_type: ptype,
        chosen: first.map(|c| c.host.clone()),
        endpoint: first.map(|c| c.endpoint.clone()),
        route,
        candidates,
    })
}
