//! Computes the [`RouteBook`] from (registry copy, health view, time): `topology::explain` for
//! the agent's own host and every manager type, then [`router::decide`] for the hold-down.
//! A live agent always counts its own host alive (the routing rule), whatever its copy says
//! (the copy shows it not alive while its session lapsed or is being re-opened). The
//! engine itself is a plain value (tested without sockets); [`run_engine`] is the task that
//! recomputes whenever the copy, the health view or the session state changes, or a hold-down
//! ends, and publishes the result.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use proto::v1 as pb;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use topology::{explain, Explanation, HostName, PackageType, RegistrySnapshot, RouteError};

use crate::health_view::HealthView;
use crate::metrics::AgentMetrics;
use crate::registry_copy::RegistryCopy;
use crate::route_book::{BookProblem, RouteBook, Target, TypeRoute};
use crate::router::{self, EligibleSince, Reason};

/// Reason text of a candidate that is eligible but nearer than the chosen manager.
pub const REASON_IN_HOLD_DOWN: &str = "recovered; in revert hold-down (routing.revert_after)";

/// One change of the chosen manager of a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEvent {
    /// The manager type.
    pub package_type: PackageType,
    /// Previous choice.
    pub from: Option<HostName>,
    /// New choice.
    pub to: Option<HostName>,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Default)]
struct TypeState {
    current: Option<HostName>,
    since: EligibleSince,
    changes: u64,
    reason: String,
}

/// The routing state of a live agent across recomputations.
#[derive(Debug)]
pub struct RouteEngine {
    own_host: HostName,
    /// Types always present in the book even when no host runs them (forward ports,
    /// `registry-manager`).
    always: BTreeSet<PackageType>,
    types: BTreeMap<PackageType, TypeState>,
    total_changes: u64,
}

/// The result of one recomputation.
#[derive(Debug)]
pub struct Recomputed {
    /// The new book.
    pub book: RouteBook,
    /// Changes of chosen managers, to log and count.
    pub events: Vec<RouteEvent>,
    /// When to recompute again even if nothing changes (end of a hold-down).
    pub next_wakeup: Option<Instant>,
}

impl RouteEngine {
    /// An engine for `own_host`; `always` lists types to keep in the book.
    pub fn new(own_host: HostName, always: impl IntoIterator<Item = PackageType>) -> RouteEngine {
        RouteEngine {
            own_host,
            always: always.into_iter().collect(),
            types: BTreeMap::new(),
            total_changes: 0,
        }
    }

    /// Recomputes every route. `held_down(host, type)` is the health view.
    pub fn recompute(
        &mut self,
        copy: &RegistryCopy,
        held_down: &dyn Fn(&str, &str) -> bool,
        stale: bool,
        now: Instant,
    ) -> Recomputed {
        let revision = copy.revision();
        let mut book = RouteBook {
            revision,
            stale,
            problem: None,
            routes: BTreeMap::new(),
            total_changes: 0,
        };
        let problem = match copy.topology.as_deref() {
            None if copy.has_data() => Some(BookProblem::NoTopology),
            None => Some(BookProblem::NoCopy),
            Some(t) if t.host(self.own_host.as_str()).is_none() => {
                Some(BookProblem::UnknownHost(self.own_host.as_str().to_owned()))
            }
            Some(_) => None,
        };
        let (Some(topology), None) = (copy.topology.as_deref(), &problem) else {
            // No route can be computed: the types this agent always lists show no manager, with
            // the problem as the reason. The routing state is kept for when the copy is usable.
            let reason = problem.as_ref().map(|p| p.to_string()).unwrap_or_default();
            for t in &self.always {
                book.routes.insert(
                    t.clone(),
                    Arc::new(placeholder(t, &self.own_host, &reason, revision, stale)),
                );
            }
            book.problem = problem;
            book.total_changes = self.total_changes;
            return Recomputed {
                book,
                events: Vec::new(),
                next_wakeup: None,
            };
        };
        let revert_after = topology.routing().revert_after;
        let mut types: BTreeSet<PackageType> = self.always.clone();
        for h in copy.snapshot.hosts.values() {
            types.extend(h.packages.keys().cloned());
        }
        self.types.retain(|t, _| types.contains(t));
        let snapshot = own_host_alive(&copy.snapshot, &self.own_host);

        let mut events = Vec::new();
        let mut next_wakeup: Option<Instant> = None;
        for t in types {
            let held = |h: &str| held_down(h, t.as_str());
            let ex = match explain(
                topology,
                &snapshot,
                self.own_host.as_str(),
                t.as_str(),
                &held,
            ) {
                Ok(ex) => ex,
                Err(RouteError::UnknownHost(h)) => {
                    book.problem = Some(BookProblem::UnknownHost(h));
                    continue;
                }
                Err(e) => {
                    tracing::error!(package_type = %t, error = %e, "route not computable");
                    continue;
                }
            };
            let fresh = !self.types.contains_key(&t);
            let st = self.types.entry(t.clone()).or_default();
            router::track_eligibility(&mut st.since, &ex.route, now);
            let d = router::decide(&ex.route, st.current.as_ref(), &st.since, now, revert_after);
            if d.chosen != st.current {
                let reason = reason_text(&d.reason, fresh, &ex);
                events.push(RouteEvent {
                    package_type: t.clone(),
                    from: st.current.clone(),
                    to: d.chosen.clone(),
                    reason: reason.clone(),
                });
                st.current = d.chosen.clone();
                st.changes += 1;
                st.reason = reason;
                self.total_changes += 1;
            } else if fresh {
                st.reason = "initial".to_owned();
            }
            if let Some(w) = d.next_wakeup {
                next_wakeup = Some(next_wakeup.map_or(w, |n| n.min(w)));
            }
            let route = build_type_route(&t, ex, st, revision, stale);
            book.routes.insert(t, Arc::new(route));
        }
        book.total_changes = self.total_changes;
        Recomputed {
            book,
            events,
            next_wakeup,
        }
    }
}

/// The snapshot with `own_host` counted alive: a live agent always counts its own host alive.
/// Borrowed unchanged in the usual case; copied only while the copy says otherwise.
pub fn own_host_alive<'a>(
    snapshot: &'a RegistrySnapshot,
    own_host: &HostName,
) -> Cow<'a, RegistrySnapshot> {
    match snapshot.hosts.get(own_host.as_str()) {
        Some(h) if !h.alive => {
            let mut s = snapshot.clone();
            if let Some(h) = s.hosts.get_mut(own_host.as_str()) {
                h.alive = true;
            }
            Cow::Owned(s)
        }
        _ => Cow::Borrowed(snapshot),
    }
}

fn placeholder(
    t: &PackageType,
    own_host: &HostName,
    reason: &str,
    revision: u64,
    stale: bool,
) -> TypeRoute {
    TypeRoute {
        package_type: t.clone(),
        chosen: None,
        endpoint: None,
        route: Vec::new(),
        order: Vec::new(),
        held_down: Vec::new(),
        reason: reason.to_owned(),
        changes: 0,
        full: pb::RouteExplanation {
            host: own_host.as_str().to_owned(),
            r#type: t.as_str().to_owned(),
            revision,
            stale,
            ..Default::default()
        },
        brief: pb::RouteExplanation {
            revision,
            stale,
            ..Default::default()
        },
    }
}

fn reason_text(reason: &Reason, fresh: bool, ex: &Explanation) -> String {
    match reason {
        Reason::Available if fresh => "initial".to_owned(),
        Reason::Left { from } => {
            let why = ex
                .candidates
                .iter()
                .find(|c| &c.host == from)
                .and_then(|c| c.reason.clone())
                .unwrap_or_else(|| "no longer runs this type".to_owned());
            format!("manager failed: {from} {why}")
        }
        other => other.to_string(),
    }
}

fn build_type_route(
    t: &PackageType,
    ex: Explanation,
    st: &TypeState,
    revision: u64,
    stale: bool,
) -> TypeRoute {
    let endpoint_of = |h: &HostName| {
        ex.candidates
            .iter()
            .find(|c| &c.host == h)
            .map(|c| c.endpoint.clone())
            .unwrap_or_default()
    };
    let chosen = st.current.clone();
    let endpoint = chosen.as_ref().map(endpoint_of);
    let mut order = Vec::with_capacity(ex.route.len());
    if let (Some(c), Some(e)) = (&chosen, &endpoint) {
        order.push(Target {
            host: c.clone(),
            endpoint: e.clone(),
        });
    }
    for h in &ex.route {
        if Some(h) != chosen.as_ref() {
            order.push(Target {
                host: h.clone(),
                endpoint: endpoint_of(h),
            });
        }
    }
    let held_down = ex
        .candidates
        .iter()
        .filter(|c| c.reason.as_deref() == Some(topology::route::REASON_HELD_DOWN))
        .map(|c| Target {
            host: c.host.clone(),
            endpoint: c.endpoint.clone(),
        })
        .collect();
    // Hosts ahead of the chosen one on the route are waiting out the revert hold-down.
    let ahead: Vec<&HostName> = match &chosen {
        Some(c) => ex.route.iter().take_while(|h| *h != c).collect(),
        None => Vec::new(),
    };
    let route_names: Vec<String> = ex.route.iter().map(|h| h.as_str().to_owned()).collect();
    let full = pb::RouteExplanation {
        host: ex.host.as_str().to_owned(),
        r#type: t.as_str().to_owned(),
        chosen: chosen.as_ref().map(|h| h.as_str().to_owned()),
        endpoint: endpoint.clone(),
        route: route_names.clone(),
        candidates: ex
            .candidates
            .iter()
            .map(|c| pb::RouteCandidate {
                host: c.host.as_str().to_owned(),
                domain: c
                    .domain
                    .as_ref()
                    .map(|d| d.as_str().to_owned())
                    .unwrap_or_default(),
                tier: c.tier.map(|t| t.name().to_owned()).unwrap_or_default(),
                eligible: c.eligible,
                reason: if ahead.contains(&&c.host) {
                    REASON_IN_HOLD_DOWN.to_owned()
                } else {
                    c.reason.clone().unwrap_or_default()
                },
                endpoint: c.endpoint.clone(),
            })
            .collect(),
        revision,
        stale,
    };
    let brief = pb::RouteExplanation {
        chosen: full.chosen.clone(),
        endpoint: full.endpoint.clone(),
        route: route_names,
        revision,
        stale,
        ..Default::default()
    };
    TypeRoute {
        package_type: t.clone(),
        chosen,
        endpoint,
        route: ex.route,
        order,
        held_down,
        reason: st.reason.clone(),
        changes: st.changes,
        full,
        brief,
    }
}

/// Shared inputs of the engine task.
#[derive(Debug, Clone)]
pub struct EngineInputs {
    /// The registry copy (written by the session task).
    pub copy: Arc<RwLock<RegistryCopy>>,
    /// Bumped by the session task whenever the copy changes.
    pub copy_changed: watch::Receiver<u64>,
    /// True while there is no live session + watch.
    pub stale: watch::Receiver<bool>,
    /// The health view.
    pub health: Arc<HealthView>,
    /// Where route changes and failover times are counted.
    pub metrics: Arc<AgentMetrics>,
}

/// Recomputes and publishes the book until `shutdown`.
pub async fn run_engine(
    mut engine: RouteEngine,
    mut inputs: EngineInputs,
    book_tx: watch::Sender<Arc<RouteBook>>,
    shutdown: CancellationToken,
) {
    let mut health_changed = inputs.health.subscribe();
    // Inputs whose sender is gone (their task ended) are no longer waited on.
    let (mut copy_open, mut stale_open) = (true, true);
    loop {
        let stale = *inputs.stale.borrow_and_update();
        inputs.copy_changed.borrow_and_update();
        health_changed.borrow_and_update();
        let now = Instant::now();
        let r = {
            let copy = inputs.copy.read().unwrap_or_else(|p| p.into_inner());
            let health = &inputs.health;
            engine.recompute(&copy, &|h, t| health.is_down(h, t), stale, now)
        };
        for e in &r.events {
            let from = e.from.as_ref().map_or("none", |h| h.as_str());
            let to = e.to.as_ref().map_or("none", |h| h.as_str());
            tracing::info!(package_type = %e.package_type, from, to, reason = %e.reason, "route changed");
        }
        inputs.metrics.route_events(&r.book, &r.events, now);
        // Forget health entries of managers that are no longer candidates at all.
        {
            let book = &r.book;
            if book.problem.is_none() {
                inputs.health.retain(|t, h| {
                    book.get(t.as_str())
                        .is_some_and(|r| r.full.candidates.iter().any(|c| c.host == h.as_str()))
                });
            }
        }
        let next_wakeup = r.next_wakeup;
        book_tx.send_replace(Arc::new(r.book));
        let sleep = async {
            match next_wakeup {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = inputs.copy_changed.changed(), if copy_open => copy_open = r.is_ok(),
            r = inputs.stale.changed(), if stale_open => stale_open = r.is_ok(),
            _ = health_changed.changed() => {},
            _ = sleep => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use topology::{HostState, PackageState, PackageStatus, RegistrySnapshot, Revision, Topology};

    fn topo_text() -> String {
        topology::fixtures::tree_with_routing("  revert_after: 5s\n", false)
    }
    const CCM: &str = "command-control-manager";

    fn copy(rev: u64, pkgs: &[(&str, PackageStatus, bool)]) -> RegistryCopy {
        let mut snapshot = RegistrySnapshot {
            revision: Revision(rev),
            ..Default::default()
        };
        for (h, s, alive) in pkgs {
            let mut st = HostState {
                alive: *alive,
                packages: Default::default(),
            };
            st.packages.insert(
                PackageType::new(CCM).unwrap(),
                PackageState {
                    endpoint: format!("{h}:7001"),
                    status: *s,
                },
            );
            snapshot.hosts.insert(HostName::new(*h).unwrap(), st);
        }
        RegistryCopy {
            topology_yaml: topo_text(),
            topology: Some(Arc::new(Topology::from_yaml("t", &topo_text()).unwrap())),
            snapshot,
            history: String::new(),
        }
    }

    use PackageStatus::{Draining, Running, Withdrawn};

    fn chosen(r: &Recomputed) -> Option<&str> {
        r.book.chosen(CCM).map(|h| h.as_str())
    }

    #[test]
    fn spec_worked_example_for_agent_4_with_hold_down() {
        let t0 = Instant::now();
        let no = |_: &str, _: &str| false;
        let mut e = RouteEngine::new(HostName::new("agent-4").unwrap(), []);
        let all = [
            ("fm", Running, true),
            ("agent-1", Running, true),
            ("agent-3", Running, true),
        ];
        let r = e.recompute(&copy(1, &all), &no, false, t0);
        assert_eq!(chosen(&r), Some("agent-3"));
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.book.get(CCM).unwrap().reason, "initial");
        let order: Vec<&str> = r
            .book
            .get(CCM)
            .unwrap()
            .order
            .iter()
            .map(|t| t.host.as_str())
            .collect();
        assert_eq!(order, ["agent-3", "agent-1", "fm"]);

        // agent-3 drained: agent-4 moves to agent-1 at once.
        let drained = [
            ("fm", Running, true),
            ("agent-1", Running, true),
            ("agent-3", Draining, true),
        ];
        let r = e.recompute(&copy(2, &drained), &no, false, t0 + Duration::from_secs(1));
        assert_eq!(chosen(&r), Some("agent-1"));
        assert_eq!(
            r.events[0].reason,
            "manager failed: agent-3 package status is draining"
        );

        // agent-1 lost as well: fm.
        let lost = [
            ("fm", Running, true),
            ("agent-1", Running, false),
            ("agent-3", Draining, true),
        ];
        let r = e.recompute(&copy(3, &lost), &no, false, t0 + Duration::from_secs(2));
        assert_eq!(chosen(&r), Some("fm"));

        // fm withdrawn, agent-3 back: agent-3 is the only one left: taken at once.
        let back = [
            ("fm", Withdrawn, true),
            ("agent-1", Running, false),
            ("agent-3", Running, true),
        ];
        let t = t0 + Duration::from_secs(3);
        let r = e.recompute(&copy(4, &back), &no, false, t);
        assert_eq!(chosen(&r), Some("agent-3"));

        // agent-3 held down by this agent's probes: no manager at all.
        let held = |h: &str, _: &str| h == "agent-3";
        let r = e.recompute(&copy(4, &back), &held, false, t + Duration::from_secs(1));
        assert_eq!(chosen(&r), None);
        assert_eq!(r.book.get(CCM).unwrap().held_down.len(), 1);

        // fm restored: taken at once (nothing else), then agent-3 recovers: hold-down.
        let r = e.recompute(&copy(5, &lost), &no, false, t + Duration::from_secs(2));
        assert_eq!(chosen(&r), Some("fm"));
        let r = e.recompute(&copy(6, &all), &no, false, t + Duration::from_secs(3));
        assert_eq!(chosen(&r), Some("fm"));
        assert_eq!(r.next_wakeup, Some(t + Duration::from_secs(8)));
        let cands = &r.book.get(CCM).unwrap().full.candidates;
        assert_eq!(cands[0].reason, REASON_IN_HOLD_DOWN);
        let r = e.recompute(&copy(6, &all), &no, false, t + Duration::from_secs(8));
        assert_eq!(chosen(&r), Some("agent-3"));
        assert_eq!(r.events[0].reason, "reverted after hold-down");
        assert_eq!(r.book.total_changes, 7);
    }

    #[test]
    fn no_topology_or_unknown_host_is_a_problem_not_a_panic() {
        let t0 = Instant::now();
        let no = |_: &str, _: &str| false;
        let mut e = RouteEngine::new(HostName::new("stranger").unwrap(), []);
        let r = e.recompute(&RegistryCopy::default(), &no, true, t0);
        assert_eq!(r.book.problem, Some(BookProblem::NoCopy));
        assert!(r.book.routes.is_empty());
        let mut e2 = RouteEngine::new(
            HostName::new("stranger").unwrap(),
            [PackageType::new(CCM).unwrap()],
        );
        let r2 = e2.recompute(&RegistryCopy::default(), &no, true, t0);
        let ccm = r2.book.get(CCM).unwrap();
        assert!(ccm.chosen.is_none() && ccm.reason.contains("no registry copy"));
        let r = e.recompute(&copy(1, &[("fm", Running, true)]), &no, true, t0);
        assert_eq!(
            r.book.problem,
            Some(BookProblem::UnknownHost("stranger".into()))
        );
    }

    #[test]
    fn a_live_agent_counts_its_own_host_alive_whatever_the_copy_says() {
        let t0 = Instant::now();
        let no = |_: &str, _: &str| false;
        let mut e = RouteEngine::new(HostName::new("agent-3").unwrap(), []);
        // The copy says agent-3 (this host) is not alive, e.g. while its session is re-opened.
        let own_dead = [
            ("agent-3", Running, false),
            ("agent-1", Running, true),
            ("fm", Running, true),
        ];
        let c = copy(1, &own_dead);
        let r = e.recompute(&c, &no, true, t0);
        assert_eq!(chosen(&r), Some("agent-3"));
        let route = r.book.get(CCM).unwrap();
        let me = &route.full.candidates[0];
        assert_eq!(
            (
                me.host.as_str(),
                me.tier.as_str(),
                me.eligible,
                me.reason.as_str()
            ),
            ("agent-3", "self", true, "")
        );
        let order: Vec<&str> = route.order.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(order, ["agent-3", "agent-1", "fm"]);
        // The copy itself is untouched.
        assert!(!c.snapshot.hosts["agent-3"].alive);

        // Other hosts not alive are still skipped; its own package's status still counts.
        let r = e.recompute(
            &copy(
                2,
                &[("agent-3", Running, false), ("agent-1", Running, false)],
            ),
            &no,
            false,
            t0,
        );
        assert_eq!(r.book.get(CCM).unwrap().route, ["agent-3"]);
        let r = e.recompute(
            &copy(
                3,
                &[("agent-3", Draining, false), ("agent-1", Running, true)],
            ),
            &no,
            false,
            t0,
        );
        assert_eq!(chosen(&r), Some("agent-1"));
    }

    #[test]
    fn own_host_alive_copies_only_when_needed() {
        let me = HostName::new("agent-3").unwrap();
        let alive = copy(1, &[("agent-3", Running, true), ("fm", Running, false)]);
        assert!(matches!(
            own_host_alive(&alive.snapshot, &me),
            Cow::Borrowed(_)
        ));
        let absent = copy(1, &[("fm", Running, false)]);
        assert!(matches!(
            own_host_alive(&absent.snapshot, &me),
            Cow::Borrowed(_)
        ));
        let dead = copy(1, &[("agent-3", Running, false), ("fm", Running, false)]);
        let s = own_host_alive(&dead.snapshot, &me);
        assert!(matches!(s, Cow::Owned(_)));
        assert!(s.hosts["agent-3"].alive && !s.hosts["fm"].alive);
    }

    #[test]
    fn always_types_are_listed_even_without_managers() {
        let t0 = Instant::now();
        let no = |_: &str, _: &str| false;
        let mut e = RouteEngine::new(
            HostName::new("fm").unwrap(),
            [PackageType::new("registry-manager").unwrap()],
        );
        let r = e.recompute(&copy(1, &[("fm", Running, true)]), &no, false, t0);
        assert!(r.book.get("registry-manager").unwrap().chosen.is_none());
        assert_eq!(chosen(&r), Some("fm"));
        assert_eq!(r.book.get(CCM).unwrap().full.candidates[0].tier, "self");
        let b = &r.book.get(CCM).unwrap().brief;
        assert_eq!(
            (b.host.as_str(), b.chosen.as_deref(), b.endpoint.as_deref()),
            ("", Some("fm"), Some("fm:7001"))
        );
    }
}
