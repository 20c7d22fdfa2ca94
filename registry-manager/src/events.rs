//! What each revision changed, for `registry-manager events`: a copy of the registry kept from
//! a watch stream, and the changes a delta (or a snapshot after a resync) makes to it, as
//! plain values. Pure: the command line does the watching and the printing.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use topology::{HostName, PackageStatus, PackageType};

use crate::delta::{Delta, HostView, PackageView};

/// One change of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new topology was applied.
    Topology,
    /// A host got its first registry entry (its agent opened a session).
    HostAdded { host: HostName, alive: bool },
    /// A host's entry was dropped (removed from the topology).
    HostRemoved { host: HostName },
    /// A host's session lapsed (`alive: false`) or a new one opened (`alive: true`).
    Alive { host: HostName, alive: bool },
    /// A package was registered.
    PackageAdded {
        host: HostName,
        package_type: PackageType,
        endpoint: String,
        status: PackageStatus,
    },
    /// A package is no longer registered.
    PackageRemoved {
        host: HostName,
        package_type: PackageType,
    },
    /// A package's effective status changed (an agent's report or an operator's action).
    Status {
        host: HostName,
        package_type: PackageType,
        from: PackageStatus,
        to: PackageStatus,
    },
    /// A package's endpoint changed.
    Endpoint {
        host: HostName,
        package_type: PackageType,
        from: String,
        to: String,
    },
}

impl Change {
    /// The change in words.
    pub fn to_text(&self) -> String {
        match self {
            Change::Topology => "topology applied".into(),
            Change::HostAdded { host, alive: true } => format!("{host} joined (alive)"),
            Change::HostAdded { host, alive: false } => format!("{host} joined (not alive)"),
            Change::HostRemoved { host } => format!("{host} removed"),
            Change::Alive { host, alive: true } => format!("{host} alive"),
            Change::Alive { host, alive: false } => format!("{host} lost (session lapsed)"),
            Change::PackageAdded {
                host,
                package_type,
                endpoint,
                status,
            } => format!("{host} {package_type} added ({status}, {endpoint})"),
            Change::PackageRemoved { host, package_type } => {
                format!("{host} {package_type} removed")
            }
            Change::Status {
                host,
                package_type,
                from,
                to,
            } => format!("{host} {package_type} {from} -> {to}"),
            Change::Endpoint {
                host,
                package_type,
                from,
                to,
            } => format!("{host} {package_type} endpoint {from} -> {to}"),
        }
    }

    /// The change as a JSON object with a `kind`.
    pub fn to_json(&self) -> Value {
        match self {
            Change::Topology => json!({ "kind": "topology" }),
            Change::HostAdded { host, alive } => {
                json!({ "kind": "host_added", "host": host.as_str(), "alive": alive })
            }
            Change::HostRemoved { host } => {
                json!({ "kind": "host_removed", "host": host.as_str() })
            }
            Change::Alive { host, alive } => {
                json!({ "kind": "alive", "host": host.as_str(), "alive": alive })
            }
            Change::PackageAdded {
                host,
                package_type,
                endpoint,
                status,
            } => json!({
                "kind": "package_added", "host": host.as_str(), "type": package_type.as_str(),
                "endpoint": endpoint, "status": status.as_str(),
            }),
            Change::PackageRemoved { host, package_type } => json!({
                "kind": "package_removed", "host": host.as_str(), "type": package_type.as_str(),
            }),
            Change::Status {
                host,
                package_type,
                from,
                to,
            } => json!({
                "kind": "status", "host": host.as_str(), "type": package_type.as_str(),
                "from": from.as_str(), "to": to.as_str(),
            }),
            Change::Endpoint {
                host,
                package_type,
                from,
                to,
            } => json!({
                "kind": "endpoint", "host": host.as_str(), "type": package_type.as_str(),
                "from": from, "to": to,
            }),
        }
    }
}

/// The one-line text form of a revision's changes.
pub fn text_line(revision: u64, changes: &[Change]) -> String {
    let what: Vec<String> = changes.iter().map(Change::to_text).collect();
    format!("revision {revision}: {}", what.join("; "))
}

/// The JSON-lines form of a revision's changes (`resync`: computed against a snapshot after
/// the stream could not resume with deltas).
pub fn json_line(revision: u64, changes: &[Change], resync: bool) -> String {
    let mut v = json!({
        "revision": revision,
        "changes": changes.iter().map(Change::to_json).collect::<Vec<_>>(),
    });
    if resync {
        v["resync"] = json!(true);
    }
    v.to_string()
}

/// The registry as a watcher of `events` holds it.
#[derive(Debug, Clone, Default)]
pub struct EventCopy {
    /// The last revision applied (0: none yet).
    pub revision: u64,
    /// The history id of the stream it came from.
    pub history: String,
    topology_yaml: String,
    hosts: BTreeMap<HostName, HostView>,
}

impl EventCopy {
    /// Applies a delta; the changes it made.
    pub fn apply_delta(&mut self, delta: &Delta) -> Vec<Change> {
        let mut out = Vec::new();
        if let Some(yaml) = &delta.topology_yaml {
            if *yaml != self.topology_yaml {
                out.push(Change::Topology);
                self.topology_yaml = yaml.clone();
            }
        }
        for view in &delta.upserts {
            out.extend(host_changes(self.hosts.get(&view.host), view));
            self.hosts.insert(view.host.clone(), view.clone());
        }
        for host in &delta.removed_hosts {
            if self.hosts.remove(host).is_some() {
                out.push(Change::HostRemoved { host: host.clone() });
            }
        }
        self.revision = delta.revision.0;
        out
    }

    /// Replaces the copy with a snapshot; the changes from the old copy to it.
    pub fn replace(
        &mut self,
        revision: u64,
        topology_yaml: String,
        hosts: Vec<HostView>,
    ) -> Vec<Change> {
        let removed: Vec<HostName> = self
            .hosts
            .keys()
            .filter(|h| !hosts.iter().any(|v| &v.host == *h))
            .cloned()
            .collect();
        let delta = Delta {
            revision: topology::Revision(revision),
            upserts: hosts,
            removed_hosts: removed,
            topology_yaml: Some(topology_yaml),
            status_changes: Vec::new(),
            lapsed_hosts: Vec::new(),
        };
        self.apply_delta(&delta)
    }
}

fn host_changes(old: Option<&HostView>, new: &HostView) -> Vec<Change> {
    let mut out = Vec::new();
    let empty = Vec::new();
    let old_packages: &Vec<PackageView> = match old {
        None => {
            out.push(Change::HostAdded {
                host: new.host.clone(),
                alive: new.alive,
            });
            &empty
        }
        Some(o) => {
            if o.alive != new.alive {
                out.push(Change::Alive {
                    host: new.host.clone(),
                    alive: new.alive,
                });
            }
            &o.packages
        }
    };
    for p in &new.packages {
        match old_packages
            .iter()
            .find(|o| o.package_type == p.package_type)
        {
            None => out.push(Change::PackageAdded {
                host: new.host.clone(),
                package_type: p.package_type.clone(),
                endpoint: p.endpoint.clone(),
                status: p.status,
            }),
            Some(o) => {
                if o.status != p.status {
                    out.push(Change::Status {
                        host: new.host.clone(),
                        package_type: p.package_type.clone(),
                        from: o.status,
                        to: p.status,
                    });
                }
                if o.endpoint != p.endpoint {
                    out.push(Change::Endpoint {
                        host: new.host.clone(),
                        package_type: p.package_type.clone(),
                        from: o.endpoint.clone(),
                        to: p.endpoint.clone(),
                    });
                }
            }
        }
    }
    for o in old_packages {
        if !new
            .packages
            .iter()
            .any(|p| p.package_type == o.package_type)
        {
            out.push(Change::PackageRemoved {
                host: new.host.clone(),
                package_type: o.package_type.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use topology::Revision;

    const CCM: &str = "command-control-manager";

    fn view(host: &str, alive: bool, status: Option<PackageStatus>) -> HostView {
        HostView {
            host: HostName::new(host).unwrap(),
            alive,
            packages: status
                .map(|s| PackageView {
                    package_type: PackageType::new(CCM).unwrap(),
                    endpoint: "127.0.0.1:7001".into(),
                    status: s,
                })
                .into_iter()
                .collect(),
        }
    }

    fn delta(revision: u64, upserts: Vec<HostView>) -> Delta {
        Delta {
            revision: Revision(revision),
            upserts,
            removed_hosts: Vec::new(),
            topology_yaml: None,
            status_changes: Vec::new(),
            lapsed_hosts: Vec::new(),
        }
    }

    #[test]
    fn a_drain_reads_as_a_status_change_and_a_lapse_as_a_lost_host() {
        let mut c = EventCopy::default();
        let first = c.apply_delta(&delta(
            1,
            vec![view("agent-3", true, Some(PackageStatus::Running))],
        ));
        assert_eq!(
            text_line(1, &first),
            format!(
                "revision 1: agent-3 joined (alive); agent-3 {CCM} added (running, 127.0.0.1:7001)"
            )
        );
        let drained = c.apply_delta(&delta(
            2,
            vec![view("agent-3", true, Some(PackageStatus::Draining))],
        ));
        assert_eq!(
            text_line(2, &drained),
            format!("revision 2: agent-3 {CCM} running -> draining")
        );
        let v: Value = serde_json::from_str(&json_line(2, &drained, false)).unwrap();
        assert_eq!(v["changes"][0]["kind"], "status");
        assert_eq!(v["changes"][0]["to"], "draining");
        assert!(v.get("resync").is_none());
        let lost = c.apply_delta(&delta(
            3,
            vec![view("agent-3", false, Some(PackageStatus::Draining))],
        ));
        assert_eq!(
            lost,
            vec![Change::Alive {
                host: HostName::new("agent-3").unwrap(),
                alive: false
            }]
        );
        assert_eq!(c.revision, 3);
    }

    #[test]
    fn a_snapshot_after_a_gap_yields_only_what_differs() {
        let mut c = EventCopy::default();
        c.replace(
            5,
            "version: 1".into(),
            vec![
                view("agent-1", true, Some(PackageStatus::Running)),
                view("agent-2", true, None),
            ],
        );
        let changes = c.replace(
            9,
            "version: 1".into(),
            vec![view("agent-1", true, Some(PackageStatus::Withdrawn))],
        );
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(
            changes[0],
            Change::Status {
                to: PackageStatus::Withdrawn,
                ..
            }
        ));
        assert!(matches!(&changes[1], Change::HostRemoved { host } if host.as_str() == "agent-2"));
        assert_eq!(c.revision, 9);
    }
}
