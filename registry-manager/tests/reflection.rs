//! gRPC server reflection of a manager (in-process, port 0): v1 and v1alpha list exactly the
//! services a manager serves (not `Agent`, which agents serve) and describe each of them.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tests::tooling::reflected_services;

/// What a manager serves, sorted.
const EXPECTED: [&str; 6] = [
    "fleet.registry.v1.Admin",
    "fleet.registry.v1.AgentRegistry",
    "fleet.registry.v1.Member",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_exactly_the_services_a_manager_serves() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = registry_manager::start(registry_manager::ServeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.path().join("data"),
        // No HTTP port: tests run side by side.
        http_listen: None,
        ..registry_manager::ServeConfig::default()
    })
    .await
    .context("the manager starts")?;
    for describe in [
        "fleet.registry.v1.Member",
        "fleet.registry.v1.AgentRegistry",
    ] {
        let (v1, v1alpha) = reflected_services(manager.local_addr(), describe).await?;
        assert_eq!(v1, EXPECTED);
        assert_eq!(v1alpha, EXPECTED);
    }
    manager.shutdown().await?;
    Ok(())
}
