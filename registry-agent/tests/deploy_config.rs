//! The production-shaped agent configuration shipped in deploy/config parses as documented.

#[test]
fn the_shipped_agent_configuration_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config/agent.yaml");
    let config = registry_agent::config::AgentConfig::load(std::path::Path::new(path))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.host.as_str(), "agent-4");
    assert_eq!(config.managers.len(), 3);
    assert_eq!(config.packages.len(), 1);
    assert_eq!(config.forward.len(), 1);
}
