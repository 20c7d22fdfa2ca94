//! The HTTP side port (`http_listen`, `serve --http-listen`): `/metrics` (Prometheus text
//! format, see `crate::metrics`), `/healthz` (200 `ok` while this member serves; 503 with
//! the reason while it is cut off from its group's majority or stopping), and the status page
//! at `/` with its JSON endpoints (`crate::page`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::engine::Engine;
use crate::error::ServeError;

/// The default address of the HTTP port.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7480";

/// The value of `http_listen` / `--http-listen`: an IP address and port (port 0 picks a free
/// port), or `none` for no HTTP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpListen(pub Option<SocketAddr>);

impl std::str::FromStr for HttpListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "none" {
            return Ok(HttpListen(None));
        }
        s.parse().map(|a| HttpListen(Some(a))).map_err(|_| {
            format!(
                "{s:?} is neither an IP address and port (like {DEFAULT_HTTP_LISTEN}; port 0 picks a free port) nor `none`"
            )
        })
    }
}

/// The content type of the Prometheus text format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long open HTTP connections may take to finish once the manager stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Binds the HTTP port: the listener and its address (port 0 resolved). A failure names the
/// address and the key.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let bound = match TcpListener::bind(addr).await {
        Ok(l) => l.local_addr().map(|a| (l, a)),
        Err(e) => Err(e),
    };
    bound.map_err(|reason| ServeError::HttpBind { addr, reason })
}

/// Serves `/metrics`, `/healthz` and the status page on `listener` until the manager stops.
pub(crate) fn spawn(listener: TcpListener, engine: Engine) -> JoinHandle<()> {
    let cancel = engine.cancel_token().clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .merge(crate::page::routes())
        .with_state(engine);
    tokio::spawn(async move {
        let stopping = cancel.clone();
        // The peer address decides who may use the page's admin buttons.
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(cancel.cancelled_owned());
        tokio::select! {
            r = served => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "HTTP port stopped");
                }
            }
            // A scraper holding a connection open does not delay the manager's stop.
            _ = async {
                stopping.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {}
        }
    })
}

async fn metrics(State(engine): State<Engine>) -> impl IntoResponse {
    let body = engine.telemetry().render(&engine).await;
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body)
}

async fn healthz(State(engine): State<Engine>) -> impl IntoResponse {
    let (status, body) = health(&engine);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

/// The answer of `/healthz`.
fn health(engine: &Engine) -> (StatusCode, String) {
    if let Some(reason) = engine.fatal() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stopping on a fatal error: {reason}\n"),
        );
    }
    if engine.cancel_token().is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    if engine.is_cut_off() {
        let unreachable = engine.unreachable_members();
        let whom = if unreachable.is_empty() {
            String::new()
        } else {
            format!(" (cannot reach {})", unreachable.join(", "))
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "cut off from the group's majority: member {} has heard no leader or majority recently{whom}; it refuses writes and its agents move to other members\n",
                engine.name()
            ),
        );
    }
    (StatusCode::OK, "ok\n".into())
}
