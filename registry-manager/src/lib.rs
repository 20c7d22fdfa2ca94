//! The registry manager: the fleet's durable registry, agent sessions and push to every agent.
//!
//! Module map:
//! - [`command`]: the commands of the state machine (pure data, logged).
//! - [`state`]: the registry as a deterministic state machine (`check`, then pure `apply`).
//! - [`delta`]: what one revision changed.
//! - [`store`]: durable log + checkpoint behind [`store::RegistryStore`] (sled, memory).
//! - [`log_record`]: the record stored per revision (command + encoded delta).
//! - `engine` / `writer` / `expiry`: the running registry — state lock, group-commit writer,
//!   session expiry timer.
//! - [`sessions`]: live sessions in memory (heartbeats never touch the disk).
//! - [`watch`]: fan-out of every revision to every watch stream (shared encodings, bounded).
//! - [`wire`]: the one place domain values meet `proto` types.
//! - [`service`]: the `AgentRegistry` and `Admin` gRPC services.
//! - `server`: [`start`] / [`run`] / [`RunningManager`].
//!
//! **Invariants**: a write is acknowledged only after it is flushed; revisions grow by one per
//! logged command, across restarts; `State::apply` is pure; every watcher receives every
//! revision in order, or a snapshot that covers the ones it missed.

pub mod command;
pub mod delta;
mod engine;
pub mod error;
mod expiry;
pub mod log_record;
mod server;
pub mod service;
pub mod session_id;
pub mod sessions;
pub mod state;
pub mod store;
pub mod watch;
pub mod wire;
mod writer;

pub use command::{AgentStatus, Command, OperatorAction, Override, Registration};
pub use delta::{Delta, HostView, PackageView};
pub use engine::Engine;
pub use error::{to_status, RegistryError, ServeError};
pub use server::{run, start, start_with, start_with_store, RunningManager, ServeConfig, Tuning};
pub use session_id::SessionId;
pub use state::State;
