//! Which status reports the session sends, decided from what this host's checks see, what the
//! registry copy holds for this host's packages and what was reported when. Pure function.
//!
//! - A status that differs from the last one reported is reported at once.
//! - A status the registry copy contradicts (the copy holds another agent-reportable status —
//!   `starting`, `running`, `failing`, `stopped` — than the local check) is reported again, at
//!   most once per [`REREPORT_EVERY`] per package, until the registry agrees. This mends a
//!   report lost or misapplied, or a false status reported by someone else.
//! - An operator override (`draining`, `withdrawn`) is never a contradiction: the registry
//!   shows the effective status (override applied) and the wire has no other, so the agent's
//!   report behind it cannot be seen.
//! - `starting` is never reported (it only travels in `OpenSession`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use topology::{PackageStatus, PackageType};

/// Shortest time between two reports of the same status of one package the registry copy
/// contradicts.
pub const REREPORT_EVERY: Duration = Duration::from_secs(1);

/// The last report of one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastReport {
    /// What the registry was told (or, after a restart, what its copy held).
    pub status: PackageStatus,
    /// When it was told; `None`: not by this process (taken from the copy after a restart).
    pub at: Option<Instant>,
}

/// Why a report is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportReason {
    /// The local status changed since the last report.
    Changed,
    /// The registry copy holds `registry` while the local check says otherwise.
    Contradicted {
        /// The status the registry copy holds.
        registry: PackageStatus,
    },
}

/// One report to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The package.
    pub package_type: PackageType,
    /// The status to report.
    pub status: PackageStatus,
    /// Why.
    pub reason: ReportReason,
}

/// The result of [`plan_reports`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportPlan {
    /// Reports to send now, in package order.
    pub reports: Vec<Report>,
    /// Packages whose status the registry copy contradicts now (whether a report is due or not).
    pub contradicted: Vec<PackageType>,
    /// When to decide again even if nothing changes (a contradicted report waiting out
    /// [`REREPORT_EVERY`]).
    pub recheck_at: Option<Instant>,
}

/// True for the statuses an agent reports (`starting`, `running`, `failing`, `stopped`); false
/// for the operator overrides (`draining`, `withdrawn`).
pub fn is_agent_status(s: PackageStatus) -> bool {
    matches!(
        s,
        PackageStatus::Starting
            | PackageStatus::Running
            | PackageStatus::Failing
            | PackageStatus::Stopped
    )
}

/// True when the registry holding `registry` contradicts the local status `own`.
pub fn contradicts(registry: PackageStatus, own: PackageStatus) -> bool {
    is_agent_status(registry) && own != PackageStatus::Starting && registry != own
}

/// Decides the reports to send at `now`.
///
/// `own`: the local checks' statuses; `registry`: the statuses the registry copy holds for
/// this host's packages (a package missing there is not compared); `last`: the last report of
/// each package; `every`: the shortest time between two reports of the same contradicted
/// status ([`REREPORT_EVERY`]).
pub fn plan_reports(
    own: &BTreeMap<PackageType, PackageStatus>,
    registry: &BTreeMap<PackageType, PackageStatus>,
    last: &BTreeMap<PackageType, LastReport>,
    now: Instant,
    every: Duration,
) -> ReportPlan {
    let mut plan = ReportPlan::default();
    for (t, &status) in own {
        if status == PackageStatus::Starting {
            continue;
        }
        let last = last.get(t);
        if last.map(|l| l.status) != Some(status) {
            plan.reports.push(Report {
                package_type: t.clone(),
                status,
                reason: ReportReason::Changed,
            });
            continue;
        }
        let Some(&held) = registry.get(t) else {
            continue;
        };
        if !contradicts(held, status) {
            continue;
        }
        plan.contradicted.push(t.clone());
        let due = last.and_then(|l| l.at).map(|at| at + every);
        match due {
            Some(due) if due > now => {
                plan.recheck_at = Some(plan.recheck_at.map_or(due, |r| r.min(due)));
            }
            _ => plan.reports.push(Report {
                package_type: t.clone(),
                status,
                reason: ReportReason::Contradicted { registry: held },
            }),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use PackageStatus::{Draining, Failing, Running, Starting, Stopped, Withdrawn};

    fn t(name: &str) -> PackageType {
        PackageType::new(name).unwrap()
    }

    fn map<V: Copy>(v: &[(&str, V)]) -> BTreeMap<PackageType, V> {
        v.iter().map(|(n, s)| (t(n), *s)).collect()
    }

    fn told(status: PackageStatus, at: Option<Instant>) -> LastReport {
        LastReport { status, at }
    }

    const EVERY: Duration = REREPORT_EVERY;

    #[test]
    fn a_change_is_reported_at_once_and_starting_never() {
        let now = Instant::now();
        let own = map(&[("a", Running), ("b", Starting), ("c", Failing)]);
        let last = map(&[("a", told(Failing, Some(now)))]);
        let p = plan_reports(&own, &BTreeMap::new(), &last, now, EVERY);
        let sent: Vec<_> = p
            .reports
            .iter()
            .map(|r| (r.package_type.as_str(), r.status, r.reason))
            .collect();
        assert_eq!(
            sent,
            [
                ("a", Running, ReportReason::Changed),
                ("c", Failing, ReportReason::Changed)
            ]
        );
        assert_eq!(p.recheck_at, None);
    }

    #[test]
    fn agreement_sends_nothing() {
        let now = Instant::now();
        let own = map(&[("a", Running), ("b", Stopped)]);
        let last = map(&[("a", told(Running, None)), ("b", told(Stopped, Some(now)))]);
        let registry = map(&[("a", Running), ("b", Stopped)]);
        assert_eq!(
            plan_reports(&own, &registry, &last, now, EVERY),
            ReportPlan::default()
        );
    }

    #[test]
    fn a_contradicted_status_is_reported_again_at_most_once_per_period_until_agreed() {
        let t0 = Instant::now();
        let own = map(&[("a", Running)]);
        let registry = map(&[("a", Failing)]);
        // Reported just now: the copy may lag; wait out the period.
        let last = map(&[("a", told(Running, Some(t0)))]);
        let p = plan_reports(&own, &registry, &last, t0, EVERY);
        assert!(p.reports.is_empty());
        assert_eq!(p.contradicted, [t("a")]);
        assert_eq!(p.recheck_at, Some(t0 + EVERY));
        let p = plan_reports(&own, &registry, &last, t0 + EVERY / 2, EVERY);
        assert!(p.reports.is_empty());
        // Still contradicted a period later: reported again.
        let p = plan_reports(&own, &registry, &last, t0 + EVERY, EVERY);
        assert_eq!(
            p.reports,
            [Report {
                package_type: t("a"),
                status: Running,
                reason: ReportReason::Contradicted { registry: Failing }
            }]
        );
        assert_eq!(p.recheck_at, None);
        // Once sent, the next one waits a period again.
        let last = map(&[("a", told(Running, Some(t0 + EVERY)))]);
        let p = plan_reports(&own, &registry, &last, t0 + EVERY, EVERY);
        assert!(p.reports.is_empty());
        assert_eq!(p.recheck_at, Some(t0 + 2 * EVERY));
        // The registry agrees: nothing more.
        let p = plan_reports(&own, &map(&[("a", Running)]), &last, t0 + 5 * EVERY, EVERY);
        assert_eq!(p, ReportPlan::default());
    }

    #[test]
    fn a_status_taken_from_the_copy_after_a_restart_is_corrected_at_once() {
        let now = Instant::now();
        // The copy held `failing` (someone reported it falsely, or a report was lost), and
        // `reported` was seeded from it: that is a change, sent at once.
        let own = map(&[("a", Running)]);
        let registry = map(&[("a", Failing)]);
        let last = map(&[("a", told(Failing, None))]);
        let p = plan_reports(&own, &registry, &last, now, EVERY);
        assert_eq!(p.reports[0].reason, ReportReason::Changed);
        // Seeded with the right status but the copy says otherwise: due at once too.
        let last = map(&[("a", told(Running, None))]);
        let p = plan_reports(&own, &registry, &last, now, EVERY);
        assert_eq!(
            p.reports[0].reason,
            ReportReason::Contradicted { registry: Failing }
        );
    }

    #[test]
    fn operator_overrides_and_unknown_packages_are_not_contradictions() {
        let now = Instant::now();
        let own = map(&[("a", Running), ("b", Failing), ("c", Running)]);
        let last = map(&[
            ("a", told(Running, None)),
            ("b", told(Failing, None)),
            ("c", told(Running, None)),
        ]);
        let registry = map(&[("a", Draining), ("b", Withdrawn)]);
        assert_eq!(
            plan_reports(&own, &registry, &last, now, EVERY),
            ReportPlan::default()
        );
    }

    #[test]
    fn a_starting_status_in_the_registry_is_a_contradiction_but_not_a_starting_check() {
        let now = Instant::now();
        assert!(contradicts(Starting, Running));
        assert!(contradicts(Stopped, Failing));
        assert!(!contradicts(Running, Starting));
        assert!(!contradicts(Draining, Failing));
        assert!(!contradicts(Withdrawn, Running));
        let own = map(&[("a", Running), ("b", Starting)]);
        let last = map(&[("a", told(Running, None)), ("b", told(Starting, None))]);
        let registry = map(&[("a", Starting), ("b", Running)]);
        let p = plan_reports(&own, &registry, &last, now, EVERY);
        assert_eq!(p.reports.len(), 1);
        assert_eq!(p.reports[0].package_type, t("a"));
    }

    #[test]
    fn the_recheck_is_the_earliest_due_package() {
        let t0 = Instant::now();
        let own = map(&[("a", Running), ("b", Running)]);
        let registry = map(&[("a", Stopped), ("b", Stopped)]);
        let last = map(&[
            ("a", told(Running, Some(t0 + Duration::from_millis(300)))),
            ("b", told(Running, Some(t0 + Duration::from_millis(100)))),
        ]);
        let p = plan_reports(
            &own,
            &registry,
            &last,
            t0 + Duration::from_millis(400),
            EVERY,
        );
        assert!(p.reports.is_empty());
        assert_eq!(p.recheck_at, Some(t0 + Duration::from_millis(1100)));
        assert_eq!(p.contradicted, [t("a"), t("b")]);
    }
}
