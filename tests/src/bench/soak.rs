//! `fleet-bench soak [--minutes N]` (`bash bench/run.sh soak`): a long run of churn against a
//! group of three managers with real agents, reporting every half minute each member's RSS and
//! data directory size, the sessions, and false expiries (a real agent's session found not live
//! while nothing stopped it), and ending with every member and every agent checked for
//! agreement. Not part of the test suite (it takes as long as asked; an hour is the intent).
//!
//! The churn, on a fixed schedule (seconds since start):
//! - every 2 s: a drain or restore of a real package (a write the agents route by);
//! - every 5 s: 20 simulated hosts open sessions and the previous 20 go silent (their sessions
//!   lapse: expected expiries, not false ones);
//! - every 60 s: a topology apply, alternately adding and removing a host;
//! - every 120 s: a real agent killed and restarted (its session resumes);
//! - every 180 s: a member killed and restarted (the group keeps a majority).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use proto::admin_client::AdminClient;
use tokio::time::Instant;

use super::agents::{channel, running, SessionSet};
use super::gen::{GeneratedFleet, CCM};
use super::system::rss_mb;
use crate::Fleet;

/// Real agents (with a stand-in package each, the first `PACKAGED` of them).
const REAL_AGENTS: usize = 6;
const PACKAGED: usize = 3;
/// Simulated hosts opening sessions per churn step.
const CHURN_HOSTS: usize = 20;
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// One row of the time series.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    rss_mb: Vec<f64>,
    data_mb: Vec<f64>,
    revision: u64,
    live_sessions: usize,
    false_expiries: usize,
}

fn dir_mb(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.filter_map(Result::ok)
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

/// The host listing of the first member that answers (members restart during the soak).
async fn host_listing(members: &[std::net::SocketAddr]) -> Option<proto::ListHostsResponse> {
    for m in members {
        let Ok(ch) = channel(*m).await else { continue };
        if let Ok(r) = AdminClient::new(ch)
            .list_hosts(proto::ListHostsRequest { stale: false })
            .await
        {
            return Some(r.into_inner());
        }
    }
    None
}

/// Runs the soak for `minutes` and returns the report (text). Fails only when the fleet
/// cannot be set up; what goes wrong during the run is reported in the text.
pub async fn run(minutes: u64) -> anyhow::Result<String> {
    let length = Duration::from_secs(minutes.max(1) * 60);
    let g = GeneratedFleet::new(20, 300, 4);
    let hosts: Vec<String> = g.host_names().map(str::to_string).collect();
    let real: Vec<String> = hosts.iter().take(REAL_AGENTS).cloned().collect();
    let mut builder = Fleet::from_topology(&g.to_yaml()).managers(3).forward(CCM);
    for (i, h) in real.iter().enumerate() {
        builder = builder.agent(h);
        if i < PACKAGED {
            builder = builder.package(h, CCM);
        }
    }
    let yaml = g.to_yaml();
    let mut fleet = builder.start().await?;
    let members: Vec<_> = (0..3).map(|i| fleet.member_addr(i)).collect();
    let data_dirs: Vec<_> = (0..3).map(|i| fleet.member_data_dir(i)).collect();
    let churn_pool: Vec<String> = hosts.iter().skip(REAL_AGENTS).cloned().collect();
    let real_set: BTreeSet<String> = real.iter().cloned().collect();

    // The churn starts once every real agent holds a live session (the fleet is up when the
    // agents answer locally, which can be before their sessions are open).
    crate::wait_until(
        "every real agent's session",
        Duration::from_secs(60),
        || {
            let (members, real_set) = (members.clone(), real_set.clone());
            async move {
                let listing = host_listing(&members)
                    .await
                    .ok_or_else(|| "no member answered".to_string())?;
                let live = listing
                    .hosts
                    .iter()
                    .filter(|h| real_set.contains(&h.host) && h.session_live)
                    .count();
                if live == real_set.len() {
                    Ok(())
                } else {
                    Err(format!("{live} of {} live", real_set.len()))
                }
            }
        },
    )
    .await?;
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut churn: Option<SessionSet> = None;
    let mut churn_round = 0usize;
    let mut false_expiries = 0usize;
    let mut tick = 0u64;
    let mut restarting: Option<String> = None;
    let mut next_sample = Duration::ZERO;
    let mut writes = 0u64;
    while started.elapsed() < length {
        let now = started.elapsed();
        // Every 2 s: a drain or restore of a real package, through any live member.
        if tick.is_multiple_of(2) {
            let host = &real[(tick as usize / 2) % PACKAGED];
            let action = if (tick / 2).is_multiple_of(2) {
                proto::PackageAction::Drain
            } else {
                proto::PackageAction::Restore
            };
            let mut done = false;
            for m in &members {
                let Ok(ch) = channel(*m).await else { continue };
                let r = AdminClient::new(ch)
                    .package_action(proto::PackageActionRequest {
                        host: host.clone(),
                        r#type: CCM.into(),
                        action: action as i32,
                    })
                    .await;
                if r.is_ok() {
                    done = true;
                    writes += 1;
                    break;
                }
            }
            if !done {
                problems.push(format!(
                    "{:>5.0} s: a drain/restore found no member to take it",
                    now.as_secs_f64()
                ));
            }
        }
        // Every 5 s: a new batch of simulated sessions; the previous batch falls silent.
        if tick.is_multiple_of(5) {
            let start = (churn_round * CHURN_HOSTS) % churn_pool.len().max(1);
            let batch: Vec<(String, Vec<proto::Package>)> = churn_pool
                .iter()
                .cycle()
                .skip(start)
                .take(CHURN_HOSTS)
                .map(|h| (h.clone(), vec![running("event-manager", "127.0.0.1:7009")]))
                .collect();
            churn_round += 1;
            drop(churn.take());
            let m = members[churn_round % members.len()];
            // A member that is restarting refuses the batch now and then: the next batch goes
            // to another member.
            if let Ok(s) = SessionSet::open(m, batch, 4, Duration::from_secs(4)).await {
                churn = Some(s);
            }
        }
        // Every 60 s: a topology apply, alternately adding and removing a host.
        if tick % 60 == 30 {
            let add = (tick / 60).is_multiple_of(2);
            let text = if add {
                // The root domain's hosts are its first `hosts: [...]` line.
                if yaml.contains("\nhosts: []") {
                    yaml.replacen("\nhosts: []", "\nhosts: [soak-extra]", 1)
                } else {
                    yaml.replacen("\nhosts: [", "\nhosts: [soak-extra, ", 1)
                }
            } else {
                yaml.clone()
            };
            if let Err(e) = fleet.apply_topology(&text) {
                problems.push(format!(
                    "{:>5.0} s: topology apply failed: {e:#}",
                    now.as_secs_f64()
                ));
            }
        }
        // Every 120 s: a real agent killed and restarted.
        if tick % 120 == 60 {
            let host = real[(tick as usize / 120) % real.len()].clone();
            restarting = Some(host.clone());
            fleet.agent(&host)?.proc.kill();
            if let Err(e) = fleet.restart_agent(&host).await {
                problems.push(format!(
                    "{:>5.0} s: agent {host} did not restart: {e:#}",
                    now.as_secs_f64()
                ));
            }
        }
        // Every 180 s: a member killed and restarted.
        if tick % 180 == 90 {
            let i = (tick as usize / 180) % 3;
            fleet.members()[i].proc.kill();
            if let Err(e) = fleet.restart_member(i).await {
                problems.push(format!(
                    "{:>5.0} s: member m{} did not restart: {e:#}",
                    now.as_secs_f64(),
                    i + 1
                ));
            }
        }

        if now >= next_sample {
            next_sample += SAMPLE_EVERY;
            if let Some(l) = host_listing(&members).await {
                let lapsed: Vec<&str> = l
                    .hosts
                    .iter()
                    .filter(|h| real_set.contains(&h.host) && !h.session_live)
                    .filter(|h| restarting.as_deref() != Some(h.host.as_str()))
                    .map(|h| h.host.as_str())
                    .collect();
                if !lapsed.is_empty() {
                    false_expiries += lapsed.len();
                    problems.push(format!(
                        "{:>5.0} s: real agents' sessions not live: {}",
                        now.as_secs_f64(),
                        lapsed.join(", ")
                    ));
                }
                let pids: Vec<Option<u32>> = fleet.members().iter().map(|m| m.proc.pid()).collect();
                samples.push(Sample {
                    at: now,
                    rss_mb: pids
                        .iter()
                        .map(|p| p.and_then(|p| rss_mb(p).ok()).unwrap_or(0.0))
                        .collect(),
                    data_mb: data_dirs.iter().map(|d| dir_mb(d)).collect(),
                    revision: l.revision,
                    live_sessions: l.hosts.iter().filter(|h| h.session_live).count(),
                    false_expiries,
                });
            }
            restarting = None;
        }
        tick += 1;
        let next = started + Duration::from_secs(tick);
        tokio::time::sleep_until(next).await;
    }
    drop(churn);

    // The end: every member holds the same registry, every real agent the latest revision.
    let mut agreement = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let mut exports = Vec::new();
        for m in &members {
            let r = match channel(*m).await {
                Ok(ch) => AdminClient::new(ch)
                    .export_registry(proto::ExportRegistryRequest { stale: true })
                    .await
                    .map(|r| r.into_inner()),
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            exports.push(
                r.map(|e| (e.revision, e.snapshot_json))
                    .map_err(|e| e.to_string()),
            );
        }
        let same = exports
            .iter()
            .all(|e| e.is_ok() && e.as_ref().ok() == exports[0].as_ref().ok());
        if same || Instant::now() > deadline {
            break exports;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let first = last[0].clone();
    let members_agree = last.iter().all(|e| e.is_ok() && *e == first);
    let revision = first.as_ref().map(|(r, _)| *r).unwrap_or(0);
    agreement.push(format!(
        "members: {} (revisions {})",
        if members_agree { "agree" } else { "DISAGREE" },
        last.iter()
            .map(|e| e
                .as_ref()
                .map(|(r, _)| r.to_string())
                .unwrap_or_else(|e| e.clone()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut agents_agree = true;
    for h in &real {
        let deadline = Instant::now() + Duration::from_secs(30);
        let seen = loop {
            let r = fleet.resolve(h, CCM).await.map(|r| r.revision).unwrap_or(0);
            if r >= revision || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if seen < revision {
            agents_agree = false;
            agreement.push(format!(
                "agent {h}: at revision {seen}, the registry at {revision}"
            ));
        }
    }
    agreement.push(format!(
        "agents: {}",
        if agents_agree {
            "all at the registry's revision"
        } else {
            "NOT all caught up"
        }
    ));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {minutes} min against 3 members, {REAL_AGENTS} real agents ({PACKAGED} with a package), \
         {} simulated hosts churning; {writes} drain/restore writes",
        churn_pool.len()
    );
    let _ = writeln!(
        out,
        "\n| min | RSS m1/m2/m3 (MB) | data m1/m2/m3 (MB) | revision | live sessions | false expiries |\n| --- | --- | --- | --- | --- | --- |"
    );
    for s in &samples {
        let f = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let _ = writeln!(
            out,
            "| {:.1} | {} | {} | {} | {} | {} |",
            s.at.as_secs_f64() / 60.0,
            f(&s.rss_mb),
            f(&s.data_mb),
            s.revision,
            s.live_sessions,
            s.false_expiries
        );
    }
    let _ = writeln!(out, "\nend: {}", agreement.join("; "));
    let _ = writeln!(out, "false expiries: {false_expiries}");
    if !problems.is_empty() {
        let _ = writeln!(out, "\nevents worth a look ({}):", problems.len());
        for p in problems.iter().take(50) {
            let _ = writeln!(out, "- {p}");
        }
    }
    drop(fleet);
    Ok(out)
}
