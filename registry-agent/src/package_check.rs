//! The status a host's agent reports for one of its packages (the registry snapshot format (docs/topology.md): `starting`, `running`,
//! `failing`, `stopped`), derived from consecutive local check results. Pure value.
//!
//! A package starts `starting`. `rise` consecutive successes make it `running`; `fall`
//! consecutive failures make it `failing` if it has run since the agent started, or `stopped`
//! if it never came up (nothing is listening: it is not running rather than misbehaving).

use topology::PackageStatus;

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

    /// Records one check result; returns the new status when it changes.
    pub fn record(&mut self, ok: bool) -> Option<PackageStatus> {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
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
}
