//! A registry manager in the test's own process (the `registry-manager` library): a real
//! manager on 127.0.0.1:0 with a temporary data directory, real gRPC clients, and helpers that
//! wait on conditions with deadlines. The manager's and the agent's integration tests use it.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::agent_registry_client::AgentRegistryClient;
use registry_manager::{RunningManager, ServeConfig, Tuning};
use tokio::time::Instant;
use tonic::transport::Channel;

/// The worked example of the routing rule (docs/routing.md), plus subdomain-2.
pub use topology::fixtures::TREE_WITH_SUBDOMAIN_2 as TREE;

/// TREE with s2-host removed and agent-4 moved to subdomain-1.
pub const TREE_CHANGED: &str = "\
version: 1
domain: framework
hosts: [fm]
subdomains:
  - domain: subdomain-1
    hosts: [agent-1, agent-2, agent-4]
    subdomains:
      - domain: subdomain-1a
        hosts: [agent-3]
  - domain: subdomain-2
    hosts: []
";

pub use topology::fixtures::CCM;
pub const WAIT: Duration = Duration::from_secs(10);

/// A manager under test with its clients.
#[derive(Debug)]
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub manager: Option<RunningManager>,
    pub agent: AgentRegistryClient<Channel>,
    pub admin: AdminClient<Channel>,
    pub channel: Channel,
    pub ttl: Duration,
    pub tuning: Tuning,
}

impl Harness {
    pub async fn start(ttl: Duration) -> Result<Self> {
        Self::start_tuned(ttl, Tuning::default()).await
    }

    pub async fn start_tuned(ttl: Duration, tuning: Tuning) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = config(&dir, ttl, Some(TREE));
        let manager = registry_manager::start_with(config, tuning.clone()).await?;
        let channel = connect(manager.local_addr()).await?;
        Ok(Harness {
            dir,
            manager: Some(manager),
            agent: AgentRegistryClient::new(channel.clone()),
            admin: AdminClient::new(channel.clone()),
            channel,
            ttl,
            tuning,
        })
    }

    /// Stops the manager and starts another on the same data directory (no topology given).
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(m) = self.manager.take() {
            m.shutdown().await?;
        }
        let config = config(&self.dir, self.ttl, None);
        let manager = registry_manager::start_with(config, self.tuning.clone()).await?;
        self.channel = connect(manager.local_addr()).await?;
        self.agent = AgentRegistryClient::new(self.channel.clone());
        self.admin = AdminClient::new(self.channel.clone());
        self.manager = Some(manager);
        Ok(())
    }

    pub async fn revision(&self) -> u64 {
        self.manager.as_ref().expect("running").revision().await
    }

    pub async fn open(&mut self, host: &str, types: &[&str]) -> Result<pb::OpenSessionResponse> {
        let packages = types
            .iter()
            .enumerate()
            .map(|(i, t)| pb::Package {
                r#type: (*t).into(),
                endpoint: format!("127.0.0.1:{}", 7001 + i),
                status: pb::PackageStatus::Running as i32,
            })
            .collect();
        let req = pb::OpenSessionRequest {
            host: host.into(),
            packages,
        };
        Ok(self.agent.open_session(req).await?.into_inner())
    }

    pub async fn action(&mut self, host: &str, ty: &str, action: pb::PackageAction) -> Result<u64> {
        let req = pb::PackageActionRequest {
            host: host.into(),
            r#type: ty.into(),
            action: action as i32,
        };
        Ok(self.admin.package_action(req).await?.into_inner().revision)
    }

    pub async fn report(
        &mut self,
        session: &pb::OpenSessionResponse,
        host: &str,
        ty: &str,
        status: pb::PackageStatus,
    ) -> std::result::Result<u64, tonic::Status> {
        let req = pb::ReportStatusRequest {
            session_id: session.session_id.clone(),
            host: host.into(),
            r#type: ty.into(),
            status: status as i32,
        };
        Ok(self.agent.report_status(req).await?.into_inner().revision)
    }

    pub async fn apply(&mut self, yaml: &str) -> std::result::Result<u64, tonic::Status> {
        let req = pb::TopologyRequest {
            yaml: yaml.into(),
            file_name: "fleet.yaml".into(),
        };
        Ok(self.admin.apply_topology(req).await?.into_inner().revision)
    }

    /// A watch from `from_revision` that takes whole host entries (as tools do).
    pub async fn watch(&mut self, from_revision: u64) -> Result<Watcher> {
        self.watch_with(from_revision, false).await
    }

    /// A watch from `from_revision`; with `status_changes`, status changes come alone (as
    /// agents take them).
    pub async fn watch_with(
        &mut self,
        from_revision: u64,
        status_changes: bool,
    ) -> Result<Watcher> {
        let req = pb::WatchRequest {
            from_revision,
            host: String::new(),
            history: String::new(),
            status_changes,
        };
        let stream = self.agent.watch(req).await?.into_inner();
        Ok(Watcher::from(stream))
    }

    pub async fn export(&mut self) -> Result<serde_json::Value> {
        let resp = self
            .admin
            .export_registry(pb::ExportRegistryRequest { stale: false })
            .await?
            .into_inner();
        Ok(serde_json::from_str(&resp.snapshot_json)?)
    }

    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(m) = self.manager.take() {
            m.shutdown().await?;
        }
        Ok(())
    }
}

pub fn config(dir: &tempfile::TempDir, ttl: Duration, topology: Option<&str>) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("data"),
        topology: topology.map(|t| ("fleet.yaml".to_string(), t.to_string())),
        session_ttl: ttl,
        group: None,
        http_listen: None,
        security: Default::default(),
    }
}

/// Starts a manager of one on `listen` with `data_dir`, the topology `tree` and `session_ttl`;
/// a restarted manager may find its port briefly busy, so the start is tried again until
/// [`WAIT`] has passed.
pub async fn start_manager_at(
    data_dir: &std::path::Path,
    listen: std::net::SocketAddr,
    tree: &str,
    session_ttl: Duration,
) -> Result<RunningManager> {
    let config = ServeConfig {
        listen,
        data_dir: data_dir.to_path_buf(),
        topology: Some(("tree.yaml".into(), tree.into())),
        session_ttl,
        group: None,
        http_listen: None,
        security: Default::default(),
    };
    let deadline = Instant::now() + WAIT;
    loop {
        match registry_manager::start(config.clone()).await {
            Ok(m) => return Ok(m),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => bail!("the manager did not start within {WAIT:?}: {e}"),
        }
    }
}

/// A plaintext channel to a manager.
pub async fn connect(addr: std::net::SocketAddr) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

/// One decoded watch event.
#[derive(Debug, Clone)]
pub enum Event {
    Snapshot(pb::RegistryState),
    Delta(pb::Delta),
}

impl Event {
    pub fn revision(&self) -> u64 {
        match self {
            Event::Snapshot(s) => s.revision,
            Event::Delta(d) => d.revision,
        }
    }
    pub fn delta(self) -> Result<pb::Delta> {
        match self {
            Event::Delta(d) => Ok(d),
            other => bail!("expected a delta, got {other:?}"),
        }
    }
    pub fn snapshot(self) -> Result<pb::RegistryState> {
        match self {
            Event::Snapshot(s) => Ok(s),
            other => bail!("expected a snapshot, got {other:?}"),
        }
    }
}

#[derive(Debug)]
pub struct Watcher {
    stream: tonic::Streaming<pb::WatchEvent>,
    parts: proto::watch_parts::Reassembler,
    /// Wire events received (parts counted one by one).
    pub wire_events: usize,
}

impl From<tonic::Streaming<pb::WatchEvent>> for Watcher {
    fn from(stream: tonic::Streaming<pb::WatchEvent>) -> Self {
        Watcher {
            stream,
            parts: Default::default(),
            wire_events: 0,
        }
    }
}

impl Watcher {
    /// The next whole event (parts reassembled), within `WAIT`.
    pub async fn next(&mut self) -> Result<Event> {
        let deadline = Instant::now() + WAIT;
        let ev = loop {
            let ev = tokio::time::timeout_at(deadline, self.stream.message())
                .await
                .context("no watch event within the deadline")??
                .ok_or_else(|| anyhow!("watch stream ended"))?;
            self.wire_events += 1;
            if let Some(ev) = self.parts.push(ev)? {
                break ev;
            }
        };
        let ev = match ev.payload {
            Some(pb::watch_event::Payload::Snapshot(b)) => {
                Event::Snapshot(pb::RegistryState::decode(b)?)
            }
            Some(pb::watch_event::Payload::Delta(b)) => Event::Delta(pb::Delta::decode(b)?),
            None => bail!("watch event without payload"),
        };
        Ok(ev)
    }

    /// Events until one satisfies `pred` (all returned), within `WAIT`.
    pub async fn until(&mut self, mut pred: impl FnMut(&Event) -> bool) -> Result<Vec<Event>> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            if Instant::now() > deadline {
                bail!("condition not met within the deadline; saw {seen:?}");
            }
            let ev = self.next().await?;
            let done = pred(&ev);
            seen.push(ev);
            if done {
                return Ok(seen);
            }
        }
    }
}

pub fn host<'a>(entries: &'a [pb::HostEntry], name: &str) -> Option<&'a pb::HostEntry> {
    entries.iter().find(|h| h.host == name)
}

pub fn status_of(entry: &pb::HostEntry, ty: &str) -> Option<pb::PackageStatus> {
    entry
        .packages
        .iter()
        .find(|p| p.r#type == ty)
        .and_then(|p| pb::PackageStatus::try_from(p.status).ok())
}

/// Sends heartbeats every `every` on one stream until dropped; returns the acks receiver.
pub fn heartbeat(
    mut client: AgentRegistryClient<Channel>,
    host: &str,
    session_id: &str,
    every: Duration,
) -> tokio::sync::mpsc::Receiver<pb::HeartbeatAck> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let hb = pb::Heartbeat {
        session_id: session_id.into(),
        host: host.into(),
        ..Default::default()
    };
    tokio::spawn(async move {
        let outbound = futures::stream::unfold((hb, true), move |(hb, first)| async move {
            if !first {
                tokio::time::sleep(every).await;
            }
            Some((hb.clone(), (hb, false)))
        });
        let Ok(resp) = client.keep_alive(outbound).await else {
            return;
        };
        let mut acks = resp.into_inner();
        while let Ok(Some(ack)) = acks.message().await {
            if tx.send(ack).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// the registry snapshot format (docs/topology.md): `alive` defaults to true when absent.
pub fn alive(export: &serde_json::Value, host: &str) -> bool {
    export["hosts"][host]
        .get("alive")
        .and_then(|v| v.as_bool())
        .unwrap_or(true)
}
