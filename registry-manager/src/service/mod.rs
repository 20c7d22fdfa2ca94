//! The gRPC services a registry manager serves (health and reflection come from tonic).

mod admin;
mod agent_registry;
mod member;

pub use admin::{parse_topology, AdminService};
pub use agent_registry::AgentRegistryService;
pub use member::MemberService;
