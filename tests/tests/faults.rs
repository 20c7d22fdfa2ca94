//! Faults on real processes: manager restart, agent started with no manager, a flapping package,
//! a silent (SIGSTOP) host, a partition between an agent and the registry, a crashed manager
//! behind a forwarding port.

use std::time::Duration;

use tests::worked_example::{self, CCM};
use tests::Fleet;

const SETTLE: Duration = Duration::from_secs(15);

fn topology(revert_after: &str) -> String {
    worked_example::topology(revert_after, false)
}

/// A manager, the agents of agent-1, agent-3 and agent-4, and command-control-managers on
/// agent-1 and agent-3 (agent-4 chooses agent-3).
async fn three_agents() -> anyhow::Result<Fleet> {
    Fleet::from_topology(&topology("200ms"))
        .manager()
        .agent("agent-1")
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-1", CCM)
        .package("agent-3", CCM)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_restart_midway_agents_keep_routing_and_lose_no_change() -> anyhow::Result<()> {
    let mut fleet = three_agents().await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    let before = fleet.resolve("agent-4", CCM).await?.revision;

    fleet.kill_manager();
    // From their copies, agents keep routing while no manager is reachable.
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let r = fleet.resolve("agent-4", CCM).await?;
        assert_eq!(
            r.chosen.as_deref(),
            Some("agent-3"),
            "routing kept from the copy"
        );
        if r.stale {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent-4 never noticed the manager was gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fleet.start_manager().await?;
    // A change made after the restart reaches the agents: nothing is lost, numbering continues.
    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-1"), SETTLE)
        .await?;
    // The watch may deliver the change a moment before the session is live again.
    let deadline = tokio::time::Instant::now() + SETTLE;
    let after = loop {
        let r = fleet.resolve("agent-4", CCM).await?;
        if !r.stale {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent-4 never resumed a live session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        after.revision > before,
        "revision numbering continues after restart ({before} -> {})",
        after.revision
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_started_with_no_manager_answers_from_its_persisted_copy() -> anyhow::Result<()> {
    let mut fleet = Fleet::from_topology(&topology("200ms"))
        .manager()
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-3", CCM)
        .start()
        .await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    fleet.kill_manager();
    fleet.agent("agent-4")?.proc.kill();
    fleet.restart_agent("agent-4").await?;
    let r = fleet.resolve("agent-4", CCM).await?;
    assert_eq!(r.chosen.as_deref(), Some("agent-3"));
    assert!(
        r.stale,
        "no manager is reachable, so the answer is marked stale"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_manager_does_not_make_agents_oscillate() -> anyhow::Result<()> {
    let hold_down = Duration::from_millis(1500);
    let mut fleet = Fleet::from_topology(&topology("1500ms"))
        .manager()
        .agent("agent-1")
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-1", CCM)
        .package("agent-3", CCM)
        .start()
        .await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;

    // agent-3's package flaps: up 400 ms, down 400 ms, ..., ending up.
    fleet.package("agent-3", CCM)?.kill();
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-1"), SETTLE)
        .await?;
    let mut last_up = None;
    for i in 0..7 {
        if i % 2 == 0 {
            fleet.restart_package("agent-3", CCM).await?;
            last_up = Some(tokio::time::Instant::now());
        } else {
            fleet.package("agent-3", CCM)?.kill();
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(400);
        while tokio::time::Instant::now() < until {
            let chosen = fleet.chosen("agent-4", CCM).await?;
            assert_eq!(
                chosen.as_deref(),
                Some("agent-1"),
                "agent-4 went back to a manager that never stayed up for revert_after"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    // Up for good now (the loop ended with a restart): agent-4 returns, but not before the hold-down.
    let up_since = last_up.expect("restarted at least once");
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    assert!(
        up_since.elapsed() >= hold_down,
        "moved back after {:?}, before revert_after {hold_down:?}",
        up_since.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_host_is_routed_around_after_its_session_lapses() -> anyhow::Result<()> {
    let mut fleet = Fleet::from_topology(&topology("200ms"))
        .manager()
        .agent("agent-1")
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-1", CCM)
        .package("agent-3", CCM)
        .session_ttl("1s")
        .start()
        .await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    // The whole host agent-3 hangs: its agent and its package stop, sockets stay open (no RST).
    fleet.agent("agent-3")?.proc.pause();
    fleet.package("agent-3", CCM)?.pause();
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-1"), SETTLE)
        .await?;
    let r = fleet.resolve("agent-4", CCM).await?;
    let c = r
        .candidates
        .iter()
        .find(|c| c.host == "agent-3")
        .expect("candidate");
    assert!(!c.eligible, "agent-3 is skipped: {}", c.reason);
    fleet.agent("agent-3")?.proc.resume();
    fleet.package("agent-3", CCM)?.resume();
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_agent_keeps_routing_from_its_copy() -> anyhow::Result<()> {
    let mut fleet = Fleet::from_topology(&topology("200ms"))
        .manager()
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-3", CCM)
        .relays()
        .start()
        .await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    fleet.agent("agent-4")?.relay.as_ref().expect("relay").cut();
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let r = fleet.resolve("agent-4", CCM).await?;
        assert_eq!(
            r.chosen.as_deref(),
            Some("agent-3"),
            "still routes from its copy"
        );
        if r.stale {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never marked stale");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    fleet
        .agent("agent-4")?
        .relay
        .as_ref()
        .expect("relay")
        .heal();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while fleet.resolve("agent-4", CCM).await?.stale {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reconnected after the heal"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_manager_costs_forward_clients_no_failed_connection() -> anyhow::Result<()> {
    let mut fleet = Fleet::from_topology(&topology("5s"))
        .manager()
        .agent("agent-1")
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-1", CCM)
        .package("agent-3", CCM)
        .forward(CCM)
        .start()
        .await?;
    // The fallback must be known healthy before the crash for the promise to hold.
    fleet
        .wait_route("agent-4", CCM, &["agent-3", "agent-1"], SETTLE)
        .await?;
    // If agent-1 registered first, agent-4 moves to agent-3 only after the hold-down.
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    assert_eq!(fleet.through_forward("agent-4", CCM).await?, "agent-3");
    fleet.package("agent-3", CCM)?.kill();
    // Right after the crash, before any push: every connection still succeeds, at agent-1.
    for _ in 0..20 {
        assert_eq!(fleet.through_forward("agent-4", CCM).await?, "agent-1");
    }
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-1"), SETTLE)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_manager_process_is_routed_around_by_grpc_health() -> anyhow::Result<()> {
    // Probes every 200 ms, timeout 200 ms, fall 2: a hung manager is held down within
    // fall x interval + timeout (about 0.6 s), by agent-4's own probes or by agent-3's local
    // check, whichever sees it first. Its agent stays alive, so its session does not lapse.
    let mut fleet = Fleet::from_topology(&topology("200ms"))
        .manager()
        .agent("agent-1")
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-1", CCM)
        .package("agent-3", CCM)
        .grpc_packages()
        .start()
        .await?;
    fleet
        .wait_route("agent-4", CCM, &["agent-3", "agent-1"], SETTLE)
        .await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    // Only the manager process hangs: the kernel still accepts its TCP connections.
    fleet.package("agent-3", CCM)?.pause();
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-1"), SETTLE)
        .await?;
    fleet.package("agent-3", CCM)?.resume();
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_paused_for_five_seconds_lapses_no_session_and_moves_no_route(
) -> anyhow::Result<()> {
    let mut fleet = three_agents().await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    // Every session open before the pause: an open still in flight would be committed after it
    // with its agent gone to retry elsewhere, and lapse rightly.
    let fleet_ref = &fleet;
    tests::wait::wait_until("every agent's session", SETTLE, || async move {
        let out = fleet_ref
            .operator(&["registry", "export", "--json"])
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let all = ["agent-1", "agent-3", "agent-4"]
            .iter()
            .all(|h| v["hosts"][h].is_object() && v["hosts"][h]["alive"] != false);
        if all {
            Ok(())
        } else {
            Err(format!("not yet: {v}"))
        }
    })
    .await?;
    fleet.manager().expect("a manager").pause();
    let paused = tokio::time::Instant::now();
    while paused.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            fleet.chosen("agent-4", CCM).await?.as_deref(),
            Some("agent-3"),
            "agents keep routing from their copies while the manager is paused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.manager().expect("a manager").resume();
    // Several TTLs after the wake: nobody lapsed, nobody moved.
    let woke = tokio::time::Instant::now();
    while woke.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            fleet.chosen("agent-4", CCM).await?.as_deref(),
            Some("agent-3"),
            "no route moved after the manager woke\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = fleet.logs_all();
    assert!(
        !logs.contains("session lapsed"),
        "a paused manager lapsed healthy sessions\n{}",
        fleet.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_is_a_new_history_and_agents_resync_with_a_full_snapshot(
) -> anyhow::Result<()> {
    let mut fleet = three_agents().await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("registry.backup.json");
    let file_arg = file.display().to_string();
    let out = fleet.operator(&["backup", &file_arg, "--json"])?;
    let backed: serde_json::Value = serde_json::from_str(&out)?;
    let revision = backed["revision"].as_u64().expect("a revision");
    // Changes after the backup are lost with the old store: agent-3 drained.
    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-1"), SETTLE)
        .await?;
    fleet.kill_manager();
    let data = fleet.manager_data_dir();
    std::fs::remove_dir_all(&data)?;
    let out = tests::fleet::restore_cli(&file_arg, &data, &["--json"])?;
    anyhow::ensure!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(restored["revision"].as_u64(), Some(revision));
    assert_ne!(
        restored["history"], backed["history"],
        "a restored store is a new history"
    );
    fleet.start_manager().await?;
    // The agents' copies belong to the old history: they get a full snapshot of the restored
    // registry (agent-3 not drained), never deltas of another history.
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    assert!(
        fleet
            .agent_logs()
            .contains("registry copy replaced by a full snapshot"),
        "{}",
        fleet.logs()
    );
    // A restore refuses a directory that holds a registry.
    fleet.kill_manager();
    let out = tests::fleet::restore_cli(&file_arg, &data, &[])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a registry"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_removes_live_hosts_shows_who_moves_and_waits_for_yes() -> anyhow::Result<()>
{
    let mut fleet = three_agents().await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    // agent-1's package is in the registry too (its agent's copy, pushed by the manager, has
    // it), so the blast radius has somewhere to move agent-4 to.
    fleet
        .wait_chosen("agent-1", CCM, Some("agent-1"), SETTLE)
        .await?;
    // The same tree without agent-3 (live, chosen by agent-4).
    let without = topology("200ms").replace("agent-3, ", "");
    assert!(!without.contains("agent-3"), "{without}");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("without-agent-3.yaml");
    std::fs::write(&file, &without)?;
    let file = file.display().to_string();
    let agent_3_listed = |fleet: &Fleet| -> anyhow::Result<u64> {
        let export = fleet.operator(&["topology", "show", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&export)?;
        Ok(v["yaml"]
            .as_str()
            .unwrap_or_default()
            .matches("agent-3")
            .count() as u64)
    };
    let before = agent_3_listed(&fleet)?;
    let out = fleet.manager_cli(&["topology", "apply", &file])?;
    assert!(!out.status.success(), "refused without --yes");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent-3") && err.contains("--yes"), "{err}");
    assert!(
        err.contains("agent-4 command-control-manager: agent-3 -> agent-1"),
        "the blast radius names who moves: {err}"
    );
    assert_eq!(
        agent_3_listed(&fleet)?,
        before,
        "nothing was applied: agent-3 is still in the topology"
    );
    assert_eq!(before, 1);
    let out = fleet.manager_cli(&["topology", "apply", &file, "--yes"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-1"), SETTLE)
        .await?;
    Ok(())
}

/// An agent whose persisted copy is damaged (one bit of a stored host entry flipped while it
/// was down: protobuf would still decode it) notices at start, says so, discards the copy and
/// resyncs from a full snapshot: it routes as the registry says, not as the damaged copy did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_agent_copy_is_detected_logged_and_replaced_by_a_fresh_snapshot(
) -> anyhow::Result<()> {
    let mut fleet = three_agents().await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    fleet.agent("agent-4")?.proc.kill();
    let store = fleet.agent_data_dir("agent-4").join("registry-copy");
    {
        let db = sled::open(&store)?;
        let tree = db.open_tree("copy")?;
        let key = b"host/agent-3";
        let mut v = tree
            .get(key)?
            .ok_or_else(|| anyhow::anyhow!("agent-4's copy has no agent-3 entry"))?
            .to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        tree.insert(key, v)?;
        db.flush()?;
    }
    fleet.restart_agent("agent-4").await?;
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        // Until the fresh snapshot arrives the copy is empty and resolve says so.
        let r = fleet.resolve("agent-4", CCM).await;
        if matches!(&r, Ok(r) if r.chosen.as_deref() == Some("agent-3") && !r.stale) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "agent-4 did not resync: {r:?}\n{}",
            fleet.agent_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = fleet.agent_logs();
    assert!(
        logs.contains("the persisted registry copy is damaged")
            && logs.contains("\"host/agent-3\" does not match its checksum"),
        "agent-4 did not say what was damaged:\n{logs}"
    );
    Ok(())
}
