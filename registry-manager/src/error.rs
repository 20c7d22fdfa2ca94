//! Errors of the registry manager: [`RegistryError`] for requests (mapped to a gRPC status in
//! one place, [`to_status`]) and [`ServeError`] for what stops a manager from running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use topology::{HostName, NameError, PackageType, RouteError, TopologyErrors};

use crate::session_id::SessionId;
use crate::store::StoreError;

/// Why a request was refused. Each variant says what was wrong, where, and how to mend it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A name breaks the name rules (docs/topology.md).
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A request field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Which field.
        field: &'static str,
        /// What is wrong and how to mend it.
        reason: String,
    },
    /// A topology file with errors (one `FILE:LINE:COL: message` per line).
    #[error("{0}")]
    InvalidTopology(TopologyErrors),
    /// No topology has been applied yet.
    #[error("no topology has been applied to this registry yet; apply one first with `registry-manager topology apply FILE`")]
    NoTopology,
    /// The topology does not name the host.
    #[error("host \"{host}\" is not in the topology; add it to the topology file and apply it (`registry-manager topology apply FILE`)")]
    HostNotInTopology {
        /// The host.
        host: HostName,
    },
    /// Another live session holds the host.
    #[error("host \"{host}\" already has a live session; a second agent claiming the same host is refused. If this agent restarted, retry: the old session lapses after {}ms without heartbeats", ttl.as_millis())]
    SessionExists {
        /// The host.
        host: HostName,
        /// The session TTL, after which the old session lapses.
        ttl: Duration,
    },
    /// The session is unknown, expired or ended.
    #[error("the session given is not live (expired, ended or unknown); open a new session for host \"{host}\"")]
    SessionNotLive {
        /// The host the request named.
        host: HostName,
        /// The session quoted.
        session_id: SessionId,
    },
    /// A session reported for a host other than its own.
    #[error("the session given belongs to host \"{session_host}\"; an agent may only report for its own host, not \"{host}\"")]
    WrongHost {
        /// The host the request named.
        host: HostName,
        /// The host that owns the session.
        session_host: HostName,
        /// The session quoted.
        session_id: SessionId,
    },
    /// The host has registered no package of that type.
    #[error("host \"{host}\" has no registered package of type \"{package_type}\"{}", if registered.is_empty() { String::from(" (it has registered no packages)") } else { format!(" (registered: {})", registered.join(", ")) })]
    UnknownPackage {
        /// The host.
        host: HostName,
        /// The type asked for.
        package_type: PackageType,
        /// The types the host has registered, for the hint.
        registered: Vec<String>,
    },
    /// Route explain failed (unknown host, bad name, ...).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The storage failed; the write was not acknowledged.
    #[error("registry storage failed, the change was not made: {0}")]
    Storage(String),
    /// Refused by the replicated state machine (perhaps on another member): its code and text.
    #[error("{message}")]
    Refused {
        /// The gRPC code.
        code: i32,
        /// What was wrong and how to mend it.
        message: String,
    },
    /// No leader can be reached, so the write cannot be made durable on a majority.
    #[error("no leader: this member ({member}) cannot reach a majority of the group{}; the change was not made. Retry, or send it to a member of the majority", if unreachable.is_empty() { String::new() } else { format!(" (cannot reach {})", unreachable.join(", ")) })]
    NoLeader {
        /// The member that answered.
        member: String,
        /// The members it cannot reach.
        unreachable: Vec<String>,
    },
    /// This member is in touch with the majority (it leads, or follows a leader it hears), but
    /// its copy did not catch up with the writes acknowledged before a current read in time (it
    /// is applying a backlog: overloaded, or its disk is slow).
    #[error("this member ({member}) is in touch with the group but its copy did not catch up with the acknowledged writes within {waited:?} (it is busy applying a backlog); retry, or read its own copy with --stale")]
    Behind {
        /// The member that answered.
        member: String,
        /// How long the read waited.
        waited: std::time::Duration,
    },
    /// The write was sent but its outcome is unknown (the leader changed or was cut off while
    /// committing it). Retrying is safe: the registry's commands are idempotent.
    #[error("the outcome of the change is unknown: {0}; retry it (retries are safe)")]
    Uncertain(String),
    /// A group operation was refused or failed.
    #[error("{0}")]
    Group(String),
    /// The manager is shutting down.
    #[error("the registry manager is shutting down; retry against another manager")]
    ShuttingDown,
}

/// The one mapping from domain errors to gRPC statuses.
pub fn to_status(err: RegistryError) -> tonic::Status {
    tonic::Status::new(err.code(), err.to_string())
}

fn route_code(err: &RouteError) -> tonic::Code {
    match err {
        RouteError::UnknownHost(_) => tonic::Code::NotFound,
        _ => tonic::Code::InvalidArgument,
    }
}

impl RegistryError {
    /// The gRPC code of this error.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            RegistryError::InvalidName(_)
            | RegistryError::InvalidArgument { .. }
            | RegistryError::InvalidTopology(_) => Code::InvalidArgument,
            RegistryError::NoTopology | RegistryError::SessionNotLive { .. } => {
                Code::FailedPrecondition
            }
            RegistryError::HostNotInTopology { .. } | RegistryError::UnknownPackage { .. } => {
                Code::NotFound
            }
            RegistryError::SessionExists { .. } => Code::AlreadyExists,
            RegistryError::WrongHost { .. } => Code::PermissionDenied,
            RegistryError::Route(route) => route_code(route),
            RegistryError::Storage(_) => Code::Internal,
            RegistryError::ShuttingDown
            | RegistryError::NoLeader { .. }
            | RegistryError::Behind { .. }
            | RegistryError::Uncertain(_) => Code::Unavailable,
            RegistryError::Refused { code, .. } => Code::from(*code),
            RegistryError::Group(_) => Code::FailedPrecondition,
        }
    }

    /// The wire form of a refusal (it crosses between members).
    pub fn to_refusal(&self) -> crate::command::Refusal {
        match self {
            RegistryError::Refused { code, message } => crate::command::Refusal {
                code: *code,
                message: message.clone(),
            },
            other => crate::command::Refusal {
                code: other.code() as i32,
                message: other.to_string(),
            },
        }
    }

    /// A refusal that came back over the wire.
    pub fn from_refusal(r: crate::command::Refusal) -> RegistryError {
        RegistryError::Refused {
            code: r.code,
            message: r.message,
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(err: RegistryError) -> Self {
        to_status(err)
    }
}

/// What stops a manager from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another manager running there? pick another address with --listen)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP port (`/metrics`, `/healthz`) could not be bound.
    #[error("cannot listen on {addr} for the HTTP port (http_listen, --http-listen): {reason}; pick another address, or `none` to turn the HTTP port off")]
    HttpBind {
        /// The address.
        addr: SocketAddr,
        /// Why (not a `source`: the message quotes it already).
        reason: std::io::Error,
    },
    /// The data directory could not be opened or read.
    #[error("registry data in {}: {source}", data_dir.display())]
    Store {
        /// The data directory.
        data_dir: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The topology given at start is invalid; the manager refuses to start.
    #[error("the topology given at start is invalid, refusing to start:\n{0}")]
    InvalidTopology(TopologyErrors),
    /// The settings would expose the manager (plaintext beyond loopback, a member beyond
    /// loopback without a cluster key); the message says how to mend them.
    #[error("{0}")]
    Exposed(String),
    /// A certificate, key or CA file cannot be used.
    #[error("{0}; the manager did not start")]
    Tls(#[from] proto::tls::TlsError),
    /// A background task of the manager failed (storage failure, panic).
    #[error("registry manager stopped: {0}")]
    Fatal(String),
}
