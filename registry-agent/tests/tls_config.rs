//! The agent's `tls:` key: parsed with located errors, and an agent refuses to start with a
//! certificate it could not use — another host's, an expired one, a file that is missing —
//! naming the file and the fix, before it dials any manager.

use std::path::Path;

use registry_agent::AgentConfig;
use registry_manager::certs;

fn config(dir: &Path, host: &str, cert: &str) -> String {
    let d = dir.display();
    format!(
        "host: {host}\nmanagers: [\"127.0.0.1:1\"]\ndata_dir: {d}/data\nlisten: 127.0.0.1:0\nhttp_listen: none\ntls: {{ cert: {d}/{cert}.crt, key: {d}/{cert}.key, ca: {d}/ca.crt }}\n"
    )
}

#[test]
fn the_tls_key_names_three_files_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let c = AgentConfig::from_yaml("a.yaml", &config(dir.path(), "agent-4", "agent-4")).unwrap();
    let tls = c.tls.expect("tls");
    assert_eq!(tls.cert, dir.path().join("agent-4.crt"));
    assert_eq!(tls.key, dir.path().join("agent-4.key"));
    assert_eq!(tls.ca, dir.path().join("ca.crt"));
    let err = AgentConfig::from_yaml(
        "a.yaml",
        "host: agent-4\nmanagers: [\"127.0.0.1:1\"]\ntls: { cert: a.crt, key: a.key }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("a.yaml:") && err.contains("ca"), "{err}");
    let err = AgentConfig::from_yaml(
        "a.yaml",
        "host: agent-4\nmanagers: [\"127.0.0.1:1\"]\ntls: { cert: a.crt, key: a.key, ca: c.crt, pin: x }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("a.yaml:") && err.contains("pin"), "{err}");
    let err = AgentConfig::from_yaml(
        "a.yaml",
        "host: agent-4\nmanagers: [\"127.0.0.1:1\"]\ntls: { cert: \"\", key: a.key, ca: c.crt }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("a.yaml:3:") && err.contains("tls.cert"),
        "{err}"
    );
}

#[tokio::test]
async fn an_agent_refuses_to_start_with_a_certificate_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    certs::init(dir.path()).unwrap();
    certs::issue_into(dir.path(), &certs::LeafSpec::new("agent-3", vec![], vec![])).unwrap();

    // Another host's certificate.
    let c = AgentConfig::from_yaml("a.yaml", &config(dir.path(), "agent-4", "agent-3")).unwrap();
    let err = registry_agent::start(c).await.unwrap_err().to_string();
    assert!(
        err.contains("names \"agent-3\" but this agent is host \"agent-4\"")
            && err.contains("certs issue"),
        "{err}"
    );

    // A missing file.
    let c = AgentConfig::from_yaml("a.yaml", &config(dir.path(), "agent-4", "agent-4")).unwrap();
    let err = registry_agent::start(c).await.unwrap_err().to_string();
    assert!(
        err.contains("agent-4.crt") && err.contains("cannot read"),
        "{err}"
    );

    // An expired certificate of the right host.
    let mut spec = certs::LeafSpec::new("agent-4", vec![], vec![]);
    spec.not_before -= time::Duration::days(60);
    spec.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    certs::issue_into(dir.path(), &spec).unwrap();
    let c = AgentConfig::from_yaml("a.yaml", &config(dir.path(), "agent-4", "agent-4")).unwrap();
    let err = registry_agent::start(c).await.unwrap_err().to_string();
    assert!(
        err.contains("expired") && err.contains("agent-4.crt"),
        "{err}"
    );
}
