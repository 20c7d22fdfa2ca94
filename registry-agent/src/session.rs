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
//! - no heartbeat answer for four heartbeat periods means the manager is gone: move to the
//!   next one (the agent asks for an answer to every second heartbeat, `sparse_acks`; see
//!   [`crate::session_machine::ack_silence_limit`]);
//! - `starting` is only ever sent in `OpenSession`; reports carry `running`, `failing`,
//!   `stopped` changes, and again, at most once a second, a status the registry copy holds
//!   wrongly for one of this host's packages (see [`crate::report_plan`]).
//!
//! A whole round of candidates without reaching any manager is warned about once per episode
//! (the episode ends when a manager is reached again, logged at `info`).
//!
//! The protocol decisions of these rules (and their once-per-episode warnings) are taken by the
//! pure [`crate::session_machine::SessionMachine`]; this module is its driver: it turns socket,
//! timer and channel results into events, and carries out the machine's actions (the gRPC calls,
//! the keep-alive task, persistence, the `stale` flag, the log lines).
//!
//! Watch events may carry a payload in parts (`WatchEvent.more`); they are reassembled (at most
//! 256 MiB) before being applied. A part sequence broken by another revision or kind restarts
//! the watch from the copy's revision.

use std::collections::VecDeque;
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
use topology::{HostName, PackageStatus, PackageType};

use crate::bootstrap::Bootstrap;
use crate::checks::Statuses;
use crate::config::PackageConfig;
use crate::copy_store::CopyStore;
use crate::health_view::HealthView;
use crate::registry_copy::{status_to_wire, Applied, Decoded, RegistryCopy};
use crate::route_book::RouteBook;
use crate::session_machine::{
    ack_silence_limit, heartbeat_period, Action, Event, Note, OpenResult, OpenRetry, ReportResult,
    SessionMachine,
};
pub use crate::session_machine::{Episode, FALLBACK_TTL, HELD_ELSEWHERE_WARN_TTLS};

/// The package type of registry managers (the group contract (docs/ha.md)).
pub const REGISTRY_MANAGER_TYPE: &str = "registry-manager";

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
    /// Mutual TLS toward the managers (`tls:`); none: plaintext.
    pub tls: Option<proto::crl::ClientTls>,
}

impl SessionClient {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let restored = match self.store.load_session() {
            Ok(Some(saved)) => {
                // A restarted agent resumes its previous session if the registry still has it;
                // the registry then still holds its last reports.
                Some(Event::Restored {
                    id: saved.id,
                    ttl: saved.ttl,
                    registry: self.registry_statuses(),
                })
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the previous session id");
                None
            }
        };
        let settle = self
            .packages
            .iter()
            .map(|p| p.interval.saturating_mul(p.rise) + Duration::from_millis(50))
            .max()
            .unwrap_or_default()
            .min(Duration::from_secs(2));
        let retry = OpenRetry {
            already_exists: self.timing.already_exists_retry,
            unknown_host: self.timing.unknown_host_retry,
        };
        let mut machine = SessionMachine::new(retry, Instant::now() + settle);
        if let Some(ev) = restored {
            self.log_all(None, machine.handle(ev));
        }

        let mut backoff = Backoff::new(self.timing.backoff_base, self.timing.backoff_cap);
        loop {
            let candidates = self.candidates().await;
            let count = candidates.len();
            let mut reached = false;
            let mut tried: Vec<String> = Vec::new();
            let mut last_reason = String::new();
            for (addr, routed_host) in candidates {
                if shutdown.is_cancelled() {
                    return;
                }
                let end = self.serve(&addr, &mut machine, &shutdown).await;
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
            let round = Event::RoundEnded {
                now: Instant::now(),
                candidates: count,
                reached,
                tried,
                last_error: last_reason,
            };
            self.log_all(None, machine.handle(round));
            if !reached {
                // Every manager known is lost: ask DNS again, whatever the records' TTL said.
                self.bootstrap.forget();
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Logs the notes among `actions` (events outside a connection only give notes).
    fn log_all(&self, manager: Option<&str>, actions: Vec<Action>) {
        for a in actions {
            debug_assert!(matches!(a, Action::Log(_)), "outside a connection: {a:?}");
            if let Action::Log(note) = a {
                self.log(manager, &note);
            }
        }
    }

    /// Logs what the machine noted, at its level, with the manager of the connection.
    fn log(&self, manager: Option<&str>, note: &Note) {
        let manager = manager.unwrap_or_default();
        match note {
            Note::RestoredWithoutTtl => tracing::info!(
                ttl = ?FALLBACK_TTL,
                "the persisted session has no TTL (older store); resuming with the fallback"
            ),
            Note::NoManagerAddress => tracing::warn!(
                "no registry manager address to try (empty route and bootstrap list); answering from the registry copy (stale: true). List the registry managers in `managers` of the agent configuration"
            ),
            Note::NoneReachable { tried, last_error } => tracing::warn!(
                tried = ?tried,
                last_error = %last_error,
                "no registry manager reachable in a whole round of candidates; answering from the registry copy (stale: true) and retrying. Check that the registry managers run and that this host reaches them (`managers` in the agent configuration, addresses, firewalls)"
            ),
            Note::ReachedAgain { after } => {
                tracing::info!(manager = %manager, after = ?after, "reached a registry manager again")
            }
            Note::SessionResumed { ttl } => {
                tracing::info!(manager = %manager, ttl = ?ttl, "session resumed")
            }
            Note::SessionUnknown { reason } => tracing::info!(
                manager = %manager,
                %reason,
                "session not known to the manager; opening a new one"
            ),
            Note::SessionInvalid { code, message } => tracing::info!(
                code = %code,
                message = %message,
                "session no longer valid; opening a new one"
            ),
            Note::OpenedAfterHeld { after } => tracing::info!(
                manager = %manager,
                after = ?after,
                "session of this host opened after being held by another"
            ),
            Note::SessionOpened { ttl } => {
                tracing::info!(manager = %manager, ttl = ?ttl, "session opened")
            }
            Note::HeldElsewhere {
                refused_for,
                message,
            } => tracing::warn!(
                manager = %manager,
                host = %self.host,
                refused_for = ?refused_for,
                message = %message,
                "the registry keeps refusing this host's session (ALREADY_EXISTS): another live session holds host {:?}, most likely another agent running with the same `host` (on this machine or another). Stop it or correct `host` in one of the configurations; meanwhile this agent retries and answers from its copy (stale: true)",
                self.host.as_str()
            ),
            Note::NotLapsedYet => tracing::debug!(
                manager = %manager,
                "previous session of this host not lapsed yet; retrying"
            ),
            Note::SessionRefused { code, message } => tracing::warn!(
                manager = %manager,
                code = %code,
                message = %message,
                "session refused; retrying while watching"
            ),
            Note::StatusReported {
                package_type,
                status,
                revision,
            } => tracing::info!(
                package_type = %package_type,
                status = %status,
                revision,
                "status reported"
            ),
            Note::ContradictionReported {
                package_type,
                registry,
                local,
                revision,
                first: true,
            } => tracing::warn!(
                package_type = %package_type,
                registry = %registry,
                local = %local,
                revision,
                "the registry holds a status of this host's package that its local check contradicts; reported the local status again (at most once a second until the registry agrees)"
            ),
            Note::ContradictionReported {
                package_type,
                registry,
                local,
                revision,
                first: false,
            } => tracing::debug!(
                package_type = %package_type,
                registry = %registry,
                local = %local,
                revision,
                "status reported again"
            ),
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

    /// A channel to `addr`, and the certificate its manager showed (with TLS).
    async fn connect(
        &self,
        addr: &str,
    ) -> Result<(Channel, Option<Arc<proto::crl::Shown>>), String> {
        let (tls, shown) = match &self.tls {
            Some(t) => {
                let (t, shown) = t.recording();
                (Some(t), Some(shown))
            }
            None => (None, None),
        };
        let ep = proto::tls::endpoint(addr, tls.as_ref())?
            .connect_timeout(self.timing.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        match tokio::time::timeout(self.timing.connect_timeout * 2, ep.connect()).await {
            Ok(Ok(ch)) => Ok((ch, shown)),
            Ok(Err(e)) => Err(format!("connect: {}", proto::tls::error_chain(&e))),
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
            status_changes: true,
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
        id: String,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> mpsc::Receiver<KaEvent> {
        let (ev_tx, ev_rx) = mpsc::channel(4);
        let mut client = client.clone();
        let mut hb = pb::Heartbeat {
            session_id: id,
            host: self.host.as_str().to_owned(),
            seq: 1,
            sparse_acks: true,
        };
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
            let period = heartbeat_period(ttl);
            let silence_limit = ack_silence_limit(ttl);
            let mut tick = tokio::time::interval_at(Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_ack = Instant::now();
            let mut confirmed = false;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        if last_ack.elapsed() > silence_limit {
                            return send(KaEvent::Lost(format!("no heartbeat ack for {silence_limit:?}: the manager is not answering"))).await;
                        }
                        hb.seq += 1;
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

    /// One connection to one manager, until it fails or `shutdown`. The protocol decisions
    /// are the machine's; this turns what happens into its events and carries out its actions.
    async fn serve(
        &self,
        addr: &str,
        machine: &mut SessionMachine,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnEnd> {
        let (channel, shown) = self.connect(addr).await.map_err(ConnEnd::Unreachable)?;
        let client = AgentRegistryClient::new(channel);
        let mut conn = Conn {
            addr,
            client,
            guard: CancellationToken::new(),
            ka_events: None,
            open_at: None,
            recheck_at: None,
        };
        let from = self
            .copy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revision();
        let mut watch = self
            .open_watch(&mut conn.client, from)
            .await
            .map_err(ConnEnd::Unreachable)?;
        tracing::info!(manager = %addr, from_revision = from, "connected to registry manager; watching");
        // Large payloads arrive in parts (`WatchEvent.more`); one reassembler per watch stream.
        let mut parts = Reassembler::default();

        // Cancels this connection's keep-alive tasks when the connection ends.
        let _drop_guard = conn.guard.clone().drop_guard();
        self.step(
            machine,
            &mut conn,
            Event::Connected {
                now: Instant::now(),
            },
        )
        .await?;
        let mut statuses = self.statuses.clone();
        // A host without packages has no check task: its status channel is closed at once.
        let mut statuses_open = true;
        // When the revocation list in force names the certificate this manager showed, the
        // connection is dropped (the next handshake with it is refused).
        let revoked = async {
            match (&self.tls, &shown) {
                (Some(tls), Some(shown)) => {
                    let mut rx = tls.revoked();
                    let _ = rx
                        .wait_for(|r| shown.serial().is_some_and(|s| r.serials.contains(&s)))
                        .await;
                }
                _ => std::future::pending().await,
            }
        };
        tokio::pin!(revoked);
        loop {
            let open_at = conn.open_at;
            let open_sleep = async {
                match open_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let ka_next = async {
                match conn.ka_events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            let recheck = conn.recheck_at;
            let recheck_sleep = async {
                match recheck {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = &mut revoked => return Err(ConnEnd::Lost(
                    "the revocation list (tls.crl) names the certificate this manager showed: connecting to another".into(),
                )),
                msg = watch.message() => match msg {
                    Ok(Some(ev)) => {
                        let ev = match parts.push(ev) {
                            Ok(Some(ev)) => ev,
                            Ok(None) => continue,
                            Err(e) => {
                                let from = self.copy.read().unwrap_or_else(|p| p.into_inner()).revision();
                                tracing::warn!(error = %e, from_revision = from, "restarting the watch from the copy's revision");
                                watch = self.open_watch(&mut conn.client, from).await.map_err(ConnEnd::Lost)?;
                                parts = Reassembler::default();
                                continue;
                            }
                        };
                        if let Err(e) = self.apply(&ev).await {
                            tracing::warn!(error = %e, "restarting the watch from a fresh snapshot");
                            watch = self.open_watch(&mut conn.client, 0).await.map_err(ConnEnd::Lost)?;
                            parts = Reassembler::default();
                            continue;
                        }
                        Event::WatchApplied { now: Instant::now() }
                    }
                    Ok(None) => return Err(ConnEnd::Lost("watch stream ended".into())),
                    Err(s) => return Err(ConnEnd::Lost(format!("watch: {} {}", s.code(), s.message()))),
                },
                ev = ka_next => match ev {
                    Some(KaEvent::Confirmed) => Event::KeepAliveConfirmed,
                    Some(KaEvent::Rejected(reason)) => Event::KeepAliveRejected { now: Instant::now(), reason },
                    Some(KaEvent::Lost(reason)) => Event::KeepAliveLost { reason },
                    None => Event::KeepAliveLost { reason: "keep-alive task ended".into() },
                },
                _ = open_sleep => {
                    conn.open_at = None;
                    Event::OpenTimerFired { now: Instant::now(), settled: settled(&statuses.borrow()) }
                }
                _ = recheck_sleep => {
                    conn.recheck_at = None;
                    Event::RecheckTimerFired
                }
                r = statuses.changed(), if statuses_open => {
                    if r.is_err() {
                        statuses_open = false;
                        continue;
                    }
                    Event::StatusesChanged { now: Instant::now(), settled: settled(&statuses.borrow()) }
                }
            };
            self.step(machine, &mut conn, event).await?;
        }
    }

    /// Feeds `event` to the machine and carries out its actions in order; the answer of an
    /// action that asks for one is fed back before anything else happens.
    async fn step(
        &self,
        machine: &mut SessionMachine,
        conn: &mut Conn<'_>,
        event: Event,
    ) -> Result<(), ConnEnd> {
        let mut todo: VecDeque<Action> = machine.handle(event).into();
        while let Some(action) = todo.pop_front() {
            let answer = match action {
                Action::StartKeepAlive { id, ttl } => {
                    let rx = self.spawn_keepalive(&conn.client, id, ttl, conn.guard.child_token());
                    conn.ka_events = Some(rx);
                    None
                }
                Action::StopKeepAlive => {
                    conn.ka_events = None;
                    None
                }
                Action::OpenSession => Some(self.open_session(&mut conn.client).await),
                Action::ReportChanges => Some(Event::ReportInputs {
                    own: self.statuses.borrow().clone(),
                    registry: self.registry_statuses(),
                    now: Instant::now(),
                }),
                Action::SendReport {
                    session_id,
                    package_type,
                    status,
                } => {
                    let req = pb::ReportStatusRequest {
                        session_id,
                        host: self.host.as_str().to_owned(),
                        r#type: package_type.as_str().to_owned(),
                        status: status_to_wire(status) as i32,
                    };
                    let call = conn.client.report_status(req);
                    let result = match tokio::time::timeout(self.timing.call_timeout, call).await {
                        Ok(Ok(r)) => ReportResult::Reported {
                            revision: r.into_inner().revision,
                        },
                        Ok(Err(e)) => ReportResult::Error {
                            code: e.code(),
                            message: e.message().to_owned(),
                        },
                        Err(_) => ReportResult::NoAnswer,
                    };
                    Some(Event::ReportResult {
                        now: Instant::now(),
                        result,
                    })
                }
                Action::ScheduleOpen(at) => {
                    conn.open_at = Some(at);
                    None
                }
                Action::ScheduleRecheck(at) => {
                    conn.recheck_at = at;
                    None
                }
                Action::SaveSession(Some((id, ttl))) => {
                    if let Err(e) = self.store.save_session(Some((&id, ttl))).await {
                        tracing::warn!(error = %e, "cannot persist the session id");
                    }
                    None
                }
                Action::SaveSession(None) => {
                    if let Err(e) = self.store.save_session(None).await {
                        tracing::warn!(error = %e, "cannot forget the session id");
                    }
                    None
                }
                Action::SetStale(stale) => {
                    self.stale
                        .send_if_modified(|s| std::mem::replace(s, stale) != stale);
                    None
                }
                Action::Disconnect(reason) => return Err(ConnEnd::Lost(reason)),
                Action::Log(note) => {
                    self.log(Some(conn.addr), &note);
                    None
                }
            };
            if let Some(event) = answer {
                todo.extend(machine.handle(event));
            }
        }
        Ok(())
    }

    /// Calls `OpenSession` with the packages and their local status now.
    async fn open_session(&self, client: &mut AgentRegistryClient<Channel>) -> Event {
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
        let answer = tokio::time::timeout(self.timing.call_timeout, client.open_session(req))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("open session: no answer"))
            .and_then(|r| r);
        let result = match answer {
            Ok(resp) => {
                let resp = resp.into_inner();
                OpenResult::Opened {
                    id: resp.session_id,
                    ttl: Duration::from_millis(resp.ttl_ms),
                    sent: current,
                }
            }
            Err(s) => {
                let j = rand::rng()
                    .random_range(0..=self.timing.already_exists_retry.as_millis() as u64 / 2);
                OpenResult::from_error(s.code(), s.message(), Duration::from_millis(j))
            }
        };
        Event::OpenResult {
            now: Instant::now(),
            result,
        }
    }

    /// The statuses the registry copy holds for this host's packages.
    fn registry_statuses(&self) -> Statuses {
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
}

/// No local check says `starting`.
fn settled(statuses: &Statuses) -> bool {
    !statuses.values().any(|s| *s == PackageStatus::Starting)
}

/// One connection: what the driver keeps for it (the machine keeps the protocol state).
struct Conn<'a> {
    addr: &'a str,
    client: AgentRegistryClient<Channel>,
    /// Cancelled when the connection ends: stops its keep-alive tasks.
    guard: CancellationToken,
    /// The events of the keep-alive listened to.
    ka_events: Option<mpsc::Receiver<KaEvent>>,
    /// [`Action::ScheduleOpen`].
    open_at: Option<Instant>,
    /// [`Action::ScheduleRecheck`].
    recheck_at: Option<Instant>,
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
}
