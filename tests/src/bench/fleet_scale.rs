//! The registry loaded the way a fleet loads it: 10,000 simulated agents, each with its own TCP
//! connection carrying its session's `KeepAlive` stream (a heartbeat every third of the default
//! 1 s session TTL) and its own `Watch` stream, against one manager and against a group of three
//! with the agents spread evenly over the members (as the routing rule spreads them when the
//! members sit in three branches of the tree).
//!
//! While that load runs, it measures the manager's CPU (cores) and RSS, the heartbeat round trip
//! (heartbeat sent to its ack, p99), sessions lapsed that should not have (false expiries), how
//! long after a host falls silent the fleet hears it (silent-host detection, to each agent's watch
//! stream), and how long one change takes to reach all 10,000 agents on their own connections.
//!
//! The simulated agents share the benchmark process (and its two cores with the manager) but no
//! connection: each has its own HTTP/2 connection, as a real agent does.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use proto::admin_client::AdminClient;
use proto::agent_registry_client::AgentRegistryClient;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::agents::{running, toggle_drain};
use super::figure::Figure;
use super::gen::{GeneratedFleet, CCM};
use super::stats::{self, fmt_num};
use super::system::{cpu_seconds, rss_mb};
use super::Mode;
use crate::Fleet;

#[derive(Debug, Clone, Copy)]
struct Plan {
    hosts: usize,
    /// The registry's `session_ttl` (a heartbeat every third of it).
    ttl: Duration,
    domains: usize,
    /// How long the steady load is measured (CPU, heartbeat round trips, false expiries).
    window: Duration,
    /// Changes timed to every agent.
    changes: usize,
    /// Connections opened at once while the fleet starts.
    opening: usize,
}

impl Plan {
    fn of(mode: Mode) -> Plan {
        match mode {
            Mode::Full => Plan {
                hosts: 10_000,
                ttl: Duration::from_secs(1),
                domains: 500,
                window: Duration::from_secs(20),
                changes: 5,
                opening: 200,
            },
            Mode::Quick => Plan {
                hosts: 200,
                ttl: Duration::from_secs(1),
                domains: 10,
                window: Duration::from_secs(3),
                changes: 2,
                opening: 50,
            },
        }
    }
}

/// What every simulated agent reports into.
#[derive(Debug, Default)]
struct Shared {
    /// Heartbeat round trips (ms) seen while `measuring`.
    rtts: Mutex<Vec<f32>>,
    measuring: AtomicBool,
    /// Heartbeats acknowledged while `measuring` (an answer acknowledges every earlier
    /// heartbeat of its stream too).
    acknowledged: AtomicUsize,
    /// Heartbeats answered `ok = false` (the session was unknown or lapsed).
    refused: AtomicUsize,
    /// Connections, sessions or streams that failed and were tried again (as a real agent does).
    retries: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// Agents whose session is open and kept alive.
    sessions: AtomicUsize,
    /// Agents whose watch stream is open too.
    watching: AtomicUsize,
}

impl Shared {
    fn retry(&self, e: impl std::fmt::Display) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("lock") = Some(e.to_string());
    }
}

/// One watch event, for timing changes.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    agent: usize,
    revision: u64,
    at: Instant,
}

/// The simulated fleet; dropping it ends every agent.
struct SimAgents {
    n: usize,
    shared: Arc<Shared>,
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    /// The agent that stops sending heartbeats ([`NOBODY`] for none); its connection stays
    /// open, as a SIGSTOPped host's does.
    silence: Arc<AtomicUsize>,
    /// What each agent did, by index.
    track: Arc<Vec<Track>>,
    base: Instant,
    /// Once set, every agent opens its watch stream from this revision.
    watch_from: tokio::sync::watch::Sender<Option<u64>>,
    _tasks: JoinSet<()>,
}

const NOBODY: usize = usize::MAX;

/// What one simulated agent did, for the figures.
#[derive(Default)]
struct Track {
    /// When it last sent a heartbeat, in microseconds after the fleet's `base`.
    last_beat: AtomicU64,
    /// The longest time between two heartbeats it sent, in microseconds: more than the TTL
    /// means the benchmark's own process sent late.
    max_gap: AtomicU64,
    /// Its session lapsed (a heartbeat was refused); it then opened a new one.
    lapsed: AtomicBool,
}

impl Track {
    /// A heartbeat sent `at` microseconds after `base`.
    fn sent(&self, at: u64) {
        let previous = self.last_beat.swap(at, Ordering::Relaxed);
        if previous > 0 {
            self.max_gap
                .fetch_max(at.saturating_sub(previous), Ordering::Relaxed);
        }
    }
}

/// One simulated host: its name, its packages, and its certificate when the fleet runs TLS.
#[derive(Clone)]
struct SimHost {
    host: String,
    packages: Vec<proto::Package>,
    tls: Option<proto::crl::ClientTls>,
}

/// What an agent task shares with the others.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Arrival>,
    silence: Arc<AtomicUsize>,
    track: Arc<Vec<Track>>,
    base: Instant,
    gate: Arc<tokio::sync::Semaphore>,
    watch_from: tokio::sync::watch::Receiver<Option<u64>>,
}

async fn own_channel(
    addr: SocketAddr,
    tls: Option<&proto::crl::ClientTls>,
) -> anyhow::Result<Channel> {
    proto::tls::endpoint(&addr.to_string(), tls)
        .map_err(|e| anyhow::anyhow!(e))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// A pause before trying again: 200 ms to 1 s, spread so that retries do not come in waves.
async fn backoff(i: usize, attempt: u32) {
    let ms = (200u64 << attempt.min(2)).min(1000) + (i as u64 * 7919) % 200;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl SimAgents {
    /// Starts an agent per host (`i`-th on `members[i % len]`), `opening` at a time: first every
    /// session (connection, `OpenSession`, keep-alive stream), then, once all are kept alive,
    /// every watch stream from the registry's revision then (as agents that already hold a
    /// copy resume). Returns when all watch, or fails after `deadline`.
    async fn start(
        members: &[SocketAddr],
        hosts: Vec<SimHost>,
        admin: &mut AdminClient<Channel>,
        opening: usize,
        deadline: Duration,
    ) -> anyhow::Result<SimAgents> {
        let started = Instant::now();
        let n = hosts.len();
        let (tx, rx) = mpsc::unbounded_channel();
        let (watch_from, watch_rx) = tokio::sync::watch::channel(None);
        let ctx = Ctx {
            shared: Arc::new(Shared::default()),
            tx,
            silence: Arc::new(AtomicUsize::new(NOBODY)),
            track: Arc::new((0..n).map(|_| Track::default()).collect()),
            base: Instant::now(),
            gate: Arc::new(tokio::sync::Semaphore::new(opening.max(1))),
            watch_from: watch_rx,
        };
        let mut tasks = JoinSet::new();
        for (i, host) in hosts.into_iter().enumerate() {
            let addr = members[i % members.len()];
            let ctx = ctx.clone();
            tasks.spawn(async move { agent(i, addr, host, ctx).await });
        }
        let sim = SimAgents {
            n,
            shared: ctx.shared.clone(),
            arrivals: rx,
            silence: ctx.silence.clone(),
            track: ctx.track.clone(),
            base: ctx.base,
            watch_from,
            _tasks: tasks,
        };
        drop(ctx);
        sim.wait_for(
            "sessions",
            |s| s.sessions.load(Ordering::Relaxed),
            started,
            deadline,
        )
        .await?;
        let revision = admin
            .list_hosts(proto::ListHostsRequest { stale: false })
            .await?
            .into_inner()
            .revision;
        sim.watch_from.send_replace(Some(revision));
        sim.wait_for(
            "watch streams",
            |s| s.watching.load(Ordering::Relaxed),
            started,
            deadline,
        )
        .await?;
        Ok(sim)
    }

    async fn wait_for(
        &self,
        what: &str,
        count: impl Fn(&Shared) -> usize,
        started: Instant,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        loop {
            let done = count(&self.shared);
            if done >= self.n {
                return Ok(());
            }
            if started.elapsed() > deadline {
                anyhow::bail!(
                    "only {done} of {} simulated agents had their {what} within {:?} ({} retries; last error: {})",
                    self.n,
                    started.elapsed(),
                    self.shared.retries.load(Ordering::Relaxed),
                    self.last_error().unwrap_or_else(|| "none".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().expect("lock").clone()
    }

    /// Forgets the watch events received so far.
    fn drain(&mut self) {
        while self.arrivals.try_recv().is_ok() {}
    }

    /// When each agent received revision `revision` (or later), after `t0`; the missing count.
    async fn collect(
        &mut self,
        revision: u64,
        t0: Instant,
        deadline: Duration,
    ) -> (Vec<f64>, usize) {
        let mut done = vec![false; self.n];
        let mut ms = Vec::with_capacity(self.n);
        let end = t0 + deadline;
        while ms.len() < self.n {
            let a = match tokio::time::timeout_at(end, self.arrivals.recv()).await {
                Ok(Some(a)) => a,
                Ok(None) | Err(_) => break,
            };
            if a.revision >= revision && !done[a.agent] {
                done[a.agent] = true;
                ms.push(a.at.saturating_duration_since(t0).as_secs_f64() * 1e3);
            }
        }
        let missing = self.n - ms.len();
        (ms, missing)
    }
}

/// One simulated agent: its own connection carrying its session's keep-alive stream and, once
/// every session is open, its watch stream. Whatever fails is tried again after a backoff, as
/// a real agent would: the connection, `OpenSession`, the keep-alive stream (resuming the same
/// session) and the watch stream (from the last revision it saw).
async fn agent(i: usize, addr: SocketAddr, sim: SimHost, mut ctx: Ctx) {
    let SimHost {
        host,
        packages,
        tls,
    } = sim;
    let mut attempt = 0u32;
    // The session: a connection and OpenSession, tried until they work.
    let (mut client, mut opened) = loop {
        let permit = ctx.gate.clone().acquire_owned().await;
        let r: anyhow::Result<_> = async {
            let ch = own_channel(addr, tls.as_ref()).await?;
            let mut client =
                AgentRegistryClient::new(ch).max_decoding_message_size(64 * 1024 * 1024);
            let opened = client
                .open_session(proto::OpenSessionRequest {
                    host: host.clone(),
                    packages: packages.clone(),
                })
                .await
                .with_context(|| format!("OpenSession for {host}"))?
                .into_inner();
            Ok((client, opened))
        }
        .await;
        drop(permit);
        match r {
            Ok(v) => break v,
            Err(e) => {
                ctx.shared.retry(format!("{e:#}"));
                backoff(i, attempt).await;
                attempt += 1;
            }
        }
    };
    let every = (Duration::from_millis(opened.ttl_ms) / 3).max(Duration::from_millis(10));
    let mut counted_session = false;
    let mut counted_watch = false;
    let mut last_revision = opened.revision;
    loop {
        // One connection's life: keep-alive stream, then the watch stream when asked for.
        // (seq, sent at) of the heartbeats not answered yet; an answer covers every earlier one.
        let sent: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
        let beats = {
            let (sent, silence, track, base) = (
                sent.clone(),
                ctx.silence.clone(),
                ctx.track.clone(),
                ctx.base,
            );
            // As real agents do: numbered, answered every second heartbeat.
            let beat = proto::Heartbeat {
                session_id: opened.session_id.clone(),
                host: host.clone(),
                seq: 0,
                sparse_acks: true,
            };
            futures::stream::unfold(0u64, move |seq| {
                let (mut beat, sent, silence, track) =
                    (beat.clone(), sent.clone(), silence.clone(), track.clone());
                async move {
                    if seq > 0 {
                        tokio::time::sleep(every).await;
                    }
                    // A silenced agent stops sending but keeps its stream open.
                    while silence.load(Ordering::Relaxed) == i {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let now = Instant::now();
                    beat.seq = seq + 1;
                    sent.lock().expect("lock").push_back((beat.seq, now));
                    track[i].sent(now.saturating_duration_since(base).as_micros() as u64);
                    Some((beat, seq + 1))
                }
            })
        };
        let r: anyhow::Result<()> = async {
            let mut acks = client.keep_alive(beats).await?.into_inner();
            if !counted_session {
                counted_session = true;
                ctx.shared.sessions.fetch_add(1, Ordering::Relaxed);
            }
            let mut watch: Option<tonic::Streaming<proto::WatchEvent>> = None;
            let mut parts = proto::watch_parts::Reassembler::default();
            loop {
                if watch.is_none() {
                    let asked = *ctx.watch_from.borrow();
                    if let Some(from) = asked {
                        let from = from.max(last_revision);
                        watch = Some(
                            client
                                .watch(proto::WatchRequest {
                                    from_revision: from,
                                    host: String::new(),
                                    history: String::new(),
                                    status_changes: true,
                                })
                                .await?
                                .into_inner(),
                        );
                        if !counted_watch {
                            counted_watch = true;
                            ctx.shared.watching.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::select! {
                    ack = acks.message() => match ack? {
                        Some(a) => {
                            let at = Instant::now();
                            // The answered heartbeat's send time; earlier ones are covered.
                            let (t, covered) = {
                                let mut sent = sent.lock().expect("lock");
                                let (mut t, mut covered) = (None, 0);
                                while let Some(&(seq, when)) = sent.front() {
                                    if seq > a.seq {
                                        break;
                                    }
                                    sent.pop_front();
                                    covered += 1;
                                    t = (seq == a.seq).then_some(when);
                                }
                                (t, covered)
                            };
                            if a.ok && ctx.shared.measuring.load(Ordering::Relaxed) {
                                ctx.shared.acknowledged.fetch_add(covered, Ordering::Relaxed);
                            }
                            if !a.ok {
                                // The session lapsed: open a new one, as a real agent does.
                                ctx.shared.refused.fetch_add(1, Ordering::Relaxed);
                                return Ok(());
                            } else if let Some(t) = t {
                                if ctx.shared.measuring.load(Ordering::Relaxed) {
                                    let ms = at.saturating_duration_since(t).as_secs_f64() * 1e3;
                                    ctx.shared.rtts.lock().expect("lock").push(ms as f32);
                                }
                            }
                        }
                        None => anyhow::bail!("the manager ended the keep-alive stream"),
                    },
                    ev = async { watch.as_mut().expect("watching").message().await }, if watch.is_some() => match ev? {
                        Some(ev) => {
                            let at = Instant::now();
                            if let Some(ev) = parts.push(ev)? {
                                last_revision = last_revision.max(ev.revision);
                                let _ = ctx.tx.send(Arrival { agent: i, revision: ev.revision, at });
                            }
                        }
                        None => anyhow::bail!("the manager ended the watch stream"),
                    },
                    _ = ctx.watch_from.changed(), if watch.is_none() => {}
                }
            }
        }
        .await;
        match r {
            // Only a refused heartbeat ends the connection's life without an error.
            Ok(()) => {
                ctx.track[i].lapsed.store(true, Ordering::Relaxed);
                let reopened = client
                    .open_session(proto::OpenSessionRequest {
                        host: host.clone(),
                        packages: packages.clone(),
                    })
                    .await;
                match reopened {
                    Ok(o) => {
                        opened = o.into_inner();
                        continue;
                    }
                    Err(e) => ctx.shared.retry(format!("OpenSession for {host}: {e:#}")),
                }
            }
            Err(e) => ctx.shared.retry(format!("{e:#}")),
        }
        backoff(i, attempt).await;
        attempt += 1;
        match own_channel(addr, tls.as_ref()).await {
            Ok(ch) => {
                client = AgentRegistryClient::new(ch).max_decoding_message_size(64 * 1024 * 1024)
            }
            Err(e) => ctx.shared.retry(format!("{e:#}")),
        }
    }
}

/// CPU cores a process used over `window` (CPU seconds / wall seconds).
async fn cores_over(pids: &[u32], window: Duration) -> anyhow::Result<Vec<f64>> {
    let before: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let wall = t.elapsed().as_secs_f64();
    let after: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_, _>>()?;
    Ok(before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) / wall)
        .collect())
}

/// Names of the figures of one setup.
struct Names {
    cpu: &'static str,
    rss: &'static str,
    rtt: &'static str,
    false_expiries: &'static str,
    silent: &'static str,
    propagation: &'static str,
}

const ONE: Names = Names {
    cpu: "heartbeat_manager_cpu_10k",
    rss: "heartbeat_manager_rss_10k",
    rtt: "heartbeat_rtt_p99_10k",
    false_expiries: "heartbeat_false_expiries_10k",
    silent: "heartbeat_silent_detect_10k",
    propagation: "propagation_10k_own_connections_p99",
};

const GROUP: Names = Names {
    cpu: "heartbeat_group_cpu_10k",
    rss: "heartbeat_group_rss_10k",
    rtt: "heartbeat_group_rtt_p99_10k",
    false_expiries: "heartbeat_group_false_expiries_10k",
    silent: "heartbeat_group_silent_detect_10k",
    propagation: "propagation_group_10k_own_connections_p99",
};

const TLS: Names = Names {
    cpu: "heartbeat_tls_manager_cpu_10k",
    rss: "heartbeat_tls_manager_rss_10k",
    rtt: "heartbeat_tls_rtt_p99_10k",
    false_expiries: "heartbeat_tls_false_expiries_10k",
    silent: "heartbeat_tls_silent_detect_10k",
    propagation: "propagation_10k_tls_own_connections_p99",
};

/// Measures the `heartbeat_*` figures against one manager (`members == 1`) or a group of three,
/// with every connection on mutual TLS when `tls` (each simulated agent with a certificate of
/// its own host, as the manager requires).
pub async fn run(mode: Mode, members: usize, tls: bool) -> anyhow::Result<Vec<Figure>> {
    let names = match (members > 1, tls) {
        (true, _) => GROUP,
        (false, true) => TLS,
        (false, false) => ONE,
    };
    measure(Plan::of(mode), members, tls, names).await
}

const MODEL: Names = Names {
    cpu: "heartbeat_model_manager_cpu_15k",
    rss: "heartbeat_model_manager_rss_15k",
    rtt: "heartbeat_model_rtt_p99_15k",
    false_expiries: "heartbeat_model_false_expiries_15k",
    silent: "heartbeat_model_silent_detect_15k",
    propagation: "propagation_model_15k_own_connections_p99",
};

/// The capacity model's check (docs/capacity.md): one manager with half as many agents again as
/// it was measured with (15,000 on their own connections) at `session_ttl: 1500ms`, so the
/// heartbeat rate is the same 30,000 a second: the model predicts the same CPU and 15,000
/// connections' worth of memory.
pub async fn run_model(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let mut plan = Plan::of(mode);
    plan.hosts = plan.hosts * 3 / 2;
    plan.domains = plan.domains * 3 / 2;
    plan.ttl = Duration::from_millis(1500);
    measure(plan, 1, false, MODEL).await
}

const LIGHT: Names = Names {
    cpu: "heartbeat_light_manager_cpu_10k",
    rss: "heartbeat_light_manager_rss_10k",
    rtt: "heartbeat_light_rtt_p99_10k",
    false_expiries: "heartbeat_light_false_expiries_10k",
    silent: "heartbeat_light_silent_detect_10k",
    propagation: "propagation_10k_own_connections_light_p99",
};

/// The fan-out without the heartbeat load: the same 10,000 agents on their own connections at
/// `session_ttl: 30s` (a heartbeat every 10 s each, 1,000 a second in all), one manager. The
/// change is timed the same way as at the default TTL; the difference is what 29,000 more
/// heartbeats a second on the same two cores cost it.
pub async fn run_light(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let mut plan = Plan::of(mode);
    plan.ttl = match mode {
        Mode::Full => Duration::from_secs(30),
        Mode::Quick => Duration::from_secs(3),
    };
    measure(plan, 1, false, LIGHT).await
}

const ONE_THOUSAND: Names = Names {
    cpu: "heartbeat_manager_cpu_1k",
    rss: "heartbeat_manager_rss_1k",
    rtt: "heartbeat_rtt_p99_1k",
    false_expiries: "heartbeat_false_expiries_1k",
    silent: "heartbeat_silent_detect_1k",
    propagation: "propagation_1k_own_connections_p99",
};

/// The 1,000-agent propagation target as a fleet loads it: 1,000 agents on their own
/// connections at the default TTL, one manager, and more changes timed than at 10,000 (they
/// are cheap) so that the median of their p99s is steady.
pub async fn run_1k(mode: Mode) -> anyhow::Result<Vec<Figure>> {
    let mut plan = Plan::of(mode);
    if mode == Mode::Full {
        plan.hosts = 1_000;
        plan.domains = 50;
        plan.window = Duration::from_secs(10);
        plan.changes = 9;
    }
    measure(plan, 1, false, ONE_THOUSAND).await
}

async fn measure(
    plan: Plan,
    members: usize,
    tls: bool,
    names: Names,
) -> anyhow::Result<Vec<Figure>> {
    let g = GeneratedFleet::new(plan.domains, plan.hosts, 8);
    let with_manager: std::collections::BTreeSet<&str> = g.managers(1).into_iter().collect();
    let mut builder =
        Fleet::from_topology(&g.to_yaml()).session_ttl(&format!("{}ms", plan.ttl.as_millis()));
    if tls {
        builder = builder.tls();
    }
    builder = if members > 1 {
        builder.managers(members)
    } else {
        builder.manager()
    };
    let mut fleet = builder.start().await?;
    let addrs: Vec<SocketAddr> = if members > 1 {
        (0..members).map(|i| fleet.member_addr(i)).collect()
    } else {
        vec![fleet.manager_addr()]
    };
    let pids: Vec<u32> = if members > 1 {
        fleet
            .members()
            .iter()
            .filter_map(|m| m.proc.pid())
            .collect()
    } else {
        fleet.manager().and_then(|m| m.pid()).into_iter().collect()
    };
    anyhow::ensure!(pids.len() == members, "a manager is not running");
    let issuer = if tls {
        Some(crate::pki::ca(&fleet.certs_dir())?)
    } else {
        None
    };
    let certs_started = Instant::now();
    let mut hosts: Vec<SimHost> = Vec::with_capacity(plan.hosts);
    for h in g.host_names() {
        let packages = if with_manager.contains(h) {
            vec![running(CCM, "127.0.0.1:7001")]
        } else {
            Vec::new()
        };
        let tls = match &issuer {
            Some(ca) => Some(crate::pki::client_config(&fleet.certs_dir(), ca, h)?),
            None => None,
        };
        hosts.push(SimHost {
            host: h.to_string(),
            packages,
            tls,
        });
    }
    let certs_took = certs_started.elapsed();
    let victim_host = hosts
        .iter()
        .position(|h| h.packages.is_empty() && !h.host.is_empty())
        .unwrap_or(0);
    let changed_host = hosts
        .iter()
        .find(|h| !h.packages.is_empty())
        .map(|h| h.host.clone())
        .context("the generated fleet has no manager package")?;
    let mut admin = AdminClient::new(fleet.admin_endpoint(addrs[0])?.connect().await?);
    let t = Instant::now();
    let mut sim = SimAgents::start(
        &addrs,
        hosts.clone(),
        &mut admin,
        // TLS handshakes cost the manager most at connection time: fewer at once.
        if tls { plan.opening / 4 } else { plan.opening },
        Duration::from_secs(240),
    )
    .await?;
    let started_in = t.elapsed();

    // Steady load: CPU, RSS and heartbeat round trips over the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.shared.rtts.lock().expect("lock").clear();
    sim.shared.acknowledged.store(0, Ordering::Relaxed);
    let refused_before = sim.shared.refused.load(Ordering::Relaxed);
    let retries_before = sim.shared.retries.load(Ordering::Relaxed);
    sim.shared.measuring.store(true, Ordering::Relaxed);
    // The managers, and the benchmark's own process (the simulated agents) beside them.
    let own = std::process::id();
    let mut cores = cores_over(&[pids.as_slice(), &[own]].concat(), plan.window).await?;
    let own_cores = cores.pop().unwrap_or(0.0);
    sim.shared.measuring.store(false, Ordering::Relaxed);
    let rss: Vec<f64> = pids.iter().map(|p| rss_mb(*p)).collect::<Result<_, _>>()?;
    let mut rtts: Vec<f64> = sim
        .shared
        .rtts
        .lock()
        .expect("lock")
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    rtts.sort_by(f64::total_cmp);
    let beats = sim.shared.acknowledged.load(Ordering::Relaxed);

    let mut cpu = Figure::new(names.cpu);
    let mut rss_fig = Figure::new(names.rss);
    let mut rtt = Figure::new(names.rtt);
    let mut false_exp = Figure::new(names.false_expiries);
    false_exp.sum_of_runs = true;
    let mut silent = Figure::new(names.silent);
    let mut prop = Figure::new(names.propagation);
    let busiest = cores.iter().copied().fold(0.0, f64::max);
    cpu.push(busiest);
    rss_fig.push(rss.iter().copied().fold(0.0, f64::max));
    rtt.push(stats::percentile_sorted(&rtts, 99.0));
    let setup = format!(
        "{} simulated agents ({} domains), each with its own TCP connection, session, keep-alive \
         stream (a heartbeat every {} ms: a {} ms TTL{}) and watch stream, {}; started in \
         {:.1} s",
        fmt_num(sim.n as f64),
        plan.domains,
        plan.ttl.as_millis() / 3,
        plan.ttl.as_millis(),
        if plan.ttl == Duration::from_secs(1) {
            ", the default"
        } else {
            ""
        },
        if members > 1 {
            format!("spread evenly over {members} members")
        } else {
            "on one manager".to_string()
        },
        started_in.as_secs_f64()
    ) + &format!(
        " (sessions first, then watch streams; {} connections, sessions or streams tried again \
         while starting){}",
        retries_before,
        if tls {
            format!(
                "; mutual TLS on every connection, each agent with a certificate of its own host \
                 (made in {:.1} s)",
                certs_took.as_secs_f64()
            )
        } else {
            String::new()
        }
    );
    // The setup once, on the first figure; the others refer to it.
    cpu.note(setup);
    for f in [
        &mut rss_fig,
        &mut rtt,
        &mut false_exp,
        &mut silent,
        &mut prop,
    ] {
        f.note(format!("setup: see {}", names.cpu));
    }
    let per_member = |v: &[f64], unit: &str| {
        v.iter()
            .enumerate()
            .map(|(i, x)| format!("m{}: {x:.2} {unit}", i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    cpu.note(format!(
        "CPU time of the manager process{} over {:.0} s of steady load (the busiest member{}): {}; \
         {} heartbeats acknowledged in the window ({}/s; the agents ask for an answer to every \
         second heartbeat, as real agents do: {} answers); the simulated agents share the 2 cores \
         and used {own_cores:.2} of them",
        if members > 1 { "es" } else { "" },
        plan.window.as_secs_f64(),
        if members > 1 { "'s value" } else { "" },
        per_member(&cores, "cores"),
        fmt_num(beats as f64),
        fmt_num(beats as f64 / plan.window.as_secs_f64()),
        fmt_num(rtts.len() as f64),
    ));
    rss_fig.note(format!(
        "VmRSS after the window: {}",
        per_member(&rss, "MB")
    ));
    rtt.note(format!(
        "heartbeat sent to its answer on its own stream, over {} answered heartbeats: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        fmt_num(rtts.len() as f64),
        stats::percentile_sorted(&rtts, 50.0),
        stats::percentile_sorted(&rtts, 99.0),
        rtts.last().copied().unwrap_or(0.0)
    ));

    // One change to every agent on its own connection.
    let mut problems = Vec::new();
    let (mut p50s, mut per_agent_us, mut own_per_agent_us) = (Vec::new(), Vec::new(), Vec::new());
    // Per change: until the write was acknowledged, and until the first agent had it (ms).
    let (mut acked_ms, mut first_ms) = (Vec::new(), Vec::new());
    let heartbeat_cores: f64 = cores.iter().sum();
    let managers_cpu = || -> anyhow::Result<f64> { pids.iter().map(|p| cpu_seconds(*p)).sum() };
    for run in 0..plan.changes {
        sim.drain();
        let (cpu0, own0, w0) = (managers_cpu()?, cpu_seconds(own)?, Instant::now());
        // Under this load a write may time out with its outcome unknown; retrying is safe
        // (a repeated drain or restore is a no-op), and each retry is reported.
        // A change that still fails ends this part (its figure says why); the figures measured
        // before it, and the silent host after it, are still reported.
        let mut attempt = 0;
        let changed = loop {
            match toggle_drain(&mut admin, &changed_host, run).await {
                Ok(v) => break Ok(v),
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    problems.push(format!("change {}: tried again after: {e:#}", run + 1));
                }
                Err(e) => break Err(e),
            }
        };
        let (t0, revision) = match changed {
            Ok(v) => v,
            Err(e) => {
                prop.error = Some(format!(
                    "change {} could not be made after 4 tries: {e:#}",
                    run + 1
                ));
                break;
            }
        };
        acked_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        let (mut ms, missing) = sim.collect(revision, t0, Duration::from_secs(30)).await;
        if ms.is_empty() {
            prop.error = Some(format!("no agent received revision {revision}"));
            break;
        }
        // The managers' CPU beyond their heartbeat load while this change went out.
        let took = w0.elapsed().as_secs_f64();
        let extra = managers_cpu()? - cpu0 - heartbeat_cores * took;
        per_agent_us.push((extra.max(0.0) / ms.len() as f64) * 1e6);
        let own_extra = cpu_seconds(own)? - own0 - own_cores * took;
        own_per_agent_us.push((own_extra.max(0.0) / ms.len() as f64) * 1e6);
        ms.sort_by(f64::total_cmp);
        first_ms.push(ms[0]);
        p50s.push(stats::percentile_sorted(&ms, 50.0));
        prop.push(stats::percentile_sorted(&ms, 99.0));
        if missing > 0 {
            problems.push(format!("change {}: {missing} agents missed it", run + 1));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for v in [
        &mut p50s,
        &mut per_agent_us,
        &mut own_per_agent_us,
        &mut acked_ms,
        &mut first_ms,
    ] {
        v.sort_by(f64::total_cmp);
    }
    if !p50s.is_empty() {
        prop.note(format!(
            "timed from sending a drain/restore (to m1) to each agent's watch event of the new \
             revision; p99 over agents, median of the changes (p50 over agents: {:.1} ms; the \
             write acknowledged after {:.1} ms, the first agent had it after {:.1} ms); the \
             manager{} spent {:.1} µs of CPU per agent on each change beyond {} heartbeat load \
             (median of the changes: commit, encoding and one write per connection), and the \
             simulated agents receiving it {:.1} µs each on the same cores",
            stats::percentile_sorted(&p50s, 50.0),
            stats::percentile_sorted(&acked_ms, 50.0),
            stats::percentile_sorted(&first_ms, 50.0),
            if members > 1 { "s together" } else { "" },
            stats::percentile_sorted(&per_agent_us, 50.0),
            if members > 1 { "their" } else { "its" },
            stats::percentile_sorted(&own_per_agent_us, 50.0),
        ));
    }

    // A host falls silent (its connection stays open): until every agent's watch hears it.
    sim.drain();
    // A read the loaded manager cannot answer ends this part with an error on its figure.
    match admin
        .list_hosts(proto::ListHostsRequest { stale: false })
        .await
    {
        Err(e) => silent.error = Some(format!("the registry's revision could not be read: {e}")),
        Ok(listing) => {
            let revision_before = listing.into_inner().revision;
            sim.silence.store(victim_host, Ordering::Relaxed);
            // Timed from the victim's last heartbeat (the next one it would have sent never goes).
            tokio::time::sleep(Duration::from_millis(400)).await;
            let last = sim.track[victim_host].last_beat.load(Ordering::Relaxed);
            let t0 = sim.base + Duration::from_micros(last);
            let (mut ms, missing) = sim
                .collect(revision_before + 1, t0, plan.ttl + Duration::from_secs(10))
                .await;
            ms.sort_by(f64::total_cmp);
            if let Some(p50) = (!ms.is_empty()).then(|| stats::percentile_sorted(&ms, 50.0)) {
                silent.push(stats::percentile_sorted(&ms, 99.0));
                silent.note(format!(
                    "{} stops heartbeating with its connection open (as a SIGSTOPped host); timed from \
                     its last heartbeat to each agent's watch event of the lapse: p50 {p50:.0} ms, p99 over agents; \
                     {missing} agents missed it",
                    hosts[victim_host].host
                ));
            } else {
                silent.error = Some(format!(
                    "no agent heard the silent host lapse within {} s",
                    (plan.ttl + Duration::from_secs(10)).as_secs()
                ));
            }
        }
    }

    // False expiries: no other agent's session may have lapsed (each that did was refused a
    // heartbeat and opened a new session, as real agents do), and every other session is live.
    let listing = admin
        .list_hosts(proto::ListHostsRequest { stale: false })
        .await
        .map(tonic::Response::into_inner);
    let lapsed: Vec<&str> = match &listing {
        Ok(listing) => listing
            .hosts
            .iter()
            .filter(|h| !h.session_live && h.host != hosts[victim_host].host)
            .map(|h| h.host.as_str())
            .collect(),
        Err(e) => {
            false_exp.note(format!(
                "the manager's list of hosts could not be read ({e}): counted from the agents' \
                 side only"
            ));
            Vec::new()
        }
    };
    let refused = sim.shared.refused.load(Ordering::Relaxed) - refused_before;
    // Lapsed sessions whose simulated agent itself went longer than the TTL between two
    // heartbeats: the benchmark's process sent late (it shares the cores with the managers).
    let ttl_us = plan.ttl.as_micros() as u64;
    let lapsed_agents: Vec<usize> = (0..hosts.len())
        .filter(|&i| i != victim_host && sim.track[i].lapsed.load(Ordering::Relaxed))
        .collect();
    let sent_late = lapsed_agents
        .iter()
        .filter(|&&i| sim.track[i].max_gap.load(Ordering::Relaxed) > ttl_us)
        .count();
    false_exp.push(lapsed_agents.len().max(lapsed.len()) as f64);
    false_exp.note(format!(
        "agents whose session lapsed (a heartbeat refused; each opened a new session): {} (of \
         them, {sent_late} whose simulated agent itself went longer than the TTL between two \
         heartbeats it sent: the benchmark's process was late); sessions not live at the end \
         other than the silenced host's: {}{}; heartbeats refused \
         (session unknown) during the run: {refused}; connections or streams the agents had to try \
         again after the start: {}",
        lapsed_agents.len(),
        lapsed.len(),
        if lapsed.is_empty() {
            String::new()
        } else {
            format!(
                " (e.g. {})",
                lapsed
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        sim.shared.retries.load(Ordering::Relaxed) - retries_before
    ));
    for p in problems {
        prop.note(p);
    }
    drop(sim);
    drop(fleet);
    Ok(vec![cpu, rss_fig, rtt, false_exp, silent, prop])
}
