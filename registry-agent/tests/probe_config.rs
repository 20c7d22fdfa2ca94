//! `health.probe`: how an agent probes the managers it routes to.

use registry_agent::config::{AgentConfig, ProbeKind};

fn config(health: &str) -> String {
    format!("host: agent-4\nmanagers: [\"127.0.0.1:7400\"]\nhealth: {health}\n")
}

#[test]
fn probe_defaults_to_tcp() {
    let c = AgentConfig::from_yaml("agent.yaml", &config("{ interval: 1s }")).unwrap();
    assert_eq!(c.health.probe, ProbeKind::Tcp);
}

#[test]
fn probe_grpc_health_is_accepted_in_both_spellings() {
    for spelling in ["grpc-health", "grpc_health"] {
        let c = AgentConfig::from_yaml("agent.yaml", &config(&format!("{{ probe: {spelling} }}")))
            .unwrap();
        assert_eq!(c.health.probe, ProbeKind::GrpcHealth, "{spelling}");
    }
}

#[test]
fn unknown_probe_is_a_located_error_naming_the_choices() {
    let err = AgentConfig::from_yaml("agent.yaml", &config("{ probe: udp }"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("agent.yaml:3:"), "{err}");
    assert!(err.contains("health.probe"), "{err}");
    assert!(err.contains("grpc-health"), "{err}");
}
