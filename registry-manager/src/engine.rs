//! The [`Engine`]: the registry state behind a lock, the live sessions, the watch hub and the
//! proposal queue of the single writer. Services hold a clone; the writer ([`crate::writer`])
//! and the expiry task ([`crate::expiry`]) are the only background work.
//!
//! Reads take the state's read lock. The writer holds the write lock while it checks, applies,
//! logs, flushes and publishes a batch, so what readers see is always durable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, RwLock, RwLockReadGuard};
use tokio_util::sync::CancellationToken;
use topology::Revision;

use crate::command::Command;
use crate::error::RegistryError;
use crate::log_record::LogRecord;
use crate::server::Tuning;
use crate::session_id::SessionId;
use crate::sessions::SessionTable;
use crate::state::State;
use crate::store::{RegistryStore, StoreError};
use crate::watch::WatchHub;
use crate::wire;
use crate::writer::Writer;

/// A command waiting for the writer, with the request's session (checked for reports) and
/// where to send the outcome (none for the expiry task's fire-and-forget proposals).
#[derive(Debug)]
pub(crate) struct Proposal {
    pub command: Command,
    pub session: Option<SessionId>,
    pub reply: Option<oneshot::Sender<Result<Revision, RegistryError>>>,
}

/// Handle on a running registry (cheap to clone).
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Arc<RwLock<State>>,
    sessions: SessionTable,
    hub: Arc<WatchHub>,
    ttl: Duration,
    proposals: mpsc::Sender<Proposal>,
    cancel: CancellationToken,
    fatal: Mutex<Option<String>>,
}

impl Engine {
    /// Loads the registry from `store` (checkpoint, then the log replayed on top), and returns
    /// the engine with its writer (to be spawned). Sessions found in the registry get one
    /// `ttl` from now to resume heartbeating (see [`crate::sessions`]).
    pub(crate) fn open(
        store: Arc<dyn RegistryStore>,
        ttl: Duration,
        tuning: &Tuning,
        cancel: CancellationToken,
    ) -> Result<(Engine, Writer), StoreError> {
        let log = store.load()?;
        let hub = Arc::new(WatchHub::new(
            tuning.delta_window,
            tuning.broadcast_capacity,
        ));
        let mut state = match &log.checkpoint {
            Some(cp) => {
                let s = State::from_bytes(&cp.state).map_err(StoreError::Corrupt)?;
                if s.revision() != cp.revision {
                    return Err(StoreError::Corrupt(format!(
                        "checkpoint at revision {} holds a state at revision {}",
                        cp.revision,
                        s.revision()
                    )));
                }
                s
            }
            None => State::new(),
        };
        let checkpoint = state.revision();
        for entry in &log.entries {
            let rec = LogRecord::decode(&entry.record).map_err(|e| {
                StoreError::Corrupt(format!("log entry at revision {}: {e}", entry.revision))
            })?;
            if entry.revision <= state.revision() {
                hub.remember(entry.revision, rec.delta);
                continue;
            }
            let delta = state.apply(&rec.command);
            if delta.revision != entry.revision {
                return Err(StoreError::Corrupt(format!(
                    "log entry at revision {} follows revision {}",
                    entry.revision,
                    state.revision().0 - 1
                )));
            }
            hub.remember(entry.revision, wire::encode_delta(&delta));
        }
        let sessions = SessionTable::new();
        for (host, rec) in state.hosts() {
            if let Some(id) = &rec.session {
                sessions.insert(host.clone(), id.clone());
            }
        }
        let (tx, rx) = mpsc::channel(tuning.proposal_queue.max(1));
        let engine = Engine {
            inner: Arc::new(Inner {
                state: Arc::new(RwLock::new(state)),
                sessions,
                hub,
                ttl,
                proposals: tx,
                cancel,
                fatal: Mutex::new(None),
            }),
        };
        let writer = Writer::new(engine.clone(), store, rx, tuning.clone(), checkpoint);
        Ok((engine, writer))
    }

    /// The session TTL.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Reads the registry (durable state only).
    pub async fn state(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().await
    }

    pub(crate) fn state_lock(&self) -> &Arc<RwLock<State>> {
        &self.inner.state
    }

    /// The live sessions.
    pub fn sessions(&self) -> &SessionTable {
        &self.inner.sessions
    }

    /// The watch fan-out.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.inner.hub
    }

    /// Cancelled when the manager shuts down (or fails).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// Proposes a command and waits until it is durable: the revision it was applied at (or
    /// the current revision when it changed nothing).
    pub async fn propose(
        &self,
        command: Command,
        session: Option<SessionId>,
    ) -> Result<Revision, RegistryError> {
        let (tx, rx) = oneshot::channel();
        let proposal = Proposal {
            command,
            session,
            reply: Some(tx),
        };
        self.inner
            .proposals
            .send(proposal)
            .await
            .map_err(|_| self.closed_error())?;
        rx.await.map_err(|_| self.closed_error())?
    }

    /// Proposes a command without waiting for its outcome.
    pub(crate) async fn propose_detached(&self, command: Command) {
        let proposal = Proposal {
            command,
            session: None,
            reply: None,
        };
        let _ = self.inner.proposals.send(proposal).await;
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
        self.inner
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        self.inner.cancel.cancel();
    }

    /// The fatal failure that stopped the manager, if any.
    pub fn fatal(&self) -> Option<String> {
        self.inner
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
