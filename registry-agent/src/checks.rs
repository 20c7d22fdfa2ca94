//! Local checks of this host's packages (`tcp` connect or `grpc-health`), every `interval`,
//! turned into the status the agent reports (see [`PackageCheck`]). The current statuses are
//! published on a `watch` channel read by the session task.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use topology::{PackageStatus, PackageType};

use crate::config::{Check, PackageConfig};
use crate::package_check::PackageCheck;

/// The status of every package of this host, as its checks see it now.
pub type Statuses = BTreeMap<PackageType, PackageStatus>;

/// Longest time one check may take; a check slower than this counts as failed.
const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts one check task per package. Every package starts `starting`.
pub fn spawn_checks(
    packages: &[PackageConfig],
    shutdown: &CancellationToken,
) -> (watch::Receiver<Statuses>, Vec<JoinHandle<()>>) {
    let initial: Statuses = packages
        .iter()
        .map(|p| (p.package_type.clone(), PackageStatus::Starting))
        .collect();
    let (tx, rx) = watch::channel(initial);
    let handles = packages
        .iter()
        .map(|p| tokio::spawn(check_loop(p.clone(), tx.clone(), shutdown.clone())))
        .collect();
    (rx, handles)
}

/// One check of `check`, bounded by `timeout`.
pub async fn check_once(
    check: &Check,
    grpc: Option<&tonic::transport::Channel>,
    timeout: Duration,
) -> bool {
    match check {
        Check::Tcp(addr) => matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await,
            Ok(Ok(_))
        ),
        Check::GrpcHealth(_) => {
            let Some(channel) = grpc else { return false };
            let mut client = HealthClient::new(channel.clone());
            let call = client.check(HealthCheckRequest {
                service: String::new(),
            });
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(resp)) => resp.into_inner().status == ServingStatus::Serving as i32,
                _ => false,
            }
        }
    }
}

async fn check_loop(pkg: PackageConfig, tx: watch::Sender<Statuses>, shutdown: CancellationToken) {
    let timeout = pkg.interval.min(MAX_CHECK_TIMEOUT);
    let grpc = match &pkg.check {
        Check::GrpcHealth(addr) => {
            match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
                Ok(e) => Some(e.connect_timeout(timeout).tcp_nodelay(true).connect_lazy()),
                Err(e) => {
                    tracing::error!(package_type = %pkg.package_type, addr, error = %e, "grpc-health check address unusable");
                    None
                }
            }
        }
        Check::Tcp(_) => None,
    };
    let mut state = PackageCheck::new(pkg.fall, pkg.rise);
    let mut ticker = tokio::time::interval(pkg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let ok = tokio::select! {
            _ = shutdown.cancelled() => return,
            ok = check_once(&pkg.check, grpc.as_ref(), timeout) => ok,
        };
        if let Some(status) = state.record(ok) {
            tracing::info!(package_type = %pkg.package_type, %status, "local check changed the package status");
            tx.send_modify(|m| {
                m.insert(pkg.package_type.clone(), status);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::ServingStatus as Serving;

    #[tokio::test]
    async fn tcp_check_follows_the_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let check = Check::Tcp(l.local_addr().unwrap().to_string());
        assert!(check_once(&check, None, Duration::from_secs(1)).await);
        drop(l);
        assert!(!check_once(&check, None, Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn grpc_health_check_reads_the_serving_status() {
        let (reporter, service) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        stop.cancelled_owned(),
                    )
                    .await
            }
        });
        let check = Check::GrpcHealth(addr.to_string());
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let t = Duration::from_secs(2);
        assert!(check_once(&check, Some(&channel), t).await);
        reporter.set_service_status("", Serving::NotServing).await;
        assert!(!check_once(&check, Some(&channel), t).await);
        reporter.set_service_status("", Serving::Serving).await;
        assert!(check_once(&check, Some(&channel), t).await);
        stop.cancel();
        server.await.unwrap().unwrap();
        assert!(!check_once(&check, Some(&channel), t).await);
    }

    #[tokio::test]
    async fn check_tasks_publish_status_changes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let pkg = PackageConfig {
            package_type: PackageType::new("ccm").unwrap(),
            endpoint: addr.clone(),
            check: Check::Tcp(addr),
            interval: Duration::from_millis(20),
            fall: 2,
            rise: 2,
        };
        let stop = CancellationToken::new();
        let (mut rx, handles) = spawn_checks(&[pkg], &stop);
        assert_eq!(rx.borrow()["ccm"], PackageStatus::Starting);
        let wait_for = |want: PackageStatus, rx: &mut watch::Receiver<Statuses>| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|m| m["ccm"] == want))
                    .await
                    .unwrap()
                    .unwrap();
            }
        };
        wait_for(PackageStatus::Running, &mut rx).await;
        drop(l);
        wait_for(PackageStatus::Failing, &mut rx).await;
        stop.cancel();
        for h in handles {
            h.await.unwrap();
        }
    }
}
