//! A storm of session opens (a rack powering up, every agent of a site reconnecting after a
//! network cut): 1,000 agents open their sessions at the same moment while 10,000 watch streams
//! (100 per HTTP/2 connection) follow the registry. Measured: how many revisions the opens make
//! (each revision is one event to every watcher), how long until every watcher holds the last
//! one, and the manager CPU the storm costs.

use std::time::Duration;

use tokio::time::Instant;

use super::agents::{running, SessionSet, WatchFanout};
use super::figure::Figure;
use super::gen::{GeneratedFleet, CCM};
use super::stats::{self, fmt_num};
use super::system::cpu_seconds;
use super::Mode;
use crate::Fleet;

#[derive(Debug, Clone, Copy)]
struct Plan {
    opens: usize,
    streams: usize,
}

impl Plan {
    fn of(mode: Mode) -> Plan {
        match mode {
            Mode::Full => Plan {
                opens: 1_000,
                streams: 10_000,
            },
            Mode::Quick => Plan {
                opens: 50,
                streams: 100,
            },
        }
    }
}

/// Measures `storm_1k_opens_{revisions,settle_10k,manager_cpu}`.
pub async fn run(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let plan = Plan::of(mode);
    let g = GeneratedFleet::new(plan.opens.div_ceil(20), plan.opens, 8);
    // A long TTL: no session lapses while the storm is measured.
    let mut fleet = Fleet::from_topology(&g.to_yaml())
        .session_ttl("5m")
        .manager()
        .start()
        .await?;
    let manager = fleet.manager_addr();
    let pid = fleet
        .manager()
        .and_then(|m| m.pid())
        .ok_or_else(|| anyhow::anyhow!("the manager is not running"))?;
    let mut fanout =
        WatchFanout::open(manager, plan.streams, 0, 1_000, Duration::from_secs(90)).await?;
    fanout.drain();
    let before = fleet_revision(manager).await?;
    let hosts: Vec<(String, Vec<proto::Package>)> = g
        .host_names()
        .map(|h| (h.to_string(), vec![running(CCM, "127.0.0.1:7001")]))
        .collect();
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    // Every open sent at once (one task each, over opens/8 connections).
    let sessions = SessionSet::open(manager, hosts, plan.opens, Duration::from_secs(60)).await?;
    let acknowledged = t0.elapsed();
    anyhow::ensure!(
        sessions.opened == plan.opens,
        "{} of {} sessions opened within 60 s",
        sessions.opened,
        plan.opens
    );
    let last = sessions.revision;
    let p = fanout.collect(last, t0, Duration::from_secs(90)).await;
    let cpu = cpu_seconds(pid)? - cpu0;
    anyhow::ensure!(
        !p.latencies.is_empty(),
        "no watch stream received revision {last} within 90 s"
    );
    let mut ms: Vec<f64> = p.latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let revisions = last.saturating_sub(before);
    let setup = format!(
        "{} session opens sent at once (one task each) to one manager while {} watch streams \
         ({} per connection) follow the registry; session_ttl 5m, so nothing lapses",
        fmt_num(plan.opens as f64),
        fmt_num(plan.streams as f64),
        super::agents::STREAMS_PER_CHANNEL,
    );
    let mut figs = vec![
        Figure::new("storm_1k_opens_revisions"),
        Figure::new("storm_1k_opens_settle_10k"),
        Figure::new("storm_1k_opens_manager_cpu"),
    ];
    for f in &mut figs {
        f.note(setup.clone());
    }
    figs[0].push(revisions as f64);
    figs[0].note(format!(
        "revisions {before} to {last}: every revision is one event to each of the {} streams \
         ({} events in all); the opens were acknowledged in {:.0} ms",
        fmt_num(plan.streams as f64),
        fmt_num((revisions as usize * plan.streams) as f64),
        acknowledged.as_secs_f64() * 1e3
    ));
    figs[1].push(*ms.last().expect("not empty"));
    figs[1].note(format!(
        "from sending the opens until every stream held revision {last}: p50 {:.0} ms, p99 {:.0} ms, \
         the last stream {:.0} ms",
        stats::percentile_sorted(&ms, 50.0),
        stats::percentile_sorted(&ms, 99.0),
        ms.last().expect("not empty")
    ));
    if p.missing > 0 || p.snapshots > 0 {
        figs[1].note(format!(
            "{} streams missed revision {last}; {} got a snapshot instead of deltas",
            p.missing, p.snapshots
        ));
    }
    figs[2].push(cpu);
    figs[2].note(format!(
        "CPU seconds of the manager process from sending the opens until the last stream held \
         the last revision ({:.2} cores over that time)",
        cpu / ms.last().expect("not empty") * 1e3
    ));
    drop(sessions);
    drop(fanout);
    drop(fleet);
    Ok(figs)
}

/// The manager's current revision (read through the admin service).
async fn fleet_revision(manager: std::net::SocketAddr) -> anyhow::Result<u64> {
    let mut admin = proto::admin_client::AdminClient::new(super::agents::channel(manager).await?);
    let hosts = admin
        .list_hosts(proto::ListHostsRequest { stale: false })
        .await?
        .into_inner();
    Ok(hosts.revision)
}
