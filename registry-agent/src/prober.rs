//! Active probes of the managers this agent routes to (SPEC §6 `health`): every `interval`, a
//! TCP connect with `timeout` to the chosen manager of every type and to the next ones in
//! line, so the next hop is known healthy before it is needed, plus every held-down manager,
//! so it can rise again. Results go to the [`HealthView`].

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use topology::{HostName, PackageType};

use crate::config::HealthConfig;
use crate::health_view::HealthView;
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
    book: watch::Receiver<Arc<RouteBook>>,
    health: Arc<HealthView>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let targets = probe_targets(&book.borrow(), &health);
        let probes = targets.into_iter().map(|(t, h, endpoint)| {
            let health = health.clone();
            async move {
                let ok = matches!(
                    tokio::time::timeout(
                        cfg.timeout,
                        tokio::net::TcpStream::connect(endpoint.as_str())
                    )
                    .await,
                    Ok(Ok(_))
                );
                health.record(&t, &h, &endpoint, ok);
            }
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = futures::future::join_all(probes) => {}
        }
    }
}
