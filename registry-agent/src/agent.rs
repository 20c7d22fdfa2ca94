//! Starting, running and stopping an agent: wires the tasks together (local checks, session
//! client, routing engine, prober, local API, forwarders) around shared state, and owns the
//! shutdown signal that stops them all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use proto::v1::agent_server::AgentServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use topology::PackageType;

use crate::api::AgentApi;
use crate::bootstrap::Bootstrap;
use crate::checks::spawn_checks;
use crate::config::AgentConfig;
use crate::copy_store::CopyStore;
use crate::error::AgentError;
use crate::forwarder::Forwarder;
use crate::health_view::HealthView;
use crate::metrics::AgentMetrics;
use crate::prober::run_prober;
use crate::registry_copy::RegistryCopy;
use crate::route_book::RouteBook;
use crate::route_engine::{run_engine, EngineInputs, RouteEngine};
use crate::session::{SessionClient, SessionTiming, REGISTRY_MANAGER_TYPE};

/// How long `shutdown` waits for tasks to finish before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A running agent. Dropping it without [`RunningAgent::shutdown`] leaves its tasks running
/// until the runtime ends; call `shutdown` to stop it and release its data directory.
#[derive(Debug)]
pub struct RunningAgent {
    local_addr: SocketAddr,
    forwards: BTreeMap<PackageType, SocketAddr>,
    http_addr: Option<SocketAddr>,
    book: watch::Receiver<Arc<RouteBook>>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningAgent {
    /// The bound address of the local API.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of the forward port of a type.
    pub fn forward_addr(&self, package_type: &str) -> Option<SocketAddr> {
        self.forwards.get(package_type).copied()
    }

    /// The bound address of the HTTP port (`/metrics`, `/healthz`), if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The routes as the agent sees them now.
    pub fn routes(&self) -> Arc<RouteBook> {
        self.book.borrow().clone()
    }

    /// A receiver of every new route book (for tests and harnesses that wait on a condition).
    pub fn subscribe(&self) -> watch::Receiver<Arc<RouteBook>> {
        self.book.clone()
    }

    /// The chosen manager of a type now.
    pub fn chosen(&self, package_type: &str) -> Option<String> {
        self.book
            .borrow()
            .chosen(package_type)
            .map(|h| h.as_str().to_owned())
    }

    /// True while the agent has no live registry session.
    pub fn stale(&self) -> bool {
        self.book.borrow().stale
    }

    /// Revision of the registry copy.
    pub fn revision(&self) -> u64 {
        self.book.borrow().revision
    }

    /// Route changes since start, all types together.
    pub fn route_changes(&self) -> u64 {
        self.book.borrow().total_changes
    }

    /// Stops every task and waits for them (bounded), releasing ports and the data directory.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
    }
}

/// The agent's TLS client side: its certificate must be valid now and name this host (the
/// managers let an agent act only for the host its certificate names). With `crl`, managers'
/// certificates are checked against the CA's list of revoked ones too; the version of the
/// list read, for following it.
fn client_tls(
    files: &proto::tls::TlsFiles,
    crl: Option<&std::path::Path>,
    host: &topology::HostName,
) -> Result<(proto::crl::ClientTls, Option<proto::crl::FileStamp>), AgentError> {
    let material = files.load()?;
    material.check_valid_at(std::time::SystemTime::now())?;
    if material.name() != host.as_str() {
        return Err(proto::tls::TlsError {
            what: "certificate",
            path: files.cert.display().to_string(),
            reason: format!(
                "names \"{}\" but this agent is host \"{host}\"; the managers let an agent act only for the host its certificate names. Issue one with `registry-manager certs issue --dir D {host}`",
                material.name()
            ),
        }
        .into());
    }
    let Some(path) = crl else {
        return Ok((material.client_tls(None)?, None));
    };
    let (pem, stamp) = proto::crl::read(path)?;
    let tls = material.client_tls(Some((path, &pem)))?;
    tracing::info!(path = %path.display(), revoked = proto::crl::revoked_serials(&pem).len(), "read the revocation list: managers' certificates it names are refused");
    Ok((tls, Some(stamp)))
}

/// How often the revocation list's file is looked at.
const CRL_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Follows the revocation list's file from the version read until `shutdown`: a changed list
/// is put in force for every new handshake; one that cannot be used is logged and the one
/// before stays in force.
fn follow_crl(
    tls: proto::crl::ClientTls,
    path: std::path::PathBuf,
    from: proto::crl::FileStamp,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(proto::crl::follow_file(
        path,
        from,
        CRL_CHECK_EVERY,
        shutdown,
        move |path, pem| match tls.revoke_from(path, &pem) {
            Ok(serials) => {
                tracing::info!(path = %path.display(), revoked = serials.len(), "read the changed revocation list: managers' certificates are checked against it")
            }
            Err(e) => {
                tracing::warn!(error = %e, "the revocation list changed but cannot be used; the list read before stays in force")
            }
        },
    ))
}

async fn bind(what: String, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { what, addr, source })
}

/// Starts an agent: opens the persisted copy (answering from it at once), binds the local API
/// and forward ports, and starts every task. Returns once everything listens.
pub async fn start(config: AgentConfig) -> Result<RunningAgent, AgentError> {
    let (tls, crl_read) = match &config.tls {
        Some(files) => {
            let (tls, read) = client_tls(files, config.crl.as_deref(), &config.host)?;
            (Some(tls), read)
        }
        None => (None, None),
    };
    // The local API and forward ports serve local programs, in plaintext and without
    // credentials: beyond loopback only when configured so, and then said in the log.
    for (what, addr) in std::iter::once(("the local API (listen)".to_owned(), config.listen)).chain(
        config
            .forward
            .iter()
            .map(|f| (format!("forward {}", f.package_type), f.listen)),
    ) {
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, what, "listening beyond loopback: this port is plaintext and asks for no credentials (it serves local programs); keep it on 127.0.0.1 unless every program that can reach it may use it");
        }
    }
    // Every forwarded connection takes two descriptors: as many as the hard limit allows (a
    // service or a shell often starts with a soft limit of 1,024).
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(descriptors = limit, "open descriptors allowed"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the limit of open descriptors"),
    }
    let store = CopyStore::open(&config.data_dir)?;
    let copy = match store.load() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                error = %e,
                data_dir = %config.data_dir.display(),
                "the persisted registry copy is damaged: discarding it and starting from a fresh snapshot of the registry (the agent answers stale until a registry manager is reached)"
            );
            if let Err(e) = store.clear() {
                tracing::error!(error = %e, "cannot clear the damaged registry copy; delete the data directory and restart the agent");
            }
            RegistryCopy::default()
        }
    };
    if copy.has_data() {
        tracing::info!(
            revision = copy.revision(),
            "loaded the persisted registry copy"
        );
    }

    let api_listener = bind("the local API".into(), config.listen).await?;
    let local_addr = api_listener
        .local_addr()
        .map_err(|source| AgentError::Bind {
            what: "the local API".into(),
            addr: config.listen,
            source,
        })?;
    let mut forward_listeners = Vec::new();
    let mut forwards = BTreeMap::new();
    for f in &config.forward {
        let what = format!("forward {}", f.package_type);
        let l = bind(what.clone(), f.listen).await?;
        let addr = l.local_addr().map_err(|source| AgentError::Bind {
            what,
            addr: f.listen,
            source,
        })?;
        forwards.insert(f.package_type.clone(), addr);
        forward_listeners.push((f.package_type.clone(), l));
    }
    let http_listener = match config.http_listen {
        Some(addr) => {
            let what = "the HTTP port (http_listen; `none` turns it off)".to_owned();
            let l = bind(what.clone(), addr).await?;
            let bound = l
                .local_addr()
                .map_err(|source| AgentError::Bind { what, addr, source })?;
            Some((l, bound))
        }
        None => None,
    };
    let http_addr = http_listener.as_ref().map(|(_, a)| *a);
    let metrics = Arc::new(AgentMetrics::new(
        config.forward.iter().map(|f| &f.package_type),
    ));

    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    if let (Some(tls), Some(path), Some(read)) = (&tls, &config.crl, crl_read) {
        tasks.push(follow_crl(
            tls.clone(),
            path.clone(),
            read,
            shutdown.clone(),
        ));
    }
    let health = Arc::new(HealthView::new(&config.health));
    let mut always: Vec<PackageType> = config
        .forward
        .iter()
        .map(|f| f.package_type.clone())
        .collect();
    always.extend(PackageType::new(REGISTRY_MANAGER_TYPE));
    let mut engine = RouteEngine::new(config.host.clone(), always);
    let first = engine.recompute(&copy, &|_, _| false, true, Instant::now());
    let (book_tx, book_rx) = watch::channel(Arc::new(first.book));
    let copy = Arc::new(RwLock::new(copy));
    let (copy_changed_tx, copy_changed_rx) = watch::channel(0u64);
    let (stale_tx, stale_rx) = watch::channel(true);

    let inputs = EngineInputs {
        copy: copy.clone(),
        copy_changed: copy_changed_rx,
        stale: stale_rx,
        health: health.clone(),
        metrics: metrics.clone(),
    };
    tasks.push(tokio::spawn(run_engine(
        engine,
        inputs,
        book_tx,
        shutdown.clone(),
    )));

    let (statuses, check_tasks) = spawn_checks(&config.packages, &shutdown);
    tasks.extend(check_tasks);

    let session = SessionClient {
        host: config.host.clone(),
        packages: config.packages.clone(),
        statuses,
        copy,
        copy_changed: copy_changed_tx,
        stale: stale_tx,
        store,
        book: book_rx.clone(),
        health: health.clone(),
        bootstrap: Bootstrap::new(config.managers.clone(), config.dns_servers.clone()),
        timing: SessionTiming::default(),
        tls: tls.clone(),
    };
    tasks.push(tokio::spawn(session.run(shutdown.clone())));

    tasks.push(tokio::spawn(run_prober(
        config.health,
        tls,
        book_rx.clone(),
        health.clone(),
        metrics.clone(),
        shutdown.clone(),
    )));

    for (t, l) in forward_listeners {
        let f = Forwarder {
            package_type: t,
            book: book_rx.clone(),
            health: health.clone(),
            connect_timeout: config.health.timeout,
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(f.run(l, shutdown.clone())));
    }

    let api = AgentApi {
        book: book_rx.clone(),
        shutdown: shutdown.clone(),
    };
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let (reflection_v1, reflection_v1alpha) = crate::api::reflection_services()
        .map_err(|e| tracing::error!(error = %e, "gRPC reflection is not served"))
        .ok()
        .unzip();
    reporter.set_serving::<AgentServer<AgentApi>>().await;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(api_listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    });
    let server_shutdown = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(AgentServer::new(api))
            .serve_with_incoming_shutdown(incoming, server_shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "local API server stopped");
        }
    }));

    if let Some((listener, addr)) = http_listener {
        tasks.push(crate::http::spawn(
            listener,
            book_rx.clone(),
            metrics,
            shutdown.clone(),
        ));
        tracing::info!(%addr, "HTTP port serving /metrics and /healthz");
    }

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        host = %config.host,
        listen = %local_addr,
        data_dir = %config.data_dir.display(),
        "registry agent started"
    );
    Ok(RunningAgent {
        local_addr,
        forwards,
        http_addr,
        book: book_rx,
        shutdown,
        tasks,
    })
}

/// Runs an agent until `shutdown` is cancelled (the entry point of `registry-agent run`).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let agent = start(config).await?;
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    agent.shutdown().await;
    Ok(())
}
