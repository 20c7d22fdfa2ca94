//! Local package checks against real loopback sockets: a package on this host that stops
//! listening is refused by this host's kernel, and the first refusal makes it `failing`. The
//! checks run with `fall` so large that no count of failures could ever reach it: only the
//! refusal can flip the status. Every wait is on a condition with a deadline.

use std::time::Duration;

use registry_agent::checks::{spawn_checks, Statuses};
use registry_agent::{Check, PackageConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use topology::{PackageStatus, PackageType};

const WAIT: Duration = Duration::from_secs(20);
const CCM: &str = "command-control-manager";

fn package(check: Check) -> PackageConfig {
    PackageConfig {
        package_type: PackageType::new(CCM).unwrap(),
        endpoint: "127.0.0.1:1".into(),
        check,
        interval: Duration::from_millis(10),
        // Unreachable by counting: 10 ms × u32::MAX is over a year.
        fall: u32::MAX,
        rise: 1,
    }
}

/// Appends every status the checks publish to `seen` (repeats merged) until `want` is seen.
async fn follow(
    rx: &mut watch::Receiver<Statuses>,
    seen: &mut Vec<PackageStatus>,
    want: PackageStatus,
) {
    tokio::time::timeout(WAIT, async {
        loop {
            let now = rx.borrow_and_update()[CCM];
            if seen.last() != Some(&now) {
                seen.push(now);
            }
            if now == want {
                return;
            }
            rx.changed().await.expect("check task running");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want} within {WAIT:?}; seen {seen:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_checked_package_that_stops_listening_is_failing_at_the_first_refusal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let (mut rx, tasks) = spawn_checks(&[package(Check::Tcp(addr))], &stop);
    let mut seen = Vec::new();
    follow(&mut rx, &mut seen, PackageStatus::Running).await;
    drop(listener);
    follow(&mut rx, &mut seen, PackageStatus::Failing).await;
    assert_eq!(
        seen,
        [
            PackageStatus::Starting,
            PackageStatus::Running,
            PackageStatus::Failing
        ]
    );
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_never_up_is_stopped_at_the_first_refusal() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let stop = CancellationToken::new();
    let (mut rx, tasks) = spawn_checks(&[package(Check::Tcp(addr))], &stop);
    let mut seen = Vec::new();
    follow(&mut rx, &mut seen, PackageStatus::Stopped).await;
    assert_eq!(seen, [PackageStatus::Starting, PackageStatus::Stopped]);
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_health_checked_package_that_stops_is_failing_at_the_first_refusal() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_stop = CancellationToken::new();
    let server = tokio::spawn({
        let server_stop = server_stop.clone();
        async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    server_stop.cancelled_owned(),
                )
                .await
        }
    });
    let stop = CancellationToken::new();
    let (mut rx, tasks) = spawn_checks(&[package(Check::GrpcHealth(addr.to_string()))], &stop);
    let mut seen = Vec::new();
    follow(&mut rx, &mut seen, PackageStatus::Running).await;
    server_stop.cancel();
    server.await.unwrap().unwrap();
    follow(&mut rx, &mut seen, PackageStatus::Failing).await;
    assert_eq!(
        seen,
        [
            PackageStatus::Starting,
            PackageStatus::Running,
            PackageStatus::Failing
        ]
    );
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}
