//! The gRPC wire contract of fleet-registry, generated from `proto/fleet/registry/v1/*.proto`.
//!
//! **Only this crate knows prost.** Other crates convert these types to domain types at their
//! edge, in one place each.

/// Generated types and services of package `fleet.registry.v1`.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("fleet.registry.v1");
}

/// Encoded file descriptor set of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("fleet_registry_descriptor");

pub use v1::*;

pub mod watch_parts;
