//! The routes of every manager type as this agent routes now: one immutable value, replaced
//! whole after every recomputation and shared through a `watch` channel, so that `Resolve`
//! (the 40,000-a-second path) is a map lookup and a clone of a pre-built answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use proto::v1 as pb;
use topology::{HostName, PackageType};

/// A manager to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host running the manager.
    pub host: HostName,
    /// The manager's endpoint for this type.
    pub endpoint: String,
}

/// Why no route can be computed at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookProblem {
    /// No registry copy yet: no manager was reached and nothing was persisted.
    NoCopy,
    /// The copy has no topology yet.
    NoTopology,
    /// This host is not in the registry's topology.
    UnknownHost(String),
}

impl std::fmt::Display for BookProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BookProblem::NoCopy => f.write_str(
                "this agent has no registry copy yet: no registry manager reached so far; check `managers` in its configuration",
            ),
            BookProblem::NoTopology => {
                f.write_str("the registry has no topology yet; apply one with `registry-manager topology apply FILE`")
            }
            BookProblem::UnknownHost(h) => write!(
                f,
                "host {h:?} is not in the registry's topology; add it to a domain of the topology file or fix `host` in the agent configuration"
            ),
        }
    }
}

/// The live route of one manager type.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeRoute {
    /// The manager type.
    pub package_type: PackageType,
    /// The manager in use (may differ from `route[0]` during a revert hold-down).
    pub chosen: Option<HostName>,
    /// The chosen manager's endpoint.
    pub endpoint: Option<String>,
    /// Eligible hosts, nearest first (the routing rule (docs/routing.md)).
    pub route: Vec<HostName>,
    /// Where to connect, in order: the chosen manager, then the rest of the route.
    pub order: Vec<Target>,
    /// Candidates this agent's health view holds down (probed until they rise again).
    pub held_down: Vec<Target>,
    /// Why the chosen manager is what it is (reason of the last change).
    pub reason: String,
    /// How many times the chosen manager of this type changed since the agent started.
    pub changes: u64,
    /// The full `Resolve` answer.
    pub full: pb::RouteExplanation,
    /// The `brief` `Resolve` answer.
    pub brief: pb::RouteExplanation,
}

impl TypeRoute {
    /// The `WatchRoute` / `Routes` form.
    pub fn update(&self, revision: u64, stale: bool) -> pb::RouteUpdate {
        pb::RouteUpdate {
            r#type: self.package_type.as_str().to_owned(),
            chosen: self.chosen.as_ref().map(|h| h.as_str().to_owned()),
            endpoint: self.endpoint.clone(),
            route: self.route.iter().map(|h| h.as_str().to_owned()).collect(),
            revision,
            stale,
            reason: self.reason.clone(),
        }
    }
}

/// Every route of this agent at one moment.
#[derive(Debug, Clone, Default)]
pub struct RouteBook {
    /// Revision of the registry copy the routes were computed from.
    pub revision: u64,
    /// True while the agent has no live registry session (answers come from the copy).
    pub stale: bool,
    /// Set when no route can be computed at all.
    pub problem: Option<BookProblem>,
    /// Routes by type.
    pub routes: BTreeMap<PackageType, Arc<TypeRoute>>,
    /// Route changes since the agent started, all types together.
    pub total_changes: u64,
}

impl RouteBook {
    /// An empty book, before anything is known.
    pub fn empty() -> RouteBook {
        RouteBook {
            stale: true,
            problem: Some(BookProblem::NoCopy),
            ..Default::default()
        }
    }

    /// The route of a type, if the type is known.
    pub fn get(&self, package_type: &str) -> Option<&Arc<TypeRoute>> {
        self.routes.get(package_type)
    }

    /// The chosen manager of a type.
    pub fn chosen(&self, package_type: &str) -> Option<&HostName> {
        self.get(package_type).and_then(|r| r.chosen.as_ref())
    }
}
