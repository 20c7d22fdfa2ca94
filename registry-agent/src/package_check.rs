//! The status a host's agent reports for one of its packages (the registry snapshot format (docs/topology.md): `starting`, `running`,
//! `failing`, `stopped`), derived from consecutive local check results. Pure value.
//!
//! A package starts `starting`. `rise` consecutive successes make it `running`; `fall`
//! consecutive failures make it `failing` if it has run since the agent started, or `stopped`
//! if it never came up (nothing is listening: it is not running rather than misbehaving).
//!
//! A connection refused by this host's own kernel ([`CheckOutcome::Refused`]) is a certain sign
//! that nothing listens any more: it acts at once, as if `fall` failures had been seen. Every
//! other failure (timeout, reset, gRPC `NOT_SERVING`) counts toward `fall`.

use topology::PackageStatus;

/// The result of one local check, as the fall/rise counter weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The check passed: counts toward `rise`.
    Passed,
    /// The check failed in a way that may be transient (timeout, reset, gRPC `NOT_SERVING`, a
    /// refusal from another host): counts toward `fall`.
    Failed,
    /// The connection was refused by this host's own kernel (`ECONNREFUSED` to an address of
    /// this host): the process is gone. Acted on at the first one.
    Refused,
}

impl CheckOutcome {
    /// True for [`CheckOutcome::Passed`].
    pub fn passed(self) -> bool {
        self == CheckOutcome::Passed
    }
}

impl From<bool> for CheckOutcome {
    /// `true`: passed; `false`: failed (counts toward `fall`).
    fn from(ok: bool) -> Self {
        if ok {
            CheckOutcome::Passed
        } else {
            CheckOutcome::Failed
        }
    }
}

/// Check thresholds and the current reported status of one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageCheck {
    fall: u32,
    rise: u32,
    status: PackageStatus,
    ok_streak: u32,
    fail_streak: u32,
    has_run: bool,
}

impl PackageCheck {
    /// A package not checked yet: `starting`.
    pub fn new(fall: u32, rise: u32) -> Self {
        PackageCheck {
            fall: fall.max(1),
            rise: rise.max(1),
            status: PackageStatus::Starting,
            ok_streak: 0,
            fail_streak: 0,
            has_run: false,
        }
    }

    /// The status to report now.
    pub fn status(&self) -> PackageStatus {
        self.status
    }

    /// Records one check result (a `bool` is passed/failed); returns the new status when it
    /// changes. A [`CheckOutcome::Refused`] completes the fall at once.
    pub fn record(&mut self, outcome: impl Into<CheckOutcome>) -> Option<PackageStatus> {
        match outcome.into() {
            CheckOutcome::Passed => {
                self.ok_streak = self.ok_streak.saturating_add(1);
                self.fail_streak = 0;
            }
            CheckOutcome::Failed => {
                self.fail_streak = self.fail_streak.saturating_add(1);
                self.ok_streak = 0;
            }
            CheckOutcome::Refused => {
                self.fail_streak = self.fail_streak.saturating_add(1).max(self.fall);
                self.ok_streak = 0;
            }
        }
        let next = if self.ok_streak >= self.rise {
            PackageStatus::Running
        } else if self.fail_streak >= self.fall {
            if self.has_run {
                PackageStatus::Failing
            } else {
                PackageStatus::Stopped
            }
        } else {
            self.status
        };
        if next == PackageStatus::Running {
            self.has_run = true;
        }
        if next != self.status {
            self.status = next;
            Some(next)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_then_running_after_rise() {
        let mut c = PackageCheck::new(3, 2);
        assert_eq!(c.status(), PackageStatus::Starting);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(PackageStatus::Running));
        assert_eq!(c.record(true), None);
    }

    #[test]
    fn never_up_is_stopped_and_once_up_is_failing() {
        let mut c = PackageCheck::new(3, 2);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(PackageStatus::Stopped));
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(PackageStatus::Running));
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(PackageStatus::Failing));
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(PackageStatus::Running));
    }

    #[test]
    fn isolated_failures_do_not_flip_a_running_package() {
        let mut c = PackageCheck::new(3, 2);
        c.record(true);
        c.record(true);
        for _ in 0..20 {
            assert_eq!(c.record(false), None);
            assert_eq!(c.record(false), None);
            assert_eq!(c.record(true), None);
        }
        assert_eq!(c.status(), PackageStatus::Running);
    }

    use CheckOutcome::{Failed, Passed, Refused};

    #[test]
    fn the_first_refusal_of_a_running_package_makes_it_failing() {
        let mut c = PackageCheck::new(3, 2);
        c.record(Passed);
        assert_eq!(c.record(Passed), Some(PackageStatus::Running));
        assert_eq!(c.record(Refused), Some(PackageStatus::Failing));
        assert_eq!(c.record(Refused), None);
        // Coming back still takes `rise` passes.
        assert_eq!(c.record(Passed), None);
        assert_eq!(c.record(Passed), Some(PackageStatus::Running));
    }

    #[test]
    fn the_first_refusal_of_a_package_never_up_makes_it_stopped() {
        let mut c = PackageCheck::new(1000, 2);
        assert_eq!(c.record(Refused), Some(PackageStatus::Stopped));
    }

    #[test]
    fn failures_other_than_refusals_still_need_fall_in_a_row() {
        let mut c = PackageCheck::new(3, 2);
        c.record(Passed);
        c.record(Passed);
        assert_eq!(c.record(Failed), None);
        assert_eq!(c.record(Failed), None);
        assert_eq!(c.record(Passed), None, "a pass resets the fall");
        assert_eq!(c.record(Failed), None);
        assert_eq!(c.record(Failed), None);
        assert_eq!(c.record(Failed), Some(PackageStatus::Failing));
    }

    #[test]
    fn a_refusal_after_failures_acts_at_once_and_one_pass_does_not_undo_it() {
        let mut c = PackageCheck::new(5, 2);
        c.record(Passed);
        c.record(Passed);
        assert_eq!(c.record(Failed), None);
        assert_eq!(c.record(Refused), Some(PackageStatus::Failing));
        assert_eq!(c.record(Passed), None);
        assert_eq!(c.record(Failed), None);
        assert_eq!(c.status(), PackageStatus::Failing);
    }

    #[test]
    fn a_refusal_with_fall_1_is_like_a_failure() {
        let (mut a, mut b) = (PackageCheck::new(1, 1), PackageCheck::new(1, 1));
        for outcome in [Passed, Refused, Passed, Failed, Refused] {
            let expected = a.record(if outcome == Refused { Failed } else { outcome });
            assert_eq!(b.record(outcome), expected);
        }
    }
}
