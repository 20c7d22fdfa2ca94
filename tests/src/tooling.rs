//! Client-side helpers for the daemons' tooling surfaces, shared by every crate's tests: a
//! plain HTTP GET (the metrics port), reading a Prometheus sample, and gRPC server reflection
//! (v1 and v1alpha).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// A plain HTTP/1.1 GET over a TCP connection, bounded by `deadline`: (status, body).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    deadline: Duration,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8(buf)?)
    };
    let text = tokio::time::timeout(deadline, exchange)
        .await
        .context("HTTP GET timed out")??;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_owned()))
}

/// The value of the Prometheus sample written exactly `series` (name and labels as rendered).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

macro_rules! reflect {
    ($version:ident, $channel:expr, $describe:expr) => {{
        use tonic_reflection::pb::$version::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let version = stringify!($version);
        let mut client = ServerReflectionClient::new($channel);
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol($describe.to_string()),
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
            anyhow::bail!("{version}: no service list");
        };
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            stream.message().await?.and_then(|r| r.message_response)
        else {
            anyhow::bail!("{version}: no descriptor of {}", $describe);
        };
        anyhow::ensure!(
            !files.file_descriptor_proto.is_empty(),
            "{version}: an empty descriptor of {}",
            $describe
        );
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    }};
}

/// The services the gRPC server at `addr` lists through reflection v1 and through v1alpha
/// (each sorted), after checking that each version also describes the service `describe`.
pub async fn reflected_services(
    addr: SocketAddr,
    describe: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let v1 = reflect!(v1, channel.clone(), describe);
    let v1alpha = reflect!(v1alpha, channel, describe);
    Ok((v1, v1alpha))
}
