//! The single writer: takes proposals in batches (group commit), checks and applies them in
//! order on the state, appends their records to the store and waits for the flush, then
//! updates the live sessions, publishes the deltas and acknowledges. One flush covers a whole
//! batch, so a storm of registrations costs one fsync per batch, not per agent.
//!
//! A storage failure is fatal: the in-memory state would be ahead of the disk, so the manager
//! stops (and no write of that batch is acknowledged).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use topology::Revision;

use crate::command::Command;
use crate::engine::{Engine, Proposal};
use crate::error::RegistryError;
use crate::log_record::LogRecord;
use crate::server::Tuning;
use crate::state::Check;
use crate::store::{Checkpoint, LogEntry, RegistryStore};
use crate::wire;

type Reply = Option<oneshot::Sender<Result<Revision, RegistryError>>>;

/// The writer task's state.
#[derive(Debug)]
pub(crate) struct Writer {
    engine: Engine,
    store: Arc<dyn RegistryStore>,
    rx: mpsc::Receiver<Proposal>,
    tuning: Tuning,
    last_checkpoint: Revision,
}

impl Writer {
    pub(crate) fn new(
        engine: Engine,
        store: Arc<dyn RegistryStore>,
        rx: mpsc::Receiver<Proposal>,
        tuning: Tuning,
        last_checkpoint: Revision,
    ) -> Self {
        Writer {
            engine,
            store,
            rx,
            tuning,
            last_checkpoint,
        }
    }

    /// Runs until the manager is cancelled or storage fails.
    pub(crate) async fn run(mut self) {
        let cancel = self.engine.cancel_token().clone();
        loop {
            let first = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                p = self.rx.recv() => match p { Some(p) => p, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < self.tuning.max_batch {
                match self.rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if let Err(reason) = self.write_batch(batch).await {
                self.engine.fail(reason);
                return;
            }
            if let Err(e) = self.maybe_checkpoint().await {
                // Not fatal: the log still holds everything; retried after the next batch.
                tracing::warn!(error = %e, "registry checkpoint failed; will retry");
            }
        }
    }

    async fn write_batch(&mut self, batch: Vec<Proposal>) -> Result<(), String> {
        let engine = self.engine.clone();
        let ttl = engine.ttl();
        let mut state = engine.state_lock().write().await;
        let mut entries = Vec::new();
        let mut applied = Vec::new();
        let mut replies: Vec<(Reply, Option<Revision>)> = Vec::new();
        for p in batch {
            match state.check(&p.command, p.session.as_ref(), ttl) {
                Err(e) => {
                    if let Some(tx) = p.reply {
                        let _ = tx.send(Err(e));
                    }
                }
                Ok(Check::Unchanged) => replies.push((p.reply, None)),
                Ok(Check::Apply) => {
                    let delta = state.apply(&p.command);
                    let bytes = wire::encode_delta(&delta);
                    let record = LogRecord {
                        command: p.command,
                        delta: bytes.clone(),
                    };
                    entries.push(LogEntry {
                        revision: delta.revision,
                        record: record.encode(),
                    });
                    replies.push((p.reply, Some(delta.revision)));
                    applied.push((record.command, delta, bytes));
                }
            }
        }
        if !entries.is_empty() {
            if let Err(e) = self.store.append(&entries).await {
                let reason = format!(
                    "cannot persist revisions {}..={}: {e}",
                    entries[0].revision,
                    state.revision()
                );
                for (reply, _) in replies {
                    if let Some(tx) = reply {
                        let _ = tx.send(Err(RegistryError::Storage(reason.clone())));
                    }
                }
                return Err(reason);
            }
        }
        // Durable: update the live sessions, publish, acknowledge.
        let sessions = engine.sessions();
        for (command, delta, bytes) in applied {
            match &command {
                Command::OpenSession {
                    host, session_id, ..
                } => sessions.insert(host.clone(), session_id.clone()),
                Command::SessionExpired { host, session_id } => {
                    sessions.end(host.as_str(), Some(session_id))
                }
                Command::ApplyTopology { .. } => {
                    for host in &delta.removed_hosts {
                        sessions.end(host.as_str(), None);
                    }
                }
                Command::ReportStatus { .. } | Command::OperatorAction { .. } => {}
            }
            tracing::debug!(revision = %delta.revision, command = command.kind(), "applied");
            engine.hub().publish(delta.revision, bytes);
        }
        let head = state.revision();
        drop(state);
        for (reply, revision) in replies {
            if let Some(tx) = reply {
                let _ = tx.send(Ok(revision.unwrap_or(head)));
            }
        }
        Ok(())
    }

    async fn maybe_checkpoint(&mut self) -> Result<(), crate::store::StoreError> {
        let (revision, bytes) = {
            let state = self.engine.state().await;
            if state.revision().0 < self.last_checkpoint.0 + self.tuning.checkpoint_every.max(1) {
                return Ok(());
            }
            (state.revision(), state.to_bytes())
        };
        let window = u64::try_from(self.tuning.delta_window).unwrap_or(u64::MAX);
        let trim_below = Revision((revision.0 + 1).saturating_sub(window).max(1));
        let cp = Checkpoint {
            revision,
            state: bytes,
        };
        self.store.checkpoint(&cp, trim_below).await?;
        self.last_checkpoint = revision;
        tracing::debug!(%revision, %trim_below, "registry checkpoint written");
        Ok(())
    }
}
