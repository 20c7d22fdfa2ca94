//! The group's event script (`group.hook`): run on `failover`, `manual-switch`,
//! `member-offline`, `member-online`, `replication-error` and `replication-recovered`, with the
//! event name as its first argument and the members involved after it (also in
//! `FLEET_REGISTRY_EVENT` and `FLEET_REGISTRY_MEMBERS`).
//!
//! One script at a time, each bounded by [`HOOK_TIMEOUT`] (then killed), from a bounded queue:
//! a slow or stuck script never holds up the group; when the queue is full, events are dropped
//! with a warning.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest a hook may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Events waiting for the script.
const QUEUE: usize = 64;

/// A group event, for the hook and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEvent {
    /// A new leader after the old one was lost.
    Failover,
    /// Leadership moved by an operator's command.
    ManualSwitch,
    /// A member stopped answering the leader.
    MemberOffline,
    /// A member answers the leader again.
    MemberOnline,
    /// Replication to a member fails (it answers but cannot take the log).
    ReplicationError,
    /// Replication to that member works again.
    ReplicationRecovered,
}

impl GroupEvent {
    /// The name passed to the script.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupEvent::Failover => "failover",
            GroupEvent::ManualSwitch => "manual-switch",
            GroupEvent::MemberOffline => "member-offline",
            GroupEvent::MemberOnline => "member-online",
            GroupEvent::ReplicationError => "replication-error",
            GroupEvent::ReplicationRecovered => "replication-recovered",
        }
    }
}

/// Sends events to the hook runner (logs them even without a script).
#[derive(Debug, Clone)]
pub struct Hooks {
    tx: Option<mpsc::Sender<(GroupEvent, Vec<String>)>>,
}

impl Hooks {
    /// Starts the runner for `script` (none: events are only logged).
    pub fn start(script: Option<PathBuf>, cancel: CancellationToken) -> Hooks {
        let Some(script) = script else {
            return Hooks { tx: None };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(script, rx, cancel));
        Hooks { tx: Some(tx) }
    }

    /// Records an event: logged at once, and queued for the script.
    pub fn emit(&self, event: GroupEvent, members: Vec<String>) {
        tracing::info!(event = event.as_str(), members = %members.join(","), "group event");
        if let Some(tx) = &self.tx {
            if tx.try_send((event, members)).is_err() {
                tracing::warn!(
                    event = event.as_str(),
                    "group event dropped: the hook script is not keeping up"
                );
            }
        }
    }
}

async fn run(
    script: PathBuf,
    mut rx: mpsc::Receiver<(GroupEvent, Vec<String>)>,
    cancel: CancellationToken,
) {
    loop {
        let (event, members) = tokio::select! {
            _ = cancel.cancelled() => return,
            e = rx.recv() => match e { Some(e) => e, None => return },
        };
        let mut cmd = tokio::process::Command::new(&script);
        cmd.arg(event.as_str())
            .args(&members)
            .env("FLEET_REGISTRY_EVENT", event.as_str())
            .env("FLEET_REGISTRY_MEMBERS", members.join(","))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(script = %script.display(), error = %e, "cannot run the group hook");
                continue;
            }
        };
        match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => {}
            Ok(Ok(out)) => tracing::warn!(
                script = %script.display(),
                event = event.as_str(),
                status = %out.status,
                "group hook failed"
            ),
            Ok(Err(e)) => {
                tracing::warn!(script = %script.display(), error = %e, "group hook failed")
            }
            Err(_) => tracing::warn!(
                script = %script.display(),
                event = event.as_str(),
                "group hook ran longer than {HOOK_TIMEOUT:?} and was killed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_script_gets_the_event_and_members_as_arguments_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = dir.path().join("hook.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$1 $2 $3|$FLEET_REGISTRY_EVENT|$FLEET_REGISTRY_MEMBERS\" >> {}\n",
                out.display()
            ),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let cancel = CancellationToken::new();
        let hooks = Hooks::start(Some(script), cancel.clone());
        hooks.emit(GroupEvent::ManualSwitch, vec!["m1".into(), "m3".into()]);
        hooks.emit(GroupEvent::MemberOffline, vec!["m2".into()]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.lines().count() >= 2 || tokio::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        cancel.cancel();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "manual-switch m1 m3|manual-switch|m1,m3",
                "member-offline m2 |member-offline|m2"
            ],
            "one at a time, in order"
        );
    }
}
