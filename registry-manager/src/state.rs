//! The registry as a deterministic state machine: [`State::check`] decides whether a command
//! may be logged, [`State::apply`] applies a logged command and returns its [`Delta`].
//!
//! `apply` is a pure, total function of (state, command): it never fails and never looks at a
//! clock or a random source, so replaying a log (after a restart, or on a replica) rebuilds the
//! same registry. Anything that can be refused is refused by `check`, before the command is
//! logged; a command that became moot in between applies as an empty delta.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use topology::{
    HostName, HostState, PackageState, PackageStatus, PackageType, RegistrySnapshot, Revision,
    Topology,
};

use crate::command::{AgentStatus, Command, Override, Registration};
use crate::delta::{Delta, HostView, PackageView};
use crate::error::RegistryError;
use crate::session_id::SessionId;

/// File name quoted if the canonical YAML of a checkpoint or log entry ever fails to parse.
const LOGGED_TOPOLOGY: &str = "<registry log>";

/// The registry at one revision.
#[derive(Debug, Clone, Default)]
pub struct State {
    revision: Revision,
    /// Shared so readers (explain, diff) can keep it after releasing the state lock.
    topology: Option<Arc<Topology>>,
    /// Canonical YAML of `topology`; empty when none was applied.
    topology_yaml: String,
    /// Hosts that opened a session at least once (and are still in the topology). Hosts of the
    /// topology missing here are alive with no packages (SPEC §4).
    hosts: BTreeMap<HostName, HostRecord>,
}

/// What the registry keeps about one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The live session; `None` once it lapsed (the host is then not alive).
    pub session: Option<SessionId>,
    /// The registered packages, by type.
    pub packages: BTreeMap<PackageType, PackageRecord>,
}

impl HostRecord {
    /// Alive while a session holds the host.
    pub fn alive(&self) -> bool {
        self.session.is_some()
    }
}

/// What the registry keeps about one package on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// `host:port`.
    pub endpoint: String,
    /// The agent's latest report.
    pub reported: AgentStatus,
    /// The operator's override, if any; it beats `reported` until `restore`.
    pub operator: Option<Override>,
}

impl PackageRecord {
    /// The status routing sees: the override if set, else the agent's report.
    pub fn effective(&self) -> PackageStatus {
        effective_status(self.reported, self.operator)
    }
}

/// SPEC §4: an operator's drain or withdraw overrides whatever the agent reports.
pub fn effective_status(reported: AgentStatus, operator: Option<Override>) -> PackageStatus {
    match operator {
        Some(o) => o.to_status(),
        None => reported.to_status(),
    }
}

/// Whether a checked command should be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Log and apply it.
    Apply,
    /// It would change nothing (same status reported again, ...): acknowledge without a write.
    Unchanged,
}

/// The persisted form of a [`State`] (checkpoints). The topology is kept as canonical YAML.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersistedState {
    revision: Revision,
    topology_yaml: String,
    hosts: BTreeMap<HostName, HostRecord>,
}

impl State {
    /// The empty registry at revision 0.
    pub fn new() -> Self {
        State::default()
    }

    /// The revision of the last applied command.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The applied topology, if any.
    pub fn topology(&self) -> Option<&Arc<Topology>> {
        self.topology.as_ref()
    }

    /// Canonical YAML of the topology; empty when none was applied.
    pub fn topology_yaml(&self) -> &str {
        &self.topology_yaml
    }

    /// Hosts with a registry entry.
    pub fn hosts(&self) -> &BTreeMap<HostName, HostRecord> {
        &self.hosts
    }

    /// One host's entry.
    pub fn host(&self, host: &str) -> Option<&HostRecord> {
        self.hosts.get(host)
    }

    /// Decides whether `cmd` may be logged against this state. `session` is the session the
    /// request quoted, checked for `ReportStatus` (it must be the host's live session).
    pub fn check(
        &self,
        cmd: &Command,
        session: Option<&SessionId>,
        ttl: Duration,
    ) -> Result<Check, RegistryError> {
        match cmd {
            Command::ApplyTopology { .. } => Ok(Check::Apply),
            Command::OpenSession { host, packages, .. } => {
                let topology = self.topology.as_ref().ok_or(RegistryError::NoTopology)?;
                if topology.host(host.as_str()).is_none() {
                    return Err(RegistryError::HostNotInTopology { host: host.clone() });
                }
                check_registrations(packages)?;
                match self.hosts.get(host) {
                    Some(rec) if rec.session.is_some() => Err(RegistryError::SessionExists {
                        host: host.clone(),
                        ttl,
                    }),
                    _ => Ok(Check::Apply),
                }
            }
            Command::SessionExpired { host, session_id } => {
                match self.hosts.get(host).and_then(|h| h.session.as_ref()) {
                    Some(live) if live == session_id => Ok(Check::Apply),
                    _ => Ok(Check::Unchanged),
                }
            }
            Command::ReportStatus {
                host,
                package_type,
                status,
            } => {
                let rec = self.hosts.get(host);
                if let Some(session) = session {
                    if rec.and_then(|r| r.session.as_ref()) != Some(session) {
                        return Err(RegistryError::SessionNotLive {
                            host: host.clone(),
                            session_id: session.clone(),
                        });
                    }
                }
                let pkg = self.package(host, package_type)?;
                Ok(if pkg.reported == *status {
                    Check::Unchanged
                } else {
                    Check::Apply
                })
            }
            Command::OperatorAction {
                host,
                package_type,
                action,
            } => {
                if let Some(topology) = &self.topology {
                    if topology.host(host.as_str()).is_none() {
                        return Err(RegistryError::HostNotInTopology { host: host.clone() });
                    }
                }
                let pkg = self.package(host, package_type)?;
                Ok(if pkg.operator == action.override_status() {
                    Check::Unchanged
                } else {
                    Check::Apply
                })
            }
        }
    }

    fn package(
        &self,
        host: &HostName,
        package_type: &PackageType,
    ) -> Result<&PackageRecord, RegistryError> {
        let rec = self.hosts.get(host);
        rec.and_then(|r| r.packages.get(package_type))
            .ok_or_else(|| RegistryError::UnknownPackage {
                host: host.clone(),
                package_type: package_type.clone(),
                registered: rec
                    .map(|r| r.packages.keys().map(|t| t.to_string()).collect())
                    .unwrap_or_default(),
            })
    }

    /// Applies a logged command: the next revision. Pure and total (see the module docs).
    pub fn apply(&mut self, cmd: &Command) -> Delta {
        self.revision = Revision(self.revision.0 + 1);
        let mut delta = Delta::empty(self.revision);
        match cmd {
            Command::ApplyTopology { yaml } => {
                let Ok(topology) = Topology::from_yaml(LOGGED_TOPOLOGY, yaml) else {
                    // Never logged: `check` runs on a parsed topology. Moot if it ever happens.
                    return delta;
                };
                let removed: Vec<HostName> = self
                    .hosts
                    .keys()
                    .filter(|h| topology.host(h.as_str()).is_none())
                    .cloned()
                    .collect();
                for h in &removed {
                    self.hosts.remove(h);
                }
                self.topology = Some(Arc::new(topology));
                self.topology_yaml = yaml.clone();
                delta.removed_hosts = removed;
                delta.topology_yaml = Some(yaml.clone());
            }
            Command::OpenSession {
                host,
                session_id,
                packages,
            } => {
                let named = self
                    .topology
                    .as_ref()
                    .is_some_and(|t| t.host(host.as_str()).is_some());
                if !named || check_registrations(packages).is_err() {
                    return delta;
                }
                let old = self.hosts.remove(host);
                let packages = packages
                    .iter()
                    .map(|r| {
                        let operator = old
                            .as_ref()
                            .and_then(|o| o.packages.get(&r.package_type))
                            .and_then(|p| p.operator);
                        let rec = PackageRecord {
                            endpoint: r.endpoint.clone(),
                            reported: r.status,
                            operator,
                        };
                        (r.package_type.clone(), rec)
                    })
                    .collect();
                let rec = HostRecord {
                    session: Some(session_id.clone()),
                    packages,
                };
                delta.upserts.push(view(host, &rec));
                self.hosts.insert(host.clone(), rec);
            }
            Command::SessionExpired { host, session_id } => {
                if let Some(rec) = self.hosts.get_mut(host) {
                    if rec.session.as_ref() == Some(session_id) {
                        rec.session = None;
                        delta.upserts.push(view(host, rec));
                    }
                }
            }
            Command::ReportStatus {
                host,
                package_type,
                status,
            } => {
                if let Some(rec) = self.hosts.get_mut(host) {
                    if let Some(pkg) = rec.packages.get_mut(package_type) {
                        pkg.reported = *status;
                        delta.upserts.push(view(host, rec));
                    }
                }
            }
            Command::OperatorAction {
                host,
                package_type,
                action,
            } => {
                if let Some(rec) = self.hosts.get_mut(host) {
                    if let Some(pkg) = rec.packages.get_mut(package_type) {
                        pkg.operator = action.override_status();
                        delta.upserts.push(view(host, rec));
                    }
                }
            }
        }
        delta
    }

    /// Every host entry, in name order (what a watcher's snapshot holds).
    pub fn host_views(&self) -> impl Iterator<Item = HostView> + '_ {
        self.hosts.iter().map(|(h, rec)| view(h, rec))
    }

    /// The SPEC §4 snapshot of this state.
    pub fn to_snapshot(&self) -> RegistrySnapshot {
        let hosts = self
            .hosts
            .iter()
            .map(|(h, rec)| {
                let packages = rec
                    .packages
                    .iter()
                    .map(|(t, p)| {
                        let state = PackageState {
                            endpoint: p.endpoint.clone(),
                            status: p.effective(),
                        };
                        (t.clone(), state)
                    })
                    .collect();
                (
                    h.clone(),
                    HostState {
                        alive: rec.alive(),
                        packages,
                    },
                )
            })
            .collect();
        RegistrySnapshot {
            revision: self.revision,
            hosts,
        }
    }

    /// The checkpoint form of this state.
    pub fn to_bytes(&self) -> Vec<u8> {
        let persisted = PersistedState {
            revision: self.revision,
            topology_yaml: self.topology_yaml.clone(),
            hosts: self.hosts.clone(),
        };
        serde_json::to_vec(&persisted).expect("registry state serialises")
    }

    /// Rebuilds a state from [`State::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let p: PersistedState = serde_json::from_slice(bytes)
            .map_err(|e| format!("checkpoint does not decode: {e}"))?;
        let topology = if p.topology_yaml.is_empty() {
            None
        } else {
            let t = Topology::from_yaml(LOGGED_TOPOLOGY, &p.topology_yaml)
                .map_err(|e| format!("checkpoint topology does not parse: {e}"))?;
            Some(Arc::new(t))
        };
        Ok(State {
            revision: p.revision,
            topology,
            topology_yaml: p.topology_yaml,
            hosts: p.hosts,
        })
    }
}

/// SPEC §4: a host runs at most one package of a type; endpoints are `host:port` text.
pub fn check_registrations(packages: &[Registration]) -> Result<(), RegistryError> {
    let mut seen = std::collections::BTreeSet::new();
    for p in packages {
        if !seen.insert(&p.package_type) {
            return Err(RegistryError::InvalidArgument {
                field: "packages",
                reason: format!(
                    "package type \"{}\" is listed twice; a host runs at most one package of a type",
                    p.package_type
                ),
            });
        }
        check_endpoint(&p.endpoint)?;
    }
    Ok(())
}

/// Longest endpoint text accepted.
pub const MAX_ENDPOINT_LEN: usize = 255;

/// An endpoint is non-empty `host:port` text without spaces or control characters.
pub fn check_endpoint(endpoint: &str) -> Result<(), RegistryError> {
    let bad = |reason: String| RegistryError::InvalidArgument {
        field: "endpoint",
        reason,
    };
    if endpoint.is_empty() || endpoint.len() > MAX_ENDPOINT_LEN {
        return Err(bad(format!(
            "endpoint {endpoint:?} must be 1 to {MAX_ENDPOINT_LEN} characters of the form host:port"
        )));
    }
    if endpoint
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad(format!(
            "endpoint {endpoint:?} contains spaces or control characters"
        )));
    }
    let port = endpoint.rsplit_once(':').map(|(_, p)| p);
    if port.is_none_or(|p| p.parse::<u16>().is_err()) {
        return Err(bad(format!(
            "endpoint {endpoint:?} is not of the form host:port"
        )));
    }
    Ok(())
}

fn view(host: &HostName, rec: &HostRecord) -> HostView {
    HostView {
        host: host.clone(),
        alive: rec.alive(),
        packages: rec
            .packages
            .iter()
            .map(|(t, p)| PackageView {
                package_type: t.clone(),
                endpoint: p.endpoint.clone(),
                status: p.effective(),
            })
            .collect(),
    }
}
