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
