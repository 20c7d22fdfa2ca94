//! The expiry task: a dedicated timer on tokio's clock that lapses sessions silent for longer
//! than the TTL (see [`crate::sessions`] for the starvation rule).
//!
//! Only the leader decides, and only once it has applied an entry of its own term with a
//! majority acknowledging it ([`Engine::may_decide`]). A member that becomes leader first gives
//! every session a fresh TTL: a leader change never lapses a session. Heartbeats that reach
//! other members are passed on to the leader (`crate::group_tasks`).

use tokio::time::{Instant, MissedTickBehavior};

use crate::command::{Command, Lapse};
use crate::engine::Engine;
use crate::sessions::{mass_expiry, tick_decision, tick_period, LagWindow, TickDecision};

/// Most lapses in one command (about 70 bytes each in the log): a scan that finds more writes
/// several, so no log entry or member message grows with the fleet.
const LAPSES_PER_COMMAND: usize = 1_000;

/// Runs until the manager is cancelled.
pub(crate) async fn run(engine: Engine) {
    let ttl = engine.ttl();
    let cancel = engine.cancel_token().clone();
    let mut interval = tokio::time::interval(tick_period(ttl));
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut deciding = false;
    // When the manager last suspected itself rather than the fleet.
    let mut suspected: Option<Instant> = None;
    // How late this manager's own ticks ran lately (see `LagWindow`).
    let mut lag = LagWindow::new(ttl, Instant::now());
    // When the next session lapses if nothing more is heard (from the last scan): the task
    // wakes then too, not only on its tick.
    let mut next_due: Option<Instant> = None;
    loop {
        let due = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            due = interval.tick() => due,
            due = wake_at(next_due) => due,
        };
        next_due = None;
        let now = Instant::now();
        lag.record(now, now.saturating_duration_since(due));
        engine.telemetry().expiry_allowance(lag.allowance());
        if !engine.may_decide() {
            deciding = false;
            continue;
        }
        let sessions = engine.sessions();
        if !deciding {
            // Newly able to decide: every session gets a full TTL from now.
            sessions.refresh_all();
            deciding = true;
            continue;
        }
        if tick_decision(due, Instant::now(), ttl) == TickDecision::Defer {
            // Paused or starved: the silence was ours, not the agents'. Everyone gets a fresh
            // TTL to be heard again; a host that really went silent lapses after it.
            let late = Instant::now().saturating_duration_since(due);
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                "this manager was paused or starved; every session gets a fresh TTL before any lapses"
            );
            sessions.refresh_all();
            continue;
        }
        let scan = sessions.scan_expired(sessions.now_ms(), ttl + lag.allowance());
        next_due = scan.next_due_ms.and_then(|ms| sessions.instant_of(ms));
        let (due, live) = (scan.due, scan.live);
        if due.is_empty() {
            continue;
        }
        if mass_expiry(due.len(), live) && suspected.is_none_or(|t| t.elapsed() > ttl * 3) {
            tracing::warn!(
                lapsing = due.len(),
                live,
                "more than half of the sessions would lapse at once: suspecting this manager first \
                 (pause, starvation, network); they get one more TTL, and lapse then if still silent"
            );
            sessions.refresh_all();
            suspected = Some(Instant::now());
            continue;
        }
        let lapses: Vec<Lapse> = due
            .into_iter()
            .filter(|s| sessions.mark_expiring(s))
            .map(|s| {
                tracing::info!(host = %s.host, "session lapsed");
                engine.telemetry().session_expired();
                Lapse {
                    host: s.host.clone(),
                    session_id: s.id.clone(),
                }
            })
            .collect();
        if lapses.is_empty() {
            continue;
        }
        // One command, one revision and one change to every watcher for all the sessions
        // this scan found (a rack that loses power lapses in a few of them, not one each).
        // Until the next tick the task does not wake for the next deadline, so the rest of
        // such a storm is gathered a tick at a time.
        next_due = None;
        for sessions in lapses.chunks(LAPSES_PER_COMMAND) {
            let sessions = sessions.to_vec();
            engine
                .propose_detached(Command::SessionsExpired { sessions })
                .await;
        }
    }
}

/// Sleeps until `at` and returns it; never returns without one.
async fn wake_at(at: Option<Instant>) -> Instant {
    match at {
        Some(at) => {
            tokio::time::sleep_until(at).await;
            at
        }
        None => std::future::pending().await,
    }
}
