//! The routing rule's worked example (docs/routing.md): the one copy of its tree that the unit
//! tests, the end-to-end tests, the benchmarks and the demo share.

/// The worked example's tree without its `version` line, so the variants below build on it.
macro_rules! worked_example_body {
    () => {
        "domain: framework
hosts: [fm]
subdomains:
  - domain: subdomain-1
    hosts: [agent-1, agent-2]
    subdomains:
      - domain: subdomain-1a
        hosts: [agent-3, agent-4]
"
    };
}

/// The worked example's tree: framework (fm) > subdomain-1 (agent-1, agent-2) > subdomain-1a
/// (agent-3, agent-4).
pub const TREE: &str = concat!("version: 1\n", worked_example_body!());

/// [`TREE`] with a second branch under framework: subdomain-2 (s2-host).
pub const TREE_WITH_SUBDOMAIN_2: &str = concat!(
    "version: 1\n",
    worked_example_body!(),
    "  - domain: subdomain-2\n    hosts: [s2-host]\n"
);

/// The manager type of the worked example.
pub const CCM: &str = "command-control-manager";

/// The worked example's tree with a `routing:` section of `routing` (YAML lines, indented by
/// two spaces), and subdomain-2 when `subdomain_2`.
pub fn tree_with_routing(routing: &str, subdomain_2: bool) -> String {
    let tree = if subdomain_2 {
        TREE_WITH_SUBDOMAIN_2
    } else {
        TREE
    };
    let body = tree.trim_start_matches("version: 1\n");
    format!("version: 1\nrouting:\n{routing}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Topology;

    #[test]
    fn every_variant_is_a_valid_tree() {
        for t in [
            TREE.to_owned(),
            TREE_WITH_SUBDOMAIN_2.to_owned(),
            tree_with_routing("  revert_after: 1s\n", true),
        ] {
            Topology::from_yaml("tree.yaml", &t).unwrap_or_else(|e| panic!("{e}\n{t}"));
        }
        let t = Topology::from_yaml(
            "tree.yaml",
            &tree_with_routing("  revert_after: 1s\n", true),
        )
        .unwrap();
        assert!(t.host("s2-host").is_some());
    }
}
