//! The [`Engine`]: one member of the registry group. It owns the raft handle, the shared
//! registry (state, sessions, watch hub) the state machine applies to, and the proposer.
//!
//! The write path goes one way: services → [`Engine::propose`] → proposer (group commit: many
//! commands in one raft entry) → raft (`client_write` here when leader, else forwarded to the
//! leader's `Member.Propose`) → state machine (check, then apply, on every member) → sessions
//! and watch hub. Background tasks (`crate::expiry`, `crate::group_tasks`) read raft's metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::raft::linearizable_read::{Linearizer, ReadLogId};
use openraft::{Instant as _, ReadPolicy, ServerState};
use proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, RwLock, RwLockReadGuard, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use topology::Revision;

use crate::command::{Command, Outcome, Proposed};
use crate::error::RegistryError;
use crate::group::{self, GroupConfig, Move, Role, StateFacts};
use crate::hook::{GroupEvent, Hooks};
use crate::metrics::ManagerMetrics;
use crate::raft::network::Peers;
use crate::raft::state_machine::{Registry, StateMachine};
use crate::raft::types::{Batch, LogId, MemberNode, Raft};
use crate::raft::{CUT_OFF, ELECTION_MAX, ELECTION_MIN};
use crate::server::Tuning;
use crate::session_id::SessionId;
use crate::sessions::SessionTable;
use crate::state::State;
use crate::watch::WatchHub;

/// How long a write may look for a leader before it is refused.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long a read waits to be confirmed current.
const READ_DEADLINE: Duration = Duration::from_secs(3);
/// Raft entries one member writes at once; proposals arriving meanwhile wait and go into the
/// next entry together.
pub const IN_FLIGHT: usize = 8;

/// A command waiting for the proposer, with where to send its outcome.
#[derive(Debug)]
struct Pending {
    proposed: Proposed,
    reply: Option<oneshot::Sender<Outcome>>,
}

/// Handle on a running member (cheap to clone).
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    raft: Raft,
    node_id: u64,
    group: GroupConfig,
    peers: Peers,
    proposals: mpsc::Sender<Pending>,
    /// Proposals the writer took from the queue whose outcome is not known yet.
    writing: std::sync::atomic::AtomicUsize,
    cancel: CancellationToken,
    fatal: Mutex<Option<String>>,
    /// When a leader last replicated to this member (followers and learners).
    leader_contact: Mutex<Option<Instant>>,
    /// A leadership move requested here: (kind, from, to).
    moving: Mutex<Option<(Move, String, String)>>,
    /// When this member was last asked to take over leadership (`ha failover` elsewhere).
    transfer_received: Mutex<Option<Instant>>,
    /// Cut off from the majority: watch and keep-alive streams are refused.
    cut_off: std::sync::atomic::AtomicBool,
    /// This member's store was damaged and is being rebuilt from the group: it neither votes
    /// nor serves agents until it has caught up.
    rebuilding: std::sync::atomic::AtomicBool,
    hooks: Hooks,
    max_batch: usize,
    /// This member's metric families (`/metrics`).
    telemetry: ManagerMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    /// Assembles a member around a started raft. Returns the engine and its proposer task.
    pub(crate) fn new(
        raft: Raft,
        sm: &StateMachine,
        group: GroupConfig,
        peers: Peers,
        tuning: &Tuning,
        cancel: CancellationToken,
    ) -> (
        Engine,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel(tuning.proposal_queue.max(1));
        let hooks = Hooks::start(group.hook.clone(), cancel.clone());
        let engine = Engine {
            inner: Arc::new(Inner {
                registry: sm.registry().clone(),
                raft,
                node_id: group::node_id(group.name.as_str()),
                group,
                peers,
                proposals: tx,
                writing: std::sync::atomic::AtomicUsize::new(0),
                cancel,
                fatal: Mutex::new(None),
                leader_contact: Mutex::new(None),
                moving: Mutex::new(None),
                transfer_received: Mutex::new(None),
                cut_off: std::sync::atomic::AtomicBool::new(false),
                rebuilding: std::sync::atomic::AtomicBool::new(false),
                hooks,
                max_batch: tuning.max_batch.max(1),
                telemetry: ManagerMetrics::new(),
            }),
        };
        let proposer = run_proposer(engine.clone(), rx);
        (engine, proposer)
    }

    /// The shared registry (state, sessions, hub).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The session TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.registry.ttl
    }

    /// Reads this member's copy of the registry (see [`Engine::read_barrier`] for current reads).
    pub async fn state(&self) -> RwLockReadGuard<'_, State> {
        self.inner.registry.state.read().await
    }

    /// The state's lock (watch streams keep it).
    pub fn state_lock(&self) -> &Arc<RwLock<State>> {
        &self.inner.registry.state
    }

    /// The live sessions.
    pub fn sessions(&self) -> &Arc<SessionTable> {
        &self.inner.registry.sessions
    }

    /// The watch fan-out.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.inner.registry.hub
    }

    /// The raft handle.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This member's name.
    pub fn name(&self) -> &str {
        self.inner.group.name.as_str()
    }

    /// The group as configured here.
    pub fn group(&self) -> &GroupConfig {
        &self.inner.group
    }

    /// Channels to the other members.
    pub fn peers(&self) -> &Peers {
        &self.inner.peers
    }

    /// The hook runner (and event log).
    pub(crate) fn hooks(&self) -> &Hooks {
        &self.inner.hooks
    }

    /// This member's metric families (served on the HTTP port).
    pub(crate) fn telemetry(&self) -> &ManagerMetrics {
        &self.inner.telemetry
    }

    /// Cancelled when the manager shuts down (or fails).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// Raft's current metrics.
    pub fn metrics(&self) -> openraft::RaftMetrics<crate::raft::types::TypeConfig> {
        self.inner.raft.metrics().borrow_watched().clone()
    }

    /// True while this member leads the group.
    pub fn is_leader(&self) -> bool {
        self.metrics().state == ServerState::Leader
    }

    /// Records that a leader replicated to this member just now.
    pub(crate) fn note_leader_contact(&self) {
        *lock(&self.inner.leader_contact) = Some(Instant::now());
    }

    /// Records that the leader asked this member to take over leadership.
    pub(crate) fn note_transfer(&self) {
        *lock(&self.inner.transfer_received) = Some(Instant::now());
    }

    /// True while a requested leadership move involves this member.
    pub(crate) fn is_moving_here(&self) -> bool {
        lock(&self.inner.moving).is_some()
            || lock(&self.inner.transfer_received)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
    }

    /// How long since a leader last replicated to this member.
    pub fn since_leader_contact(&self) -> Option<Duration> {
        lock(&self.inner.leader_contact).map(|t| t.elapsed())
    }

    /// True while this member has been out of touch with a majority for longer than an
    /// election takes ([`CUT_OFF`]): agents' streams are closed and refused.
    pub fn is_cut_off(&self) -> bool {
        let m = self.metrics();
        match m.state {
            ServerState::Leader => {
                !self.quorum_fresh(&m) && m.last_quorum_acked.is_none_or(|t| t.elapsed() > CUT_OFF)
            }
            _ => self.since_leader_contact().is_none_or(|d| d > CUT_OFF),
        }
    }

    /// True while this member's store is being rebuilt from the group (it was found damaged):
    /// the member grants no vote, stands for no election and serves no agent until it has
    /// caught up.
    pub fn is_rebuilding(&self) -> bool {
        self.inner
            .rebuilding
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_rebuilding(&self, rebuilding: bool) {
        self.inner
            .rebuilding
            .store(rebuilding, std::sync::atomic::Ordering::Release);
        self.inner.raft.runtime_config().elect(!rebuilding);
    }

    pub(crate) fn set_cut_off(&self, cut: bool) -> bool {
        self.inner
            .cut_off
            .swap(cut, std::sync::atomic::Ordering::AcqRel)
    }

    /// The node (name, address) of a raft node id, from the current membership.
    pub fn node(&self, id: u64) -> Option<MemberNode> {
        self.metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// The leader's node, if one is known.
    pub fn leader(&self) -> Option<(u64, MemberNode)> {
        let m = self.metrics();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id).cloned()?;
        Some((id, node))
    }

    /// Proposes a command and waits until it is committed by a majority and applied here: the
    /// revision it was applied at (or the current revision when it changed nothing).
    pub async fn propose(
        &self,
        command: Command,
        session: Option<SessionId>,
    ) -> Result<Revision, RegistryError> {
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            proposed: Proposed { command, session },
            reply: Some(tx),
        };
        self.inner
            .proposals
            .send(pending)
            .await
            .map_err(|_| self.closed_error())?;
        match rx.await {
            Ok(Ok(revision)) => {
                self.inner.telemetry.write_acknowledged();
                Ok(Revision(revision))
            }
            Ok(Err(refusal)) => Err(RegistryError::from_refusal(refusal)),
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Proposals received and not yet taken by the writer: they go into its next raft entry
    /// together (one revision).
    pub fn proposals_waiting(&self) -> usize {
        let queue = &self.inner.proposals;
        queue.max_capacity() - queue.capacity()
    }

    /// Proposals the writer has taken (in raft entries being written, or held for the next
    /// one while [`IN_FLIGHT`] entries are) whose outcome is not known yet.
    pub fn proposals_writing(&self) -> usize {
        self.inner
            .writing
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Proposes several commands (forwarded by a follower); one outcome each, in order.
    pub async fn propose_many(&self, items: Vec<Proposed>) -> Vec<Outcome> {
        let mut waits = Vec::with_capacity(items.len());
        for proposed in items {
            let (tx, rx) = oneshot::channel();
            let pending = Pending {
                proposed,
                reply: Some(tx),
            };
            if self.inner.proposals.send(pending).await.is_err() {
                waits.push(None);
            } else {
                waits.push(Some(rx));
            }
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            let outcome = match w {
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err(self.closed_error().to_refusal())),
                None => Err(self.closed_error().to_refusal()),
            };
            out.push(outcome);
        }
        out
    }

    /// Proposes a command without waiting for its outcome.
    pub(crate) async fn propose_detached(&self, command: Command) {
        let pending = Pending {
            proposed: Proposed {
                command,
                session: None,
            },
            reply: None,
        };
        let _ = self.inner.proposals.send(pending).await;
    }

    fn closed_error(&self) -> RegistryError {
        match self.fatal() {
            Some(reason) => RegistryError::Storage(reason),
            None => RegistryError::ShuttingDown,
        }
    }

    /// Records a fatal failure and stops the manager.
    pub(crate) fn fail(&self, reason: String) {
        tracing::error!(%reason, "registry manager stopping on a fatal error");
        lock(&self.inner.fatal).get_or_insert(reason);
        self.inner.cancel.cancel();
    }

    /// The fatal failure that stopped the manager, if any.
    pub fn fatal(&self) -> Option<String> {
        lock(&self.inner.fatal).clone()
    }

    /// The members this one cannot reach now (for refusals).
    pub(crate) fn unreachable_members(&self) -> Vec<String> {
        let m = self.metrics();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.inner.node_id)
            .filter(|(_, node)| !self.inner.peers.reachable(&self.inner.peers.addr_of(node)))
            .map(|(_, node)| node.name.clone())
            .collect()
    }

    fn no_leader(&self) -> RegistryError {
        RegistryError::NoLeader {
            member: self.name().to_owned(),
            unreachable: self.unreachable_members(),
        }
    }

    /// Writes one batch through raft: here when leader, else on the leader. Retries while no
    /// leader is known, up to [`WRITE_DEADLINE`].
    async fn write_batch(&self, items: Vec<Proposed>) -> Result<Vec<Outcome>, RegistryError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        // A member cut off from the majority refuses at once (after a short grace for a
        // passing hiccup or an election in progress), naming whom it cannot reach.
        let grace = Instant::now() + ELECTION_MAX * 2;
        while !self.connected() {
            if Instant::now() >= grace {
                return Err(self.no_leader());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut last_error = None;
        loop {
            if !self.connected() {
                // Cut off while trying: nothing more will get through.
                let grace = Instant::now() + ELECTION_MAX;
                while !self.connected() && Instant::now() < grace {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !self.connected() {
                    return Err(self.no_leader());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last_error.take().unwrap_or_else(|| self.no_leader()));
            }
            let leader = self.leader();
            match leader {
                Some((id, _)) if id == self.inner.node_id => {
                    let write = self.inner.raft.client_write(Batch::Together {
                        together: items.clone(),
                    });
                    match tokio::time::timeout(left, write).await {
                        Err(_) => {
                            return Err(RegistryError::Uncertain(format!(
                                "not committed within {WRITE_DEADLINE:?}"
                            )))
                        }
                        Ok(Ok(resp)) => return Ok(resp.data.0),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                            // Not leader any more, or its lease lapsed: look again shortly.
                        }
                        Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                            // Leadership moved before it committed: retry (commands are idempotent).
                            last_error = Some(RegistryError::Uncertain(
                                "the leader changed while the change was being committed".into(),
                            ));
                        }
                        Ok(Err(RaftError::APIError(e))) => {
                            return Err(RegistryError::Group(e.to_string()))
                        }
                        Ok(Err(RaftError::Fatal(_))) if self.inner.cancel.is_cancelled() => {
                            // Raft was stopped by a shutdown: the write is refused, nothing failed.
                            return Err(self.closed_error());
                        }
                        Ok(Err(RaftError::Fatal(f))) => {
                            let reason = format!("raft stopped: {f}");
                            self.fail(reason.clone());
                            return Err(RegistryError::Storage(reason));
                        }
                    }
                }
                Some((_, node)) => match self.forward(&node, &items, left).await {
                    Ok(outcomes) => return Ok(outcomes),
                    // Retrying is safe: every command is idempotent (a repeated one is a no-op).
                    Err(e) => last_error = Some(e),
                },
                None => {}
            }
            if self.inner.cancel.is_cancelled() {
                return Err(self.closed_error());
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    async fn forward(
        &self,
        leader: &MemberNode,
        items: &[Proposed],
        left: Duration,
    ) -> Result<Vec<Outcome>, RegistryError> {
        let addr = self.inner.peers.addr_of(leader);
        let mut client = self
            .inner
            .peers
            .member(&addr)
            .map_err(RegistryError::Group)?;
        let batch = serde_json::to_vec(items).expect("proposals serialise");
        let mut request = self
            .inner
            .peers
            .request("Propose", pb::ProposeRequest { batch });
        request.set_timeout(left.min(Duration::from_secs(2)));
        match client.propose(request).await {
            Ok(reply) => serde_json::from_slice(&reply.into_inner().outcomes).map_err(|e| {
                RegistryError::Group(format!(
                    "leader {} answered an unreadable outcome: {e}",
                    leader.name
                ))
            }),
            Err(s) => {
                if s.code() != tonic::Code::FailedPrecondition {
                    self.inner.peers.mark(&addr, false);
                }
                Err(RegistryError::Uncertain(format!(
                    "forwarded to leader {}: {}",
                    leader.name,
                    s.message()
                )))
            }
        }
    }

    /// True when this member's copy has applied everything it knows to be committed and it
    /// is in touch with the majority.
    pub fn caught_up(&self) -> bool {
        let m = self.metrics();
        let applied = m.last_applied.map(|l| l.index);
        let committed = m.cluster_committed.map(|l| l.index);
        self.connected() && applied >= committed
    }

    /// Waits until this member's copy is at least as new as every write acknowledged before
    /// the call (the contract: reads current unless `stale`).
    pub async fn read_barrier(&self, stale: bool) -> Result<(), RegistryError> {
        if stale {
            return Ok(());
        }
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A member in touch with the majority whose copy lags is busy, not cut off.
                return Err(if self.connected() {
                    RegistryError::Behind {
                        member: self.name().to_owned(),
                        waited: READ_DEADLINE,
                    }
                } else {
                    self.no_leader()
                });
            }
            match self.leader() {
                Some((id, _)) if id == self.inner.node_id => {
                    let read = self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex);
                    if let Ok(Ok(_)) = tokio::time::timeout(left, read).await {
                        return Ok(());
                    }
                }
                Some((_, node)) => {
                    if let Ok(log_id) = self.read_index_of(&node, left).await {
                        let lin = Linearizer::new(
                            self.inner.node_id,
                            ReadLogId::from_log_id(log_id),
                            None,
                        );
                        if let Ok(Ok(_)) = lin.try_await_ready(&self.inner.raft, Some(left)).await {
                            return Ok(());
                        }
                    }
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    async fn read_index_of(&self, leader: &MemberNode, left: Duration) -> Result<LogId, String> {
        let mut client = self.inner.peers.member(&self.inner.peers.addr_of(leader))?;
        let mut request = self
            .inner
            .peers
            .request("ReadIndex", pb::ReadIndexRequest {});
        request.set_timeout(left);
        let reply = client
            .read_index(request)
            .await
            .map_err(|s| s.to_string())?;
        serde_json::from_slice(&reply.into_inner().read_log_id).map_err(|e| e.to_string())
    }

    /// The leader's read point (on the leader).
    pub async fn leader_read_point(&self) -> Result<LogId, RegistryError> {
        let lin = tokio::time::timeout(
            READ_DEADLINE,
            self.inner.raft.get_read_linearizer(ReadPolicy::ReadIndex),
        )
        .await
        .map_err(|_| self.no_leader())?
        .map_err(|e| RegistryError::Group(format!("not the leader: {e}")))?;
        Ok(*lin.read_log_id().log_id())
    }

    /// True when a leader may decide expiries: it leads, has applied an entry of its own term,
    /// and a majority acknowledged it within the lease.
    pub(crate) fn may_decide(&self) -> bool {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return false;
        }
        let own_term = m
            .last_applied
            .is_some_and(|l| l.leader_id.term == m.current_term);
        own_term && self.quorum_fresh(&m)
    }

    /// Leader: a majority acknowledged it within the lease (always, alone).
    fn quorum_fresh(&self, m: &openraft::RaftMetrics<crate::raft::types::TypeConfig>) -> bool {
        let alone = m
            .membership_config
            .membership()
            .voter_ids()
            .all(|id| id == self.inner.node_id);
        alone
            || m.last_quorum_acked
                .is_some_and(|t| t.elapsed() <= ELECTION_MAX)
    }

    /// True when this member is in touch with a majority (a leader acknowledged by one, or a
    /// follower replicated to within the election timeout).
    pub fn connected(&self) -> bool {
        let m = self.metrics();
        match m.state {
            ServerState::Leader => self.quorum_fresh(&m),
            ServerState::Follower | ServerState::Learner => {
                m.current_leader.is_some()
                    && self
                        .since_leader_contact()
                        .is_some_and(|d| d <= ELECTION_MIN)
            }
            _ => false,
        }
    }

    /// This member's own view of itself, for `ha status`.
    pub async fn member_status(&self) -> pb::HaMember {
        let m = self.metrics();
        let membership = m.membership_config.membership().clone();
        let voter = membership.voter_ids().any(|id| id == self.inner.node_id);
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Candidate => Role::Candidate,
            ServerState::Follower if voter => Role::Follower,
            ServerState::Follower | ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Unreachable,
        };
        let voters: Vec<u64> = membership.voter_ids().collect();
        let all_voters_acked = m.heartbeat.as_ref().is_some_and(|hb| {
            voters.iter().all(|v| {
                *v == self.inner.node_id
                    || hb
                        .get(v)
                        .is_some_and(|t| t.as_ref().is_some_and(|t| t.elapsed() <= ELECTION_MAX))
            })
        });
        let last_contact = match role {
            Role::Leader if self.quorum_fresh(&m) => {
                Some(m.last_quorum_acked.map_or(Duration::ZERO, |t| t.elapsed()))
            }
            Role::Leader => m.last_quorum_acked.map(|t| t.elapsed()),
            _ => self.since_leader_contact(),
        };
        let moving = lock(&self.inner.moving)
            .as_ref()
            .and_then(|(mv, from, to)| {
                if from == self.name() {
                    Some((*mv, true))
                } else if to == self.name() {
                    Some((*mv, false))
                } else {
                    None
                }
            });
        let facts = StateFacts {
            role,
            stand_alone: voters.len() == 1 && membership.learner_ids().next().is_none(),
            initialized: m.current_leader.is_some()
                && m.last_applied.is_some()
                && !self.is_rebuilding(),
            preferred_or_unset: self
                .inner
                .group
                .preferred
                .as_ref()
                .is_none_or(|p| p.as_str() == self.name()),
            quorum_acked: last_contact.is_some_and(|d| d <= ELECTION_MAX),
            all_voters_acked,
            leader_heard: last_contact.is_some_and(|d| d <= ELECTION_MAX),
            moving,
        };
        let applied_revision = self.state().await.revision().0;
        pb::HaMember {
            name: self.name().to_owned(),
            address: self
                .node(self.inner.node_id)
                .map(|n| n.addr)
                .or_else(|| self.inner.group.own_address().cloned())
                .unwrap_or_default(),
            voter,
            role: role.as_str().to_owned(),
            state: group::ha_state(facts).to_owned(),
            term: m.current_term,
            applied_revision,
            lag: 0,
            last_contact_ms: last_contact.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            log_index: m.last_log_index.unwrap_or(0),
        }
    }

    /// Every member as it answers for itself (unreachable ones marked so), with lags.
    pub async fn ha_status(&self, local_only: bool) -> pb::HaStatusResponse {
        let m = self.metrics();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, MemberNode> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let mut members = Vec::new();
        for (id, node) in &nodes {
            let status = if *id == self.inner.node_id {
                self.member_status().await
            } else if local_only {
                unreachable_member(node, voters.contains(id), "not asked (--local)")
            } else {
                self.ask_status(node, voters.contains(id)).await
            };
            members.push(status);
        }
        let leader_index = members
            .iter()
            .find(|s| s.role == Role::Leader.as_str())
            .map(|s| s.log_index);
        for s in &mut members {
            if let (Some(top), true) = (leader_index, s.role != Role::Unreachable.as_str()) {
                s.lag = top.saturating_sub(s.log_index);
            }
        }
        pb::HaStatusResponse {
            leader: m
                .current_leader
                .and_then(|id| nodes.get(&id).map(|n| n.name.clone())),
            term: m.current_term,
            revision: self.state().await.revision().0,
            members,
            answered_by: self.name().to_owned(),
        }
    }

    async fn ask_status(&self, node: &MemberNode, voter: bool) -> pb::HaMember {
        let asked = async {
            let mut client = self.inner.peers.member(&self.inner.peers.addr_of(node))?;
            let mut request = self
                .inner
                .peers
                .request("MemberStatus", pb::HaStatusRequest { local_only: true });
            request.set_timeout(Duration::from_secs(1));
            client
                .member_status(request)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_owned())
        };
        match asked.await {
            Ok(s) => s,
            Err(e) => unreachable_member(node, voter, &e),
        }
    }

    /// Moves leadership (on the leader): to `to`, to `preferred` (failback), or to the most
    /// up-to-date other voter. Returns the new leader's name and term.
    pub async fn move_leadership(
        &self,
        to: Option<String>,
        failback: bool,
    ) -> Result<(String, u64), RegistryError> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(RegistryError::Group("this member is not the leader".into()));
        }
        let membership = m.membership_config.membership().clone();
        let name_of = |id: u64| membership.get_node(&id).map(|n| n.name.clone());
        let target_name = if failback {
            match &self.inner.group.preferred {
                Some(p) => p.as_str().to_owned(),
                None => {
                    return Err(RegistryError::Group(
                        "no preferred member is configured (group.preferred); use `ha failover --to NAME`".into(),
                    ))
                }
            }
        } else if let Some(to) = to {
            to
        } else {
            // The most up-to-date other voter.
            let repl = m.replication.clone().unwrap_or_default();
            membership
                .voter_ids()
                .filter(|id| *id != self.inner.node_id)
                .max_by_key(|id| repl.get(id).cloned().flatten().map(|l| l.index))
                .and_then(name_of)
                .ok_or_else(|| {
                    RegistryError::Group("there is no other voter to move leadership to".into())
                })?
        };
        let target = group::node_id(&target_name);
        if !membership.voter_ids().any(|id| id == target) {
            return Err(RegistryError::Group(format!(
                "{target_name:?} is not a voter of the group (voters: {}); leadership moves only to a voter",
                membership
                    .voter_ids()
                    .filter_map(name_of)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if target == self.inner.node_id {
            return Ok((target_name, m.current_term));
        }
        let kind = if failback {
            Move::Failback
        } else {
            Move::Failover
        };
        *lock(&self.inner.moving) = Some((kind, self.name().to_owned(), target_name.clone()));
        let result = self.transfer(target, &target_name).await;
        *lock(&self.inner.moving) = None;
        let term = result?;
        self.inner.hooks.emit(
            GroupEvent::ManualSwitch,
            vec![self.name().to_owned(), target_name.clone()],
        );
        Ok((target_name, term))
    }

    async fn transfer(&self, target: u64, target_name: &str) -> Result<u64, RegistryError> {
        self.inner
            .raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| RegistryError::Group(format!("raft stopped: {e}")))?;
        let waited = self
            .inner
            .raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.current_leader == Some(target), "leadership moved")
            .await;
        match waited {
            Ok(m) => Ok(m.current_term),
            Err(_) => Err(RegistryError::Group(format!(
                "leadership did not move to {target_name} within 5s (is it up and caught up? see `ha status`)"
            ))),
        }
    }

    /// Adds a non-voting member (on the leader); returns once it has caught up.
    pub async fn add_learner(&self, name: &str, addr: &str) -> Result<(), RegistryError> {
        topology::HostName::new(name).map_err(RegistryError::from)?;
        let id = group::node_id(name);
        let node = MemberNode {
            name: name.to_owned(),
            addr: addr.to_owned(),
        };
        let add = self.inner.raft.add_learner(id, node, true);
        match tokio::time::timeout(Duration::from_secs(60), add).await {
            Err(_) => Err(RegistryError::Group(format!(
                "{name} did not catch up within 60s; is it running at {addr} with this group's configuration?"
            ))),
            Ok(Ok(_)) => {
                self.inner
                    .hooks
                    .emit(GroupEvent::MemberOnline, vec![name.to_owned()]);
                Ok(())
            }
            Ok(Err(e)) => Err(RegistryError::Group(e.to_string())),
        }
    }

    /// Makes a learner a voter, or removes a member (on the leader). Refuses a change that
    /// would leave two voters.
    pub async fn change_voters(&self, name: &str, promote: bool) -> Result<(), RegistryError> {
        let m = self.metrics();
        let membership = m.membership_config.membership().clone();
        let id = group::node_id(name);
        if membership.get_node(&id).is_none() {
            return Err(RegistryError::Group(format!(
                "{name:?} is not a member of the group; see `ha status`"
            )));
        }
        let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
        let is_voter = voters.contains(&id);
        if promote {
            if is_voter {
                return Ok(());
            }
            voters.insert(id);
        } else {
            voters.remove(&id);
        }
        let names: BTreeSet<String> = voters
            .iter()
            .filter_map(|v| membership.get_node(v).map(|n| n.name.clone()))
            .collect();
        if promote || is_voter {
            if let Some(why) = group::check_voters(&names) {
                return Err(RegistryError::Group(why));
            }
        }
        let change: openraft::ChangeMembers<u64, MemberNode> = if promote || is_voter {
            openraft::ChangeMembers::ReplaceAllVoters(voters)
        } else {
            openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let changed = self.inner.raft.change_membership(change, false);
        match tokio::time::timeout(Duration::from_secs(30), changed).await {
            Err(_) => Err(RegistryError::Group(
                "the membership change was not committed within 30s".into(),
            )),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RegistryError::Group(e.to_string())),
        }
    }
}

fn unreachable_member(node: &MemberNode, voter: bool, why: &str) -> pb::HaMember {
    tracing::debug!(member = %node.name, %why, "member did not answer ha status");
    pb::HaMember {
        name: node.name.clone(),
        address: node.addr.clone(),
        voter,
        role: Role::Unreachable.as_str().to_owned(),
        state: "Unreachable".to_owned(),
        ..Default::default()
    }
}

/// Takes proposals in batches (group commit) and writes each batch through raft; a few
/// batches may be in flight at once.
async fn run_proposer(engine: Engine, mut rx: mpsc::Receiver<Pending>) {
    let cancel = engine.cancel_token().clone();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let writing = &engine.inner.writing;
        writing.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < engine.inner.max_batch {
            match rx.try_recv() {
                Ok(p) => {
                    writing.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let taken = batch.len();
        let engine = engine.clone();
        tokio::spawn(async move {
            let (items, replies): (Vec<Proposed>, Vec<_>) =
                batch.into_iter().map(|p| (p.proposed, p.reply)).unzip();
            let result = engine.write_batch(items).await;
            match result {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        if let Some(tx) = reply {
                            let _ = tx.send(outcome);
                        }
                    }
                }
                Err(e) => {
                    let refusal = e.to_refusal();
                    tracing::debug!(error = %e, "write refused");
                    for tx in replies.into_iter().flatten() {
                        let _ = tx.send(Err(refusal.clone()));
                    }
                }
            }
            engine
                .inner
                .writing
                .fetch_sub(taken, std::sync::atomic::Ordering::AcqRel);
            drop(slot);
        });
    }
}
