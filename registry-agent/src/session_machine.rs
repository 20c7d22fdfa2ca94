//! The protocol decisions of the session client ([`crate::session`]) as a pure machine: events
//! in, actions out. No sockets, no tasks, no clock: every event that needs the time carries
//! `now`, and the one random value (the jitter of the `ALREADY_EXISTS` retry) comes with its
//! event, so the same events always give the same actions.
//!
//! The driver (`SessionClient` in [`crate::session`]) turns socket, timer and channel results
//! into [`Event`]s, feeds them to [`SessionMachine::handle`] and executes the [`Action`]s in
//! order. Three actions ask for an answer, fed back before anything else happens:
//! [`Action::OpenSession`] → [`Event::OpenResult`], [`Action::ReportChanges`] →
//! [`Event::ReportInputs`], [`Action::SendReport`] → [`Event::ReportResult`]; such an action is
//! always the last of its list. [`Action::Disconnect`] ends the connection (nothing follows it).
//!
//! The rules (see also the module docs of [`crate::session`]):
//! - on a new manager, a known session is resumed with its old id (keep-alive first; it is live
//!   once the first heartbeat is acknowledged), else a session is opened;
//! - a heartbeat answered `ok = false` forgets the session (persisted too) and opens anew at once;
//!   a report refused `NOT_FOUND` / `FAILED_PRECONDITION` opens anew at once as well;
//! - before the first `OpenSession` of the process, wait until no check says `starting` (or
//!   `settle_until`), so the registration carries real statuses;
//! - `OpenSession` refused with `ALREADY_EXISTS` is retried after `already_exists` plus the
//!   event's jitter, warned about once per episode after [`HELD_ELSEWHERE_WARN_TTLS`] TTLs;
//! - refused because the registry does not know this host (`NOT_FOUND`, `INVALID_ARGUMENT`,
//!   `PERMISSION_DENIED`, `FAILED_PRECONDITION`): warned once per connection, retried every
//!   `unknown_host`, and at once when the watch brings a change;
//! - any other failure of `OpenSession`, a report or the keep-alive ends the connection;
//! - reports follow [`crate::report_plan`]; a contradicted status is warned about once per
//!   episode;
//! - a whole round of managers unreachable (or none to try) is warned about once per episode,
//!   whose end is logged when a manager is reached again;
//! - `stale` is true while there is no confirmed session.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use topology::{PackageStatus, PackageType};

use crate::report_plan::{plan_reports, LastReport, Report, ReportReason, REREPORT_EVERY};

/// The TTL assumed for a session whose granted TTL is not known (a store written before the
/// TTL was kept, or a manager answering `ttl_ms = 0`).
pub const FALLBACK_TTL: Duration = Duration::from_secs(1);

/// `OpenSession` refused with `ALREADY_EXISTS` for this many TTLs is warned about: the previous
/// session of a restarted agent lapses within one TTL, so this is most likely another agent
/// holding the host.
pub const HELD_ELSEWHERE_WARN_TTLS: u32 = 3;

/// How often the agent sends a heartbeat: every third of the TTL (at least every 10 ms).
pub fn heartbeat_period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(10))
}

/// How long the agent waits for a heartbeat answer before it takes the manager for gone. The
/// agent asks for sparse answers (`Heartbeat.sparse_acks`): the manager answers every second
/// heartbeat, so answers normally come two periods apart. The limit allows two more periods
/// for a late one, as much slack as when every heartbeat was answered and the limit was a TTL.
pub fn ack_silence_limit(ttl: Duration) -> Duration {
    heartbeat_period(ttl) * 4
}

/// The status of every package of this host (the local checks), or of this host's packages in
/// the registry copy.
pub type Statuses = BTreeMap<PackageType, PackageStatus>;

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

/// Retry periods of `OpenSession`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenRetry {
    /// After `ALREADY_EXISTS` (plus the jitter of the event).
    pub already_exists: Duration,
    /// After a refusal because the registry does not know this host.
    pub unknown_host: Duration,
}

/// The answer to `OpenSession`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenResult {
    /// Opened.
    Opened {
        /// The session id.
        id: String,
        /// The TTL granted (zero: unknown, [`FALLBACK_TTL`] is used).
        ttl: Duration,
        /// The statuses the request carried.
        sent: Statuses,
    },
    /// Refused with `ALREADY_EXISTS`: another session holds this host.
    AlreadyExists {
        /// The manager's message.
        message: String,
        /// Added to the retry period (drawn in `0..=already_exists / 2`).
        jitter: Duration,
    },
    /// Refused because the registry does not know this host (or not with these packages).
    Refused {
        /// The code.
        code: Code,
        /// The manager's message.
        message: String,
    },
    /// Any other failure (including no answer): the connection ends with this reason.
    Failed {
        /// Why.
        reason: String,
    },
}

impl OpenResult {
    /// Sorts a failed `OpenSession` by its code. `jitter` is used for `ALREADY_EXISTS` only.
    pub fn from_error(code: Code, message: &str, jitter: Duration) -> OpenResult {
        match code {
            Code::AlreadyExists => OpenResult::AlreadyExists {
                message: message.to_owned(),
                jitter,
            },
            Code::NotFound
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::FailedPrecondition => OpenResult::Refused {
                code,
                message: message.to_owned(),
            },
            _ => OpenResult::Failed {
                reason: format!("open session: {code} {message}"),
            },
        }
    }
}

/// The answer to one `ReportStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportResult {
    /// Applied at this revision.
    Reported {
        /// The registry revision of the report.
        revision: u64,
    },
    /// Refused.
    Error {
        /// The code.
        code: Code,
        /// The manager's message.
        message: String,
    },
    /// No answer within the call timeout.
    NoAnswer,
}

/// Something that happened, with what the machine needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// At start: the persisted session, and the statuses the registry copy holds for this
    /// host's packages (what the registry is believed to hold; empty when the copy does not
    /// know this host).
    Restored {
        /// The session id.
        id: String,
        /// The TTL granted, if the store kept it.
        ttl: Option<Duration>,
        /// The statuses of this host's packages in the copy.
        registry: Statuses,
    },
    /// A round of candidate managers ended without a live connection to stay on.
    RoundEnded {
        /// Now.
        now: Instant,
        /// How many managers there were to try.
        candidates: usize,
        /// True when one of them was reached (and later lost).
        reached: bool,
        /// The managers that could not be reached.
        tried: Vec<String>,
        /// Why the last of them could not be.
        last_error: String,
    },
    /// A manager is reached and a watch is open on it. The connection starts with no timer.
    Connected {
        /// Now.
        now: Instant,
    },
    /// The first heartbeat of the keep-alive was acknowledged.
    KeepAliveConfirmed,
    /// A heartbeat was answered `ok = false`: the manager does not know the session.
    KeepAliveRejected {
        /// Now.
        now: Instant,
        /// The manager's reason.
        reason: String,
    },
    /// The keep-alive failed (refused, stream ended, no answer for four heartbeat periods, task ended).
    KeepAliveLost {
        /// Why.
        reason: String,
    },
    /// The time set by [`Action::ScheduleOpen`] came.
    OpenTimerFired {
        /// Now.
        now: Instant,
        /// No local check says `starting`.
        settled: bool,
    },
    /// The answer to [`Action::OpenSession`].
    OpenResult {
        /// When it came.
        now: Instant,
        /// What it says.
        result: OpenResult,
    },
    /// The local statuses changed.
    StatusesChanged {
        /// Now.
        now: Instant,
        /// No local check says `starting`.
        settled: bool,
    },
    /// A watch event was applied to the copy (or ignored as already known).
    WatchApplied {
        /// Now.
        now: Instant,
    },
    /// The time set by [`Action::ScheduleRecheck`] came.
    RecheckTimerFired,
    /// The answer to [`Action::ReportChanges`]: the statuses now.
    ReportInputs {
        /// Now.
        now: Instant,
        /// The local checks' statuses.
        own: Statuses,
        /// The statuses the registry copy holds for this host's packages.
        registry: Statuses,
    },
    /// The answer to [`Action::SendReport`].
    ReportResult {
        /// When it came.
        now: Instant,
        /// What it says.
        result: ReportResult,
    },
}

/// What the driver logs. Each kind has its level ([`Note::level`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// info: the persisted session has no TTL; resuming with [`FALLBACK_TTL`].
    RestoredWithoutTtl,
    /// warn: no registry manager address to try at all.
    NoManagerAddress,
    /// warn: a whole round of candidates reached no manager.
    NoneReachable {
        /// The managers tried.
        tried: Vec<String>,
        /// The last error.
        last_error: String,
    },
    /// info: a manager is reached again after [`Note::NoManagerAddress`] or
    /// [`Note::NoneReachable`].
    ReachedAgain {
        /// How long none was.
        after: Duration,
    },
    /// info: the session is resumed on this manager.
    SessionResumed {
        /// Its TTL.
        ttl: Duration,
    },
    /// info: the manager does not know the session; opening a new one.
    SessionUnknown {
        /// The manager's reason.
        reason: String,
    },
    /// info: a report was refused because the session is no longer valid; opening a new one.
    SessionInvalid {
        /// The code.
        code: Code,
        /// The manager's message.
        message: String,
    },
    /// info: the session opened after [`Note::HeldElsewhere`].
    OpenedAfterHeld {
        /// How long it was held by another.
        after: Duration,
    },
    /// info: the session is opened.
    SessionOpened {
        /// The TTL granted.
        ttl: Duration,
    },
    /// warn: `ALREADY_EXISTS` for [`HELD_ELSEWHERE_WARN_TTLS`] TTLs: another agent holds the host.
    HeldElsewhere {
        /// Since when.
        refused_for: Duration,
        /// The manager's message.
        message: String,
    },
    /// debug: `ALREADY_EXISTS`, the previous session has not lapsed yet.
    NotLapsedYet,
    /// warn: the session is refused (the registry does not know this host); retrying.
    SessionRefused {
        /// The code.
        code: Code,
        /// The manager's message.
        message: String,
    },
    /// info: a changed status was reported.
    StatusReported {
        /// The package.
        package_type: PackageType,
        /// The status.
        status: PackageStatus,
        /// The revision of the report.
        revision: u64,
    },
    /// warn (first time of an episode) or debug (again): a status the registry copy
    /// contradicts was reported again.
    ContradictionReported {
        /// The package.
        package_type: PackageType,
        /// What the copy holds.
        registry: PackageStatus,
        /// What the local check says (and was reported).
        local: PackageStatus,
        /// The revision of the report.
        revision: u64,
        /// The first report of this episode of contradiction (warned).
        first: bool,
    },
}

/// The level of a [`Note`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Details.
    Debug,
    /// Normal course of events.
    Info,
    /// Something an operator should look at.
    Warn,
}

impl Note {
    /// How loud this note is.
    pub fn level(&self) -> Level {
        match self {
            Note::NoManagerAddress
            | Note::NoneReachable { .. }
            | Note::HeldElsewhere { .. }
            | Note::SessionRefused { .. } => Level::Warn,
            Note::ContradictionReported { first: true, .. } => Level::Warn,
            Note::NotLapsedYet | Note::ContradictionReported { first: false, .. } => Level::Debug,
            Note::RestoredWithoutTtl
            | Note::ReachedAgain { .. }
            | Note::SessionResumed { .. }
            | Note::SessionUnknown { .. }
            | Note::SessionInvalid { .. }
            | Note::OpenedAfterHeld { .. }
            | Note::SessionOpened { .. }
            | Note::StatusReported { .. } => Level::Info,
        }
    }
}

/// What the driver does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start heartbeats of this session on the current connection.
    StartKeepAlive {
        /// The session id.
        id: String,
        /// Its TTL.
        ttl: Duration,
    },
    /// Stop listening to the keep-alive of the current connection.
    StopKeepAlive,
    /// Call `OpenSession` with the local statuses now; answer [`Event::OpenResult`].
    OpenSession,
    /// Read the local statuses and the registry copy's statuses of this host's packages;
    /// answer [`Event::ReportInputs`].
    ReportChanges,
    /// Call `ReportStatus`; answer [`Event::ReportResult`].
    SendReport {
        /// The session the report acts for.
        session_id: String,
        /// The package.
        package_type: PackageType,
        /// Its status.
        status: PackageStatus,
    },
    /// Fire [`Event::OpenTimerFired`] at this time (replacing any time set before).
    ScheduleOpen(Instant),
    /// Fire [`Event::RecheckTimerFired`] at this time, or never.
    ScheduleRecheck(Option<Instant>),
    /// Persist the session id and TTL, or forget them.
    SaveSession(Option<(String, Duration)>),
    /// Whether answers are stale (no confirmed session).
    SetStale(bool),
    /// End the connection with this reason; try the next manager.
    Disconnect(String),
    /// Log.
    Log(Note),
}

impl Action {
    /// True for the actions whose answer is fed back before anything else.
    pub fn awaits_answer(&self) -> bool {
        matches!(
            self,
            Action::OpenSession | Action::ReportChanges | Action::SendReport { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    id: String,
    ttl: Duration,
    confirmed: bool,
}

/// The session client's protocol state, kept across connections. See the module docs.
#[derive(Debug, Clone)]
pub struct SessionMachine {
    retry: OpenRetry,
    session: Option<Session>,
    /// What the registry was last told and when (or, after a restart, what it is believed to
    /// hold).
    reported: BTreeMap<PackageType, LastReport>,
    /// Packages whose contradicted status was reported again (warned once per episode).
    contradicted: BTreeSet<PackageType>,
    /// The TTL the manager last granted (or the persisted one).
    granted_ttl: Option<Duration>,
    /// Before the first `OpenSession`, wait this long for the checks to settle so the
    /// registration carries real statuses rather than `starting`.
    settle_until: Option<Instant>,
    /// No manager reached in a whole round of candidates.
    unreachable: Episode,
    /// `OpenSession` refused with `ALREADY_EXISTS`.
    held_elsewhere: Episode,
    /// Per connection: `OpenSession` was refused because the registry does not know this host.
    unknown_host: bool,
    /// Per connection: the last `stale` told.
    stale: Option<bool>,
    /// The reports planned and not yet answered (the first is in flight).
    pending: VecDeque<Report>,
    /// When to plan the reports again, as known so far in the report run under way.
    recheck: Option<Instant>,
}

impl SessionMachine {
    /// A machine with no session; the first `OpenSession` waits for the checks to settle until
    /// `settle_until` at the latest.
    pub fn new(retry: OpenRetry, settle_until: Instant) -> SessionMachine {
        SessionMachine {
            retry,
            session: None,
            reported: BTreeMap::new(),
            contradicted: BTreeSet::new(),
            granted_ttl: None,
            settle_until: Some(settle_until),
            unreachable: Episode::default(),
            held_elsewhere: Episode::default(),
            unknown_host: false,
            stale: None,
            pending: VecDeque::new(),
            recheck: None,
        }
    }

    /// The session's TTL as best known: the session's, else the one last granted, else
    /// [`FALLBACK_TTL`].
    pub fn ttl(&self) -> Duration {
        self.session
            .as_ref()
            .map(|s| s.ttl)
            .or(self.granted_ttl)
            .unwrap_or(FALLBACK_TTL)
    }

    /// True while the session is confirmed by the current manager.
    pub fn live(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.confirmed)
    }

    /// The session id, if there is a session.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.id.as_str())
    }

    /// Decides what to do about `event`.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Restored { id, ttl, registry } => {
                // A restarted agent resumes its previous session if the registry still has
                // it; the registry then still holds its last reports.
                self.reported = registry
                    .into_iter()
                    .map(|(t, status)| (t, LastReport { status, at: None }))
                    .collect();
                if ttl.is_none() {
                    out.push(Action::Log(Note::RestoredWithoutTtl));
                }
                self.granted_ttl = ttl;
                self.session = Some(Session {
                    id,
                    ttl: ttl.unwrap_or(FALLBACK_TTL),
                    confirmed: false,
                });
                return out;
            }
            Event::RoundEnded {
                now,
                candidates,
                reached,
                tried,
                last_error,
            } => {
                if candidates == 0 {
                    if self.unreachable.seen(now, Duration::ZERO) {
                        out.push(Action::Log(Note::NoManagerAddress));
                    }
                } else if !reached
                    && !tried.is_empty()
                    && self.unreachable.seen(now, Duration::ZERO)
                {
                    out.push(Action::Log(Note::NoneReachable { tried, last_error }));
                }
                return out;
            }
            Event::Connected { now } => {
                self.unknown_host = false;
                self.pending.clear();
                self.recheck = None;
                if let Some(after) = self.unreachable.end(now) {
                    out.push(Action::Log(Note::ReachedAgain { after }));
                }
                match &mut self.session {
                    Some(s) => {
                        s.confirmed = false;
                        out.push(Action::StartKeepAlive {
                            id: s.id.clone(),
                            ttl: s.ttl,
                        });
                    }
                    None => out.push(Action::ScheduleOpen(self.settle_until.unwrap_or(now))),
                }
                self.stale = Some(true);
                out.push(Action::SetStale(true));
                return out;
            }
            Event::KeepAliveConfirmed => {
                if let Some(s) = &mut self.session {
                    if !s.confirmed {
                        s.confirmed = true;
                        out.push(Action::Log(Note::SessionResumed { ttl: s.ttl }));
                    }
                }
                self.held_elsewhere = Episode::default();
                self.report_changes(&mut out);
            }
            Event::KeepAliveRejected { now, reason } => {
                out.push(Action::Log(Note::SessionUnknown { reason }));
                self.session = None;
                out.push(Action::StopKeepAlive);
                out.push(Action::ScheduleOpen(now));
                out.push(Action::SaveSession(None));
            }
            Event::KeepAliveLost { reason } => {
                out.push(Action::Disconnect(reason));
                return out;
            }
            Event::OpenTimerFired { now, settled } => {
                if let (Some(until), false) = (self.settle_until, settled) {
                    if now < until {
                        out.push(Action::ScheduleOpen(until));
                        self.tell_stale(&mut out);
                        return out;
                    }
                }
                self.settle_until = None;
                out.push(Action::OpenSession);
            }
            Event::OpenResult { now, result } => self.open_answered(now, result, &mut out),
            Event::StatusesChanged { now, settled } => {
                if self.live() {
                    self.report_changes(&mut out);
                } else if self.session.is_none() && self.settle_until.is_some() && settled {
                    out.push(Action::ScheduleOpen(now));
                }
            }
            Event::WatchApplied { now } => {
                if self.unknown_host && self.session.is_none() {
                    out.push(Action::ScheduleOpen(now));
                } else if self.live() {
                    // The copy may now hold a status of this host's packages that its checks
                    // contradict.
                    self.report_changes(&mut out);
                }
            }
            Event::RecheckTimerFired => {
                if self.live() {
                    self.report_changes(&mut out);
                }
            }
            Event::ReportInputs { now, own, registry } => {
                let plan = plan_reports(&own, &registry, &self.reported, now, REREPORT_EVERY);
                self.contradicted.retain(|t| plan.contradicted.contains(t));
                self.recheck = plan.recheck_at;
                self.pending = plan.reports.into();
                self.next_report(&mut out);
            }
            Event::ReportResult { now, result } => self.report_answered(now, result, &mut out),
        }
        let ended = out.iter().any(|a| matches!(a, Action::Disconnect(_)));
        if !ended && !out.iter().any(|a| a.awaits_answer()) {
            self.tell_stale(&mut out);
        }
        out
    }

    /// Appends `SetStale` when it differs from the last one told on this connection.
    fn tell_stale(&mut self, out: &mut Vec<Action>) {
        let stale = !self.live();
        if self.stale != Some(stale) {
            self.stale = Some(stale);
            out.push(Action::SetStale(stale));
        }
    }

    /// Starts a report run: ask for the statuses if the session is live.
    fn report_changes(&mut self, out: &mut Vec<Action>) {
        self.pending.clear();
        self.recheck = None;
        if self.live() {
            out.push(Action::ReportChanges);
        } else {
            out.push(Action::ScheduleRecheck(None));
        }
    }

    /// Sends the next pending report, or ends the report run.
    fn next_report(&mut self, out: &mut Vec<Action>) {
        let Some(report) = self.pending.front() else {
            out.push(Action::ScheduleRecheck(self.recheck.take()));
            return;
        };
        match self.session.as_ref().filter(|s| s.confirmed) {
            Some(s) => out.push(Action::SendReport {
                session_id: s.id.clone(),
                package_type: report.package_type.clone(),
                status: report.status,
            }),
            None => {
                self.pending.clear();
                self.recheck = None;
                out.push(Action::ScheduleRecheck(None));
            }
        }
    }

    fn report_answered(&mut self, now: Instant, result: ReportResult, out: &mut Vec<Action>) {
        let Some(report) = self.pending.pop_front() else {
            return;
        };
        let (t, s) = (report.package_type, report.status);
        match result {
            ReportResult::Reported { revision } => {
                let note = match report.reason {
                    ReportReason::Changed => {
                        self.contradicted.remove(&t);
                        Note::StatusReported {
                            package_type: t.clone(),
                            status: s,
                            revision,
                        }
                    }
                    ReportReason::Contradicted { registry } => Note::ContradictionReported {
                        package_type: t.clone(),
                        registry,
                        local: s,
                        revision,
                        first: self.contradicted.insert(t.clone()),
                    },
                };
                out.push(Action::Log(note));
                self.reported.insert(
                    t,
                    LastReport {
                        status: s,
                        at: Some(now),
                    },
                );
                // Look again once the registry had time to agree.
                let due = now + REREPORT_EVERY;
                self.recheck = Some(self.recheck.map_or(due, |r| r.min(due)));
                self.next_report(out);
            }
            ReportResult::Error { code, message }
                if matches!(code, Code::NotFound | Code::FailedPrecondition) =>
            {
                out.push(Action::Log(Note::SessionInvalid { code, message }));
                self.session = None;
                self.pending.clear();
                self.recheck = None;
                out.push(Action::StopKeepAlive);
                out.push(Action::ScheduleOpen(now));
                out.push(Action::ScheduleRecheck(None));
            }
            ReportResult::Error { code, message } => {
                self.pending.clear();
                out.push(Action::Disconnect(format!(
                    "report status: {code} {message}"
                )));
            }
            ReportResult::NoAnswer => {
                self.pending.clear();
                out.push(Action::Disconnect("report status: no answer".into()));
            }
        }
    }

    fn open_answered(&mut self, now: Instant, result: OpenResult, out: &mut Vec<Action>) {
        match result {
            OpenResult::Opened { id, ttl, sent } => {
                let ttl = if ttl.is_zero() { FALLBACK_TTL } else { ttl };
                self.reported = sent
                    .into_iter()
                    .map(|(t, status)| {
                        let last = LastReport {
                            status,
                            at: Some(now),
                        };
                        (t, last)
                    })
                    .collect();
                self.contradicted.clear();
                self.granted_ttl = Some(ttl);
                out.push(Action::SaveSession(Some((id.clone(), ttl))));
                self.session = Some(Session {
                    id: id.clone(),
                    ttl,
                    confirmed: true,
                });
                self.unknown_host = false;
                if let Some(after) = self.held_elsewhere.end(now) {
                    out.push(Action::Log(Note::OpenedAfterHeld { after }));
                }
                out.push(Action::Log(Note::SessionOpened { ttl }));
                out.push(Action::StartKeepAlive { id, ttl });
                self.report_changes(out);
            }
            OpenResult::AlreadyExists { message, jitter } => {
                let warn_after = self.ttl().saturating_mul(HELD_ELSEWHERE_WARN_TTLS);
                if self.held_elsewhere.seen(now, warn_after) {
                    out.push(Action::Log(Note::HeldElsewhere {
                        refused_for: self.held_elsewhere.lasted(now),
                        message,
                    }));
                } else {
                    out.push(Action::Log(Note::NotLapsedYet));
                }
                out.push(Action::ScheduleOpen(
                    now + self.retry.already_exists + jitter,
                ));
            }
            OpenResult::Refused { code, message } => {
                if !self.unknown_host {
                    out.push(Action::Log(Note::SessionRefused { code, message }));
                }
                self.unknown_host = true;
                out.push(Action::ScheduleOpen(now + self.retry.unknown_host));
            }
            OpenResult::Failed { reason } => out.push(Action::Disconnect(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PackageStatus::{Draining, Failing, Running, Starting, Stopped};

    #[test]
    fn an_answer_every_second_heartbeat_leaves_two_periods_of_slack() {
        let ttl = Duration::from_secs(1);
        let answers_every = heartbeat_period(ttl) * 2;
        assert_eq!(
            ack_silence_limit(ttl) - answers_every,
            heartbeat_period(ttl) * 2
        );
        assert!(
            ack_silence_limit(ttl) > ttl,
            "sparse answers must not make a manager look gone"
        );
        assert_eq!(
            heartbeat_period(Duration::from_millis(15)),
            Duration::from_millis(10)
        );
    }

    const RETRY: OpenRetry = OpenRetry {
        already_exists: Duration::from_millis(150),
        unknown_host: Duration::from_secs(1),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn t(name: &str) -> PackageType {
        PackageType::new(name).unwrap()
    }

    fn statuses(v: &[(&str, PackageStatus)]) -> Statuses {
        v.iter().map(|(n, s)| (t(n), *s)).collect()
    }

    fn log(note: Note) -> Action {
        Action::Log(note)
    }

    fn opened_at(now: Instant, id: &str, ttl_ms: u64, sent: Statuses) -> Event {
        Event::OpenResult {
            now,
            result: OpenResult::Opened {
                id: id.into(),
                ttl: ms(ttl_ms),
                sent,
            },
        }
    }

    fn already_exists(now: Instant, jitter_ms: u64) -> Event {
        Event::OpenResult {
            now,
            result: OpenResult::AlreadyExists {
                message: "held".into(),
                jitter: ms(jitter_ms),
            },
        }
    }

    fn inputs(now: Instant, own: Statuses, registry: Statuses) -> Event {
        Event::ReportInputs { now, own, registry }
    }

    fn reported(now: Instant, revision: u64) -> Event {
        Event::ReportResult {
            now,
            result: ReportResult::Reported { revision },
        }
    }

    fn send(id: &str, name: &str, status: PackageStatus) -> Action {
        Action::SendReport {
            session_id: id.into(),
            package_type: t(name),
            status,
        }
    }

    /// A machine at `t0` with no session, settle window of 1 s.
    fn fresh(t0: Instant) -> SessionMachine {
        SessionMachine::new(RETRY, t0 + ms(1000))
    }

    /// A machine with a live session `s1` (TTL 900 ms) opened with `sent` on a connection.
    fn live(t0: Instant, sent: Statuses) -> SessionMachine {
        let mut m = fresh(t0);
        m.handle(Event::Connected { now: t0 });
        assert_eq!(
            m.handle(Event::OpenTimerFired {
                now: t0,
                settled: true
            }),
            [Action::OpenSession]
        );
        m.handle(opened_at(t0, "s1", 900, sent.clone()));
        let a = m.handle(inputs(t0, sent.clone(), sent));
        assert_eq!(a, [Action::ScheduleRecheck(None), Action::SetStale(false)]);
        assert!(m.live());
        m
    }

    /// A machine restored with session `old` (TTL 600 ms), connected, not yet confirmed.
    fn resuming(t0: Instant, registry: Statuses) -> SessionMachine {
        let mut m = fresh(t0);
        let a = m.handle(Event::Restored {
            id: "old".into(),
            ttl: Some(ms(600)),
            registry,
        });
        assert_eq!(a, []);
        let a = m.handle(Event::Connected { now: t0 });
        assert_eq!(
            a,
            [
                Action::StartKeepAlive {
                    id: "old".into(),
                    ttl: ms(600)
                },
                Action::SetStale(true)
            ]
        );
        m
    }

    /// Every answer-awaiting action is the last of its list; `Disconnect` too.
    fn check_shape(actions: &[Action]) {
        for (i, a) in actions.iter().enumerate() {
            if a.awaits_answer() || matches!(a, Action::Disconnect(_)) {
                assert_eq!(i + 1, actions.len(), "{a:?} not last in {actions:?}");
            }
        }
    }

    // ---- Episode (pure value) ----

    #[test]
    fn an_episode_warns_once_after_lasting_long_enough() {
        let t0 = Instant::now();
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

    // ---- TTL ----

    #[test]
    fn the_ttl_is_the_session_s_else_the_granted_one_else_the_fallback() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        assert_eq!(m.ttl(), FALLBACK_TTL);
        m.granted_ttl = Some(ms(300));
        assert_eq!(m.ttl(), ms(300));
        m.session = Some(Session {
            id: "s".into(),
            ttl: Duration::from_secs(5),
            confirmed: false,
        });
        assert_eq!(m.ttl(), Duration::from_secs(5));
    }

    #[test]
    fn a_restored_session_without_ttl_resumes_with_the_fallback_and_says_so() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        let a = m.handle(Event::Restored {
            id: "old".into(),
            ttl: None,
            registry: Statuses::new(),
        });
        assert_eq!(a, [log(Note::RestoredWithoutTtl)]);
        assert_eq!(m.ttl(), FALLBACK_TTL);
        assert_eq!(m.session_id(), Some("old"));
        assert!(!m.live());
        assert_eq!(
            m.handle(Event::Connected { now: t0 }),
            [
                Action::StartKeepAlive {
                    id: "old".into(),
                    ttl: FALLBACK_TTL
                },
                Action::SetStale(true)
            ]
        );
    }

    // ---- Connected ----

    #[test]
    fn connected_without_a_session_schedules_the_open_at_the_end_of_the_settle_window() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        assert_eq!(
            m.handle(Event::Connected { now: t0 }),
            [Action::ScheduleOpen(t0 + ms(1000)), Action::SetStale(true)]
        );
        // Once settled (the first open happened), a new connection opens at once.
        m.settle_until = None;
        let t1 = t0 + ms(5000);
        assert_eq!(
            m.handle(Event::Connected { now: t1 }),
            [Action::ScheduleOpen(t1), Action::SetStale(true)]
        );
    }

    #[test]
    fn connected_with_a_session_resumes_it_with_its_old_id_unconfirmed() {
        let t0 = Instant::now();
        let mut m = live(t0, statuses(&[("a", Running)]));
        // The manager is lost; on the next one the session is resumed, not reopened.
        let t1 = t0 + ms(3000);
        assert_eq!(
            m.handle(Event::Connected { now: t1 }),
            [
                Action::StartKeepAlive {
                    id: "s1".into(),
                    ttl: ms(900)
                },
                Action::SetStale(true)
            ]
        );
        assert!(!m.live());
        // Until confirmed, no report is sent and nothing opens.
        let a = m.handle(Event::StatusesChanged {
            now: t1,
            settled: true,
        });
        assert_eq!(a, []);
        assert_eq!(m.handle(Event::WatchApplied { now: t1 }), []);
        assert_eq!(m.handle(Event::RecheckTimerFired), []);
    }

    // ---- KeepAlive ----

    #[test]
    fn the_first_ack_confirms_a_resumed_session_then_reports_changes() {
        let t0 = Instant::now();
        let mut m = resuming(t0, statuses(&[("a", Running)]));
        let a = m.handle(Event::KeepAliveConfirmed);
        assert_eq!(
            a,
            [
                log(Note::SessionResumed { ttl: ms(600) }),
                Action::ReportChanges
            ]
        );
        assert!(m.live());
        // What the copy held counts as reported (no report), but a change is.
        let a = m.handle(inputs(
            t0,
            statuses(&[("a", Failing)]),
            statuses(&[("a", Running)]),
        ));
        assert_eq!(a, [send("old", "a", Failing)]);
        let a = m.handle(reported(t0 + ms(5), 7));
        assert_eq!(
            a,
            [
                log(Note::StatusReported {
                    package_type: t("a"),
                    status: Failing,
                    revision: 7
                }),
                Action::ScheduleRecheck(Some(t0 + ms(5) + REREPORT_EVERY)),
                Action::SetStale(false),
            ]
        );
    }

    #[test]
    fn an_ack_after_an_open_reports_again_without_logging_a_resume() {
        let t0 = Instant::now();
        let sent = statuses(&[("a", Running)]);
        let mut m = live(t0, sent.clone());
        assert_eq!(m.handle(Event::KeepAliveConfirmed), [Action::ReportChanges]);
        assert_eq!(
            m.handle(inputs(t0, sent.clone(), sent)),
            [Action::ScheduleRecheck(None)]
        );
    }

    #[test]
    fn a_rejected_heartbeat_forgets_the_session_and_opens_anew_at_once() {
        let t0 = Instant::now();
        let mut m = live(t0, statuses(&[("a", Running)]));
        let t1 = t0 + ms(100);
        let a = m.handle(Event::KeepAliveRejected {
            now: t1,
            reason: "unknown session".into(),
        });
        assert_eq!(
            a,
            [
                log(Note::SessionUnknown {
                    reason: "unknown session".into()
                }),
                Action::StopKeepAlive,
                Action::ScheduleOpen(t1),
                Action::SaveSession(None),
                Action::SetStale(true),
            ]
        );
        assert_eq!(m.session_id(), None);
        // Settled already: the open goes ahead.
        assert_eq!(
            m.handle(Event::OpenTimerFired {
                now: t1,
                settled: false
            }),
            [Action::OpenSession]
        );
    }

    #[test]
    fn a_rejected_resume_still_waits_for_the_checks_to_settle_before_opening() {
        let t0 = Instant::now();
        let mut m = resuming(t0, statuses(&[("a", Running)]));
        m.handle(Event::KeepAliveRejected {
            now: t0,
            reason: "no".into(),
        });
        // The resumed session never opened one here: the settle window still applies.
        assert_eq!(
            m.handle(Event::OpenTimerFired {
                now: t0,
                settled: false
            }),
            [Action::ScheduleOpen(t0 + ms(1000))]
        );
    }

    #[test]
    fn a_lost_keep_alive_ends_the_connection() {
        let t0 = Instant::now();
        let mut m = resuming(t0, Statuses::new());
        assert_eq!(
            m.handle(Event::KeepAliveLost {
                reason: "no heartbeat ack".into()
            }),
            [Action::Disconnect("no heartbeat ack".into())]
        );
        // The session is kept for the next manager.
        assert_eq!(m.session_id(), Some("old"));
    }

    // ---- Settle and OpenSession ----

    #[test]
    fn the_first_open_waits_for_the_checks_to_settle_or_the_window_to_end() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        m.handle(Event::Connected { now: t0 });
        // Unsettled before the window's end: wait until then.
        assert_eq!(
            m.handle(Event::OpenTimerFired {
                now: t0 + ms(10),
                settled: false
            }),
            [Action::ScheduleOpen(t0 + ms(1000))]
        );
        // Statuses changing but still starting: nothing.
        assert_eq!(
            m.handle(Event::StatusesChanged {
                now: t0 + ms(20),
                settled: false
            }),
            []
        );
        // Settled: open now.
        assert_eq!(
            m.handle(Event::StatusesChanged {
                now: t0 + ms(300),
                settled: true
            }),
            [Action::ScheduleOpen(t0 + ms(300))]
        );
        assert_eq!(
            m.handle(Event::OpenTimerFired {
                now: t0 + ms(300),
                settled: true
            }),
            [Action::OpenSession]
        );
        // After the first open attempt, the settle window is over for good.
        assert_eq!(m.settle_until, None);
        assert_eq!(
            m.handle(Event::StatusesChanged {
                now: t0 + ms(400),
                settled: true
            }),
            []
        );
    }

    #[test]
    fn the_first_open_goes_ahead_unsettled_at_the_end_of_the_window() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        m.handle(Event::Connected { now: t0 });
        assert_eq!(
            m.handle(Event::OpenTimerFired {
                now: t0 + ms(1000),
                settled: false
            }),
            [Action::OpenSession]
        );
    }

    #[test]
    fn an_open_persists_the_session_starts_heartbeats_and_reports_changes_since() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        m.handle(Event::Connected { now: t0 });
        m.handle(Event::OpenTimerFired {
            now: t0 + ms(1000),
            settled: false,
        });
        let sent = statuses(&[("a", Starting), ("b", Running)]);
        let t1 = t0 + ms(1010);
        let a = m.handle(opened_at(t1, "s9", 0, sent));
        check_shape(&a);
        assert_eq!(
            a,
            [
                Action::SaveSession(Some(("s9".into(), FALLBACK_TTL))),
                log(Note::SessionOpened { ttl: FALLBACK_TTL }),
                Action::StartKeepAlive {
                    id: "s9".into(),
                    ttl: FALLBACK_TTL
                },
                Action::ReportChanges,
            ]
        );
        assert!(m.live());
        // `starting` travelled in OpenSession only; `a` running since is reported, `b` not.
        let own = statuses(&[("a", Running), ("b", Running)]);
        let a = m.handle(inputs(
            t1,
            own,
            statuses(&[("a", Starting), ("b", Running)]),
        ));
        assert_eq!(a, [send("s9", "a", Running)]);
        let a = m.handle(reported(t1 + ms(2), 11));
        assert_eq!(
            a,
            [
                log(Note::StatusReported {
                    package_type: t("a"),
                    status: Running,
                    revision: 11
                }),
                Action::ScheduleRecheck(Some(t1 + ms(2) + REREPORT_EVERY)),
                Action::SetStale(false),
            ]
        );
    }

    #[test]
    fn already_exists_is_retried_with_jitter_and_warned_once_after_three_ttls() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        m.handle(Event::Connected { now: t0 });
        m.handle(Event::OpenTimerFired {
            now: t0 + ms(1000),
            settled: true,
        });
        // No TTL known: the fallback (1 s), so the warning comes after 3 s of refusals.
        let mut warned = Vec::new();
        let mut at = t0 + ms(1000);
        for i in 0..30u64 {
            let a = m.handle(already_exists(at, i % 76));
            let next = at + ms(150 + i % 76);
            assert_eq!(a.last(), Some(&Action::ScheduleOpen(next)), "{a:?}");
            match &a[0] {
                Action::Log(n @ Note::HeldElsewhere { refused_for, .. }) => {
                    assert_eq!(n.level(), Level::Warn);
                    warned.push(*refused_for);
                }
                Action::Log(Note::NotLapsedYet) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(
                m.handle(Event::OpenTimerFired {
                    now: next,
                    settled: true
                }),
                [Action::OpenSession]
            );
            at = next;
        }
        assert_eq!(warned.len(), 1);
        assert!(warned[0] >= FALLBACK_TTL * 3, "{warned:?}");
        // It opens at last: the end of the episode is logged with its length.
        let a = m.handle(opened_at(at, "s2", 900, Statuses::new()));
        assert_eq!(
            &a[..3],
            [
                Action::SaveSession(Some(("s2".into(), ms(900)))),
                log(Note::OpenedAfterHeld {
                    after: at - (t0 + ms(1000))
                }),
                log(Note::SessionOpened { ttl: ms(900) }),
            ]
        );
    }

    #[test]
    fn already_exists_warns_after_three_of_the_ttl_granted_before() {
        let t0 = Instant::now();
        let mut m = resuming(t0, Statuses::new()); // TTL 600 ms
        m.handle(Event::KeepAliveRejected {
            now: t0,
            reason: "gone".into(),
        });
        m.settle_until = None;
        let warned_at: Vec<u64> = (0..20u64)
            .map(|i| i * 150)
            .filter(|&at| {
                let a = m.handle(already_exists(t0 + ms(at), 0));
                matches!(a[0], Action::Log(Note::HeldElsewhere { .. }))
            })
            .collect();
        assert_eq!(warned_at, [1800]);
    }

    #[test]
    fn an_episode_of_already_exists_that_ends_early_is_not_logged_and_an_ack_ends_it() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        m.handle(Event::Connected { now: t0 });
        m.handle(Event::OpenTimerFired {
            now: t0,
            settled: true,
        });
        m.handle(already_exists(t0, 0));
        let a = m.handle(opened_at(t0 + ms(200), "s", 900, Statuses::new()));
        assert!(!a
            .iter()
            .any(|x| matches!(x, Action::Log(Note::OpenedAfterHeld { .. }))));
        // An ack resets the episode too (silently).
        m.held_elsewhere.seen(t0, Duration::ZERO);
        m.handle(Event::KeepAliveConfirmed);
        assert_eq!(m.held_elsewhere, Episode::default());
    }

    #[test]
    fn an_unknown_host_is_warned_once_per_connection_and_retried_on_watch_changes() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        m.handle(Event::Connected { now: t0 });
        m.handle(Event::OpenTimerFired {
            now: t0,
            settled: true,
        });
        let refused = |now| Event::OpenResult {
            now,
            result: OpenResult::from_error(Code::NotFound, "unknown host h", ms(9)),
        };
        let a = m.handle(refused(t0));
        assert_eq!(
            a,
            [
                log(Note::SessionRefused {
                    code: Code::NotFound,
                    message: "unknown host h".into()
                }),
                Action::ScheduleOpen(t0 + ms(1000)),
            ]
        );
        // Again: not warned again.
        assert_eq!(
            m.handle(refused(t0 + ms(1000))),
            [Action::ScheduleOpen(t0 + ms(2000))]
        );
        // A watch change (maybe the topology now names this host): open at once.
        assert_eq!(
            m.handle(Event::WatchApplied { now: t0 + ms(1200) }),
            [Action::ScheduleOpen(t0 + ms(1200))]
        );
        // A new connection warns again.
        m.handle(Event::Connected { now: t0 + ms(1300) });
        assert_eq!(m.handle(Event::WatchApplied { now: t0 + ms(1300) }), []);
        let a = m.handle(refused(t0 + ms(1400)));
        assert_eq!(a.len(), 2);
        assert_eq!(
            a[0].clone(),
            log(Note::SessionRefused {
                code: Code::NotFound,
                message: "unknown host h".into()
            })
        );
        // An open that works clears it: watch changes no longer open.
        m.handle(opened_at(t0 + ms(2400), "s", 900, Statuses::new()));
        m.handle(inputs(t0 + ms(2400), Statuses::new(), Statuses::new()));
        m.handle(Event::KeepAliveRejected {
            now: t0 + ms(2500),
            reason: "x".into(),
        });
        assert_eq!(m.handle(Event::WatchApplied { now: t0 + ms(2600) }), []);
    }

    #[test]
    fn open_errors_are_sorted_by_code() {
        let j = ms(33);
        assert_eq!(
            OpenResult::from_error(Code::AlreadyExists, "m", j),
            OpenResult::AlreadyExists {
                message: "m".into(),
                jitter: j
            }
        );
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::FailedPrecondition,
        ] {
            assert_eq!(
                OpenResult::from_error(code, "m", j),
                OpenResult::Refused {
                    code,
                    message: "m".into()
                }
            );
        }
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Internal] {
            assert_eq!(
                OpenResult::from_error(code, "m", j),
                OpenResult::Failed {
                    reason: format!("open session: {code} m")
                }
            );
        }
    }

    #[test]
    fn any_other_open_failure_ends_the_connection() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        m.handle(Event::Connected { now: t0 });
        m.handle(Event::OpenTimerFired {
            now: t0,
            settled: true,
        });
        let a = m.handle(Event::OpenResult {
            now: t0,
            result: OpenResult::from_error(Code::Unavailable, "down", ms(0)),
        });
        assert_eq!(
            a,
            [Action::Disconnect(format!(
                "open session: {} down",
                Code::Unavailable
            ))]
        );
    }

    // ---- Reports ----

    #[test]
    fn changes_are_reported_in_package_order_one_call_at_a_time() {
        let t0 = Instant::now();
        let mut m = live(t0, statuses(&[("a", Running), ("b", Running)]));
        let a = m.handle(Event::StatusesChanged {
            now: t0,
            settled: true,
        });
        assert_eq!(a, [Action::ReportChanges]);
        let own = statuses(&[("a", Failing), ("b", Stopped)]);
        let a = m.handle(inputs(t0, own, Statuses::new()));
        assert_eq!(a, [send("s1", "a", Failing)]);
        let a = m.handle(reported(t0 + ms(3), 1));
        check_shape(&a);
        assert_eq!(a.last(), Some(&send("s1", "b", Stopped)));
        let a = m.handle(reported(t0 + ms(6), 2));
        assert_eq!(
            a,
            [
                log(Note::StatusReported {
                    package_type: t("b"),
                    status: Stopped,
                    revision: 2
                }),
                // The earliest of the rechecks.
                Action::ScheduleRecheck(Some(t0 + ms(3) + REREPORT_EVERY)),
            ]
        );
    }

    #[test]
    fn a_contradicted_status_is_reported_again_warned_once_per_episode() {
        let t0 = Instant::now();
        let mut m = live(t0, statuses(&[("a", Running)]));
        let own = statuses(&[("a", Running)]);
        let wrong = statuses(&[("a", Failing)]);
        // The open's report is fresh: wait out REREPORT_EVERY.
        m.handle(Event::WatchApplied { now: t0 });
        let a = m.handle(inputs(t0 + ms(10), own.clone(), wrong.clone()));
        assert_eq!(a, [Action::ScheduleRecheck(Some(t0 + REREPORT_EVERY))]);
        // Due: reported again, warned.
        let t1 = t0 + REREPORT_EVERY;
        assert_eq!(m.handle(Event::RecheckTimerFired), [Action::ReportChanges]);
        assert_eq!(
            m.handle(inputs(t1, own.clone(), wrong.clone())),
            [send("s1", "a", Running)]
        );
        let a = m.handle(reported(t1, 5));
        let note = Note::ContradictionReported {
            package_type: t("a"),
            registry: Failing,
            local: Running,
            revision: 5,
            first: true,
        };
        assert_eq!(note.level(), Level::Warn);
        assert_eq!(
            a,
            [
                log(note),
                Action::ScheduleRecheck(Some(t1 + REREPORT_EVERY))
            ]
        );
        // Still contradicted a second later: debug only.
        let t2 = t1 + REREPORT_EVERY;
        m.handle(Event::RecheckTimerFired);
        m.handle(inputs(t2, own.clone(), wrong.clone()));
        let a = m.handle(reported(t2, 6));
        let Action::Log(n) = &a[0] else { panic!() };
        assert_eq!(n.level(), Level::Debug);
        // The registry agrees: the episode ends silently; a new one warns again.
        m.handle(Event::WatchApplied { now: t2 });
        assert_eq!(
            m.handle(inputs(t2, own.clone(), own.clone())),
            [Action::ScheduleRecheck(None)]
        );
        let t3 = t2 + REREPORT_EVERY;
        m.handle(Event::WatchApplied { now: t3 });
        m.handle(inputs(t3, own.clone(), wrong.clone()));
        let a = m.handle(reported(t3, 8));
        assert!(matches!(
            a[0],
            Action::Log(Note::ContradictionReported { first: true, .. })
        ));
    }

    #[test]
    fn an_operator_override_is_never_reported_against() {
        let t0 = Instant::now();
        let mut m = live(t0, statuses(&[("a", Running)]));
        m.handle(Event::WatchApplied { now: t0 });
        let a = m.handle(inputs(
            t0 + ms(5000),
            statuses(&[("a", Running)]),
            statuses(&[("a", Draining)]),
        ));
        assert_eq!(a, [Action::ScheduleRecheck(None)]);
    }

    #[test]
    fn a_report_refused_for_the_session_opens_anew_at_once_without_forgetting_it() {
        let t0 = Instant::now();
        let mut m = live(t0, statuses(&[("a", Running), ("b", Running)]));
        m.handle(Event::StatusesChanged {
            now: t0,
            settled: true,
        });
        m.handle(inputs(
            t0,
            statuses(&[("a", Failing), ("b", Failing)]),
            Statuses::new(),
        ));
        let t1 = t0 + ms(4);
        let a = m.handle(Event::ReportResult {
            now: t1,
            result: ReportResult::Error {
                code: Code::FailedPrecondition,
                message: "session expired".into(),
            },
        });
        assert_eq!(
            a,
            [
                log(Note::SessionInvalid {
                    code: Code::FailedPrecondition,
                    message: "session expired".into()
                }),
                Action::StopKeepAlive,
                Action::ScheduleOpen(t1),
                Action::ScheduleRecheck(None),
                Action::SetStale(true),
            ]
        );
        assert_eq!(m.session_id(), None);
        // The rest of the run is dropped.
        assert_eq!(m.handle(reported(t1, 1)), []);
    }

    #[test]
    fn a_report_that_fails_otherwise_ends_the_connection() {
        let t0 = Instant::now();
        for (result, reason) in [
            (
                ReportResult::Error {
                    code: Code::Unavailable,
                    message: "gone".into(),
                },
                format!("report status: {} gone", Code::Unavailable),
            ),
            (ReportResult::NoAnswer, "report status: no answer".into()),
        ] {
            let mut m = live(t0, statuses(&[("a", Running)]));
            m.handle(Event::StatusesChanged {
                now: t0,
                settled: true,
            });
            m.handle(inputs(t0, statuses(&[("a", Failing)]), Statuses::new()));
            assert_eq!(
                m.handle(Event::ReportResult { now: t0, result }),
                [Action::Disconnect(reason)]
            );
            // The session is kept for the next manager.
            assert_eq!(m.session_id(), Some("s1"));
            assert!(m.pending.is_empty());
        }
    }

    #[test]
    fn a_new_connection_drops_a_report_run_cut_short() {
        let t0 = Instant::now();
        let mut m = live(t0, statuses(&[("a", Running)]));
        m.handle(Event::StatusesChanged {
            now: t0,
            settled: true,
        });
        m.handle(inputs(t0, statuses(&[("a", Failing)]), Statuses::new()));
        // The connection ends (for example the watch) while the report is in flight.
        m.handle(Event::Connected { now: t0 });
        assert!(m.pending.is_empty());
        m.handle(Event::KeepAliveConfirmed);
        // Not reported: still due.
        assert_eq!(
            m.handle(inputs(t0, statuses(&[("a", Failing)]), Statuses::new())),
            [send("s1", "a", Failing)]
        );
    }

    #[test]
    fn stale_is_told_only_when_it_changes_and_at_every_connection() {
        let t0 = Instant::now();
        let mut m = resuming(t0, Statuses::new());
        // Confirmed: the stale flag drops once the report run ends.
        assert_eq!(
            m.handle(Event::KeepAliveConfirmed).last(),
            Some(&Action::ReportChanges)
        );
        assert_eq!(
            m.handle(inputs(t0, Statuses::new(), Statuses::new())),
            [Action::ScheduleRecheck(None), Action::SetStale(false)]
        );
        // Nothing changes: no SetStale.
        assert_eq!(
            m.handle(Event::StatusesChanged {
                now: t0,
                settled: true
            }),
            [Action::ReportChanges]
        );
        assert_eq!(
            m.handle(inputs(t0, Statuses::new(), Statuses::new())),
            [Action::ScheduleRecheck(None)]
        );
        // A new connection always tells it.
        assert_eq!(
            m.handle(Event::Connected { now: t0 }).last(),
            Some(&Action::SetStale(true))
        );
    }

    // ---- Rounds of managers ----

    #[test]
    fn unreachable_rounds_are_warned_once_per_episode_and_its_end_logged() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        let round = |now, reached: bool, tried: &[&str]| Event::RoundEnded {
            now,
            candidates: 2,
            reached,
            tried: tried.iter().map(|s| s.to_string()).collect(),
            last_error: "connect: refused".into(),
        };
        let a = m.handle(round(t0, false, &["m1", "m2"]));
        assert_eq!(
            a,
            [log(Note::NoneReachable {
                tried: vec!["m1".into(), "m2".into()],
                last_error: "connect: refused".into()
            })]
        );
        assert_eq!(m.handle(round(t0 + ms(500), false, &["m1", "m2"])), []);
        // A round that reached one (and lost it) is not an unreachable round.
        assert_eq!(m.handle(round(t0 + ms(600), true, &["m1"])), []);
        let a = m.handle(Event::Connected { now: t0 + ms(2000) });
        assert_eq!(a[0], log(Note::ReachedAgain { after: ms(2000) }));
        // Next episode warns again; no address at all is one too.
        let a = m.handle(Event::RoundEnded {
            now: t0 + ms(3000),
            candidates: 0,
            reached: false,
            tried: vec![],
            last_error: String::new(),
        });
        assert_eq!(a, [log(Note::NoManagerAddress)]);
        assert_eq!(
            m.handle(Event::RoundEnded {
                now: t0 + ms(3100),
                candidates: 0,
                reached: false,
                tried: vec![],
                last_error: String::new(),
            }),
            []
        );
        assert_eq!(m.handle(round(t0 + ms(3200), false, &["m1", "m2"])), []);
    }

    #[test]
    fn a_connection_without_trouble_before_logs_no_end_of_episode() {
        let t0 = Instant::now();
        let mut m = fresh(t0);
        let a = m.handle(Event::Connected { now: t0 });
        assert!(!a
            .iter()
            .any(|x| matches!(x, Action::Log(Note::ReachedAgain { .. }))));
    }

    // ---- Table: each event in each state ----

    #[derive(Debug, Clone, Copy)]
    enum St {
        /// Connected, no session, settle window open.
        Settling,
        /// Connected, no session, after an unknown-host refusal.
        UnknownHost,
        /// Connected, session known, not yet confirmed.
        Resuming,
        /// Connected, session confirmed.
        Live,
    }

    fn in_state(st: St, t0: Instant) -> SessionMachine {
        match st {
            St::Settling => {
                let mut m = fresh(t0);
                m.handle(Event::Connected { now: t0 });
                m
            }
            St::UnknownHost => {
                let mut m = fresh(t0);
                m.handle(Event::Connected { now: t0 });
                m.handle(Event::OpenTimerFired {
                    now: t0,
                    settled: true,
                });
                m.handle(Event::OpenResult {
                    now: t0,
                    result: OpenResult::from_error(Code::NotFound, "x", ms(0)),
                });
                m
            }
            St::Resuming => resuming(t0, Statuses::new()),
            St::Live => live(t0, Statuses::new()),
        }
    }

    #[test]
    fn each_event_in_each_state() {
        use Action::*;
        let t0 = Instant::now();
        let t1 = t0 + ms(100);
        let events = |now| {
            vec![
                ("ka-confirmed", Event::KeepAliveConfirmed),
                (
                    "ka-rejected",
                    Event::KeepAliveRejected {
                        now,
                        reason: "r".into(),
                    },
                ),
                ("ka-lost", Event::KeepAliveLost { reason: "l".into() }),
                (
                    "open-timer-unsettled",
                    Event::OpenTimerFired {
                        now,
                        settled: false,
                    },
                ),
                (
                    "statuses-settled",
                    Event::StatusesChanged { now, settled: true },
                ),
                (
                    "statuses-unsettled",
                    Event::StatusesChanged {
                        now,
                        settled: false,
                    },
                ),
                ("watch", Event::WatchApplied { now }),
                ("recheck", Event::RecheckTimerFired),
            ]
        };
        let resumed = Log(Note::SessionResumed { ttl: ms(600) });
        let unknown = Log(Note::SessionUnknown { reason: "r".into() });
        let rejected_live = vec![
            unknown.clone(),
            StopKeepAlive,
            ScheduleOpen(t1),
            SaveSession(None),
            SetStale(true),
        ];
        let rejected = rejected_live[..4].to_vec();
        let lost = vec![Disconnect("l".into())];
        #[rustfmt::skip]
        let table: Vec<(St, &str, Vec<Action>)> = vec![
            (St::Settling, "ka-confirmed", vec![ScheduleRecheck(None)]),
            (St::Settling, "ka-rejected", rejected.clone()),
            (St::Settling, "ka-lost", lost.clone()),
            (St::Settling, "open-timer-unsettled", vec![ScheduleOpen(t0 + ms(1000))]),
            (St::Settling, "statuses-settled", vec![ScheduleOpen(t1)]),
            (St::Settling, "statuses-unsettled", vec![]),
            (St::Settling, "watch", vec![]),
            (St::Settling, "recheck", vec![]),

            (St::UnknownHost, "ka-confirmed", vec![ScheduleRecheck(None)]),
            (St::UnknownHost, "ka-rejected", rejected.clone()),
            (St::UnknownHost, "ka-lost", lost.clone()),
            (St::UnknownHost, "open-timer-unsettled", vec![OpenSession]),
            (St::UnknownHost, "statuses-settled", vec![]),
            (St::UnknownHost, "statuses-unsettled", vec![]),
            (St::UnknownHost, "watch", vec![ScheduleOpen(t1)]),
            (St::UnknownHost, "recheck", vec![]),

            (St::Resuming, "ka-confirmed", vec![resumed.clone(), ReportChanges]),
            (St::Resuming, "ka-rejected", rejected.clone()),
            (St::Resuming, "ka-lost", lost.clone()),
            (St::Resuming, "open-timer-unsettled", vec![ScheduleOpen(t0 + ms(1000))]),
            (St::Resuming, "statuses-settled", vec![]),
            (St::Resuming, "statuses-unsettled", vec![]),
            (St::Resuming, "watch", vec![]),
            (St::Resuming, "recheck", vec![]),

            (St::Live, "ka-confirmed", vec![ReportChanges]),
            (St::Live, "ka-rejected", rejected_live.clone()),
            (St::Live, "ka-lost", lost.clone()),
            (St::Live, "open-timer-unsettled", vec![OpenSession]),
            (St::Live, "statuses-settled", vec![ReportChanges]),
            (St::Live, "statuses-unsettled", vec![ReportChanges]),
            (St::Live, "watch", vec![ReportChanges]),
            (St::Live, "recheck", vec![ReportChanges]),
        ];
        for (st, name, want) in table {
            let mut m = in_state(st, t0);
            let (_, ev) = events(t1)
                .into_iter()
                .find(|(n, _)| *n == name)
                .expect("event name");
            let got = m.handle(ev);
            check_shape(&got);
            assert_eq!(got, want, "{st:?} + {name}");
        }
    }

    #[test]
    fn the_same_events_give_the_same_actions() {
        let t0 = Instant::now();
        let run = || {
            let mut m = fresh(t0);
            let mut all = Vec::new();
            let evs = vec![
                Event::RoundEnded {
                    now: t0,
                    candidates: 1,
                    reached: false,
                    tried: vec!["m".into()],
                    last_error: "e".into(),
                },
                Event::Connected { now: t0 + ms(50) },
                Event::OpenTimerFired {
                    now: t0 + ms(1000),
                    settled: false,
                },
                already_exists(t0 + ms(1001), 40),
                Event::OpenTimerFired {
                    now: t0 + ms(1191),
                    settled: true,
                },
                opened_at(t0 + ms(1200), "s", 900, statuses(&[("a", Starting)])),
                inputs(
                    t0 + ms(1200),
                    statuses(&[("a", Running)]),
                    statuses(&[("a", Starting)]),
                ),
                reported(t0 + ms(1203), 4),
                Event::KeepAliveConfirmed,
            ];
            for e in evs {
                let a = m.handle(e);
                check_shape(&a);
                all.push(a);
            }
            all
        };
        assert_eq!(run(), run());
    }
}
