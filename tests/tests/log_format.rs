//! `--log-format json` on both daemons: every log line on stderr is one JSON object with a
//! level and a message; the default stays text.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tests::fleet::{bin_path, free_port};

/// Starts `binary args`, reads stderr lines until `enough` of them are there (or it ends),
/// then kills and reaps it. Bounded: a reader thread and a deadline.
fn first_lines(binary: &str, args: &[String], enough: usize) -> anyhow::Result<Vec<String>> {
    let mut child = Command::new(bin_path(binary)?)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lines.len() < enough {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(lines)
}

fn assert_json_lines(lines: &[String]) {
    assert!(!lines.is_empty(), "no log line");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string(), "{l}");
        assert!(v["fields"]["message"].is_string(), "{l}");
    }
}

#[test]
fn the_manager_logs_json_lines_with_log_format_json() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let args: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{}", free_port()?),
        "--data-dir",
        &dir.path().join("data").display().to_string(),
        "--http-listen",
        "none",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_json_lines(&first_lines("registry-manager", &args, 2)?);
    Ok(())
}

#[test]
fn the_agent_logs_json_lines_with_log_format_json() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "host: agent-1\nmanagers: [\"127.0.0.1:{}\"]\ndata_dir: \"{}\"\nlisten: \"127.0.0.1:{}\"\nhttp_listen: none\n",
            free_port()?,
            dir.path().join("data").display(),
            free_port()?
        ),
    )?;
    let args: Vec<String> = [
        "run",
        "--config",
        &config.display().to_string(),
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_json_lines(&first_lines("registry-agent", &args, 2)?);
    Ok(())
}
