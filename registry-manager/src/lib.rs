//! The registry manager: the fleet's durable registry, agent sessions and push to every agent.
//!
//! Module map:
//! - [`backup`]: the backup file and restoring a store from it (a new history).
//! - [`command`]: the commands of the state machine (pure data, logged).
//! - [`state`]: the registry as a deterministic state machine (`check`, then pure `apply`).
//! - [`delta`]: what one revision changed.
//! - [`events`]: a watcher's copy and the changes each revision makes to it, in words and
//!   JSON (`registry-manager events`; pure).
//! - [`store`]: the member's sled database (checksummed records, conversion of old data).
//! - [`log_record`]: the record of the single-manager format, read once when converting.
//! - [`raft`]: openraft's types, the log store, the replicated state machine, the network.
//! - [`group`]: the group configuration and pure decisions (state names, voter checks).
//! - `engine` / `expiry` / `group_tasks` / [`hook`]: the running member — proposer (group
//!   commit), session expiry by the leader, cut-off watchdog, heartbeat passing, event hooks.
//! - [`sessions`]: live sessions in memory (heartbeats never touch the disk).
//! - [`watch`]: fan-out of every revision to every watch stream (shared encodings, bounded).
//! - [`wire`]: the one place domain values meet `proto` types.
//! - [`service`]: the `AgentRegistry` and `Admin` gRPC services.
//! - `http` / `metrics`: the HTTP side port (`/metrics` in the Prometheus text format,
//!   `/healthz`), one metrics registry per manager.
//! - [`status`] (pure: the status page's model, an operator action's blast radius) and `page`
//!   (the page at `/`, its JSON and event endpoints, the admin buttons and who may use them).
//! - `server`: [`start`] / [`run`] / [`RunningManager`].
//! - [`security`]: the `tls`/`admins`/`insecure`/`key_file` settings and the start-up checks
//!   that keep a manager off the network unless it is secured; `tls_accept`: the TLS front
//!   door (handshakes, refusals logged, plaintext clients answered with the reason).
//! - [`access`]: who a caller is (its certificate's name) and what it may do, decided by a
//!   pure function every RPC goes through.
//! - [`cluster_key`]: the MAC members sign their RPCs with (`group.key_file`).
//! - [`certs`]: the fleet's small PKI (`registry-manager certs init|issue`).
//!
//! **Invariants**: a write is acknowledged only once it is durable on a majority of the group;
//! revisions grow by one per applied command and are the same numbers on every member;
//! `State::apply` is pure; every watcher receives every revision in order, or a snapshot that
//! covers the ones it missed; **with TLS, every RPC is authorized by [`access::Access::authorize`]
//! on the identity of the caller's certificate before it does anything**, and no answer or log
//! line carries a session id or a key.

pub mod access;
pub mod backup;
pub mod certs;
pub mod cluster_key;
pub mod command;
pub mod conn_limit;
pub mod delta;
mod engine;
pub mod error;
pub mod events;
mod expiry;
pub mod group;
mod group_tasks;
mod grpc_port;
pub mod hook;
mod http;
pub mod log_record;
mod metrics;
mod page;
pub mod raft;
mod rebuild;
mod revocation;
pub mod security;
mod server;
pub mod service;
pub mod session_id;
pub mod sessions;
pub mod state;
pub mod status;
pub mod store;
mod tls_accept;
pub mod watch;
pub mod wire;

pub use command::{AgentStatus, Command, OperatorAction, Override, Registration};
pub use delta::{Delta, HostView, PackageView};
pub use engine::{Engine, IN_FLIGHT};
pub use error::{to_status, RegistryError, ServeError};
pub use group::GroupConfig;
pub use http::{HttpListen, DEFAULT_HTTP_LISTEN};
pub use security::Security;
pub use server::{run, start, start_with, RunningManager, ServeConfig, Tuning};
pub use session_id::SessionId;
pub use state::State;
