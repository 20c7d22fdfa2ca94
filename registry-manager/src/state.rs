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
use crate::delta::{Delta, HostView, PackageView, StatusChange};
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
    /// The registry's history id (a uuid made once, when the registry is created); empty until
    /// the first leader names it. Watchers resume with deltas only within the same history.
    history: String,
    /// Hosts that opened a session at least once (and are still in the topology). Hosts of the
    /// topology missing here are alive with no packages (the registry snapshot format (docs/topology.md)).
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

/// the registry snapshot format (docs/topology.md): an operator's drain or withdraw overrides whatever the agent reports.
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
    #[serde(default)]
    history: String,
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

    /// The same registry as the start of a new history (a restored backup): agents whose
    /// copies belong to the old one get a full snapshot, never its deltas.
    pub fn into_new_history(mut self, history: String) -> State {
        self.history = history;
        self
    }

    /// The history id; empty until named.
    pub fn history(&self) -> &str {
        &self.history
    }

    /// Checks then applies a proposed command, as the replicated apply does on every member:
    /// the outcome for the proposer, and the delta when a revision was made.
    pub fn execute(
        &mut self,
        p: &crate::command::Proposed,
        ttl: Duration,
    ) -> (crate::command::Outcome, Option<Delta>) {
        let (mut outcomes, delta) = self.execute_together(std::slice::from_ref(p), ttl, |_, _| {});
        (outcomes.pop().expect("one outcome per command"), delta)
    }

    /// Checks then applies the commands of one raft entry together, as the replicated apply
    /// does for entries logged as [`crate::raft::types::Batch::Together`]: every command that
    /// changes something is applied at one new revision, and their changes are one delta
    /// (one event to every watcher, however many commands the entry holds). Each command is
    /// checked against the state the commands before it left, as if applied one by one. `each`
    /// is called with every applied command and its own change, in order.
    pub fn execute_together(
        &mut self,
        batch: &[crate::command::Proposed],
        ttl: Duration,
        mut each: impl FnMut(&Command, &Delta),
    ) -> (Vec<crate::command::Outcome>, Option<Delta>) {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut together: Option<Delta> = None;
        for p in batch {
            match self.check(&p.command, p.session.as_ref(), ttl) {
                Err(e) => outcomes.push(Err(e.to_refusal())),
                Ok(Check::Unchanged) => outcomes.push(Ok(self.revision.0)),
                Ok(Check::Apply) => {
                    if let Command::CreateHistory { .. } = &p.command {
                        self.apply(&p.command);
                        outcomes.push(Ok(self.revision.0));
                        continue;
                    }
                    if together.is_none() {
                        self.revision = Revision(self.revision.0 + 1);
                    }
                    let delta = self.change(&p.command);
                    each(&p.command, &delta);
                    outcomes.push(Ok(self.revision.0));
                    match &mut together {
                        Some(t) => t.absorb(delta),
                        None => together = Some(delta),
                    }
                }
            }
        }
        (outcomes, together)
    }

    /// Hosts with a registry entry.
    pub fn hosts(&self) -> &BTreeMap<HostName, HostRecord> {
        &self.hosts
    }

    /// One host's entry.
    pub fn host(&self, host: &str) -> Option<&HostRecord> {
        self.hosts.get(host)
    }

    /// True while `session_id` is `host`'s live session.
    fn holds(&self, host: &HostName, session_id: &SessionId) -> bool {
        self.hosts
            .get(host)
            .and_then(|h| h.session.as_ref())
            .is_some_and(|live| live == session_id)
    }

    /// Ends `host`'s session if it is still `session_id`, recording the lapse in `delta`.
    fn lapse(&mut self, host: &HostName, session_id: &SessionId, delta: &mut Delta) {
        if let Some(rec) = self.hosts.get_mut(host) {
            if rec.session.as_ref() == Some(session_id) {
                rec.session = None;
                delta.lapsed_hosts.push(host.clone());
                delta.upserts.push(view(host, rec));
            }
        }
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
            Command::ApplyTopology { yaml } => Ok(if *yaml == self.topology_yaml {
                Check::Unchanged
            } else {
                Check::Apply
            }),
            Command::CreateHistory { .. } => Ok(if self.history.is_empty() {
                Check::Apply
            } else {
                Check::Unchanged
            }),
            Command::OpenSession {
                host,
                packages,
                session_id,
            } => {
                let topology = self.topology.as_ref().ok_or(RegistryError::NoTopology)?;
                if topology.host(host.as_str()).is_none() {
                    return Err(RegistryError::HostNotInTopology { host: host.clone() });
                }
                check_registrations(packages)?;
                match self.hosts.get(host) {
                    // The same open again (a retried write): already done.
                    Some(rec) if rec.session.as_ref() == Some(session_id) => Ok(Check::Unchanged),
                    Some(rec) if rec.session.is_some() => Err(RegistryError::SessionExists {
                        host: host.clone(),
                        ttl,
                    }),
                    _ => Ok(Check::Apply),
                }
            }
            Command::SessionExpired { host, session_id } => Ok(if self.holds(host, session_id) {
                Check::Apply
            } else {
                Check::Unchanged
            }),
            Command::SessionsExpired { sessions } => Ok(
                if sessions.iter().any(|l| self.holds(&l.host, &l.session_id)) {
                    Check::Apply
                } else {
                    Check::Unchanged
                },
            ),
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
        if let Command::CreateHistory { history } = cmd {
            // Names the history; makes no revision.
            if self.history.is_empty() {
                self.history = history.clone();
            }
            return Delta::empty(self.revision);
        }
        self.revision = Revision(self.revision.0 + 1);
        self.change(cmd)
    }

    /// Makes `cmd`'s change at the current revision (already counted by the caller).
    fn change(&mut self, cmd: &Command) -> Delta {
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
                self.lapse(host, session_id, &mut delta);
            }
            Command::SessionsExpired { sessions } => {
                for l in sessions {
                    self.lapse(&l.host, &l.session_id, &mut delta);
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
                        delta.status_changes.push(StatusChange {
                            host: host.clone(),
                            package_type: package_type.clone(),
                            status: pkg.effective(),
                        });
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
                        delta.status_changes.push(StatusChange {
                            host: host.clone(),
                            package_type: package_type.clone(),
                            status: pkg.effective(),
                        });
                        delta.upserts.push(view(host, rec));
                    }
                }
            }
            Command::CreateHistory { .. } => {} // handled above
        }
        delta
    }

    /// Every host entry, in name order (what a watcher's snapshot holds).
    pub fn host_views(&self) -> impl Iterator<Item = HostView> + '_ {
        self.hosts.iter().map(|(h, rec)| view(h, rec))
    }

    /// The registry snapshot format (docs/topology.md) snapshot of this state.
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
            history: self.history.clone(),
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
            history: p.history,
            hosts: p.hosts,
        })
    }
}

/// the registry snapshot format (docs/topology.md): a host runs at most one package of a type; endpoints are `host:port` text.
pub fn check_registrations(packages: &[Registration]) -> Result<(), RegistryError> {
    if packages.len() > MAX_PACKAGES_PER_HOST {
        return Err(RegistryError::InvalidArgument {
            field: "packages",
            reason: format!(
                "{} packages registered for one host; a host runs at most {MAX_PACKAGES_PER_HOST} manager packages",
                packages.len()
            ),
        });
    }
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

/// Most manager packages one host may register (each is routed and pushed to every agent).
pub const MAX_PACKAGES_PER_HOST: usize = 64;

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
    let parts = endpoint.rsplit_once(':');
    if parts.is_none_or(|(host, p)| host.is_empty() || p.parse::<u16>().is_err()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::OperatorAction;

    const TTL: Duration = Duration::from_secs(1);

    const TREE: &str = "version: 1\ndomain: framework\nhosts: [fm]\nsubdomains:\n  - domain: subdomain-1\n    hosts: [agent-1, agent-2]\n  - domain: subdomain-2\n    hosts: [s2-host]\n";
    /// agent-2 moved to subdomain-2, s2-host removed.
    const TREE_CHANGED: &str = "version: 1\ndomain: framework\nhosts: [fm]\nsubdomains:\n  - domain: subdomain-1\n    hosts: [agent-1]\n  - domain: subdomain-2\n    hosts: [agent-2]\n";

    fn h(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }
    fn t(s: &str) -> PackageType {
        PackageType::new(s).unwrap()
    }
    fn sid(s: &str) -> SessionId {
        SessionId::new(s)
    }
    fn topo(yaml: &str) -> Command {
        let t = Topology::from_yaml("t.yaml", yaml).unwrap();
        Command::ApplyTopology { yaml: t.to_yaml() }
    }
    fn reg(ty: &str, status: AgentStatus) -> Registration {
        Registration {
            package_type: t(ty),
            endpoint: "127.0.0.1:7001".into(),
            status,
        }
    }
    fn open(host: &str, id: &str, packages: Vec<Registration>) -> Command {
        Command::OpenSession {
            host: h(host),
            session_id: sid(id),
            packages,
        }
    }
    fn report(host: &str, ty: &str, status: AgentStatus) -> Command {
        Command::ReportStatus {
            host: h(host),
            package_type: t(ty),
            status,
        }
    }
    fn act(host: &str, ty: &str, action: OperatorAction) -> Command {
        Command::OperatorAction {
            host: h(host),
            package_type: t(ty),
            action,
        }
    }
    /// Checks then applies, like the writer.
    fn run(state: &mut State, cmd: Command) -> Result<Option<Delta>, RegistryError> {
        match state.check(&cmd, None, TTL)? {
            Check::Apply => Ok(Some(state.apply(&cmd))),
            Check::Unchanged => Ok(None),
        }
    }
    fn status_of(state: &State, host: &str, ty: &str) -> PackageStatus {
        state.host(host).unwrap().packages[ty].effective()
    }
    const CCM: &str = "command-control-manager";

    fn with_topology() -> State {
        let mut s = State::new();
        run(&mut s, topo(TREE)).unwrap();
        s
    }

    #[test]
    fn status_changes_and_lapses_are_sent_alone_to_watchers_that_take_them() {
        use prost::Message;
        let mut s = with_topology();
        let packages: Vec<Registration> = (0..MAX_PACKAGES_PER_HOST)
            .map(|i| reg(&format!("manager-type-{i:02}"), AgentStatus::Running))
            .collect();
        run(&mut s, open("agent-1", "s1", packages)).unwrap();
        for cmd in [
            report("agent-1", "manager-type-07", AgentStatus::Failing),
            act("agent-1", "manager-type-07", OperatorAction::Drain),
        ] {
            let d = run(&mut s, cmd).unwrap().expect("a change");
            assert_eq!(
                d.upserts.len(),
                1,
                "the whole entry, for the manager's own uses"
            );
            let enc = crate::wire::encode_delta(&d);
            let full = proto::v1::Delta::decode(enc.full.clone()).unwrap();
            assert_eq!(full.upserts[0].packages.len(), MAX_PACKAGES_PER_HOST);
            assert!(
                full.status_changes.is_empty(),
                "older watchers: whole entries"
            );
            let compact = proto::v1::Delta::decode(enc.compact.clone().unwrap()).unwrap();
            assert!(compact.upserts.is_empty());
            assert_eq!(compact.status_changes.len(), 1);
            let c = &compact.status_changes[0];
            assert_eq!(
                (c.host.as_str(), c.r#type.as_str()),
                ("agent-1", "manager-type-07")
            );
            assert_eq!(
                crate::wire::status_from_proto(c.status).unwrap(),
                status_of(&s, "agent-1", "manager-type-07")
            );
            let (small, whole) = (enc.compact.unwrap().len(), enc.full.len());
            assert!(
                small * 20 < whole,
                "sized by the change: {small} vs {whole} bytes"
            );
        }
        // A session opening carries the host's packages: one encoding, the whole entry.
        let d = run(
            &mut s,
            open("agent-2", "s2", vec![reg(CCM, AgentStatus::Running)]),
        )
        .unwrap()
        .unwrap();
        assert!(crate::wire::encode_delta(&d).compact.is_none());
        // A lapse is the host's name alone.
        let d = s.apply(&Command::SessionExpired {
            host: h("agent-1"),
            session_id: sid("s1"),
        });
        let enc = crate::wire::encode_delta(&d);
        let compact = proto::v1::Delta::decode(enc.compact.clone().unwrap()).unwrap();
        assert_eq!(compact.lapsed_hosts, vec!["agent-1".to_string()]);
        assert!(compact.upserts.is_empty() && compact.status_changes.is_empty());
        let full = proto::v1::Delta::decode(enc.full.clone()).unwrap();
        assert!(!full.upserts[0].alive && full.lapsed_hosts.is_empty());
        assert!(enc.compact.unwrap().len() * 20 < enc.full.len());
    }

    #[test]
    fn lapses_found_together_are_one_revision_and_a_stale_one_among_them_is_skipped() {
        use prost::Message;
        let mut s = with_topology();
        for (host, id) in [("agent-1", "s1"), ("agent-2", "s2"), ("s2-host", "s3")] {
            run(&mut s, open(host, id, vec![reg(CCM, AgentStatus::Running)]))
                .unwrap()
                .unwrap();
        }
        let before = s.revision();
        let lapse = |host: &str, id: &str| crate::command::Lapse {
            host: h(host),
            session_id: sid(id),
        };
        let d = run(
            &mut s,
            Command::SessionsExpired {
                sessions: vec![
                    lapse("agent-1", "s1"),
                    lapse("agent-2", "old"),
                    lapse("s2-host", "s3"),
                ],
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.revision, Revision(before.0 + 1), "one revision for all");
        assert_eq!(d.lapsed_hosts, vec![h("agent-1"), h("s2-host")]);
        assert!(!s.host("agent-1").unwrap().alive() && !s.host("s2-host").unwrap().alive());
        assert!(
            s.host("agent-2").unwrap().alive(),
            "agent-2 holds another session"
        );
        let compact =
            proto::v1::Delta::decode(crate::wire::encode_delta(&d).compact.unwrap()).unwrap();
        assert_eq!(compact.lapsed_hosts, vec!["agent-1", "s2-host"]);
        assert!(compact.upserts.is_empty());
        // Every one of them stale: nothing changes, no revision.
        let moot = Command::SessionsExpired {
            sessions: vec![lapse("agent-1", "s1"), lapse("agent-2", "old")],
        };
        assert!(run(&mut s, moot).unwrap().is_none());
        assert_eq!(s.revision(), Revision(before.0 + 1));
    }

    #[test]
    fn sessions_need_a_topology_that_names_the_host() {
        let mut s = State::new();
        let err = run(&mut s, open("fm", "a", vec![])).unwrap_err();
        assert!(matches!(err, RegistryError::NoTopology), "{err}");
        let mut s = with_topology();
        let err = run(&mut s, open("ghost", "a", vec![])).unwrap_err();
        assert!(
            matches!(err, RegistryError::HostNotInTopology { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("add it to the topology"), "{err}");
        assert_eq!(s.revision(), Revision(1), "refusals change nothing");
    }

    #[test]
    fn one_live_session_per_host_until_it_lapses() {
        let mut s = with_topology();
        let d = run(
            &mut s,
            open("agent-1", "s1", vec![reg(CCM, AgentStatus::Running)]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.revision, Revision(2));
        assert_eq!(d.upserts.len(), 1);
        assert!(d.upserts[0].alive);
        let err = run(&mut s, open("agent-1", "s2", vec![])).unwrap_err();
        assert!(matches!(err, RegistryError::SessionExists { .. }), "{err}");
        // A stale expiry (another id) changes nothing.
        let stale = Command::SessionExpired {
            host: h("agent-1"),
            session_id: sid("old"),
        };
        assert!(run(&mut s, stale.clone()).unwrap().is_none());
        assert!(s.apply(&stale).is_empty(), "moot when applied anyway");
        let d = run(
            &mut s,
            Command::SessionExpired {
                host: h("agent-1"),
                session_id: sid("s1"),
            },
        )
        .unwrap()
        .unwrap();
        assert!(!d.upserts[0].alive);
        assert_eq!(
            d.upserts[0].packages.len(),
            1,
            "packages stay listed while not alive"
        );
        run(&mut s, open("agent-1", "s2", vec![])).unwrap().unwrap();
        assert!(s.host("agent-1").unwrap().alive());
    }

    #[test]
    fn reports_need_the_live_session_and_a_registered_type() {
        let mut s = with_topology();
        run(
            &mut s,
            open("agent-1", "s1", vec![reg(CCM, AgentStatus::Starting)]),
        )
        .unwrap();
        let cmd = report("agent-1", CCM, AgentStatus::Running);
        let err = s.check(&cmd, Some(&sid("other")), TTL).unwrap_err();
        assert!(matches!(err, RegistryError::SessionNotLive { .. }), "{err}");
        assert_eq!(s.check(&cmd, Some(&sid("s1")), TTL).unwrap(), Check::Apply);
        let err = run(
            &mut s,
            report("agent-1", "event-manager", AgentStatus::Running),
        )
        .unwrap_err();
        assert!(matches!(err, RegistryError::UnknownPackage { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("registered: command-control-manager"),
            "{err}"
        );
        run(&mut s, cmd.clone()).unwrap().unwrap();
        assert_eq!(status_of(&s, "agent-1", CCM), PackageStatus::Running);
        assert!(
            run(&mut s, cmd).unwrap().is_none(),
            "the same report again writes nothing"
        );
    }

    #[test]
    fn operator_override_beats_agent_reports_until_restore() {
        let mut s = with_topology();
        run(
            &mut s,
            open("agent-1", "s1", vec![reg(CCM, AgentStatus::Running)]),
        )
        .unwrap();
        run(&mut s, act("agent-1", CCM, OperatorAction::Drain))
            .unwrap()
            .unwrap();
        assert_eq!(status_of(&s, "agent-1", CCM), PackageStatus::Draining);
        run(&mut s, report("agent-1", CCM, AgentStatus::Failing))
            .unwrap()
            .unwrap();
        assert_eq!(status_of(&s, "agent-1", CCM), PackageStatus::Draining);
        run(&mut s, act("agent-1", CCM, OperatorAction::Withdraw))
            .unwrap()
            .unwrap();
        assert_eq!(status_of(&s, "agent-1", CCM), PackageStatus::Withdrawn);
        assert!(run(&mut s, act("agent-1", CCM, OperatorAction::Withdraw))
            .unwrap()
            .is_none());
        run(&mut s, act("agent-1", CCM, OperatorAction::Restore))
            .unwrap()
            .unwrap();
        assert_eq!(
            status_of(&s, "agent-1", CCM),
            PackageStatus::Failing,
            "latest report counts again"
        );
        assert!(run(&mut s, act("agent-1", CCM, OperatorAction::Restore))
            .unwrap()
            .is_none());
        let err = run(&mut s, act("agent-2", CCM, OperatorAction::Drain)).unwrap_err();
        assert!(matches!(err, RegistryError::UnknownPackage { .. }), "{err}");
        let err = run(&mut s, act("ghost", CCM, OperatorAction::Drain)).unwrap_err();
        assert!(
            matches!(err, RegistryError::HostNotInTopology { .. }),
            "{err}"
        );
    }

    #[test]
    fn effective_status_is_the_override_else_the_report() {
        assert_eq!(
            effective_status(AgentStatus::Running, None),
            PackageStatus::Running
        );
        assert_eq!(
            effective_status(AgentStatus::Running, Some(Override::Drain)),
            PackageStatus::Draining
        );
        assert_eq!(
            effective_status(AgentStatus::Stopped, Some(Override::Withdraw)),
            PackageStatus::Withdrawn
        );
    }

    #[test]
    fn reopening_keeps_overrides_of_types_still_registered() {
        let mut s = with_topology();
        let both = vec![
            reg(CCM, AgentStatus::Running),
            reg("event-manager", AgentStatus::Running),
        ];
        run(&mut s, open("agent-1", "s1", both)).unwrap();
        run(&mut s, act("agent-1", CCM, OperatorAction::Drain)).unwrap();
        run(
            &mut s,
            act("agent-1", "event-manager", OperatorAction::Withdraw),
        )
        .unwrap();
        run(
            &mut s,
            Command::SessionExpired {
                host: h("agent-1"),
                session_id: sid("s1"),
            },
        )
        .unwrap();
        run(
            &mut s,
            open("agent-1", "s2", vec![reg(CCM, AgentStatus::Starting)]),
        )
        .unwrap();
        let rec = s.host("agent-1").unwrap();
        assert_eq!(rec.packages.len(), 1);
        assert_eq!(rec.packages[CCM].operator, Some(Override::Drain));
        run(
            &mut s,
            Command::SessionExpired {
                host: h("agent-1"),
                session_id: sid("s2"),
            },
        )
        .unwrap();
        run(
            &mut s,
            open(
                "agent-1",
                "s3",
                vec![reg("event-manager", AgentStatus::Running)],
            ),
        )
        .unwrap();
        assert_eq!(
            s.host("agent-1").unwrap().packages["event-manager"].operator,
            None
        );
    }

    #[test]
    fn too_many_packages_for_one_host_are_refused_and_change_nothing() {
        let mut s = with_topology();
        let many: Vec<Registration> = (0..=MAX_PACKAGES_PER_HOST)
            .map(|i| reg(&format!("type-{i}"), AgentStatus::Running))
            .collect();
        let err = run(&mut s, open("agent-1", "s1", many)).unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
        assert_eq!(s.revision(), Revision(1));
    }

    #[test]
    fn bad_registrations_are_refused() {
        let mut s = with_topology();
        let dup = vec![
            reg(CCM, AgentStatus::Running),
            reg(CCM, AgentStatus::Running),
        ];
        assert!(run(&mut s, open("agent-1", "s1", dup)).is_err());
        for endpoint in ["", "no-port", "a b:1", "host:99999", ":80"] {
            let p = vec![Registration {
                package_type: t(CCM),
                endpoint: endpoint.into(),
                status: AgentStatus::Running,
            }];
            let err = run(&mut s, open("agent-1", "s1", p)).unwrap_err();
            assert!(
                matches!(
                    err,
                    RegistryError::InvalidArgument {
                        field: "endpoint",
                        ..
                    }
                ),
                "{endpoint:?}: {err}"
            );
        }
        assert_eq!(s.revision(), Revision(1));
    }

    #[test]
    fn topology_change_removes_dropped_hosts_and_keeps_moved_ones() {
        let mut s = with_topology();
        run(
            &mut s,
            open("agent-2", "s-a2", vec![reg(CCM, AgentStatus::Running)]),
        )
        .unwrap();
        run(
            &mut s,
            open("s2-host", "s-s2", vec![reg(CCM, AgentStatus::Running)]),
        )
        .unwrap();
        let d = run(&mut s, topo(TREE_CHANGED)).unwrap().unwrap();
        assert_eq!(d.removed_hosts, vec![h("s2-host")]);
        assert!(d.upserts.is_empty());
        assert!(d
            .topology_yaml
            .as_deref()
            .is_some_and(|y| y.contains("agent-2")));
        assert!(s.host("s2-host").is_none());
        assert_eq!(
            s.host("agent-2").unwrap().session,
            Some(sid("s-a2")),
            "a moved host keeps its session"
        );
        assert_eq!(
            s.topology()
                .unwrap()
                .host_domain("agent-2")
                .map(|d| d.to_string()),
            Some("subdomain-2".to_string())
        );
        let err = run(&mut s, open("s2-host", "again", vec![])).unwrap_err();
        assert!(matches!(err, RegistryError::HostNotInTopology { .. }));
    }

    #[test]
    fn replaying_the_log_rebuilds_the_same_state_and_checkpoints_round_trip() {
        let cmds = [
            topo(TREE),
            open("agent-1", "s1", vec![reg(CCM, AgentStatus::Starting)]),
            report("agent-1", CCM, AgentStatus::Running),
            act("agent-1", CCM, OperatorAction::Drain),
            open("fm", "s2", vec![reg(CCM, AgentStatus::Running)]),
            Command::SessionExpired {
                host: h("fm"),
                session_id: sid("s2"),
            },
            topo(TREE_CHANGED),
        ];
        let mut a = State::new();
        let mut b = State::new();
        let da: Vec<Delta> = cmds.iter().map(|c| a.apply(c)).collect();
        let db: Vec<Delta> = cmds.iter().map(|c| b.apply(c)).collect();
        assert_eq!(da, db);
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.revision(), Revision(cmds.len() as u64));
        let c = State::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(c.to_bytes(), a.to_bytes());
        assert_eq!(
            c.topology().map(|t| t.to_yaml()),
            a.topology().map(|t| t.to_yaml())
        );
        let snap = a.to_snapshot();
        assert!(!snap.hosts["fm"].alive);
        assert_eq!(
            snap.hosts["agent-1"].packages[CCM].status,
            PackageStatus::Draining
        );
    }

    #[test]
    fn commands_applied_together_make_one_revision_and_one_delta() {
        use crate::command::{Lapse, Proposed};
        let mut s = with_topology();
        for (host, id) in [("agent-1", "s1"), ("agent-2", "s2")] {
            run(&mut s, open(host, id, vec![reg(CCM, AgentStatus::Running)]))
                .unwrap()
                .unwrap();
        }
        let before = s.revision().0;
        let batch: Vec<Proposed> = [
            Command::SessionsExpired {
                sessions: vec![Lapse {
                    host: h("agent-1"),
                    session_id: sid("s1"),
                }],
            },
            // agent-1's agent reopens at once: its host goes whole, not as a lapse.
            open("agent-1", "s9", vec![reg(CCM, AgentStatus::Running)]),
            act("agent-2", CCM, OperatorAction::Drain),
            // Refused: agent-2's session is live.
            open("agent-2", "thief", vec![reg(CCM, AgentStatus::Running)]),
            // Changes nothing.
            topo(TREE),
        ]
        .into_iter()
        .map(|command| Proposed {
            command,
            session: None,
        })
        .collect();
        let mut applied = Vec::new();
        let (outcomes, delta) = s.execute_together(&batch, TTL, |cmd, d| {
            applied.push((cmd.kind(), d.revision.0));
        });
        let next = before + 1;
        assert_eq!(s.revision().0, next, "one revision for the whole entry");
        assert_eq!(
            applied,
            vec![
                (batch[0].command.kind(), next),
                (batch[1].command.kind(), next),
                (batch[2].command.kind(), next)
            ]
        );
        assert_eq!(outcomes[..3], [Ok(next), Ok(next), Ok(next)]);
        assert_eq!(
            outcomes[3].as_ref().unwrap_err().code,
            tonic::Code::AlreadyExists as i32
        );
        assert_eq!(outcomes[4], Ok(next), "unchanged: the revision it is at");
        let d = delta.expect("a delta");
        assert_eq!(d.revision.0, next);
        let hosts: Vec<&str> = d.upserts.iter().map(|v| v.host.as_str()).collect();
        assert_eq!(hosts, ["agent-1", "agent-2"], "each host once");
        assert!(d.upserts[0].alive, "the reopened session, whole");
        assert!(d.lapsed_hosts.is_empty(), "{:?}", d.lapsed_hosts);
        assert_eq!(d.status_changes.len(), 1);
        assert_eq!(d.status_changes[0].host, h("agent-2"));
        assert_eq!(d.status_changes[0].status, PackageStatus::Draining);
        // An entry with nothing to change makes no revision.
        let (outcomes, delta) = s.execute_together(&batch[4..], TTL, |_, _| {});
        assert_eq!((outcomes, delta), (vec![Ok(next)], None));
        assert_eq!(s.revision().0, next);
    }
}
