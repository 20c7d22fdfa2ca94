//! `registry-agent`: the daemon every host runs (the command-line contract (docs/manager.md, docs/agent.md)). It keeps a persisted copy of the
//! registry, computes for every manager type the nearest healthy manager of its own host
//! (the routing rule (docs/routing.md), with a revert hold-down), answers local programs on a gRPC API and forwards TCP
//! connections to the chosen manager, failing over within the same accept.
//!
//! Module map (pure modules first):
//! - [`config`] / [`config_error`]: the configuration file, located errors.
//! - [`router`]: the routing decision in time (leave at once, revert after hold-down). Pure.
//! - [`probe_counter`], [`package_check`]: fall/rise counters. Pure.
//! - [`registry_copy`]: the registry copy and the wire conversions of registry data.
//! - [`route_book`], [`route_engine`]: every route of the host, recomputed on every change.
//! - [`health_view`], [`prober`]: active probes and passive marks of managers.
//! - [`copy_store`]: the copy persisted in sled.
//! - [`session`], [`bootstrap`]: the session with a registry manager and the watch stream
//!   ([`session_machine`]: its protocol decisions, events in, actions out. Pure);
//!   [`report_plan`]: which status reports to send (changes, and statuses the registry holds
//!   wrongly). Pure.
//! - [`checks`]: local checks of this host's packages.
//! - [`forwarder`]: forward ports.
//! - [`api`]: the local `Agent` gRPC service.
//! - [`http`] / [`metrics`]: the HTTP side port (`/metrics` in the Prometheus text format,
//!   `/healthz`), one metrics registry per agent.
//! - [`agent`]: [`start`] / [`run`] / [`RunningAgent`].
//! - [`route_watch`]: `registry-agent watch` (which route changes to print: pure; the
//!   reconnecting stream reader).
//! - [`cli`]: the command line (`main.rs` only calls [`cli::main`]).

pub mod agent;
pub mod api;
pub mod bootstrap;
pub mod checks;
pub mod cli;
pub mod config;
pub mod config_error;
pub mod copy_store;
pub mod error;
pub mod forwarder;
pub mod health_view;
pub mod http;
pub mod metrics;
pub mod package_check;
pub mod probe_counter;
pub mod prober;
pub mod registry_copy;
pub mod report_plan;
pub mod route_book;
pub mod route_engine;
pub mod route_watch;
pub mod router;
pub mod session;
pub mod session_machine;

pub use agent::{run, start, RunningAgent};
pub use config::{AgentConfig, Check, ForwardConfig, HealthConfig, ManagerAddress, PackageConfig};
pub use config_error::{ConfigError, ConfigErrors};
pub use error::AgentError;
pub use route_book::{RouteBook, TypeRoute};
