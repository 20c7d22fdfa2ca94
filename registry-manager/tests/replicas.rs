//! Replicas of the registry state machine: members applying the same random command batches —
//! one straight through, one restarted from snapshots at random points — reach identical
//! states, revisions, outcomes and deltas. This is what lets any member serve watch streams
//! and resume agents with deltas. Commands applied together (one raft entry, one revision)
//! leave the same registry, and their one delta leaves an agent's copy the same, as applying
//! them one by one.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use registry_manager::command::{Lapse, Proposed};
use registry_manager::{
    AgentStatus, Command, Delta, HostView, OperatorAction, Registration, SessionId, State,
};
use topology::{HostName, PackageType, Topology};

const TTL: Duration = Duration::from_secs(1);
const HOSTS: [&str; 5] = ["fm", "agent-1", "agent-2", "agent-3", "agent-4"];
const TYPES: [&str; 2] = ["command-control-manager", "event-manager"];

fn tree(with_agent_4: bool) -> String {
    let t = format!(
        "version: 1\ndomain: framework\nhosts: [fm]\nsubdomains:\n  - domain: subdomain-1\n    hosts: [agent-1, agent-2]\n    subdomains:\n      - domain: subdomain-1a\n        hosts: [agent-3{}]\n",
        if with_agent_4 { ", agent-4" } else { "" }
    );
    Topology::from_yaml("t.yaml", &t).unwrap().to_yaml()
}

fn status() -> impl Strategy<Value = AgentStatus> {
    prop_oneof![
        Just(AgentStatus::Starting),
        Just(AgentStatus::Running),
        Just(AgentStatus::Failing),
        Just(AgentStatus::Stopped),
    ]
}

fn command() -> impl Strategy<Value = Proposed> {
    let host = (0..HOSTS.len()).prop_map(|i| HostName::new(HOSTS[i]).unwrap());
    let ty = (0..TYPES.len()).prop_map(|i| PackageType::new(TYPES[i]).unwrap());
    let sid = (0..3u8).prop_map(|i| SessionId::new(format!("s{i}")));
    prop_oneof![
        any::<bool>().prop_map(|b| Proposed {
            command: Command::ApplyTopology { yaml: tree(b) },
            session: None,
        }),
        (
            host.clone(),
            sid.clone(),
            proptest::collection::vec((ty.clone(), status()), 0..3)
        )
            .prop_map(|(host, session_id, pkgs)| {
                let mut seen = std::collections::BTreeSet::new();
                let packages = pkgs
                    .into_iter()
                    .filter(|(t, _)| seen.insert(t.clone()))
                    .map(|(package_type, status)| Registration {
                        package_type,
                        endpoint: "127.0.0.1:7001".into(),
                        status,
                    })
                    .collect();
                Proposed {
                    command: Command::OpenSession {
                        host,
                        session_id,
                        packages,
                    },
                    session: None,
                }
            }),
        (host.clone(), sid.clone()).prop_map(|(host, session_id)| Proposed {
            command: Command::SessionExpired { host, session_id },
            session: None,
        }),
        proptest::collection::vec((host.clone(), sid.clone()), 0..4).prop_map(|lapses| Proposed {
            command: Command::SessionsExpired {
                sessions: lapses
                    .into_iter()
                    .map(|(host, session_id)| Lapse { host, session_id })
                    .collect(),
            },
            session: None,
        }),
        (
            host.clone(),
            ty.clone(),
            status(),
            proptest::option::of(sid)
        )
            .prop_map(|(host, package_type, status, session)| Proposed {
                command: Command::ReportStatus {
                    host,
                    package_type,
                    status,
                },
                session,
            }),
        (
            host,
            ty,
            prop_oneof![
                Just(OperatorAction::Drain),
                Just(OperatorAction::Withdraw),
                Just(OperatorAction::Restore)
            ]
        )
            .prop_map(|(host, package_type, action)| Proposed {
                command: Command::OperatorAction {
                    host,
                    package_type,
                    action,
                },
                session: None,
            }),
        Just(Proposed {
            command: Command::CreateHistory {
                history: "3f1c4a7e-0000-4000-8000-000000000001".into()
            },
            session: None,
        }),
    ]
}

/// An agent's copy of the registry, applying deltas the way agents do: the topology, removed
/// hosts, whole entries, then (in the compact encoding) status changes and lapses alone.
#[derive(Debug, Clone, PartialEq, Default)]
struct Copy {
    topology: Option<String>,
    hosts: BTreeMap<HostName, HostView>,
}

impl Copy {
    fn of(state: &State) -> Copy {
        Copy {
            topology: Some(state.topology_yaml().to_owned()),
            hosts: state.host_views().map(|v| (v.host.clone(), v)).collect(),
        }
    }

    fn apply(&mut self, d: &Delta, compact: bool) {
        if let Some(yaml) = &d.topology_yaml {
            self.topology = Some(yaml.clone());
        }
        for h in &d.removed_hosts {
            self.hosts.remove(h);
        }
        let hinted = |h: &HostName| {
            compact && (d.status_changes.iter().any(|c| c.host == *h) || d.lapsed_hosts.contains(h))
        };
        for v in d.upserts.iter().filter(|v| !hinted(&v.host)) {
            self.hosts.insert(v.host.clone(), v.clone());
        }
        if !compact {
            return;
        }
        for c in &d.status_changes {
            let host = self
                .hosts
                .get_mut(&c.host)
                .expect("a status change of a held host");
            let package = host
                .packages
                .iter_mut()
                .find(|p| p.package_type == c.package_type)
                .expect("a status change of a held package");
            package.status = c.status;
        }
        for h in &d.lapsed_hosts {
            self.hosts.get_mut(h).expect("a lapse of a held host").alive = false;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn commands_applied_together_leave_the_registry_and_every_copy_as_one_by_one(
        before in proptest::collection::vec(command(), 0..12),
        batch in proptest::collection::vec(command(), 1..12),
    ) {
        // A registry with its topology, so that most commands change something.
        let mut apart = State::new();
        let tree = Proposed { command: Command::ApplyTopology { yaml: tree(true) }, session: None };
        for p in std::iter::once(&tree).chain(&before) {
            let _ = apart.execute(p, TTL);
        }
        let mut together = State::from_bytes(&apart.to_bytes()).expect("snapshots decode");
        let start = apart.revision();
        let copy = Copy::of(&apart);
        let (mut full, mut compact) = (copy.clone(), copy.clone());
        let mut outcomes = Vec::new();
        for p in &batch {
            let (outcome, delta) = apart.execute(p, TTL);
            if let Some(d) = &delta {
                full.apply(d, false);
                compact.apply(d, true);
            }
            outcomes.push(outcome.map(|_| ()));
        }
        let (outcomes_together, delta) = together.execute_together(&batch, TTL, |_, _| {});
        let outcomes_together: Vec<_> = outcomes_together.into_iter().map(|o| o.map(|_| ())).collect();
        prop_assert_eq!(outcomes, outcomes_together, "the same commands refused, the same way");
        let made = apart.revision() > start;
        prop_assert_eq!(together.revision().0, start.0 + u64::from(made), "one revision or none");
        prop_assert_eq!(delta.is_some(), made);
        prop_assert_eq!(apart.topology_yaml(), together.topology_yaml());
        prop_assert_eq!(apart.history(), together.history());
        let views = |s: &State| s.host_views().collect::<Vec<_>>();
        prop_assert_eq!(views(&apart), views(&together));
        let expected = Copy::of(&together);
        prop_assert_eq!(&full, &expected, "one by one, whole entries");
        prop_assert_eq!(&compact, &expected, "one by one, compact");
        if let Some(d) = &delta {
            prop_assert_eq!(d.revision, together.revision());
            let hosts: std::collections::BTreeSet<_> = d.upserts.iter().map(|v| &v.host).collect();
            prop_assert_eq!(hosts.len(), d.upserts.len(), "each host once: {:?}", d);
            for (encoding, compact) in [("whole entries", false), ("compact", true)] {
                let mut c = copy.clone();
                c.apply(d, compact);
                prop_assert_eq!(&c, &expected, "together, {}: {:?}", encoding, d);
            }
        }
    }

    #[test]
    fn replicas_with_snapshot_installs_agree(
        batches in proptest::collection::vec(proptest::collection::vec(command(), 1..8), 1..25),
        installs in proptest::collection::vec(any::<bool>(), 25),
    ) {
        let mut straight = State::new();
        let mut restarted = State::new();
        for (i, batch) in batches.iter().enumerate() {
            if installs[i] {
                // A lagging member installs the leader's snapshot, then applies the log after it.
                restarted = State::from_bytes(&straight.to_bytes()).expect("snapshots decode");
            }
            for p in batch {
                let (oa, da) = straight.execute(p, TTL);
                let (ob, db) = restarted.execute(p, TTL);
                prop_assert_eq!(&oa, &ob, "same outcome for {:?}", p.command);
                prop_assert_eq!(&da, &db, "same delta for {:?}", p.command);
                if let Some(d) = &da {
                    prop_assert_eq!(d.revision, straight.revision(), "a delta is the new revision");
                }
            }
            prop_assert_eq!(straight.revision(), restarted.revision());
            prop_assert_eq!(straight.to_bytes(), restarted.to_bytes());
            prop_assert_eq!(straight.history(), restarted.history());
        }
    }

    #[test]
    fn a_repeated_command_is_a_no_op(batch in proptest::collection::vec(command(), 1..12)) {
        // Retried writes (an unknown outcome after a leader change) must not change anything.
        let mut s = State::new();
        for p in &batch {
            let _ = s.execute(p, TTL);
            let before = s.to_bytes();
            let (_, delta) = s.execute(p, TTL);
            prop_assert!(delta.is_none(), "repeating {:?} made {:?}", p.command, delta);
            prop_assert_eq!(before, s.to_bytes());
        }
    }
}
