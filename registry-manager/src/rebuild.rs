//! A member that lost its store rejoins its group by being rebuilt from the others (SPEC's
//! "a damaged store is rebuilt from the others"):
//! - a store found damaged at start is set aside ([`crate::store::RaftDb::open_or_rebuild`]);
//! - an empty store whose peers already lead a formed group (a data directory emptied by hand,
//!   a disk replaced; also a new learner or a member started after the others formed the
//!   group, which lose nothing by waiting) is marked the same way ([`joins_a_formed_group`]);
//! - while marked, the member grants no vote, stands for no election and serves no agent: its
//!   log was lost, and a vote could elect a leader missing acknowledged writes;
//! - [`finish_rebuild`] lifts the mark once the member has applied a leader's read point.
//!
//! The leader accepts that a rebuilt member's log went back (openraft's `allow_log_reversion`)
//! and replicates to it from the start or from a snapshot.

use std::time::Duration;

use proto::v1 as pb;

use crate::engine::Engine;
use crate::group::{self, GroupConfig};
use crate::raft::network::Peers;

/// How often a member being rebuilt without a leader to learn from says so.
const STILL_WAITING: Duration = Duration::from_secs(30);

/// How long the start waits for the other members' answers.
const PROBE_DEADLINE: Duration = Duration::from_millis(1_500);

/// True when a configured peer leads a formed group: this member, starting with an empty
/// store, joins as a member being rebuilt (it catches up before it votes) rather than forming
/// a group of its own.
/// Unanswered peers count as not leading (the first start of a group: nobody leads yet).
pub(crate) async fn joins_a_formed_group(group: &GroupConfig, peers: &Peers) -> bool {
    let asks = group
        .members
        .iter()
        .chain(group.learners.iter())
        .filter(|(name, _)| **name != group.name)
        .map(|(name, addr)| {
            let addr = peers.addr_of(&crate::raft::types::MemberNode {
                name: name.to_string(),
                addr: addr.clone(),
            });
            async move {
                let mut client = peers.member(&addr).ok()?;
                let mut request = peers.request("MemberStatus", pb::HaStatusRequest::default());
                request.set_timeout(PROBE_DEADLINE);
                let status = client.member_status(request).await.ok()?.into_inner();
                (status.role == group::Role::Leader.as_str()).then_some(status.name)
            }
        });
    let answers = tokio::time::timeout(PROBE_DEADLINE, futures::future::join_all(asks))
        .await
        .unwrap_or_default();
    match answers.into_iter().flatten().next() {
        Some(leader) => {
            tracing::warn!(
                member = group.name.as_str(),
                leader,
                "this member's store is empty and its group is already formed (led by {leader}): \
                 it catches up from the group before it votes or serves agents (a new learner, a \
                 member started late, a replaced disk or an emptied data directory)"
            );
            true
        }
        None => false,
    }
}

/// Ends the rebuild of a member being rebuilt: once it has caught up with
/// a read point of the leader (everything committed when it asked is applied here), the store's
/// mark is removed durably and the member votes, stands for election and serves agents again.
/// Runs until then or until the manager is cancelled.
pub(crate) async fn finish_rebuild(engine: Engine, db: std::sync::Arc<crate::store::RaftDb>) {
    let cancel = engine.cancel_token().clone();
    let started = std::time::Instant::now();
    let mut warned = started;
    loop {
        let led_by_other = engine
            .leader()
            .is_some_and(|(id, _)| id != group::node_id(engine.name()));
        if !led_by_other && warned.elapsed() >= STILL_WAITING {
            warned = std::time::Instant::now();
            tracing::warn!(
                member = engine.name(),
                waited_s = started.elapsed().as_secs(),
                "still waiting for a leader to rebuild this member from; it does not vote until \
                 then. The group needs a majority of members that kept their stores: start them. \
                 If every member lost its store, restore each from the same backup \
                 (`registry-manager restore FILE --data-dir DIR`)"
            );
        }
        if led_by_other && engine.read_barrier(false).await.is_ok() {
            let db = std::sync::Arc::clone(&db);
            match tokio::task::spawn_blocking(move || db.finish_rebuilding()).await {
                Ok(Ok(())) => {
                    engine.set_rebuilding(false);
                    let revision = engine.state().await.revision().0;
                    tracing::info!(
                        member = engine.name(),
                        revision,
                        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "rebuilt from the group: this member has caught up and votes and serves agents again"
                    );
                    return;
                }
                Ok(Err(e)) => engine.fail(format!("ending the rebuild: {e}")),
                Err(e) => engine.fail(format!("ending the rebuild: {e}")),
            }
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// A registry that starts from a base state (a restored backup, a converted single-manager
/// directory) keeps that state outside the raft log: a member rebuilt from the log alone, or a
/// learner added later, would miss it. So once this member has applied its log, it takes a
/// snapshot (base state included) and trims the log up to it: every member that needs the
/// beginning is then sent the snapshot. Done once; a later start finds the log trimmed.
pub(crate) async fn fold_base_state(engine: Engine) {
    let m = engine.metrics();
    if m.purged.is_some() || m.snapshot.is_some() {
        return;
    }
    let raft = engine.raft();
    let waiter = raft.wait(Some(Duration::from_secs(3_600)));
    let applied = waiter.metrics(|m| m.last_applied.is_some(), "the log applied");
    let applied = tokio::select! {
        _ = engine.cancel_token().cancelled() => return,
        m = applied => m,
    };
    if applied.is_err() || raft.trigger().snapshot().await.is_err() {
        return;
    }
    let snapshot = raft
        .wait(Some(Duration::from_secs(60)))
        .metrics(|m| m.snapshot.is_some(), "a snapshot of the base state")
        .await;
    let Some(index) = snapshot.ok().and_then(|m| m.snapshot).map(|s| s.index) else {
        tracing::warn!(
            "could not snapshot the base state; a member rebuilt from the log would miss it"
        );
        return;
    };
    if raft.trigger().purge_log(index).await.is_ok() {
        tracing::info!(
            index,
            "the base state is in a snapshot: members added or rebuilt later start from it"
        );
    }
}
