//! The manager's HTTP side port: `/metrics` in the Prometheus text format (every family with
//! its help line, values that move with writes and expiries, numbers kept per manager when
//! several run in one process), `/healthz` (200 serving, 503 with the reason when cut off from
//! the group's majority), and a clear error when the port cannot be bound.

use tests::inproc as common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::{config, connect, CCM, TREE, WAIT};
use proto::v1 as pb;
use proto::v1::agent_registry_client::AgentRegistryClient;
use registry_manager::{GroupConfig, RunningManager, ServeConfig, ServeError};
use tokio::time::Instant;
use topology::HostName;

const FAMILIES: &[&str] = &[
    "fleet_registry_revision",
    "fleet_registry_sessions",
    "fleet_registry_watch_streams",
    "fleet_registry_proposals_waiting",
    "fleet_registry_writes_total",
    "fleet_registry_session_expiries_total",
    "fleet_registry_ha_is_leader",
    "fleet_registry_ha_term",
    "fleet_registry_ha_leader_changes_total",
];

/// A plain HTTP/1.1 GET over a TCP connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    tests::tooling::http_get(addr, path, WAIT).await
}

/// The value of the sample written exactly as given (name and labels as rendered).
fn value(text: &str, name: &str) -> Option<f64> {
    tests::tooling::metric_value(text, name)
}

async fn scrape(addr: SocketAddr) -> Result<String> {
    let (status, body) = get(addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
    Ok(body)
}

async fn wait_value(addr: SocketAddr, name: &str, want: f64) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(addr).await?;
        if value(&text, name) == Some(want) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("{name} did not reach {want}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_http(dir: &tempfile::TempDir, ttl: Duration) -> ServeConfig {
    ServeConfig {
        http_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..config(dir, ttl, Some(TREE))
    }
}

fn http_addr(m: &RunningManager) -> Result<SocketAddr> {
    m.http_addr().context("the manager has an HTTP port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_writes_and_expiries_per_manager_and_healthz_answers() -> Result<()> {
    let ttl = Duration::from_millis(400);
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = registry_manager::start(with_http(&dir_a, ttl)).await?;
    let b = registry_manager::start(with_http(&dir_b, ttl)).await?;
    let (http_a, http_b) = (http_addr(&a)?, http_addr(&b)?);
    assert_ne!(http_a, http_b);

    let (status, body) = get(http_a, "/healthz").await?;
    assert_eq!((status, body.trim()), (200, "ok"));

    // Each applied its start topology and named its history: two writes each (the second
    // made by the new leader on its own, so waited for).
    wait_value(http_b, "fleet_registry_writes_total", 2.0).await?;
    wait_value(http_a, "fleet_registry_writes_total", 2.0).await?;
    let text = wait_value(http_a, "fleet_registry_revision", a.revision().await as f64).await?;
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no help line:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} has no type line:\n{text}"
        );
    }
    assert_eq!(value(&text, "fleet_registry_ha_is_leader"), Some(1.0));
    assert!(
        value(&text, "fleet_registry_ha_term").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, "fleet_registry_ha_leader_changes_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(value(&text, "fleet_registry_sessions"), Some(0.0));
    let writes_a = value(&text, "fleet_registry_writes_total").context("writes")?;

    // A write through A: an agent opens a session (then stays silent, so it lapses).
    let mut agent = AgentRegistryClient::new(connect(a.local_addr()).await?);
    agent
        .open_session(pb::OpenSessionRequest {
            host: "agent-1".into(),
            packages: vec![pb::Package {
                r#type: CCM.into(),
                endpoint: "127.0.0.1:7001".into(),
                status: pb::PackageStatus::Running as i32,
            }],
        })
        .await?;
    let text = scrape(http_a).await?;
    assert_eq!(
        value(&text, "fleet_registry_writes_total"),
        Some(writes_a + 1.0)
    );
    assert_eq!(value(&text, "fleet_registry_sessions"), Some(1.0));
    assert_eq!(
        value(&text, "fleet_registry_revision"),
        Some(a.revision().await as f64)
    );

    // No heartbeat: the session lapses, counted by the leader that lapsed it.
    wait_value(http_a, "fleet_registry_session_expiries_total", 1.0).await?;
    // Counted when the leader decides; the session leaves once the lapse is applied.
    wait_value(http_a, "fleet_registry_sessions", 0.0).await?;

    // B counted none of it: every manager in the process keeps its own numbers.
    let text_b = scrape(http_b).await?;
    assert_eq!(value(&text_b, "fleet_registry_writes_total"), Some(2.0));
    assert_eq!(
        value(&text_b, "fleet_registry_session_expiries_total"),
        Some(0.0)
    );

    // The HTTP port stops with the manager.
    a.shutdown().await?;
    assert!(
        get(http_a, "/healthz").await.is_err(),
        "the HTTP port is closed after shutdown"
    );
    b.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_http_port_in_use_is_a_start_error_naming_the_address_and_the_key() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let dir = tempfile::tempdir()?;
    let config = ServeConfig {
        http_listen: Some(addr),
        ..config(&dir, Duration::from_secs(1), Some(TREE))
    };
    let err = registry_manager::start(config)
        .await
        .err()
        .context("a manager started on an HTTP port in use")?;
    assert!(matches!(err, ServeError::HttpBind { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(
        text.contains("http_listen") && text.contains("--http-listen"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_with_the_reason_while_cut_off_from_the_majority() -> Result<()> {
    // A member of a group of three whose two peers never answer: it never hears a leader.
    let own = std::net::TcpListener::bind("127.0.0.1:0")?;
    let own_addr = own.local_addr()?;
    drop(own);
    let name = |n: &str| HostName::new(n).expect("name");
    let group = GroupConfig {
        name: name("m1"),
        members: BTreeMap::from([
            (name("m1"), own_addr.to_string()),
            (name("m2"), "127.0.0.1:9".to_owned()),
            (name("m3"), "127.0.0.1:11".to_owned()),
        ]),
        learners: BTreeMap::new(),
        preferred: None,
        dial: BTreeMap::new(),
        hook: None,
    };
    let dir = tempfile::tempdir()?;
    let config = ServeConfig {
        listen: own_addr,
        group: Some(group),
        ..with_http(&dir, Duration::from_secs(1))
    };
    let m = registry_manager::start(config).await?;
    let http = http_addr(&m)?;
    let deadline = Instant::now() + WAIT;
    let (status, body) = loop {
        let (status, body) = get(http, "/healthz").await?;
        if status == 503 || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cut off from the group's majority"), "{body}");
    assert!(body.contains("m1"), "names the member: {body}");
    let text = scrape(http).await?;
    assert_eq!(value(&text, "fleet_registry_ha_is_leader"), Some(0.0));
    m.shutdown().await?;
    Ok(())
}
