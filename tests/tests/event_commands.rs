//! The two event commands on real processes: `registry-manager events` prints every registry
//! change as it happens and resumes after the manager restarts; `registry-agent watch TYPE`
//! prints every route change of its agent and goes on after the agent restarts. Both end with
//! exit 0 on Ctrl-C (SIGINT). Every command is killed and reaped if a test fails.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tests::fleet::bin_path;
use tests::worked_example::{self, CCM};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, Mutex};

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Bound of every wait for a line.
const DEADLINE: Duration = Duration::from_secs(20);

/// A running event command with its stdout lines (JSON) on a channel.
struct Follower {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<Value>,
}

impl Follower {
    fn spawn(binary: &str, args: &[&str]) -> anyhow::Result<Follower> {
        let mut child = Command::new(bin_path(binary)?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        let tx_err = tx.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx_err.send(format!("stderr: {l}")).is_err() {
                    break;
                }
            }
        });
        Ok(Follower {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for a stderr line containing `text`.
    async fn wait_stderr(&mut self, text: &str) -> anyhow::Result<()> {
        let mut skipped = Vec::new();
        tokio::time::timeout(DEADLINE, async {
            while let Some(l) = self.lines.recv().await {
                if l.starts_with("stderr: ") && l.contains(text) {
                    return Ok(());
                }
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    self.seen.push(v);
                }
                skipped.push(l);
            }
            anyhow::bail!("the command ended")
        })
        .await
        .with_context(|| {
            format!("no stderr line with {text:?} within {DEADLINE:?}; saw {skipped:?}")
        })?
    }

    /// Waits for a stdout JSON line that `want` accepts; returns it.
    async fn wait_line(
        &mut self,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut skipped = Vec::new();
        let r = tokio::time::timeout(DEADLINE, async {
            while let Some(l) = self.lines.recv().await {
                if l.starts_with("stderr: ") {
                    skipped.push(l);
                    continue;
                }
                let v: Value =
                    serde_json::from_str(&l).with_context(|| format!("not a JSON line: {l:?}"))?;
                self.seen.push(v.clone());
                if want(&v) {
                    return Ok(v);
                }
                skipped.push(l);
            }
            anyhow::bail!("the command ended")
        })
        .await;
        match r {
            Ok(r) => r,
            Err(_) => anyhow::bail!("no line showing {what} within {DEADLINE:?}; saw {skipped:?}"),
        }
    }

    /// Ctrl-C: the command must end with exit 0.
    async fn interrupt(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("still running")? as i32;
        // SAFETY-free: libc::kill on our own child's pid.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .context("the command did not end on SIGINT")??;
        anyhow::ensure!(status.success(), "exit status on SIGINT: {status}");
        Ok(())
    }
}

fn status_change(v: &Value, host: &str, to: &str) -> bool {
    v["changes"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            c["kind"] == "status" && c["host"] == host && c["type"] == CCM && c["to"] == to
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_events_print_each_change_and_resume_after_a_manager_restart() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let mut fleet = worked_example::fleet("300ms").start().await?;
    let addr = fleet.manager_addr().to_string();
    // Every package registered first.
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), DEADLINE)
        .await?;
    fleet
        .wait_chosen("agent-2", CCM, Some("agent-1"), DEADLINE)
        .await?;
    let mut events = Follower::spawn(
        "registry-manager",
        &["events", "--manager", &addr, "--json"],
    )?;
    events.wait_stderr("watching").await?;

    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    let drained = events
        .wait_line("agent-3 draining", |v| {
            status_change(v, "agent-3", "draining")
        })
        .await?;
    assert!(drained.get("resync").is_none(), "{drained}");

    fleet.kill_manager();
    fleet.start_manager().await?;
    fleet.operator(&["package", "restore", "--host", "agent-3", "--type", CCM])?;
    events
        .wait_line("agent-3 running again", |v| {
            status_change(v, "agent-3", "running")
        })
        .await?;
    // Resumed, not restarted: revisions only grow, none printed twice.
    let revisions: Vec<u64> = events
        .seen
        .iter()
        .filter_map(|v| v["revision"].as_u64())
        .collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions printed out of order or twice: {revisions:?}"
    );
    events.interrupt().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_watch_prints_each_route_change_and_goes_on_after_an_agent_restart(
) -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = worked_example::fleet("300ms").start().await?;
    let api = fleet.agent("agent-4")?.api.to_string();
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), DEADLINE)
        .await?;
    let mut watch = Follower::spawn("registry-agent", &["watch", CCM, "--agent", &api, "--json"])?;
    watch
        .wait_line("agent-4's first route (agent-3)", |v| {
            v["chosen"] == "agent-3"
        })
        .await?;

    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    let moved = watch
        .wait_line("agent-4 moving to agent-1", |v| v["chosen"] == "agent-1")
        .await?;
    assert_eq!(moved["type"], CCM);
    assert!(
        !moved["reason"].as_str().unwrap_or_default().is_empty(),
        "{moved}"
    );

    fleet.agent("agent-4")?.proc.kill();
    fleet.restart_agent("agent-4").await?;
    fleet.operator(&["package", "restore", "--host", "agent-3", "--type", CCM])?;
    watch
        .wait_line("agent-4 back on agent-3 after its restart", |v| {
            v["chosen"] == "agent-3"
        })
        .await?;
    watch.interrupt().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_events_follow_a_group_failover_to_another_member() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = worked_example::fleet("300ms").managers(3).start().await?;
    let leader = fleet.wait_leader(None, DEADLINE).await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), DEADLINE)
        .await?;
    fleet
        .wait_chosen("agent-2", CCM, Some("agent-1"), DEADLINE)
        .await?;
    // The leader first: killing it is a failover.
    let mut order = vec![leader];
    order.extend((0..3).filter(|i| *i != leader));
    let addrs: Vec<String> = order
        .iter()
        .map(|i| fleet.member_addr(*i).to_string())
        .collect();
    let mut args = vec!["events", "--json"];
    for a in &addrs {
        args.push("--manager");
        args.push(a);
    }
    let mut events = Follower::spawn("registry-manager", &args)?;
    events.wait_stderr("watching").await?;
    fleet.operator(&["package", "drain", "--host", "agent-3", "--type", CCM])?;
    events
        .wait_line("agent-3 draining", |v| {
            status_change(v, "agent-3", "draining")
        })
        .await?;

    fleet.members()[leader].proc.kill();
    fleet.wait_leader(Some(leader), DEADLINE).await?;
    fleet.operator(&["package", "restore", "--host", "agent-3", "--type", CCM])?;
    let restored = events
        .wait_line("agent-3 running again, from another member", |v| {
            status_change(v, "agent-3", "running")
        })
        .await?;
    assert!(
        restored.get("resync").is_none(),
        "resumed with deltas: {restored}"
    );
    let revisions: Vec<u64> = events
        .seen
        .iter()
        .filter_map(|v| v["revision"].as_u64())
        .collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions printed out of order or twice: {revisions:?}"
    );
    events.interrupt().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_watch_without_a_type_follows_every_type_the_agent_knows() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut fleet = worked_example::fleet("300ms").start().await?;
    fleet
        .wait_chosen("agent-4", CCM, Some("agent-3"), DEADLINE)
        .await?;
    let api = fleet.agent("agent-4")?.api.to_string();
    let mut watch = Follower::spawn("registry-agent", &["watch", "--agent", &api, "--json"])?;
    watch
        .wait_line("the command-control-manager route", |v| {
            v["type"] == CCM && v["chosen"] == "agent-3"
        })
        .await?;
    watch
        .wait_line("the registry-manager route", |v| {
            v["type"] == "registry-manager"
        })
        .await?;
    fleet.operator(&["package", "withdraw", "--host", "agent-3", "--type", CCM])?;
    watch
        .wait_line("agent-4 moving to agent-1", |v| {
            v["type"] == CCM && v["chosen"] == "agent-1"
        })
        .await?;
    watch.interrupt().await
}
