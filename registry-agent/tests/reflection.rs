//! gRPC server reflection of an agent's local API (in-process, port 0): v1 and v1alpha list
//! exactly the services an agent serves (not the managers' services) and describe `Agent`.

use anyhow::{anyhow, Result};
use tonic::transport::Channel;

/// What an agent serves, sorted.
const EXPECTED: [&str; 4] = [
    "fleet.registry.v1.Agent",
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
        MessageRequest::FileContainingSymbol("fleet.registry.v1.Agent".into()),
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
        anyhow::bail!("v1: no descriptor of fleet.registry.v1.Agent");
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
        MessageRequest::FileContainingSymbol("fleet.registry.v1.Agent".into()),
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
        anyhow::bail!("v1alpha: no descriptor of fleet.registry.v1.Agent");
    };
    anyhow::ensure!(!files.file_descriptor_proto.is_empty());
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    Ok(names)
}

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
    let channel = Channel::from_shared(format!("http://{}", agent.local_addr()))?
        .connect()
        .await?;

    assert_eq!(list_v1(channel.clone()).await?, EXPECTED);
    assert_eq!(list_v1alpha(channel).await?, EXPECTED);
    agent.shutdown().await;
    Ok(())
}
