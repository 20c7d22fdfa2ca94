//! The commands of the registry state machine: every change to the registry is one of these,
//! appended to the log at the next revision and applied by [`crate::State::apply`].
//!
//! Commands are pure data (serde), validated before they are logged: applying the same log to
//! the same starting state gives the same registry on every replica, which is what lets the
//! log be replicated by openraft later without change.

use serde::{Deserialize, Serialize};
use topology::{HostName, PackageStatus, PackageType};

use crate::session_id::SessionId;

/// One change to the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Replace the topology. `yaml` is the canonical form (`Topology::to_yaml`), already
    /// validated; hosts the new topology does not name lose their session and packages.
    ApplyTopology {
        /// Canonical YAML of the new topology.
        yaml: String,
    },
    /// Open the session of `host` and register its packages (replacing its package list;
    /// operator overrides of types still present are kept).
    OpenSession {
        /// The host whose agent opened the session.
        host: HostName,
        /// Chosen by the manager that accepted the request (not derived inside `apply`, which
        /// must be deterministic).
        session_id: SessionId,
        /// The packages the host runs.
        packages: Vec<Registration>,
    },
    /// The session lapsed (no heartbeat within `session_ttl`): the host is no longer alive.
    /// Ignored when the host's session is no longer `session_id`.
    SessionExpired {
        /// The host.
        host: HostName,
        /// The session that lapsed.
        session_id: SessionId,
    },
    /// Several sessions lapsed at once (those one expiry scan found): one revision, one change
    /// sent to every watcher, however many hosts. Each is ignored when its host's session is no
    /// longer the one named. Written since this version; [`Command::SessionExpired`] is still
    /// read from older logs.
    SessionsExpired {
        /// The hosts and the sessions that lapsed.
        sessions: Vec<Lapse>,
    },
    /// A package's status as seen by its host's local checks.
    ReportStatus {
        /// The reporting host.
        host: HostName,
        /// The package type.
        package_type: PackageType,
        /// The new agent-side status.
        status: AgentStatus,
    },
    /// Names the registry's history (a uuid made once, when the registry is created); ignored
    /// when the registry already has one. Makes no revision.
    CreateHistory {
        /// The new history id.
        history: String,
    },
    /// An operator's drain / withdraw / restore of a package.
    OperatorAction {
        /// The host running the package.
        host: HostName,
        /// The package type.
        package_type: PackageType,
        /// What the operator asked.
        action: OperatorAction,
    },
}

impl Command {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::ApplyTopology { .. } => "apply_topology",
            Command::OpenSession { .. } => "open_session",
            Command::SessionExpired { .. } => "session_expired",
            Command::SessionsExpired { .. } => "sessions_expired",
            Command::ReportStatus { .. } => "report_status",
            Command::OperatorAction { .. } => "operator_action",
            Command::CreateHistory { .. } => "create_history",
        }
    }
}

/// One session that lapsed, in [`Command::SessionsExpired`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lapse {
    /// The host.
    pub host: HostName,
    /// The session that lapsed.
    pub session_id: SessionId,
}

/// A command with its precondition, as proposed: checked against the state inside the
/// replicated apply, so every replica decides alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proposed {
    /// The command.
    pub command: Command,
    /// For `ReportStatus`: the session the request quoted, which must be the host's live one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
}

/// What one proposed command came to: the revision it was applied at (or the current one when
/// it changed nothing), or why it was refused (a gRPC code and the message for the caller).
pub type Outcome = Result<u64, Refusal>;

/// A refusal decided by the state machine, in a form that crosses the wire between members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The gRPC status code.
    pub code: i32,
    /// What was wrong and how to mend it.
    pub message: String,
}

/// One package a host registers when it opens its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Package type (unique per host).
    pub package_type: PackageType,
    /// Where clients reach it, `host:port`.
    pub endpoint: String,
    /// Its current local status.
    pub status: AgentStatus,
}

/// The statuses an agent may report (the registry snapshot format (docs/topology.md)); `draining` and `withdrawn` belong to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Starting up; not yet routed to.
    Starting,
    /// Healthy; routed to.
    Running,
    /// Its local check is failing.
    Failing,
    /// Stopped.
    Stopped,
}

impl AgentStatus {
    /// The registry snapshot format (docs/topology.md) status this stands for.
    pub fn to_status(self) -> PackageStatus {
        match self {
            AgentStatus::Starting => PackageStatus::Starting,
            AgentStatus::Running => PackageStatus::Running,
            AgentStatus::Failing => PackageStatus::Failing,
            AgentStatus::Stopped => PackageStatus::Stopped,
        }
    }
}

/// What an operator can do to a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorAction {
    /// Maintenance: the package takes no new requests (status `draining`).
    Drain,
    /// Removed by an operator (status `withdrawn`).
    Withdraw,
    /// Clear the override: the agent's latest report counts again.
    Restore,
}

impl OperatorAction {
    /// The override this action leaves on the package (`None` for restore).
    pub fn override_status(self) -> Option<Override> {
        match self {
            OperatorAction::Drain => Some(Override::Drain),
            OperatorAction::Withdraw => Some(Override::Withdraw),
            OperatorAction::Restore => None,
        }
    }
}

/// An operator override in force on a package; it beats the agent's report until `restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Override {
    /// Status `draining`.
    Drain,
    /// Status `withdrawn`.
    Withdraw,
}

impl Override {
    /// The registry snapshot format (docs/topology.md) status this override shows.
    pub fn to_status(self) -> PackageStatus {
        match self {
            Override::Drain => PackageStatus::Draining,
            Override::Withdraw => PackageStatus::Withdrawn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_json() {
        let cmd = Command::OpenSession {
            host: HostName::new("agent-1").unwrap(),
            session_id: SessionId::new("s-1"),
            packages: vec![Registration {
                package_type: PackageType::new("command-control-manager").unwrap(),
                endpoint: "127.0.0.1:7001".into(),
                status: AgentStatus::Running,
            }],
        };
        let text = serde_json::to_string(&cmd).unwrap();
        assert!(text.contains("\"op\":\"open_session\""), "{text}");
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), cmd);
    }

    #[test]
    fn a_batch_of_lapses_is_one_logged_command_and_the_single_form_still_decodes() {
        let text = r#"{"op":"sessions_expired","sessions":[{"host":"agent-1","session_id":"s1"},{"host":"agent-2","session_id":"s2"}]}"#;
        let Command::SessionsExpired { sessions } = serde_json::from_str(text).unwrap() else {
            panic!("not a batch of lapses");
        };
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[1].host.as_str(), "agent-2");
        let old = r#"{"op":"session_expired","host":"agent-1","session_id":"s1"}"#;
        assert!(matches!(
            serde_json::from_str::<Command>(old).unwrap(),
            Command::SessionExpired { .. }
        ));
    }

    #[test]
    fn a_logged_command_with_a_bad_name_does_not_decode() {
        let text = r#"{"op":"session_expired","host":"Bad Host","session_id":"x"}"#;
        assert!(serde_json::from_str::<Command>(text).is_err());
    }
}
