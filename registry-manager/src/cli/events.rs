//! `registry-manager events`: every registry change as it happens, one line each (`--json`:
//! JSON lines), from a manager's watch stream (the one agents use, as a tool: no host).
//!
//! It survives a restart or a failover: when the stream ends or breaks it connects again, to
//! the next `--manager` given (round robin), and resumes from the last revision it printed
//! within the same history, so nothing is missed or printed twice; when the manager can only
//! send a snapshot (another history, or too far behind), the differences are printed as one
//! line marked as a resync. Ctrl-C or SIGTERM ends it with exit 0.

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use proto::v1 as pb;
use proto::watch_parts::Reassembler;
use registry_manager::events::{json_line, text_line, EventCopy};
use tonic::transport::Endpoint;

use super::live::host_port;

/// Pause between two connection attempts.
const RETRY: Duration = Duration::from_millis(300);

/// Runs until Ctrl-C / SIGTERM.
pub async fn events(addrs: &[String], json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!addrs.is_empty(), "no --manager address given");
    for a in addrs {
        host_port(a)?;
    }
    tokio::select! {
        r = follow(addrs, json) => r,
        _ = stop_signal() => Ok(ExitCode::SUCCESS),
    }
}

async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn follow(addrs: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let mut copy = EventCopy::default();
    let mut next = 0usize;
    // Whether the copy holds a registry yet: the first snapshot is the starting point, not a
    // change.
    let mut started = false;
    let mut warned = false;
    loop {
        let addr = &addrs[next % addrs.len()];
        next += 1;
        match watch_once(addr, &mut copy, &mut started, json).await {
            Ok(()) => {
                eprintln!("registry-manager events: the stream from {addr} ended; reconnecting");
                warned = false;
            }
            Err(e) => {
                if !warned {
                    eprintln!("registry-manager events: {e}; retrying");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One watch stream, until it ends (`Ok`) or fails.
async fn watch_once(
    addr: &str,
    copy: &mut EventCopy,
    started: &mut bool,
    json: bool,
) -> anyhow::Result<()> {
    let uri = format!("http://{}", host_port(addr)?);
    let channel = Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach a registry manager at {addr}: {e}"))?;
    let mut client = pb::agent_registry_client::AgentRegistryClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut stream = client
        .watch(pb::WatchRequest {
            from_revision: copy.revision,
            host: String::new(),
            history: copy.history.clone(),
            status_changes: false,
        })
        .await
        .map_err(|s| anyhow::anyhow!("watch refused by {addr}: {}", s.message()))?
        .into_inner();
    if !*started {
        eprintln!("registry-manager events: watching {addr}");
    } else {
        eprintln!(
            "registry-manager events: watching {addr} from revision {}",
            copy.revision
        );
    }
    let mut parts = Reassembler::default();
    while let Some(ev) = stream.next().await {
        let ev =
            ev.map_err(|s| anyhow::anyhow!("the stream from {addr} broke: {}", s.message()))?;
        let Some(ev) = parts.push(ev).map_err(|e| anyhow::anyhow!("{e}"))? else {
            continue;
        };
        if !ev.history.is_empty() {
            copy.history = ev.history.clone();
        }
        match ev.payload {
            Some(pb::watch_event::Payload::Snapshot(bytes)) => {
                let (revision, yaml, hosts) =
                    registry_manager::wire::decode_state(&bytes).map_err(anyhow::Error::msg)?;
                let changes = copy.replace(revision, yaml, hosts);
                if *started && !changes.is_empty() {
                    print_line(revision, &changes, true, json);
                }
                *started = true;
            }
            Some(pb::watch_event::Payload::Delta(bytes)) => {
                let delta =
                    registry_manager::wire::decode_delta(&bytes).map_err(anyhow::Error::msg)?;
                let revision = delta.revision.0;
                let changes = copy.apply_delta(&delta);
                if !changes.is_empty() {
                    print_line(revision, &changes, false, json);
                }
                *started = true;
            }
            None => {}
        }
    }
    Ok(())
}

fn print_line(
    revision: u64,
    changes: &[registry_manager::events::Change],
    resync: bool,
    json: bool,
) {
    if json {
        println!("{}", json_line(revision, changes, resync));
    } else if resync {
        println!("{} (resync)", text_line(revision, changes));
    } else {
        println!("{}", text_line(revision, changes));
    }
}
