//! `fleet-standin --host H --listen ADDR [--grpc]`: a stand-in manager package for end-to-end
//! tests and benchmarks. By default it greets every connection with its host name and a newline,
//! then echoes. With `--grpc` it serves the standard gRPC health service instead: service ""
//! and service H (its host name) are SERVING, so a caller can tell which host answered.

use clap::Parser;
use tonic_health::ServingStatus;

/// A stand-in manager package that answers with its host name.
#[derive(Debug, Parser)]
#[command(name = "fleet-standin", version, about)]
struct Args {
    /// The host name it answers with.
    #[arg(long)]
    host: String,
    /// Where to listen, e.g. 127.0.0.1:7001.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Serve gRPC health instead of the greeting protocol.
    #[arg(long)]
    grpc: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.grpc {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status(&args.host, ServingStatus::Serving)
            .await;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(args.listen)
            .await?;
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tests::standin::serve(listener, args.host).await;
    Ok(())
}
