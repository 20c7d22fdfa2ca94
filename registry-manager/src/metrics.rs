//! The manager's metrics, in the Prometheus text format (served on the HTTP port, see
//! `crate::http`).
//!
//! Each manager owns its own [`prometheus::Registry`] (no process-wide recorder), so several
//! managers started in one process (tests, benchmarks) each count their own events. Counters
//! are pushed where the events happen (the proposer's acknowledgement, the expiry task, the
//! watchdog); gauges that mirror state are read from the engine when `/metrics` is scraped.

use openraft::ServerState;
use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Registry, TextEncoder};

use crate::engine::Engine;

/// The metric families of one manager.
#[derive(Debug)]
pub struct ManagerMetrics {
    registry: Registry,
    revision: IntGauge,
    sessions: IntGauge,
    watch_streams: IntGauge,
    proposals_waiting: IntGauge,
    writes: IntCounter,
    session_expiries: IntCounter,
    expiry_allowance: Gauge,
    is_leader: IntGauge,
    term: IntGauge,
    leader_changes: IntCounter,
    slots: crate::conn_limit::SlotGauges,
}

/// `metric`, registered once in `registry`.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(
        registry,
        IntGauge::new(name, help).expect("valid metric name and help"),
    )
}

fn seconds_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    registered(
        registry,
        Gauge::new(name, help).expect("valid metric name and help"),
    )
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(
        registry,
        IntCounter::new(name, help).expect("valid metric name and help"),
    )
}

impl Default for ManagerMetrics {
    fn default() -> Self {
        ManagerMetrics::new()
    }
}

impl ManagerMetrics {
    /// Every family registered, every value zero.
    pub fn new() -> ManagerMetrics {
        let r = Registry::new();
        ManagerMetrics {
            revision: gauge(
                &r,
                "fleet_registry_revision",
                "Registry revision applied by this member.",
            ),
            sessions: gauge(
                &r,
                "fleet_registry_sessions",
                "Live agent sessions known to this member.",
            ),
            watch_streams: gauge(
                &r,
                "fleet_registry_watch_streams",
                "Open watch streams of agents served by this member.",
            ),
            proposals_waiting: gauge(
                &r,
                "fleet_registry_proposals_waiting",
                "Writes received by this member and waiting for its writer (they go into the next raft entry together, at one revision).",
            ),
            writes: counter(
                &r,
                "fleet_registry_writes_total",
                "Writes (session opened, status report, topology, operator action) acknowledged by this member to its callers, once durable on a majority.",
            ),
            session_expiries: counter(
                &r,
                "fleet_registry_session_expiries_total",
                "Sessions this member lapsed as the group's leader (no heartbeat for longer than session_ttl).",
            ),
            expiry_allowance: seconds_gauge(
                &r,
                "fleet_registry_session_ttl_allowance_seconds",
                "How much longer than session_ttl a session must now be silent to lapse: how late this member's own expiry ticks ran over the last one to two TTLs (a busy member reads heartbeats late by as much).",
            ),
            is_leader: gauge(
                &r,
                "fleet_registry_ha_is_leader",
                "1 while this member leads the group, else 0.",
            ),
            term: gauge(
                &r,
                "fleet_registry_ha_term",
                "The group's raft term as this member knows it.",
            ),
            leader_changes: counter(
                &r,
                "fleet_registry_ha_leader_changes_total",
                "Times this member saw the group's leader change (the first leader it learns of included).",
            ),
            slots: crate::conn_limit::SlotGauges {
                open: gauge(
                    &r,
                    "fleet_registry_connections",
                    "Client connections the gRPC port holds now (agents, operators, other members).",
                ),
                max: gauge(
                    &r,
                    "fleet_registry_connections_max",
                    "The most client connections the gRPC port holds: the limit of open descriptors less a reserve for the store and the other members. Past it, a new connection is closed at once (its client tries another member).",
                ),
                refused: registered(
                    &r,
                    IntCounterVec::new(
                        prometheus::Opts::new(
                            "fleet_registry_connections_refused_total",
                            "Client connections closed at once: reason=\"descriptors\" (the port held fleet_registry_connections_max), reason=\"per_client\" (the address held its share).",
                        ),
                        &["reason"],
                    )
                    .expect("valid metric name and help"),
                ),
            },
            registry: r,
        }
    }

    /// The gauges of the gRPC port's connection slots.
    pub(crate) fn slot_gauges(&self) -> crate::conn_limit::SlotGauges {
        self.slots.clone()
    }

    /// A write acknowledged to its caller.
    pub(crate) fn write_acknowledged(&self) {
        self.writes.inc();
    }

    /// A session lapsed by this member (as leader).
    pub(crate) fn session_expired(&self) {
        self.session_expiries.inc();
    }

    /// The expiry task's current allowance beyond the TTL.
    pub(crate) fn expiry_allowance(&self, allowance: std::time::Duration) {
        self.expiry_allowance.set(allowance.as_secs_f64());
    }

    /// The group's leader changed, as this member sees it.
    pub(crate) fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// Reads the gauges from `engine`, then renders every family in the Prometheus text format.
    pub async fn render(&self, engine: &Engine) -> String {
        let revision = engine.state().await.revision().0;
        self.revision.set(clamp(revision));
        self.sessions.set(clamp(engine.sessions().len() as u64));
        self.watch_streams
            .set(clamp(engine.hub().watchers() as u64));
        self.proposals_waiting
            .set(clamp(engine.proposals_waiting() as u64));
        let m = engine.metrics();
        self.is_leader
            .set(i64::from(m.state == ServerState::Leader));
        self.term.set(clamp(m.current_term));
        self.encode()
    }

    fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_its_help_line_and_counters_count() {
        let m = ManagerMetrics::new();
        m.write_acknowledged();
        m.write_acknowledged();
        m.session_expired();
        m.leader_changed();
        let text = m.encode();
        for family in [
            "fleet_registry_revision",
            "fleet_registry_sessions",
            "fleet_registry_watch_streams",
            "fleet_registry_writes_total",
            "fleet_registry_session_expiries_total",
            "fleet_registry_ha_is_leader",
            "fleet_registry_ha_term",
            "fleet_registry_ha_leader_changes_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}:\n{text}"
            );
        }
        assert!(text.contains("\nfleet_registry_writes_total 2\n"), "{text}");
        assert!(
            text.contains("\nfleet_registry_session_expiries_total 1\n"),
            "{text}"
        );
        // Two instances do not share numbers.
        assert!(ManagerMetrics::new()
            .encode()
            .contains("\nfleet_registry_writes_total 0\n"));
    }
}
