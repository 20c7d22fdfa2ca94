//! The registry snapshot (the registry snapshot format (docs/topology.md)) in YAML and JSON, its errors, and `diff`.

use topology::{diff, HostName, PackageStatus, RegistrySnapshot, Revision, Topology};

const YAML: &str = "\
revision: 42
hosts:
  fm:
    alive: true
    packages:
      command-control-manager: { endpoint: \"127.0.0.1:7001\", status: running }
  agent-1:
    alive: false
    packages:
      command-control-manager: { endpoint: \"127.0.0.1:7011\", status: running }
  agent-2: {}
";

#[test]
fn yaml_and_json_give_the_same_snapshot() {
    let y = RegistrySnapshot::parse("reg.yaml", YAML).unwrap();
    assert_eq!(y.revision, Revision(42));
    assert!(y.hosts["agent-2"].alive, "alive defaults to true");
    assert!(y.hosts["agent-2"].packages.is_empty());
    assert!(!y.hosts["agent-1"].alive);
    assert_eq!(
        y.hosts["fm"].packages["command-control-manager"].status,
        PackageStatus::Running
    );
    let j = RegistrySnapshot::parse("reg.json", &y.to_json()).unwrap();
    assert_eq!(j, y);
    let again = RegistrySnapshot::parse("reg.yaml", &y.to_yaml()).unwrap();
    assert_eq!(again, y);
}

#[test]
fn snapshot_errors_are_located() {
    let e = RegistrySnapshot::parse(
        "reg.yaml",
        "revision: 1\nhosts:\n  fm:\n    packages:\n      t: {endpoint: x, status: sleeping}\n",
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("reg.yaml:5:"), "{e}");
    assert!(e.message.contains("sleeping"), "{e}");
    let e = RegistrySnapshot::parse(
        "reg.json",
        "{\"revision\": 1,\n \"hosts\": {\"Bad Host\": {}}}",
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("reg.json:2:"), "{e}");
    assert!(e.message.contains("is invalid"), "{e}");
    let e = RegistrySnapshot::parse("reg.yaml", "revision: 1\nhostz: {}\n").unwrap_err();
    assert!(e.to_string().starts_with("reg.yaml:2:1"), "{e}");
    let e = RegistrySnapshot::parse("reg.yaml", "").unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let deep = format!(
        "revision: 1\nhosts: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(RegistrySnapshot::parse("deep.yaml", &deep).is_err());
    let deep = format!(
        "{{\"hosts\": {}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(RegistrySnapshot::parse("deep.json", &deep).is_err());
}

#[test]
fn diff_shows_tree_changes_and_who_moves() {
    let old = Topology::from_yaml(
        "old.yaml",
        "version: 1\ndomain: root\nhosts: [fm]\nsubdomains:\n  - domain: a\n    hosts: [a1, a2]\n  - domain: b\n    hosts: [b1]\n",
    )
    .unwrap();
    let new = Topology::from_yaml(
        "new.yaml",
        "version: 1\ndomain: root\nhosts: [fm]\nsubdomains:\n  - domain: a\n    hosts: [a2]\n    subdomains:\n      - domain: b\n        hosts: [b1, a1]\n  - domain: c\n    hosts: [c1]\n",
    )
    .unwrap();
    let mut s = RegistrySnapshot::default();
    let ty = topology::PackageType::new("cc").unwrap();
    s.set_package(
        HostName::new("fm").unwrap(),
        ty.clone(),
        "x:1",
        PackageStatus::Running,
    );
    s.set_package(
        HostName::new("a1").unwrap(),
        ty.clone(),
        "x:2",
        PackageStatus::Running,
    );
    let d = diff(&old, &new, &s);
    assert_eq!(
        d.domains_added,
        ["c"].map(|n| topology::DomainName::new(n).unwrap())
    );
    assert!(d.domains_removed.is_empty());
    assert_eq!(d.domains_moved.len(), 1);
    assert_eq!(d.domains_moved[0].0.as_str(), "b");
    assert_eq!(d.domains_moved[0].2.as_str(), "a");
    assert_eq!(d.hosts_added, [HostName::new("c1").unwrap()]);
    assert_eq!(
        d.hosts_moved,
        [(
            HostName::new("a1").unwrap(),
            topology::DomainName::new("a").unwrap(),
            topology::DomainName::new("b").unwrap()
        )]
    );
    // a2 used a1 (same domain); now a1 sits in subdomain b of a: a2's nearest is fm (ancestor)
    // before the branch tier. b1 used fm; now a1 is in its own domain. c1 is new.
    let moved: Vec<(String, Option<String>, Option<String>)> = d
        .route_changes
        .iter()
        .map(|c| {
            (
                c.host.to_string(),
                c.old.as_ref().map(|h| h.to_string()),
                c.new.as_ref().map(|h| h.to_string()),
            )
        })
        .collect();
    assert_eq!(
        moved,
        [
            (
                "a2".to_owned(),
                Some("a1".to_owned()),
                Some("fm".to_owned())
            ),
            (
                "b1".to_owned(),
                Some("fm".to_owned()),
                Some("a1".to_owned())
            ),
            ("c1".to_owned(), None, Some("fm".to_owned())),
        ]
    );
    assert!(diff(&old, &old, &s).is_empty());
}

#[test]
fn schema_is_json_schema_of_the_file() {
    let s = topology::json_schema();
    assert!(s["$schema"].as_str().unwrap().contains("json-schema.org"));
    assert!(s["properties"]["subdomains"].is_object());
    assert_eq!(s["required"], serde_json::json!(["version", "domain"]));
}
