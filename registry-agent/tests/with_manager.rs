//! The agent against a real in-process registry manager on loopback: registration, status
//! reports from local checks, the watch stream, routing changes with hold-down, restarts with
//! the manager down (answers from the persisted copy, `stale: true`), resume, forwarding.
//! Every wait is on a condition with a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::agent_client::AgentClient;
use registry_agent::{start, AgentConfig, RouteBook, RunningAgent};
use registry_manager::{RunningManager, ServeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(10);
const CCM: &str = "command-control-manager";
const TTL: Duration = Duration::from_secs(1);

const TREE: &str = "\
version: 1
routing: { revert_after: 1s }
domain: framework
hosts: [fm]
subdomains:
  - domain: subdomain-1
    hosts: [agent-1, agent-2]
";

async fn start_manager(data_dir: &Path, listen: SocketAddr) -> Result<RunningManager> {
    start_manager_ttl(data_dir, listen, TTL).await
}

async fn start_manager_ttl(
    data_dir: &Path,
    listen: SocketAddr,
    session_ttl: Duration,
) -> Result<RunningManager> {
    tests::inproc::start_manager_at(data_dir, listen, TREE, session_ttl).await
}

/// An in-process TCP echo server standing in for a manager package; `kill` drops its
/// listener and every connection.
struct Echo {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Echo {
    async fn start_on(addr: SocketAddr) -> Result<Echo> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(Echo { addr, tasks })
    }
    async fn start() -> Result<Echo> {
        Echo::start_on("127.0.0.1:0".parse()?).await
    }
    async fn kill(mut self) {
        self.tasks.shutdown().await;
    }
}

fn agent_config(
    host: &str,
    manager: SocketAddr,
    data_dir: &Path,
    packages: &[&Echo],
    forward: bool,
) -> Result<AgentConfig> {
    let pkgs: Vec<(SocketAddr, SocketAddr)> = packages.iter().map(|p| (p.addr, p.addr)).collect();
    agent_config_with(host, manager, data_dir, &pkgs, forward)
}

/// Packages as (published endpoint, locally checked address).
fn agent_config_with(
    host: &str,
    manager: SocketAddr,
    data_dir: &Path,
    packages: &[(SocketAddr, SocketAddr)],
    forward: bool,
) -> Result<AgentConfig> {
    let mut y = format!(
        "host: {host}\nmanagers: [\"{manager}\"]\ndata_dir: {}\nlisten: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\nhealth: {{ interval: 100ms, timeout: 200ms, fall: 2, rise: 2 }}\n",
        data_dir.display()
    );
    if !packages.is_empty() {
        y.push_str("packages:\n");
        for (endpoint, check) in packages {
            y.push_str(&format!(
                "  - type: {CCM}\n    endpoint: \"{endpoint}\"\n    check: {{ tcp: \"{check}\" }}\n    interval: 50ms\n    fall: 2\n    rise: 2\n"
            ));
        }
    }
    if forward {
        y.push_str(&format!(
            "forward:\n  - type: {CCM}\n    listen: 127.0.0.1:0\n"
        ));
    }
    AgentConfig::from_yaml(&format!("{host}.yaml"), &y).map_err(|e| anyhow!("{e}"))
}

async fn wait_book(
    agent: &RunningAgent,
    what: &str,
    pred: impl Fn(&RouteBook) -> bool,
) -> Result<Arc<RouteBook>> {
    let mut rx = agent.subscribe();
    timeout(WAIT, async {
        loop {
            let book = rx.borrow_and_update().clone();
            if pred(&book) {
                return Ok(book);
            }
            rx.changed().await.map_err(|_| anyhow!("agent stopped"))?;
        }
    })
    .await
    .map_err(|_| {
        let b = agent.routes();
        anyhow!(
            "timed out waiting for: {what}; now chosen={:?} stale={} revision={} problem={:?}",
            b.chosen(CCM),
            b.stale,
            b.revision,
            b.problem
        )
    })?
}

fn chosen_is(b: &RouteBook, host: Option<&str>) -> bool {
    b.chosen(CCM).map(|h| h.as_str()) == host
}

async fn agent_client(a: &RunningAgent) -> Result<AgentClient<tonic::transport::Channel>> {
    Ok(AgentClient::connect(format!("http://{}", a.local_addr())).await?)
}

async fn echo_round_trip(addr: SocketAddr, msg: &[u8]) -> Result<()> {
    let mut s = timeout(WAIT, TcpStream::connect(addr)).await??;
    s.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    timeout(WAIT, s.read_exact(&mut got))
        .await
        .context("echo answer")??;
    anyhow::ensure!(got == msg, "echo mismatch");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_report_from_checks_and_route_to_each_other() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = start_manager(&dir.path().join("m"), "127.0.0.1:0".parse()?).await?;
    let maddr = manager.local_addr();
    let backend = Echo::start().await?;
    let backend_addr = backend.addr;

    let a1 = start(agent_config(
        "agent-1",
        maddr,
        &dir.path().join("a1"),
        &[&backend],
        false,
    )?)
    .await?;
    let a2 = start(agent_config(
        "agent-2",
        maddr,
        &dir.path().join("a2"),
        &[],
        true,
    )?)
    .await?;

    // agent-1's check passes, it registers `running`; agent-2 routes to it (same domain).
    wait_book(&a2, "agent-2 routes to agent-1, live", |b| {
        chosen_is(b, Some("agent-1")) && !b.stale
    })
    .await?;
    wait_book(&a1, "agent-1 routes to itself", |b| {
        chosen_is(b, Some("agent-1"))
    })
    .await?;

    let mut c = agent_client(&a2).await?;
    let full = c
        .resolve(pb::ResolveRequest {
            r#type: CCM.into(),
            brief: false,
        })
        .await?
        .into_inner();
    assert_eq!(full.host, "agent-2");
    assert_eq!(full.chosen.as_deref(), Some("agent-1"));
    assert_eq!(
        full.endpoint.as_deref(),
        Some(backend_addr.to_string().as_str())
    );
    assert_eq!(full.route, ["agent-1"]);
    assert_eq!(full.candidates[0].tier, "domain");
    assert!(!full.stale);
    let json = registry_agent::cli::explanation_json(&full);
    for key in [
        "host",
        "type",
        "chosen",
        "endpoint",
        "route",
        "candidates",
        "revision",
        "stale",
    ] {
        assert!(json.get(key).is_some(), "JSON answer has {key}: {json}");
    }
    let brief = c
        .resolve(pb::ResolveRequest {
            r#type: CCM.into(),
            brief: true,
        })
        .await?
        .into_inner();
    assert_eq!(
        (brief.chosen.as_deref(), brief.candidates.len()),
        (Some("agent-1"), 0)
    );
    let routes = c.routes(pb::RoutesRequest {}).await?.into_inner();
    assert!(routes
        .routes
        .iter()
        .any(|r| r.r#type == CCM && r.chosen.as_deref() == Some("agent-1")));
    let bad = c
        .resolve(pb::ResolveRequest {
            r#type: "Not A Type".into(),
            brief: false,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let nobody = c
        .resolve(pb::ResolveRequest {
            r#type: "event-manager".into(),
            brief: false,
        })
        .await?
        .into_inner();
    assert_eq!(nobody.chosen, None);

    // Through agent-2's forward port to agent-1's package.
    let fwd = a2.forward_addr(CCM).context("forward port")?;
    echo_round_trip(fwd, b"via agent-2").await?;

    // The package dies: agent-1's own check reports it failing; agent-2 has no manager left.
    backend.kill().await;
    let b = wait_book(&a2, "agent-2 has no manager", |b| chosen_is(b, None)).await?;
    let cand = &b.get(CCM).context("ccm route")?.full.candidates[0];
    assert_eq!(cand.host, "agent-1");
    assert_eq!(cand.reason, "package status is failing");

    // It comes back on the same port: reported running, routed to again at once (nothing else).
    let backend = Echo::start_on(backend_addr).await?;
    wait_book(&a2, "agent-2 routes to agent-1 again", |b| {
        chosen_is(b, Some("agent-1"))
    })
    .await?;
    assert!(a2.route_changes() >= 3);

    a1.shutdown().await;
    a2.shutdown().await;
    backend.kill().await;
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_at_once_and_restore_reverts_after_the_hold_down() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = start_manager(&dir.path().join("m"), "127.0.0.1:0".parse()?).await?;
    let maddr = manager.local_addr();
    let b1 = Echo::start().await?;
    let bf = Echo::start().await?;
    let a1 = start(agent_config(
        "agent-1",
        maddr,
        &dir.path().join("a1"),
        &[&b1],
        false,
    )?)
    .await?;
    let fm = start(agent_config(
        "fm",
        maddr,
        &dir.path().join("fm"),
        &[&bf],
        false,
    )?)
    .await?;
    let a2 = start(agent_config(
        "agent-2",
        maddr,
        &dir.path().join("a2"),
        &[],
        false,
    )?)
    .await?;
    wait_book(&a2, "both managers known, agent-1 chosen", |b| {
        chosen_is(b, Some("agent-1")) && b.get(CCM).is_some_and(|r| r.route.len() == 2)
    })
    .await?;

    let mut c = agent_client(&a2).await?;
    let mut updates = c
        .watch_route(pb::ResolveRequest {
            r#type: CCM.into(),
            brief: true,
        })
        .await?
        .into_inner();
    let first = timeout(WAIT, updates.message())
        .await??
        .context("initial update")?;
    assert_eq!(
        (first.chosen.as_deref(), first.reason.as_str()),
        (Some("agent-1"), "initial")
    );

    let mut admin = AdminClient::connect(format!("http://{maddr}")).await?;
    let action = |a: pb::PackageAction| pb::PackageActionRequest {
        host: "agent-1".into(),
        r#type: CCM.into(),
        action: a as i32,
    };
    admin
        .package_action(action(pb::PackageAction::Drain))
        .await?;
    let moved = timeout(WAIT, async {
        loop {
            let u = updates.message().await?.context("stream ended")?;
            if u.chosen.as_deref() == Some("fm") {
                return anyhow::Ok(u);
            }
        }
    })
    .await??;
    assert!(
        moved.reason.contains("agent-1") && moved.reason.contains("draining"),
        "{}",
        moved.reason
    );

    let before_restore = Instant::now();
    admin
        .package_action(action(pb::PackageAction::Restore))
        .await?;
    let back = timeout(WAIT, async {
        loop {
            let u = updates.message().await?.context("stream ended")?;
            if u.chosen.as_deref() == Some("agent-1") {
                return anyhow::Ok(u);
            }
        }
    })
    .await??;
    assert_eq!(back.reason, "reverted after hold-down");
    // The hold-down (routing.revert_after: 1s) is a lower bound: never earlier.
    assert!(before_restore.elapsed() >= Duration::from_secs(1));

    for a in [a1, fm, a2] {
        a.shutdown().await;
    }
    b1.kill().await;
    bf.kill().await;
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_answers_from_its_copy_with_the_manager_down_then_resumes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mdir = dir.path().join("m");
    let manager = start_manager(&mdir, "127.0.0.1:0".parse()?).await?;
    let maddr = manager.local_addr();
    let backend = Echo::start().await?;
    let a1 = start(agent_config(
        "agent-1",
        maddr,
        &dir.path().join("a1"),
        &[&backend],
        false,
    )?)
    .await?;
    let a2_dir = dir.path().join("a2");
    let a2 = start(agent_config("agent-2", maddr, &a2_dir, &[], false)?).await?;
    let before = wait_book(&a2, "agent-2 live on agent-1", |b| {
        chosen_is(b, Some("agent-1")) && !b.stale
    })
    .await?;

    a2.shutdown().await;
    manager.shutdown().await?;

    // Every manager down: the restarted agent answers at once from its persisted copy.
    let a2 = start(agent_config("agent-2", maddr, &a2_dir, &[], false)?).await?;
    let now = a2.routes();
    assert!(now.stale);
    assert_eq!(now.revision, before.revision);
    assert!(chosen_is(&now, Some("agent-1")));
    let mut c = agent_client(&a2).await?;
    let r = c
        .resolve(pb::ResolveRequest {
            r#type: CCM.into(),
            brief: true,
        })
        .await?
        .into_inner();
    assert_eq!(
        (r.chosen.as_deref(), r.stale, r.revision),
        (Some("agent-1"), true, before.revision)
    );

    // The manager comes back on its address with its data: the agent resumes, live again.
    let manager = start_manager(&mdir, maddr).await?;
    let after = wait_book(&a2, "agent-2 live again", |b| {
        !b.stale && b.revision >= before.revision && chosen_is(b, Some("agent-1"))
    })
    .await?;
    assert!(after.revision >= before.revision);
    wait_book(&a1, "agent-1 live again", |b| !b.stale).await?;

    a1.shutdown().await;
    a2.shutdown().await;
    backend.kill().await;
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_resumes_its_session_or_waits_out_the_old_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = start_manager(&dir.path().join("m"), "127.0.0.1:0".parse()?).await?;
    let maddr = manager.local_addr();
    let backend = Echo::start().await?;
    let a1_dir = dir.path().join("a1");
    let a1 = start(agent_config("agent-1", maddr, &a1_dir, &[&backend], false)?).await?;
    wait_book(&a1, "agent-1 live, routed to itself", |b| {
        !b.stale && chosen_is(b, Some("agent-1"))
    })
    .await?;

    // Same data directory: the persisted session id is resumed.
    a1.shutdown().await;
    let a1 = start(agent_config("agent-1", maddr, &a1_dir, &[&backend], false)?).await?;
    wait_book(&a1, "agent-1 resumed", |b| {
        !b.stale && chosen_is(b, Some("agent-1"))
    })
    .await?;

    // A fresh data directory: the old session is still live, OpenSession is refused with
    // ALREADY_EXISTS until it lapses; the agent keeps retrying and gets there.
    a1.shutdown().await;
    let a1 = start(agent_config(
        "agent-1",
        maddr,
        &dir.path().join("a1-new"),
        &[&backend],
        false,
    )?)
    .await?;
    wait_book(&a1, "agent-1 with a new session", |b| {
        !b.stale && chosen_is(b, Some("agent-1"))
    })
    .await?;

    a1.shutdown().await;
    backend.kill().await;
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_port_loses_no_connection_when_the_chosen_manager_dies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = start_manager(&dir.path().join("m"), "127.0.0.1:0".parse()?).await?;
    let maddr = manager.local_addr();
    let b1 = Echo::start().await?;
    let bf = Echo::start().await?;
    let a1 = start(agent_config(
        "agent-1",
        maddr,
        &dir.path().join("a1"),
        &[&b1],
        false,
    )?)
    .await?;
    let fm = start(agent_config(
        "fm",
        maddr,
        &dir.path().join("fm"),
        &[&bf],
        false,
    )?)
    .await?;
    let a2 = start(agent_config(
        "agent-2",
        maddr,
        &dir.path().join("a2"),
        &[],
        true,
    )?)
    .await?;
    wait_book(&a2, "agent-1 chosen, fm next", |b| {
        chosen_is(b, Some("agent-1")) && b.get(CCM).is_some_and(|r| r.order.len() == 2)
    })
    .await?;
    let fwd = a2.forward_addr(CCM).context("forward port")?;
    echo_round_trip(fwd, b"before").await?;

    // A connection open across the crash ends (closed, not hung) ...
    let mut open = TcpStream::connect(fwd).await?;
    open.write_all(b"x").await?;
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await?;
    b1.kill().await;
    let mut buf = [0u8; 8];
    let ended = timeout(WAIT, async {
        loop {
            match open.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the client connection across the crash was closed"
    );

    // ... and every new connection succeeds at once: the forwarder falls back within the accept.
    for i in 0..20 {
        echo_round_trip(fwd, format!("after crash {i}").as_bytes()).await?;
    }
    wait_book(&a2, "agent-2 moved to fm", |b| chosen_is(b, Some("fm"))).await?;

    for a in [a1, fm, a2] {
        a.shutdown().await;
    }
    bf.kill().await;
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_copy_or_manager_says_so() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A port with nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let a = start(agent_config(
        "agent-2",
        dead,
        &dir.path().join("a"),
        &[],
        true,
    )?)
    .await?;
    let mut c = agent_client(&a).await?;
    let e = c
        .resolve(pb::ResolveRequest {
            r#type: CCM.into(),
            brief: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(e.message().contains("no registry copy"), "{}", e.message());
    // `Routes` always answers: the listed types, no manager, the problem as the reason.
    let routes = c.routes(pb::RoutesRequest {}).await?.into_inner();
    assert!(routes.stale);
    let ccm = routes
        .routes
        .iter()
        .find(|r| r.r#type == CCM)
        .context("ccm listed")?;
    assert!(
        ccm.chosen.is_none() && ccm.reason.contains("no registry copy"),
        "{ccm:?}"
    );
    // The forward port accepts and closes at once: nothing to lead to.
    let mut s = TcpStream::connect(a.forward_addr(CCM).context("forward")?).await?;
    let mut buf = [0u8; 1];
    let n = timeout(WAIT, s.read(&mut buf)).await?;
    assert!(matches!(n, Ok(0) | Err(_)));
    a.shutdown().await;
    Ok(())
}

/// A port with nothing listening on it.
async fn dead_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_hold_down_a_manager_the_registry_believes_in_and_revert_when_it_answers(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = start_manager(&dir.path().join("m"), "127.0.0.1:0".parse()?).await?;
    let maddr = manager.local_addr();
    // agent-1's own check passes (it checks a live port) but its published endpoint is not
    // reachable from agent-2: a partition the registry cannot see.
    let local_ok = Echo::start().await?;
    let unreachable = dead_addr().await?;
    let bf = Echo::start().await?;
    let a1 = start(agent_config_with(
        "agent-1",
        maddr,
        &dir.path().join("a1"),
        &[(unreachable, local_ok.addr)],
        false,
    )?)
    .await?;
    let fm = start(agent_config(
        "fm",
        maddr,
        &dir.path().join("fm"),
        &[&bf],
        false,
    )?)
    .await?;
    let a2 = start(agent_config(
        "agent-2",
        maddr,
        &dir.path().join("a2"),
        &[],
        false,
    )?)
    .await?;

    let held = wait_book(&a2, "agent-1 held down, fm chosen", |b| {
        chosen_is(b, Some("fm"))
            && b.get(CCM).is_some_and(|r| {
                r.full
                    .candidates
                    .iter()
                    .any(|c| c.host == "agent-1" && c.reason.contains("held down"))
            })
    })
    .await?;
    let cand = held
        .get(CCM)
        .context("route")?
        .full
        .candidates
        .iter()
        .find(|c| c.host == "agent-1")
        .cloned()
        .context("agent-1")?;
    assert!(!cand.eligible);
    // ("held down" is only ever the reason of a candidate the registry has running and alive.)

    // The endpoint answers again: `rise` probes bring it back, then the 1s hold-down reverts.
    let healed = Echo::start_on(unreachable).await?;
    let back = wait_book(&a2, "agent-2 back on agent-1", |b| {
        chosen_is(b, Some("agent-1"))
    })
    .await?;
    assert_eq!(
        back.get(CCM).context("route")?.reason,
        "reverted after hold-down"
    );

    for a in [a1, fm, a2] {
        a.shutdown().await;
    }
    for e in [local_ok, bf, healed] {
        e.kill().await;
    }
    manager.shutdown().await?;
    Ok(())
}

fn agent_bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_registry-agent"))
        .args(args)
        .output()
        .expect("run registry-agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_resolve_and_routes_against_a_running_agent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = start_manager(&dir.path().join("m"), "127.0.0.1:0".parse()?).await?;
    let maddr = manager.local_addr();
    let backend = Echo::start().await?;
    let fm = start(agent_config(
        "fm",
        maddr,
        &dir.path().join("fm"),
        &[&backend],
        false,
    )?)
    .await?;
    let a2 = start(agent_config(
        "agent-2",
        maddr,
        &dir.path().join("a2"),
        &[],
        false,
    )?)
    .await?;
    wait_book(&a2, "agent-2 routes to fm", |b| {
        chosen_is(b, Some("fm")) && !b.stale
    })
    .await?;
    let agent = a2.local_addr().to_string();

    let out = tokio::task::spawn_blocking({
        let agent = agent.clone();
        move || agent_bin(&["resolve", CCM, "--agent", &agent, "--json"])
    })
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["host"], "agent-2");
    assert_eq!(v["type"], CCM);
    assert_eq!(v["chosen"], "fm");
    assert_eq!(v["endpoint"], backend.addr.to_string());
    assert_eq!(v["route"], serde_json::json!(["fm"]));
    assert_eq!(v["candidates"][0]["tier"], "ancestor");
    assert_eq!(v["candidates"][0]["domain"], "framework");
    assert_eq!(v["candidates"][0]["eligible"], true);
    assert!(v["candidates"][0]["reason"].is_null());
    assert_eq!(v["stale"], false);
    assert!(v["revision"].as_u64().is_some_and(|r| r > 0));

    let out = tokio::task::spawn_blocking({
        let agent = agent.clone();
        move || agent_bin(&["routes", "--agent", &agent])
    })
    .await?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    assert!(
        text.lines()
            .any(|l| l == format!("{CCM} -> fm ({})", backend.addr)),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "registry-manager -> none"),
        "{text}"
    );

    // Failures: non-zero status and one line on stderr.
    let dead = dead_addr().await?.to_string();
    let out =
        tokio::task::spawn_blocking(move || agent_bin(&["resolve", CCM, "--agent", &dead])).await?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the agent"), "{err}");
    let out =
        tokio::task::spawn_blocking(move || agent_bin(&["resolve", "Bad Type", "--agent", &agent]))
            .await?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("is invalid"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "host: fm\nmanagers: [\"127.0.0.1:7400\"]\nlisen: x\n")?;
    let bad_s = bad.display().to_string();
    let out = tokio::task::spawn_blocking(move || agent_bin(&["run", "--config", &bad_s])).await?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.starts_with(&format!("{}:3:1: unknown field `lisen`", bad.display())),
        "{err}"
    );

    fm.shutdown().await;
    a2.shutdown().await;
    backend.kill().await;
    manager.shutdown().await?;
    Ok(())
}

/// The registry's state as a watcher from 0 gets it (parts reassembled), and how many wire
/// events carried it.
async fn manager_snapshot(maddr: SocketAddr) -> Result<(pb::RegistryState, usize)> {
    use prost::Message;
    let mut client =
        proto::v1::agent_registry_client::AgentRegistryClient::connect(format!("http://{maddr}"))
            .await?;
    let mut stream = client
        .watch(pb::WatchRequest {
            from_revision: 0,
            host: String::new(),
            history: String::new(),
            status_changes: false,
        })
        .await?
        .into_inner();
    let mut parts = proto::watch_parts::Reassembler::default();
    let mut wire = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.message())
            .await
            .context("snapshot within the deadline")??
            .ok_or_else(|| anyhow!("watch ended"))?;
        wire += 1;
        if let Some(ev) = parts.push(ev)? {
            let Some(pb::watch_event::Payload::Snapshot(b)) = ev.payload else {
                anyhow::bail!("first event is not a snapshot");
            };
            return Ok((pb::RegistryState::decode(b)?, wire));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_sent_in_parts_gives_the_agent_a_copy_equal_to_the_registry() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hosts: Vec<String> = (0..3000).map(|i| format!("host-{i:04}")).collect();
    let tree = format!(
        "version: 1\ndomain: framework\nhosts: [fm]\nsubdomains:\n  - domain: subdomain-1\n    hosts: [agent-1, agent-2, {}]\n",
        hosts.join(", ")
    );
    let manager = registry_manager::start(ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("m"),
        topology: Some(("tree.yaml".into(), tree)),
        session_ttl: TTL,
        group: None,
        http_listen: None,
        security: Default::default(),
    })
    .await
    .map_err(|e| anyhow!("manager did not start: {e}"))?;
    let maddr = manager.local_addr();
    let backend = Echo::start().await?;
    let a1_dir = dir.path().join("a1");
    let a1 = start(agent_config("agent-1", maddr, &a1_dir, &[&backend], false)?).await?;
    wait_book(&a1, "agent-1 live, routing to itself", |b| {
        chosen_is(b, Some("agent-1")) && !b.stale
    })
    .await?;

    // The registry as the manager sends it, at the revision the agent has.
    let deadline = Instant::now() + WAIT;
    let (state, wire) = loop {
        let (state, wire) = manager_snapshot(maddr).await?;
        let mut rx = a1.subscribe();
        timeout(WAIT, async {
            while rx.borrow_and_update().revision < state.revision {
                rx.changed().await.map_err(|_| anyhow!("agent stopped"))?;
            }
            anyhow::Ok(())
        })
        .await
        .context("agent reaching the manager's revision")??;
        if a1.revision() == state.revision {
            break (state, wire);
        }
        anyhow::ensure!(Instant::now() < deadline, "the registry kept changing");
    };
    assert!(
        wire > 2,
        "a {}-host topology is sent in several parts, got {wire} event(s)",
        hosts.len()
    );
    assert!(state.hosts.iter().any(|h| h.host == "agent-1"));

    a1.shutdown().await;
    let copy = registry_agent::copy_store::CopyStore::open(&a1_dir)?.load()?;
    let mut have = copy.to_state();
    let mut want = state;
    have.hosts.sort_by(|a, b| a.host.cmp(&b.host));
    want.hosts.sort_by(|a, b| a.host.cmp(&b.host));
    assert_eq!(have, want, "the agent's copy equals the manager's registry");
    assert!(copy.topology.is_some_and(|t| t.host("host-2999").is_some()));

    backend.kill().await;
    manager.shutdown().await?;
    Ok(())
}

/// Every status the registry gives `host`'s package of type `ty`, in order (repeats merged), as
/// a watcher from revision 0 sees them, published as they come.
async fn watch_statuses(
    maddr: SocketAddr,
    host: &'static str,
    ty: &'static str,
) -> Result<(
    tokio::sync::watch::Receiver<Vec<pb::PackageStatus>>,
    tokio::task::JoinHandle<()>,
)> {
    use prost::Message;
    let mut client =
        proto::v1::agent_registry_client::AgentRegistryClient::connect(format!("http://{maddr}"))
            .await?;
    let mut stream = client
        .watch(pb::WatchRequest {
            from_revision: 0,
            host: String::new(),
            history: String::new(),
            status_changes: false,
        })
        .await?
        .into_inner();
    let (tx, rx) = tokio::sync::watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        let mut parts = proto::watch_parts::Reassembler::default();
        while let Ok(Some(ev)) = stream.message().await {
            let Ok(Some(ev)) = parts.push(ev) else {
                continue;
            };
            let entries = match ev.payload {
                Some(pb::watch_event::Payload::Snapshot(b)) => pb::RegistryState::decode(b)
                    .map(|s| s.hosts)
                    .unwrap_or_default(),
                Some(pb::watch_event::Payload::Delta(b)) => {
                    pb::Delta::decode(b).map(|d| d.upserts).unwrap_or_default()
                }
                None => Vec::new(),
            };
            for e in entries.iter().filter(|e| e.host == host) {
                for p in e.packages.iter().filter(|p| p.r#type == ty) {
                    let status = pb::PackageStatus::try_from(p.status)
                        .unwrap_or(pb::PackageStatus::Unspecified);
                    tx.send_if_modified(|seen| {
                        if seen.last() == Some(&status) {
                            return false;
                        }
                        seen.push(status);
                        true
                    });
                }
            }
        }
    });
    Ok((rx, task))
}

async fn wait_statuses(
    rx: &tokio::sync::watch::Receiver<Vec<pb::PackageStatus>>,
    what: &str,
    pred: impl Fn(&[pb::PackageStatus]) -> bool,
) -> Result<Vec<pb::PackageStatus>> {
    let mut waiter = rx.clone();
    let got = timeout(WAIT, async move {
        waiter.wait_for(|s| pred(s)).await.map(|s| s.clone())
    })
    .await;
    match got {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(_)) => Err(anyhow!("registry watch ended waiting for: {what}")),
        Err(_) => Err(anyhow!(
            "timed out waiting for: {what}; registry statuses so far {:?}",
            *rx.borrow()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_that_stops_listening_is_reported_failing_at_the_first_refusal() -> Result<()> {
    use pb::PackageStatus::{Failing, Running, Starting, Stopped};
    let dir = tempfile::tempdir()?;
    let manager = start_manager(&dir.path().join("m"), "127.0.0.1:0".parse()?).await?;
    let maddr = manager.local_addr();
    let (statuses, watcher) = watch_statuses(maddr, "agent-1", CCM).await?;
    let backend = Echo::start().await?;
    // `fall: 1000` checks 50 ms apart would take 50 s: far beyond every wait here. Only the
    // refusal by this host's kernel can make the package failing in time.
    let y = format!(
        "host: agent-1\nmanagers: [\"{maddr}\"]\ndata_dir: {}\nlisten: 127.0.0.1:0\nhttp_listen: none\npackages:\n  - type: {CCM}\n    endpoint: \"{a}\"\n    check: {{ tcp: \"{a}\" }}\n    interval: 50ms\n    fall: 1000\n    rise: 1\n",
        dir.path().join("a1").display(),
        a = backend.addr,
    );
    let a1 = start(AgentConfig::from_yaml("agent-1.yaml", &y).map_err(|e| anyhow!("{e}"))?).await?;
    wait_statuses(&statuses, "agent-1's package registered running", |s| {
        s.last() == Some(&Running)
    })
    .await?;

    backend.kill().await;
    let seen = wait_statuses(&statuses, "agent-1's package reported failing", |s| {
        s.last() == Some(&Failing)
    })
    .await?;
    // In order: (starting,) running, failing; never stopped, nothing in between.
    let after_start: Vec<_> = seen
        .iter()
        .copied()
        .skip_while(|s| *s == Starting)
        .collect();
    assert_eq!(after_start, [Running, Failing], "registry saw {seen:?}");
    assert!(!seen.contains(&Stopped));

    a1.shutdown().await;
    watcher.abort();
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_the_registry_holds_wrongly_is_reported_again_by_the_host_s_agent() -> Result<()> {
    use pb::PackageStatus::{Failing, Running};
    let dir = tempfile::tempdir()?;
    // A long TTL: the false report and the agent's restart happen within its session.
    let session_ttl = Duration::from_secs(5);
    let manager =
        start_manager_ttl(&dir.path().join("m"), "127.0.0.1:0".parse()?, session_ttl).await?;
    let maddr = manager.local_addr();
    let (statuses, watcher) = watch_statuses(maddr, "agent-1", CCM).await?;
    let backend = Echo::start().await?;
    let a1_dir = dir.path().join("a1");
    let a1 = start(agent_config("agent-1", maddr, &a1_dir, &[&backend], false)?).await?;
    wait_book(&a1, "agent-1 live", |b| !b.stale).await?;
    wait_statuses(&statuses, "agent-1 registered running", |s| {
        s.last() == Some(&Running)
    })
    .await?;

    // The agent stops; its session stays live for a TTL. It kept the TTL the manager granted.
    a1.shutdown().await;
    let saved = registry_agent::copy_store::CopyStore::open(&a1_dir)?
        .load_session()?
        .context("a persisted session")?;
    assert_eq!(saved.ttl, Some(session_ttl));

    // Someone reports a false status with the host's live session.
    let mut reg =
        proto::v1::agent_registry_client::AgentRegistryClient::connect(format!("http://{maddr}"))
            .await?;
    reg.report_status(pb::ReportStatusRequest {
        session_id: saved.id,
        host: "agent-1".into(),
        r#type: CCM.into(),
        status: Failing as i32,
    })
    .await?;
    wait_statuses(&statuses, "the registry holds the false status", |s| {
        s.last() == Some(&Failing)
    })
    .await?;

    // The agent comes back and resumes its session. Its persisted copy says `running`, like
    // its check: no change to report; but the registry contradicts its check, so it reports
    // `running` again until the registry agrees.
    let a1 = start(agent_config("agent-1", maddr, &a1_dir, &[&backend], false)?).await?;
    let seen = wait_statuses(&statuses, "the registry agrees with the check again", |s| {
        s.ends_with(&[Failing, Running])
    })
    .await?;
    let after_start: Vec<_> = seen
        .iter()
        .copied()
        .skip_while(|s| *s == pb::PackageStatus::Starting)
        .collect();
    assert_eq!(
        after_start,
        [Running, Failing, Running],
        "registry saw {seen:?}"
    );
    wait_book(&a1, "agent-1 resumed, routing to itself", |b| {
        !b.stale && chosen_is(b, Some("agent-1"))
    })
    .await?;

    a1.shutdown().await;
    watcher.abort();
    backend.kill().await;
    manager.shutdown().await?;
    Ok(())
}
