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
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::command::Command;
use crate::engine::Engine;
use crate::error::{RegistryError, ServeError};
use crate::service::{AdminService, AgentRegistryService};
use crate::store::{RegistryStore, SledStore};

/// What a manager needs to run (SPEC §6 `serve`).
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
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            data_dir: PathBuf::from("./registry-data"),
            topology: None,
            session_ttl: Duration::from_secs(1),
        }
    }
}

/// Internal sizes; the defaults suit a fleet of 10,000 hosts. Tests shrink them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Deltas kept (in memory and in the log) for watchers to resume from.
    pub delta_window: usize,
    /// A checkpoint of the state is written every this many revisions.
    pub checkpoint_every: u64,
    /// Revisions a watcher may fall behind before it is sent a fresh snapshot instead.
    pub broadcast_capacity: usize,
    /// Most proposals written (and flushed) together.
    pub max_batch: usize,
    /// Proposals waiting for the writer before callers wait to enqueue.
    pub proposal_queue: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
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
            checkpoint_every: 1_000,
            broadcast_capacity: 4_096,
            max_batch: 1_024,
            proposal_queue: 16_384,
            max_concurrent_streams: 16_384,
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
    engine: Engine,
    cancel: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    writer: JoinHandle<()>,
    expiry: JoinHandle<()>,
}

impl RunningManager {
    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry engine (for in-process tools and benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The current registry revision.
    pub async fn revision(&self) -> u64 {
        self.engine.state().await.revision().0
    }

    /// Number of open watch streams.
    pub fn watchers(&self) -> usize {
        self.engine.hub().watchers()
    }

    /// Stops the manager: ends watch and keep-alive streams, stops the server, the writer
    /// (nothing acknowledged is lost: every acknowledged write was flushed) and the expiry task,
    /// and closes the store.
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
        let _ = self.writer.await;
        let _ = self.expiry.await;
        if let Some(reason) = self.engine.fatal() {
            return Err(ServeError::Fatal(reason));
        }
        match server {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Transport(e)),
            Err(e) => Err(ServeError::Fatal(format!("gRPC server task: {e}"))),
        }
    }
}

/// Starts a manager with default [`Tuning`]: binds, opens the store in `data_dir`, applies the
/// topology if one is given, and serves `AgentRegistry`, `Admin`, gRPC health and reflection.
pub async fn start(config: ServeConfig) -> Result<RunningManager, ServeError> {
    start_with(config, Tuning::default()).await
}

/// [`start`] with explicit [`Tuning`].
pub async fn start_with(config: ServeConfig, tuning: Tuning) -> Result<RunningManager, ServeError> {
    let topology = check_start_topology(&config)?;
    let listener = bind(config.listen).await?;
    let dir = config.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || SledStore::open(&dir))
        .await
        .map_err(|e| ServeError::Fatal(format!("opening the store: {e}")))?;
    let store = opened.map_err(|source| ServeError::Store {
        data_dir: config.data_dir.clone(),
        source,
    })?;
    launch(listener, Arc::new(store), config, topology, tuning).await
}

/// [`start_with`] on a given store (`config.data_dir` is then unused): for benchmarks that
/// leave the disk out (`MemoryStore`) and for other store implementations.
pub async fn start_with_store(
    config: ServeConfig,
    store: Arc<dyn RegistryStore>,
    tuning: Tuning,
) -> Result<RunningManager, ServeError> {
    let topology = check_start_topology(&config)?;
    let listener = bind(config.listen).await?;
    launch(listener, store, config, topology, tuning).await
}

/// Runs a manager until `shutdown` resolves (the caller handles SIGINT/SIGTERM) or a fatal
/// error stops it; then shuts down gracefully.
pub async fn run(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let manager = start(config).await?;
    let revision = manager.revision().await;
    tracing::info!(addr = %manager.local_addr(), revision, "registry manager serving");
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

async fn launch(
    listener: TcpListener,
    store: Arc<dyn RegistryStore>,
    config: ServeConfig,
    topology: Option<topology::Topology>,
    tuning: Tuning,
) -> Result<RunningManager, ServeError> {
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let cancel = CancellationToken::new();
    let (engine, writer) = Engine::open(store, config.session_ttl, &tuning, cancel.clone())
        .map_err(|source| ServeError::Store {
            data_dir: config.data_dir.clone(),
            source,
        })?;
    let writer = tokio::spawn(writer.run());

    if let Some(topology) = topology {
        let unchanged = engine
            .state()
            .await
            .topology()
            .is_some_and(|t| **t == topology);
        if !unchanged {
            let command = Command::ApplyTopology {
                yaml: topology.to_yaml(),
            };
            if let Err(e) = engine.propose(command, None).await {
                cancel.cancel();
                let _ = writer.await;
                return Err(match e {
                    RegistryError::Storage(reason) => ServeError::Fatal(reason),
                    other => ServeError::Fatal(other.to_string()),
                });
            }
        }
    }
    let expiry = tokio::spawn(crate::expiry::run(engine.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::agent_registry_server::AgentRegistryServer<AgentRegistryService>>()
        .await;
    health
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Fatal(format!("gRPC reflection: {e}")))?;
    let agent = pb::agent_registry_server::AgentRegistryServer::new(AgentRegistryService::new(
        engine.clone(),
    ))
    .max_decoding_message_size(tuning.max_agent_request)
    .max_encoding_message_size(tuning.max_response);
    let admin = pb::admin_server::AdminServer::new(AdminService::new(engine.clone()))
        .max_decoding_message_size(tuning.max_admin_request)
        .max_encoding_message_size(tuning.max_response);

    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(tuning.max_concurrent_streams)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(agent)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            cancel.clone().cancelled_owned(),
        );
    let server_cancel = cancel.clone();
    let server = tokio::spawn(async move {
        let result = server.await;
        // However the server ended, the rest of the manager stops with it.
        server_cancel.cancel();
        result
    });
    Ok(RunningManager {
        local_addr,
        engine,
        cancel,
        server,
        writer,
        expiry,
    })
}
