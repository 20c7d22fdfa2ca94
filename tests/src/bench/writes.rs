//! Manager write throughput: operator `drain` and `restore` in turn from 8 concurrent clients,
//! each on its own package; every answer is an acknowledged, durable write (the group contract (docs/ha.md)).

use std::time::Duration;

use proto::admin_client::AdminClient;
use tokio::time::Instant;

use super::agents::{channels, running, SessionSet};
use super::figure::Figure;
use super::gen::{GeneratedFleet, CCM};
use super::Mode;
use crate::Fleet;

const CLIENTS: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Plan {
    runs: usize,
    run_for: Duration,
}

impl Plan {
    fn of(mode: Mode) -> Plan {
        match mode {
            Mode::Full => Plan {
                runs: 3,
                run_for: Duration::from_secs(3),
            },
            Mode::Quick => Plan {
                runs: 1,
                run_for: Duration::from_millis(300),
            },
        }
    }
}

/// Measures `manager_write_throughput`.
pub async fn run(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let plan = Plan::of(mode);
    let g = GeneratedFleet::new(4, 4 * CLIENTS, 2);
    let fleet = Fleet::from_topology(&g.to_yaml())
        .manager()
        .session_ttl("5m")
        .start()
        .await?;
    let manager = fleet.manager_addr();
    let hosts: Vec<String> = g.host_names().take(CLIENTS).map(str::to_string).collect();
    let _sessions = SessionSet::open(
        manager,
        hosts
            .iter()
            .map(|h| (h.clone(), vec![running(CCM, "127.0.0.1:7001")]))
            .collect(),
        CLIENTS,
        Duration::from_secs(20),
    )
    .await?;
    let chans = channels(manager, 4).await?;
    let mut fig = Figure::new("manager_write_throughput");
    fig.note(format!(
        "{CLIENTS} clients over 4 connections, each alternating PackageAction drain/restore on its own \
         package, {:?} per run; counted when acknowledged",
        plan.run_for
    ));
    let mut errors = 0usize;
    for _ in 0..plan.runs {
        let start = Instant::now();
        let (ok, failed) = drain_restore(&chans, &hosts, CCM, plan.run_for).await?;
        errors += failed;
        anyhow::ensure!(ok > 0, "no write was acknowledged ({errors} refused)");
        fig.push(ok as f64 / start.elapsed().as_secs_f64());
    }
    if errors > 0 {
        fig.note(format!("{errors} writes were refused"));
    }
    drop(fleet);
    Ok(vec![fig])
}

/// One client per host, each alternating `drain` and `restore` of its own package of
/// `package_type` for `run_for`, spread over `chans`: (acknowledged, refused).
pub async fn drain_restore(
    chans: &[tonic::transport::Channel],
    hosts: &[String],
    package_type: &str,
    run_for: Duration,
) -> anyhow::Result<(usize, usize)> {
    let end = Instant::now() + run_for;
    let mut tasks = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let mut admin = AdminClient::new(chans[i % chans.len()].clone());
        let (host, package_type) = (host.clone(), package_type.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut drain) = (0usize, 0usize, true);
            while Instant::now() < end {
                let action = if drain {
                    proto::PackageAction::Drain
                } else {
                    proto::PackageAction::Restore
                };
                let r = admin
                    .package_action(proto::PackageActionRequest {
                        host: host.clone(),
                        r#type: package_type.clone(),
                        action: action as i32,
                    })
                    .await;
                match r {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                drain = !drain;
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await?;
        ok += o;
        failed += f;
    }
    Ok((ok, failed))
}
