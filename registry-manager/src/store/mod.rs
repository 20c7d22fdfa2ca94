//! Durable storage of the registry log, behind the small [`RegistryStore`] trait so the
//! engine can be swapped (sled today; the openraft log store later).
//!
//! The store keeps opaque records keyed by revision, plus one checkpoint (the encoded state at
//! a revision). It knows nothing of commands: the engine encodes them
//! ([`crate::log_record::LogRecord`]). Every implementation passes the same conformance suite
//! (`store::conformance`, run by `cargo test`).

use std::fmt;

use futures::future::BoxFuture;
use topology::Revision;

mod memory_store;
mod sled_store;

#[cfg(test)]
mod conformance;

pub use memory_store::MemoryStore;
pub use sled_store::SledStore;

/// One log entry: the record of the command applied at `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its revision (the log index).
    pub revision: Revision,
    /// The encoded record.
    pub record: Vec<u8>,
}

/// The encoded registry state at a revision; the log below it may be trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The revision the state is at.
    pub revision: Revision,
    /// The encoded state.
    pub state: Vec<u8>,
}

/// Everything a store holds, as read at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredLog {
    /// The latest checkpoint, if one was written.
    pub checkpoint: Option<Checkpoint>,
    /// Every log entry kept, in revision order, contiguous. Entries at or below the checkpoint
    /// may remain (the window kept for watchers to resume).
    pub entries: Vec<LogEntry>,
}

impl StoredLog {
    /// The last revision stored: the last entry, or the checkpoint when the log is empty.
    pub fn last_revision(&self) -> Revision {
        let cp = self.checkpoint.as_ref().map_or(Revision(0), |c| c.revision);
        let log = self.entries.last().map_or(Revision(0), |e| e.revision);
        cp.max(log)
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, lock held by another process, ...).
    #[error("storage engine: {0}")]
    Engine(String),
    /// Entries appended out of order: revisions must continue the log one by one.
    #[error("log entry {got} appended out of order: the next revision is {expected}")]
    OutOfOrder {
        /// The revision that was expected next.
        expected: Revision,
        /// The revision given.
        got: Revision,
    },
    /// A checkpoint beyond the log, or a trim above the checkpoint.
    #[error("checkpoint at {checkpoint} with trim below {trim_below} does not fit a log ending at {last}")]
    BadCheckpoint {
        /// The checkpoint's revision.
        checkpoint: Revision,
        /// The requested trim point.
        trim_below: Revision,
        /// The last revision stored.
        last: Revision,
    },
    /// Stored data does not decode.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Durable storage of the registry log and its checkpoint.
pub trait RegistryStore: Send + Sync + fmt::Debug + 'static {
    /// Reads everything stored.
    fn load(&self) -> Result<StoredLog, StoreError>;

    /// Appends entries whose revisions continue the log one by one. The future resolves only
    /// once the entries are durable (flushed): only then may they be acknowledged. Entries
    /// that break the order are refused and nothing is written.
    fn append<'a>(&'a self, entries: &'a [LogEntry]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Durably replaces the checkpoint, then removes log entries below `trim_below`
    /// (`trim_below <= checkpoint.revision + 1`, so no entry after the checkpoint is lost).
    fn checkpoint<'a>(
        &'a self,
        checkpoint: &'a Checkpoint,
        trim_below: Revision,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Checks that `entries` continue a log whose last revision is `last`.
fn check_order(last: Revision, entries: &[LogEntry]) -> Result<(), StoreError> {
    let mut expected = Revision(last.0 + 1);
    for e in entries {
        if e.revision != expected {
            return Err(StoreError::OutOfOrder {
                expected,
                got: e.revision,
            });
        }
        expected = Revision(expected.0 + 1);
    }
    Ok(())
}

/// Checks a checkpoint request against a log whose last revision is `last`.
fn check_checkpoint(
    last: Revision,
    cp: &Checkpoint,
    trim_below: Revision,
) -> Result<(), StoreError> {
    if cp.revision > last || trim_below.0 > cp.revision.0 + 1 {
        return Err(StoreError::BadCheckpoint {
            checkpoint: cp.revision,
            trim_below,
            last,
        });
    }
    Ok(())
}
