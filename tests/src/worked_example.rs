//! The routing rule (docs/routing.md) worked example, shared by the end-to-end tests and `fleet-demo`.

use crate::fleet::{Fleet, FleetBuilder};

pub use topology::fixtures::CCM;

/// The worked example's tree (`topology::fixtures`) with `cross_branch: true` and
/// `revert_after`; with `subdomain_2`, also `subdomain-2` (s2-host) under `framework`.
pub fn topology(revert_after: &str, subdomain_2: bool) -> String {
    topology::fixtures::tree_with_routing(
        &format!("  cross_branch: true\n  revert_after: {revert_after}\n"),
        subdomain_2,
    )
}

/// The whole worked-example fleet: a manager, an agent per host (s2-host's waits until
/// `subdomain-2` is applied), command-control-managers on fm, agent-1, agent-3 and s2-host,
/// and a forwarding port for them on every agent.
pub fn fleet(revert_after: &str) -> FleetBuilder {
    let mut b = Fleet::from_topology(&topology(revert_after, false)).manager();
    for host in ["fm", "agent-1", "agent-2", "agent-3", "agent-4", "s2-host"] {
        b = b.agent(host);
    }
    for host in ["fm", "agent-1", "agent-3", "s2-host"] {
        b = b.package(host, CCM);
    }
    b.forward(CCM)
}
