//! The replicated state machine: applies committed raft entries to the registry [`State`] on
//! every member alike, and from there feeds the live sessions and the watch hub.
//!
//! Each normal entry is a [`Batch`]; every command in it is checked against the state and then
//! applied, inside apply, so every member decides alike and revisions are the same numbers
//! everywhere. An entry this version writes (`Batch::Together`) makes at most one revision and
//! one delta for all its commands (`State::execute_together`): under load the writer puts more
//! commands in each entry, so a storm of session opens costs the watchers a few events, not one
//! per host. Entries of earlier versions (`Batch::Apart`) are applied as they were, one revision
//! per command (each command a group of its own). Blank and membership entries make no revision.
//!
//! The state lives in memory; snapshots (the encoded state with the raft position it covers)
//! are kept in `raft_meta`, sealed with a checksum. At start the latest snapshot (or the state
//! converted from a single-manager data directory) is loaded, and openraft re-applies the
//! committed log after it.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::RwLock;

use crate::command::Command;
use crate::delta::Delta;
use crate::raft::types::{
    Batch, BatchOutcome, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::sessions::SessionTable;
use crate::state::State;
use crate::store::{seal, unseal, RaftDb, StoreError};
use crate::watch::WatchHub;
use crate::wire;

const SNAPSHOT: &[u8] = b"snapshot";

/// The current snapshot: what it covers and the encoded state.
type StoredSnapshot = (SnapshotMeta, Vec<u8>);

/// The registry as the members share it: the state, its live sessions and its watchers.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The registry state (the write lock is held only while a batch is applied in memory).
    pub state: Arc<RwLock<State>>,
    /// Live sessions (heartbeats touch them; apply opens and ends them).
    pub sessions: Arc<SessionTable>,
    /// Fan-out to watch streams.
    pub hub: Arc<WatchHub>,
    /// The session TTL (quoted in refusals).
    pub ttl: Duration,
}

/// The state machine (cheap to clone; clones share everything).
#[derive(Debug, Clone)]
pub struct StateMachine {
    registry: Registry,
    db: Arc<RaftDb>,
    applied: Arc<Mutex<(Option<LogId>, StoredMembership)>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).expect("snapshot meta serialises");
    let mut body = Vec::with_capacity(4 + meta.len() + data.len());
    body.extend_from_slice(&u32::try_from(meta.len()).expect("small meta").to_be_bytes());
    body.extend_from_slice(&meta);
    body.extend_from_slice(data);
    seal(&body)
}

fn decode_snapshot(record: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), String> {
    let body = unseal(record)?;
    if body.len() < 4 {
        return Err("a snapshot shorter than its header".into());
    }
    let (len, rest) = body.split_at(4);
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    if rest.len() < len {
        return Err("a snapshot shorter than its meta".into());
    }
    let (meta, data) = rest.split_at(len);
    let meta = serde_json::from_slice(meta).map_err(|e| format!("snapshot meta: {e}"))?;
    Ok((meta, data.to_vec()))
}

impl StateMachine {
    /// Loads the latest snapshot (or the base state) of `db` into `registry`.
    pub fn open(db: Arc<RaftDb>, registry: Registry) -> Result<StateMachine, StoreError> {
        let mut applied = (None, StoredMembership::default());
        let mut current = None;
        let state = match db
            .meta
            .get(SNAPSHOT)
            .map_err(|e| StoreError::Engine(e.to_string()))?
        {
            Some(v) => {
                let (meta, data) = decode_snapshot(&v).map_err(|e| {
                    StoreError::Corrupt(db.damaged("raft_meta", SNAPSHOT, &e).to_string())
                })?;
                let state = State::from_bytes(&data).map_err(|e| {
                    StoreError::Corrupt(db.damaged("raft_meta", SNAPSHOT, &e).to_string())
                })?;
                applied = (meta.last_log_id, meta.last_membership.clone());
                current = Some((meta, data));
                state
            }
            None => db.base_state()?.unwrap_or_default(),
        };
        let sm = StateMachine {
            registry,
            db,
            applied: Arc::new(Mutex::new(applied)),
            snapshot: Arc::new(Mutex::new(current)),
        };
        sm.replace_state(state);
        Ok(sm)
    }

    /// The shared registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The last raft log id applied here.
    pub fn last_applied(&self) -> Option<LogId> {
        lock(&self.applied).0
    }

    /// Replaces the whole state at open.
    fn replace_state(&self, state: State) {
        let mut guard = self
            .registry
            .state
            .try_write()
            .expect("no reader holds the state while it is replaced at open");
        swap_state(&self.registry, &mut guard, state);
    }

    fn persist_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        self.db
            .meta
            .insert(SNAPSHOT, encode_snapshot(meta, data))
            .map_err(io::Error::other)?;
        Ok(())
    }
}

/// Replaces the whole state (open, snapshot install): sessions rebuilt, watchers resync.
fn swap_state(reg: &Registry, guard: &mut State, state: State) {
    reg.sessions.clear();
    for (host, rec) in state.hosts() {
        if let Some(id) = &rec.session {
            reg.sessions.insert(host.clone(), id.clone());
        }
    }
    reg.hub.reset(state.history());
    *guard = state;
}

/// Keeps the live sessions in step with an applied command.
fn track_sessions(sessions: &SessionTable, command: &Command, delta: &Delta) {
    match command {
        Command::OpenSession {
            host, session_id, ..
        } => sessions.insert(host.clone(), session_id.clone()),
        Command::SessionExpired { host, session_id } => {
            sessions.end(host.as_str(), Some(session_id))
        }
        Command::SessionsExpired { sessions: lapses } => {
            for l in lapses {
                sessions.end(l.host.as_str(), Some(&l.session_id));
            }
        }
        Command::ApplyTopology { .. } => {
            for host in &delta.removed_hosts {
                sessions.end(host.as_str(), None);
            }
        }
        Command::ReportStatus { .. }
        | Command::OperatorAction { .. }
        | Command::CreateHistory { .. } => {}
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = self.registry.state.read().await;
        let (last_log_id, last_membership) = lock(&self.applied).clone();
        let data = state.to_bytes();
        drop(state);
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        self.persist_snapshot(&meta, &data)?;
        self.db.db.flush_async().await.map_err(io::Error::other)?;
        *lock(&self.snapshot) = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(lock(&self.applied).clone())
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let outcome = match entry.payload {
                EntryPayload::Blank => BatchOutcome::default(),
                EntryPayload::Membership(m) => {
                    lock(&self.applied).1 = StoredMembership::new(Some(entry.log_id), m);
                    BatchOutcome::default()
                }
                EntryPayload::Normal(batch) => {
                    let reg = &self.registry;
                    let mut state = reg.state.write().await;
                    // Each group of commands makes at most one revision: the whole entry, or (in
                    // entries of earlier versions) each command alone.
                    let groups = match &batch {
                        Batch::Apart(items) => items.chunks(1),
                        Batch::Together { together: items } => items.chunks(items.len().max(1)),
                    };
                    let mut outcomes = Vec::with_capacity(batch.items().len());
                    for group in groups {
                        let history_before = state.history().is_empty();
                        let (group_outcomes, delta) =
                            state.execute_together(group, reg.ttl, |command, delta| {
                                track_sessions(&reg.sessions, command, delta);
                            });
                        if history_before && !state.history().is_empty() {
                            reg.hub.set_history(state.history());
                        }
                        if let Some(delta) = delta {
                            tracing::debug!(revision = %delta.revision, commands = group.len(), "applied");
                            reg.hub.publish(delta.revision, wire::encode_delta(&delta));
                        }
                        outcomes.extend(group_outcomes);
                    }
                    drop(state);
                    BatchOutcome(outcomes)
                }
            };
            lock(&self.applied).0 = Some(entry.log_id);
            if let Some(r) = responder {
                r.send(outcome);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state = State::from_bytes(&snapshot).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("installed snapshot: {e}"),
            )
        })?;
        self.persist_snapshot(meta, &snapshot)?;
        self.db.db.flush_async().await.map_err(io::Error::other)?;
        {
            let mut guard = self.registry.state.write().await;
            tracing::info!(revision = %state.revision(), "installed a snapshot from the leader");
            swap_state(&self.registry, &mut guard, state);
        }
        *lock(&self.applied) = (meta.last_log_id, meta.last_membership.clone());
        *lock(&self.snapshot) = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(lock(&self.snapshot).as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: data.clone(),
        }))
    }
}
