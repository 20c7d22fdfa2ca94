//! the routing rule (docs/routing.md) worked example, step by step: each step builds its registry snapshot and checks
//! the chosen manager of every requester, through `explain` and through the route table.

use topology::{
    explain, HostName, PackageStatus, PackageType, RegistrySnapshot, RouteTable, Topology,
};

use topology::fixtures::{CCM, TREE, TREE_WITH_SUBDOMAIN_2 as TREE_WITH_S2};

fn h(s: &str) -> HostName {
    HostName::new(s).unwrap()
}

fn snapshot(managers: &[(&str, PackageStatus)], dead: &[&str]) -> RegistrySnapshot {
    let mut s = RegistrySnapshot::default();
    for (i, (host, status)) in managers.iter().enumerate() {
        s.set_package(
            h(host),
            PackageType::new(CCM).unwrap(),
            format!("127.0.0.1:{}", 7001 + i),
            *status,
        );
    }
    for d in dead {
        s.set_alive(h(d), false);
    }
    s
}

fn assert_chosen(t: &Topology, s: &RegistrySnapshot, expected: &[(&str, Option<&str>)]) {
    let table = RouteTable::build(t, s);
    for (requester, want) in expected {
        let e = explain(t, s, requester, CCM, &|_| false).unwrap();
        assert_eq!(
            e.chosen.as_ref().map(|c| c.as_str()),
            *want,
            "explain for {requester}: {:#}",
            e.to_json()
        );
        assert_eq!(
            table.chosen(requester, CCM).map(|c| c.as_str()),
            *want,
            "table for {requester}"
        );
    }
}

use PackageStatus::{Draining, Running, Stopped, Withdrawn};

#[test]
fn step1_all_up_everyone_chooses_the_nearest() {
    let t = Topology::from_yaml("tree.yaml", TREE).unwrap();
    let s = snapshot(
        &[("fm", Running), ("agent-1", Running), ("agent-3", Running)],
        &[],
    );
    assert_chosen(
        &t,
        &s,
        &[
            ("fm", Some("fm")),
            ("agent-1", Some("agent-1")),
            ("agent-2", Some("agent-1")),
            ("agent-3", Some("agent-3")),
            ("agent-4", Some("agent-3")),
        ],
    );
    let e = explain(&t, &s, "agent-4", CCM, &|_| false).unwrap();
    assert_eq!(e.route, vec![h("agent-3"), h("agent-1"), h("fm")]);
}

#[test]
fn step2_agent3_in_maintenance_agent4_moves_up_to_agent1() {
    let t = Topology::from_yaml("tree.yaml", TREE).unwrap();
    for status in [Draining, Stopped] {
        let s = snapshot(
            &[("fm", Running), ("agent-1", Running), ("agent-3", status)],
            &[],
        );
        assert_chosen(
            &t,
            &s,
            &[
                ("agent-1", Some("agent-1")),
                ("agent-2", Some("agent-1")),
                ("agent-3", Some("agent-1")),
                ("agent-4", Some("agent-1")),
            ],
        );
        let e = explain(&t, &s, "agent-4", CCM, &|_| false).unwrap();
        let c = e.candidates.iter().find(|c| c.host == "agent-3").unwrap();
        assert!(!c.eligible);
        assert_eq!(
            c.reason.as_deref(),
            Some(format!("package status is {status}").as_str())
        );
    }
}

#[test]
fn step3_agent1_host_lost_everyone_goes_to_fm() {
    let t = Topology::from_yaml("tree.yaml", TREE).unwrap();
    let s = snapshot(
        &[("fm", Running), ("agent-1", Running), ("agent-3", Draining)],
        &["agent-1"],
    );
    assert_chosen(
        &t,
        &s,
        &[
            ("agent-2", Some("fm")),
            ("agent-3", Some("fm")),
            ("agent-4", Some("fm")),
        ],
    );
    let e = explain(&t, &s, "agent-2", CCM, &|_| false).unwrap();
    let c = e.candidates.iter().find(|c| c.host == "agent-1").unwrap();
    assert_eq!(c.reason.as_deref(), Some("host is not alive"));
    assert_eq!(e.route, vec![h("fm")]);
}

#[test]
fn step4_fm_withdrawn_agent3_back_subdomain1_goes_down_to_agent3() {
    let t = Topology::from_yaml("tree.yaml", TREE).unwrap();
    let s = snapshot(
        &[
            ("fm", Withdrawn),
            ("agent-1", Running),
            ("agent-3", Running),
        ],
        &["agent-1"],
    );
    assert_chosen(
        &t,
        &s,
        &[
            ("agent-2", Some("agent-3")),
            ("agent-3", Some("agent-3")),
            ("agent-4", Some("agent-3")),
            ("fm", Some("agent-3")),
        ],
    );
    let e = explain(&t, &s, "agent-2", CCM, &|_| false).unwrap();
    let j = e.to_json();
    assert_eq!(j["chosen"], "agent-3");
    let c3 = j["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["host"] == "agent-3")
        .unwrap();
    assert_eq!(c3["tier"], "branch");
    assert_eq!(c3["domain"], "subdomain-1a");
    assert_eq!(c3["reason"], serde_json::Value::Null);
}

#[test]
fn step5_other_branch_manager_takes_everyone_when_nothing_nearer_is_eligible() {
    let t = Topology::from_yaml("tree.yaml", TREE_WITH_S2).unwrap();
    let s = snapshot(
        &[
            ("fm", Withdrawn),
            ("agent-1", Running),
            ("agent-3", Stopped),
            ("s2-host", Running),
        ],
        &["agent-1"],
    );
    assert_chosen(
        &t,
        &s,
        &[
            ("agent-1", Some("s2-host")),
            ("agent-2", Some("s2-host")),
            ("agent-3", Some("s2-host")),
            ("agent-4", Some("s2-host")),
            ("fm", Some("s2-host")),
        ],
    );
    // With cross-branch routing disabled, the same hosts have no manager at all.
    let t2 = Topology::from_yaml(
        "tree.yaml",
        &TREE_WITH_S2.replace(
            "version: 1\n",
            "version: 1\nrouting: {cross_branch: false}\n",
        ),
    )
    .unwrap();
    assert_chosen(
        &t2,
        &s,
        &[("agent-2", None), ("agent-4", None), ("fm", None)],
    );
    let e = explain(&t2, &s, "agent-4", CCM, &|_| false).unwrap();
    let c = e.candidates.iter().find(|c| c.host == "s2-host").unwrap();
    assert_eq!(
        c.reason.as_deref(),
        Some(topology::route::REASON_CROSS_BRANCH)
    );
}

#[test]
fn explain_json_has_the_spec_shape() {
    let t = Topology::from_yaml("tree.yaml", TREE).unwrap();
    let mut s = snapshot(
        &[("fm", Running), ("agent-1", Running), ("agent-3", Running)],
        &[],
    );
    s.set_package(
        h("stranger"),
        PackageType::new(CCM).unwrap(),
        "10.0.0.9:1",
        Running,
    );
    let e = explain(&t, &s, "agent-4", CCM, &|m| m == "agent-3").unwrap();
    let j = e.to_json();
    assert_eq!(j["host"], "agent-4");
    assert_eq!(j["type"], CCM);
    assert_eq!(j["chosen"], "agent-1");
    assert_eq!(j["endpoint"], "127.0.0.1:7002");
    assert_eq!(j["route"], serde_json::json!(["agent-1", "fm"]));
    let c = j["candidates"].as_array().unwrap();
    assert_eq!(c.len(), 4);
    assert_eq!(c[0]["host"], "agent-3");
    assert_eq!(c[0]["tier"], "domain");
    assert_eq!(c[0]["eligible"], false);
    assert_eq!(c[0]["reason"], "held down by this agent's health checks");
    assert_eq!(c[1]["tier"], "ancestor");
    assert_eq!(c[2]["host"], "fm");
    assert_eq!(c[3]["host"], "stranger");
    assert_eq!(c[3]["domain"], serde_json::Value::Null);
    assert_eq!(c[3]["tier"], serde_json::Value::Null);
    assert_eq!(c[3]["reason"], "host is not in the topology");
    let keys: Vec<_> = j.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 6);
}

#[test]
fn unknown_requester_is_an_error_naming_it() {
    let t = Topology::from_yaml("tree.yaml", TREE).unwrap();
    let s = snapshot(&[("fm", Running)], &[]);
    let e = explain(&t, &s, "agent-9", CCM, &|_| false).unwrap_err();
    assert!(
        e.to_string().contains("\"agent-9\" is not in the topology"),
        "{e}"
    );
    let e = explain(&t, &s, "Agent 9", CCM, &|_| false).unwrap_err();
    assert!(e.to_string().contains("is invalid"), "{e}");
    assert!(RouteTable::build(&t, &s).chosen("agent-9", CCM).is_none());
}
