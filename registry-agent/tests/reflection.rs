//! gRPC server reflection of an agent's local API (in-process, port 0): v1 and v1alpha list
//! exactly the services an agent serves (not the managers' services) and describe `Agent`.

use anyhow::{anyhow, Result};
use tests::tooling::reflected_services;

/// What an agent serves, sorted.
const EXPECTED: [&str; 4] = [
    "fleet.registry.v1.Agent",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_exactly_the_services_an_agent_serves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // No manager is needed: the local API answers from the start. Port 1 refuses at once.
    let yaml = format!(
        "host: agent-1\nmanagers: [\"127.0.0.1:1\"]\ndata_dir: {}\nlisten: 127.0.0.1:0\nhttp_listen: none\n",
        dir.path().join("data").display()
    );
    let config = registry_agent::AgentConfig::from_yaml("agent-1.yaml", &yaml)
        .map_err(|e| anyhow!("{e}"))?;
    let agent = registry_agent::start(config).await?;
    let (v1, v1alpha) = reflected_services(agent.local_addr(), "fleet.registry.v1.Agent").await?;
    assert_eq!(v1, EXPECTED);
    assert_eq!(v1alpha, EXPECTED);
    agent.shutdown().await;
    Ok(())
}
