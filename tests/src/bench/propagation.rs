//! Change propagation: the benchmark opens N `AgentRegistry.Watch` streams itself (each its own,
//! 100 per HTTP/2 connection), waits until every one holds its snapshot, then makes one change
//! (an operator `drain` or `restore` through the Admin service, acknowledged once durable) and
//! times, per stream, from sending the change to receiving the event of its revision.

use std::time::Duration;

use proto::admin_client::AdminClient;
use tokio::time::Instant;

use super::agents::{channel, running, toggle_drain, SessionSet, WatchFanout};
use super::figure::Figure;
use super::gen::{failover_topology, CCM};
use super::{stats, Mode};
use crate::Fleet;

#[derive(Debug, Clone, Copy)]
struct Plan {
    streams: usize,
    runs: usize,
}

impl Plan {
    fn of(mode: Mode, big: bool) -> Plan {
        match (mode, big) {
            (Mode::Full, false) => Plan {
                streams: 1_000,
                runs: 9,
            },
            (Mode::Full, true) => Plan {
                streams: 10_000,
                runs: 5,
            },
            (Mode::Quick, false) => Plan {
                streams: 20,
                runs: 2,
            },
            (Mode::Quick, true) => Plan {
                streams: 50,
                runs: 2,
            },
        }
    }
}

/// Measures `propagation_{1k,10k}_{p50,p99,max}` (`big`: the 10,000-stream figures).
pub async fn run(mode: Mode, big: bool) -> anyhow::Result<Vec<Figure>> {
    let plan = Plan::of(mode, big);
    let names: [&'static str; 3] = if big {
        [
            "propagation_10k_p50",
            "propagation_10k_p99",
            "propagation_10k_max",
        ]
    } else {
        [
            "propagation_1k_p50",
            "propagation_1k_p99",
            "propagation_1k_max",
        ]
    };
    let fleet = Fleet::from_topology(&failover_topology(None))
        .manager()
        .session_ttl("5m")
        .start()
        .await?;
    let manager = fleet.manager_addr();
    // One registered package to drain and restore, on a session kept alive.
    let _session = SessionSet::open(
        manager,
        vec![("agent-3".to_string(), vec![running(CCM, "127.0.0.1:7001")])],
        1,
        Duration::from_secs(10),
    )
    .await?;
    let open_started = Instant::now();
    let mut fanout =
        WatchFanout::open(manager, plan.streams, 0, 1_000, Duration::from_secs(90)).await?;
    let opened_in = open_started.elapsed();
    let mut admin = AdminClient::new(channel(manager).await?);

    let mut figs: Vec<Figure> = names.iter().map(|n| Figure::new(n)).collect();
    for f in &mut figs {
        f.note(format!(
            "{} watch streams ({} per connection), all holding their snapshot (opened in {:.1} s); \
             timed from sending a drain/restore to each stream's event of the new revision",
            super::stats::fmt_num(plan.streams as f64),
            super::agents::STREAMS_PER_CHANNEL,
            opened_in.as_secs_f64()
        ));
    }
    let mut problems = Vec::new();
    for run in 0..plan.runs {
        fanout.drain();
        let (t0, revision) = toggle_drain(&mut admin, "agent-3", run).await?;
        let p = fanout.collect(revision, t0, Duration::from_secs(30)).await;
        anyhow::ensure!(
            !p.latencies.is_empty(),
            "no watch stream received revision {} within 30 s",
            revision
        );
        let mut ms: Vec<f64> = p.latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        figs[0].push(stats::percentile_sorted(&ms, 50.0));
        figs[1].push(stats::percentile_sorted(&ms, 99.0));
        figs[2].push(*ms.last().expect("not empty"));
        if p.missing > 0 || p.snapshots > 0 {
            problems.push(format!(
                "run {}: {} streams missed revision {}, {} got a snapshot instead of a delta",
                run + 1,
                p.missing,
                revision,
                p.snapshots
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if fanout.ended() > 0 {
        problems.push(format!(
            "{} streams ended early; last error: {}",
            fanout.ended(),
            fanout.last_error().unwrap_or_default()
        ));
    }
    for f in &mut figs {
        for p in &problems {
            f.note(p.clone());
        }
    }
    drop(fleet);
    Ok(figs)
}

/// Measures `propagation_group_1k_{p50,p99}`: 1,000 watch streams spread over the three
/// members of a group (each member serves its own streams from its own copy); one change
/// through the leader's member list, timed to each stream's event.
pub async fn run_group(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let plan = Plan::of(mode, false);
    let fleet = Fleet::from_topology(&failover_topology(None))
        .managers(3)
        .session_ttl("5m")
        .start()
        .await?;
    let members: Vec<_> = (0..3).map(|i| fleet.member_addr(i)).collect();
    let _session = SessionSet::open(
        members[0],
        vec![("agent-3".to_string(), vec![running(CCM, "127.0.0.1:7001")])],
        1,
        Duration::from_secs(10),
    )
    .await?;
    let per = plan.streams.div_ceil(3);
    let mut fanouts = Vec::new();
    for m in &members {
        fanouts.push(WatchFanout::open(*m, per, 0, 1_000, Duration::from_secs(90)).await?);
    }
    let mut admin = AdminClient::new(channel(members[0]).await?);
    let mut p50 = Figure::new("propagation_group_1k_p50");
    let mut p99 = Figure::new("propagation_group_1k_p99");
    for f in [&mut p50, &mut p99] {
        f.note(format!(
            "3 managers, {} watch streams spread evenly over them; timed from sending a \
             drain/restore (to m1, forwarded to the leader when m1 follows) to each stream's \
             event of the new revision",
            per * 3
        ));
    }
    for run in 0..plan.runs {
        for f in &mut fanouts {
            f.drain();
        }
        let (t0, revision) = toggle_drain(&mut admin, "agent-3", run).await?;
        let mut ms = Vec::new();
        for f in &mut fanouts {
            let p = f.collect(revision, t0, Duration::from_secs(30)).await;
            ms.extend(p.latencies.iter().map(|d| d.as_secs_f64() * 1e3));
        }
        anyhow::ensure!(!ms.is_empty(), "no stream received revision {}", revision);
        ms.sort_by(f64::total_cmp);
        p50.push(stats::percentile_sorted(&ms, 50.0));
        p99.push(stats::percentile_sorted(&ms, 99.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(fleet);
    Ok(vec![p50, p99])
}
