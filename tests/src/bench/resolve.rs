//! The agent's local gRPC `Resolve` (brief form, the fast path local programs use): requests per
//! second and latency p99, with 1 client and with 32 concurrent clients.

use std::time::Duration;

use tokio::time::Instant;

use super::figure::Figure;
use super::gen::{failover_topology, CCM};
use super::probe::{wait_all_choose, AgentProbe};
use super::system::cpu_seconds;
use super::{stats, Mode};
use crate::Fleet;

#[derive(Debug, Clone, Copy)]
struct Plan {
    runs: usize,
    run_for: Duration,
}

impl Plan {
    fn of(mode: Mode) -> Plan {
        match mode {
            Mode::Full => Plan {
                runs: 5,
                run_for: Duration::from_secs(2),
            },
            Mode::Quick => Plan {
                runs: 1,
                run_for: Duration::from_millis(200),
            },
        }
    }
}

/// Measures `resolve_rps_c1`, `resolve_rps_c32`, `resolve_p99_c1`, `resolve_p99_c32`.
pub async fn run(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let plan = Plan::of(mode);
    let mut fleet = Fleet::from_topology(&failover_topology(None))
        .manager()
        .agent("agent-1")
        .agent("agent-3")
        .agent("agent-4")
        .package("agent-1", CCM)
        .package("agent-3", CCM)
        .default_checks()
        .start()
        .await?;
    let api = fleet.agent("agent-4")?.api;
    let agent_pid = fleet
        .agent("agent-4")?
        .proc
        .pid()
        .ok_or_else(|| anyhow::anyhow!("agent-4 is not running"))?;
    let probe = AgentProbe::connect(&mut fleet, "agent-4").await?;
    wait_all_choose(
        std::slice::from_ref(&probe),
        CCM,
        Some("agent-3"),
        Instant::now(),
        Duration::from_millis(20),
        Duration::from_secs(20),
    )
    .await?;

    let mut out = Vec::new();
    for (concurrency, rps_name, p99_name) in [
        (1usize, "resolve_rps_c1", "resolve_p99_c1"),
        (32, "resolve_rps_c32", "resolve_p99_c32"),
    ] {
        let channels = concurrency.min(8);
        let mut rps = Figure::new(rps_name);
        let mut p99 = Figure::new(p99_name);
        let how = format!(
            "Resolve{{type: {CCM}, brief: true}} on agent-4, {concurrency} client(s) over {channels} \
             connection(s), {:?} per run; the clients run in the benchmark process on the same cores",
            plan.run_for
        );
        rps.note(how.clone());
        p99.note(how);
        let mut probes = Vec::new();
        for _ in 0..channels {
            probes.push(AgentProbe::connect_addr("agent-4", api).await?);
        }
        let cpu_agent = cpu_seconds(agent_pid)?;
        let cpu_bench = cpu_seconds(std::process::id())?;
        let mut served = 0.0;
        for _ in 0..plan.runs {
            let (rate, lat_p99, errors) = one_run(&probes, concurrency, plan.run_for).await?;
            served += rate * plan.run_for.as_secs_f64();
            rps.push(rate);
            p99.push(lat_p99);
            if errors > 0 {
                rps.note(format!("{errors} requests failed in one run"));
            }
        }
        let agent_us = (cpu_seconds(agent_pid)? - cpu_agent) * 1e6 / served.max(1.0);
        let bench_us = (cpu_seconds(std::process::id())? - cpu_bench) * 1e6 / served.max(1.0);
        rps.note(format!(
            "CPU per request: agent {agent_us:.1} us (about {} requests/s per core it has to \
             itself), benchmark client {bench_us:.1} us",
            super::stats::fmt_num(1e6 / agent_us.max(0.001))
        ));
        out.push(rps);
        out.push(p99);
    }
    Ok(out)
}

/// One timed run: returns requests per second, latency p99 in µs, and failed requests.
async fn one_run(
    probes: &[AgentProbe],
    concurrency: usize,
    run_for: Duration,
) -> anyhow::Result<(f64, f64, usize)> {
    let start = Instant::now();
    let end = start + run_for;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut p = probes[i % probes.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0usize;
            while Instant::now() < end {
                let t = Instant::now();
                match p.resolve(CCM, true, Duration::from_secs(2)).await {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    anyhow::ensure!(!all.is_empty(), "no resolve succeeded ({errors} failed)");
    let p99 = stats::percentile(&all, 99.0).unwrap_or(0.0);
    Ok((all.len() as f64 / elapsed, p99, errors))
}
