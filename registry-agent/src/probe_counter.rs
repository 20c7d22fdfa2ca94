//! Fall/rise hysteresis of the agent's probes of a manager (the command-line contract (docs/manager.md, docs/agent.md) `health`), as a pure value.
//!
//! `fall` consecutive failures hold a manager down; `rise` consecutive successes bring it back.
//! A refused or reset connection seen by the forwarder holds it down at once
//! ([`ProbeCounter::force_down`]), and then it needs `rise` successes like any other.

/// The health of one manager endpoint as this agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCounter {
    fall: u32,
    rise: u32,
    up: bool,
    /// Consecutive results that contradict `up` (failures while up, successes while down).
    streak: u32,
}

impl ProbeCounter {
    /// A counter that trusts the registry at first: up until probes say otherwise.
    pub fn new(fall: u32, rise: u32) -> Self {
        ProbeCounter {
            fall: fall.max(1),
            rise: rise.max(1),
            up: true,
            streak: 0,
        }
    }

    /// True unless the manager is held down.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one probe result. Returns `Some(new_state)` when the state flips.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }

    /// Holds the manager down at once (passive detection). Returns true when it was up.
    pub fn force_down(&mut self) -> bool {
        let was_up = self.up;
        self.up = false;
        self.streak = 0;
        was_up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_consecutive_failures() {
        let mut c = ProbeCounter::new(2, 2);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None, "a success resets the streak");
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(false));
        assert!(!c.is_up());
        assert_eq!(c.record(false), None);
    }

    #[test]
    fn rises_after_rise_consecutive_successes() {
        let mut c = ProbeCounter::new(1, 3);
        assert_eq!(c.record(false), Some(false));
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(false), None, "a failure resets the streak");
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(true));
        assert!(c.is_up());
    }

    #[test]
    fn force_down_then_rise() {
        let mut c = ProbeCounter::new(2, 2);
        assert_eq!(c.record(false), None);
        assert!(c.force_down());
        assert!(!c.force_down());
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(true));
    }

    #[test]
    fn flapping_probe_never_reaches_a_threshold() {
        let mut c = ProbeCounter::new(2, 2);
        for i in 0..100 {
            assert_eq!(c.record(i % 2 == 0), None);
        }
        assert!(c.is_up());
    }
}
