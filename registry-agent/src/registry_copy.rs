//! The agent's copy of the registry: the applied topology and the registry snapshot at one
//! revision, kept up to date by the manager's watch stream (snapshot, then deltas).
//!
//! This is also the one place where the registry's wire types (`proto::v1::{RegistryState,
//! Delta, HostEntry}`) are converted to the `topology` crate's domain types.

use std::collections::BTreeMap;
use std::sync::Arc;

use proto::v1 as pb;
use topology::{
    HostName, HostState, PackageState, PackageStatus, PackageType, RegistrySnapshot, Revision,
    Topology,
};

/// Why a watch event could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// The payload is not a valid encoded message.
    #[error("watch event at revision {revision} does not decode: {message}")]
    Decode {
        /// Revision of the event.
        revision: u64,
        /// Decoder message.
        message: String,
    },
    /// A delta does not follow the copy's revision: the stream must restart from a snapshot.
    #[error("delta for revision {got} does not follow the copy's revision {have}; a fresh snapshot is needed")]
    Gap {
        /// The copy's revision.
        have: u64,
        /// The delta's revision.
        got: u64,
    },
    /// The event carries no payload.
    #[error("watch event at revision {0} carries no payload")]
    Empty(u64),
    /// The event is one part of a payload sent in parts (`more = true`): it must be
    /// reassembled (`proto::watch_parts::Reassembler`) before it is applied.
    #[error("watch event at revision {0} is an unassembled part (more = true); reassemble the parts before applying")]
    Unassembled(u64),
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The whole copy was replaced.
    Snapshot,
    /// A delta was applied.
    Delta,
    /// The event was older than the copy (already applied); nothing changed.
    Ignored,
}

/// The registry copy.
#[derive(Debug, Clone, Default)]
pub struct RegistryCopy {
    /// The topology YAML as received (canonical form); empty when none was applied.
    pub topology_yaml: String,
    /// The parsed topology; `None` when none was applied (or it failed to parse, logged).
    pub topology: Option<Arc<Topology>>,
    /// Hosts and packages at `snapshot.revision`.
    pub snapshot: RegistrySnapshot,
    /// The registry's history id (empty: not known); resumption sends it, so the copy only
    /// ever receives deltas of its own history.
    pub history: String,
}

impl RegistryCopy {
    /// The copy's revision (0: nothing received yet).
    pub fn revision(&self) -> u64 {
        self.snapshot.revision.0
    }

    /// True once a snapshot has been received (now or before a restart).
    pub fn has_data(&self) -> bool {
        self.revision() > 0 || self.topology.is_some()
    }

    /// Builds a copy from a full registry state.
    pub fn from_state(state: &pb::RegistryState) -> RegistryCopy {
        let mut copy = RegistryCopy::default();
        copy.set_topology(&state.topology_yaml);
        copy.snapshot.revision = Revision(state.revision);
        for e in &state.hosts {
            if let Some((name, host)) = host_from_wire(e) {
                copy.snapshot.hosts.insert(name, host);
            }
        }
        copy
    }

    fn set_topology(&mut self, yaml: &str) {
        if yaml == self.topology_yaml && (self.topology.is_some() || yaml.is_empty()) {
            return;
        }
        self.topology_yaml = yaml.to_owned();
        self.topology = if yaml.trim().is_empty() {
            None
        } else {
            match Topology::from_yaml("registry topology", yaml) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    tracing::error!(error = %e, "the registry sent a topology this agent cannot parse; routing without it");
                    None
                }
            }
        };
    }

    /// Applies a decoded delta. Deltas at or below the copy's revision are ignored; a delta that
    /// skips revisions, changes the status of a package the copy does not hold or lapses a host
    /// it does not hold, is a [`CopyError::Gap`] (nothing is applied: the stream restarts from a
    /// snapshot).
    pub fn apply_delta(&mut self, delta: &pb::Delta) -> Result<Applied, CopyError> {
        let have = self.revision();
        if delta.revision <= have {
            return Ok(Applied::Ignored);
        }
        let gap = CopyError::Gap {
            have,
            got: delta.revision,
        };
        if delta.revision != have + 1 {
            return Err(gap);
        }
        // A host given whole in `upserts` takes no separate change in the same delta.
        let whole = |h: &str| delta.upserts.iter().any(|u| u.host == h);
        let held = |c: &pb::StatusChange| {
            whole(&c.host)
                || self
                    .snapshot
                    .hosts
                    .get(c.host.as_str())
                    .is_some_and(|h| h.packages.contains_key(c.r#type.as_str()))
        };
        let known = |h: &String| whole(h) || self.snapshot.hosts.contains_key(h.as_str());
        if !delta.status_changes.iter().all(held) || !delta.lapsed_hosts.iter().all(known) {
            return Err(gap);
        }
        if let Some(yaml) = &delta.topology_yaml {
            self.set_topology(yaml);
        }
        for name in &delta.removed_hosts {
            self.snapshot.hosts.remove(name.as_str());
        }
        for e in &delta.upserts {
            if let Some((name, host)) = host_from_wire(e) {
                self.snapshot.hosts.insert(name, host);
            }
        }
        for c in delta.status_changes.iter().filter(|c| !whole(&c.host)) {
            let package = self
                .snapshot
                .hosts
                .get_mut(c.host.as_str())
                .and_then(|h| h.packages.get_mut(c.r#type.as_str()));
            if let Some(p) = package {
                p.status = status_from_wire(c.status);
            }
        }
        for h in delta.lapsed_hosts.iter().filter(|h| !whole(h)) {
            if let Some(host) = self.snapshot.hosts.get_mut(h.as_str()) {
                host.alive = false;
            }
        }
        self.snapshot.revision = Revision(delta.revision);
        Ok(Applied::Delta)
    }

    /// `delta` with its status changes and lapsed hosts turned into the whole entries of their
    /// hosts as this copy now holds them (after [`RegistryCopy::apply_delta`]): what the stored
    /// copy writes.
    fn with_whole_entries(&self, mut delta: pb::Delta) -> pb::Delta {
        let changes = std::mem::take(&mut delta.status_changes);
        let lapsed = std::mem::take(&mut delta.lapsed_hosts);
        for h in changes.into_iter().map(|c| c.host).chain(lapsed) {
            if delta.upserts.iter().any(|u| u.host == h) {
                continue;
            }
            if let Some((name, host)) = self.snapshot.hosts.get_key_value(h.as_str()) {
                delta.upserts.push(host_to_wire(name, host));
            }
        }
        delta
    }

    /// Decodes and applies one watch event. Returns what was done and the decoded payload
    /// (for persistence).
    pub fn apply_event(&mut self, ev: &pb::WatchEvent) -> Result<(Applied, Decoded), CopyError> {
        use prost::Message;
        let decode_err = |e: prost::DecodeError| CopyError::Decode {
            revision: ev.revision,
            message: e.to_string(),
        };
        if ev.more {
            // A prefix of a message can decode; never apply one.
            return Err(CopyError::Unassembled(ev.revision));
        }
        match &ev.payload {
            Some(pb::watch_event::Payload::Snapshot(bytes)) => {
                let state = pb::RegistryState::decode(bytes.clone()).map_err(decode_err)?;
                *self = RegistryCopy::from_state_keeping(&state, self);
                self.history = ev.history.clone();
                Ok((Applied::Snapshot, Decoded::Snapshot(state)))
            }
            Some(pb::watch_event::Payload::Delta(bytes)) => {
                let delta = pb::Delta::decode(bytes.clone()).map_err(decode_err)?;
                if !ev.history.is_empty() && !self.history.is_empty() && ev.history != self.history
                {
                    // Never apply a delta of another history: resync with a snapshot.
                    return Err(CopyError::Gap {
                        have: self.revision(),
                        got: delta.revision,
                    });
                }
                let applied = self.apply_delta(&delta)?;
                if self.history.is_empty() {
                    self.history = ev.history.clone();
                }
                Ok((applied, Decoded::Delta(self.with_whole_entries(delta))))
            }
            None => Err(CopyError::Empty(ev.revision)),
        }
    }

    /// Like [`RegistryCopy::from_state`] but reuses the parsed topology of `old` when the YAML
    /// did not change (parsing a large tree again for every snapshot is wasted work).
    fn from_state_keeping(state: &pb::RegistryState, old: &RegistryCopy) -> RegistryCopy {
        let mut copy = RegistryCopy {
            topology_yaml: old.topology_yaml.clone(),
            topology: old.topology.clone(),
            ..Default::default()
        };
        copy.set_topology(&state.topology_yaml);
        copy.snapshot.revision = Revision(state.revision);
        for e in &state.hosts {
            if let Some((name, host)) = host_from_wire(e) {
                copy.snapshot.hosts.insert(name, host);
            }
        }
        copy
    }

    /// The copy as a wire `RegistryState` (used by tests and persistence round trips).
    pub fn to_state(&self) -> pb::RegistryState {
        pb::RegistryState {
            revision: self.revision(),
            topology_yaml: self.topology_yaml.clone(),
            hosts: self
                .snapshot
                .hosts
                .iter()
                .map(|(n, h)| host_to_wire(n, h))
                .collect(),
        }
    }
}

/// A decoded watch payload.
#[derive(Debug, Clone)]
pub enum Decoded {
    /// A full state.
    Snapshot(pb::RegistryState),
    /// A delta, status changes given as their hosts' whole entries (as the stored copy keeps
    /// them).
    Delta(pb::Delta),
}

/// Wire status to domain status. `UNSPECIFIED` (or an unknown number) is read as `stopped`:
/// never routed to.
pub fn status_from_wire(s: i32) -> PackageStatus {
    match pb::PackageStatus::try_from(s).unwrap_or(pb::PackageStatus::Unspecified) {
        pb::PackageStatus::Starting => PackageStatus::Starting,
        pb::PackageStatus::Running => PackageStatus::Running,
        pb::PackageStatus::Failing => PackageStatus::Failing,
        pb::PackageStatus::Draining => PackageStatus::Draining,
        pb::PackageStatus::Withdrawn => PackageStatus::Withdrawn,
        pb::PackageStatus::Stopped | pb::PackageStatus::Unspecified => PackageStatus::Stopped,
    }
}

/// Domain status to wire status.
pub fn status_to_wire(s: PackageStatus) -> pb::PackageStatus {
    match s {
        PackageStatus::Starting => pb::PackageStatus::Starting,
        PackageStatus::Running => pb::PackageStatus::Running,
        PackageStatus::Failing => pb::PackageStatus::Failing,
        PackageStatus::Stopped => pb::PackageStatus::Stopped,
        PackageStatus::Draining => pb::PackageStatus::Draining,
        PackageStatus::Withdrawn => pb::PackageStatus::Withdrawn,
    }
}

/// A wire host entry as a domain host. Entries with names breaking the name rules (docs/topology.md) are dropped (logged).
pub fn host_from_wire(e: &pb::HostEntry) -> Option<(HostName, HostState)> {
    let name = match HostName::new(e.host.clone()) {
        Ok(n) => n,
        Err(err) => {
            tracing::warn!(error = %err, "registry entry skipped");
            return None;
        }
    };
    let mut packages = BTreeMap::new();
    for p in &e.packages {
        match PackageType::new(p.r#type.clone()) {
            Ok(t) => {
                packages.insert(
                    t,
                    PackageState {
                        endpoint: p.endpoint.clone(),
                        status: status_from_wire(p.status),
                    },
                );
            }
            Err(err) => tracing::warn!(host = %name, error = %err, "package entry skipped"),
        }
    }
    Some((
        name,
        HostState {
            alive: e.alive,
            packages,
        },
    ))
}

/// A domain host as a wire host entry.
pub fn host_to_wire(name: &HostName, h: &HostState) -> pb::HostEntry {
    pb::HostEntry {
        host: name.as_str().to_owned(),
        alive: h.alive,
        packages: h
            .packages
            .iter()
            .map(|(t, p)| pb::Package {
                r#type: t.as_str().to_owned(),
                endpoint: p.endpoint.clone(),
                status: status_to_wire(p.status) as i32,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    pub(crate) const TOPO: &str = "version: 1\ndomain: framework\nhosts: [fm]\nsubdomains:\n  - domain: subdomain-1\n    hosts: [agent-1, agent-2]\n";

    fn entry(host: &str, alive: bool, pkgs: &[(&str, &str, pb::PackageStatus)]) -> pb::HostEntry {
        pb::HostEntry {
            host: host.into(),
            alive,
            packages: pkgs
                .iter()
                .map(|(t, e, s)| pb::Package {
                    r#type: (*t).into(),
                    endpoint: (*e).into(),
                    status: *s as i32,
                })
                .collect(),
        }
    }

    fn snapshot_event(rev: u64) -> pb::WatchEvent {
        let state = pb::RegistryState {
            revision: rev,
            topology_yaml: TOPO.into(),
            hosts: vec![entry(
                "fm",
                true,
                &[("ccm", "127.0.0.1:7001", pb::PackageStatus::Running)],
            )],
        };
        pb::WatchEvent {
            revision: rev,
            payload: Some(pb::watch_event::Payload::Snapshot(
                state.encode_to_vec().into(),
            )),
            more: false,
            history: String::new(),
        }
    }

    fn delta_event(d: pb::Delta) -> pb::WatchEvent {
        pb::WatchEvent {
            revision: d.revision,
            payload: Some(pb::watch_event::Payload::Delta(d.encode_to_vec().into())),
            more: false,
            history: String::new(),
        }
    }

    #[test]
    fn a_status_change_updates_one_package_and_is_stored_as_the_whole_entry() {
        let mut c = RegistryCopy::default();
        c.apply_event(&snapshot_event(5)).unwrap();
        let change = |rev: u64, ty: &str| pb::Delta {
            revision: rev,
            status_changes: vec![pb::StatusChange {
                host: "fm".into(),
                r#type: ty.into(),
                status: pb::PackageStatus::Draining as i32,
            }],
            ..Default::default()
        };
        let (applied, decoded) = c.apply_event(&delta_event(change(6, "ccm"))).unwrap();
        assert_eq!(applied, Applied::Delta);
        assert_eq!(c.revision(), 6);
        let fm = &c.snapshot.hosts["fm"];
        assert_eq!(fm.packages["ccm"].status, PackageStatus::Draining);
        assert_eq!(
            fm.packages["ccm"].endpoint, "127.0.0.1:7001",
            "the rest is kept"
        );
        assert!(fm.alive);
        let Decoded::Delta(stored) = decoded else {
            panic!("a delta")
        };
        assert!(stored.status_changes.is_empty());
        assert_eq!(
            stored.upserts,
            vec![entry(
                "fm",
                true,
                &[("ccm", "127.0.0.1:7001", pb::PackageStatus::Draining)]
            )],
            "the store writes the host's whole entry"
        );
        // A change of a package the copy does not hold: the copies differ; resync, change nothing.
        let err = c.apply_event(&delta_event(change(7, "other"))).unwrap_err();
        assert_eq!(err, CopyError::Gap { have: 6, got: 7 });
        assert_eq!(c.revision(), 6);

        // A lapsed session: the host stays, not alive, its packages as they were.
        let lapse = |rev: u64, host: &str| pb::Delta {
            revision: rev,
            lapsed_hosts: vec![host.into()],
            ..Default::default()
        };
        let (_, decoded) = c.apply_event(&delta_event(lapse(7, "fm"))).unwrap();
        let fm = &c.snapshot.hosts["fm"];
        assert!(!fm.alive);
        assert_eq!(fm.packages["ccm"].status, PackageStatus::Draining);
        let Decoded::Delta(stored) = decoded else {
            panic!("a delta")
        };
        assert!(stored.lapsed_hosts.is_empty());
        assert_eq!(stored.upserts.len(), 1);
        assert!(!stored.upserts[0].alive);
        let err = c
            .apply_event(&delta_event(lapse(8, "agent-9")))
            .unwrap_err();
        assert_eq!(err, CopyError::Gap { have: 7, got: 8 });
    }

    #[test]
    fn snapshot_then_deltas() {
        let mut c = RegistryCopy::default();
        assert!(!c.has_data());
        assert_eq!(
            c.apply_event(&snapshot_event(5)).unwrap().0,
            Applied::Snapshot
        );
        assert_eq!(c.revision(), 5);
        assert!(c.topology.is_some());
        assert_eq!(
            c.snapshot.hosts["fm"].packages["ccm"].status,
            PackageStatus::Running
        );

        let d = pb::Delta {
            revision: 6,
            upserts: vec![entry(
                "agent-1",
                true,
                &[("ccm", "127.0.0.1:7011", pb::PackageStatus::Draining)],
            )],
            removed_hosts: vec!["fm".into()],
            topology_yaml: None,
            status_changes: Vec::new(),
            lapsed_hosts: Vec::new(),
        };
        assert_eq!(
            c.apply_event(&delta_event(d.clone())).unwrap().0,
            Applied::Delta
        );
        assert_eq!(c.revision(), 6);
        assert!(!c.snapshot.hosts.contains_key("fm"));
        assert_eq!(
            c.snapshot.hosts["agent-1"].packages["ccm"].status,
            PackageStatus::Draining
        );
        // The same delta again is ignored.
        assert_eq!(c.apply_event(&delta_event(d)).unwrap().0, Applied::Ignored);
        // A gap is reported.
        let gap = pb::Delta {
            revision: 9,
            ..Default::default()
        };
        assert_eq!(
            c.apply_event(&delta_event(gap)).unwrap_err(),
            CopyError::Gap { have: 6, got: 9 }
        );
    }

    #[test]
    fn delta_can_replace_the_topology_and_bad_names_are_dropped() {
        let mut c = RegistryCopy::default();
        c.apply_event(&snapshot_event(1)).unwrap();
        let new_topo = "version: 1\ndomain: root\nhosts: [x]\n";
        let d = pb::Delta {
            revision: 2,
            upserts: vec![entry("Bad Host", true, &[])],
            removed_hosts: vec![],
            topology_yaml: Some(new_topo.into()),
            status_changes: Vec::new(),
            lapsed_hosts: Vec::new(),
        };
        c.apply_delta(&d).unwrap();
        assert!(c.topology.as_ref().unwrap().host("x").is_some());
        assert_eq!(c.snapshot.hosts.len(), 1);
    }

    #[test]
    fn state_round_trip() {
        let mut c = RegistryCopy::default();
        c.apply_event(&snapshot_event(3)).unwrap();
        let again = RegistryCopy::from_state(&c.to_state());
        assert_eq!(again.snapshot, c.snapshot);
        assert_eq!(again.topology_yaml, c.topology_yaml);
    }

    #[test]
    fn garbage_payload_is_an_error() {
        let ev = pb::WatchEvent {
            revision: 1,
            payload: Some(pb::watch_event::Payload::Snapshot(
                vec![0xff, 0xff, 0xff].into(),
            )),
            more: false,
            history: String::new(),
        };
        let mut c = RegistryCopy::default();
        assert!(matches!(c.apply_event(&ev), Err(CopyError::Decode { .. })));
        assert!(!c.has_data());
    }

    #[test]
    fn parts_are_applied_only_once_reassembled() {
        let whole = snapshot_event(4);
        let parts = proto::watch_parts::split(&whole, 8);
        assert!(parts.len() > 2);
        let mut c = RegistryCopy::default();
        assert_eq!(
            c.apply_event(&parts[0]).unwrap_err(),
            CopyError::Unassembled(4)
        );
        assert!(!c.has_data());
        let mut r = proto::watch_parts::Reassembler::default();
        let mut applied = 0;
        for p in parts {
            if let Some(ev) = r.push(p).unwrap() {
                assert_eq!(c.apply_event(&ev).unwrap().0, Applied::Snapshot);
                applied += 1;
            }
        }
        assert_eq!(applied, 1);
        assert_eq!(c.revision(), 4);
        assert_eq!(c.snapshot.hosts.len(), 1);
    }
}
