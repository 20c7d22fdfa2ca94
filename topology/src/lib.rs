//! `topology`: the domain tree, its YAML form, validation and the routing rule of
//! fleet-registry. Pure: no I/O, no async.
//!
//! Module map:
//! - [`names`]: the name rules (docs/topology.md) names (`HostName`, `DomainName`, `PackageType`) and `Revision`.
//! - [`policy`]: the `routing:` section and the duration syntax.
//! - [`tree`]: the validated tree ([`Topology`]) and [`TopologyBuilder`].
//! - `parse` / `file_format`: the YAML file, version 1 (the topology file format (docs/topology.md)), located errors ([`error`]).
//! - [`snapshot`]: the registry snapshot (the registry snapshot format (docs/topology.md)).
//! - [`route`]: the routing rule (the routing rule (docs/routing.md)) and `explain`.
//! - [`explained`]: the one printed form (JSON and text) of an explanation, shared by both
//!   command lines.
//! - [`route_table`]: every route of a revision, precomputed.
//! - [`mod@coverage`]: route coverage: hosts with no or a single eligible manager, and the
//!   load of each chosen manager ([`coverage()`]).
//! - [`mod@diff`]: tree changes and who moves ([`diff()`]).
//! - [`what_if`]: who would move before anything happens: between two snapshots (an
//!   operator action's blast radius), and if a manager's host were lost.
//! - [`schema`]: the JSON Schema of the file.
//! - [`gen`]: deterministic generated fleets for benchmarks and tests.

pub mod coverage;
pub mod diff;
pub mod error;
pub mod explained;
pub mod file_format;
pub mod fixtures;
pub mod gen;
pub mod names;
mod node;
mod parse;
pub mod policy;
pub mod route;
pub mod route_table;
pub mod schema;
pub mod snapshot;
pub mod tree;
pub mod what_if;
mod yaml;

pub use coverage::{coverage, coverage_from_table, Coverage, TypeCoverage};
pub use diff::{diff, RouteChange, TopologyDiff};
pub use error::{LocatedError, LocatedErrors, TopologyError, TopologyErrors};
pub use explained::{Explained, ExplainedCandidate};
pub use names::{DomainName, HostName, NameError, NameKind, PackageType, Revision};
pub use policy::{parse_duration, RevertAfter, RoutingPolicy};
pub use route::{explain, rendezvous_score, Candidate, Explanation, RouteError, Tier};
pub use route_table::RouteTable;
pub use schema::json_schema;
pub use snapshot::{HostState, PackageState, PackageStatus, RegistrySnapshot, SnapshotError};
pub use tree::{
    Domain, DomainId, Host, Summary, Topology, TopologyBuilder, MAX_DEPTH, MAX_FILE_BYTES,
};
