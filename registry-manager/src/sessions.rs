//! Live agent sessions, in memory: who holds each host and when it was last heard from.
//!
//! Heartbeats touch an atomic timestamp and write nothing to disk; only opening and lapsing a
//! session are commands. The expiry task (module `expiry`) scans the table on a short tick of
//! tokio's clock, and at the millisecond the next session would lapse, and proposes one
//! `SessionsExpired` for the sessions each scan finds silent for longer than the TTL.
//!
//! **No false expiry on a busy machine**: a tick that runs late is a sign the process was
//! starved (CPU saturated, paused); heartbeats may then be queued, unread, in sockets. Such a
//! tick decides nothing and lets the streams catch up first ([`tick_decision`]).
//!
//! **After a manager restart** the persisted sessions are not trusted blindly: each is given
//! one full TTL from the restart to resume heartbeating (with the same session id) before it
//! lapses. Agents whose keep-alive stream broke with the old manager reconnect and carry on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use topology::HostName;

use crate::session_id::SessionId;

/// One live session.
#[derive(Debug)]
pub struct LiveSession {
    /// The host it holds.
    pub host: HostName,
    /// Its id.
    pub id: SessionId,
    /// Milliseconds since the table's epoch at the last heartbeat.
    last_seen_ms: AtomicU64,
    /// Set once it lapsed or was replaced: later heartbeats are refused.
    ended: AtomicBool,
    /// Heard from since the last [`SessionTable::take_touched`] (a follower passes heartbeats on
    /// to the leader, which decides expiry).
    touched: AtomicBool,
    /// Its expiry was proposed; not proposed again until this member leads anew.
    expiring: AtomicBool,
    /// The member (raft node id) that last passed a heartbeat on; 0: heard here directly;
    /// [`NOT_HEARD_YET`]: no heartbeat since it was opened (through any member).
    via: AtomicU64,
}

/// `via` of a session no heartbeat has reached yet: it may have been opened through a member
/// that is lost before it passed a single heartbeat on, so every lost member's grace covers it.
const NOT_HEARD_YET: u64 = u64::MAX;

impl LiveSession {
    /// True once the session lapsed or was ended.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Milliseconds since the table's epoch at the last heartbeat.
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

/// The live sessions, by host and by id.
#[derive(Debug)]
pub struct SessionTable {
    epoch: Instant,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_host: HashMap<HostName, Arc<LiveSession>>,
    by_id: HashMap<SessionId, HostName>,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable::new()
    }
}

impl SessionTable {
    /// An empty table whose clock starts now.
    pub fn new() -> Self {
        SessionTable {
            epoch: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Milliseconds of tokio's clock since the table was made.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking a session, last heard from now. A previous session of the host ends.
    pub fn insert(&self, host: HostName, id: SessionId) {
        let session = Arc::new(LiveSession {
            host: host.clone(),
            id: id.clone(),
            last_seen_ms: AtomicU64::new(self.now_ms()),
            ended: AtomicBool::new(false),
            touched: AtomicBool::new(false),
            expiring: AtomicBool::new(false),
            via: AtomicU64::new(NOT_HEARD_YET),
        });
        let mut inner = self.lock();
        if let Some(old) = inner.by_host.insert(host.clone(), session) {
            old.ended.store(true, Ordering::Release);
            inner.by_id.remove(&old.id);
        }
        inner.by_id.insert(id, host);
    }

    /// Stops tracking the host's session (only if it is `id`, when given).
    pub fn end(&self, host: &str, id: Option<&SessionId>) {
        let mut inner = self.lock();
        let matches = inner
            .by_host
            .get(host)
            .is_some_and(|s| id.is_none_or(|id| &s.id == id));
        if matches {
            if let Some(old) = inner.by_host.remove(host) {
                old.ended.store(true, Ordering::Release);
                inner.by_id.remove(&old.id);
            }
        }
    }

    /// The live session of a host.
    pub fn by_host(&self, host: &str) -> Option<Arc<LiveSession>> {
        self.lock().by_host.get(host).cloned()
    }

    /// The host holding a session id.
    pub fn host_of(&self, id: &SessionId) -> Option<HostName> {
        self.lock().by_id.get(id).cloned()
    }

    /// Records a heartbeat of `session`.
    pub fn touch(&self, session: &LiveSession) {
        session
            .last_seen_ms
            .fetch_max(self.now_ms(), Ordering::Relaxed);
        session.touched.store(true, Ordering::Relaxed);
        session.via.store(0, Ordering::Relaxed);
    }

    /// Records a heartbeat member `via` heard for `host`'s session `id` (if it is live here).
    pub fn touch_remote(&self, host: &str, id: &str, via: u64) {
        if let Some(s) = self.by_host(host) {
            if s.id.as_str() == id && !s.is_ended() {
                s.last_seen_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
                s.via.store(via, Ordering::Relaxed);
            }
        }
    }

    /// The member `via` was lost: the sessions last heard through it, and those not heard from
    /// at all since they were opened (perhaps through it), get `grace` beyond a fresh TTL to
    /// reach another member. Losing the member an agent talks to never lapses its session.
    /// Returns how many sessions got the grace.
    pub fn grace_via(&self, via: u64, grace: Duration) -> usize {
        let until = self.now_ms() + u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let inner = self.lock();
        let mut n = 0;
        for s in inner.by_host.values() {
            let heard_via = s.via.load(Ordering::Relaxed);
            if heard_via == via || heard_via == NOT_HEARD_YET {
                s.last_seen_ms.fetch_max(until, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    /// The sessions heard from since the last call, as (host, session id).
    pub fn take_touched(&self) -> Vec<(HostName, SessionId)> {
        let inner = self.lock();
        inner
            .by_host
            .values()
            .filter(|s| s.touched.swap(false, Ordering::Relaxed))
            .map(|s| (s.host.clone(), s.id.clone()))
            .collect()
    }

    /// A new leader gives every session a fresh TTL from now, and may decide every expiry
    /// again: a leader change never lapses a session.
    pub fn refresh_all(&self) {
        let now = self.now_ms();
        let inner = self.lock();
        for s in inner.by_host.values() {
            s.last_seen_ms.fetch_max(now, Ordering::Relaxed);
            s.expiring.store(false, Ordering::Relaxed);
        }
    }

    /// One scan of the table at `now_ms`: the live sessions silent for longer than `ttl` whose
    /// expiry was not proposed yet, how many sessions are live, and when the next one could
    /// lapse if nothing more is heard. Nothing is marked: the caller decides, then
    /// [`SessionTable::mark_expiring`] each one it proposes.
    pub fn scan_expired(&self, now_ms: u64, ttl: Duration) -> Scan {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let inner = self.lock();
        let mut scan = Scan::default();
        let mut earliest_seen = u64::MAX;
        for s in inner.by_host.values().filter(|s| !s.is_ended()) {
            scan.live += 1;
            if s.expiring.load(Ordering::Acquire) {
                continue;
            }
            let seen = s.last_seen_ms();
            if is_expired(seen, now_ms, ttl_ms) {
                scan.due.push(Arc::clone(s));
            } else {
                earliest_seen = earliest_seen.min(seen);
            }
        }
        scan.next_due_ms = lapses_at(earliest_seen, ttl_ms);
        scan
    }

    /// The instant of tokio's clock `ms` milliseconds after the table's epoch (none past the
    /// clock's range).
    pub fn instant_of(&self, ms: u64) -> Option<Instant> {
        self.epoch.checked_add(Duration::from_millis(ms))
    }

    /// Marks a session's expiry as proposed; false when it already was (it is proposed once).
    /// It stays live until the expiry is applied.
    pub fn mark_expiring(&self, session: &LiveSession) -> bool {
        !session.expiring.swap(true, Ordering::AcqRel)
    }

    /// Ends every session (the whole state is being replaced).
    pub fn clear(&self) {
        let mut inner = self.lock();
        for s in inner.by_host.values() {
            s.ended.store(true, Ordering::Release);
        }
        inner.by_host.clear();
        inner.by_id.clear();
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().by_host.len()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How late this manager's own expiry ticks ran recently: the most over the last one to two
/// TTLs. A busy manager (a change being fanned out to thousands of connections, a saturated
/// machine) reads heartbeats late by about as much as its timers run late, since both wait in
/// the same run queue; a session must then be silent for the TTL plus this much before it
/// lapses. So the manager does not lapse sessions for its own slowness, which would make more
/// writes to fan out and slow it further. A quiet manager's ticks are late by a millisecond or
/// two, which is all a silent host's lapse is delayed by.
#[derive(Debug, Clone, Copy)]
pub struct LagWindow {
    span: Duration,
    started: Instant,
    current: Duration,
    previous: Duration,
}

impl LagWindow {
    /// No lateness yet; `span` is the TTL.
    pub fn new(span: Duration, now: Instant) -> Self {
        LagWindow {
            span,
            started: now,
            current: Duration::ZERO,
            previous: Duration::ZERO,
        }
    }

    /// A tick that ran `late` at `now`.
    pub fn record(&mut self, now: Instant, late: Duration) {
        let since = now.saturating_duration_since(self.started);
        if since >= self.span {
            self.previous = if since >= self.span * 2 {
                Duration::ZERO
            } else {
                self.current
            };
            self.current = Duration::ZERO;
            self.started = now;
        }
        self.current = self.current.max(late);
    }

    /// How much longer than the TTL a session must be silent to lapse now.
    pub fn allowance(&self) -> Duration {
        self.current.max(self.previous)
    }
}

/// Whether the `nth` heartbeat of a keep-alive stream (counted from 1) gets an answer. Every
/// refusal does, and every heartbeat of a stream that did not ask for sparse answers. A stream
/// that asked for them (its agent allows two heartbeat periods between answers) gets the
/// first, third, fifth...: the first at once, so the agent knows its session is kept, and then
/// an answer every two thirds of the TTL at the default rate. Answering is about two fifths of
/// what a heartbeat costs the manager (the encoding, a wake-up of the connection and a write),
/// so answering half of them saves about a fifth (measured at 10,000 agents).
pub fn answers_heartbeat(nth: u64, sparse: bool, ok: bool) -> bool {
    !ok || !sparse || nth % 2 == 1
}

/// What one scan of the session table found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The sessions due to lapse now.
    pub due: Vec<Arc<LiveSession>>,
    /// How many sessions are live (the due ones included).
    pub live: usize,
    /// The millisecond (of the table's clock) at which the next session lapses if none is heard
    /// from before it: the expiry task wakes then rather than at its next tick, so a silent host
    /// lapses within a millisecond or two of its TTL rather than up to a tick later.
    pub next_due_ms: Option<u64>,
}

/// The first millisecond at which a session last heard from at `last_seen_ms` is expired
/// ([`is_expired`]); none for a table with no session to watch (`u64::MAX`).
pub fn lapses_at(last_seen_ms: u64, ttl_ms: u64) -> Option<u64> {
    (last_seen_ms != u64::MAX).then(|| last_seen_ms.saturating_add(ttl_ms).saturating_add(1))
}

/// A session lapses when it has been silent for strictly longer than its TTL.
pub fn is_expired(last_seen_ms: u64, now_ms: u64, ttl_ms: u64) -> bool {
    now_ms.saturating_sub(last_seen_ms) > ttl_ms
}

/// Whether lapsing `due` of `live` sessions at once is unusual enough that the manager should
/// suspect itself (a pause, starvation, a broken network card) before the fleet: more than half
/// of them, and at least three.
pub fn mass_expiry(due: usize, live: usize) -> bool {
    due >= 3 && due * 2 > live
}

/// What an expiry tick may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickDecision {
    /// The tick ran on time: expire silent sessions.
    Expire,
    /// The tick ran late (the process was starved): decide nothing this time, so heartbeats
    /// queued meanwhile are read first.
    Defer,
}

/// The expiry tick's period for a TTL: a tenth of it, between 5 ms and 50 ms. The tick
/// measures how late this manager runs ([`LagWindow`]); a silent host lapses at the deadline
/// the last scan named ([`Scan::next_due_ms`]), not at the next tick. One scan reads every session's clock, which the
/// heartbeat threads write: about a millisecond for 10,000 sessions, so it is not run more
/// often (a 10 ms tick looked about a tenth of a core dearer at 10,000 agents).
pub fn tick_period(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(5), Duration::from_millis(50))
}

/// Decides a tick that was due at `due` and runs at `now`: late by more than a quarter of the
/// TTL means starvation.
pub fn tick_decision(due: Instant, now: Instant, ttl: Duration) -> TickDecision {
    if now.saturating_duration_since(due) > ttl / 4 {
        TickDecision::Defer
    } else {
        TickDecision::Expire
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the expiry task proposes at `now_ms`: the due sessions, each marked once.
    fn take_expired(table: &SessionTable, now_ms: u64, ttl: Duration) -> Vec<Arc<LiveSession>> {
        table
            .scan_expired(now_ms, ttl)
            .due
            .into_iter()
            .filter(|s| table.mark_expiring(s))
            .collect()
    }

    fn host(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }

    #[test]
    fn the_allowance_is_the_latest_lateness_of_the_last_one_to_two_ttls() {
        let t = Instant::now();
        let ttl = Duration::from_secs(1);
        let ms = Duration::from_millis;
        let mut w = LagWindow::new(ttl, t);
        assert_eq!(w.allowance(), Duration::ZERO);
        w.record(t + ms(100), ms(2));
        w.record(t + ms(200), ms(300));
        w.record(t + ms(300), ms(5));
        assert_eq!(w.allowance(), ms(300), "the most of the window");
        w.record(t + ms(1_100), ms(1));
        assert_eq!(w.allowance(), ms(300), "still within the last two TTLs");
        w.record(t + ms(2_200), ms(1));
        assert_eq!(w.allowance(), ms(1), "forgotten after two TTLs");
        w.record(t + ms(5_000), ms(3));
        assert_eq!(
            w.allowance(),
            ms(3),
            "a gap of more than a window forgets the one before it"
        );
    }

    #[test]
    fn sparse_answers_go_to_the_first_and_every_second_heartbeat_and_every_refusal() {
        let answered: Vec<u64> = (1..=7)
            .filter(|&n| answers_heartbeat(n, true, true))
            .collect();
        assert_eq!(answered, [1, 3, 5, 7]);
        assert!(
            (1..=7).all(|n| answers_heartbeat(n, false, true)),
            "an older agent gets every answer"
        );
        assert!(
            (1..=7).all(|n| answers_heartbeat(n, true, false)),
            "a refusal is always answered"
        );
    }

    #[test]
    fn a_mass_expiry_is_more_than_half_and_at_least_three() {
        assert!(
            !mass_expiry(2, 2),
            "two hosts may really go silent together"
        );
        assert!(mass_expiry(3, 5));
        assert!(!mass_expiry(3, 6));
        assert!(!mass_expiry(0, 0));
    }

    #[test]
    fn expiry_is_strictly_after_the_ttl() {
        assert!(!is_expired(100, 1100, 1000));
        assert!(is_expired(100, 1101, 1000));
        assert!(
            !is_expired(2000, 1000, 1000),
            "a clock read before a touch is not expiry"
        );
    }

    #[test]
    fn late_ticks_defer_decisions() {
        let t = Instant::now();
        let ttl = Duration::from_secs(1);
        assert_eq!(
            tick_decision(t, t + Duration::from_millis(200), ttl),
            TickDecision::Expire
        );
        assert_eq!(
            tick_decision(t, t + Duration::from_millis(300), ttl),
            TickDecision::Defer
        );
        assert_eq!(tick_period(ttl), Duration::from_millis(50));
        assert_eq!(
            tick_period(Duration::from_millis(30)),
            Duration::from_millis(5)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_scan_names_the_millisecond_the_next_silent_session_lapses() {
        let table = SessionTable::new();
        let ttl = Duration::from_secs(1);
        assert_eq!(table.scan_expired(table.now_ms(), ttl).next_due_ms, None);
        table.insert(host("a"), SessionId::new("sa"));
        tokio::time::advance(Duration::from_millis(300)).await;
        table.insert(host("b"), SessionId::new("sb"));
        let scan = table.scan_expired(table.now_ms(), ttl);
        assert_eq!(
            scan.next_due_ms,
            Some(1_001),
            "a, heard at 0 ms, lapses at the first millisecond past its TTL"
        );
        // a heartbeat from a at 400 ms: b is now the first to lapse.
        tokio::time::advance(Duration::from_millis(100)).await;
        table.touch(&table.by_host("a").unwrap());
        assert_eq!(
            table.scan_expired(table.now_ms(), ttl).next_due_ms,
            Some(1_301)
        );
        tokio::time::advance(Duration::from_millis(901)).await;
        let scan = table.scan_expired(table.now_ms(), ttl);
        assert_eq!(scan.due.len(), 1, "b lapses at 1,301 ms, not a tick later");
        assert_eq!(scan.due[0].host.as_str(), "b");
        assert_eq!(scan.next_due_ms, Some(1_401), "a is next");
        assert!(table.mark_expiring(&scan.due[0]));
        assert_eq!(
            table.scan_expired(table.now_ms(), ttl).next_due_ms,
            Some(1_401),
            "a session whose expiry was proposed is not waited for"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_manager_that_ran_late_lapses_a_session_only_after_the_ttl_plus_its_lateness() {
        let table = SessionTable::new();
        let ttl = Duration::from_secs(1);
        let mut lag = LagWindow::new(ttl, Instant::now());
        table.insert(host("a"), SessionId::new("sa"));
        // The expiry task's tick ran 200 ms late: heartbeats may have waited as long.
        lag.record(Instant::now(), Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(1_100)).await;
        let scan = table.scan_expired(table.now_ms(), ttl + lag.allowance());
        assert!(
            scan.due.is_empty(),
            "silent for 1.1 s: within the TTL plus 200 ms"
        );
        assert_eq!(scan.live, 1);
        tokio::time::advance(Duration::from_millis(150)).await;
        let due = table
            .scan_expired(table.now_ms(), ttl + lag.allowance())
            .due;
        assert_eq!(due.len(), 1, "silent for 1.25 s: lapses");
        assert!(table.mark_expiring(&due[0]));
        assert!(!table.mark_expiring(&due[0]), "proposed once");
        assert!(
            table
                .scan_expired(table.now_ms(), ttl + lag.allowance())
                .due
                .is_empty(),
            "a session whose expiry was proposed is not due again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silent_sessions_are_taken_once_and_touched_ones_stay() {
        let table = SessionTable::new();
        let ttl = Duration::from_millis(300);
        table.insert(host("a"), SessionId::new("sa"));
        table.insert(host("b"), SessionId::new("sb"));
        tokio::time::advance(Duration::from_millis(200)).await;
        table.touch(&table.by_host("b").unwrap());
        tokio::time::advance(Duration::from_millis(150)).await;
        let expired = take_expired(&table, table.now_ms(), ttl);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].host, host("a"));
        assert!(!expired[0].is_ended(), "live until the expiry is applied");
        assert!(
            take_expired(&table, table.now_ms(), ttl).is_empty(),
            "taken once"
        );
        table.refresh_all();
        assert!(
            take_expired(&table, table.now_ms(), ttl).is_empty(),
            "a new leader gives every session a fresh ttl"
        );
        tokio::time::advance(Duration::from_millis(350)).await;
        assert_eq!(
            take_expired(&table, table.now_ms(), ttl).len(),
            2,
            "and decides again once it runs out"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_are_passed_on_once_and_remote_ones_count() {
        let table = SessionTable::new();
        let ttl = Duration::from_millis(300);
        table.insert(host("a"), SessionId::new("sa"));
        table.touch(&table.by_host("a").unwrap());
        assert_eq!(
            table.take_touched(),
            vec![(host("a"), SessionId::new("sa"))]
        );
        assert!(table.take_touched().is_empty(), "passed on once");
        tokio::time::advance(Duration::from_millis(250)).await;
        table.touch_remote("a", "other-id", 7);
        table.touch_remote("a", "sa", 7);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert!(take_expired(&table, table.now_ms(), ttl).is_empty());
        // The member that passed it on is lost: the session gets a grace beyond its ttl.
        assert_eq!(table.grace_via(7, ttl), 1);
        assert_eq!(table.grace_via(8, ttl), 0);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(take_expired(&table, table.now_ms(), ttl).is_empty());
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(take_expired(&table, table.now_ms(), ttl).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_not_heard_yet_gets_the_grace_of_any_member_lost() {
        // Opened through a member that is lost before it passed a heartbeat on: the leader
        // cannot know which member that was.
        let table = SessionTable::new();
        let ttl = Duration::from_millis(300);
        table.insert(host("b"), SessionId::new("sb"));
        assert_eq!(table.grace_via(9, ttl), 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(take_expired(&table, table.now_ms(), ttl).is_empty());
        // Once heard here directly, a lost member is no longer its concern.
        table.touch(&table.by_host("b").unwrap());
        assert_eq!(table.grace_via(9, ttl), 0);
    }

    #[test]
    fn replacing_or_ending_a_session_ends_the_old_one() {
        let table = SessionTable::new();
        table.insert(host("a"), SessionId::new("s1"));
        let first = table.by_host("a").unwrap();
        table.insert(host("a"), SessionId::new("s2"));
        assert!(first.is_ended());
        assert_eq!(table.host_of(&SessionId::new("s1")), None);
        assert_eq!(table.host_of(&SessionId::new("s2")), Some(host("a")));
        table.end("a", Some(&SessionId::new("s1")));
        assert!(
            table.by_host("a").is_some(),
            "ending another id leaves the live one"
        );
        table.end("a", None);
        assert!(table.by_host("a").is_none());
        assert!(table.is_empty());
    }
}
