//! Starting, running and stopping a registry manager: [`start`] (what tests and benchmarks
//! call, on port 0 if they like), [`run`] (what `registry-manager serve` calls), and the
//! [`RunningManager`] handle with its explicit shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::command::Command;
use crate::engine::Engine;
use crate::error::{RegistryError, ServeError};
use crate::group::{self, GroupConfig};
use crate::raft::core_thread::CoreThread;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, Peers, MAX_MEMBER_MESSAGE};
use crate::raft::state_machine::{Registry, StateMachine};
use crate::raft::types::{MemberNode, Raft};
use crate::security::Security;
use crate::service::{AdminService, AgentRegistryService, MemberService};
use crate::sessions::SessionTable;
use crate::state::State;
use crate::store::RaftDb;
use crate::watch::WatchHub;

/// What a manager needs to run (the command-line contract (docs/manager.md, docs/agent.md) `serve`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// gRPC address; port 0 picks a free port ([`RunningManager::local_addr`] tells which).
    pub listen: SocketAddr,
    /// Where the registry is stored (sled).
    pub data_dir: PathBuf,
    /// A topology applied at start: (file name for error messages, YAML text). Invalid: the
    /// manager refuses to start. Equal to the stored topology: nothing is written.
    pub topology: Option<(String, String)>,
    /// A session not renewed within this long lapses (the host becomes not alive).
    pub session_ttl: Duration,
    /// The group this manager is a member of; none: a group of one.
    pub group: Option<GroupConfig>,
    /// HTTP port for `/metrics` and `/healthz`; none: no HTTP port. Port 0 picks a free port
    /// ([`RunningManager::http_addr`] tells which).
    pub http_listen: Option<SocketAddr>,
    /// TLS, admins, `insecure` and the cluster key (docs/security.md).
    pub security: Security,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            data_dir: PathBuf::from("./registry-data"),
            topology: None,
            session_ttl: Duration::from_secs(1),
            group: None,
            http_listen: Some(
                crate::http::DEFAULT_HTTP_LISTEN
                    .parse()
                    .expect("default HTTP address"),
            ),
            security: Security::default(),
        }
    }
}

/// Internal sizes; the defaults suit a fleet of 10,000 hosts. Tests shrink them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Deltas kept in memory for watchers to resume from.
    pub delta_window: usize,
    /// Revisions a watcher may fall behind before it is sent a fresh snapshot instead. At
    /// least `delta_window` by default: a burst of writes (a rack's sessions lapsing and
    /// reopening) then reaches a slow watcher as the deltas it missed, not as a snapshot of
    /// the whole registry to every watcher at once.
    pub broadcast_capacity: usize,
    /// Most proposals written together in one raft entry (one flush).
    pub max_batch: usize,
    /// Proposals waiting for the writer before callers wait to enqueue.
    pub proposal_queue: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Connections one client address may hold (loopback not counted; 0: no limit).
    pub max_connections_per_client: usize,
    /// Client connections the gRPC port holds in all, loopback included; 0: the process's
    /// limit of open descriptors (raised to its hard limit at start) less a reserve for the
    /// store and the other members ([`crate::conn_limit::connections_for`]).
    pub max_connections: usize,
    /// Largest request decoded by `AgentRegistry`.
    pub max_agent_request: usize,
    /// Largest request decoded by `Admin` (topology files).
    pub max_admin_request: usize,
    /// Largest message encoded (snapshots of big registries).
    pub max_response: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            delta_window: 10_000,
            broadcast_capacity: 16_384,
            max_batch: 1_024,
            proposal_queue: 16_384,
            max_concurrent_streams: 16_384,
            max_connections_per_client: 256,
            max_connections: 0,
            max_agent_request: 4 << 20,
            max_admin_request: (topology::MAX_FILE_BYTES + (1 << 20)).max(4 << 20),
            max_response: 256 << 20,
        }
    }
}

/// A manager running in this process.
#[derive(Debug)]
pub struct RunningManager {
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    engine: Engine,
    cancel: CancellationToken,
    server: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    /// Dropped last: raft is shut down before its thread stops.
    core_thread: CoreThread,
}

impl RunningManager {
    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the HTTP port (`/metrics`, `/healthz`), if it has one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The member's engine (for in-process tools and benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// This member's applied registry revision.
    pub async fn revision(&self) -> u64 {
        self.engine.state().await.revision().0
    }

    /// Number of open watch streams.
    pub fn watchers(&self) -> usize {
        self.engine.hub().watchers()
    }

    /// Stops the manager: ends watch and keep-alive streams, stops the server, raft (nothing
    /// acknowledged is lost: every acknowledged write is on a majority's disks) and the
    /// background tasks.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.cancel.cancel();
        self.finish().await
    }

    /// Waits until the manager stops on its own (a fatal error) or is cancelled.
    pub async fn wait(self) -> Result<(), ServeError> {
        self.cancel.cancelled().await;
        self.finish().await
    }

    async fn finish(self) -> Result<(), ServeError> {
        let server = self.server.await;
        let _ = self.engine.raft().shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
        // Wait for the core thread's tasks to be dropped, so the store is closed (and its
        // directory free to open again) once the manager has stopped.
        let core_thread = self.core_thread;
        let _ = tokio::task::spawn_blocking(move || core_thread.stop(CORE_THREAD_STOP)).await;
        if let Some(reason) = self.engine.fatal() {
            return Err(ServeError::Fatal(reason));
        }
        server.map_err(|e| ServeError::Fatal(format!("gRPC server task: {e}")))
    }
}

/// How long stopping waits for the raft core thread's tasks to end.
const CORE_THREAD_STOP: Duration = Duration::from_secs(5);

/// Starts a manager with default [`Tuning`]: binds, opens the store in `data_dir`, joins or
/// forms its group, and serves `AgentRegistry`, `Admin`, `Member`, gRPC health and reflection.
pub async fn start(config: ServeConfig) -> Result<RunningManager, ServeError> {
    start_with(config, Tuning::default()).await
}

/// [`start`] with explicit [`Tuning`].
pub async fn start_with(config: ServeConfig, tuning: Tuning) -> Result<RunningManager, ServeError> {
    let topology = check_start_topology(&config)?;
    if let Some(g) = &config.group {
        g.validate().map_err(ServeError::Fatal)?;
    }
    crate::security::check_exposure(config.listen, &config.security, config.group.as_ref())
        .map_err(ServeError::Exposed)?;
    let tls = match &config.security.tls {
        Some(files) => {
            let material = files.load()?;
            material.check_valid_at(std::time::SystemTime::now())?;
            Some(material)
        }
        None => None,
    };
    let keys = match &config.security.key_file {
        Some(path) => Some((
            crate::cluster_key::ClusterKeys::load(path).map_err(ServeError::Exposed)?,
            path.clone(),
        )),
        None => None,
    };
    // The address is taken now (a port in use fails before the store is read), but connections
    // are accepted only once the store is loaded: until then a client is refused at once
    // instead of hanging on a port nobody serves yet.
    let socket = bind(config.listen)?;
    let dir = config.data_dir.clone();
    // A member with others to learn from rebuilds a damaged store from them; a manager alone
    // refuses it (its remedy is a backup).
    let rebuild = config
        .group
        .as_ref()
        .is_some_and(|g| g.members.len() + g.learners.len() > 1);
    let opened = tokio::task::spawn_blocking(move || RaftDb::open_or_rebuild(&dir, rebuild))
        .await
        .map_err(|e| ServeError::Fatal(format!("opening the store: {e}")))?;
    let (db, set_aside) = opened.map_err(|source| ServeError::Store {
        data_dir: config.data_dir.clone(),
        source,
    })?;
    if let Some(aside) = set_aside {
        tracing::error!(
            damage = %aside.damage,
            kept_in = %aside.kept_in.display(),
            vote_kept = aside.vote_kept,
            "this member's store is damaged and is not served: its files are set aside and the \
             member is rebuilt from the group (it votes and serves agents once it has caught up)"
        );
    }
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    launch(listener, Arc::new(db), config, topology, tuning, tls, keys).await
}

/// Runs a manager until `shutdown` resolves (the caller handles SIGINT/SIGTERM) or a fatal
/// error stops it; then shuts down gracefully.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let ttl = config.session_ttl;
    let data_dir = config.data_dir.clone();
    let manager = start(config).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        addr = %manager.local_addr(),
        member = manager.engine().name(),
        data_dir = %data_dir.display(),
        session_ttl = ?ttl,
        "registry manager serving"
    );
    let cancel = manager.cancel.clone();
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        _ = cancel.cancelled() => {}
    }
    manager.shutdown().await
}

fn check_start_topology(config: &ServeConfig) -> Result<Option<topology::Topology>, ServeError> {
    match &config.topology {
        None => Ok(None),
        Some((file, yaml)) => topology::Topology::from_yaml(file, yaml)
            .map(Some)
            .map_err(ServeError::InvalidTopology),
    }
}

/// Pending connections the kernel queues for the gRPC port.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the gRPC address without listening yet (see [`start_with`]).
fn bind(addr: SocketAddr) -> Result<tokio::net::TcpSocket, ServeError> {
    let err = |source| ServeError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    // As std's TcpListener::bind does on Unix: a restarted manager rebinds at once.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    Ok(socket)
}

async fn launch(
    listener: TcpListener,
    db: Arc<RaftDb>,
    config: ServeConfig,
    topology: Option<topology::Topology>,
    tuning: Tuning,
    tls: Option<proto::tls::TlsMaterial>,
    keys: Option<(crate::cluster_key::ClusterKeys, PathBuf)>,
) -> Result<RunningManager, ServeError> {
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let http = match config.http_listen {
        Some(addr) => Some(crate::http::bind(addr).await?),
        None => None,
    };
    let http_addr = http.as_ref().map(|(_, addr)| *addr);
    let cancel = CancellationToken::new();
    // Until the manager is running, a failed start stops every task spawned so far.
    let started = cancel.clone().drop_guard();
    // Every TLS connection is followed, so that one of a certificate revoked later is cut.
    let open = Arc::new(crate::revocation::OpenConnections::default());
    let mut member_tls = match &tls {
        Some(material) => Some(crate::revocation::member_tls(
            material,
            config.security.crl.as_deref(),
            Arc::clone(&open),
            cancel.clone(),
        )?),
        None => None,
    };
    let store_error = |source| ServeError::Store {
        data_dir: config.data_dir.clone(),
        source,
    };
    let registry = Registry {
        state: Arc::new(tokio::sync::RwLock::new(State::new())),
        sessions: Arc::new(SessionTable::new()),
        hub: Arc::new(WatchHub::new(
            tuning.delta_window,
            tuning.broadcast_capacity,
        )),
        ttl: config.session_ttl,
    };
    let sm = StateMachine::open(Arc::clone(&db), registry).map_err(store_error)?;
    let log = LogStore::new(Arc::clone(&db));
    let group = config
        .group
        .clone()
        .unwrap_or_else(|| GroupConfig::stand_alone(local_addr.to_string()));
    let node_id = group::node_id(group.name.as_str());
    let raft_config = crate::raft::config("fleet-registry")
        .validate()
        .map_err(|e| ServeError::Fatal(format!("raft configuration: {e}")))?;
    let peers = Peers::new(
        group
            .dial
            .iter()
            .map(|(name, addr)| (name.to_string(), addr.clone()))
            .collect(),
        member_tls.as_ref().map(|t| t.client.clone()),
        keys,
    );
    let core_thread = CoreThread::start()
        .map_err(|e| ServeError::Fatal(format!("starting the raft thread: {e}")))?;
    let raft = core_thread
        .spawn(Raft::new(
            node_id,
            Arc::new(raft_config),
            Network::new(peers.clone()),
            log,
            sm.clone(),
        ))
        .await
        .map_err(|e| ServeError::Fatal(format!("starting raft: {e}")))?
        .map_err(|e| ServeError::Fatal(format!("starting raft: {e}")))?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| ServeError::Fatal(format!("starting raft: {e}")))?;
    let mut rebuilding = db.is_rebuilding().map_err(store_error)?;
    if !rebuilding
        && !initialized
        && !group.is_stand_alone()
        && crate::rebuild::joins_a_formed_group(&group, &peers).await
    {
        db.mark_rebuilding().map_err(store_error)?;
        rebuilding = true;
    }
    if rebuilding {
        // It waits for the leader to send it the log: it forms nothing and stands for nothing.
        raft.runtime_config().elect(false);
    } else if !initialized && group.members.contains_key(&group.name) {
        // Every voter forms the group with the same members; a learner waits to be added.
        let members: std::collections::BTreeMap<u64, MemberNode> = group
            .members
            .iter()
            .map(|(name, addr)| {
                let addr = if *name == group.name && config.group.is_none() {
                    local_addr.to_string()
                } else {
                    addr.clone()
                };
                (
                    group::node_id(name.as_str()),
                    MemberNode {
                        name: name.to_string(),
                        addr,
                    },
                )
            })
            .collect();
        if let Err(e) = raft.initialize(members).await {
            tracing::debug!(error = %e, "group already initialized");
        }
    }
    let (engine, proposer) = Engine::new(raft, &sm, group, peers, &tuning, cancel.clone());
    let mut tasks = vec![
        core_thread.spawn(proposer),
        tokio::spawn(crate::expiry::run(engine.clone())),
        tokio::spawn(crate::group_tasks::watchdog(engine.clone())),
        tokio::spawn(crate::group_tasks::pass_heartbeats(engine.clone())),
        tokio::spawn(crate::group_tasks::raft_guard(engine.clone())),
    ];
    if db.base_state().map_err(store_error)?.is_some() {
        tasks.push(tokio::spawn(crate::rebuild::fold_base_state(
            engine.clone(),
        )));
    }
    if rebuilding {
        engine.set_rebuilding(true);
        tasks.push(tokio::spawn(crate::rebuild::finish_rebuild(
            engine.clone(),
            Arc::clone(&db),
        )));
    }

    let mut topology = topology;
    if engine.group().is_stand_alone() {
        // A manager alone leads within an election timeout and needs no network for it: the
        // port opens once it leads and its start topology is in place, so the first requests
        // find it ready.
        let ready = tokio::time::timeout(Duration::from_secs(10), engine.read_barrier(false));
        if !matches!(ready.await, Ok(Ok(()))) {
            tracing::warn!("this manager did not become the leader of its group of one within 10s");
        }
        if let Some(t) = topology.take() {
            seed_topology(engine.clone(), t).await;
        }
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::agent_registry_server::AgentRegistryServer<AgentRegistryService>>()
        .await;
    health
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let access = Arc::new(config.security.access(config.group.as_ref()));
    let agent = pb::agent_registry_server::AgentRegistryServer::new(
        AgentRegistryService::with_access(engine.clone(), Arc::clone(&access)),
    )
    .max_decoding_message_size(tuning.max_agent_request)
    .max_encoding_message_size(tuning.max_response);
    let admin = pb::admin_server::AdminServer::new(AdminService::with_access(
        engine.clone(),
        Arc::clone(&access),
    ))
    .max_decoding_message_size(tuning.max_admin_request)
    .max_encoding_message_size(tuning.max_response);
    let member = pb::member_server::MemberServer::new(MemberService::with_access(
        engine.clone(),
        Arc::clone(&access),
    ))
    .max_decoding_message_size(MAX_MEMBER_MESSAGE)
    .max_encoding_message_size(MAX_MEMBER_MESSAGE);

    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agent)
        .add_service(admin)
        .add_service(member);
    let routes = routes.routes();
    let http2 = crate::grpc_port::Http2 {
        max_concurrent_streams: tuning.max_concurrent_streams,
        keepalive_interval: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(5),
        max_send_buf: crate::grpc_port::MAX_SEND_BUF,
    };
    let max_connections = match tuning.max_connections {
        0 => {
            let limit = crate::conn_limit::raise_descriptor_limit().unwrap_or_else(|e| {
                let soft = crate::conn_limit::descriptor_limit().unwrap_or(1024);
                tracing::warn!(error = %e, descriptors = soft, "cannot raise the limit of open descriptors; keeping it");
                soft
            });
            let max = crate::conn_limit::connections_for(limit);
            tracing::info!(descriptors = limit, max_connections = max, "open descriptors allowed: client connections past max_connections are closed at once, the rest kept for the store and the other members");
            max
        }
        n => n,
    };
    let slots = crate::conn_limit::Slots::new(
        tuning.max_connections_per_client,
        max_connections,
        engine.telemetry().slot_gauges(),
    );
    let server = match member_tls.as_mut() {
        None => {
            let (incoming, accept) = crate::conn_limit::accept_plain(
                listener,
                slots,
                crate::conn_limit::FIRST_BYTES_TIMEOUT,
                cancel.clone(),
            );
            tasks.push(accept);
            crate::grpc_port::spawn(incoming, routes, http2, cancel.clone())
        }
        Some(member_tls) => {
            tasks.extend(member_tls.follow.take());
            let (sorted, accept) = crate::tls_accept::sort(
                listener,
                member_tls.configs.clone(),
                open,
                slots,
                cancel.clone(),
            );
            tasks.push(accept);
            tasks.push(spawn_plaintext_refuser(
                sorted.plain,
                engine.clone(),
                health_service_for_refuser(),
                cancel.clone(),
            ));
            crate::grpc_port::spawn(sorted.tls, routes, http2, cancel.clone())
        }
    };

    if let Some(topology) = topology {
        tasks.push(tokio::spawn(seed_topology(engine.clone(), topology)));
    }
    if let Some((listener, addr)) = http {
        tasks.push(crate::http::spawn(listener, engine.clone()));
        tracing::info!(%addr, "HTTP port serving the status page (/), /metrics and /healthz");
    }
    started.disarm();
    Ok(RunningManager {
        local_addr,
        http_addr,
        engine,
        cancel,
        server,
        tasks,
        core_thread,
    })
}

/// A fresh health service for the plaintext refuser (every call is refused before it).
fn health_service_for_refuser(
) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health> {
    tonic_health::server::health_reporter().1
}

/// Serves plaintext connections of a TLS manager: every call of every service is answered
/// `UNAUTHENTICATED` with [`crate::tls_accept::PLAINTEXT_REFUSED`].
fn spawn_plaintext_refuser(
    incoming: tokio_stream::wrappers::ReceiverStream<
        std::io::Result<crate::conn_limit::Counted<tokio::net::TcpStream>>,
    >,
    engine: Engine,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    fn refuse(_: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        Err(tonic::Status::unauthenticated(
            crate::tls_accept::PLAINTEXT_REFUSED,
        ))
    }
    let server = tonic::transport::Server::builder()
        .add_service(
            pb::agent_registry_server::AgentRegistryServer::with_interceptor(
                AgentRegistryService::new(engine.clone()),
                refuse,
            ),
        )
        .add_service(pb::admin_server::AdminServer::with_interceptor(
            AdminService::new(engine.clone()),
            refuse,
        ))
        .add_service(pb::member_server::MemberServer::with_interceptor(
            MemberService::new(engine),
            refuse,
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            health, refuse,
        ))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned());
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "the plaintext refuser stopped");
        }
    })
}

/// `serve --topology`: applied only when the registry has no topology yet; a different live
/// topology is kept, with a warning that says how to apply the file.
async fn seed_topology(engine: Engine, topology: topology::Topology) {
    let cancel = engine.cancel_token().clone();
    // Wait until this member's copy is current (the group has formed).
    loop {
        if cancel.is_cancelled() {
            return;
        }
        if engine.read_barrier(false).await.is_ok() {
            break;
        }
    }
    let live = engine.state().await.topology().cloned();
    match live {
        Some(live) if *live == topology => {}
        Some(live) => {
            let d = topology::diff(&live, &topology, &engine.state().await.to_snapshot());
            tracing::warn!(
                hosts_added = d.hosts_added.len(),
                hosts_removed = d.hosts_removed.len(),
                hosts_moved = d.hosts_moved.len(),
                domains_added = d.domains_added.len(),
                domains_removed = d.domains_removed.len(),
                "the registry already holds a different topology; it is kept. To apply the file, \
                 run `registry-manager topology diff FILE` then `registry-manager topology apply FILE`"
            );
        }
        None => {
            let command = Command::ApplyTopology {
                yaml: topology.to_yaml(),
            };
            match engine.propose(command, None).await {
                Ok(revision) => tracing::info!(%revision, "applied the start topology"),
                Err(RegistryError::Storage(reason)) => engine.fail(reason),
                Err(e) => tracing::warn!(error = %e, "could not apply the start topology"),
            }
        }
    }
}

/// The services a manager serves, as gRPC reflection lists them. The descriptor set of
/// `proto` also holds `Agent`, which only agents serve: it is not listed.
pub const SERVED_SERVICES: [&str; 6] = [
    pb::agent_registry_server::SERVICE_NAME,
    pb::admin_server::SERVICE_NAME,
    pb::member_server::SERVICE_NAME,
    tonic_health::pb::health_server::SERVICE_NAME,
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// gRPC server reflection, v1 and v1alpha (older tools such as some grpcurl versions ask
/// v1alpha), listing [`SERVED_SERVICES`]; both can describe every listed service.
#[allow(clippy::type_complexity)]
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let builder = || {
        SERVED_SERVICES.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                ),
            |b, name| b.with_service_name(*name),
        )
    };
    let failed =
        |e: tonic_reflection::server::Error| ServeError::Fatal(format!("gRPC reflection: {e}"));
    Ok((
        builder().build_v1().map_err(failed)?,
        builder().build_v1alpha().map_err(failed)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_port_refuses_connections_until_it_listens_and_a_taken_port_is_named() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        // Bound but not listening (the store is still loading): refused at once, no hang.
        let e = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        let listener = socket.listen(LISTEN_BACKLOG).unwrap();
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert!(connected.is_ok() && accepted.is_ok());
        // A second manager on the same address fails at bind, naming it.
        match bind(addr) {
            Err(ServeError::Bind { addr: a, .. }) => assert_eq!(a, addr),
            other => panic!("expected a bind error, got {:?}", other.map(|_| ())),
        }
    }
}
