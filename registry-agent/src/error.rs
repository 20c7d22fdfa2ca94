//! Errors of starting and running an agent (fatal errors; request errors are gRPC statuses).

use std::net::SocketAddr;

use crate::config_error::ConfigErrors;
use crate::copy_store::StoreError;

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A listening address could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}; pick a free port (0 picks one) or stop what uses it")]
    Bind {
        /// What the address is for (`the local API`, `forward command-control-manager`).
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The `tls` files cannot be used (unreadable, not PEM, expired).
    #[error("{0}; the agent did not start")]
    Tls(#[from] proto::tls::TlsError),
    /// The persisted registry copy cannot be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
}
