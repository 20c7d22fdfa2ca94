//! Background work of a group member, reading raft's metrics:
//! - the **watchdog**: a member cut off from the majority closes its watch and keep-alive
//!   streams (so its agents move to a member of the majority) and refuses new ones until it is
//!   back; the new leader names the registry's history if it has none, adds the configured
//!   learners, and raises group events (failover, members offline/online, replication errors);
//! - **heartbeat passing**: sessions heard by a follower are passed on to the leader, which
//!   alone decides expiry.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{Instant as _, ServerState};
use proto::v1 as pb;

use crate::command::Command;
use crate::engine::Engine;
use crate::group;
use crate::hook::GroupEvent;
use crate::raft::ELECTION_MAX;

/// How often the watchdog looks.
const WATCH_PERIOD: Duration = Duration::from_millis(50);
/// A member not acknowledging the leader for this long is taken as lost for its agents.
const SILENT_MEMBER: Duration = Duration::from_millis(300);
/// Entries a member may be behind before replication to it counts as failing.
const LAG_ERROR: u64 = 5_000;

/// The watchdog; runs until the manager is cancelled.
pub(crate) async fn watchdog(engine: Engine) {
    let cancel = engine.cancel_token().clone();
    let mut tick = tokio::time::interval(WATCH_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_leader: Option<u64> = None;
    let mut led_term: Option<u64> = None;
    let mut offline: BTreeSet<u64> = BTreeSet::new();
    let mut lagging: BTreeSet<u64> = BTreeSet::new();
    let mut silent: BTreeSet<u64> = BTreeSet::new();
    let me = group::node_id(engine.name());
    // Until the first contact with a majority (a start, an election), agents' streams are
    // refused without a warning: nothing was lost.
    let mut ever_connected = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Cut off from the majority: close streams so agents move on; refuse new ones.
        let connected = !engine.is_cut_off();
        let was_cut = engine.set_cut_off(!connected);
        if !connected && !was_cut && ever_connected {
            tracing::warn!(
                member = engine.name(),
                "cut off from the group's majority: closing watch and keep-alive streams so agents move to another member"
            );
            engine.hub().close_all();
        } else if connected && was_cut {
            tracing::info!(
                member = engine.name(),
                "{}",
                if ever_connected {
                    "back in touch with the group's majority"
                } else {
                    "in touch with the group's majority: serving agents"
                }
            );
        }
        ever_connected |= connected;

        let m = engine.metrics();
        if m.current_leader != last_leader {
            if let Some(l) = m.current_leader {
                engine.telemetry().leader_changed();
                let name = engine
                    .node(l)
                    .map(|n| n.name)
                    .unwrap_or_else(|| l.to_string());
                tracing::info!(leader = %name, term = m.current_term, "group leader");
            }
            last_leader = m.current_leader;
        }
        if m.state != ServerState::Leader {
            led_term = None;
            offline.clear();
            lagging.clear();
            silent.clear();
            continue;
        }
        if led_term != Some(m.current_term) {
            if engine.may_decide() {
                led_term = Some(m.current_term);
                become_leader(&engine).await;
            }
            continue;
        }
        // Members offline/online and replication errors, as the leader sees them.
        let membership = m.membership_config.membership().clone();
        let heartbeat = m.heartbeat.clone().unwrap_or_default();
        let replication = m.replication.clone().unwrap_or_default();
        let top = m.last_log_index.unwrap_or(0);
        for (id, node) in membership.nodes() {
            if *id == me {
                continue;
            }
            let age = heartbeat
                .get(id)
                .and_then(|t| t.as_ref())
                .map(|t| t.elapsed());
            // A member silent for a few heartbeats: its agents are moving to another member;
            // their sessions get a grace so the move never lapses them.
            if age.is_none_or(|a| a > SILENT_MEMBER) {
                if silent.insert(*id) {
                    let n = engine.sessions().grace_via(*id, engine.ttl() * 2);
                    if n > 0 {
                        tracing::info!(member = %node.name, sessions = n, "member silent: its agents' sessions get a grace to move");
                    }
                }
            } else {
                silent.remove(id);
            }
            let heard = age.is_some_and(|a| a <= ELECTION_MAX * 2);
            if !heard && offline.insert(*id) {
                engine
                    .hooks()
                    .emit(GroupEvent::MemberOffline, vec![node.name.clone()]);
            } else if heard && offline.remove(id) {
                engine
                    .hooks()
                    .emit(GroupEvent::MemberOnline, vec![node.name.clone()]);
            }
            let matched = replication
                .get(id)
                .cloned()
                .flatten()
                .map_or(0, |l| l.index);
            let behind = heard && top.saturating_sub(matched) > LAG_ERROR;
            if behind && lagging.insert(*id) {
                engine
                    .hooks()
                    .emit(GroupEvent::ReplicationError, vec![node.name.clone()]);
            } else if !behind && lagging.remove(id) {
                engine
                    .hooks()
                    .emit(GroupEvent::ReplicationRecovered, vec![node.name.clone()]);
            }
        }
    }
}

/// What a new leader does once it may decide.
async fn become_leader(engine: &Engine) {
    let group = engine.group();
    if !group.is_stand_alone() {
        // A leadership move requested by command raises `manual-switch` on its own.
        if !engine.is_moving_here() {
            engine
                .hooks()
                .emit(GroupEvent::Failover, vec![engine.name().to_owned()]);
        }
    }
    if engine.state().await.history().is_empty() {
        let engine = engine.clone();
        tokio::spawn(async move {
            let history = uuid::Uuid::new_v4().to_string();
            if let Err(e) = engine
                .propose(Command::CreateHistory { history }, None)
                .await
            {
                tracing::warn!(error = %e, "could not name the registry's history; retried by the next leader");
            }
        });
    }
    let membership = engine.metrics().membership_config.membership().clone();
    for (name, addr) in &group.learners {
        let id = group::node_id(name.as_str());
        if membership.get_node(&id).is_none() {
            let engine = engine.clone();
            let (name, addr) = (name.to_string(), addr.clone());
            tokio::spawn(async move {
                if let Err(e) = engine.add_learner(&name, &addr).await {
                    tracing::warn!(learner = %name, error = %e, "could not add the configured learner");
                }
            });
        }
    }
}

/// Passes the sessions heard here on to the leader; runs until the manager is cancelled.
pub(crate) async fn pass_heartbeats(engine: Engine) {
    let cancel = engine.cancel_token().clone();
    let period = (engine.ttl() / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if engine.is_leader() {
            // Heard here directly: nothing to pass on.
            let _ = engine.sessions().take_touched();
            continue;
        }
        // While no leader is known, keep what was heard for the next one.
        let Some((_, leader)) = engine.leader() else {
            continue;
        };
        let touched = engine.sessions().take_touched();
        if touched.is_empty() {
            continue;
        }
        let Ok(mut client) = engine.peers().member(&engine.peers().addr_of(&leader)) else {
            continue;
        };
        let sessions = touched
            .into_iter()
            .map(|(host, id)| pb::Heartbeat {
                session_id: id.to_string(),
                host: host.to_string(),
                ..Default::default()
            })
            .collect();
        let mut request = engine.peers().request(
            "Touch",
            pb::TouchRequest {
                sessions,
                member: engine.name().to_owned(),
            },
        );
        request.set_timeout(period * 2);
        if let Err(e) = client.touch(request).await {
            tracing::debug!(leader = %leader.name, error = %e.message(), "passing heartbeats on failed");
        }
    }
}

/// Stops the manager when raft stops on its own (its core failed): a member whose consensus
/// engine is gone must not keep its port open as if it were a member. Exits with the others
/// on a shutdown.
pub(crate) async fn raft_guard(engine: Engine) {
    let cancel = engine.cancel_token().clone();
    use openraft::async_runtime::WatchReceiver as _;
    let mut metrics = engine.raft().metrics();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = metrics.changed() => {
                if changed.is_err() {
                    if !cancel.is_cancelled() {
                        engine.fail("raft stopped: its core ended unexpectedly (see the log above)".into());
                    }
                    return;
                }
            }
        }
    }
}
