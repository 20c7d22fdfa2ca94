//! Crash test: the real `registry-manager serve` process is killed with SIGKILL in the middle
//! of a stream of acknowledged writes from concurrent clients; after a restart on the same data
//! directory every acknowledged write is found at its revision, and numbering continues.

use tests::inproc as common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::*;
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::agent_registry_client::AgentRegistryClient;
use tokio::time::Instant;

/// A manager process, killed and reaped when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Starts `registry-manager serve` and waits until its health service answers SERVING;
/// retries on another port if the chosen one was taken meanwhile.
async fn spawn_manager(dir: &Path, topology: &Path) -> Result<Proc> {
    for _attempt in 0..5 {
        let addr = free_port()?;
        let log = std::fs::File::create(dir.join(format!("manager-{}.log", addr.port())))?;
        let child = Command::new(env!("CARGO_BIN_EXE_registry-manager"))
            .arg("serve")
            .args(["--listen", &addr.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--topology")
            .arg(topology)
            .args(["--session-ttl", "30s"])
            .args(["--http-listen", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning registry-manager serve")?;
        let mut proc = Proc { child, addr };
        let deadline = Instant::now() + WAIT;
        loop {
            if proc.child.try_wait()?.is_some() {
                break; // exited (port taken?): try another port
            }
            if let Ok(channel) = connect(addr).await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let req = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                if health.check(req).await.is_ok() {
                    return Ok(proc);
                }
            }
            if Instant::now() > deadline {
                bail!("registry-manager did not become healthy on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = proc.child.wait();
    }
    bail!("registry-manager did not start after 5 attempts; see the manager-*.log files")
}

/// What an acknowledged write must have left at its revision.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Status {
        host: String,
        ty: String,
        status: pb::PackageStatus,
    },
    Topology {
        with_s2: bool,
    },
}

type Acks = Arc<Mutex<BTreeMap<u64, Expect>>>;

async fn action_writer(addr: SocketAddr, host: &'static str, ty: &'static str, acks: Acks) {
    let Ok(channel) = connect(addr).await else {
        return;
    };
    let mut admin = AdminClient::new(channel);
    let cycle = [
        (pb::PackageAction::Drain, pb::PackageStatus::Draining),
        (pb::PackageAction::Withdraw, pb::PackageStatus::Withdrawn),
        (pb::PackageAction::Restore, pb::PackageStatus::Running),
    ];
    for (action, status) in cycle.iter().cycle() {
        let req = pb::PackageActionRequest {
            host: host.into(),
            r#type: ty.into(),
            action: *action as i32,
        };
        match admin.package_action(req).await {
            Ok(resp) => {
                let expect = Expect::Status {
                    host: host.into(),
                    ty: ty.into(),
                    status: *status,
                };
                acks.lock()
                    .unwrap()
                    .insert(resp.into_inner().revision, expect);
            }
            Err(_) => return, // the manager is gone
        }
    }
}

async fn topology_writer(addr: SocketAddr, acks: Acks) {
    let Ok(channel) = connect(addr).await else {
        return;
    };
    let mut admin = AdminClient::new(channel);
    for with_s2 in [false, true].iter().cycle() {
        let yaml = if *with_s2 { TREE } else { TREE_CHANGED };
        let req = pb::TopologyRequest {
            yaml: yaml.into(),
            file_name: "fleet.yaml".into(),
        };
        match admin.apply_topology(req).await {
            Ok(resp) => {
                acks.lock().unwrap().insert(
                    resp.into_inner().revision,
                    Expect::Topology { with_s2: *with_s2 },
                );
            }
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_write() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let topology = dir.path().join("fleet.yaml");
    std::fs::write(&topology, TREE)?;
    let mut first = spawn_manager(dir.path(), &topology).await?;

    // Register packages, then write from four concurrent clients.
    let mut agent = AgentRegistryClient::new(connect(first.addr).await?);
    for host in ["fm", "agent-1", "agent-3"] {
        let packages = [CCM, "event-manager"]
            .iter()
            .map(|t| pb::Package {
                r#type: (*t).into(),
                endpoint: "127.0.0.1:7001".into(),
                status: 2,
            })
            .collect();
        agent
            .open_session(pb::OpenSessionRequest {
                host: host.into(),
                packages,
            })
            .await?;
    }
    let acks: Acks = Arc::default();
    let tasks = vec![
        tokio::spawn(action_writer(first.addr, "fm", CCM, acks.clone())),
        tokio::spawn(action_writer(first.addr, "agent-1", CCM, acks.clone())),
        tokio::spawn(action_writer(
            first.addr,
            "agent-3",
            "event-manager",
            acks.clone(),
        )),
        tokio::spawn(topology_writer(first.addr, acks.clone())),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.lock().unwrap().len() < 300 {
        if Instant::now() > deadline {
            bail!(
                "only {} writes acknowledged within 60s",
                acks.lock().unwrap().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.child.kill()?; // SIGKILL, while writes are in flight
    first.child.wait()?;
    for t in tasks {
        t.await?;
    }
    let acked = acks.lock().unwrap().clone();
    let (&lowest, _) = acked.first_key_value().expect("acks");
    let (&highest, _) = acked.last_key_value().expect("acks");

    let second = spawn_manager(dir.path(), &topology).await?;
    let channel = connect(second.addr).await?;
    let mut agent = AgentRegistryClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);
    let head = admin
        .show_topology(pb::ShowTopologyRequest { stale: false })
        .await?
        .into_inner()
        .revision;
    assert!(
        head >= highest,
        "restarted at revision {head}, below the acknowledged {highest}"
    );

    // Every delta from the first acknowledged revision on, contiguous, from the durable log.
    let req = pb::WatchRequest {
        from_revision: lowest - 1,
        host: String::new(),
        history: String::new(),
        status_changes: false,
    };
    let mut w = Watcher::from(agent.watch(req).await?.into_inner());
    let mut deltas = BTreeMap::new();
    for rev in lowest..=head {
        let d = w.next().await?.delta()?;
        assert_eq!(d.revision, rev, "revisions contiguous after the crash");
        deltas.insert(rev, d);
    }
    for (rev, expect) in &acked {
        let d = &deltas[rev];
        match expect {
            Expect::Status {
                host: h,
                ty,
                status,
            } => {
                let entry = host(&d.upserts, h).unwrap_or_else(|| panic!("revision {rev}: {d:?}"));
                assert_eq!(
                    status_of(entry, ty),
                    Some(*status),
                    "acknowledged write at {rev} lost: {d:?}"
                );
            }
            Expect::Topology { with_s2 } => {
                let yaml = d
                    .topology_yaml
                    .as_deref()
                    .unwrap_or_else(|| panic!("revision {rev}: {d:?}"));
                assert_eq!(yaml.contains("s2-host"), *with_s2, "topology at {rev}");
            }
        }
    }

    // Numbering continues from the recovered head.
    let req = pb::PackageActionRequest {
        host: "fm".into(),
        r#type: CCM.into(),
        action: pb::PackageAction::Drain as i32,
    };
    let mut next = admin
        .package_action(req.clone())
        .await?
        .into_inner()
        .revision;
    if next == head {
        // fm/ccm was already draining: the action changed nothing; force a change.
        let restore = pb::PackageActionRequest {
            action: pb::PackageAction::Restore as i32,
            ..req
        };
        next = admin.package_action(restore).await?.into_inner().revision;
    }
    assert_eq!(next, head + 1);

    // A graceful stop (SIGTERM) exits with status 0.
    let mut second = second;
    let status = Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()?;
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(code) = second.child.try_wait()? {
            assert!(code.success(), "graceful shutdown exit status {code}");
            break;
        }
        if Instant::now() > deadline {
            bail!("manager did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
