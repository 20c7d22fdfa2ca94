//! The agent's HTTP side port against a real in-process manager: `/metrics` in the Prometheus
//! text format (every family with its help line; the chosen manager, route changes, forwarded
//! connections, failed probes and the failover time moving when the chosen manager stops
//! answering), `/healthz`, several agents with their own ports and numbers in one process, and
//! a clear error when the port cannot be bound.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use registry_agent::{start, AgentConfig, AgentError, RunningAgent};
use registry_manager::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

const WAIT: Duration = Duration::from_secs(10);
const CCM: &str = "command-control-manager";

/// agent-3 and agent-4 share a domain; agent-1 is in the parent domain.
const TREE: &str = "\
version: 1
routing: { revert_after: 1s }
domain: framework
hosts: [fm]
subdomains:
  - domain: subdomain-1
    hosts: [agent-1]
    subdomains:
      - domain: subdomain-1a
        hosts: [agent-3, agent-4]
";

const FAMILIES: &[&str] = &[
    "fleet_agent_registry_revision",
    "fleet_agent_registry_stale",
    "fleet_agent_route_changes_total",
    "fleet_agent_chosen",
    "fleet_agent_forward_connections_total",
    "fleet_agent_failover_seconds",
    "fleet_agent_probe_failures_total",
];

/// A TCP echo server standing in for a manager package; `kill` closes it.
struct Echo {
    addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Echo {
    async fn start() -> Result<Echo> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
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

    async fn kill(mut self) {
        self.tasks.shutdown().await;
    }
}

/// An agent with an HTTP port on a free port; `package`: (published endpoint, checked address).
fn agent_config(
    host: &str,
    manager: SocketAddr,
    dir: &Path,
    package: Option<(SocketAddr, SocketAddr)>,
    forward: bool,
) -> Result<AgentConfig> {
    let mut y = format!(
        "host: {host}\nmanagers: [\"{manager}\"]\ndata_dir: {}\nlisten: 127.0.0.1:0\nhttp_listen: 127.0.0.1:0\nhealth: {{ interval: 100ms, timeout: 200ms, fall: 2, rise: 2 }}\n",
        dir.join(host).display()
    );
    if let Some((endpoint, check)) = package {
        y.push_str(&format!(
            "packages:\n  - type: {CCM}\n    endpoint: \"{endpoint}\"\n    check: {{ tcp: \"{check}\" }}\n    interval: 50ms\n"
        ));
    }
    if forward {
        y.push_str(&format!(
            "forward:\n  - type: {CCM}\n    listen: 127.0.0.1:0\n"
        ));
    }
    AgentConfig::from_yaml(&format!("{host}.yaml"), &y).map_err(|e| anyhow!("{e}"))
}

/// A plain HTTP/1.1 GET over a TCP connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    tests::tooling::http_get(addr, path, WAIT).await
}

async fn scrape(agent: &RunningAgent) -> Result<String> {
    let addr = agent.http_addr().context("the agent has an HTTP port")?;
    let (status, body) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    Ok(body)
}

/// The value of the sample written exactly as given (name and labels as rendered).
fn value(text: &str, series: &str) -> Option<f64> {
    tests::tooling::metric_value(text, series)
}

fn chosen_series(manager: &str, tier: &str) -> String {
    format!("fleet_agent_chosen{{manager=\"{manager}\",tier=\"{tier}\",type=\"{CCM}\"}}")
}

fn forwarded_series(result: &str) -> String {
    format!("fleet_agent_forward_connections_total{{result=\"{result}\",type=\"{CCM}\"}}")
}

/// Scrapes until `pred` holds.
async fn wait_scrape(
    agent: &RunningAgent,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(agent).await?;
        if pred(&text) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn round_trip(addr: SocketAddr, msg: &[u8]) -> Result<()> {
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
async fn metrics_follow_route_changes_forwarding_probes_and_failover() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = registry_manager::start(ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("m"),
        topology: Some(("tree.yaml".into(), TREE.into())),
        session_ttl: Duration::from_secs(1),
        group: None,
        http_listen: None,
        security: Default::default(),
    })
    .await
    .map_err(|e| anyhow!("manager did not start: {e}"))?;
    let maddr = manager.local_addr();
    // agent-3 publishes an endpoint that will die while its own check stays green: only
    // agent-4's probes (and forwarded connections) see it go.
    let (endpoint_3, check_3, endpoint_1) = (
        Echo::start().await?,
        Echo::start().await?,
        Echo::start().await?,
    );
    let a1 = start(agent_config(
        "agent-1",
        maddr,
        dir.path(),
        Some((endpoint_1.addr, endpoint_1.addr)),
        false,
    )?)
    .await?;
    let a3 = start(agent_config(
        "agent-3",
        maddr,
        dir.path(),
        Some((endpoint_3.addr, check_3.addr)),
        false,
    )?)
    .await?;
    let a4 = start(agent_config("agent-4", maddr, dir.path(), None, true)?).await?;
    let ports: Vec<_> = [&a1, &a3, &a4].iter().map(|a| a.http_addr()).collect();
    assert!(ports.iter().all(Option::is_some), "{ports:?}");
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);

    let (status, body) = get(a4.http_addr().context("http")?, "/healthz").await?;
    assert_eq!((status, body.trim()), (200, "ok"));

    // agent-4 routes to agent-3 (same domain) once both managers registered.
    let text = wait_scrape(
        &a4,
        "agent-4 to choose agent-3 with agent-1 next in line",
        |t| {
            value(t, &chosen_series("agent-3", "domain")) == Some(1.0)
                && value(t, "fleet_agent_registry_stale") == Some(0.0)
        },
    )
    .await?;
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no help line:\n{text}"
        );
    }
    assert_eq!(
        value(&text, "fleet_agent_registry_revision"),
        Some(a4.revision() as f64)
    );
    let changes = |t: &str| {
        value(
            t,
            &format!("fleet_agent_route_changes_total{{type=\"{CCM}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let changes_before = changes(&text);
    assert!(changes_before >= 1.0, "the first choice counts: {text}");
    assert_eq!(value(&text, &forwarded_series("ok")), Some(0.0));
    assert_eq!(
        value(&text, "fleet_agent_failover_seconds_count"),
        Some(0.0)
    );

    // A connection through the forward port reaches agent-3's endpoint.
    let forward = a4.forward_addr(CCM).context("forward port")?;
    round_trip(forward, b"first").await?;
    let text = wait_scrape(&a4, "one forwarded connection", |t| {
        value(t, &forwarded_series("ok")) == Some(1.0)
    })
    .await?;
    assert_eq!(value(&text, &forwarded_series("no_manager")), Some(0.0));

    // agent-3's endpoint dies. The next connection is relayed to agent-1 (a failover, unless
    // the probes already moved the route) and the route moves to agent-1 at once.
    endpoint_3.kill().await;
    round_trip(forward, b"second").await?;
    let text = wait_scrape(&a4, "agent-4 to move to agent-1", |t| {
        value(t, &chosen_series("agent-1", "ancestor")) == Some(1.0)
    })
    .await?;
    assert!(
        !text.contains("manager=\"agent-3\""),
        "the old choice's series is gone:\n{text}"
    );
    assert!(changes(&text) > changes_before, "{text}");
    assert_eq!(
        value(&text, "fleet_agent_failover_seconds_count"),
        Some(1.0),
        "{text}"
    );
    let relayed = value(&text, &forwarded_series("ok")).unwrap_or(0.0)
        + value(&text, &forwarded_series("failover")).unwrap_or(0.0);
    assert_eq!(relayed, 2.0, "{text}");
    // agent-3 is held down and still probed (so it can rise again): the probes fail.
    wait_scrape(&a4, "failed probes of agent-3", |t| {
        value(t, "fleet_agent_probe_failures_total").unwrap_or(0.0) >= 1.0
    })
    .await?;

    // agent-1 routes to itself all along and forwarded nothing: its own numbers.
    let text_1 = scrape(&a1).await?;
    assert_eq!(
        value(&text_1, &chosen_series("agent-1", "self")),
        Some(1.0),
        "{text_1}"
    );
    assert_eq!(
        value(&text_1, "fleet_agent_failover_seconds_count"),
        Some(0.0)
    );
    assert!(
        !text_1.contains("fleet_agent_forward_connections_total{"),
        "{text_1}"
    );

    for a in [a1, a3, a4] {
        a.shutdown().await;
    }
    check_3.kill().await;
    endpoint_1.kill().await;
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_http_port_in_use_is_a_start_error_naming_the_address_and_the_key() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let dir = tempfile::tempdir()?;
    let y = format!(
        "host: agent-1\nmanagers: [\"127.0.0.1:1\"]\ndata_dir: {}\nlisten: 127.0.0.1:0\nhttp_listen: {addr}\n",
        dir.path().join("a").display()
    );
    let config = AgentConfig::from_yaml("agent-1.yaml", &y).map_err(|e| anyhow!("{e}"))?;
    let err = start(config)
        .await
        .err()
        .context("an agent started on an HTTP port in use")?;
    assert!(matches!(err, AgentError::Bind { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("http_listen"),
        "{text}"
    );
    Ok(())
}
