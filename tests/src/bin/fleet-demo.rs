//! `fleet-demo`: the worked example played on real processes — a group of three registry
//! managers, six agents, stand-in managers — through maintenance, a lost host, a withdrawn
//! package, a new subdomain and the loss of the registry's own leader. After each step it prints
//! every agent's chosen manager, the host a connection through its forwarding port reached, and
//! how long the re-route took. Then it cleans up.
//!
//! Every member serves the status page: open the printed address in a browser to watch the
//! fleet change (with `--pause 5`, five seconds between the steps).
//!
//! Run with `cargo run --release -p tests --bin fleet-demo`; it builds the daemons it needs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tests::worked_example::{self, CCM};
use tests::Fleet;

/// Plays the worked example of fleet-registry on a small fleet of real processes.
#[derive(Debug, Parser)]
#[command(name = "fleet-demo", version, about)]
struct Args {
    /// Don't build the daemons first (they must already be next to this executable).
    #[arg(long)]
    no_build: bool,
    /// Seconds to wait after each step, to watch it on the status page.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pause: f64,
    /// Run the whole fleet with mutual TLS, from certificates made by `registry-manager certs`.
    #[arg(long)]
    tls: bool,
}

/// `--pause`, set once in `main`.
static PAUSE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Builds the daemons into the target directory this executable runs from, in its profile.
fn build_daemons() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe.parent().context("no exe dir")?;
    let target_dir: PathBuf = profile_dir.parent().context("no target dir")?.to_path_buf();
    let release = profile_dir.ends_with("release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "registry-manager",
        "-p",
        "registry-agent",
    ])
    .args([
        "-p",
        "tests",
        "--bin",
        "registry-manager",
        "--bin",
        "registry-agent",
    ])
    .args(["--bin", "fleet-standin", "--target-dir"])
    .arg(&target_dir);
    if release {
        cmd.arg("--release");
    }
    eprintln!("building the daemons (once)...");
    let status = cmd
        .status()
        .context("cannot run cargo to build the daemons")?;
    anyhow::ensure!(status.success(), "building the daemons failed");
    Ok(())
}

struct Step<'a> {
    title: &'a str,
    expect: Vec<(&'a str, &'a str)>,
}

async fn show(
    fleet: &mut Fleet,
    step: &Step<'_>,
    started: tokio::time::Instant,
) -> anyhow::Result<()> {
    println!("\n== {} ==", step.title);
    // Poll every agent until each reports the expected choice; note when each first did.
    let mut took: Vec<Option<Duration>> = vec![None; step.expect.len()];
    let deadline = started + Duration::from_secs(15);
    while took.iter().any(Option::is_none) {
        for (i, (host, expected)) in step.expect.iter().enumerate() {
            // An agent without a registry copy yet answers UNAVAILABLE: not there yet.
            let chosen = fleet.chosen(host, CCM).await.ok().flatten();
            if took[i].is_none() && chosen.as_deref() == Some(*expected) {
                took[i] = Some(started.elapsed());
            }
        }
        if tokio::time::Instant::now() > deadline {
            // Let wait_chosen produce the detailed error for the first one missing.
            let i = took.iter().position(Option::is_none).unwrap_or(0);
            let (host, expected) = step.expect[i];
            fleet
                .wait_chosen(host, CCM, Some(expected), Duration::ZERO)
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "{:<9} {:<10} {:<12} {:>14}",
        "agent", "chosen", "via forward", "took"
    );
    for ((host, chosen), took) in step.expect.iter().zip(took) {
        let via = fleet
            .through_forward(host, CCM)
            .await
            .unwrap_or_else(|e| format!("error: {e}"));
        println!(
            "{:<9} {:<10} {:<12} {:>11} ms",
            host,
            chosen,
            via,
            took.unwrap_or_default().as_millis()
        );
    }
    // A person watching the status page gets time to look (never in tests: default 0).
    let pause = PAUSE.get().copied().unwrap_or_default();
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

async fn demo(tls: bool) -> anyhow::Result<()> {
    let builder = worked_example::fleet("1s")
        .managers(3)
        .default_checks()
        .manager_http();
    let builder = if tls { builder.tls() } else { builder };
    let mut fleet = builder.start().await?;
    if tls {
        println!(
            "mutual TLS on: certificates made by `registry-manager certs init|issue` in {} (m1..m3, one per agent host, the operator `ops`)",
            fleet.certs_dir().display()
        );
    }
    let addrs: Vec<String> = fleet.members().iter().map(|m| m.addr.to_string()).collect();
    println!(
        "fleet up: a registry group of three managers m1, m2, m3 on {} (session_ttl 1s); {CCM} on fm, agent-1, agent-3 (and s2-host, not yet in the topology); agents use the default check and health settings",
        addrs.join(", ")
    );
    for i in 0..addrs.len() {
        if let Some(url) = fleet.member_http_url(i) {
            println!("status page of {}: {url}/", fleet.member_name(i));
        }
    }

    let t = tokio::time::Instant::now();
    show(
        &mut fleet,
        &Step {
            title: "1. all up: each agent settles on the nearest manager",
            expect: vec![
                ("fm", "fm"),
                ("agent-1", "agent-1"),
                ("agent-2", "agent-1"),
                ("agent-3", "agent-3"),
                ("agent-4", "agent-3"),
            ],
        },
        t,
    )
    .await?;

    println!("\n$ registry-manager package drain --host agent-3 --type {CCM}");
    let t = tokio::time::Instant::now();
    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    show(
        &mut fleet,
        &Step {
            title: "2. agent-3 drained for maintenance: subdomain-1a moves up to agent-1",
            expect: vec![("agent-3", "agent-1"), ("agent-4", "agent-1")],
        },
        t,
    )
    .await?;

    println!("\n# host agent-1 lost: its agent and its manager killed (SIGKILL)");
    let t = tokio::time::Instant::now();
    fleet.agent("agent-1")?.proc.kill();
    fleet.package("agent-1", CCM)?.kill();
    show(
        &mut fleet,
        &Step {
            title: "3. agent-1 lost too: everyone below goes to fm",
            expect: vec![("agent-2", "fm"), ("agent-3", "fm"), ("agent-4", "fm")],
        },
        t,
    )
    .await?;

    println!("\n$ registry-manager package withdraw --host fm --type {CCM}");
    println!("$ registry-manager package restore --host agent-3 --type {CCM}");
    let t = tokio::time::Instant::now();
    fleet.operator(&["package", "withdraw", "--host", "fm", "--type", CCM])?;
    fleet.operator(&["package", "restore", "--host", "agent-3", "--type", CCM])?;
    show(
        &mut fleet,
        &Step {
            title: "4. fm withdrawn, agent-3 restored: everyone leaves fm at once for agent-3",
            expect: vec![
                ("fm", "agent-3"),
                ("agent-2", "agent-3"),
                ("agent-3", "agent-3"),
                ("agent-4", "agent-3"),
            ],
        },
        t,
    )
    .await?;

    println!("\n$ registry-manager topology apply topology.yaml   # adds subdomain-2 with s2-host");
    println!("$ registry-manager package drain --host agent-3 --type {CCM}");
    let t = tokio::time::Instant::now();
    fleet.apply_topology(&worked_example::topology("1s", true))?;
    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    show(
        &mut fleet,
        &Step {
            title:
                "5. new subdomain-2: with no other manager eligible, everyone crosses to s2-host",
            expect: vec![
                ("fm", "s2-host"),
                ("agent-2", "s2-host"),
                ("agent-3", "s2-host"),
                ("agent-4", "s2-host"),
            ],
        },
        t,
    )
    .await?;

    println!("\n$ registry-manager ha status");
    let leader = fleet.wait_leader(None, Duration::from_secs(15)).await?;
    print!(
        "{}",
        String::from_utf8_lossy(
            &fleet
                .member_cli(fleet.member_addr(leader), &["ha", "status"])?
                .stdout
        )
    );
    let leader_name = fleet.member_name(leader).to_owned();
    let lapses_before = fleet.logs_all().matches("session lapsed").count();
    println!("\n# the registry's leader {leader_name} is killed (SIGKILL)");
    let t = tokio::time::Instant::now();
    fleet.members()[leader].proc.kill();
    let next = fleet
        .wait_leader(Some(leader), Duration::from_secs(15))
        .await?;
    let elected = t.elapsed();
    println!(
        "{} elected leader in {} ms; agents keep routing from their copies meanwhile",
        fleet.member_name(next),
        elected.as_millis()
    );
    println!("\n$ registry-manager package restore --host agent-3 --type {CCM}   # through a surviving member");
    let t = tokio::time::Instant::now();
    let survivor = fleet.member_addr(next);
    let out = fleet.member_cli(
        survivor,
        &["package", "restore", "--host", "agent-3", "--type", CCM],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "the operator command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    show(
        &mut fleet,
        &Step {
            title: "6. the registry lost its leader: a new one took over, every agent kept its session, and the next change went through",
            expect: vec![
                ("fm", "s2-host"),
                ("agent-2", "agent-3"),
                ("agent-3", "agent-3"),
                ("agent-4", "agent-3"),
            ],
        },
        t,
    )
    .await?;
    let lapsed = fleet.logs_all().matches("session lapsed").count() - lapses_before;
    println!("agent sessions lapsed through the failover: {lapsed}");
    println!("\n$ registry-manager ha status");
    print!(
        "{}",
        String::from_utf8_lossy(&fleet.member_cli(survivor, &["ha", "status"])?.stdout)
    );

    let explained = fleet.resolve("agent-4", CCM).await?;
    println!("\n$ registry-agent resolve {CCM}   # on agent-4");
    for c in &explained.candidates {
        println!(
            "  {:<8} {:<13} {:<8} {}",
            c.host,
            c.domain,
            c.tier,
            if c.eligible {
                "eligible".to_string()
            } else {
                format!("skipped: {}", c.reason)
            }
        );
    }
    println!("\ndone; stopping the fleet");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = PAUSE.set(Duration::from_secs_f64(args.pause.max(0.0)));
    if !args.no_build {
        build_daemons()?;
    }
    let started = std::time::Instant::now();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(demo(args.tls))?;
    println!("demo took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
