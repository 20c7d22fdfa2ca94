//! Resident memory at fleet scale: a manager with a 10,000-host topology, 10,000 live sessions
//! (opened and kept alive by the benchmark, one `KeepAlive` stream each) and 10,000 watch
//! streams (the benchmark's 9,999 plus one real agent), and that real agent holding the
//! 10,000-host registry copy. The manager runs with a long `--session-ttl` so that 10,000
//! heartbeat streams stay cheap for the benchmark process; the output says so.

use std::time::Duration;

use tokio::time::Instant;

use super::agents::{running, SessionSet, WatchFanout};
use super::figure::Figure;
use super::gen::{GeneratedFleet, CCM};
use super::probe::AgentProbe;
use super::stats::fmt_num;
use super::system::rss_mb;
use super::Mode;
use crate::{Fleet, StandIn};

#[derive(Debug, Clone, Copy)]
struct Plan {
    hosts: usize,
    domains: usize,
    samples: usize,
    budget: Duration,
}

impl Plan {
    fn of(mode: Mode) -> Plan {
        match mode {
            Mode::Full => Plan {
                hosts: 10_000,
                domains: 500,
                samples: 5,
                budget: Duration::from_secs(150),
            },
            Mode::Quick => Plan {
                hosts: 200,
                domains: 10,
                samples: 2,
                budget: Duration::from_secs(20),
            },
        }
    }
}

const TTL: &str = "5m";

/// Measures `agent_rss_10k` and `manager_rss_10k_sessions`.
pub async fn run(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let plan = Plan::of(mode);
    let g = GeneratedFleet::new(plan.domains, plan.hosts, 8);
    let managers: std::collections::BTreeSet<&str> = g.managers(1).into_iter().collect();
    let agent_host = g.hosts[0].get(1).cloned().unwrap_or_else(|| "h1".into());
    // Every manager package points at one in-process stand-in, so the agent's probes succeed.
    let standin = StandIn::start("bench-managers").await?;
    let endpoint = standin.addr().to_string();

    let mut fleet = Fleet::from_topology(&g.to_yaml())
        .manager()
        .session_ttl(TTL)
        .agent(&agent_host)
        .default_checks()
        .start()
        .await?;
    let manager = fleet.manager_addr();
    let hosts: Vec<(String, Vec<proto::Package>)> = g
        .host_names()
        .filter(|h| *h != agent_host)
        .map(|h| {
            let pkgs = if managers.contains(h) {
                vec![running(CCM, &endpoint)]
            } else {
                Vec::new()
            };
            (h.to_string(), pkgs)
        })
        .collect();
    let wanted = hosts.len();
    let t = Instant::now();
    let sessions = SessionSet::open(manager, hosts, 64, plan.budget).await?;
    let sessions_took = t.elapsed();
    let manager_pid = fleet
        .manager()
        .and_then(|m| m.pid())
        .ok_or_else(|| anyhow::anyhow!("the manager is not running"))?;
    let before_watches = rss_mb(manager_pid)?;
    let t = Instant::now();
    let watches = WatchFanout::open(manager, wanted, 0, 200, plan.budget).await?;
    let watches_took = t.elapsed();

    // The real agent has the whole registry once its copy reaches the last registration.
    let mut probe = AgentProbe::connect(&mut fleet, &agent_host).await?;
    let start = Instant::now();
    loop {
        let r = probe.resolve(CCM, true, Duration::from_secs(2)).await;
        match r {
            Ok(r) if r.revision >= sessions.revision => break,
            _ if start.elapsed() > Duration::from_secs(60) => anyhow::bail!(
                "agent {agent_host} did not reach registry revision {} within 60 s (last: {:?})",
                sessions.revision,
                r.map(|r| r.revision)
            ),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }

    let agent_pid = fleet
        .agent(&agent_host)?
        .proc
        .pid()
        .ok_or_else(|| anyhow::anyhow!("agent {agent_host} is not running"))?;
    let mut agent = Figure::new("agent_rss_10k");
    let mut mgr = Figure::new("manager_rss_10k_sessions");
    for i in 0..plan.samples {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        agent.push(rss_mb(agent_pid)?);
        mgr.push(rss_mb(manager_pid)?);
    }
    agent.note(format!(
        "VmRSS of the agent of {agent_host} holding the registry copy at revision >= {}: {} hosts in \
         {} domains, {} with a {CCM}, {} live sessions; {} samples 200 ms apart",
        sessions.revision,
        fmt_num(plan.hosts as f64),
        plan.domains,
        managers.len(),
        fmt_num((sessions.opened + 1) as f64),
        plan.samples
    ));
    mgr.note(format!(
        "VmRSS of the manager with {} sessions opened by the benchmark (in {:.1} s, {} kept alive by \
         their own KeepAlive stream) plus the agent's, and {} watch streams holding a snapshot (opened \
         in {:.1} s) plus the agent's; --session-ttl {TTL} so heartbeats are rare (one per 100 s)",
        fmt_num(sessions.opened as f64),
        sessions_took.as_secs_f64(),
        fmt_num(sessions.live_streams() as f64),
        fmt_num(watches.len() as f64),
        watches_took.as_secs_f64()
    ));
    mgr.note(format!(
        "manager VmRSS with the sessions but before the watch streams: {before_watches:.0} MB; each \
         watch stream's first event (the snapshot) is {} KB",
        watches.snapshot_bytes() / 1024
    ));
    if sessions.opened < wanted {
        let msg = format!(
            "only {} of {wanted} sessions opened within the time budget {:?}",
            sessions.opened, plan.budget
        );
        agent.note(msg.clone());
        mgr.note(msg);
    }
    let failures = sessions
        .keepalive_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    if failures > 0 || watches.ended() > 0 {
        mgr.note(format!(
            "{failures} heartbeats refused or keep-alive streams failed; {} watch streams ended",
            watches.ended()
        ));
    }
    drop(watches);
    drop(sessions);
    drop(fleet);
    Ok(vec![agent, mgr])
}
