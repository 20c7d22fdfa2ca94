//! The command-line language of `registry-agent`, on the real binary against an in-process
//! manager and agent: exit codes (0 done, 1 failed, 2 bad command line, 3 no eligible
//! manager), errors as one line or, with `--json`, one JSON object on stderr, `--agent` with or
//! without `http://`, and the shared form of a route explanation.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use anyhow::{anyhow, Result};
use registry_agent::AgentConfig;
use serde_json::Value;

const CCM: &str = "command-control-manager";
const TREE: &str = "\
version: 1
domain: framework
hosts: [fm]
subdomains:
  - domain: subdomain-1
    hosts: [agent-1, agent-2]
";

async fn agent_bin(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_registry-agent"))
            .args(&args)
            .output()
            .expect("run registry-agent")
    })
    .await
    .expect("the command ran")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// stderr as the one JSON object of an error.
fn json_error(out: &Output) -> Value {
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let v: Value = serde_json::from_str(&err).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert!(v["error"].is_string(), "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_exits_by_the_answer_and_refuses_a_type_no_host_runs() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let manager = registry_manager::start(registry_manager::ServeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.path().join("m"),
        topology: Some(("tree.yaml".into(), TREE.into())),
        // No HTTP port: tests run side by side.
        http_listen: None,
        ..registry_manager::ServeConfig::default()
    })
    .await?;
    // agent-1 runs a package nobody listens for: its check is refused on its own host, so the
    // package is `stopped` and no manager of the type is eligible.
    let yaml = format!(
        "host: agent-1\nmanagers: [\"{}\"]\ndata_dir: {}\nlisten: 127.0.0.1:0\nhttp_listen: none\npackages:\n  - type: {CCM}\n    endpoint: \"127.0.0.1:1\"\n    check: {{ tcp: \"127.0.0.1:1\" }}\n    interval: 50ms\n",
        manager.local_addr(),
        dir.path().join("a1").display()
    );
    let config = AgentConfig::from_yaml("agent-1.yaml", &yaml).map_err(|e| anyhow!("{e}"))?;
    let agent = registry_agent::start(config).await?;
    let mut book = agent.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let known = book
                .borrow_and_update()
                .get(CCM)
                .is_some_and(|r| !r.full.candidates.is_empty());
            if known {
                return;
            }
            if book.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .map_err(|_| anyhow!("the agent never saw its own package in its copy"))?;
    let addr = format!("http://{}", agent.local_addr());

    // Known type, no eligible manager: the answer, exit 3.
    let out = agent_bin(&["resolve", CCM, "--agent", &addr]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.starts_with(&format!(
            "agent-1 -> {CCM}: no eligible manager\nroute: (empty)\nrevision: "
        )),
        "{t}"
    );
    assert!(
        t.contains("\ncandidates:\n  agent-1  subdomain-1  self"),
        "{t}"
    );
    assert!(t.contains("skipped: package status is stopped"), "{t}");
    let out = agent_bin(&["resolve", CCM, "--agent", &addr, "--json"]).await;
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "host",
            "type",
            "chosen",
            "endpoint",
            "route",
            "candidates",
            "revision",
            "stale"
        ]
    );
    assert!(v["chosen"].is_null(), "{v}");
    assert_eq!(v["candidates"][0]["endpoint"], "127.0.0.1:1");

    // A type no host runs: an error, exit 1, nothing on stdout.
    let out = agent_bin(&["resolve", "event-manager", "--agent", &addr]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("registry-agent: no host runs type \"event-manager\" in the registry copy of the agent at "),
        "{err}"
    );
    let out = agent_bin(&["resolve", "event-manager", "--agent", &addr, "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let v = json_error(&out);
    assert!(
        v["error"].as_str().unwrap().contains("no host runs type"),
        "{v}"
    );

    // Addresses with and without http://.
    let bare = agent.local_addr().to_string();
    let out = agent_bin(&["routes", "--agent", &bare]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("{CCM} -> none")));
    let out = agent_bin(&["routes", "--agent", &addr, "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    agent.shutdown().await;
    manager.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn failures_are_exit_1_and_a_bad_command_line_exit_2_in_json_too() -> Result<()> {
    // An agent that cannot be reached.
    let out = agent_bin(&["resolve", CCM, "--agent", "http://127.0.0.1:1"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("registry-agent: cannot reach the agent at 127.0.0.1:1"),
        "{err}"
    );
    let out = agent_bin(&["routes", "--agent", "127.0.0.1:1", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let v = json_error(&out);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot reach the agent"),
        "{v}"
    );

    // An invalid configuration file: every located error, then one line; exit 1.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "host: fm\nmanagers: [\"127.0.0.1:7400\"]\nlisen: x\n")?;
    let bad_s = bad.display().to_string();
    let out = agent_bin(&["run", "--config", &bad_s]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!("{bad_s}:3:1: unknown field `lisen`")),
        "{err}"
    );
    assert_eq!(
        err.lines().last().unwrap(),
        format!("registry-agent: {bad_s} has 1 error(s); the agent did not start")
    );

    // A bad command line.
    let out = agent_bin(&["resolve"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = agent_bin(&["resolve", "--json"]).await;
    assert_eq!(out.status.code(), Some(2));
    let v = json_error(&out);
    assert!(v["error"].as_str().unwrap().contains("<TYPE>"), "{v}");
    let out = agent_bin(&["routes", "--agent"]).await;
    assert_eq!(out.status.code(), Some(2));

    // Completions and man pages.
    let out = agent_bin(&["completions", "bash"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("resolve"));
    let out = agent_bin(&["man"]).await;
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(
        page.contains("registry\\-agent") && page.contains("resolve"),
        "{page}"
    );
    let out = agent_bin(&[
        "man",
        "--dir",
        &dir.path().join("man").display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(dir.path().join("man/registry-agent-resolve.1").exists());
    Ok(())
}
