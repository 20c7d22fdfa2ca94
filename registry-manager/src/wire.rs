//! The edge between domain values and the `proto` wire types: every conversion in one place.

use bytes::Bytes;
use prost::Message;
use proto::v1 as pb;
use topology::{PackageStatus, PackageType};

use crate::command::{AgentStatus, OperatorAction, Registration};
use crate::delta::{Delta, HostView};
use crate::error::RegistryError;
use crate::state::State;

/// A domain status as its wire enum value.
pub fn status_to_proto(status: PackageStatus) -> pb::PackageStatus {
    match status {
        PackageStatus::Starting => pb::PackageStatus::Starting,
        PackageStatus::Running => pb::PackageStatus::Running,
        PackageStatus::Failing => pb::PackageStatus::Failing,
        PackageStatus::Stopped => pb::PackageStatus::Stopped,
        PackageStatus::Draining => pb::PackageStatus::Draining,
        PackageStatus::Withdrawn => pb::PackageStatus::Withdrawn,
    }
}

/// A status an agent sent. `unspecified_as` is what UNSPECIFIED means (None: refused).
pub fn agent_status_from_proto(
    value: i32,
    unspecified_as: Option<AgentStatus>,
) -> Result<AgentStatus, RegistryError> {
    let bad = |reason: String| RegistryError::InvalidArgument {
        field: "status",
        reason,
    };
    match pb::PackageStatus::try_from(value) {
        Ok(pb::PackageStatus::Starting) => Ok(AgentStatus::Starting),
        Ok(pb::PackageStatus::Running) => Ok(AgentStatus::Running),
        Ok(pb::PackageStatus::Failing) => Ok(AgentStatus::Failing),
        Ok(pb::PackageStatus::Stopped) => Ok(AgentStatus::Stopped),
        Ok(pb::PackageStatus::Unspecified) => unspecified_as.ok_or_else(|| {
            bad("status is unspecified; an agent reports starting, running, failing or stopped".into())
        }),
        Ok(s @ (pb::PackageStatus::Draining | pb::PackageStatus::Withdrawn)) => Err(bad(format!(
            "{} is set by operators (`registry-manager package drain|withdraw`), not reported by agents",
            s.as_str_name()
        ))),
        Err(_) => Err(bad(format!("unknown package status value {value}"))),
    }
}

/// An operator action from the wire.
pub fn action_from_proto(value: i32) -> Result<OperatorAction, RegistryError> {
    match pb::PackageAction::try_from(value) {
        Ok(pb::PackageAction::Drain) => Ok(OperatorAction::Drain),
        Ok(pb::PackageAction::Withdraw) => Ok(OperatorAction::Withdraw),
        Ok(pb::PackageAction::Restore) => Ok(OperatorAction::Restore),
        _ => Err(RegistryError::InvalidArgument {
            field: "action",
            reason: format!("action value {value} is not one of drain, withdraw, restore"),
        }),
    }
}

/// An operator action for the wire (the status page's buttons call the `Admin` service).
pub fn action_to_proto(action: OperatorAction) -> pb::PackageAction {
    match action {
        OperatorAction::Drain => pb::PackageAction::Drain,
        OperatorAction::Withdraw => pb::PackageAction::Withdraw,
        OperatorAction::Restore => pb::PackageAction::Restore,
    }
}

/// The packages of an `OpenSession` request, validated.
pub fn registrations_from_proto(
    packages: Vec<pb::Package>,
) -> Result<Vec<Registration>, RegistryError> {
    packages
        .into_iter()
        .map(|p| {
            Ok(Registration {
                package_type: PackageType::new(p.r#type)?,
                endpoint: p.endpoint,
                status: agent_status_from_proto(p.status, Some(AgentStatus::Starting))?,
            })
        })
        .collect()
}

/// One host entry on the wire.
pub fn host_to_proto(view: &HostView) -> pb::HostEntry {
    pb::HostEntry {
        host: view.host.to_string(),
        alive: view.alive,
        packages: view
            .packages
            .iter()
            .map(|p| pb::Package {
                r#type: p.package_type.to_string(),
                endpoint: p.endpoint.clone(),
                status: status_to_proto(p.status) as i32,
            })
            .collect(),
    }
}

/// A delta encoded for the two kinds of watchers, once (shared by every watcher of its revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedDelta {
    /// Whole host entries for every host that changed (every watcher understands it).
    pub full: Bytes,
    /// For watchers that take `status_changes`: a status change as that package's status
    /// alone, a lapsed session as the host's name alone. `None` when the delta has neither (the
    /// same as `full`).
    pub compact: Option<Bytes>,
}

impl EncodedDelta {
    /// The encoding a watcher gets.
    pub fn for_watcher(&self, status_changes: bool) -> &Bytes {
        match (&self.compact, status_changes) {
            (Some(compact), true) => compact,
            _ => &self.full,
        }
    }

    /// Bytes held by both encodings.
    pub fn len(&self) -> usize {
        self.full.len() + self.compact.as_ref().map_or(0, Bytes::len)
    }

    /// True when both encodings are empty (never: a delta carries its revision).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for EncodedDelta {
    /// A delta with no status change: one encoding for every watcher.
    fn from(full: Bytes) -> Self {
        EncodedDelta {
            full,
            compact: None,
        }
    }
}

/// A delta, encoded once for each kind of watcher (see [`EncodedDelta`]).
pub fn encode_delta(delta: &Delta) -> EncodedDelta {
    let removed_hosts: Vec<String> = delta.removed_hosts.iter().map(|h| h.to_string()).collect();
    let full = pb::Delta {
        revision: delta.revision.0,
        upserts: delta.upserts.iter().map(host_to_proto).collect(),
        removed_hosts: removed_hosts.clone(),
        topology_yaml: delta.topology_yaml.clone(),
        status_changes: Vec::new(),
        lapsed_hosts: Vec::new(),
    };
    let compact = (!delta.status_changes.is_empty() || !delta.lapsed_hosts.is_empty()).then(|| {
        let changed: std::collections::BTreeSet<&topology::HostName> = delta
            .status_changes
            .iter()
            .map(|c| &c.host)
            .chain(&delta.lapsed_hosts)
            .collect();
        let msg = pb::Delta {
            revision: delta.revision.0,
            upserts: delta
                .upserts
                .iter()
                .filter(|v| !changed.contains(&v.host))
                .map(host_to_proto)
                .collect(),
            removed_hosts,
            topology_yaml: delta.topology_yaml.clone(),
            status_changes: delta
                .status_changes
                .iter()
                .map(|c| pb::StatusChange {
                    host: c.host.to_string(),
                    r#type: c.package_type.to_string(),
                    status: status_to_proto(c.status) as i32,
                })
                .collect(),
            lapsed_hosts: delta.lapsed_hosts.iter().map(|h| h.to_string()).collect(),
        };
        Bytes::from(msg.encode_to_vec())
    });
    EncodedDelta {
        full: Bytes::from(full.encode_to_vec()),
        compact,
    }
}

/// The whole registry, encoded once per revision for every watcher that needs a snapshot.
pub fn encode_state(state: &State) -> Bytes {
    let msg = pb::RegistryState {
        revision: state.revision().0,
        topology_yaml: state.topology_yaml().to_owned(),
        hosts: state.host_views().map(|v| host_to_proto(&v)).collect(),
    };
    Bytes::from(msg.encode_to_vec())
}

/// A status from the wire (a watch payload); UNSPECIFIED and unknown values are refused.
pub fn status_from_proto(value: i32) -> Result<PackageStatus, String> {
    match pb::PackageStatus::try_from(value) {
        Ok(pb::PackageStatus::Starting) => Ok(PackageStatus::Starting),
        Ok(pb::PackageStatus::Running) => Ok(PackageStatus::Running),
        Ok(pb::PackageStatus::Failing) => Ok(PackageStatus::Failing),
        Ok(pb::PackageStatus::Stopped) => Ok(PackageStatus::Stopped),
        Ok(pb::PackageStatus::Draining) => Ok(PackageStatus::Draining),
        Ok(pb::PackageStatus::Withdrawn) => Ok(PackageStatus::Withdrawn),
        _ => Err(format!("unknown package status value {value}")),
    }
}

/// One host entry from the wire.
pub fn host_from_proto(entry: pb::HostEntry) -> Result<HostView, String> {
    Ok(HostView {
        host: topology::HostName::new(entry.host).map_err(|e| e.to_string())?,
        alive: entry.alive,
        packages: entry
            .packages
            .into_iter()
            .map(|p| {
                Ok(crate::delta::PackageView {
                    package_type: PackageType::new(p.r#type).map_err(|e| e.to_string())?,
                    endpoint: p.endpoint,
                    status: status_from_proto(p.status)?,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}

/// An encoded `Delta` (a watch payload), decoded into the domain form.
pub fn decode_delta(bytes: &[u8]) -> Result<Delta, String> {
    let d = pb::Delta::decode(bytes).map_err(|e| format!("a delta does not decode: {e}"))?;
    Ok(Delta {
        revision: topology::Revision(d.revision),
        upserts: d
            .upserts
            .into_iter()
            .map(host_from_proto)
            .collect::<Result<_, _>>()?,
        removed_hosts: d
            .removed_hosts
            .into_iter()
            .map(|h| topology::HostName::new(h).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        topology_yaml: d.topology_yaml,
        status_changes: d
            .status_changes
            .into_iter()
            .map(|c| {
                Ok(crate::delta::StatusChange {
                    host: topology::HostName::new(c.host).map_err(|e| e.to_string())?,
                    package_type: PackageType::new(c.r#type).map_err(|e| e.to_string())?,
                    status: status_from_proto(c.status)?,
                })
            })
            .collect::<Result<_, String>>()?,
        lapsed_hosts: d
            .lapsed_hosts
            .into_iter()
            .map(|h| topology::HostName::new(h).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
    })
}

/// An encoded `RegistryState` (a watch payload): its revision, topology YAML and every host.
pub fn decode_state(bytes: &[u8]) -> Result<(u64, String, Vec<HostView>), String> {
    let s = pb::RegistryState::decode(bytes)
        .map_err(|e| format!("a registry snapshot does not decode: {e}"))?;
    let hosts = s
        .hosts
        .into_iter()
        .map(host_from_proto)
        .collect::<Result<_, _>>()?;
    Ok((s.revision, s.topology_yaml, hosts))
}

/// A watch event carrying a pre-encoded delta.
pub fn delta_event(revision: u64, delta: Bytes) -> pb::WatchEvent {
    pb::WatchEvent {
        revision,
        payload: Some(pb::watch_event::Payload::Delta(delta)),
        more: false,
        history: String::new(),
    }
}

/// A watch event carrying a pre-encoded snapshot.
pub fn snapshot_event(revision: u64, snapshot: Bytes) -> pb::WatchEvent {
    pb::WatchEvent {
        revision,
        payload: Some(pb::watch_event::Payload::Snapshot(snapshot)),
        more: false,
        history: String::new(),
    }
}

/// The packages of a host record, with effective statuses.
pub fn packages_to_proto(
    packages: &std::collections::BTreeMap<PackageType, crate::state::PackageRecord>,
) -> Vec<pb::Package> {
    packages
        .iter()
        .map(|(t, p)| pb::Package {
            r#type: t.to_string(),
            endpoint: p.endpoint.clone(),
            status: status_to_proto(p.effective()) as i32,
        })
        .collect()
}

/// A route explanation (the command-line contract (docs/manager.md, docs/agent.md)) on the wire, computed at `revision`.
pub fn explanation_to_proto(
    e: &topology::Explanation,
    revision: topology::Revision,
) -> pb::RouteExplanation {
    pb::RouteExplanation {
        host: e.host.to_string(),
        r#type: e.package_type.to_string(),
        chosen: e.chosen.as_ref().map(ToString::to_string),
        endpoint: e.endpoint.clone(),
        route: e.route.iter().map(ToString::to_string).collect(),
        candidates: e
            .candidates
            .iter()
            .map(|c| pb::RouteCandidate {
                host: c.host.to_string(),
                domain: c
                    .domain
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                tier: c.tier.map(|t| t.name().to_owned()).unwrap_or_default(),
                eligible: c.eligible,
                reason: c.reason.clone().unwrap_or_default(),
                endpoint: c.endpoint.clone(),
            })
            .collect(),
        revision: revision.0,
        stale: false,
    }
}
