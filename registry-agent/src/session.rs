//! The agent's side of the `AgentRegistry` protocol: one connection to one registry manager at
//! a time, carrying the watch stream (applied to the registry copy and persisted), the session
//! of this host (opened with the packages and their local status, kept alive with heartbeats
//! every third of the TTL) and status reports from the local checks.
//!
//! Which manager: first the `registry-manager` route of the copy (nearest first, the group contract (docs/ha.md)), then
//! the bootstrap `managers` list. A manager that cannot be reached is skipped at once for the
//! next; a full round that reaches none waits an exponential backoff with jitter, capped at
//! one second, before the next round.
//!
//! Session rules:
//! - a session is resumed on a new manager with its old id when possible (a replicated group
//!   knows it), and opened anew when the manager answers `ok = false`;
//! - `OpenSession` refused with `ALREADY_EXISTS` (the previous session of this host has not
//!   lapsed yet, for example after an agent restart) is retried every ~150 ms until it works;
//!   refused for longer than [`HELD_ELSEWHERE_WARN_TTLS`] TTLs, it is most likely another agent
//!   running with the same `host`: warned about once per episode;
//! - the session id and the TTL the manager granted are persisted; a restarted agent resumes
//!   with both (1 s when an old store has no TTL);
//! - no heartbeat ack for a whole TTL means the manager is gone: move to the next one;
//! - `starting` is only ever sent in `OpenSession`; reports carry `running`, `failing`,
//!   `stopped` changes, and again, at most once a second, a status the registry copy holds
//!   wrongly for one of this host's packages (see [`crate::report_plan`]).
//!
//! A whole round of candidates without reaching any manager is warned about once per episode
//! (the episode ends when a manager is reached again, logged at `info`).
//!
//! Watch events may carry a payload in parts (`WatchEvent.more`); they are reassembled (at most
//! 256 MiB) before being applied. A part sequence broken by another revision or kind restarts
//! the watch from the copy's revision.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use proto::v1 as pb;
use proto::v1::agent_registry_client::AgentRegistryClient;
use proto::watch_parts::Reassembler;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;
use topology::{HostName, PackageStatus, PackageType};

use crate::bootstrap::Bootstrap;
use crate::checks::Statuses;
use crate::config::PackageConfig;
use crate::copy_store::CopyStore;
use crate::health_view::HealthView;
use crate::registry_copy::{status_to_wire, Applied, Decoded, RegistryCopy};
use crate::report_plan::{plan_reports, LastReport, ReportReason, REREPORT_EVERY};
use crate::route_book::RouteBook;

/// The package type of registry managers (the group contract (docs/ha.md)).
pub const REGISTRY_MANAGER_TYPE: &str = "registry-manager";

/// The TTL assumed for a session whose granted TTL is not known (a store written before the
/// TTL was kept, or a manager answering `ttl_ms = 0`).
pub const FALLBACK_TTL: Duration = Duration::from_secs(1);

/// `OpenSession` refused with `ALREADY_EXISTS` for this many TTLs is warned about: the previous
/// session of a restarted agent lapses within one TTL, so this is most likely another agent
/// holding the host.
pub const HELD_ELSEWHERE_WARN_TTLS: u32 = 3;

/// Timing of the session client.
#[derive(Debug, Clone, Copy)]
pub struct SessionTiming {
    /// Connect timeout to one manager.
    pub connect_timeout: Duration,
    /// Timeout of one unary call.
    pub call_timeout: Duration,
    /// First backoff after a round that reached no manager.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_cap: Duration,
    /// Retry period of `OpenSession` refused with `ALREADY_EXISTS`.
    pub already_exists_retry: Duration,
    /// Retry period of `OpenSession` refused because the topology does not name this host.
    pub unknown_host_retry: Duration,
}

impl Default for SessionTiming {
    fn default() -> Self {
        SessionTiming {
            connect_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(1),
            already_exists_retry: Duration::from_millis(150),
            unknown_host_retry: Duration::from_secs(1),
        }
    }
}

/// One episode of a trouble that is worth a single warning, not one per retry. Pure value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Episode {
    since: Option<Instant>,
    warned: bool,
}

impl Episode {
    /// The trouble is seen at `now` (an episode starts if none is under way). True once per
    /// episode: the first time it is seen after lasting at least `warn_after`.
    pub fn seen(&mut self, now: Instant, warn_after: Duration) -> bool {
        let since = *self.since.get_or_insert(now);
        if self.warned || now.saturating_duration_since(since) < warn_after {
            return false;
        }
        self.warned = true;
        true
    }

    /// How long the episode under way has lasted at `now` (zero when none is).
    pub fn lasted(&self, now: Instant) -> Duration {
        self.since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// The trouble is over. Returns how long it lasted when it was warned about (so its end
    /// can be logged too), else `None`.
    pub fn end(&mut self, now: Instant) -> Option<Duration> {
        let warned = self.warned.then(|| self.lasted(now));
        *self = Episode::default();
        warned
    }
}

/// Exponential backoff with full jitter in [d/2, d].
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let lo = d / 2;
        lo + rand::rng().random_range(Duration::ZERO..=d - lo)
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[derive(Debug)]
struct Session {
    id: String,
    ttl: Duration,
    confirmed: bool,
}

#[derive(Debug)]
enum KaEvent {
    Confirmed,
    Rejected(String),
    Lost(String),
}

/// Why a connection ended.
#[derive(Debug)]
enum ConnEnd {
    /// Never got going: try the next manager at once.
    Unreachable(String),
    /// Worked for a while, then failed.
    Lost(String),
}

/// The session client task.
#[derive(Debug)]
pub struct SessionClient {
    /// This host.
    pub host: HostName,
    /// Its packages.
    pub packages: Vec<PackageConfig>,
    /// Local check results.
    pub statuses: watch::Receiver<Statuses>,
    /// The registry copy.
    pub copy: Arc<RwLock<RegistryCopy>>,
    /// Bumped when the copy changes.
    pub copy_changed: watch::Sender<u64>,
    /// True while there is no live session + watch.
    pub stale: watch::Sender<bool>,
    /// Persistence.
    pub store: CopyStore,
    /// Routes (for the `registry-manager` route).
    pub book: watch::Receiver<Arc<RouteBook>>,
    /// Health view (unreachable routed managers are held down).
    pub health: Arc<HealthView>,
    /// Bootstrap list.
    pub bootstrap: Bootstrap,
    /// Timing.
    pub timing: SessionTiming,
}

/// Per-process session state, kept across connections.
#[derive(Debug, Default)]
struct State {
    session: Option<Session>,
    /// What the registry was last told and when (or, after a restart, what it is believed to
    /// hold).
    reported: BTreeMap<PackageType, LastReport>,
    /// Packages whose contradicted status was reported again (warned once per episode).
    contradicted: BTreeSet<PackageType>,
    /// When to plan the reports again even if nothing changes.
    report_recheck: Option<Instant>,
    /// The TTL the manager last granted (or the persisted one).
    granted_ttl: Option<Duration>,
    /// Before the first `OpenSession`, wait this long for the checks to settle so the
    /// registration carries real statuses rather than `starting`.
    settle_until: Option<Instant>,
    /// No manager reached in a whole round of candidates.
    unreachable: Episode,
    /// `OpenSession` refused with `ALREADY_EXISTS`.
    held_elsewhere: Episode,
}

impl State {
    /// The session's TTL as best known.
    fn ttl(&self) -> Duration {
        self.session
            .as_ref()
            .map(|s| s.ttl)
            .or(self.granted_ttl)
            .unwrap_or(FALLBACK_TTL)
    }
}

impl SessionClient {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut state = State::default();
        match self.store.load_session() {
            Ok(Some(saved)) => {
                // A restarted agent resumes its previous session if the registry still has it;
                // the registry then still holds its last reports.
                let copy = self.copy.read().unwrap_or_else(|p| p.into_inner());
                if let Some(me) = copy.snapshot.hosts.get(self.host.as_str()) {
                    state.reported = me
                        .packages
                        .iter()
                        .map(|(t, p)| {
                            let last = LastReport {
                                status: p.status,
                                at: None,
                            };
                            (t.clone(), last)
                        })
                        .collect();
                }
                if saved.ttl.is_none() {
                    tracing::info!(
                        ttl = ?FALLBACK_TTL,
                        "the persisted session has no TTL (older store); resuming with the fallback"
                    );
                }
                state.granted_ttl = saved.ttl;
                state.session = Some(Session {
                    id: saved.id,
                    ttl: saved.ttl.unwrap_or(FALLBACK_TTL),
                    confirmed: false,
                });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the previous session id"),
        }
        let settle = self
            .packages
            .iter()
            .map(|p| p.interval.saturating_mul(p.rise) + Duration::from_millis(50))
            .max()
            .unwrap_or_default()
            .min(Duration::from_secs(2));
        state.settle_until = Some(Instant::now() + settle);

        let mut backoff = Backoff::new(self.timing.backoff_base, self.timing.backoff_cap);
        loop {
            let candidates = self.candidates().await;
            if candidates.is_empty() && state.unreachable.seen(Instant::now(), Duration::ZERO) {
                tracing::warn!(
                    "no registry manager address to try (empty route and bootstrap list); answering from the registry copy (stale: true). List the registry managers in `managers` of the agent configuration"
                );
            }
            let mut reached = false;
            let mut tried: Vec<String> = Vec::new();
            let mut last_reason = String::new();
            for (addr, routed_host) in candidates {
                if shutdown.is_cancelled() {
                    return;
                }
                let end = self.serve(&addr, &mut state, &shutdown).await;
                self.stale.send_if_modified(|s| !std::mem::replace(s, true));
                match end {
                    Ok(()) => return,
                    Err(ConnEnd::Unreachable(why)) => {
                        tracing::debug!(manager = %addr, reason = %why, "registry manager unreachable; trying the next");
                        tried.push(addr.clone());
                        last_reason = why;
                        if let Some(h) = routed_host {
                            if let Ok(t) = PackageType::new(REGISTRY_MANAGER_TYPE) {
                                self.health.mark_down(&t, &h, &addr);
                            }
                        }
                    }
                    Err(ConnEnd::Lost(why)) => {
                        tracing::warn!(manager = %addr, reason = %why, "lost the registry manager; trying the next");
                        reached = true;
                        backoff.reset();
                    }
                }
            }
            if !reached && !tried.is_empty() {
                let now = Instant::now();
                if state.unreachable.seen(now, Duration::ZERO) {
                    tracing::warn!(
                        tried = ?tried,
                        last_error = %last_reason,
                        "no registry manager reachable in a whole round of candidates; answering from the registry copy (stale: true) and retrying. Check that the registry managers run and that this host reaches them (`managers` in the agent configuration, addresses, firewalls)"
                    );
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Routed registry managers first (nearest first), then the bootstrap list.
    async fn candidates(&self) -> Vec<(String, Option<HostName>)> {
        let mut v: Vec<(String, Option<HostName>)> = Vec::new();
        if let Some(r) = self.book.borrow().get(REGISTRY_MANAGER_TYPE) {
            for t in &r.order {
                v.push((t.endpoint.clone(), Some(t.host.clone())));
            }
        }
        for a in self.bootstrap.addresses().await {
            if !v.iter().any(|(e, _)| *e == a) {
                v.push((a, None));
            }
        }
        v
    }

    async fn connect(&self, addr: &str) -> Result<Channel, String> {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address: {e}"))?
            .connect_timeout(self.timing.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        match tokio::time::timeout(self.timing.connect_timeout * 2, ep.connect()).await {
            Ok(Ok(ch)) => Ok(ch),
            Ok(Err(e)) => Err(format!("connect: {e}")),
            Err(_) => Err("connect timed out".into()),
        }
    }

    async fn open_watch(
        &self,
        client: &mut AgentRegistryClient<Channel>,
        from: u64,
    ) -> Result<tonic::Streaming<pb::WatchEvent>, String> {
        let history = self
            .copy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .history
            .clone();
        let req = pb::WatchRequest {
            from_revision: from,
            host: self.host.as_str().to_owned(),
            history,
        };
        match tokio::time::timeout(self.timing.call_timeout, client.watch(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(format!("watch refused: {} {}", s.code(), s.message())),
            Err(_) => Err("watch: no answer".into()),
        }
    }

    /// Applies one event to the copy, notifies, persists.
    async fn apply(&self, ev: &pb::WatchEvent) -> Result<(), crate::registry_copy::CopyError> {
        let (res, history, had) = {
            let mut c = self.copy.write().unwrap_or_else(|p| p.into_inner());
            let before = c.history.clone();
            let had = c.revision();
            let res = c.apply_event(ev);
            (res, (c.history != before).then(|| c.history.clone()), had)
        };
        let (applied, decoded) = res?;
        if applied == Applied::Snapshot && had > 0 {
            tracing::info!(
                from_revision = had,
                revision = ev.revision,
                "registry copy replaced by a full snapshot"
            );
        }
        if applied == Applied::Ignored {
            return Ok(());
        }
        self.copy_changed.send_modify(|g| *g += 1);
        let saved = match &decoded {
            Decoded::Snapshot(s) => self.store.save_state(s).await,
            Decoded::Delta(d) => self.store.save_delta(d).await,
        };
        if let Err(e) = saved {
            tracing::error!(error = %e, "cannot persist the registry copy; answering from memory");
        }
        // After the state it names, so a crash in between never pairs an old copy with a new history.
        if let Some(h) = history {
            if let Err(e) = self.store.save_history(&h).await {
                tracing::error!(error = %e, "cannot persist the registry's history id");
            }
        }
        Ok(())
    }

    fn spawn_keepalive(
        &self,
        client: &AgentRegistryClient<Channel>,
        session: &Session,
        cancel: CancellationToken,
    ) -> mpsc::Receiver<KaEvent> {
        let (ev_tx, ev_rx) = mpsc::channel(4);
        let mut client = client.clone();
        let hb = pb::Heartbeat {
            session_id: session.id.clone(),
            host: self.host.as_str().to_owned(),
        };
        let ttl = session.ttl;
        tokio::spawn(async move {
            let send = |e: KaEvent| {
                let ev_tx = ev_tx.clone();
                async move {
                    let _ = ev_tx.send(e).await;
                }
            };
            let (hb_tx, hb_rx) = mpsc::channel::<pb::Heartbeat>(4);
            let _ = hb_tx.try_send(hb.clone());
            let call = client.keep_alive(tokio_stream::wrappers::ReceiverStream::new(hb_rx));
            let mut acks = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(ttl.max(Duration::from_millis(500)), call) => match r {
                    Ok(Ok(r)) => r.into_inner(),
                    Ok(Err(s)) => return send(KaEvent::Lost(format!("keep-alive refused: {} {}", s.code(), s.message()))).await,
                    Err(_) => return send(KaEvent::Lost("keep-alive: no answer".into())).await,
                },
            };
            let period = (ttl / 3).max(Duration::from_millis(10));
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_ack = Instant::now();
            let mut confirmed = false;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        if last_ack.elapsed() > ttl {
                            return send(KaEvent::Lost(format!("no heartbeat ack for {ttl:?}: the manager is not answering"))).await;
                        }
                        let _ = hb_tx.try_send(hb.clone());
                    }
                    m = acks.message() => match m {
                        Ok(Some(a)) if a.ok => {
                            last_ack = Instant::now();
                            if !confirmed {
                                confirmed = true;
                                send(KaEvent::Confirmed).await;
                            }
                        }
                        Ok(Some(a)) => return send(KaEvent::Rejected(a.reason)).await,
                        Ok(None) => return send(KaEvent::Lost("keep-alive stream ended".into())).await,
                        Err(s) => return send(KaEvent::Lost(format!("keep-alive: {} {}", s.code(), s.message()))).await,
                    },
                }
            }
        });
        ev_rx
    }

    /// One connection to one manager, until it fails or `shutdown`.
    async fn serve(
        &self,
        addr: &str,
        state: &mut State,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnEnd> {
        let channel = self.connect(addr).await.map_err(ConnEnd::Unreachable)?;
        let mut client = AgentRegistryClient::new(channel);
        let from = self
            .copy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revision();
        let mut watch = self
            .open_watch(&mut client, from)
            .await
            .map_err(ConnEnd::Unreachable)?;
        tracing::info!(manager = %addr, from_revision = from, "connected to registry manager; watching");
        if let Some(lasted) = state.unreachable.end(Instant::now()) {
            tracing::info!(manager = %addr, after = ?lasted, "reached a registry manager again");
        }
        // Large payloads arrive in parts (`WatchEvent.more`); one reassembler per watch stream.
        let mut parts = Reassembler::default();

        // Cancels this connection's keep-alive task when the connection ends.
        let conn_guard = CancellationToken::new();
        let _drop_guard = conn_guard.clone().drop_guard();
        let mut ka_events: Option<mpsc::Receiver<KaEvent>> = None;
        let mut open_at: Option<Instant> = None;
        let mut unknown_host = false;
        match &mut state.session {
            Some(s) => {
                s.confirmed = false;
                ka_events = Some(self.spawn_keepalive(&client, s, conn_guard.child_token()));
            }
            None => open_at = Some(state.settle_until.unwrap_or_else(Instant::now)),
        }
        let mut statuses = self.statuses.clone();
        // A host without packages has no check task: its status channel is closed at once.
        let mut statuses_open = true;
        state.report_recheck = None;
        loop {
            let live = state.session.as_ref().is_some_and(|s| s.confirmed);
            let stale = !live;
            self.stale
                .send_if_modified(|s| std::mem::replace(s, stale) != stale);
            let open_sleep = async {
                match open_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let ka_next = async {
                match ka_events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let recheck = state.report_recheck;
            let recheck_sleep = async {
                match recheck {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = watch.message() => match msg {
                    Ok(Some(ev)) => {
                        let ev = match parts.push(ev) {
                            Ok(Some(ev)) => ev,
                            Ok(None) => continue,
                            Err(e) => {
                                let from = self.copy.read().unwrap_or_else(|p| p.into_inner()).revision();
                                tracing::warn!(error = %e, from_revision = from, "restarting the watch from the copy's revision");
                                watch = self.open_watch(&mut client, from).await.map_err(ConnEnd::Lost)?;
                                parts = Reassembler::default();
                                continue;
                            }
                        };
                        if let Err(e) = self.apply(&ev).await {
                            tracing::warn!(error = %e, "restarting the watch from a fresh snapshot");
                            watch = self.open_watch(&mut client, 0).await.map_err(ConnEnd::Lost)?;
                            parts = Reassembler::default();
                        } else if unknown_host && state.session.is_none() {
                            open_at = Some(Instant::now());
                        } else if state.session.as_ref().is_some_and(|s| s.confirmed) {
                            // The copy may now hold a status of this host's packages that its
                            // checks contradict.
                            self.report_changes(&mut client, state, &mut open_at, &mut ka_events).await?;
                        }
                    }
                    Ok(None) => return Err(ConnEnd::Lost("watch stream ended".into())),
                    Err(s) => return Err(ConnEnd::Lost(format!("watch: {} {}", s.code(), s.message()))),
                },
                ev = ka_next => match ev {
                    Some(KaEvent::Confirmed) => {
                        if let Some(s) = &mut state.session {
                            if !s.confirmed {
                                s.confirmed = true;
                                tracing::info!(manager = %addr, ttl = ?s.ttl, "session resumed");
                            }
                        }
                        state.held_elsewhere = Episode::default();
                        self.report_changes(&mut client, state, &mut open_at, &mut ka_events).await?;
                    }
                    Some(KaEvent::Rejected(reason)) => {
                        tracing::info!(manager = %addr, %reason, "session not known to the manager; opening a new one");
                        state.session = None;
                        ka_events = None;
                        open_at = Some(Instant::now());
                        if let Err(e) = self.store.save_session(None).await {
                            tracing::warn!(error = %e, "cannot forget the session id");
                        }
                    }
                    Some(KaEvent::Lost(reason)) => return Err(ConnEnd::Lost(reason)),
                    None => return Err(ConnEnd::Lost("keep-alive task ended".into())),
                },
                _ = open_sleep => {
                    open_at = None;
                    let settled = !statuses.borrow().values().any(|s| *s == PackageStatus::Starting);
                    if let (Some(until), false) = (state.settle_until, settled) {
                        if Instant::now() < until {
                            open_at = Some(until);
                            continue;
                        }
                    }
                    state.settle_until = None;
                    match self.open_session(&mut client, state).await {
                        Ok(()) => {
                            unknown_host = false;
                            if let Some(lasted) = state.held_elsewhere.end(Instant::now()) {
                                tracing::info!(manager = %addr, after = ?lasted, "session of this host opened after being held by another");
                            }
                            let s = state.session.as_ref().expect("just opened");
                            tracing::info!(manager = %addr, ttl = ?s.ttl, "session opened");
                            ka_events = Some(self.spawn_keepalive(&client, s, conn_guard.child_token()));
                            self.report_changes(&mut client, state, &mut open_at, &mut ka_events).await?;
                        }
                        Err(s) if s.code() == Code::AlreadyExists => {
                            let now = Instant::now();
                            let warn_after = state.ttl().saturating_mul(HELD_ELSEWHERE_WARN_TTLS);
                            if state.held_elsewhere.seen(now, warn_after) {
                                tracing::warn!(
                                    manager = %addr,
                                    host = %self.host,
                                    refused_for = ?state.held_elsewhere.lasted(now),
                                    message = %s.message(),
                                    "the registry keeps refusing this host's session (ALREADY_EXISTS): another live session holds host {:?}, most likely another agent running with the same `host` (on this machine or another). Stop it or correct `host` in one of the configurations; meanwhile this agent retries and answers from its copy (stale: true)",
                                    self.host.as_str()
                                );
                            } else {
                                tracing::debug!(manager = %addr, "previous session of this host not lapsed yet; retrying");
                            }
                            let j = rand::rng().random_range(0..=self.timing.already_exists_retry.as_millis() as u64 / 2);
                            open_at = Some(Instant::now() + self.timing.already_exists_retry + Duration::from_millis(j));
                        }
                        Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument | Code::PermissionDenied | Code::FailedPrecondition) => {
                            if !unknown_host {
                                tracing::warn!(manager = %addr, code = %s.code(), message = %s.message(), "session refused; retrying while watching");
                            }
                            unknown_host = true;
                            open_at = Some(Instant::now() + self.timing.unknown_host_retry);
                        }
                        Err(s) => return Err(ConnEnd::Lost(format!("open session: {} {}", s.code(), s.message()))),
                    }
                }
                _ = recheck_sleep => {
                    state.report_recheck = None;
                    if state.session.as_ref().is_some_and(|s| s.confirmed) {
                        self.report_changes(&mut client, state, &mut open_at, &mut ka_events).await?;
                    }
                }
                r = statuses.changed(), if statuses_open => {
                    if r.is_err() {
                        statuses_open = false;
                        continue;
                    }
                    if state.session.as_ref().is_some_and(|s| s.confirmed) {
                        self.report_changes(&mut client, state, &mut open_at, &mut ka_events).await?;
                    } else if state.session.is_none()
                        && state.settle_until.is_some()
                        && !statuses.borrow().values().any(|s| *s == PackageStatus::Starting)
                    {
                        open_at = Some(Instant::now());
                    }
                }
            }
        }
    }

    async fn open_session(
        &self,
        client: &mut AgentRegistryClient<Channel>,
        state: &mut State,
    ) -> Result<(), tonic::Status> {
        let current = self.statuses.borrow().clone();
        let packages = self
            .packages
            .iter()
            .map(|p| {
                let status = current
                    .get(&p.package_type)
                    .copied()
                    .unwrap_or(PackageStatus::Starting);
                pb::Package {
                    r#type: p.package_type.as_str().to_owned(),
                    endpoint: p.endpoint.clone(),
                    status: status_to_wire(status) as i32,
                }
            })
            .collect();
        let req = pb::OpenSessionRequest {
            host: self.host.as_str().to_owned(),
            packages,
        };
        let resp = tokio::time::timeout(self.timing.call_timeout, client.open_session(req))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("open session: no answer"))??
            .into_inner();
        let ttl = if resp.ttl_ms == 0 {
            FALLBACK_TTL
        } else {
            Duration::from_millis(resp.ttl_ms)
        };
        let now = Instant::now();
        state.reported = current
            .into_iter()
            .map(|(t, status)| {
                let last = LastReport {
                    status,
                    at: Some(now),
                };
                (t, last)
            })
            .collect();
        state.contradicted.clear();
        state.granted_ttl = Some(ttl);
        if let Err(e) = self.store.save_session(Some((&resp.session_id, ttl))).await {
            tracing::warn!(error = %e, "cannot persist the session id");
        }
        state.session = Some(Session {
            id: resp.session_id,
            ttl,
            confirmed: true,
        });
        Ok(())
    }

    /// The statuses the registry copy holds for this host's packages.
    fn registry_statuses(&self) -> BTreeMap<PackageType, PackageStatus> {
        let copy = self.copy.read().unwrap_or_else(|p| p.into_inner());
        copy.snapshot
            .hosts
            .get(self.host.as_str())
            .map(|h| {
                h.packages
                    .iter()
                    .map(|(t, p)| (t.clone(), p.status))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reports every status that differs from what the registry was told, and again (at most
    /// once per [`REREPORT_EVERY`]) every status the registry copy contradicts (see
    /// [`plan_reports`]).
    async fn report_changes(
        &self,
        client: &mut AgentRegistryClient<Channel>,
        state: &mut State,
        open_at: &mut Option<Instant>,
        ka_events: &mut Option<mpsc::Receiver<KaEvent>>,
    ) -> Result<(), ConnEnd> {
        state.report_recheck = None;
        if !state.session.as_ref().is_some_and(|s| s.confirmed) {
            return Ok(());
        }
        let current = self.statuses.borrow().clone();
        let registry = self.registry_statuses();
        let plan = plan_reports(
            &current,
            &registry,
            &state.reported,
            Instant::now(),
            REREPORT_EVERY,
        );
        state.contradicted.retain(|t| plan.contradicted.contains(t));
        let mut recheck = plan.recheck_at;
        for report in plan.reports {
            let (t, s) = (report.package_type, report.status);
            let Some(session) = state.session.as_ref().filter(|s| s.confirmed) else {
                return Ok(());
            };
            let req = pb::ReportStatusRequest {
                session_id: session.id.clone(),
                host: self.host.as_str().to_owned(),
                r#type: t.as_str().to_owned(),
                status: status_to_wire(s) as i32,
            };
            match tokio::time::timeout(self.timing.call_timeout, client.report_status(req)).await {
                Ok(Ok(r)) => {
                    let revision = r.into_inner().revision;
                    match report.reason {
                        ReportReason::Changed => {
                            state.contradicted.remove(&t);
                            tracing::info!(package_type = %t, status = %s, revision, "status reported");
                        }
                        ReportReason::Contradicted { registry } => {
                            if state.contradicted.insert(t.clone()) {
                                tracing::warn!(package_type = %t, registry = %registry, local = %s, revision, "the registry holds a status of this host's package that its local check contradicts; reported the local status again (at most once a second until the registry agrees)");
                            } else {
                                tracing::debug!(package_type = %t, registry = %registry, local = %s, revision, "status reported again");
                            }
                        }
                    }
                    let at = Instant::now();
                    state.reported.insert(
                        t,
                        LastReport {
                            status: s,
                            at: Some(at),
                        },
                    );
                    // Look again once the registry had time to agree.
                    let due = at + REREPORT_EVERY;
                    recheck = Some(recheck.map_or(due, |r| r.min(due)));
                }
                Ok(Err(e)) if matches!(e.code(), Code::NotFound | Code::FailedPrecondition) => {
                    tracing::info!(code = %e.code(), message = %e.message(), "session no longer valid; opening a new one");
                    state.session = None;
                    *ka_events = None;
                    *open_at = Some(Instant::now());
                    return Ok(());
                }
                Ok(Err(e)) => {
                    return Err(ConnEnd::Lost(format!(
                        "report status: {} {}",
                        e.code(),
                        e.message()
                    )))
                }
                Err(_) => return Err(ConnEnd::Lost("report status: no answer".into())),
            }
        }
        state.report_recheck = recheck;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let d0 = b.next_delay();
        assert!(
            d0 >= Duration::from_millis(25) && d0 <= Duration::from_millis(50),
            "{d0:?}"
        );
        let d1 = b.next_delay();
        assert!(
            d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
            "{d1:?}"
        );
        for _ in 0..3 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        for _ in 0..40 {
            let d = b.next_delay();
            assert!(
                d <= Duration::from_secs(1) && d >= Duration::from_millis(500),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
    }

    #[test]
    fn an_episode_warns_once_after_lasting_long_enough() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut e = Episode::default();
        assert_eq!(e.lasted(t0), Duration::ZERO);
        // ALREADY_EXISTS every 150 ms: warned once it lasted 3 TTLs (TTL 1 s), never again.
        let warn_after = FALLBACK_TTL * HELD_ELSEWHERE_WARN_TTLS;
        let warned: Vec<u64> = (0..40)
            .map(|i| i * 150)
            .filter(|&at| e.seen(t0 + ms(at), warn_after))
            .collect();
        assert_eq!(warned, [3000]);
        assert_eq!(e.lasted(t0 + ms(6000)), ms(6000));
        // Its end is reported with how long it lasted, then a new episode warns again.
        assert_eq!(e.end(t0 + ms(6000)), Some(ms(6000)));
        assert_eq!(e.end(t0 + ms(6100)), None);
        assert!(!e.seen(t0 + ms(7000), warn_after));
        assert!(e.seen(t0 + ms(10_000), warn_after));
    }

    #[test]
    fn an_episode_that_ends_before_its_warning_is_not_reported() {
        let t0 = Instant::now();
        let mut e = Episode::default();
        assert!(!e.seen(t0, Duration::from_secs(3)));
        assert_eq!(e.end(t0 + Duration::from_secs(1)), None);
        // A zero threshold (a whole round of managers unreachable) warns at the first one.
        assert!(e.seen(t0 + Duration::from_secs(2), Duration::ZERO));
        assert!(!e.seen(t0 + Duration::from_secs(3), Duration::ZERO));
    }

    #[test]
    fn the_ttl_is_the_session_s_else_the_granted_one_else_the_fallback() {
        let mut st = State::default();
        assert_eq!(st.ttl(), FALLBACK_TTL);
        st.granted_ttl = Some(Duration::from_millis(300));
        assert_eq!(st.ttl(), Duration::from_millis(300));
        st.session = Some(Session {
            id: "s".into(),
            ttl: Duration::from_secs(5),
            confirmed: false,
        });
        assert_eq!(st.ttl(), Duration::from_secs(5));
    }
}
