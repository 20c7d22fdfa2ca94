//! An in-memory [`RegistryStore`]: not durable across processes, for tests and benchmarks of
//! the engine without a disk. Clones share the same storage, so "reopening" is a clone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use topology::Revision;

use super::{
    check_checkpoint, check_order, Checkpoint, LogEntry, RegistryStore, StoreError, StoredLog,
};

/// Registry storage in process memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    checkpoint: Option<Checkpoint>,
    log: BTreeMap<Revision, Vec<u8>>,
}

impl Inner {
    fn last(&self) -> Revision {
        let cp = self.checkpoint.as_ref().map_or(Revision(0), |c| c.revision);
        let log = self.log.keys().next_back().copied().unwrap_or(Revision(0));
        cp.max(log)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

impl RegistryStore for MemoryStore {
    fn load(&self) -> Result<StoredLog, StoreError> {
        let inner = self.inner.lock().expect("memory store lock");
        Ok(StoredLog {
            checkpoint: inner.checkpoint.clone(),
            entries: inner
                .log
                .iter()
                .map(|(r, rec)| LogEntry {
                    revision: *r,
                    record: rec.clone(),
                })
                .collect(),
        })
    }

    fn append<'a>(&'a self, entries: &'a [LogEntry]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut inner = self.inner.lock().expect("memory store lock");
            check_order(inner.last(), entries)?;
            for e in entries {
                inner.log.insert(e.revision, e.record.clone());
            }
            Ok(())
        })
    }

    fn checkpoint<'a>(
        &'a self,
        checkpoint: &'a Checkpoint,
        trim_below: Revision,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut inner = self.inner.lock().expect("memory store lock");
            check_checkpoint(inner.last(), checkpoint, trim_below)?;
            inner.checkpoint = Some(checkpoint.clone());
            inner.log = inner.log.split_off(&trim_below);
            Ok(())
        })
    }
}
