//! The status page on the HTTP side port: `/` (HTML, CSS and JavaScript embedded in the
//! binary: no CDN, no build step), its JSON endpoints and its server-sent events, and the
//! admin buttons' endpoints (docs/status-page.md lists them all).
//!
//! I/O only: the model is [`crate::status::status_model`], a blast radius is
//! [`crate::status::action_blast_radius`] (both pure); writes go through the `Admin` gRPC
//! service's own handlers ([`AdminService`]), so a button and the command line take one path
//! (validation, forwarding to the leader, the engine). Who may press a button is decided in
//! one place, [`authorize_http_admin`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use proto::v1 as pb;
use proto::v1::admin_server::Admin as _;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use topology::{HostName, PackageType};

use crate::command::OperatorAction;
use crate::engine::Engine;
use crate::error::RegistryError;
use crate::service::AdminService;
use crate::status::{self, GroupView, MemberView, StatusModel};

const INDEX_HTML: &str = include_str!("../assets/status/index.html");
const APP_JS: &str = include_str!("../assets/status/app.js");
const STYLE_CSS: &str = include_str!("../assets/status/style.css");

/// How often the event stream looks at the group's state (leader, member states), which
/// changes without a registry revision.
const GROUP_POLL: Duration = Duration::from_secs(1);
/// The least time between two models sent on one event stream: a burst of revisions is
/// coalesced into one update.
const MIN_GAP: Duration = Duration::from_millis(200);

/// The page's routes, to merge into the side port's router.
pub(crate) fn routes() -> Router<Engine> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .route("/api/status", get(api_status))
        .route("/api/events", get(api_events))
        .route("/api/admin/preview", post(admin_preview))
        .route("/api/admin/package", post(admin_package))
        .route("/api/admin/failover", post(admin_failover))
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE_CSS,
    )
}

/// Who made an admin request over HTTP, once allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HttpAdmin {
    /// For the log line of every admin write.
    pub who: &'static str,
}

/// Decides whether an HTTP request may use the admin endpoints: the one place to change when
/// client certificates arrive (the TLS work), which will add a branch here.
///
/// Now: only a peer on a loopback address (a person on the manager's own machine), and, when
/// the browser sends an `Origin`, only from the page's own origin (so another site open in a
/// local browser cannot post to the port). Admin endpoints also take only
/// `application/json` bodies, which a cross-site form cannot send without a CORS preflight
/// that this port never grants.
pub(crate) fn authorize_http_admin(
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<HttpAdmin, (StatusCode, String)> {
    let loopback = match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    if !loopback {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "admin actions over HTTP are allowed only from this machine (loopback); {peer} is not. Use `registry-manager package ...` or `ha failover` with --manager instead"
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let origin = origin.to_str().unwrap_or_default();
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| !host.is_empty() && o == host);
        if !same {
            return Err((
                StatusCode::FORBIDDEN,
                format!("admin requests are accepted only from this port's own page (origin {origin:?}, host {host:?})"),
            ));
        }
    }
    Ok(HttpAdmin { who: "local-http" })
}

/// The query of `/api/status` and `/api/events`.
#[derive(Debug, Deserialize)]
struct StatusQuery {
    /// The manager type to show routes and coverage for.
    #[serde(rename = "type")]
    package_type: Option<String>,
}

async fn api_status(
    State(engine): State<Engine>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<StatusQuery>,
) -> Response {
    let admin = authorize_http_admin(peer, &headers).is_ok();
    let group = group_now(&engine).await;
    match model(&engine, group, q.package_type, admin).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The current model, computed off the async threads.
async fn model(
    engine: &Engine,
    group: GroupView,
    package_type: Option<String>,
    admin: bool,
) -> Result<StatusModel, String> {
    let guard = engine.state_lock().clone().read_owned().await;
    let name = engine.name().to_owned();
    let mut m = tokio::task::spawn_blocking(move || {
        status::status_model(&guard, group, &name, package_type.as_deref())
    })
    .await
    .map_err(|e| format!("the status model failed: {e}"))?;
    m.admin = admin;
    Ok(m)
}

/// The group as this member sees it now (asks the other members, a second at most each).
async fn group_now(engine: &Engine) -> GroupView {
    group_view(engine.ha_status(false).await)
}

/// The one conversion of `ha status` to the page's view.
fn group_view(ha: pb::HaStatusResponse) -> GroupView {
    GroupView {
        leader: ha.leader,
        term: ha.term,
        members: ha
            .members
            .into_iter()
            .map(|m| MemberView {
                name: m.name,
                address: m.address,
                voter: m.voter,
                role: m.role,
                state: m.state,
                applied_revision: m.applied_revision,
                // Not `last_contact_ms`: it changes every moment, and the page is sent
                // again only when what it shows changed.
                lag: m.lag,
            })
            .collect(),
    }
}

/// `/api/events`: server-sent events, one `status` event (the model as JSON) at once and then
/// after every registry change or group change, coalesced.
async fn api_events(
    State(engine): State<Engine>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<StatusQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let admin = authorize_http_admin(peer, &headers).is_ok();
    let changes = engine.hub().subscribe();
    /// What one event stream carries from one event to the next.
    struct Follow {
        engine: Engine,
        changes: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::watch::Published>>,
        package_type: Option<String>,
        /// The JSON last sent.
        last: String,
        /// The group's view, asked at most every `GROUP_POLL`: a registry change is shown at
        /// once even while a member is slow to answer.
        group: Option<(tokio::time::Instant, GroupView)>,
    }
    let start = Follow {
        engine,
        changes,
        package_type: q.package_type,
        last: String::new(),
        group: None,
    };
    let stream = futures::stream::unfold(start, move |mut f| async move {
        let cancel = f.engine.cancel_token().clone();
        if !f.last.is_empty() {
            tokio::time::sleep(MIN_GAP).await;
        }
        loop {
            let group = match &f.group {
                Some((at, g)) if at.elapsed() < GROUP_POLL => g.clone(),
                _ => {
                    let g = group_now(&f.engine).await;
                    f.group = Some((tokio::time::Instant::now(), g.clone()));
                    g
                }
            };
            let json = match model(&f.engine, group, f.package_type.clone(), admin).await {
                Ok(m) => serde_json::to_string(&m).unwrap_or_default(),
                Err(e) => json!({ "error": e }).to_string(),
            };
            if json != f.last {
                f.last = json.clone();
                let ev = Event::default().event("status").data(json);
                return Some((Ok(ev), f));
            }
            let next_poll = f
                .group
                .as_ref()
                .map_or_else(tokio::time::Instant::now, |(at, _)| *at + GROUP_POLL);
            tokio::select! {
                r = f.changes.recv() => match r {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        // Coalesce whatever else is queued.
                        while f.changes.try_recv().is_ok() {}
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep_until(next_poll) => {}
                _ = cancel.cancelled() => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The body of `/api/admin/preview` and `/api/admin/package`.
#[derive(Debug, Deserialize)]
struct PackageRequest {
    /// `drain`, `withdraw` or `restore`.
    action: OperatorAction,
    host: String,
    #[serde(rename = "type")]
    package_type: String,
}

fn error_response(code: StatusCode, error: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": error.to_string() }))).into_response()
}

fn registry_error(e: RegistryError) -> Response {
    let status = crate::error::to_status(e);
    status_response(status)
}

fn status_response(s: tonic::Status) -> Response {
    let code = match s.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => StatusCode::FORBIDDEN,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_response(code, s.message())
}

/// `/api/admin/preview`: who would move if the action were taken (nothing is written).
async fn admin_preview(
    State(engine): State<Engine>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(req): Json<PackageRequest>,
) -> Response {
    if let Err((code, why)) = authorize_http_admin(peer, &headers) {
        return error_response(code, why);
    }
    let host = match HostName::new(req.host) {
        Ok(h) => h,
        Err(e) => return registry_error(e.into()),
    };
    let ty = match PackageType::new(req.package_type) {
        Ok(t) => t,
        Err(e) => return registry_error(e.into()),
    };
    let ttl = engine.ttl();
    let guard = engine.state_lock().clone().read_owned().await;
    let revision = guard.revision().0;
    let action = req.action;
    let radius = tokio::task::spawn_blocking(move || {
        status::action_blast_radius(&guard, &host, &ty, action, ttl)
    })
    .await;
    match radius {
        Ok(Ok(moves)) => Json(json!({ "revision": revision, "moves": moves })).into_response(),
        Ok(Err(e)) => registry_error(e),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `/api/admin/package`: drain, withdraw or restore, through the `Admin` service's handler.
async fn admin_package(
    State(engine): State<Engine>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(req): Json<PackageRequest>,
) -> Response {
    let who = match authorize_http_admin(peer, &headers) {
        Ok(a) => a.who,
        Err((code, why)) => return error_response(code, why),
    };
    let what = format!("package {:?}", req.action).to_lowercase();
    let request = tonic::Request::new(pb::PackageActionRequest {
        host: req.host.clone(),
        r#type: req.package_type.clone(),
        action: crate::wire::action_to_proto(req.action).into(),
    });
    match AdminService::new(engine).package_action(request).await {
        Ok(r) => {
            let revision = r.into_inner().revision;
            tracing::info!(who, %peer, what, host = %req.host, package_type = %req.package_type, revision, "admin write");
            Json(json!({ "revision": revision })).into_response()
        }
        Err(s) => {
            tracing::warn!(who, %peer, what, host = %req.host, package_type = %req.package_type, error = %s.message(), "admin write refused");
            status_response(s)
        }
    }
}

/// The body of `/api/admin/failover`.
#[derive(Debug, Deserialize)]
struct FailoverRequest {
    /// The member to move leadership to; empty or missing: the most up-to-date other voter.
    #[serde(default)]
    to: String,
}

/// `/api/admin/failover`: moves leadership, through the `Admin` service's handler (which
/// forwards to the leader).
async fn admin_failover(
    State(engine): State<Engine>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(req): Json<FailoverRequest>,
) -> Response {
    let who = match authorize_http_admin(peer, &headers) {
        Ok(a) => a.who,
        Err((code, why)) => return error_response(code, why),
    };
    let revision = engine.state().await.revision().0;
    let request = tonic::Request::new(pb::HaFailoverRequest {
        to: req.to.clone(),
        failback: false,
    });
    match AdminService::new(engine).ha_failover(request).await {
        Ok(r) => {
            let r = r.into_inner();
            tracing::info!(who, %peer, what = "ha failover", to = %req.to, leader = %r.leader, term = r.term, revision, "admin write");
            Json(json!({ "leader": r.leader, "term": r.term })).into_response()
        }
        Err(s) => {
            tracing::warn!(who, %peer, what = "ha failover", to = %req.to, error = %s.message(), "admin write refused");
            status_response(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_loopback_peers_may_use_admin_endpoints() {
        let h = HeaderMap::new();
        assert!(authorize_http_admin(addr("127.0.0.1:5000"), &h).is_ok());
        assert!(authorize_http_admin(addr("[::1]:5000"), &h).is_ok());
        assert!(authorize_http_admin(addr("[::ffff:127.0.0.1]:5000"), &h).is_ok());
        let (code, why) = authorize_http_admin(addr("10.0.0.7:5000"), &h).unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(why.contains("loopback"), "{why}");
    }

    #[test]
    fn another_origin_is_refused_even_from_loopback() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:7480".parse().unwrap());
        h.insert(header::ORIGIN, "http://127.0.0.1:7480".parse().unwrap());
        assert!(authorize_http_admin(addr("127.0.0.1:5000"), &h).is_ok());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(authorize_http_admin(addr("127.0.0.1:5000"), &h).is_err());
    }
}
