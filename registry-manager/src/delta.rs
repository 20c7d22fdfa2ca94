//! What one revision changed, as domain values: the output of [`crate::State::apply`] and the
//! source of the `Delta` the watchers receive (encoded once in [`crate::wire`]).

use topology::{HostName, PackageStatus, PackageType, Revision};

/// The change made by the command at `revision`. Sized by the change, not by the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The revision this delta leads to (it applies on top of `revision - 1`).
    pub revision: Revision,
    /// Hosts whose entry changed; each replaces the old entry whole.
    pub upserts: Vec<HostView>,
    /// Hosts dropped from the registry (removed from the topology).
    pub removed_hosts: Vec<HostName>,
    /// The new topology's canonical YAML, when the topology changed.
    pub topology_yaml: Option<String>,
    /// Packages whose effective status alone changed. In the manager's own deltas each also has
    /// its host in `upserts` (watchers that take status changes are sent these instead of those
    /// hosts); a delta decoded from the compact encoding has them here only.
    pub status_changes: Vec<StatusChange>,
    /// Hosts whose session alone lapsed, under the same rule as `status_changes`.
    pub lapsed_hosts: Vec<HostName>,
}

/// One package's new effective status (its host's entry is otherwise unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// The host.
    pub host: HostName,
    /// The package type.
    pub package_type: PackageType,
    /// The new effective status.
    pub status: PackageStatus,
}

impl Delta {
    /// A delta that changes nothing (a command that turned out to be moot when applied).
    pub fn empty(revision: Revision) -> Self {
        Delta {
            revision,
            upserts: Vec::new(),
            removed_hosts: Vec::new(),
            topology_yaml: None,
            status_changes: Vec::new(),
            lapsed_hosts: Vec::new(),
        }
    }

    /// True when the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removed_hosts.is_empty() && self.topology_yaml.is_none()
    }

    /// True when `host` goes out as status changes or a lapse alone (in the compact encoding),
    /// not as its whole entry.
    fn hinted(&self, host: &HostName) -> bool {
        self.status_changes.iter().any(|c| c.host == *host) || self.lapsed_hosts.contains(host)
    }

    /// Drops every change this delta makes to `host` (it is removed after them).
    fn forget(&mut self, host: &HostName) {
        self.upserts.retain(|v| v.host != *host);
        self.status_changes.retain(|c| c.host != *host);
        self.lapsed_hosts.retain(|h| h != host);
    }

    /// Folds in `later`, the change of the next command applied at the same revision: applying
    /// the result on top of this delta's base (in either encoding, the way agents apply a delta:
    /// topology, removals, whole entries, then status changes and lapses) gives what applying
    /// the two in turn gives. Each host appears at most once among the upserts; a host keeps
    /// its compact hints (status changes, lapse) only while every change to it was one.
    pub fn absorb(&mut self, later: Delta) {
        debug_assert_eq!(
            self.revision, later.revision,
            "absorbed at the same revision"
        );
        if later.topology_yaml.is_some() {
            self.topology_yaml = later.topology_yaml;
        }
        for host in later.removed_hosts {
            self.forget(&host);
            if !self.removed_hosts.contains(&host) {
                self.removed_hosts.push(host);
            }
        }
        for view in later.upserts {
            let host = view.host.clone();
            let whole_before = self.upserts.iter().any(|v| v.host == host) && !self.hinted(&host);
            let whole_now = !later.status_changes.iter().any(|c| c.host == host)
                && !later.lapsed_hosts.contains(&host);
            match self.upserts.iter_mut().find(|v| v.host == host) {
                Some(v) => *v = view,
                None => self.upserts.push(view),
            }
            self.removed_hosts.retain(|h| *h != host);
            if whole_before || whole_now {
                // Sent whole: the entry carries every change.
                self.status_changes.retain(|c| c.host != host);
                self.lapsed_hosts.retain(|h| *h != host);
                continue;
            }
            for change in later.status_changes.iter().filter(|c| c.host == host) {
                self.status_changes
                    .retain(|c| !(c.host == host && c.package_type == change.package_type));
                self.status_changes.push(change.clone());
            }
            if later.lapsed_hosts.contains(&host) && !self.lapsed_hosts.contains(&host) {
                self.lapsed_hosts.push(host);
            }
        }
    }
}

/// One host's entry as watchers and exports see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// The host.
    pub host: HostName,
    /// False once its session lapsed.
    pub alive: bool,
    /// Its packages with their effective status (operator override applied), by type.
    pub packages: Vec<PackageView>,
}

/// One package as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageView {
    /// The package type.
    pub package_type: PackageType,
    /// `host:port`.
    pub endpoint: String,
    /// Effective status: the operator override if one is set, else the agent's report.
    pub status: PackageStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }
    fn view(host: &str, alive: bool, status: PackageStatus) -> HostView {
        HostView {
            host: h(host),
            alive,
            packages: vec![PackageView {
                package_type: PackageType::new("ccm").unwrap(),
                endpoint: "127.0.0.1:7001".into(),
                status,
            }],
        }
    }
    /// A whole entry.
    fn whole(host: &str, alive: bool) -> Delta {
        Delta {
            upserts: vec![view(host, alive, PackageStatus::Running)],
            ..Delta::empty(Revision(7))
        }
    }
    /// A status change alone.
    fn status(host: &str, status: PackageStatus) -> Delta {
        Delta {
            upserts: vec![view(host, true, status)],
            status_changes: vec![StatusChange {
                host: h(host),
                package_type: PackageType::new("ccm").unwrap(),
                status,
            }],
            ..Delta::empty(Revision(7))
        }
    }
    /// A lapse alone.
    fn lapse(host: &str) -> Delta {
        Delta {
            upserts: vec![view(host, false, PackageStatus::Running)],
            lapsed_hosts: vec![h(host)],
            ..Delta::empty(Revision(7))
        }
    }

    #[test]
    fn a_lapse_then_a_reopen_goes_out_whole_and_alive() {
        let mut d = lapse("a");
        d.absorb(whole("a", true));
        assert_eq!(d.upserts, vec![view("a", true, PackageStatus::Running)]);
        assert!(d.lapsed_hosts.is_empty() && d.status_changes.is_empty());
    }

    #[test]
    fn a_whole_entry_then_a_status_change_stays_whole_with_the_new_status() {
        let mut d = whole("a", true);
        d.absorb(status("a", PackageStatus::Draining));
        assert_eq!(d.upserts, vec![view("a", true, PackageStatus::Draining)]);
        assert!(d.status_changes.is_empty(), "the entry carries it");
    }

    #[test]
    fn status_changes_alone_stay_compact_and_the_last_one_of_a_package_wins() {
        let mut d = status("a", PackageStatus::Draining);
        d.absorb(status("b", PackageStatus::Stopped));
        d.absorb(status("a", PackageStatus::Withdrawn));
        d.absorb(lapse("b"));
        let hosts: Vec<&str> = d.upserts.iter().map(|v| v.host.as_str()).collect();
        assert_eq!(hosts, ["a", "b"]);
        let changes: Vec<(&str, PackageStatus)> = d
            .status_changes
            .iter()
            .map(|c| (c.host.as_str(), c.status))
            .collect();
        assert_eq!(
            changes,
            [
                ("b", PackageStatus::Stopped),
                ("a", PackageStatus::Withdrawn)
            ]
        );
        assert_eq!(d.lapsed_hosts, vec![h("b")]);
    }

    #[test]
    fn a_host_removed_after_its_changes_is_only_removed() {
        let mut d = status("a", PackageStatus::Draining);
        d.absorb(whole("b", true));
        d.absorb(Delta {
            removed_hosts: vec![h("a")],
            topology_yaml: Some("version: 1\ndomain: root\nhosts: [b]\n".into()),
            ..Delta::empty(Revision(7))
        });
        assert_eq!(d.removed_hosts, vec![h("a")]);
        assert!(d.status_changes.is_empty());
        let hosts: Vec<&str> = d.upserts.iter().map(|v| v.host.as_str()).collect();
        assert_eq!(hosts, ["b"]);
        assert!(d.topology_yaml.is_some());
    }
}
