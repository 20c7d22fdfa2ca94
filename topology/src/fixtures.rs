//! What the crate's unit tests share: the routing rule's worked example (docs/routing.md).

/// The worked example's tree: framework > subdomain-1 > subdomain-1a.
pub(crate) const TREE: &str = "\
version: 1
domain: framework
hosts: [fm]
subdomains:
  - domain: subdomain-1
    hosts: [agent-1, agent-2]
    subdomains:
      - domain: subdomain-1a
        hosts: [agent-3, agent-4]
";

/// The manager type of the worked example.
pub(crate) const CCM: &str = "command-control-manager";
