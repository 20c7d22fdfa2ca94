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

/// A route explanation received on the wire, in the one printed form both command lines use.
/// `with_stale`: an agent's answer, which also says whether its copy is stale.
pub fn explained(e: &RouteExplanation, with_stale: bool) -> topology::Explained {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    topology::Explained {
        host: e.host.clone(),
        package_type: e.r#type.clone(),
        chosen: e.chosen.clone(),
        endpoint: e.endpoint.clone(),
        route: e.route.clone(),
        candidates: e
            .candidates
            .iter()
            .map(|c| topology::ExplainedCandidate {
                host: c.host.clone(),
                domain: opt(&c.domain),
                tier: opt(&c.tier),
                eligible: c.eligible,
                reason: opt(&c.reason),
                endpoint: c.endpoint.clone(),
            })
            .collect(),
        revision: Some(e.revision),
        stale: with_stale.then_some(e.stale),
    }
}

pub mod crl;
pub mod tls;
