//! Replicas of the registry state machine: members applying the same random command batches —
//! one straight through, one restarted from snapshots at random points — reach identical
//! states, revisions, outcomes and deltas. This is what lets any member serve watch streams
//! and resume agents with deltas.

use std::time::Duration;

use proptest::prelude::*;
use registry_manager::command::{Lapse, Proposed};
use registry_manager::{AgentStatus, Command, OperatorAction, Registration, SessionId, State};
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

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
