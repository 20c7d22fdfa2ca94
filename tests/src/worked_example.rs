//! The routing rule (docs/routing.md) worked example, shared by the end-to-end tests and `fleet-demo`.

use crate::fleet::{Fleet, FleetBuilder};

/// The manager type of the worked example.
pub const CCM: &str = "command-control-manager";

/// The worked example's tree: `framework` (fm) > `subdomain-1` (agent-1, agent-2) >
/// `subdomain-1a` (agent-3, agent-4); with `subdomain_2`, also `subdomain-2` (s2-host) under
/// `framework`.
pub fn topology(revert_after: &str, subdomain_2: bool) -> String {
    let mut t = format!(
        "version: 1
routing:
  cross_branch: true
  revert_after: {revert_after}
domain: framework
hosts: [fm]
subdomains:
  - domain: subdomain-1
    hosts: [agent-1, agent-2]
    subdomains:
      - domain: subdomain-1a
        hosts: [agent-3, agent-4]
"
    );
    if subdomain_2 {
        t.push_str("  - domain: subdomain-2\n    hosts: [s2-host]\n");
    }
    t
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
