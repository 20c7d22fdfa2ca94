//! End-to-end harness: runs the real `registry-manager` and `registry-agent` binaries as a small
//! fleet on loopback, with stand-in manager packages, and breaks it the ways real fleets break.
//!
//! - [`dns`]: a small DNS server on loopback answering SRV questions from a table.
//! - [`inproc`]: a registry manager in the test's own process, with clients and watch helpers.
//! - [`fleet`]: the [`Fleet`] builder and the processes it owns (every one reaped on drop).
//! - [`standin`]: stand-in manager packages: TCP servers that answer with their host name.
//! - [`load`]: loads that run beside a fault (writes through a group, forwarded connections).
//! - [`pki`]: certificates `certs` never makes (expired ones), for refusal tests.
//! - [`relay`]: a loopback relay a test can cut so packets vanish without a reset (blackhole).
//! - [`tooling`]: HTTP GET and Prometheus samples, gRPC reflection — for every crate's tests.
//! - [`wait`]: waiting on conditions with deadlines.
//! - [`worked_example`]: the routing-rule worked example's topology and fleet.

pub mod bench;
pub mod dns;
pub mod fleet;
pub mod inproc;
pub mod load;
pub mod pki;
pub mod relay;
pub mod standin;
pub mod tooling;
pub mod wait;
pub mod worked_example;

pub use fleet::{Fleet, FleetBuilder};
pub use relay::Relay;
pub use standin::StandIn;
pub use wait::wait_until;
