//! The agent's metrics, in the Prometheus text format (served on the HTTP port, see
//! [`crate::http`]).
//!
//! Each agent owns its own [`prometheus::Registry`] (no process-wide recorder), so several
//! agents started in one process (tests) each count their own events. Counters are pushed where
//! the events happen (the routing engine, the forwarder, the prober); the gauges that mirror the
//! route book (revision, staleness, chosen managers) are set from it when `/metrics` is scraped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::time::Instant;
use topology::PackageType;

use crate::route_book::RouteBook;
use crate::route_engine::RouteEvent;

/// `result` of a forwarded connection: relayed to the chosen manager.
pub const FORWARD_OK: &str = "ok";
/// `result` of a forwarded connection: relayed to another manager than the chosen one (the
/// chosen one refused, timed out or closed before any byte).
pub const FORWARD_FAILOVER: &str = "failover";
/// `result` of a forwarded connection: no manager reachable; the client's connection was closed.
pub const FORWARD_NO_MANAGER: &str = "no_manager";

/// Buckets of `fleet_agent_failover_seconds`.
const FAILOVER_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The metric families of one agent.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    revision: IntGauge,
    stale: IntGauge,
    route_changes: IntCounterVec,
    chosen: IntGaugeVec,
    forward_connections: IntCounterVec,
    failover: Histogram,
    probe_failures: IntCounter,
    /// Types whose chosen manager turned ineligible, and when, until a new one is chosen.
    left_at: Mutex<HashMap<PackageType, Instant>>,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("each metric registered once");
    c
}

impl AgentMetrics {
    /// Every family registered; `forward_types` (the types with a forward port) start with
    /// every `result` of `fleet_agent_forward_connections_total` at 0.
    pub fn new<'a>(forward_types: impl IntoIterator<Item = &'a PackageType>) -> AgentMetrics {
        let r = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let m = AgentMetrics {
            revision: register(
                &r,
                IntGauge::with_opts(opts(
                    "fleet_agent_registry_revision",
                    "Revision of this agent's registry copy.",
                ))
                .expect("valid metric"),
            ),
            stale: register(
                &r,
                IntGauge::with_opts(opts(
                    "fleet_agent_registry_stale",
                    "1 while this agent has no live registry session (it answers from its copy), else 0.",
                ))
                .expect("valid metric"),
            ),
            route_changes: register(
                &r,
                IntCounterVec::new(
                    opts(
                        "fleet_agent_route_changes_total",
                        "Changes of the chosen manager of a type (the first choice included).",
                    ),
                    &["type"],
                )
                .expect("valid metric"),
            ),
            chosen: register(
                &r,
                IntGaugeVec::new(
                    opts(
                        "fleet_agent_chosen",
                        "1 for the manager this agent routes a type to now, with its tier (self, domain, ancestor or branch); a type with no chosen manager has no series.",
                    ),
                    &["type", "manager", "tier"],
                )
                .expect("valid metric"),
            ),
            forward_connections: register(
                &r,
                IntCounterVec::new(
                    opts(
                        "fleet_agent_forward_connections_total",
                        "Connections accepted on a forward port, by result: ok (relayed to the chosen manager), failover (relayed to another manager of the route), no_manager (none reachable; closed).",
                    ),
                    &["type", "result"],
                )
                .expect("valid metric"),
            ),
            failover: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "fleet_agent_failover_seconds",
                        "Time from the chosen manager of a type turning ineligible in this agent's view to a new manager being chosen.",
                    )
                    .buckets(FAILOVER_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            probe_failures: register(
                &r,
                IntCounter::with_opts(opts(
                    "fleet_agent_probe_failures_total",
                    "Failed health probes of managers (connect or gRPC health check not passing within health.timeout).",
                ))
                .expect("valid metric"),
            ),
            left_at: Mutex::new(HashMap::new()),
            registry: r,
        };
        for t in forward_types {
            for result in [FORWARD_OK, FORWARD_FAILOVER, FORWARD_NO_MANAGER] {
                m.forward_connections
                    .with_label_values(&[t.as_str(), result]);
            }
        }
        m
    }

    /// The route changes of one recomputation. `seen` is when the recomputation started (when
    /// the engine saw what changed); `book` is its result.
    pub fn route_events(&self, book: &RouteBook, events: &[RouteEvent], seen: Instant) {
        if events.is_empty() {
            return;
        }
        let mut left_at = self.left_at.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            let t = e.package_type.as_str();
            self.route_changes.with_label_values(&[t]).inc();
            // Left because it is no longer eligible or held down: anything but a revert to a
            // nearer manager (one before it in the route).
            let left = e.from.as_ref().is_some_and(|from| {
                let route = book.get(t).map(|r| &r.route);
                let pos = |h| route.and_then(|r| r.iter().position(|x| x == h));
                match (pos(from), e.to.as_ref().and_then(pos)) {
                    (Some(f), Some(to)) => to > f,
                    _ => true,
                }
            });
            if left {
                left_at.entry(e.package_type.clone()).or_insert(seen);
            }
            if e.to.is_some() {
                if let Some(since) = left_at.remove(&e.package_type) {
                    self.failover.observe(since.elapsed().as_secs_f64());
                }
            }
        }
    }

    /// One connection accepted on the forward port of `package_type`, with its `result`
    /// ([`FORWARD_OK`], [`FORWARD_FAILOVER`], [`FORWARD_NO_MANAGER`]).
    pub fn forwarded(&self, package_type: &PackageType, result: &str) {
        self.forward_connections
            .with_label_values(&[package_type.as_str(), result])
            .inc();
    }

    /// One failed health probe.
    pub fn probe_failed(&self) {
        self.probe_failures.inc();
    }

    /// Sets the gauges from `book`, then renders every family in the Prometheus text format.
    pub fn render(&self, book: &RouteBook) -> String {
        self.revision
            .set(i64::try_from(book.revision).unwrap_or(i64::MAX));
        self.stale.set(i64::from(book.stale));
        // Only the current choices: a manager no longer chosen loses its series.
        self.chosen.reset();
        for (t, route) in &book.routes {
            let Some(chosen) = &route.chosen else {
                continue;
            };
            let tier = route
                .full
                .candidates
                .iter()
                .find(|c| c.host == chosen.as_str())
                .map(|c| c.tier.as_str())
                .filter(|tier| !tier.is_empty())
                .unwrap_or("unknown");
            self.chosen
                .with_label_values(&[t.as_str(), chosen.as_str(), tier])
                .set(1);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// Observations of `fleet_agent_failover_seconds` so far (for tests).
    pub fn failovers(&self) -> (u64, Duration) {
        (
            self.failover.get_sample_count(),
            Duration::from_secs_f64(self.failover.get_sample_sum()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_book::TypeRoute;
    use proto::v1 as pb;
    use std::sync::Arc;
    use topology::HostName;

    fn book(t: &str, chosen: Option<&str>, route: &[&str]) -> RouteBook {
        let t = PackageType::new(t).unwrap();
        let mut b = RouteBook::default();
        let r = TypeRoute {
            package_type: t.clone(),
            chosen: chosen.map(|h| HostName::new(h).unwrap()),
            endpoint: None,
            route: route.iter().map(|h| HostName::new(*h).unwrap()).collect(),
            order: Vec::new(),
            held_down: Vec::new(),
            reason: String::new(),
            changes: 0,
            full: pb::RouteExplanation {
                candidates: route
                    .iter()
                    .map(|h| pb::RouteCandidate {
                        host: (*h).into(),
                        tier: "domain".into(),
                        eligible: true,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            brief: pb::RouteExplanation::default(),
        };
        b.routes.insert(t, Arc::new(r));
        b
    }

    fn event(t: &str, from: Option<&str>, to: Option<&str>) -> RouteEvent {
        RouteEvent {
            package_type: PackageType::new(t).unwrap(),
            from: from.map(|h| HostName::new(h).unwrap()),
            to: to.map(|h| HostName::new(h).unwrap()),
            reason: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failover_is_timed_from_leaving_to_the_next_choice_and_chosen_series_move() {
        let ccm = PackageType::new("ccm").unwrap();
        let m = AgentMetrics::new([&ccm]);
        let t0 = Instant::now();
        m.route_events(
            &book("ccm", Some("a"), &["a", "b"]),
            &[event("ccm", None, Some("a"))],
            t0,
        );
        assert_eq!(m.failovers().0, 0, "the first choice is no failover");
        let text = m.render(&book("ccm", Some("a"), &["a", "b"]));
        assert!(
            text.contains("fleet_agent_chosen{manager=\"a\",tier=\"domain\",type=\"ccm\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "fleet_agent_forward_connections_total{result=\"no_manager\",type=\"ccm\"} 0"
            ),
            "{text}"
        );

        // `a` turns ineligible with nothing else eligible; `b` comes 2 s later.
        let t1 = Instant::now();
        m.route_events(
            &book("ccm", None, &[]),
            &[event("ccm", Some("a"), None)],
            t1,
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        m.route_events(
            &book("ccm", Some("b"), &["b"]),
            &[event("ccm", None, Some("b"))],
            Instant::now(),
        );
        let (count, sum) = m.failovers();
        assert_eq!(count, 1);
        assert_eq!(sum, Duration::from_secs(2));

        // A revert to a nearer manager (the one left is still eligible) is no failover.
        m.route_events(
            &book("ccm", Some("a"), &["a", "b"]),
            &[event("ccm", Some("b"), Some("a"))],
            Instant::now(),
        );
        assert_eq!(m.failovers().0, 1);

        let text = m.render(&book("ccm", Some("a"), &["a", "b"]));
        assert!(
            text.contains("fleet_agent_route_changes_total{type=\"ccm\"} 4"),
            "{text}"
        );
        assert!(
            !text.contains("manager=\"b\""),
            "the old choice's series is gone: {text}"
        );
    }
}
