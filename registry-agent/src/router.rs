//! The routing decision of a live agent (the routing rule (docs/routing.md) "Revert"), as a pure function of values.
//!
//! The route (eligible hosts, nearest first) comes from `topology::explain` with the agent's
//! health view already applied. What this module adds is time: a chosen manager that becomes
//! ineligible is left at once, while moving back to a nearer manager waits until it has stayed
//! eligible for `routing.revert_after`, so a flapping manager does not drag every agent with
//! it. No sockets, no clocks: `now` is an argument, and the answer says when to look again.

use std::collections::BTreeMap;
use std::fmt;

use tokio::time::Instant;
use topology::{HostName, RevertAfter};

/// Why the decision is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The current choice stays (it may be the nearest, or a nearer one is in hold-down).
    Unchanged,
    /// There was no choice and now there is one.
    Available,
    /// The chosen manager is no longer eligible: left at once.
    Left {
        /// The manager that was left.
        from: HostName,
    },
    /// A nearer manager stayed eligible for the hold-down: moved back to it.
    Reverted {
        /// The manager that was left for the nearer one.
        from: HostName,
    },
    /// No manager of the type is eligible.
    NoneEligible,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unchanged => f.write_str("unchanged"),
            Reason::Available => f.write_str("manager available"),
            Reason::Left { from } => write!(f, "{from} no longer eligible"),
            Reason::Reverted { .. } => f.write_str("reverted after hold-down"),
            Reason::NoneEligible => f.write_str("no eligible manager"),
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The manager to use now, if any.
    pub chosen: Option<HostName>,
    /// Why.
    pub reason: Reason,
    /// When a nearer manager's hold-down ends: decide again then, even if nothing else changes.
    pub next_wakeup: Option<Instant>,
}

/// Since when each currently eligible host has been eligible without interruption.
pub type EligibleSince = BTreeMap<HostName, Instant>;

/// Brings `since` in line with `route`: hosts that left the route are forgotten (their clock
/// restarts when they come back), new hosts start counting at `now`.
pub fn track_eligibility(since: &mut EligibleSince, route: &[HostName], now: Instant) {
    since.retain(|h, _| route.contains(h));
    for h in route {
        since.entry(h.clone()).or_insert(now);
    }
}

fn stable_at(
    host: &HostName,
    since: &EligibleSince,
    now: Instant,
    revert_after: RevertAfter,
) -> Option<Instant> {
    match revert_after {
        RevertAfter::Never => None,
        RevertAfter::After(d) => Some(since.get(host).copied().unwrap_or(now) + d),
    }
}

fn is_stable(
    host: &HostName,
    since: &EligibleSince,
    now: Instant,
    revert_after: RevertAfter,
) -> bool {
    stable_at(host, since, now, revert_after).is_some_and(|t| t <= now)
}

/// Earliest end of hold-down among the hosts nearer than position `pos`.
fn wakeup_before(
    route: &[HostName],
    pos: usize,
    since: &EligibleSince,
    now: Instant,
    revert_after: RevertAfter,
) -> Option<Instant> {
    route[..pos]
        .iter()
        .filter_map(|h| stable_at(h, since, now, revert_after))
        .filter(|t| *t > now)
        .min()
}

/// Decides which manager a live agent uses now.
///
/// - `route`: eligible hosts, nearest first (the routing rule (docs/routing.md), health view applied).
/// - `current`: the manager in use, if any.
/// - `eligible_since`: see [`track_eligibility`]; a host missing from it counts as eligible
///   since `now`.
///
/// Rules: with no current choice, or a current choice that is no longer eligible, take the
/// nearest host that has been eligible for the hold-down, else the nearest eligible one. With
/// an eligible current choice, move to the nearest host ahead of it that has been eligible for
/// the hold-down (`never`: stay; `0s`: at once), else stay.
pub fn decide(
    route: &[HostName],
    current: Option<&HostName>,
    eligible_since: &EligibleSince,
    now: Instant,
    revert_after: RevertAfter,
) -> Decision {
    if route.is_empty() {
        let reason = match current {
            Some(from) => Reason::Left { from: from.clone() },
            None => Reason::NoneEligible,
        };
        return Decision {
            chosen: None,
            reason,
            next_wakeup: None,
        };
    }
    let current_pos = current.and_then(|c| route.iter().position(|h| h == c));
    match (current, current_pos) {
        (Some(c), Some(pos)) => {
            let nearer_stable = route[..pos]
                .iter()
                .find(|h| is_stable(h, eligible_since, now, revert_after));
            match nearer_stable {
                Some(h) => {
                    let new_pos = route.iter().position(|x| x == h).unwrap_or(0);
                    Decision {
                        chosen: Some(h.clone()),
                        reason: Reason::Reverted { from: c.clone() },
                        next_wakeup: wakeup_before(
                            route,
                            new_pos,
                            eligible_since,
                            now,
                            revert_after,
                        ),
                    }
                }
                None => Decision {
                    chosen: Some(c.clone()),
                    reason: Reason::Unchanged,
                    next_wakeup: wakeup_before(route, pos, eligible_since, now, revert_after),
                },
            }
        }
        (current, _) => {
            let pos = route
                .iter()
                .position(|h| is_stable(h, eligible_since, now, revert_after))
                .unwrap_or(0);
            let reason = match current {
                Some(from) => Reason::Left { from: from.clone() },
                None => Reason::Available,
            };
            Decision {
                chosen: Some(route[pos].clone()),
                reason,
                next_wakeup: wakeup_before(route, pos, eligible_since, now, revert_after),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn h(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }
    fn route(names: &[&str]) -> Vec<HostName> {
        names.iter().map(|s| h(s)).collect()
    }
    const FIVE: RevertAfter = RevertAfter::After(Duration::from_secs(5));
    const S: Duration = Duration::from_secs(1);

    /// Drives `decide` + `track_eligibility` like the live engine does.
    struct Sim {
        current: Option<HostName>,
        since: EligibleSince,
        revert: RevertAfter,
    }
    impl Sim {
        fn new(revert: RevertAfter) -> Self {
            Sim {
                current: None,
                since: EligibleSince::new(),
                revert,
            }
        }
        fn step(&mut self, r: &[&str], now: Instant) -> Decision {
            let r = route(r);
            track_eligibility(&mut self.since, &r, now);
            let d = decide(&r, self.current.as_ref(), &self.since, now, self.revert);
            self.current = d.chosen.clone();
            d
        }
    }

    #[test]
    fn first_choice_is_the_nearest() {
        let t0 = Instant::now();
        let mut s = Sim::new(FIVE);
        let d = s.step(&["agent-3", "agent-1", "fm"], t0);
        assert_eq!(d.chosen, Some(h("agent-3")));
        assert_eq!(d.reason, Reason::Available);
        assert_eq!(d.next_wakeup, None);
    }

    #[test]
    fn empty_route_means_none() {
        let t0 = Instant::now();
        let d = decide(&[], None, &EligibleSince::new(), t0, FIVE);
        assert_eq!((d.chosen, d.reason), (None, Reason::NoneEligible));
        let d = decide(&[], Some(&h("a")), &EligibleSince::new(), t0, FIVE);
        assert_eq!((d.chosen, d.reason), (None, Reason::Left { from: h("a") }));
    }

    #[test]
    fn ineligible_manager_is_left_at_once_then_reverted_after_hold_down() {
        let t0 = Instant::now();
        let mut s = Sim::new(FIVE);
        s.step(&["agent-3", "agent-1", "fm"], t0);
        // agent-3 drained: leave at once for the next tier.
        let d = s.step(&["agent-1", "fm"], t0 + S);
        assert_eq!(d.chosen, Some(h("agent-1")));
        assert_eq!(d.reason, Reason::Left { from: h("agent-3") });
        // agent-3 back: stay on agent-1 during the hold-down, wake when it ends.
        let back = t0 + 2 * S;
        let d = s.step(&["agent-3", "agent-1", "fm"], back);
        assert_eq!(d.chosen, Some(h("agent-1")));
        assert_eq!(d.reason, Reason::Unchanged);
        assert_eq!(d.next_wakeup, Some(back + 5 * S));
        let d = s.step(&["agent-3", "agent-1", "fm"], back + 4 * S);
        assert_eq!(d.chosen, Some(h("agent-1")));
        let d = s.step(&["agent-3", "agent-1", "fm"], back + 5 * S);
        assert_eq!(d.chosen, Some(h("agent-3")));
        assert_eq!(d.reason, Reason::Reverted { from: h("agent-1") });
        assert_eq!(d.next_wakeup, None);
    }

    #[test]
    fn flapping_manager_restarts_its_hold_down_each_time() {
        let t0 = Instant::now();
        let mut s = Sim::new(FIVE);
        s.step(&["near", "far"], t0);
        let mut t = t0;
        for _ in 0..10 {
            t += S;
            assert_eq!(s.step(&["far"], t).chosen, Some(h("far")));
            t += 3 * S; // up for 3s: less than the hold-down
            assert_eq!(s.step(&["near", "far"], t).chosen, Some(h("far")));
            t += 3 * S;
            assert_eq!(
                s.step(&["near", "far"], t).chosen,
                Some(h("far")),
                "3s + 3s but interrupted"
            );
        }
        // Now it stays up: reverted exactly 5s after its last return.
        t += S;
        s.step(&["far"], t);
        let back = t + S;
        s.step(&["near", "far"], back);
        assert_eq!(
            s.step(&["near", "far"], back + 5 * S - Duration::from_millis(1))
                .chosen,
            Some(h("far"))
        );
        assert_eq!(
            s.step(&["near", "far"], back + 5 * S).chosen,
            Some(h("near"))
        );
    }

    #[test]
    fn leaving_prefers_a_stable_candidate_over_a_freshly_recovered_nearer_one() {
        let t0 = Instant::now();
        let mut s = Sim::new(FIVE);
        s.step(&["a", "b", "c"], t0);
        s.step(&["b", "c"], t0 + S); // a fails: go to b
        let t = t0 + 10 * S;
        s.step(&["a", "b", "c"], t); // a back, in hold-down
        let d = s.step(&["a", "c"], t + S); // b fails while a is still fresh: c is stable
        assert_eq!(d.chosen, Some(h("c")));
        assert_eq!(d.reason, Reason::Left { from: h("b") });
        assert_eq!(d.next_wakeup, Some(t + 5 * S));
        let d = s.step(&["a", "c"], t + 5 * S);
        assert_eq!(d.chosen, Some(h("a")));
    }

    #[test]
    fn leaving_with_nothing_stable_takes_the_nearest_eligible() {
        let t0 = Instant::now();
        let mut s = Sim::new(FIVE);
        s.step(&["b"], t0);
        let d = s.step(&["a", "c"], t0 + S); // b fails; a and c are both fresh
        assert_eq!(d.chosen, Some(h("a")));
    }

    #[test]
    fn revert_never_stays_and_zero_reverts_at_once() {
        let t0 = Instant::now();
        let mut s = Sim::new(RevertAfter::Never);
        s.step(&["a", "b"], t0);
        s.step(&["b"], t0 + S);
        let d = s.step(&["a", "b"], t0 + 2 * S);
        assert_eq!((d.chosen.clone(), d.next_wakeup), (Some(h("b")), None));
        assert_eq!(s.step(&["a", "b"], t0 + 1000 * S).chosen, Some(h("b")));
        // `never` still leaves a failed manager at once.
        assert_eq!(s.step(&["a"], t0 + 1001 * S).chosen, Some(h("a")));

        let mut s = Sim::new(RevertAfter::After(Duration::ZERO));
        s.step(&["a", "b"], t0);
        s.step(&["b"], t0 + S);
        let d = s.step(&["a", "b"], t0 + 2 * S);
        assert_eq!(d.chosen, Some(h("a")));
        assert_eq!(d.reason, Reason::Reverted { from: h("b") });
    }

    #[test]
    fn revert_goes_to_the_nearest_stable_even_past_a_fresh_one() {
        let t0 = Instant::now();
        let mut s = Sim::new(FIVE);
        s.step(&["a", "b", "c"], t0);
        s.step(&["c"], t0 + S); // a and b fail
        s.step(&["b", "c"], t0 + 2 * S); // b back
        let d = s.step(&["a", "b", "c"], t0 + 6 * S); // a back, b stable at 7s
        assert_eq!(d.chosen, Some(h("c")));
        assert_eq!(d.next_wakeup, Some(t0 + 7 * S));
        let d = s.step(&["a", "b", "c"], t0 + 7 * S);
        assert_eq!(d.chosen, Some(h("b")));
        assert_eq!(d.next_wakeup, Some(t0 + 11 * S));
        let d = s.step(&["a", "b", "c"], t0 + 11 * S);
        assert_eq!(d.chosen, Some(h("a")));
    }

    #[test]
    fn a_new_farther_host_changes_nothing() {
        let t0 = Instant::now();
        let mut s = Sim::new(FIVE);
        s.step(&["a"], t0);
        let d = s.step(&["a", "z"], t0 + S);
        assert_eq!(
            (d.chosen, d.reason, d.next_wakeup),
            (Some(h("a")), Reason::Unchanged, None)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn paused_clock_drives_the_hold_down() {
        let mut s = Sim::new(FIVE);
        s.step(&["a", "b"], Instant::now());
        s.step(&["b"], Instant::now());
        let d = s.step(&["a", "b"], Instant::now());
        let wake = d.next_wakeup.expect("hold-down wakeup");
        tokio::time::sleep_until(wake).await;
        assert_eq!(s.step(&["a", "b"], Instant::now()).chosen, Some(h("a")));
    }
}
