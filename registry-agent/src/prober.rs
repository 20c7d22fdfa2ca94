//! Active probes of the managers this agent routes to (the command-line contract (docs/manager.md, docs/agent.md) `health`): every `interval`, a
//! TCP connect (or, with `probe: grpc-health`, a gRPC health `Check` over a reused channel)
//! bounded by `timeout`, to the chosen manager of every type and to the next ones in line, so the next hop is known healthy before it is needed, plus every held-down manager,
//! so it can rise again. Results go to the [`HealthView`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use topology::{HostName, PackageType};

use crate::checks::check_once;
use crate::config::{Check, HealthConfig, ProbeKind};
use crate::health_view::HealthView;
use crate::metrics::AgentMetrics;
use crate::route_book::RouteBook;

/// How many managers of each type are probed, the chosen one included.
pub const PROBED_PER_TYPE: usize = 3;

/// What one probe round targets: (type, host, endpoint), deduplicated.
pub fn probe_targets(
    book: &RouteBook,
    health: &HealthView,
) -> Vec<(PackageType, HostName, String)> {
    let mut set = BTreeSet::new();
    for (t, r) in &book.routes {
        for target in r
            .order
            .iter()
            .take(PROBED_PER_TYPE)
            .chain(r.held_down.iter())
        {
            set.insert((t.clone(), target.host.clone(), target.endpoint.clone()));
        }
    }
    for h in health.held_down() {
        set.insert((h.package_type, h.host, h.endpoint));
    }
    set.into_iter().collect()
}

/// Probes until `shutdown`.
pub async fn run_prober(
    cfg: HealthConfig,
    tls: Option<proto::crl::ClientTls>,
    book: watch::Receiver<Arc<RouteBook>>,
    health: Arc<HealthView>,
    metrics: Arc<AgentMetrics>,
    shutdown: CancellationToken,
) {
    let mut channels: HashMap<String, Option<Channel>> = HashMap::new();
    // Channels are made again after a revocation list names a manager's certificate.
    let mut revocations = tls.as_ref().map_or(0, |t| t.revocations());
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let targets = probe_targets(&book.borrow(), &health);
        let now_revoked = tls.as_ref().map_or(0, |t| t.revocations());
        if now_revoked != revocations {
            revocations = now_revoked;
            channels.clear();
        }
        if cfg.probe == ProbeKind::GrpcHealth {
            // Keep one channel per probed endpoint; forget the ones no longer probed.
            channels.retain(|ep, _| targets.iter().any(|(_, _, e)| e == ep));
        }
        let probes = targets.into_iter().map(|(t, h, endpoint)| {
            let (health, metrics) = (health.clone(), metrics.clone());
            let check = match cfg.probe {
                ProbeKind::Tcp => Check::Tcp(endpoint.clone()),
                ProbeKind::GrpcHealth => Check::GrpcHealth(endpoint.clone()),
            };
            let channel = match cfg.probe {
                ProbeKind::Tcp => None,
                ProbeKind::GrpcHealth => channels
                    .entry(endpoint.clone())
                    .or_insert_with(|| {
                        // Registry managers speak TLS when the agent does; other packages are
                        // probed as they serve.
                        let tls = (t.as_str() == crate::session::REGISTRY_MANAGER_TYPE)
                            .then_some(tls.as_ref())
                            .flatten();
                        lazy_channel(&endpoint, cfg.timeout, tls)
                    })
                    .clone(),
            };
            async move {
                let ok = check_once(&check, channel.as_ref(), cfg.timeout)
                    .await
                    .passed();
                if !ok {
                    metrics.probe_failed();
                }
                health.record(&t, &h, &endpoint, ok);
            }
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = futures::future::join_all(probes) => {}
        }
    }
}

/// A lazily connected channel to a probed manager (`None` when the endpoint is unusable, which
/// then fails every probe).
fn lazy_channel(
    endpoint: &str,
    timeout: Duration,
    tls: Option<&proto::crl::ClientTls>,
) -> Option<Channel> {
    proto::tls::endpoint(endpoint, tls)
        .ok()
        .map(|e| e.connect_timeout(timeout).tcp_nodelay(true).connect_lazy())
}
