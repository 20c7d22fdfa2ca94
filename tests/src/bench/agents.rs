//! Simulated agents inside the benchmark process: registry sessions kept alive, and watch
//! streams that time when each one receives a change. Many share one process and a few HTTP/2
//! connections, but every session and every stream is its own, as a real agent's would be.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use proto::agent_registry_client::AgentRegistryClient;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Streams opened on one HTTP/2 connection (servers commonly allow 100 to 200 at once).
pub const STREAMS_PER_CHANNEL: usize = 100;

/// A connection to the manager.
pub async fn channel(manager: SocketAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{manager}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the registry manager at {manager}"))
}

/// `n` connections to the manager.
pub async fn channels(manager: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        v.push(channel(manager).await?);
    }
    Ok(v)
}

/// The `run`-th change of a propagation measurement: a drain (even runs) or a restore (odd
/// runs) of `host`'s command-control-manager. Returns when it was sent and the revision it made.
pub async fn toggle_drain(
    admin: &mut proto::admin_client::AdminClient<Channel>,
    host: &str,
    run: usize,
) -> anyhow::Result<(Instant, u64)> {
    let action = if run.is_multiple_of(2) {
        proto::PackageAction::Drain
    } else {
        proto::PackageAction::Restore
    };
    let t0 = Instant::now();
    let resp = admin
        .package_action(proto::PackageActionRequest {
            host: host.to_string(),
            r#type: super::gen::CCM.into(),
            action: action as i32,
        })
        .await?
        .into_inner();
    Ok((t0, resp.revision))
}

/// A running package, as an agent registers it.
pub fn running(package_type: &str, endpoint: &str) -> proto::Package {
    proto::Package {
        r#type: package_type.to_string(),
        endpoint: endpoint.to_string(),
        status: proto::PackageStatus::Running as i32,
    }
}

/// Sessions of simulated hosts, each kept alive by its own `KeepAlive` stream. Dropping the set
/// ends every stream.
#[derive(Debug)]
pub struct SessionSet {
    /// Highest registry revision an `OpenSession` answered with.
    pub revision: u64,
    /// Sessions opened.
    pub opened: usize,
    /// The session TTL the manager granted (the first answer's).
    pub ttl: Duration,
    /// Heartbeats answered `ok = false`, and keep-alive streams that failed.
    pub keepalive_failures: Arc<AtomicUsize>,
    /// Set on drop: every keep-alive stream ends (the request stream is driven by the
    /// connection, so aborting the tasks alone would let heartbeats go on).
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: JoinSet<()>,
}

impl Drop for SessionSet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl SessionSet {
    /// Opens a session for every `(host, packages)`, `concurrency` at a time, then one
    /// `KeepAlive` stream per session sending a heartbeat at once and then every third of the
    /// TTL. Gives up (with what it opened so far) after `budget`.
    pub async fn open(
        manager: SocketAddr,
        hosts: Vec<(String, Vec<proto::Package>)>,
        concurrency: usize,
        budget: Duration,
    ) -> anyhow::Result<SessionSet> {
        let started = Instant::now();
        let chans = channels(manager, concurrency.div_ceil(8).max(1)).await?;
        let total = hosts.len();
        let queue = Arc::new(Mutex::new(hosts.into_iter()));
        let mut workers = JoinSet::new();
        for w in 0..concurrency.max(1) {
            let mut client = AgentRegistryClient::new(chans[w % chans.len()].clone());
            let queue = queue.clone();
            workers.spawn(async move {
                let mut opened = Vec::new();
                loop {
                    if started.elapsed() > budget {
                        return Ok::<_, anyhow::Error>(opened);
                    }
                    let next = queue.lock().expect("queue lock").next();
                    let Some((host, packages)) = next else {
                        return Ok(opened);
                    };
                    let r = client
                        .open_session(proto::OpenSessionRequest {
                            host: host.clone(),
                            packages,
                        })
                        .await
                        .with_context(|| format!("OpenSession for {host}"))?
                        .into_inner();
                    opened.push((host, r));
                }
            });
        }
        let mut sessions = Vec::with_capacity(total);
        while let Some(r) = workers.join_next().await {
            sessions.extend(r??);
        }
        let revision = sessions.iter().map(|(_, r)| r.revision).max().unwrap_or(0);
        let ttl = sessions
            .first()
            .map(|(_, r)| Duration::from_millis(r.ttl_ms))
            .unwrap_or(Duration::from_secs(1));
        let every = (ttl / 3).max(Duration::from_millis(10));
        let failures = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ka_chans = channels(manager, sessions.len().div_ceil(STREAMS_PER_CHANNEL)).await?;
        let mut tasks = JoinSet::new();
        let opened = sessions.len();
        for (i, (host, r)) in sessions.into_iter().enumerate() {
            let mut client = AgentRegistryClient::new(ka_chans[i / STREAMS_PER_CHANNEL].clone());
            let failures = failures.clone();
            let beat = proto::Heartbeat {
                session_id: r.session_id,
                host,
                seq: 0,
                sparse_acks: true,
            };
            let stop = stop.clone();
            tasks.spawn(async move {
                let beats = futures::stream::unfold(true, move |first| {
                    let (beat, stop) = (beat.clone(), stop.clone());
                    async move {
                        if !first {
                            tokio::time::sleep(every).await;
                        }
                        if stop.load(Ordering::Relaxed) {
                            return None;
                        }
                        Some((beat, false))
                    }
                });
                match client.keep_alive(beats).await {
                    Ok(resp) => {
                        let mut acks = resp.into_inner();
                        while let Some(ack) = acks.next().await {
                            match ack {
                                Ok(a) if a.ok => {}
                                _ => {
                                    failures.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        Ok(SessionSet {
            revision,
            opened,
            ttl,
            keepalive_failures: failures,
            stop,
            tasks,
        })
    }

    /// Keep-alive streams still running.
    pub fn live_streams(&self) -> usize {
        self.tasks.len()
    }
}

/// One event a watch stream received.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    stream: usize,
    revision: u64,
    at: Instant,
    delta: bool,
}

/// `n` `AgentRegistry.Watch` streams, each its own, spread over connections of
/// [`STREAMS_PER_CHANNEL`] streams. Dropping it ends every stream.
#[derive(Debug)]
pub struct WatchFanout {
    n: usize,
    ready: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    first_bytes: Arc<AtomicUsize>,
    last_error: Arc<Mutex<Option<String>>>,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    /// Dropping it ends the streams.
    _tasks: JoinSet<()>,
}

/// When each stream received one change.
#[derive(Debug, Clone)]
pub struct Propagation {
    /// Per stream that received it: from the change being sent to its arrival.
    pub latencies: Vec<Duration>,
    /// Streams that received a full snapshot rather than a delta for it.
    pub snapshots: usize,
    /// Streams that did not receive it before the deadline.
    pub missing: usize,
}

impl WatchFanout {
    /// Opens `n` streams from revision `from_revision` (0: each starts with a snapshot), at most
    /// `opening` at a time, and waits until every one has received its first event.
    pub async fn open(
        manager: SocketAddr,
        n: usize,
        from_revision: u64,
        opening: usize,
        deadline: Duration,
    ) -> anyhow::Result<WatchFanout> {
        let started = Instant::now();
        let chans = channels(manager, n.div_ceil(STREAMS_PER_CHANNEL)).await?;
        let ready = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let first_bytes = Arc::new(AtomicUsize::new(0));
        let last_error = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::unbounded_channel();
        let gate = Arc::new(tokio::sync::Semaphore::new(opening.max(1)));
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let mut client = AgentRegistryClient::new(chans[i / STREAMS_PER_CHANNEL].clone())
                .max_decoding_message_size(64 * 1024 * 1024);
            let (ready, ended, first_bytes, last_error, tx, gate) = (
                ready.clone(),
                ended.clone(),
                first_bytes.clone(),
                last_error.clone(),
                tx.clone(),
                gate.clone(),
            );
            tasks.spawn(async move {
                let mut permit = gate.acquire_owned().await.ok();
                let req = proto::WatchRequest {
                    from_revision,
                    host: String::new(),
                    history: String::new(),
                    status_changes: true,
                };
                let result: anyhow::Result<()> = async {
                    let mut events = client.watch(req).await?.into_inner();
                    let mut first = true;
                    // Large payloads arrive in parts: time and size whole events.
                    let mut parts = proto::watch_parts::Reassembler::default();
                    while let Some(ev) = events.message().await? {
                        let at = Instant::now();
                        let Some(ev) = parts.push(ev)? else {
                            continue;
                        };
                        if first {
                            first = false;
                            let size = match &ev.payload {
                                Some(proto::watch_event::Payload::Snapshot(b))
                                | Some(proto::watch_event::Payload::Delta(b)) => b.len(),
                                None => 0,
                            };
                            first_bytes.fetch_max(size, Ordering::Relaxed);
                            ready.fetch_add(1, Ordering::Relaxed);
                            drop(permit.take());
                            continue;
                        }
                        let delta =
                            matches!(ev.payload, Some(proto::watch_event::Payload::Delta(_)));
                        let _ = tx.send(Arrival {
                            stream: i,
                            revision: ev.revision,
                            at,
                            delta,
                        });
                    }
                    anyhow::bail!("the manager ended the stream")
                }
                .await;
                if let Err(e) = result {
                    *last_error.lock().expect("error lock") = Some(format!("{e:#}"));
                }
                ended.fetch_add(1, Ordering::Relaxed);
            });
        }
        drop(tx);
        let fanout = WatchFanout {
            n,
            ready,
            ended,
            first_bytes,
            last_error,
            arrivals: rx,
            _tasks: tasks,
        };
        loop {
            let ready = fanout.ready.load(Ordering::Relaxed);
            if ready >= n {
                return Ok(fanout);
            }
            let ended = fanout.ended.load(Ordering::Relaxed);
            if ended > 0 || started.elapsed() > deadline {
                anyhow::bail!(
                    "only {ready} of {n} watch streams received their first event within {:?} \
                     ({ended} ended; last error: {})",
                    started.elapsed(),
                    fanout.last_error().unwrap_or_else(|| "none".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The number of streams.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no streams.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Size of the largest first event (the snapshot), in bytes.
    pub fn snapshot_bytes(&self) -> usize {
        self.first_bytes.load(Ordering::Relaxed)
    }

    /// Streams that ended (they should not).
    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::Relaxed)
    }

    /// The last error a stream ended with.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }

    /// Forgets events received so far (between measurements).
    pub fn drain(&mut self) {
        while self.arrivals.try_recv().is_ok() {}
    }

    /// Waits until every stream has received revision `revision` (or later), and returns how
    /// long after `t0` each one did. Gives up after `deadline`, counting the missing.
    pub async fn collect(&mut self, revision: u64, t0: Instant, deadline: Duration) -> Propagation {
        let mut done = vec![false; self.n];
        let mut out = Propagation {
            latencies: Vec::with_capacity(self.n),
            snapshots: 0,
            missing: 0,
        };
        let end = t0 + deadline;
        while out.latencies.len() < self.n {
            let a = match tokio::time::timeout_at(end, self.arrivals.recv()).await {
                Ok(Some(a)) => a,
                Ok(None) | Err(_) => break,
            };
            if a.revision >= revision && !done[a.stream] {
                done[a.stream] = true;
                out.latencies.push(a.at.saturating_duration_since(t0));
                if !a.delta {
                    out.snapshots += 1;
                }
            }
        }
        out.missing = self.n - out.latencies.len();
        out
    }
}
