//! The HTTP side port (`http_listen`): `/metrics` (Prometheus text format, see
//! [`crate::metrics`]) and `/healthz` (200 `ok` while the agent serves: it always answers
//! from its copy, so it is healthy even with every registry manager down; see
//! `fleet_agent_registry_stale`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::AgentMetrics;
use crate::route_book::RouteBook;

/// The content type of the Prometheus text format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long open HTTP connections may take to finish once the agent stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Shared {
    book: watch::Receiver<Arc<RouteBook>>,
    metrics: Arc<AgentMetrics>,
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub(crate) fn spawn(
    listener: TcpListener,
    book: watch::Receiver<Arc<RouteBook>>,
    metrics: Arc<AgentMetrics>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(Shared { book, metrics });
    tokio::spawn(async move {
        let stopping = shutdown.clone();
        let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        tokio::select! {
            r = served => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "HTTP port stopped");
                }
            }
            // A scraper holding a connection open does not delay the agent's stop.
            _ = async {
                stopping.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {}
        }
    })
}

async fn render_metrics(State(s): State<Shared>) -> impl IntoResponse {
    let book = s.book.borrow().clone();
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        s.metrics.render(&book),
    )
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
}
