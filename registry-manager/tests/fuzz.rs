//! Fuzz-style property tests of what a registry manager reads (the security rules): agent and admin
//! requests decoded from arbitrary bytes and built from hostile fields, handled by the real
//! services of a real manager (in-memory store, 127.0.0.1:0); the wire conversions of
//! `registry_manager::wire`; and the manager's own stored forms (log records, checkpoints).
//!
//! Contract checked on every input: no panic, no hang (inputs are bounded), a name breaking
//! the name rules (docs/topology.md) or a malformed field is refused with INVALID_ARGUMENT, a topology with errors is
//! refused with located `FILE:LINE:COL` messages, and a refused request changes nothing.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use prost::Message;
use proto::v1 as pb;
use proto::v1::admin_server::Admin;
use proto::v1::agent_registry_server::AgentRegistry;
use registry_manager::log_record::LogRecord;
use registry_manager::service::{AdminService, AgentRegistryService};
use registry_manager::wire;
use registry_manager::{AgentStatus, OperatorAction, RunningManager, ServeConfig, State, Tuning};
use tonic::{Code, Request};
use topology::{HostName, PackageType};

use topology::fixtures::TREE;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are turned into named regression tests, not persisted files.
        failure_persistence: None,
        max_shrink_iters: 1_000,
        ..ProptestConfig::default()
    }
}

/// A manager on 127.0.0.1:0 over an in-memory store, sessions that never lapse during a test
/// (so only the requests under test change the registry), and its two services.
struct Fixture {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    manager: Option<RunningManager>,
    agent: AgentRegistryService,
    admin: AdminService,
}

impl Fixture {
    fn start() -> Fixture {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let manager = rt
            .block_on(registry_manager::start_with(
                ServeConfig {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    data_dir: dir.path().to_path_buf(),
                    topology: Some(("tree.yaml".into(), TREE.into())),
                    session_ttl: Duration::from_secs(3_600),
                    group: None,
                    http_listen: None,
                    security: Default::default(),
                },
                Tuning::default(),
            ))
            .unwrap();
        let engine = manager.engine().clone();
        Fixture {
            rt,
            _dir: dir,
            agent: AgentRegistryService::new(engine.clone()),
            admin: AdminService::new(engine),
            manager: Some(manager),
        }
    }

    /// Everything a request could change: revision, topology and the exported registry.
    fn observe(&self) -> (u64, String, String) {
        self.rt.block_on(async {
            let state = self.manager.as_ref().unwrap().engine().state().await;
            (
                state.revision().0,
                state.topology_yaml().to_owned(),
                state.to_snapshot().to_json(),
            )
        })
    }

    /// Runs one handler; a refusal must change nothing and carry a message.
    fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        let before = self.observe();
        let out = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), f)
                .await
                .unwrap_or_else(|_| panic!("{what} did not answer within 30 s"))
        });
        if let Err(status) = &out {
            assert!(!status.message().is_empty(), "{what}: {status:?}");
            assert_ne!(status.code(), Code::Internal, "{what}: {status:?}");
            assert_ne!(status.code(), Code::Unknown, "{what}: {status:?}");
            assert_eq!(
                self.observe(),
                before,
                "{what} was refused ({status:?}) but changed the registry"
            );
        }
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(m) = self.manager.take() {
            let _ = self.rt.block_on(m.shutdown());
        }
    }
}

// ----- generators --------------------------------------------------------------------------

fn wire_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["fm", "agent-1", "agent-2", "agent-3", "agent-4", "ccm", "em", "nowhere"])
            .prop_map(String::from),
        2 => "[a-z0-9][a-z0-9._-]{0,12}",
        1 => Just(String::new()),
        1 => prop::sample::select(vec!["Agent-1", "a b", "-x", ".x", "a/b", "é", "a\0", "x:y", "A", "_"])
            .prop_map(String::from),
        1 => "[a-z0-9]{64,70}",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u16..).prop_map(|p| format!("127.0.0.1:{p}")),
        1 => Just(String::new()),
        1 => any::<String>().prop_map(|s| s.chars().take(30).collect()),
        1 => "[a-z]{1,8}:[0-9]{0,7}",
    ]
}

fn status_value() -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0i32..8, 1 => any::<i32>()]
}

fn package() -> impl Strategy<Value = pb::Package> {
    (wire_name(), endpoint(), status_value()).prop_map(|(r#type, endpoint, status)| pb::Package {
        r#type,
        endpoint,
        status,
    })
}

/// Random bytes, and encodings of hostile requests with byte-level damage.
fn bytes_or_damaged<M: Message + Default + 'static>(
    message: impl Strategy<Value = M>,
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            message,
            prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..4)
        )
            .prop_map(|(m, edits)| {
                let mut bytes = m.encode_to_vec();
                for (at, value, kind) in edits {
                    let i = at % (bytes.len() + 1);
                    match kind {
                        0 if i < bytes.len() => bytes[i] ^= value | 1,
                        1 => bytes.insert(i, value),
                        2 if i < bytes.len() => {
                            bytes.remove(i);
                        }
                        _ => bytes.truncate(i),
                    }
                }
                bytes
            }),
    ]
}

fn valid(name: &str) -> bool {
    HostName::new(name).is_ok()
}

// ----- agent requests ----------------------------------------------------------------------

fn open_request() -> impl Strategy<Value = pb::OpenSessionRequest> {
    (wire_name(), prop::collection::vec(package(), 0..4))
        .prop_map(|(host, packages)| pb::OpenSessionRequest { host, packages })
}

fn report_request() -> impl Strategy<Value = pb::ReportStatusRequest> {
    (
        prop_oneof![
            Just(String::new()),
            "[a-f0-9-]{1,40}",
            "[a-f0-9]{129,140}",
            any::<String>()
        ],
        wire_name(),
        wire_name(),
        status_value(),
    )
        .prop_map(
            |(session_id, host, r#type, status)| pb::ReportStatusRequest {
                session_id,
                host,
                r#type,
                status,
            },
        )
}

#[test]
fn agent_requests_are_validated_and_refusals_change_nothing() {
    let fx = Fixture::start();
    let mut runner = TestRunner::new(config(1_000));
    let accepted = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    runner
        .run(&(open_request(), report_request()), |(open, report)| {
            let what = format!("{open:?}");
            let bad_open = !valid(&open.host)
                || open.packages.iter().any(|p| {
                    PackageType::new(p.r#type.as_str()).is_err()
                        || wire::agent_status_from_proto(p.status, Some(AgentStatus::Starting))
                            .is_err()
                });
            match fx.call(&what, fx.agent.open_session(Request::new(open.clone()))) {
                Ok(resp) => {
                    prop_assert!(!bad_open, "accepted {:?}", open);
                    let r = resp.into_inner();
                    prop_assert!(!r.session_id.is_empty() && r.revision > 0);
                    accepted.set(accepted.get() + 1);
                }
                Err(s) if bad_open => {
                    prop_assert_eq!(s.code(), Code::InvalidArgument, "{:?}", s);
                    refused.set(refused.get() + 1);
                }
                Err(_) => {}
            }
            let what = format!("{report:?}");
            let bad_report = !valid(&report.host)
                || PackageType::new(report.r#type.as_str()).is_err()
                || wire::agent_status_from_proto(report.status, None).is_err()
                || report.session_id.is_empty()
                || report.session_id.len() > 128;
            match fx.call(&what, fx.agent.report_status(Request::new(report.clone()))) {
                Ok(_) => prop_assert!(!bad_report, "accepted {:?}", report),
                Err(s) if bad_report => prop_assert_eq!(s.code(), Code::InvalidArgument, "{:?}", s),
                Err(_) => {}
            }
            Ok(())
        })
        .unwrap();
    // The generators reach both sides: sessions opened and bad requests refused.
    assert!(
        accepted.get() > 0 && refused.get() > 0,
        "{accepted:?} {refused:?}"
    );
}

#[test]
fn agent_requests_from_random_bytes_never_panic() {
    let fx = Fixture::start();
    let mut runner = TestRunner::new(config(1_000));
    let strategy = (
        bytes_or_damaged(open_request()),
        bytes_or_damaged(report_request()),
        prop::collection::vec(any::<u8>(), 0..200),
    );
    runner
        .run(&strategy, |(open, report, watch)| {
            if let Ok(req) = pb::OpenSessionRequest::decode(open.as_slice()) {
                let bad = !valid(&req.host);
                let r = fx.call("open", fx.agent.open_session(Request::new(req)));
                if bad {
                    prop_assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
                }
            }
            if let Ok(req) = pb::ReportStatusRequest::decode(report.as_slice()) {
                let bad = !valid(&req.host);
                let r = fx.call("report", fx.agent.report_status(Request::new(req)));
                if bad {
                    prop_assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
                }
            }
            if let Ok(req) = pb::WatchRequest::decode(watch.as_slice()) {
                let bad = !req.host.is_empty() && !valid(&req.host);
                // Only the refusal is checked: an accepted watch is a stream, dropped here.
                match fx.call("watch", fx.agent.watch(Request::new(req))) {
                    Ok(_) => prop_assert!(!bad),
                    Err(s) => prop_assert!(bad && s.code() == Code::InvalidArgument, "{:?}", s),
                }
            }
            Ok(())
        })
        .unwrap();
}

// ----- admin requests ----------------------------------------------------------------------

fn action_request() -> impl Strategy<Value = pb::PackageActionRequest> {
    (
        wire_name(),
        wire_name(),
        prop_oneof![4 => 0i32..5, 1 => any::<i32>()],
    )
        .prop_map(|(host, r#type, action)| pb::PackageActionRequest {
            host,
            r#type,
            action,
        })
}

fn explain_request() -> impl Strategy<Value = pb::ExplainRouteRequest> {
    (wire_name(), wire_name()).prop_map(|(host, r#type)| pb::ExplainRouteRequest {
        host,
        r#type,
        stale: false,
    })
}

/// Topology texts: the applied tree damaged line by line, or random text.
fn topology_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (prop::collection::vec((any::<usize>(), prop::sample::select(vec![
                "", "  ", "\t", "- Bad", "hosts: [fm]", "domain: framework", "version: 2",
                "  - domain: subdomain-1", "x: &a [1]", "y: *a", "{", "]", "\0", "\u{feff}",
            ])), 1..4)).prop_map(|edits| {
                let mut lines: Vec<String> = TREE.lines().map(str::to_owned).collect();
                for (at, text) in edits {
                    let i = at % lines.len();
                    lines[i] = format!("{}{text}", &lines[i][..lines[i].len() / 2]);
                }
                lines.join("\n")
            }),
        1 => any::<String>().prop_map(|s| s.chars().take(200).collect()),
        1 => Just(String::new()),
    ]
}

fn topology_request() -> impl Strategy<Value = pb::TopologyRequest> {
    (
        topology_text(),
        prop_oneof![
            Just(String::new()),
            Just("t.yaml".to_owned()),
            "[ -~]{1,20}"
        ],
    )
        .prop_map(|(yaml, file_name)| pb::TopologyRequest { yaml, file_name })
}

/// Every line of a refused topology is `FILE:LINE:COL: message`.
fn assert_topology_refusal(req: &pb::TopologyRequest, status: &tonic::Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let file: String = if req.file_name.is_empty() {
        "<request>".into()
    } else {
        // Control characters in the name are quoted as `?`, so every error stays one line.
        req.file_name
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    let file = file.as_str();
    for line in status.message().lines() {
        let rest = line
            .strip_prefix(file)
            .and_then(|r| r.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{line:?} does not name {file:?}"));
        let mut parts = rest.splitn(3, ':');
        let l: usize = parts
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("no line in {line:?}"));
        let c: usize = parts
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("no column in {line:?}"));
        assert!(l >= 1 && c >= 1, "{line:?}");
        assert!(parts.next().is_some_and(|m| m.len() > 1), "{line:?}");
    }
}

#[test]
fn admin_requests_are_validated_and_refusals_change_nothing() {
    let fx = Fixture::start();
    let mut runner = TestRunner::new(config(800));
    let strategy = (action_request(), explain_request(), topology_request());
    runner
        .run(&strategy, |(action, explain, topo)| {
            let bad = !valid(&action.host)
                || PackageType::new(action.r#type.as_str()).is_err()
                || wire::action_from_proto(action.action).is_err();
            match fx.call(
                "action",
                fx.admin.package_action(Request::new(action.clone())),
            ) {
                Ok(_) => prop_assert!(!bad, "accepted {:?}", action),
                Err(s) if bad => prop_assert_eq!(s.code(), Code::InvalidArgument, "{:?}", s),
                Err(_) => {}
            }
            let bad = !valid(&explain.host) || PackageType::new(explain.r#type.as_str()).is_err();
            match fx.call(
                "explain",
                fx.admin.explain_route(Request::new(explain.clone())),
            ) {
                Ok(_) => prop_assert!(!bad, "accepted {:?}", explain),
                Err(s) if bad => prop_assert_eq!(s.code(), Code::InvalidArgument, "{:?}", s),
                Err(_) => {}
            }
            let parses = topology::Topology::from_yaml("x", &topo.yaml).is_ok();
            match fx.call("diff", fx.admin.diff_topology(Request::new(topo.clone()))) {
                Ok(_) => prop_assert!(parses),
                Err(s) => assert_topology_refusal(&topo, &s),
            }
            // Apply only what must be refused: the tree under test stays the same.
            if !parses {
                let s = fx
                    .call("apply", fx.admin.apply_topology(Request::new(topo.clone())))
                    .unwrap_err();
                assert_topology_refusal(&topo, &s);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn admin_requests_from_random_bytes_never_panic() {
    let fx = Fixture::start();
    let mut runner = TestRunner::new(config(800));
    let strategy = (
        bytes_or_damaged(action_request()),
        bytes_or_damaged(explain_request()),
        bytes_or_damaged(topology_request()),
    );
    runner
        .run(&strategy, |(action, explain, topo)| {
            if let Ok(req) = pb::PackageActionRequest::decode(action.as_slice()) {
                let bad = !valid(&req.host);
                let r = fx.call("action", fx.admin.package_action(Request::new(req)));
                if bad {
                    prop_assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
                }
            }
            if let Ok(req) = pb::ExplainRouteRequest::decode(explain.as_slice()) {
                let bad = !valid(&req.host);
                let r = fx.call("explain", fx.admin.explain_route(Request::new(req)));
                if bad {
                    prop_assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
                }
            }
            if let Ok(req) = pb::TopologyRequest::decode(topo.as_slice()) {
                if let Err(s) = fx.call("diff", fx.admin.diff_topology(Request::new(req.clone()))) {
                    assert_topology_refusal(&req, &s);
                }
            }
            Ok(())
        })
        .unwrap();
}

// ----- wire conversions and stored forms ---------------------------------------------------

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn wire_conversions_accept_exactly_the_valid(status in any::<i32>(), action in any::<i32>(), packages in prop::collection::vec(package(), 0..5)) {
        let s = wire::agent_status_from_proto(status, None);
        prop_assert_eq!(s.is_ok(), (1..=4).contains(&status));
        let s = wire::agent_status_from_proto(status, Some(AgentStatus::Starting));
        prop_assert_eq!(s.is_ok(), (0..=4).contains(&status));
        let a = wire::action_from_proto(action);
        prop_assert_eq!(a.is_ok(), (1..=3).contains(&action), "{:?}", a);
        if let Ok(a) = a {
            prop_assert!(matches!(a, OperatorAction::Drain | OperatorAction::Withdraw | OperatorAction::Restore));
        }
        let valid_all = packages.iter().all(|p| {
            PackageType::new(p.r#type.as_str()).is_ok() && (0..=4).contains(&p.status)
        });
        match wire::registrations_from_proto(packages.clone()) {
            Ok(r) => {
                prop_assert!(valid_all);
                prop_assert_eq!(r.len(), packages.len());
                for (reg, p) in r.iter().zip(&packages) {
                    prop_assert_eq!(reg.package_type.as_str(), p.r#type.as_str());
                    prop_assert_eq!(&reg.endpoint, &p.endpoint);
                }
            }
            Err(e) => {
                prop_assert!(!valid_all);
                prop_assert_eq!(registry_manager::to_status(e).code(), Code::InvalidArgument);
            }
        }
    }

    /// The manager's own stored forms, read back after a crash or from a damaged disk.
    #[test]
    fn stored_forms_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), json in any::<String>()) {
        let _ = LogRecord::decode(&bytes);
        let _ = State::from_bytes(&bytes);
        let mut framed = vec![1u8];
        framed.extend_from_slice(&u32::try_from(json.len()).unwrap().to_be_bytes());
        framed.extend_from_slice(json.as_bytes());
        framed.extend_from_slice(&bytes);
        if let Ok(rec) = LogRecord::decode(&framed) {
            prop_assert_eq!(LogRecord::decode(&rec.encode()).unwrap(), rec);
        }
        let _ = State::from_bytes(json.as_bytes());
    }
}

#[test]
fn hostile_command_json_in_a_log_record_is_refused() {
    for json in [
        r#"{"op":"open_session","host":"Bad Host","session_id":"s","packages":[]}"#,
        r#"{"op":"report_status","host":"a","package_type":"","status":"running"}"#,
        r#"{"op":"apply_topology","yaml":"x","extra":1}"#,
        r#"{"op":"nope"}"#,
        r#"{"op":"open_session","host":"a","session_id":"s","packages":[{"package_type":"A","endpoint":"x","status":"running"}]}"#,
        "[",
        "",
    ] {
        let mut rec = vec![1u8];
        rec.extend_from_slice(&u32::try_from(json.len()).unwrap().to_be_bytes());
        rec.extend_from_slice(json.as_bytes());
        assert!(LogRecord::decode(&rec).is_err(), "{json}");
    }
    // A length beyond the record, and the largest length there is.
    assert!(LogRecord::decode(&[1, 0xff, 0xff, 0xff, 0xff, b'{']).is_err());
    assert!(LogRecord::decode(&[1, 0, 0, 0]).is_err());
}
