//! The agent's own health view of the managers it routes to (the routing rule (docs/routing.md) "eligible ... and `h`'s
//! own health checks do not currently hold `m` down"), fed by active probes and by the
//! forwarder's passive detection, read by the routing engine.
//!
//! Keyed by (package type, host): a host may run several manager types on different
//! endpoints, and one refusing connections says nothing about the others.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;
use topology::{HostName, PackageType};

use crate::config::HealthConfig;
use crate::probe_counter::ProbeCounter;

#[derive(Debug)]
struct Entry {
    counter: ProbeCounter,
    endpoint: String,
}

/// A held-down manager endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldDown {
    /// Manager type.
    pub package_type: PackageType,
    /// Host running it.
    pub host: HostName,
    /// The endpoint that failed.
    pub endpoint: String,
}

/// Shared, thread-safe health view. Every state flip bumps a generation counter that the
/// routing engine watches.
#[derive(Debug)]
pub struct HealthView {
    fall: u32,
    rise: u32,
    entries: Mutex<HashMap<PackageType, HashMap<HostName, Entry>>>,
    generation: watch::Sender<u64>,
}

impl HealthView {
    /// An empty view (every manager trusted) with the thresholds of `health`.
    pub fn new(health: &HealthConfig) -> HealthView {
        HealthView {
            fall: health.fall,
            rise: health.rise,
            entries: Mutex::new(HashMap::new()),
            generation: watch::Sender::new(0),
        }
    }

    /// Notified on every flip.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PackageType, HashMap<HostName, Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when this agent holds `host` down for `package_type`.
    pub fn is_down(&self, host: &str, package_type: &str) -> bool {
        self.lock()
            .get(package_type)
            .and_then(|m| m.get(host))
            .is_some_and(|e| !e.counter.is_up())
    }

    /// Records an active probe result. Returns the new state when it flipped.
    pub fn record(
        &self,
        package_type: &PackageType,
        host: &HostName,
        endpoint: &str,
        ok: bool,
    ) -> Option<bool> {
        let flipped = {
            let mut g = self.lock();
            let e = g
                .entry(package_type.clone())
                .or_default()
                .entry(host.clone())
                .or_insert_with(|| Entry {
                    counter: ProbeCounter::new(self.fall, self.rise),
                    endpoint: endpoint.to_owned(),
                });
            e.endpoint = endpoint.to_owned();
            e.counter.record(ok)
        };
        if let Some(up) = flipped {
            if up {
                tracing::info!(package_type = %package_type, host = %host, endpoint, "manager passes probes again");
            } else {
                tracing::warn!(package_type = %package_type, host = %host, endpoint, "manager held down: probes fail");
            }
            self.bump();
        }
        flipped
    }

    /// Passive detection: a connection to the manager was refused or reset. Holds it down at
    /// once. Returns true when it was up before.
    pub fn mark_down(&self, package_type: &PackageType, host: &HostName, endpoint: &str) -> bool {
        let was_up = {
            let mut g = self.lock();
            let e = g
                .entry(package_type.clone())
                .or_default()
                .entry(host.clone())
                .or_insert_with(|| Entry {
                    counter: ProbeCounter::new(self.fall, self.rise),
                    endpoint: endpoint.to_owned(),
                });
            e.endpoint = endpoint.to_owned();
            e.counter.force_down()
        };
        if was_up {
            tracing::warn!(package_type = %package_type, host = %host, endpoint, "manager held down: connection refused or reset");
            self.bump();
        }
        was_up
    }

    /// Every held-down endpoint (the prober keeps probing them so they can rise again).
    pub fn held_down(&self) -> Vec<HeldDown> {
        let g = self.lock();
        let mut out = Vec::new();
        for (t, m) in g.iter() {
            for (h, e) in m {
                if !e.counter.is_up() {
                    out.push(HeldDown {
                        package_type: t.clone(),
                        host: h.clone(),
                        endpoint: e.endpoint.clone(),
                    });
                }
            }
        }
        out
    }

    /// Forgets entries for which `keep` is false (managers no longer among the candidates).
    pub fn retain(&self, keep: impl Fn(&PackageType, &HostName) -> bool) {
        let mut changed = false;
        {
            let mut g = self.lock();
            for (t, m) in g.iter_mut() {
                m.retain(|h, e| {
                    let k = keep(t, h);
                    changed |= !k && !e.counter.is_up();
                    k
                });
            }
            g.retain(|_, m| !m.is_empty());
        }
        if changed {
            self.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_and_passive_marks_flip_and_notify() {
        let v = HealthView::new(&HealthConfig::default());
        let rx = v.subscribe();
        let t = PackageType::new("ccm").unwrap();
        let h = HostName::new("fm").unwrap();
        assert!(!v.is_down("fm", "ccm"));
        assert_eq!(v.record(&t, &h, "127.0.0.1:1", false), None);
        assert_eq!(v.record(&t, &h, "127.0.0.1:1", false), Some(false));
        assert!(v.is_down("fm", "ccm"));
        assert!(!v.is_down("fm", "other"));
        assert_eq!(*rx.borrow(), 1);
        assert_eq!(v.held_down().len(), 1);
        v.record(&t, &h, "127.0.0.1:1", true);
        v.record(&t, &h, "127.0.0.1:1", true);
        assert!(!v.is_down("fm", "ccm"));
        assert!(v.mark_down(&t, &h, "127.0.0.1:1"));
        assert!(!v.mark_down(&t, &h, "127.0.0.1:1"));
        assert_eq!(*rx.borrow(), 3);
        v.retain(|_, _| false);
        assert!(!v.is_down("fm", "ccm"));
        assert!(v.held_down().is_empty());
    }
}
