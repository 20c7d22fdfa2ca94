//! The status page's HTTP endpoints on a live manager: the page and its assets are served
//! from the binary, `/api/status` is the model, `/api/events` streams it as server-sent
//! events that follow a write, and the admin endpoints refuse another origin or a body that is
//! not JSON, preview without writing, and write through the same path as the command line.

use tests::inproc as common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{config, connect, CCM, TREE, WAIT};
use proto::v1 as pb;
use proto::v1::agent_registry_client::AgentRegistryClient;
use registry_manager::RunningManager;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A manager with its HTTP port and an agent-1 session with a command-control-manager.
async fn manager(dir: &tempfile::TempDir) -> Result<(RunningManager, SocketAddr)> {
    let m = registry_manager::start(registry_manager::ServeConfig {
        http_listen: Some("127.0.0.1:0".parse()?),
        ..config(dir, Duration::from_secs(30), Some(TREE))
    })
    .await?;
    let http = m.http_addr().context("an HTTP port")?;
    let mut agent = AgentRegistryClient::new(connect(m.local_addr()).await?);
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
    Ok((m, http))
}

/// One HTTP/1.1 request with `headers` and `body`: (status, body).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8(buf)?)
    };
    let text = tokio::time::timeout(WAIT, exchange)
        .await
        .context("timed out")??;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head.split_whitespace().nth(1).context("status")?.parse()?;
    Ok((status, body.to_owned()))
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn drain_body(host: &str) -> String {
    format!(r#"{{"action": "drain", "host": "{host}", "type": "{CCM}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_model_are_served_from_the_binary() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_m, http) = manager(&dir).await?;
    let (status, page) = tests::tooling::http_get(http, "/", WAIT).await?;
    assert_eq!(status, 200);
    assert!(
        page.contains("/assets/app.js") && !page.contains("https://"),
        "{page}"
    );
    let (status, js) = tests::tooling::http_get(http, "/assets/app.js", WAIT).await?;
    assert_eq!(status, 200);
    assert!(js.contains("EventSource"), "the script follows /api/events");
    let (status, body) = tests::tooling::http_get(http, "/api/status", WAIT).await?;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["type"], CCM);
    assert_eq!(v["admin"], true, "a loopback peer may use the buttons");
    assert_eq!(v["group"]["members"][0]["state"], "Stand Alone");
    let text = body.to_string();
    for host in ["fm", "agent-1", "agent-2", "agent-3", "agent-4", "s2-host"] {
        assert!(
            text.contains(&format!("\"name\":\"{host}\"")),
            "{host} missing: {text}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_preview_without_writing_and_refuse_other_origins() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (m, http) = manager(&dir).await?;
    let before = m.revision().await;

    let (status, body) = request(
        http,
        "POST",
        "/api/admin/preview",
        &[JSON],
        &drain_body("agent-1"),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    let moves = v["moves"].as_array().context("moves")?;
    // agent-1's manager is the only one: every host loses it.
    assert!(
        moves
            .iter()
            .any(|mv| mv["host"] == "agent-2" && mv["from"] == "agent-1" && mv["to"].is_null()),
        "{body}"
    );
    assert_eq!(m.revision().await, before, "a preview writes nothing");

    let (status, body) = request(
        http,
        "POST",
        "/api/admin/package",
        &[JSON, ("Origin", "http://elsewhere.example")],
        &drain_body("agent-1"),
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    let (status, _) = request(
        http,
        "POST",
        "/api/admin/package",
        &[("Content-Type", "text/plain")],
        &drain_body("agent-1"),
    )
    .await?;
    assert_eq!(status, 415, "a body that is not JSON is refused");
    assert_eq!(m.revision().await, before, "nothing was written");

    let (status, body) = request(
        http,
        "POST",
        "/api/admin/preview",
        &[JSON],
        &drain_body("agent-2"),
    )
    .await?;
    assert_eq!(status, 404, "agent-2 runs no such package: {body}");

    let origin = format!("http://{http}");
    let (status, body) = request(
        http,
        "POST",
        "/api/admin/package",
        &[JSON, ("Origin", &origin)],
        &drain_body("agent-1"),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["revision"].as_u64(), Some(m.revision().await));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_the_model_again_after_a_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_m, http) = manager(&dir).await?;
    let mut s = TcpStream::connect(http).await?;
    s.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes())
        .await?;
    let mut lines = BufReader::new(s).lines();
    let mut next_status = async || -> Result<Value> {
        loop {
            let line = lines.next_line().await?.context("the stream ended")?;
            if let Some(data) = line.strip_prefix("data: ") {
                return Ok(serde_json::from_str(data)?);
            }
        }
    };
    let first = tokio::time::timeout(WAIT, next_status()).await??;
    let pkg = |v: &Value| v["tree"]["subdomains"][0]["hosts"][0]["packages"][0]["status"].clone();
    assert_eq!(pkg(&first), "running", "{first}");
    let (status, body) = request(
        http,
        "POST",
        "/api/admin/package",
        &[JSON],
        &drain_body("agent-1"),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let next = tokio::time::timeout(WAIT, next_status()).await??;
    assert_eq!(pkg(&next), "draining", "{next}");
    assert!(next["revision"].as_u64() > first["revision"].as_u64());
    Ok(())
}

/// An address of this machine that is not loopback (the one outgoing traffic would use), if any.
fn own_non_loopback_ip() -> Option<std::net::IpAddr> {
    // A UDP "connect" sends nothing: it only picks the route and so the local address.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("203.0.113.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_loopback_gets_a_read_only_page() -> Result<()> {
    let Some(ip) = own_non_loopback_ip() else {
        eprintln!("no non-loopback address on this machine: nothing to check");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let m = registry_manager::start(registry_manager::ServeConfig {
        http_listen: Some("0.0.0.0:0".parse()?),
        ..config(&dir, Duration::from_secs(30), Some(TREE))
    })
    .await?;
    let port = m.http_addr().context("an HTTP port")?.port();
    let remote = SocketAddr::new(ip, port);
    let (status, body) = tests::tooling::http_get(remote, "/api/status", WAIT).await?;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!(v["admin"], false, "from {ip} the page is read-only");
    let before = m.revision().await;
    let (status, body) = request(
        remote,
        "POST",
        "/api/admin/failover",
        &[JSON],
        r#"{"to": ""}"#,
    )
    .await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("loopback"), "{body}");
    assert_eq!(m.revision().await, before);
    Ok(())
}
