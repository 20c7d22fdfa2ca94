//! 50 agents in several domains converge after a topology change: every agent's choice ends up
//! equal to the one the routing rule gives offline for the registry the manager exports.

use std::fmt::Write as _;
use std::time::Duration;

use tests::Fleet;

const CCM: &str = "command-control-manager";

/// hq (2 hosts) > 4 regions (2 hosts each) > 2 sites per region (5 hosts each): 50 hosts.
/// With `moved`, site r2-s1 moves under region r1.
fn topology(moved: bool) -> String {
    let mut t = String::from(
        "version: 1\nrouting: { revert_after: 0s }\ndomain: hq\nhosts: [hq-1, hq-2]\nsubdomains:\n",
    );
    for r in 1..=4 {
        let _ = writeln!(
            t,
            "  - domain: r{r}\n    hosts: [r{r}-h1, r{r}-h2]\n    subdomains:"
        );
        for s in 1..=2 {
            let site_moves_in = moved && r == 1;
            let site_moves_out = moved && r == 2 && s == 1;
            if site_moves_out {
                continue;
            }
            let hosts: Vec<String> = (1..=5).map(|h| format!("r{r}-s{s}-h{h}")).collect();
            let _ = writeln!(
                t,
                "      - domain: r{r}-s{s}\n        hosts: [{}]",
                hosts.join(", ")
            );
            if site_moves_in && s == 2 {
                let hosts: Vec<String> = (1..=5).map(|h| format!("r2-s1-h{h}")).collect();
                let _ = writeln!(
                    t,
                    "      - domain: r2-s1\n        hosts: [{}]",
                    hosts.join(", ")
                );
            }
        }
    }
    t
}

async fn expected_choices(fleet: &Fleet) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let export = fleet.operator(&["registry", "export", "--json"])?;
    let snapshot =
        topology::RegistrySnapshot::parse("export", &export).map_err(|e| anyhow::anyhow!("{e}"))?;
    let shown = fleet.operator(&["topology", "show", "--json"])?;
    let shown: serde_json::Value = serde_json::from_str(&shown)?;
    let topo = topology::Topology::from_yaml("live", shown["yaml"].as_str().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    for h in topo.hosts() {
        let e = topology::explain(&topo, &snapshot, h.name.as_str(), CCM, &|_| false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push((h.name.to_string(), e.chosen.map(|c| c.to_string())));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agents_converge_after_a_topology_change() -> anyhow::Result<()> {
    let mut fleet = Fleet::from_topology(&topology(false))
        .manager()
        .every_agent()?
        .package("hq-1", CCM)
        .package("r1-h1", CCM)
        .package("r3-s2-h4", CCM)
        .start()
        .await?;
    // Before: r2-s1 hosts have no manager on their chain and go to the root's.
    fleet
        .wait_chosen("r2-s1-h3", CCM, Some("hq-1"), Duration::from_secs(30))
        .await?;

    fleet.apply_topology(&topology(true))?;
    let expected = expected_choices(&fleet).await?;
    assert_eq!(expected.len(), 50);
    // After: r2-s1 now sits under r1, whose manager is nearer than the root's.
    assert!(expected
        .iter()
        .any(|(h, c)| h == "r2-s1-h3" && c.as_deref() == Some("r1-h1")));
    for (host, chosen) in &expected {
        fleet
            .wait_chosen(host, CCM, chosen.as_deref(), Duration::from_secs(30))
            .await?;
    }
    Ok(())
}
