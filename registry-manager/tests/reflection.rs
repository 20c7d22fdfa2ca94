//! gRPC server reflection of a manager (in-process, port 0): v1 and v1alpha list exactly the
//! services a manager serves (not `Agent`, which agents serve) and describe each of them.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tonic::transport::Channel;

/// What a manager serves, sorted.
const EXPECTED: [&str; 6] = [
    "fleet.registry.v1.Admin",
    "fleet.registry.v1.AgentRegistry",
    "fleet.registry.v1.Member",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn list_v1(channel: Channel) -> Result<Vec<String>> {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut client = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("fleet.registry.v1.Member".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut stream = client
        .server_reflection_info(futures::stream::iter(requests))
        .await?
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await?.and_then(|r| r.message_response)
    else {
        anyhow::bail!("v1: no service list");
    };
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        stream.message().await?.and_then(|r| r.message_response)
    else {
        anyhow::bail!("v1: no descriptor of fleet.registry.v1.Member");
    };
    anyhow::ensure!(!files.file_descriptor_proto.is_empty());
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    Ok(names)
}

async fn list_v1alpha(channel: Channel) -> Result<Vec<String>> {
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut client = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("fleet.registry.v1.AgentRegistry".into()),
    ]
    .map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut stream = client
        .server_reflection_info(futures::stream::iter(requests))
        .await?
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await?.and_then(|r| r.message_response)
    else {
        anyhow::bail!("v1alpha: no service list");
    };
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        stream.message().await?.and_then(|r| r.message_response)
    else {
        anyhow::bail!("v1alpha: no descriptor of fleet.registry.v1.AgentRegistry");
    };
    anyhow::ensure!(!files.file_descriptor_proto.is_empty());
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    Ok(names)
}

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
    let channel = Channel::from_shared(format!("http://{}", manager.local_addr()))?
        .connect()
        .await?;

    assert_eq!(list_v1(channel.clone()).await?, EXPECTED);
    assert_eq!(list_v1alpha(channel).await?, EXPECTED);
    manager.shutdown().await?;
    Ok(())
}
