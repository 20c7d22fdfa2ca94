//! Local checks of this host's packages (`tcp` connect or `grpc-health`), every `interval`,
//! turned into the status the agent reports (see [`PackageCheck`]). The current statuses are
//! published on a `watch` channel read by the session task, which reports every change at once.
//!
//! A connection refused (`ECONNREFUSED`) by an address of this host is acted on at the first
//! one ([`CheckOutcome::Refused`]): the kernel of this very host says nothing listens. A refusal
//! from an address of another host (a firewall may refuse too) counts toward `fall` like any
//! other failure.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use topology::{PackageStatus, PackageType};

use crate::config::{Check, PackageConfig};
use crate::package_check::{CheckOutcome, PackageCheck};

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

/// One check of `check`, bounded by `timeout`. A refused connection is
/// [`CheckOutcome::Refused`] whatever the address; the check task keeps it so only for
/// addresses of this host (see [`weigh_refusal`]).
pub async fn check_once(
    check: &Check,
    grpc: Option<&tonic::transport::Channel>,
    timeout: Duration,
) -> CheckOutcome {
    match check {
        Check::Tcp(addr) => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await
            {
                Ok(Ok(_)) => CheckOutcome::Passed,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    CheckOutcome::Refused
                }
                _ => CheckOutcome::Failed,
            }
        }
        Check::GrpcHealth(_) => {
            let Some(channel) = grpc else {
                return CheckOutcome::Failed;
            };
            let mut client = HealthClient::new(channel.clone());
            let call = client.check(HealthCheckRequest {
                service: String::new(),
            });
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(resp)) => (resp.into_inner().status == ServingStatus::Serving as i32).into(),
                Ok(Err(status)) if is_connection_refused(&status) => CheckOutcome::Refused,
                _ => CheckOutcome::Failed,
            }
        }
    }
}

/// True when `err` or one of its sources is an I/O error "connection refused" (how a gRPC
/// call on a channel that could not connect carries it).
pub fn is_connection_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// How a refusal weighs, given whether the checked address is known to be on this host
/// (`None`: not known, e.g. its name does not resolve now). Pure.
pub fn weigh_refusal(outcome: CheckOutcome, on_this_host: Option<bool>) -> CheckOutcome {
    match (outcome, on_this_host) {
        (CheckOutcome::Refused, Some(true)) => CheckOutcome::Refused,
        (CheckOutcome::Refused, _) => CheckOutcome::Failed,
        (other, _) => other,
    }
}

/// True when `ip` is an address of this host: loopback, unspecified (connecting to it reaches
/// this host), or assigned to one of its interfaces (a socket can be bound to it).
pub fn is_own_ip(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Whether the check address `addr` ("HOST:PORT") is on this host: every address it resolves
/// to is. `None` when it does not resolve now.
async fn address_on_this_host(addr: &str) -> Option<bool> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Some(is_own_ip(sa.ip()));
    }
    let resolved: Vec<SocketAddr> =
        tokio::time::timeout(MAX_CHECK_TIMEOUT, tokio::net::lookup_host(addr))
            .await
            .ok()?
            .ok()?
            .collect();
    if resolved.is_empty() {
        return None;
    }
    Some(resolved.iter().all(|a| is_own_ip(a.ip())))
}

/// The checked address of a check.
fn check_address(check: &Check) -> &str {
    match check {
        Check::Tcp(a) | Check::GrpcHealth(a) => a,
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
    // Whether the checked address is on this host: learnt at the first refusal.
    let mut on_this_host: Option<bool> = None;
    let mut ticker = tokio::time::interval(pkg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = check_once(&pkg.check, grpc.as_ref(), timeout) => o,
        };
        if outcome == CheckOutcome::Refused {
            if on_this_host.is_none() {
                on_this_host = address_on_this_host(check_address(&pkg.check)).await;
            }
            outcome = weigh_refusal(outcome, on_this_host);
        }
        if let Some(status) = state.record(outcome) {
            if outcome == CheckOutcome::Refused {
                tracing::info!(package_type = %pkg.package_type, %status, addr = check_address(&pkg.check), "local check refused: nothing listens; package status changed at once");
            } else {
                tracing::info!(package_type = %pkg.package_type, %status, "local check changed the package status");
            }
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
    async fn tcp_check_follows_the_listener_and_sees_a_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let check = Check::Tcp(l.local_addr().unwrap().to_string());
        let t = Duration::from_secs(1);
        assert_eq!(check_once(&check, None, t).await, CheckOutcome::Passed);
        drop(l);
        assert_eq!(check_once(&check, None, t).await, CheckOutcome::Refused);
    }

    #[test]
    fn a_refusal_acts_at_once_only_from_an_address_of_this_host() {
        use CheckOutcome::{Failed, Passed, Refused};
        assert_eq!(weigh_refusal(Refused, Some(true)), Refused);
        assert_eq!(weigh_refusal(Refused, Some(false)), Failed);
        assert_eq!(weigh_refusal(Refused, None), Failed);
        assert_eq!(weigh_refusal(Failed, Some(true)), Failed);
        assert_eq!(weigh_refusal(Passed, Some(false)), Passed);
    }

    #[test]
    fn own_addresses_are_loopback_unspecified_or_bindable() {
        assert!(is_own_ip("127.0.0.1".parse().unwrap()));
        assert!(is_own_ip("127.0.0.2".parse().unwrap()));
        assert!(is_own_ip("::1".parse().unwrap()));
        assert!(is_own_ip("0.0.0.0".parse().unwrap()));
        // TEST-NET-3 (RFC 5737): never assigned to a real interface.
        assert!(!is_own_ip("203.0.113.7".parse().unwrap()));
    }

    #[tokio::test]
    async fn check_addresses_by_name_or_number() {
        assert_eq!(address_on_this_host("127.0.0.1:1").await, Some(true));
        assert_eq!(address_on_this_host("203.0.113.7:1").await, Some(false));
        assert_eq!(address_on_this_host("localhost:1").await, Some(true));
    }

    #[test]
    fn refusals_are_found_in_an_error_chain() {
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrap(std::io::ErrorKind::ConnectionRefused.into());
        let reset = Wrap(std::io::ErrorKind::ConnectionReset.into());
        assert!(is_connection_refused(&refused));
        assert!(!is_connection_refused(&reset));
        assert!(!is_connection_refused(&tonic::Status::unavailable("x")));
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
        let passed = CheckOutcome::Passed;
        assert_eq!(check_once(&check, Some(&channel), t).await, passed);
        reporter.set_service_status("", Serving::NotServing).await;
        // NOT_SERVING counts toward `fall`: it is not a refusal.
        assert_eq!(
            check_once(&check, Some(&channel), t).await,
            CheckOutcome::Failed
        );
        reporter.set_service_status("", Serving::Serving).await;
        assert_eq!(check_once(&check, Some(&channel), t).await, passed);
        stop.cancel();
        server.await.unwrap().unwrap();
        // The channel may first see its old connection end; then every call is refused.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let o = check_once(&check, Some(&channel), t).await;
            seen.push(o);
            if o == CheckOutcome::Refused {
                break;
            }
        }
        assert_eq!(seen.last(), Some(&CheckOutcome::Refused), "{seen:?}");
        assert!(!seen.contains(&passed), "{seen:?}");
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
