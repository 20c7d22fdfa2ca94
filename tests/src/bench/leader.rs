//! The registry group under the loss of its leader, and its write throughput: three managers,
//! the worked example's agents with a forwarding port, a write load through every member; the
//! leader SIGKILLed again and again. Also acknowledged durable writes per second on one and on
//! three members.

use std::time::Duration;

use tokio::time::Instant;

use super::figure::Figure;
use super::Mode;
use crate::load::{ForwardLoad, WriteLoad};
use crate::worked_example::{self, CCM};
use crate::Fleet;

/// The type the write load toggles (nobody routes to it).
const SPARE: &str = "event-manager";
const SETTLE: Duration = Duration::from_secs(20);

fn kills(mode: Mode) -> usize {
    match mode {
        Mode::Full => 10,
        Mode::Quick => 1,
    }
}

/// Measures `leader_kill_to_write`, `leader_kill_lapsed_sessions`,
/// `leader_kill_failed_forwards`, `leader_kill_snapshot_resumes`.
pub async fn run(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let mut fleet = Fleet::from_topology(&worked_example::topology("200ms", false))
        .managers(3)
        .agent("fm")
        .agent("agent-1")
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-1", CCM)
        .package("agent-3", CCM)
        .package("fm", SPARE)
        .forward(CCM)
        .default_checks()
        .start()
        .await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), SETTLE)
        .await?;
    let addrs: Vec<_> = (0..3).map(|i| fleet.member_addr(i)).collect();
    // Every agent has its session (the write load needs fm's package registered).
    let warmup = WriteLoad::start(addrs.clone(), "fm", SPARE);
    warmup.wait_acknowledged(3, SETTLE).await?;
    warmup.finish().await;

    let mut to_write = Figure::new("leader_kill_to_write");
    let mut lapsed = Figure::new("leader_kill_lapsed_sessions");
    let mut failed = Figure::new("leader_kill_failed_forwards");
    let mut snapshots = Figure::new("leader_kill_snapshot_resumes");
    let forward = *fleet
        .agent("agent-4")?
        .forwards
        .get(CCM)
        .expect("agent-4 forwards ccm");
    let lapses = |f: &Fleet| f.logs_all().matches("session lapsed").count();
    let resyncs = |f: &Fleet| {
        f.agent_logs()
            .matches("registry copy replaced by a full snapshot")
            .count()
    };
    let n = kills(mode);
    for _ in 0..n {
        let leader = fleet.wait_leader(None, SETTLE).await?;
        let (lapses_before, resyncs_before) = (lapses(&fleet), resyncs(&fleet));
        let forwards = ForwardLoad::start(forward);
        let writes = WriteLoad::start(addrs.clone(), "fm", SPARE);
        writes.wait_acknowledged(5, SETTLE).await?;
        let killed_at = Instant::now();
        fleet.members()[leader].proc.kill();
        let next = fleet.wait_leader(Some(leader), SETTLE).await?;
        let after = writes.acknowledged();
        writes.wait_acknowledged(after + 1, SETTLE).await?;
        let out = writes.finish().await;
        // The first write sent after the kill: one in flight at the kill may have been
        // committed by the old leader, its answer arriving just after.
        let first = out
            .acks
            .iter()
            .find(|(sent, _)| *sent > killed_at)
            .map(|(_, acked)| *acked)
            .unwrap_or_else(Instant::now);
        to_write.push(first.duration_since(killed_at).as_secs_f64() * 1000.0);
        // Let the agents settle on the survivors before counting what they went through.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, f) = forwards.finish().await;
        failed.push(f as f64);
        lapsed.push((lapses(&fleet) - lapses_before) as f64);
        let _ = next;
        fleet.restart_member(leader).await?;
        snapshots.push((resyncs(&fleet).saturating_sub(resyncs_before)) as f64);
    }
    to_write.note(format!(
        "3 managers on loopback, a write (PackageAction) loop through every member; SIGKILL of the \
         leader until the first write sent after it is acknowledged; median of {n} kills; \
         heartbeat 50 ms, election timeout 200-400 ms"
    ));
    lapsed.note("agent sessions lapsed per leader kill (4 agents, session_ttl 1s)");
    failed.note("connections through agent-4's forwarding port (every 20 ms) that failed per kill");
    snapshots.note(
        "agents that restarted their watch with a full snapshot instead of deltas, per kill \
         (moving to another member resumes with deltas)",
    );
    drop(fleet);
    Ok(vec![to_write, lapsed, failed, snapshots])
}

/// Measures `group_write_throughput_1` and `group_write_throughput_3`: acknowledged durable
/// writes per second from many concurrent clients, on one member and on three.
pub async fn throughput(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let (runs, run_for, clients) = match mode {
        Mode::Full => (3, Duration::from_secs(3), 64usize),
        Mode::Quick => (1, Duration::from_millis(300), 8usize),
    };
    let hosts: Vec<String> = (0..clients).map(|i| format!("h{i}")).collect();
    let topology = format!("version: 1\ndomain: root\nhosts: [{}]\n", hosts.join(", "));
    let mut figures = Vec::new();
    for members in [1usize, 3] {
        let name = if members == 1 {
            "group_write_throughput_1"
        } else {
            "group_write_throughput_3"
        };
        let builder = Fleet::from_topology(&topology).session_ttl("5m");
        let builder = if members == 1 {
            builder.manager()
        } else {
            builder.managers(members)
        };
        let fleet = builder.start().await?;
        let addrs: Vec<_> = if members == 1 {
            vec![fleet.manager_addr()]
        } else {
            (0..members).map(|i| fleet.member_addr(i)).collect()
        };
        let sessions = super::agents::SessionSet::open(
            addrs[0],
            hosts
                .iter()
                .map(|h| {
                    (
                        h.clone(),
                        vec![super::agents::running(SPARE, "127.0.0.1:7001")],
                    )
                })
                .collect(),
            clients.min(16),
            SETTLE,
        )
        .await?;
        let mut chans = Vec::new();
        for a in &addrs {
            chans.extend(super::agents::channels(*a, 2).await?);
        }
        let mut fig = Figure::new(name);
        let mut errors = 0usize;
        for _ in 0..runs {
            let start = Instant::now();
            let (ok, bad) = super::writes::drain_restore(&chans, &hosts, SPARE, run_for).await?;
            errors += bad;
            anyhow::ensure!(ok > 0, "no write was acknowledged ({errors} refused)");
            fig.push(ok as f64 / start.elapsed().as_secs_f64());
        }
        fig.note(format!(
            "{clients} clients spread over {members} member(s), each alternating drain/restore on \
             its own package, {run_for:?} per run; a write counts once acknowledged (durable on a \
             majority)"
        ));
        if errors > 0 {
            fig.note(format!("{errors} writes were refused"));
        }
        drop(sessions);
        drop(fleet);
        figures.push(fig);
    }
    Ok(figures)
}
