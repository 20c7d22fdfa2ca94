//! The routing rule (docs/routing.md) worked example, every step, on real processes: one registry manager, one agent
//! per host, stand-in `command-control-manager` packages on fm, agent-1 and agent-3. Each step is
//! driven by operator commands or killed processes, and checked both by each agent's `resolve`
//! and by what a connection through its forwarding port reaches.

use std::time::Duration;

use tests::worked_example::{self, CCM};
use tests::Fleet;

const SETTLE: Duration = Duration::from_secs(15);

async fn expect_all(fleet: &mut Fleet, hosts: &[&str], expected: &str) -> anyhow::Result<()> {
    for h in hosts {
        fleet.wait_chosen(h, CCM, Some(expected), SETTLE).await?;
        let reached = fleet.through_forward(h, CCM).await?;
        assert_eq!(
            reached, expected,
            "a connection through {h}'s forwarding port reached {reached}, not {expected}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_example_every_step() -> anyhow::Result<()> {
    let mut fleet = worked_example::fleet("300ms").start().await?;

    // 1. All up: agent-1 and agent-2 choose agent-1; agent-3 and agent-4 choose agent-3.
    expect_all(&mut fleet, &["agent-1", "agent-2"], "agent-1").await?;
    expect_all(&mut fleet, &["agent-3", "agent-4"], "agent-3").await?;
    let explained = fleet.resolve("agent-4", CCM).await?;
    assert_eq!(explained.route, vec!["agent-3", "agent-1", "fm"]);
    assert!(!explained.stale, "agent-4 has a live session");

    // 2. agent-3 stopped for maintenance: agent-4 chooses agent-1.
    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    expect_all(&mut fleet, &["agent-4", "agent-3"], "agent-1").await?;

    // 3. agent-1 also down (host lost: its agent and its package die): fm for everyone left.
    fleet.agent("agent-1")?.proc.kill();
    fleet.package("agent-1", CCM)?.kill();
    expect_all(&mut fleet, &["agent-2", "agent-3", "agent-4"], "fm").await?;

    // 4. The package withdrawn from fm, agent-1 still down, agent-3 back: agent-3.
    fleet.operator(&["package", "withdraw", "--host", "fm", "--type", CCM])?;
    fleet.operator(&["package", "restore", "--host", "agent-3", "--type", CCM])?;
    expect_all(&mut fleet, &["agent-2", "agent-3", "agent-4"], "agent-3").await?;

    // 5. A new subdomain-2 with a manager on s2-host: when no other is eligible, everyone in
    //    subdomain-1 and subdomain-1a chooses s2-host.
    fleet.apply_topology(&worked_example::topology("300ms", true))?;
    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    expect_all(&mut fleet, &["agent-2", "agent-3", "agent-4"], "s2-host").await?;
    let explained = fleet.resolve("agent-4", CCM).await?;
    assert_eq!(explained.route, vec!["s2-host"]);
    let s2 = explained
        .candidates
        .iter()
        .find(|c| c.host == "s2-host")
        .expect("s2-host is a candidate");
    assert_eq!(s2.tier, "branch");
    Ok(())
}
