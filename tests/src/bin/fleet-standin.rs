//! `fleet-standin --host H --listen ADDR`: a stand-in manager package for end-to-end tests and
//! benchmarks. Greets every connection with its host name and a newline, then echoes.

use clap::Parser;

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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tests::standin::serve(listener, args.host).await;
    Ok(())
}
